"""Download MVTec AD for users with internet: ``make mvtec`` or ``python -m anomaly_utils.download mvtec``.

::

    python -m anomaly_utils.download mvtec                              # all 15 categories (about 5 GB)
    python -m anomaly_utils.download mvtec --categories bottle carpet   # only these (per-category archives)

The archives land in ``data/downloads/`` and are unpacked into ``data/downloads/mvtec_anomaly_detection/
<category>/{train/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png}``, the layout
:func:`anomaly_utils.loaders.load_mvtec` reads. The course itself never downloads anything; this is the one
opt-in command that does. MVTec AD is licensed CC BY-NC-SA 4.0 (non-commercial use only) and is not shipped.

What the command does, so that an interrupted or damaged download never passes for a good one:

- **progress bar** (``tqdm.auto``) while downloading;
- **resume**: the download is written to ``<name>.part``; a rerun asks the server for the rest (HTTP Range)
  and appends if it answers 206, or starts over if it answers 200;
- **check**: the whole-dataset archive is checked against its known SHA-256; an archive that fails is
  renamed ``<name>.bad`` (never kept as the final file), the command explains and exits non-zero. Archives
  without a known checksum (the per-category ones, or ``--url`` without ``--sha256``) are checked for
  completeness (every byte the server announced, and the archive reads to its end) and their SHA-256 is
  printed. If the final archive already exists and checks out, the download is skipped;
- **safe extraction**: every member must stay inside the target folder (no absolute paths, no ``..``, no
  links pointing out); an archive with such a member is refused before anything is written, and
  ``filter="data"`` is used where Python supports it;
- **offline**: a short connect timeout (10 s), then a message that says what to do.

Where the URLs and the checksum come from (looked up on 2026-11-29)
------------------------------------------------------------------
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

MVTec rotates these share links now and then. If a link dies, override it: ``--url URL`` or the environment
variable ``AD_MVTEC_URL`` (a whole-dataset archive, or any archive in the same layout), with ``--sha256``
to check it; or download by hand from https://www.mvtec.com/company/research/datasets/mvtec-ad and unpack
into ``data/downloads/mvtec_anomaly_detection``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
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
_MISSING_URL_CODES = {403, 404, 410}
_DONE = ".complete"  # written into <category>/ once it is extracted completely


class DownloadError(RuntimeError):
    """A download, check or extraction that failed; the message says what to do."""


@dataclass
class Archive:
    name: str                    # file name in the downloads folder
    urls: tuple[str, ...]        # tried in order (the next one only if a URL answers 403/404/410)
    sha256: str | None = None    # None: no known checksum (completeness is still checked)
    categories: tuple[str, ...] | None = None  # what to extract; None: everything in the archive


def _say(msg: str) -> None:
    print(msg, flush=True)


def _manual_hint(target: Path) -> str:
    return (f"Check your internet connection and try again, or download MVTec AD by hand from {MVTEC_PAGE} "
            f"and unpack it into {target} (so that {target}/<category>/train/good exists).")


def _name_from_url(url: str) -> str:
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    return name if name.endswith((".tar", ".tar.xz", ".txz", ".tar.gz", ".tgz", ".tar.bz2")) else MVTEC_ARCHIVE


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


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
        total = start + length if length is not None else None
        received = 0
        with open(part, mode) as out, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                           unit_divisor=1024, desc=part.name[: -len(".part")]) as bar:
            while True:
                try:
                    block = response.read(CHUNK)
                except (TimeoutError, socket.timeout, OSError) as e:
                    raise DownloadError(f"The connection broke while downloading {part.name} ({e}). The part "
                                        f"downloaded so far is kept in {part}; run the command again to "
                                        "resume.") from e
                if not block:
                    break
                out.write(block)
                received += len(block)
                bar.update(len(block))
    if length is not None and received < length:
        raise DownloadError(f"The download of {part.name} stopped after {start + received:,} of "
                            f"{start + length:,} bytes. The part is kept in {part}; run the command again "
                            "to resume.")


def _download(archive: Archive, dest: Path, target: Path, timeout: float) -> Path:
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
                                    + _manual_hint(target)) from e
        except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            raise DownloadError(f"Could not reach {urllib.parse.urlsplit(url).netloc} ({reason}). "
                                + _manual_hint(target)) from e
    else:
        raise DownloadError(f"Could not download {archive.name}: {'; '.join(errors)}. The link may have moved: "
                            "pass the current one with --url (or AD_MVTEC_URL) and --sha256, or download by "
                            f"hand from {MVTEC_PAGE} and unpack into {target}.")
    problem = _check(part, archive)
    if problem is not None:
        bad.unlink(missing_ok=True)
        part.replace(bad)
        raise DownloadError(f"The downloaded {archive.name} failed its check: {problem}. It was moved to {bad} "
                            "(not used). Run the command again to download it anew; if this repeats, the file "
                            f"on the server has changed: download by hand from {MVTEC_PAGE}, or pass --url "
                            "and --sha256.")
    part.replace(final)
    return final


def _check(path: Path, archive: Archive) -> str | None:
    """None if ``path`` is a good copy of ``archive``, else what is wrong with it."""
    if archive.sha256:
        _say(f"Checking the SHA-256 of {path.name} ...")
        got = sha256_of(path)
        if got != archive.sha256.lower():
            return f"SHA-256 {got} != expected {archive.sha256.lower()} (checksum mismatch)"
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

def _relative(name: str) -> PurePosixPath | None:
    """The member's path inside the MVTec folder (an optional leading mvtec_anomaly_detection/ dropped)."""
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if parts and parts[0] == MVTEC_DIRNAME:
        parts = parts[1:]
    return PurePosixPath(*parts) if parts else None


