"""Download MVTec AD or VisA for users with internet: ``make mvtec`` / ``make visa``, or
``python -m anomaly_utils.download mvtec|visa``.

::

    python -m anomaly_utils.download mvtec                              # all 15 categories (about 5 GB)
    python -m anomaly_utils.download mvtec --categories bottle carpet   # only these (per-category archives)
    python -m anomaly_utils.download visa                               # all 12 categories (about 1.9 GB)
    python -m anomaly_utils.download visa --categories candle pcb1      # one archive; only these are unpacked

The archives land in ``data/downloads/`` and are unpacked there:

- MVTec AD into ``data/downloads/mvtec_anomaly_detection/<category>/{train/good, test/<defect>,
  ground_truth/<defect>/<stem>_mask.png}``, the layout :func:`anomaly_utils.loaders.load_mvtec` reads;
  CC BY-NC-SA 4.0 (non-commercial use only);
- VisA into ``data/downloads/visa/<category>/{Data/Images/Normal, Data/Images/Anomaly, Data/Masks/Anomaly,
  image_anno.csv}`` plus ``split_csv/1cls.csv`` (the official one-class split), what
  :func:`anomaly_utils.loaders.load_visa` reads. Zou et al., "SPot-the-Difference Self-Supervised Pre-training
  for Anomaly Detection and Segmentation", ECCV 2022. License: CC BY 4.0 as the dataset's repository
  github.com/amazon-science/spot-diff says (its README, "License"); anomalib's docstring says CC BY-NC-SA 4.0,
  so check the repository before commercial use.

The course itself never downloads anything; this is the one opt-in command that does, and neither set is shipped.

What the command does, so that an interrupted or damaged download never passes for a good one:

- **progress bar** (``tqdm.auto``) while downloading;
- **resume**: the download is written to ``<name>.part``; a rerun asks the server for the rest (HTTP Range)
  and appends if it answers 206, or starts over if it answers 200;
- **check**: the whole-dataset archives are checked against their known checksums; an archive that fails is
  renamed ``<name>.bad`` (never kept as the final file), the command explains and exits non-zero. Archives
  without a known checksum (MVTec's per-category ones, or ``--url`` without ``--sha256``) are checked for
  completeness (every byte the server announced, and the archive reads to its end) and their SHA-256 is
  printed. If the final archive already exists and checks out, the download is skipped;
- **safe extraction**: every member must stay inside the target folder, judged by the path it is extracted to
  (after an archive-wide top folder such as ``mvtec_anomaly_detection/`` is dropped): no absolute paths, no
  ``..``, no links pointing out, no devices. An archive with such a member, without any category folder, or
  larger than the free disk space is refused before anything is written; ``filter="data"`` is used where
  Python supports it. A category is marked complete (``<category>/.complete``) only once all of it is written;
- **disk space**: checked before the download (from the size the server announces) and before extraction; a
  full disk during either stops with a message that says how much is free where (the download resumes);
- **offline**: a short connect timeout (10 s), then a message that says what to do.

Where the URLs and the checksums come from (looked up on 2026-11-29)
-------------------------------------------------------------------
MVTec AD:

- SHA-256 of ``mvtec_anomaly_detection.tar.xz``: ``DOWNLOAD_INFO.hashsum`` in anomalib
  (github.com/open-edge-platform/anomalib, ``src/anomalib/data/datamodules/image/mvtecad.py``, commit
  37449969fda4); anomalib checks it with ``hashlib.sha256`` (``check_hash`` in
  ``src/anomalib/data/utils/download.py``, default algorithm ``"sha256"``).
- Whole-dataset URL, first choice: the ``/shares/150996/...`` link, as listed in
  github.com/rmateusc/stable-datasets ``stable_datasets/images/mvtec_ad.py`` (``_BUNDLE_URL``, commit
  ab88632097f5) and several other 2026 projects with the same SHA-256. anomalib issue #3608 (2026-05-24)
  reported its previous link as 404; anomalib PR #3673 (merged 2026-07-16) updated the MVTec links.
- Whole-dataset URL, fallback: anomalib's ``DOWNLOAD_INFO.url`` at commit 37449969fda4 (the
  ``/shares/38536/...f283/`` link, from anomalib PR #3138). Tried if the first answers 404/403/410.
- Per-category URLs: ``_CATEGORY_URLS`` in github.com/rmateusc/stable-datasets
  ``stable_datasets/images/mvtec_ad.py`` (commit ab88632097f5). No project lists checksums for them.

VisA:

- URL: ``DOWNLOAD_INFO.url`` in anomalib (``src/anomalib/data/datamodules/image/visa.py``, commit
  37449969fda4), the authors' S3 bucket (the spot-diff README links the same bucket).
- Checksums: **the dataset's authors publish none** (no SHA-256 or MD5 in github.com/amazon-science/spot-diff).
  anomalib pins two for ``VisA_20220922.tar``: the MD5 ``ef908989b6dc701fc218f643c127a4de`` in its older
  releases (e.g. 0.6.0, ``src/anomalib/data/visa.py``, ``DownloadInfo(hash=...)``, checked with MD5) and the
  SHA-256 ``2eb8690c...f362`` in ``DOWNLOAD_INFO.hashsum`` at commit 37449969fda4 (the same SHA-256 and a size of
  1,929,840,640 bytes are reported by several independent projects that downloaded the archive). Both are
  checked, in one pass over the file.

The links rotate now and then. If a link dies, override it: ``--url URL`` or the environment variable
``AD_MVTEC_URL`` / ``AD_VISA_URL`` (an archive in the same layout), with ``--sha256`` to check it; or download
by hand (https://www.mvtec.com/company/research/datasets/mvtec-ad, https://github.com/amazon-science/spot-diff)
and unpack into ``data/downloads/mvtec_anomaly_detection`` or ``data/downloads/visa``.
"""

