"""Code exported from the notebooks' ``#@save`` cells by ``make export``. Do not edit these files by hand."""