def _unsafe(member: tarfile.TarInfo, target: Path) -> str | None:
    name = member.name
    if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "'..' in its path"
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        return "not a plain file or folder (device, fifo)"
    if member.issym() or member.islnk():
        link = PurePosixPath(member.linkname)
        if link.is_absolute() or member.linkname.startswith("/"):
            return "link to an absolute path"
        base = PurePosixPath(name).parent if member.issym() else PurePosixPath()
        root = target.resolve()
        resolved = (root / base / link).resolve()
        if resolved != root and root not in resolved.parents:
            return f"link pointing outside the folder ({member.linkname})"
    return None


def safe_extract(path: Path, target: Path, categories=None) -> list[str]:
    """Extract ``path`` into ``target`` (only ``categories`` if given); returns the categories extracted.

    Every member is checked first: one that would land outside ``target`` (absolute path, ``..``, a link
    pointing out, a device file) makes the whole archive refused, before anything is written.
    """
    wanted = set(categories) if categories else None
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        refused = [(m.name, why) for m in members if (why := _unsafe(m, target))]
        if refused:
            listed = "; ".join(f"{n!r}: {w}" for n, w in refused[:5])
            raise DownloadError(f"Refusing to extract {path.name}: {len(refused)} unsafe member(s) ({listed}). "
                                "Nothing was extracted. The archive is not the one expected; delete it and "
                                f"download MVTec AD from {MVTEC_PAGE}.")
        chosen, found = [], set()
        for m in members:
            rel = _relative(m.name)
            if rel is None:
                continue
            top = rel.parts[0]
            if len(rel.parts) > 1 or m.isdir():
                found.add(top)
            if wanted is None or top in wanted or (len(rel.parts) == 1 and not m.isdir()):
                m = copy.copy(m)  # extracted under its path relative to the MVTec folder
                m.name = str(rel)
                chosen.append(m)
        if wanted is not None and not wanted <= found:
            missing = sorted(wanted - found)
            raise DownloadError(f"{path.name} holds no folder for {', '.join(missing)} (it has: "
                                f"{', '.join(sorted(found)) or 'nothing'}).")
        extracted = sorted(wanted if wanted is not None else found)
        target.mkdir(parents=True, exist_ok=True)
        _say(f"Extracting {path.name} into {target} ({', '.join(extracted)}) ...")
        for category in extracted:  # a category is marked complete only after this extraction finishes
            (target / category / _DONE).unlink(missing_ok=True)
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        for m in chosen:
            tar.extract(m, target, **kwargs)
    for category in extracted:
        if (target / category).is_dir():
            (target / category / _DONE).touch()
    return extracted