from __future__ import annotations

import argparse
import copy
import errno
import hashlib
import http.client
import math
import os
import shutil
import socket
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

REPO_ROOT = Path(__file__).resolve().parents[1]
DOWNLOADS = REPO_ROOT / "data" / "downloads"
MVTEC_DIRNAME = "mvtec_anomaly_detection"
MVTEC_PAGE = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
CONNECT_TIMEOUT = 10.0  # seconds; also the longest wait for one read of the response
CHUNK = 1 << 20

MVTEC_CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
                    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper")

MVTEC_ARCHIVE = "mvtec_anomaly_detection.tar.xz"
MVTEC_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
MVTEC_URLS = (
    "https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/"
    "download/420938113-1629960298/mvtec_anomaly_detection.tar.xz",
    "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f283/"
    "download/420938113-1629960298/mvtec_anomaly_detection.tar.xz",
)
_SHARES = "https://www.mydrive.ch/shares/"
MVTEC_CATEGORY_URLS = {
    "bottle": "150452/132a93367fb17cdf968dfb5c4013f6e7/download/420937370-1629958698/bottle.tar.xz",
    "cable": "150453/10f960e07fec2838b2cd512586633a32/download/420937413-1629958794/cable.tar.xz",
    "capsule": "150454/e0ce6dd74eb150f46c0d98131b3703f2/download/420937454-1629958872/capsule.tar.xz",
    "carpet": "150455/eac7fbce84d93a5094e13f391170eca4/download/420937484-1629959013/carpet.tar.xz",
    "grid": "150456/bb0b2e3dc804ccb8b4485e01f8e4493b/download/420937487-1629959044/grid.tar.xz",
    "hazelnut": "150457/51d49f65e84bdc100ff8035d7dd783ea/download/420937545-1629959162/hazelnut.tar.xz",
    "leather": "150458/923030ce14e10a7d147e95d0f8885f6b/download/420937607-1629959262/leather.tar.xz",
    "metal_nut": "150459/c68856a21dca589b0f8ff6d4ee0f18f4/download/420937637-1629959294/metal_nut.tar.xz",
    "pill": "150460/d4f1c04da67034ccc8d8b5fa3e73f244/download/420938129-1629960351/pill.tar.xz",
    "screw": "150461/242f454cc6385e5693c4fd4b94567d1e/download/420938130-1629960389/screw.tar.xz",
    "tile": "150462/5479f0fdc97bc6fa16eab0cb0cf0109f/download/420938133-1629960456/tile.tar.xz",
    "toothbrush": "150463/895a1a5fb84b958f07417784b060434b/download/420938134-1629960477/toothbrush.tar.xz",
    "transistor": "150464/99b8ea0332438d64fcc2475ee73f9c29/download/420938166-1629960554/transistor.tar.xz",
    "wood": "150465/d5b4115b720cdb54d217e75636e6e374/download/420938383-1629960649/wood.tar.xz",
    "zipper": "150466/bd155b557520edaf692d9bfdb915c24a/download/420938385-1629960680/zipper.tar.xz",
}
MVTEC_CATEGORY_URLS = {k: _SHARES + v for k, v in MVTEC_CATEGORY_URLS.items()}

