"""Checks of a detector's constructor arguments: a ``ValueError`` that names the argument and what to give.

Plumbing for the lessons' detectors (``check_input`` in ``anomaly_utils.detector`` checks the images at
``predict``; these check the arguments at construction), e.g.::

    self.nu = argcheck.real("nu", nu, low=0, high=1, low_open=True, why="the fraction allowed outside")
"""

from __future__ import annotations

import math
import numbers


def _is_real(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and not math.isnan(value)


def whole(name: str, value, minimum: int = 1) -> int:
    """``value`` as an ``int``, or a ``ValueError`` unless it is a whole number >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}.")
    return int(value)


def wholes(name: str, values, minimum: int = 1) -> tuple[int, ...]:
    """A non-empty sequence of whole numbers >= ``minimum`` as a tuple, e.g. channel counts ``(8, 16)``."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of whole numbers >= {minimum}, e.g. (8, 16); "
                         f"got {values!r}.")
    return tuple(whole(f"{name}[{i}]", v, minimum) for i, v in enumerate(values))


def real(name: str, value, low: float = -math.inf, high: float = math.inf, low_open: bool = False,
         why: str = "") -> float:
    """``value`` as a ``float``, or a ``ValueError`` unless ``low <= value <= high`` (``low < value`` if
    ``low_open``); ``why`` says in the message what the argument is."""
    inside = _is_real(value) and (value > low if low_open else value >= low) and value <= high
    if not inside:
        bracket = "(" if low_open else "["
        about = f" ({why})" if why else ""
        raise ValueError(f"{name}{about} must be a number in {bracket}{low:g}, {high:g}], got {value!r}.")
    return float(value)


def choice(name: str, value, options) -> str:
    """``value`` if it is one of ``options``, else a ``ValueError`` that lists them."""
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(repr(o) for o in options)}; got {value!r}.")
    return value