# --------------------------------------------------------------------------- the command

def plan(categories=None, url: str | None = None, sha256: str | None = None,
         whole: bool = False) -> list[Archive]:
    """The archives to fetch for ``categories`` (None: all), honouring ``url`` / ``AD_MVTEC_URL``."""
    if categories:
        unknown = [c for c in categories if c not in MVTEC_CATEGORIES]
        if unknown:
            raise DownloadError(f"Unknown MVTec AD categor{'y' if len(unknown) == 1 else 'ies'}: "
                                f"{', '.join(unknown)}. Choose from: {' '.join(MVTEC_CATEGORIES)}.")
        categories = tuple(dict.fromkeys(categories))
    url = url or os.environ.get("AD_MVTEC_URL") or None
    if url:
        return [Archive(_name_from_url(url), (url,), sha256, categories or None)]
    if categories and not whole:
        return [Archive(f"{c}.tar.xz", (MVTEC_CATEGORY_URLS[c],), sha256 if len(categories) == 1 else None, (c,))
                for c in categories]
    return [Archive(MVTEC_ARCHIVE, MVTEC_URLS, sha256 or MVTEC_SHA256, categories or MVTEC_CATEGORIES)]


def download_mvtec(categories=None, dest=None, url: str | None = None, sha256: str | None = None,
                   whole: bool = False, timeout: float = CONNECT_TIMEOUT) -> Path:
    """Download, check and extract MVTec AD (see the module docstring); returns the dataset folder."""
    dest = Path(dest) if dest is not None else DOWNLOADS
    target = dest / MVTEC_DIRNAME
    for archive in plan(categories, url, sha256, whole):
        cats = archive.categories
        if cats and all((target / c / _DONE).is_file() for c in cats):
            _say(f"{', '.join(cats)}: already extracted in {target}; nothing to download.")
            continue
        path = _download(archive, dest, target, timeout)
        safe_extract(path, target, cats)
    _say(f"MVTec AD is in {target}. Use it with AD_DATA=mvtec, or "
         f"anomaly_utils.loaders.load_mvtec({str(target)!r}, '<category>').")
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m anomaly_utils.download",
                                     description="Download a data set the course can use (opt-in; needs internet).")
    sub = parser.add_subparsers(dest="dataset", required=True)
    p = sub.add_parser("mvtec", help="MVTec AD (CC BY-NC-SA 4.0, non-commercial use only)",
                       description=f"Download MVTec AD into {DOWNLOADS / MVTEC_DIRNAME}.")
    p.add_argument("--categories", nargs="+", metavar="CATEGORY",
                   help="only these categories (default: all 15): " + " ".join(MVTEC_CATEGORIES))
    p.add_argument("--dest", default=None, help=f"downloads folder (default: {DOWNLOADS})")
    p.add_argument("--url", default=None, help="archive URL to use instead of the built-in ones "
                   "(also: environment variable AD_MVTEC_URL)")
    p.add_argument("--sha256", default=None, help="expected SHA-256 of the archive (hex)")
    p.add_argument("--whole", action="store_true", help="with --categories: download the whole-dataset "
                   "archive (checked against its known SHA-256) and extract only those categories")
    p.add_argument("--timeout", type=float, default=CONNECT_TIMEOUT, help="network timeout in seconds")
    args = parser.parse_args(argv)
    try:
        download_mvtec(args.categories, args.dest, args.url, args.sha256, args.whole, args.timeout)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; run the command again to resume the download.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["download_mvtec", "safe_extract", "plan", "main", "DownloadError", "MVTEC_CATEGORIES",
           "MVTEC_URLS", "MVTEC_SHA256", "MVTEC_CATEGORY_URLS"]