VISA_DIRNAME = "visa"
VISA_PAGE = "https://github.com/amazon-science/spot-diff"
VISA_CATEGORIES = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2",
                   "pcb3", "pcb4", "pipe_fryum")
VISA_ARCHIVE = "VisA_20220922.tar"
VISA_URL = "https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar"
# No checksum is published by the dataset's authors; both of these are anomalib's pins (see the docstring).
VISA_MD5 = "ef908989b6dc701fc218f643c127a4de"
VISA_SHA256 = "2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362"
VISA_SPLIT_FILE = "split_csv/1cls.csv"

_MISSING_URL_CODES = {403, 404, 410}
_DONE = ".complete"  # written into <category>/ once it is extracted completely
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DownloadError(RuntimeError):
    """A download, check or extraction that failed; the message says what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    """What the downloader needs to know about a data set."""

    key: str                        # sub-command: "mvtec", "visa"
    title: str                      # "MVTec AD"
    dirname: str                    # folder in the downloads folder
    page: str                       # where to download by hand
    categories: tuple[str, ...]
    probe: str                      # every category folder holds <category>/<probe>/...
    extras: tuple[str, ...] = ()    # top-level folders unpacked with any choice of categories
    url_env: str = ""               # environment variable that overrides the URL
    layout: str = ""                # what the unpacked folder holds, for messages


MVTEC = DatasetInfo("mvtec", "MVTec AD", MVTEC_DIRNAME, MVTEC_PAGE, MVTEC_CATEGORIES, "train", (), "AD_MVTEC_URL",
                    "<category>/train/good")
VISA = DatasetInfo("visa", "VisA", VISA_DIRNAME, VISA_PAGE, VISA_CATEGORIES, "Data", ("split_csv",), "AD_VISA_URL",
                   "<category>/Data/Images and split_csv/1cls.csv")
DATASETS = {d.key: d for d in (MVTEC, VISA)}


@dataclass
class Archive:
    name: str                    # file name in the downloads folder
    urls: tuple[str, ...]        # tried in order (the next one only if a URL answers 403/404/410)
    sha256: str | None = None    # None: no known SHA-256
    categories: tuple[str, ...] | None = None  # what to extract; None: every category in the archive
    md5: str | None = None       # checked too where given (VisA: anomalib's older pin)


def _say(msg: str) -> None:
    print(msg, flush=True)


def _manual_hint(target: Path, ds: DatasetInfo = MVTEC) -> str:
    return (f"Check your internet connection and try again, or download {ds.title} by hand from {ds.page} "
            f"and unpack it into {target} (so that {target}/{ds.layout} exists).")


def _name_from_url(url: str, default: str = MVTEC_ARCHIVE) -> str:
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    return name if name.endswith((".tar", ".tar.xz", ".txz", ".tar.gz", ".tgz", ".tar.bz2")) else default


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _free_space(path: Path) -> int:
    """Free bytes on the disk that holds ``path`` (or its nearest existing parent)."""
    path = Path(path).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _no_space(where: Path, needed: int | None, what: str, resume: bool) -> DownloadError:
    free = _free_space(where)
    need = f" It needs {_size(needed)}," if needed is not None else ""
    again = ("run the command again: the download resumes where it stopped" if resume else
             "run the command again")
    return DownloadError(f"Not enough disk space for {what}.{need} {_size(free)} free on the disk of {where}. "
                         f"Free some space (or choose a folder on a bigger disk with --dest) and {again}.")


def digests(path: Path) -> tuple[str, str]:
    """``(sha256, md5)`` of a file, in one pass."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def sha256_of(path: Path) -> str:
    return digests(path)[0]


def check_timeout(timeout) -> float:
    """``timeout`` as seconds > 0, or an error (0 would make the socket non-blocking: 'could not reach')."""
    try:
        value = float(timeout)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(timeout, bool) or not math.isfinite(value) or value <= 0:
        raise DownloadError(f"--timeout must be a number of seconds > 0 (default {CONNECT_TIMEOUT:g}), got "
                            f"{timeout!r}.")
    return value


def _check_hex(value: str | None, n: int, what: str) -> str | None:
    if value is None:
        return None
    v = value.strip().lower()
    if len(v) != n or any(c not in "0123456789abcdef" for c in v):
        raise DownloadError(f"--{what.lower().replace('-', '')} must be {n} hexadecimal digits (the {what} of the "
                            f"archive, as `{'sha256sum' if what == 'SHA-256' else 'md5sum'} FILE` prints it), got "
                            f"{value!r}.")
    return v


def _check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DownloadError(f"--url must be an http:// or https:// address of the archive, got {url!r}. For a file "
                            "you already have, unpack it by hand into the data folder (see --help).")
    return url


# --------------------------------------------------------------------------- download with resume

def _open(url: str, start: int, timeout: float):
    headers = {"User-Agent": "anomaly-course-downloader/1"}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _fetch(url: str, part: Path, timeout: float) -> None:
    """Download ``url`` into ``part``, continuing from its size when the server honours the Range request."""
    from tqdm.auto import tqdm

    start = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, start, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:  # the .part already holds everything the server has
            e.close()
            return
        raise
    with response:
        status = response.status
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if start and status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {start}-"):
                raise DownloadError(f"The server answered the resume request for {part.name} with an unexpected "
                                    f"range ({content_range!r}). Delete {part} and run the command again.")
            _say(f"Resuming {part.name} at {start:,} bytes.")
            mode = "ab"
        else:
            if start:
                _say(f"The server does not resume downloads; starting {part.name} over.")
            start, mode = 0, "wb"
        if length is not None and length > _free_space(part.parent) + (part.stat().st_size if mode == "wb"
                                                                        and part.exists() else 0):
            raise _no_space(part.parent, length, f"the download of {part.name[: -len('.part')]}", resume=True)
        total = start + length if length is not None else None
        received = 0
        try:
            with open(part, mode) as out, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                               unit_divisor=1024, desc=part.name[: -len(".part")]) as bar:
                while True:
                    try:
                        block = response.read(CHUNK)
                    except (TimeoutError, socket.timeout, OSError, http.client.HTTPException) as e:
                        raise DownloadError(f"The connection broke while downloading {part.name} "
                                            f"({type(e).__name__}: {e}). The part downloaded so far is kept in "
                                            f"{part}; run the command again to resume.") from e
                    if not block:
                        break
                    out.write(block)
                    received += len(block)
                    bar.update(len(block))
        except OSError as e:
            if e.errno in _NO_SPACE:
                raise _no_space(part.parent, None if length is None else length - received,
                                f"the download of {part.name[: -len('.part')]}", resume=True) from e
            raise
    if length is not None and received < length:
        raise DownloadError(f"The download of {part.name} stopped after {start + received:,} of "
                            f"{start + length:,} bytes. The part is kept in {part}; run the command again "
                            "to resume.")


def _download(archive: Archive, dest: Path, target: Path, timeout: float, ds: DatasetInfo = MVTEC) -> Path:
    """The checked archive in ``dest``: downloaded (or resumed) unless a good copy is already there."""
    final, part, bad = dest / archive.name, dest / (archive.name + ".part"), dest / (archive.name + ".bad")
    if final.exists():
        problem = _check(final, archive)
        if problem is None:
            _say(f"{final} is already here and checks out; skipping the download.")
            return final
        bad.unlink(missing_ok=True)
        final.replace(bad)
        _say(f"The existing {final.name} does not check out ({problem}); moved it to {bad} and downloading "
             "it again.")
    dest.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in archive.urls:
        _say(f"Downloading {archive.name} from {url}")
        try:
            _fetch(url, part, timeout)
            break
        except urllib.error.HTTPError as e:
            e.close()
            errors.append(f"{url} answered HTTP {e.code} {e.reason}")
            if e.code not in _MISSING_URL_CODES:
                raise DownloadError(f"Could not download {archive.name}: {errors[-1]}. Try again later, or "
                                    + _manual_hint(target, ds)) from e
        except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            raise DownloadError(f"Could not reach {urllib.parse.urlsplit(url).netloc} ({reason}). "
                                + _manual_hint(target, ds)) from e
        except http.client.HTTPException as e:  # e.g. a server that closes the connection without an answer
            raise DownloadError(f"The server at {urllib.parse.urlsplit(url).netloc} gave no valid answer "
                                f"({type(e).__name__}: {e}). Try again later, or " + _manual_hint(target, ds)) from e
    else:
        raise DownloadError(f"Could not download {archive.name}: {'; '.join(errors)}. The link may have moved: "
                            f"pass the current one with --url (or {ds.url_env}) and --sha256, or download by "
                            f"hand from {ds.page} and unpack into {target}.")
    problem = _check(part, archive)
    if problem is not None:
        bad.unlink(missing_ok=True)
        part.replace(bad)
        raise DownloadError(f"The downloaded {archive.name} failed its check: {problem}. It was moved to {bad} "
                            "(not used). Run the command again to download it anew; if this repeats, the file "
                            f"on the server has changed: download by hand from {ds.page}, or pass --url "
                            "and --sha256.")
    part.replace(final)
    return final


def _check(path: Path, archive: Archive) -> str | None:
    """None if ``path`` is a good copy of ``archive``, else what is wrong with it."""
    if archive.sha256 or archive.md5:
        _say(f"Checking the checksum of {path.name} ...")
        sha, md5 = digests(path)
        if archive.sha256 and sha != archive.sha256.lower():
            return f"SHA-256 {sha} != expected {archive.sha256.lower()} (checksum mismatch)"
        if archive.md5 and md5 != archive.md5.lower():
            return f"MD5 {md5} != expected {archive.md5.lower()} (checksum mismatch)"
        return None
    try:  # no known checksum: the archive must at least read to its end
        with tarfile.open(path) as tar:
            n = sum(1 for _ in tar)
    except (tarfile.TarError, EOFError, OSError) as e:
        return f"it is not a complete tar archive ({e})"
    if n == 0:
        return "it is an empty archive"
    _say(f"{path.name}: no known checksum to compare with; it is a complete archive of {n} entries, "
         f"SHA-256 {sha256_of(path)}.")
    return None


# --------------------------------------------------------------------------- safe extraction

def _parts(name: str) -> tuple[str, ...]:
    return tuple(p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", "."))


def _wrapper(names: list[str], ds: DatasetInfo) -> str | None:
    """The archive-wide top folder to drop (e.g. ``mvtec_anomaly_detection/``), or None.

    Dropped only if every member lies in it and it is not itself a category (``<top>/<probe>/``) or an
    extra folder (VisA's ``split_csv``).
    """
    tops = {p[0] for p in map(_parts, names) if p}
    if len(tops) != 1:
        return None
    (top,) = tops
    is_category = any(len(p) > 1 and p[0] == top and p[1] == ds.probe for p in map(_parts, names))
    return None if is_category or top in ds.extras else top


def _relative(name: str, wrapper: str | None = MVTEC_DIRNAME) -> PurePosixPath | None:
    """The member's path inside the data set folder (the archive-wide ``wrapper`` folder dropped)."""
    parts = list(_parts(name))
    if parts and wrapper is not None and parts[0] == wrapper:
        parts = parts[1:]
    return PurePosixPath(*parts) if parts else None


def _unsafe(member: tarfile.TarInfo, target: Path, rel: PurePosixPath | None, wrapper: str | None) -> str | None:
    """Why ``member`` (extracted to ``target / rel``) would write outside ``target``, or None."""
    name = member.name
    if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "'..' in its path"
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        return "not a plain file or folder (device, fifo)"
    if member.issym() or member.islnk():
        link = member.linkname
        if PurePosixPath(link).is_absolute() or link.startswith(("/", "\\")):
            return "link to an absolute path"
        root = target.resolve()
        if member.issym():  # relative to the folder the link is extracted into (after the wrapper is dropped)
            where = root / (rel.parent if rel is not None else PurePosixPath()) / link
        else:  # a hard link names another member of the archive
            linked = _relative(link, wrapper)
            if linked is None or ".." in PurePosixPath(link).parts:
                return f"hard link to {link!r}, which is not a file of the archive's folder"
            where = root / linked
        resolved = Path(os.path.normpath(where))
        if resolved != root and root not in resolved.parents:
            return f"link pointing outside the folder ({link})"
    return None


def safe_extract(path: Path, target: Path, categories=None, dataset: DatasetInfo = MVTEC) -> list[str]:
    """Extract ``path`` into ``target`` (only ``categories`` if given); returns the categories extracted.

    Every member is checked first: one that would land outside ``target`` (absolute path, ``..``, a link
    pointing out, a device file), an archive without any category folder, or one larger than the free disk
    space makes the whole archive refused, before anything is written.
    """
    ds = dataset
    wanted = set(categories) if categories else None
    try:
        tar = tarfile.open(path)
        members = tar.getmembers()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DownloadError(f"{path.name} is not a complete tar archive ({e}). Delete it and run the command again.") \
            from e
    with tar:
        wrapper = _wrapper([m.name for m in members], ds)
        rels = [_relative(m.name, wrapper) for m in members]
        refused = [(m.name, why) for m, rel in zip(members, rels) if (why := _unsafe(m, target, rel, wrapper))]
        if refused:
            listed = "; ".join(f"{n!r}: {w}" for n, w in refused[:5])
            raise DownloadError(f"Refusing to extract {path.name}: {len(refused)} unsafe member(s) ({listed}). "
                                "Nothing was extracted. The archive is not the one expected; delete it and "
                                f"download {ds.title} from {ds.page}.")
        found = {rel.parts[0] for rel in rels if rel is not None and len(rel.parts) > 1 and rel.parts[1] == ds.probe}
        tops = sorted({rel.parts[0] for rel in rels if rel is not None})
        if not found:
            raise DownloadError(f"{path.name} holds no {ds.title} category folder (<category>/{ds.probe}/...; it "
                                f"has: {', '.join(tops[:10]) or 'nothing'}). Nothing was extracted. It is not the "
                                f"archive expected: delete {path} and download {ds.title} from {ds.page}.")
        if wanted is not None and not wanted <= found:
            missing = sorted(wanted - found)
            raise DownloadError(f"{path.name} holds no folder for {', '.join(missing)} (it has: "
                                f"{', '.join(sorted(found)) or 'nothing'}).")
        extracted = sorted(wanted if wanted is not None else found)
        extras = [e for e in ds.extras if e in tops]
        chosen = []
        for m, rel in zip(members, rels):
            if rel is None:
                continue
            top = rel.parts[0]
            if top in extracted or top in extras or (len(rel.parts) == 1 and not m.isdir()):
                m = copy.copy(m)  # extracted under its path relative to the data set folder
                m.name = str(rel)
                if m.islnk():
                    m.linkname = str(_relative(m.linkname, wrapper))
                chosen.append(m)
        needed = sum(m.size for m in chosen if m.isfile())
        if needed > _free_space(target):
            raise _no_space(target, needed, f"unpacking {path.name}", resume=False)
        _say(f"Extracting {path.name} into {target} ({', '.join(extracted)}) ...")
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        try:
            target.mkdir(parents=True, exist_ok=True)
            for folder in extracted + extras:  # a folder is marked complete only after this extraction finishes
                (target / folder / _DONE).unlink(missing_ok=True)
            for m in chosen:
                tar.extract(m, target, **kwargs)
        except OSError as e:
            if e.errno in _NO_SPACE:
                raise _no_space(target, needed, f"unpacking {path.name}", resume=False) from e
            raise DownloadError(f"Could not write {target} while unpacking {path.name} ({type(e).__name__}: {e}). "
                                "The categories being unpacked are not marked complete; fix the cause and run the "
                                "command again.") from e
        except (tarfile.TarError, EOFError) as e:
            raise DownloadError(f"Unpacking {path.name} failed ({type(e).__name__}: {e}). The categories being "
                                f"unpacked are not marked complete; delete {path} and run the command again.") from e
    for folder in extracted + extras:
        if (target / folder).is_dir():
            (target / folder / _DONE).touch()
    return extracted


# --------------------------------------------------------------------------- the commands

def _check_categories(categories, ds: DatasetInfo):
    if categories is None:
        return None
    if isinstance(categories, str):
        categories = [categories]
    unknown = [c for c in categories if c not in ds.categories]
    if unknown:
        raise DownloadError(f"Unknown {ds.title} categor{'y' if len(unknown) == 1 else 'ies'}: "
                            f"{', '.join(map(repr, unknown))}. Choose from: {' '.join(ds.categories)}.")
    return tuple(dict.fromkeys(categories)) or None


def plan(categories=None, url: str | None = None, sha256: str | None = None,
         whole: bool = False) -> list[Archive]:
    """The MVTec AD archives to fetch for ``categories`` (None: all), honouring ``url`` / ``AD_MVTEC_URL``."""
    categories = _check_categories(categories, MVTEC)
    sha256 = _check_hex(sha256, 64, "SHA-256")
    url = url or os.environ.get("AD_MVTEC_URL") or None
    if url:
        return [Archive(_name_from_url(_check_url(url)), (url,), sha256, categories or None)]
    if categories and not whole:
        return [Archive(f"{c}.tar.xz", (MVTEC_CATEGORY_URLS[c],), sha256 if len(categories) == 1 else None, (c,))
                for c in categories]
    return [Archive(MVTEC_ARCHIVE, MVTEC_URLS, sha256 or MVTEC_SHA256, categories or MVTEC_CATEGORIES)]


def visa_plan(categories=None, url: str | None = None, sha256: str | None = None,
              md5: str | None = None) -> list[Archive]:
    """The VisA archive (one for all categories; only ``categories`` are unpacked), honouring ``AD_VISA_URL``."""
    categories = _check_categories(categories, VISA)
    sha256, md5 = _check_hex(sha256, 64, "SHA-256"), _check_hex(md5, 32, "MD5")
    url = url or os.environ.get("AD_VISA_URL") or None
    if url:
        return [Archive(_name_from_url(_check_url(url), VISA_ARCHIVE), (url,), sha256, categories, md5)]
    known = sha256 is None and md5 is None  # checksums given by the user replace the known ones
    return [Archive(VISA_ARCHIVE, (VISA_URL,), VISA_SHA256 if known else sha256, categories or VISA_CATEGORIES,
                    VISA_MD5 if known else md5)]


def _run(ds: DatasetInfo, archives: list[Archive], dest, timeout) -> Path:
    timeout = check_timeout(timeout)
    dest = Path(dest).expanduser() if dest is not None else DOWNLOADS
    if dest.exists() and not dest.is_dir():
        raise DownloadError(f"--dest {str(dest)!r} is a file; give a folder for the downloads.")
    target = dest / ds.dirname
    for archive in archives:
        cats = archive.categories
        folders = list(cats or ()) + list(ds.extras)
        if cats and all((target / c / _DONE).is_file() for c in folders):
            _say(f"{', '.join(cats)}: already extracted in {target}; nothing to download.")
            continue
        path = _download(archive, dest, target, timeout, ds)
        safe_extract(path, target, cats, ds)
    return target


def download_mvtec(categories=None, dest=None, url: str | None = None, sha256: str | None = None,
                   whole: bool = False, timeout: float = CONNECT_TIMEOUT) -> Path:
    """Download, check and extract MVTec AD (see the module docstring); returns the dataset folder."""
    target = _run(MVTEC, plan(categories, url, sha256, whole), dest, timeout)
    _say(f"MVTec AD is in {target}. Use it with AD_DATA=mvtec, or "
         f"anomaly_utils.loaders.load_mvtec({str(target)!r}, '<category>').")
    return target


def download_visa(categories=None, dest=None, url: str | None = None, sha256: str | None = None,
                  md5: str | None = None, timeout: float = CONNECT_TIMEOUT) -> Path:
    """Download, check and extract VisA (see the module docstring); returns the dataset folder."""
    target = _run(VISA, visa_plan(categories, url, sha256, md5), dest, timeout)
    if not (target / VISA_SPLIT_FILE).is_file():
        raise DownloadError(f"The archive unpacked into {target}, but it has no {VISA_SPLIT_FILE} (the official "
                            f"one-class split). Download the original archive from {VISA_PAGE}.")
    _say(f"VisA is in {target} (CC BY 4.0, see {VISA_PAGE}). Use it with AD_DATA=visa, or "
         f"anomaly_utils.loaders.load_visa({str(target)!r}, '<category>').")
    return target


def _timeout_arg(text: str) -> float:
    try:
        return check_timeout(float(text))
    except (ValueError, DownloadError) as e:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}") from e


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m anomaly_utils.download",
                                     description="Download a data set the course can use (opt-in; needs internet).")
    sub = parser.add_subparsers(dest="dataset", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dest", default=None, help=f"downloads folder (default: {DOWNLOADS})")
    common.add_argument("--sha256", default=None, help="expected SHA-256 of the archive (hex)")
    common.add_argument("--timeout", type=_timeout_arg, default=CONNECT_TIMEOUT,
                        help="network timeout in seconds (> 0)")
    p = sub.add_parser("mvtec", parents=[common], help="MVTec AD (CC BY-NC-SA 4.0, non-commercial use only)",
                       description=f"Download MVTec AD into {DOWNLOADS / MVTEC_DIRNAME}.")
    p.add_argument("--categories", nargs="+", metavar="CATEGORY",
                   help="only these categories (default: all 15): " + " ".join(MVTEC_CATEGORIES))
    p.add_argument("--url", default=None, help="archive URL to use instead of the built-in ones "
                   "(also: environment variable AD_MVTEC_URL)")
    p.add_argument("--whole", action="store_true", help="with --categories: download the whole-dataset "
                   "archive (checked against its known SHA-256) and extract only those categories")
    v = sub.add_parser("visa", parents=[common], help="VisA (CC BY 4.0 per github.com/amazon-science/spot-diff)",
                       description=f"Download VisA (one archive, about 1.9 GB) into {DOWNLOADS / VISA_DIRNAME}.")
    v.add_argument("--categories", nargs="+", metavar="CATEGORY",
                   help="unpack only these categories (default: all 12): " + " ".join(VISA_CATEGORIES))
    v.add_argument("--url", default=None, help="archive URL to use instead of the built-in one "
                   "(also: environment variable AD_VISA_URL)")
    v.add_argument("--md5", default=None, help="expected MD5 of the archive (hex)")
    args = parser.parse_args(argv)
    try:
        if args.dataset == "mvtec":
            download_mvtec(args.categories, args.dest, args.url, args.sha256, args.whole, args.timeout)
        else:
            download_visa(args.categories, args.dest, args.url, args.sha256, args.md5, args.timeout)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except OSError as e:  # e.g. a downloads folder we may not write to
        where = getattr(e, "filename", None) or args.dest or DOWNLOADS
        print(f"error: cannot write {where} ({e.strerror or e}). Choose a folder you can write to with --dest.",
              file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; run the command again to resume the download.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["download_mvtec", "download_visa", "safe_extract", "plan", "visa_plan", "main", "DownloadError",
           "MVTEC_CATEGORIES", "MVTEC_URLS", "MVTEC_SHA256", "MVTEC_CATEGORY_URLS", "VISA_CATEGORIES", "VISA_URL",
           "VISA_MD5", "VISA_SHA256", "MVTEC", "VISA"]
