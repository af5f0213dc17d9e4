"""anomaly_utils.download against a local HTTP server (127.0.0.1 only) serving a tiny MVTec-like archive."""

import errno
import hashlib
import io
import socket
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_utils import download
from anomaly_utils.download import MVTEC_DIRNAME, main, safe_extract
from anomaly_utils.loaders import load_mvtec

TIMEOUT = ["--timeout", "5"]


def png(value, mask=False):
    a = np.zeros((8, 8), np.uint8) if mask else np.full((8, 8, 3), value, np.uint8)
    if mask:
        a[2:5, 2:5] = 255
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def tar_xz(files: dict, prefix: str = "") -> bytes:
    """An xz tar with ``files`` ({path: bytes}); members named ``prefix + path``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def mvtec_files(categories=("bottle", "carpet")) -> dict:
    files = {"license.txt": b"CC BY-NC-SA 4.0\n"}
    for c in categories:
        for i in range(3):
            files[f"{c}/train/good/{i:03d}.png"] = png(100 + i)
        files[f"{c}/test/good/000.png"] = png(110)
        files[f"{c}/test/broken/000.png"] = png(200)
        files[f"{c}/ground_truth/broken/000_mask.png"] = png(0, mask=True)
    return files


class Server:
    """ThreadingHTTPServer on 127.0.0.1:0 serving {path: bytes}, honouring Range unless told not to."""

    def __init__(self, files: dict, honour_range: bool = True, short_by: int = 0, status: int = 200):
        # short_by: announce the full length but send that many bytes less, then close (a broken connection);
        # status: answer every request with this HTTP status (e.g. 500)
        self.files, self.honour_range, self.requests = files, honour_range, []
        self.short_by, self.status = short_by, status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5  # every connection's socket gives up after 5 s

            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append((self.path, self.headers.get("Range")))
                data = outer.files.get(self.path)
                if data is None or outer.status != 200:
                    self.send_error(404 if data is None else outer.status)
                    return
                start, rng = 0, self.headers.get("Range")
                if rng and outer.honour_range and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[len("bytes="):-1])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:len(data) - outer.short_by])
                if outer.short_by:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive()


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv("AD_MVTEC_URL", raising=False)
    monkeypatch.delenv("AD_VISA_URL", raising=False)


@pytest.fixture
def archive():
    data = tar_xz(mvtec_files())
    return data, hashlib.sha256(data).hexdigest()


def run(dest, url, *extra):
    return main(["mvtec", "--dest", str(dest), "--url", url, *TIMEOUT, *extra])


def test_download_check_extract_then_load(tmp_path, archive, capsys):
    data, sha = archive
    with Server({"/mvtec.tar.xz": data}) as server:
        assert run(tmp_path, server.url("/mvtec.tar.xz"), "--sha256", sha) == 0
    assert (tmp_path / "mvtec.tar.xz").read_bytes() == data
    assert not (tmp_path / "mvtec.tar.xz.part").exists()
    root = tmp_path / MVTEC_DIRNAME
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["bottle", "carpet"]
    train, test = load_mvtec(root, "carpet", size=8)
    assert len(train) == 3 and len(test) == 2
    assert test.labels.tolist() == [0, 1] and test.masks[1].sum() == 9
    assert "MVTec AD is in" in capsys.readouterr().out


def test_env_url_and_categories_from_whole_archive(tmp_path, archive, monkeypatch):
    data, sha = archive
    with Server({"/a/mvtec_anomaly_detection.tar.xz": data}) as server:
        monkeypatch.setenv("AD_MVTEC_URL", server.url("/a/mvtec_anomaly_detection.tar.xz"))
        rc = main(["mvtec", "--dest", str(tmp_path), "--categories", "bottle", "--sha256", sha, *TIMEOUT])
    assert rc == 0
    root = tmp_path / MVTEC_DIRNAME
    assert [p.name for p in root.iterdir() if p.is_dir()] == ["bottle"]
    assert (root / "bottle" / "ground_truth" / "broken" / "000_mask.png").is_file()


def test_resume_from_partial_file(tmp_path, archive):
    data, sha = archive
    half = len(data) // 2
    (tmp_path / "mvtec.tar.xz.part").write_bytes(data[:half])
    with Server({"/mvtec.tar.xz": data}) as server:
        assert run(tmp_path, server.url("/mvtec.tar.xz"), "--sha256", sha) == 0
    assert server.requests == [("/mvtec.tar.xz", f"bytes={half}-")]
    assert (tmp_path / "mvtec.tar.xz").read_bytes() == data


def test_restart_when_server_ignores_range(tmp_path, archive, capsys):
    data, sha = archive
    (tmp_path / "mvtec.tar.xz.part").write_bytes(b"junk that must not stay in front")
    with Server({"/mvtec.tar.xz": data}, honour_range=False) as server:
        assert run(tmp_path, server.url("/mvtec.tar.xz"), "--sha256", sha) == 0
    assert server.requests[0][1] is not None  # it asked for the rest, got 200, started over
    assert (tmp_path / "mvtec.tar.xz").read_bytes() == data
    assert "starting mvtec.tar.xz.part over" in capsys.readouterr().out


def test_wrong_checksum_fails_and_keeps_nothing_that_looks_good(tmp_path, archive, capsys):
    data, _ = archive
    with Server({"/mvtec.tar.xz": data}) as server:
        assert run(tmp_path, server.url("/mvtec.tar.xz"), "--sha256", "0" * 64) != 0
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and "mvtec.tar.xz.bad" in err
    assert not (tmp_path / "mvtec.tar.xz").exists() and not (tmp_path / "mvtec.tar.xz.part").exists()
    assert (tmp_path / "mvtec.tar.xz.bad").read_bytes() == data
    assert not (tmp_path / MVTEC_DIRNAME).exists()


def test_second_run_skips_the_download(tmp_path, archive, capsys):
    data, sha = archive
    with Server({"/mvtec.tar.xz": data}) as server:
        url = server.url("/mvtec.tar.xz")
        assert run(tmp_path, url, "--sha256", sha) == 0
        n = len(server.requests)
        capsys.readouterr()
        assert run(tmp_path, url, "--sha256", sha) == 0  # archive there and good: no download
        assert "skipping the download" in capsys.readouterr().out
        assert run(tmp_path, url, "--sha256", sha, "--categories", "bottle") == 0  # extracted: nothing to do
        assert "already extracted" in capsys.readouterr().out
        assert len(server.requests) == n == 1


def test_existing_bad_archive_is_set_aside_not_overwritten_silently(tmp_path, archive, capsys):
    data, sha = archive
    (tmp_path / "mvtec.tar.xz").write_bytes(b"not the archive")
    with Server({"/mvtec.tar.xz": data}) as server:
        assert run(tmp_path, server.url("/mvtec.tar.xz"), "--sha256", sha) == 0
    assert (tmp_path / "mvtec.tar.xz.bad").read_bytes() == b"not the archive"
    assert (tmp_path / "mvtec.tar.xz").read_bytes() == data
    assert "does not check out" in capsys.readouterr().out


def test_unreachable_url_fails_at_once_with_help(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    assert run(tmp_path, f"http://127.0.0.1:{port}/") != 0
    assert time.monotonic() - t0 < 5
    err = capsys.readouterr().err
    assert "Check your internet connection" in err
    assert "mvtec.com" in err and str(tmp_path / MVTEC_DIRNAME) in err


def test_missing_url_says_the_link_may_have_moved(tmp_path, capsys):
    with Server({}) as server:
        assert run(tmp_path, server.url("/gone.tar.xz")) != 0
    assert "HTTP 404" in capsys.readouterr().err


def test_malicious_member_is_refused(tmp_path, capsys):
    files = mvtec_files(("bottle",))
    files["../evil"] = b"outside"
    data = tar_xz(files)
    with Server({"/mvtec.tar.xz": data}) as server:
        assert run(tmp_path, server.url("/mvtec.tar.xz"), "--sha256", hashlib.sha256(data).hexdigest()) != 0
    assert "unsafe" in capsys.readouterr().err
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()
    assert not (tmp_path / MVTEC_DIRNAME / "bottle").exists()  # refused before anything was written


def test_safe_extract_refuses_links_out_and_absolute_paths(tmp_path):
    for name, kind, link in [("/abs", tarfile.REGTYPE, ""), ("bottle/x", tarfile.SYMTYPE, "../../../etc")]:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz") as tar:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            tar.addfile(info, io.BytesIO(b""))
        path = tmp_path / "a.tar.xz"
        path.write_bytes(buf.getvalue())
        with pytest.raises(download.DownloadError, match="unsafe"):
            safe_extract(path, tmp_path / "out")


def test_prefixed_archive_and_unknown_category(tmp_path, capsys):
    path = tmp_path / "x.tar.xz"
    path.write_bytes(tar_xz(mvtec_files(("bottle",)), prefix=f"{MVTEC_DIRNAME}/"))
    assert safe_extract(path, tmp_path / "out") == ["bottle"]
    assert (tmp_path / "out" / "bottle" / "train" / "good" / "000.png").is_file()
    with pytest.raises(download.DownloadError, match="no folder for carpet"):
        safe_extract(path, tmp_path / "out", ["carpet"])
    assert main(["mvtec", "--dest", str(tmp_path), "--categories", "bottel"]) != 0
    assert "Unknown MVTec AD category" in capsys.readouterr().err


def test_default_plan_uses_the_known_archive_and_checksum(monkeypatch):
    (whole,) = download.plan()
    assert whole.sha256 == download.MVTEC_SHA256 and whole.urls == download.MVTEC_URLS
    assert len(whole.categories) == 15
    per_category = download.plan(["bottle", "carpet"])
    assert [a.name for a in per_category] == ["bottle.tar.xz", "carpet.tar.xz"]
    assert download.plan(["bottle"], whole=True)[0].name == "mvtec_anomaly_detection.tar.xz"


def test_complete_part_file_is_finished_without_downloading_again(tmp_path, archive):
    data, sha = archive
    (tmp_path / "mvtec.tar.xz.part").write_bytes(data)
    with Server({"/mvtec.tar.xz": data}) as server:  # answers 416 to "bytes=<full size>-"
        assert run(tmp_path, server.url("/mvtec.tar.xz"), "--sha256", sha) == 0
    assert server.requests == [("/mvtec.tar.xz", f"bytes={len(data)}-")]
    assert (tmp_path / "mvtec.tar.xz").read_bytes() == data


# --------------------------------------------------------------------------- hardening, round 2 (issue 22)

def tar_members(entries, mode="w:xz") -> bytes:
    """An archive of (name, type, linkname, data) entries."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, kind, link, data in entries:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, link, len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_link_escaping_only_after_the_top_folder_is_dropped_is_refused_before_writing(tmp_path, capsys):
    prefix = f"{MVTEC_DIRNAME}/"
    entries = [(prefix + k, tarfile.REGTYPE, "", v) for k, v in mvtec_files(("bottle",)).items()]
    # inside mvtec_anomaly_detection/bottle/, "../../x" stays in the download folder; once the top folder is
    # dropped it points out of it
    entries.insert(0, (prefix + "bottle/evil", tarfile.SYMTYPE, "../../outside", b""))
    data = tar_members(entries)
    with Server({"/mvtec.tar.xz": data}) as server:
        rc = run(tmp_path, server.url("/mvtec.tar.xz"), "--sha256", hashlib.sha256(data).hexdigest())
    err = capsys.readouterr().err
    assert rc == 1 and "unsafe member" in err and "link pointing outside" in err and "Traceback" not in err
    assert files_under(tmp_path / MVTEC_DIRNAME) == []  # nothing half-written
    # a hard link to a file of another category folder is fine; one out of the archive's folder is not
    ok = tar_members(entries[1:] + [(prefix + "bottle/copy.png", tarfile.LNKTYPE, prefix + "bottle/train/good/000.png",
                                     b"")])
    path = tmp_path / "ok.tar.xz"
    path.write_bytes(ok)
    assert safe_extract(path, tmp_path / "out") == ["bottle"]
    assert (tmp_path / "out" / "bottle" / "copy.png").read_bytes() == png(100)


def test_archive_without_any_category_folder_is_an_error(tmp_path, capsys):
    data = tar_xz({"readme.txt": b"hello", "other/thing.txt": b"x"})
    with Server({"/mvtec.tar.xz": data}) as server:
        rc = run(tmp_path, server.url("/mvtec.tar.xz"), "--sha256", hashlib.sha256(data).hexdigest())
    err = capsys.readouterr().err
    assert rc == 1 and "holds no MVTec AD category folder" in err and "other, readme.txt" in err
    assert files_under(tmp_path / MVTEC_DIRNAME) == []


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "soon"])
def test_bad_timeout_is_rejected_as_a_timeout(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["mvtec", "--dest", str(tmp_path), "--url", "http://127.0.0.1:9/x.tar.xz", "--timeout", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--timeout" in err and "must be a number of seconds > 0" in err and "internet" not in err
    with pytest.raises(download.DownloadError, match=r"--timeout must be a number of seconds > 0"):
        download.download_mvtec(dest=tmp_path, url="http://127.0.0.1:9/x.tar.xz", timeout=0)


class FullDisk:
    """open() whose files raise ENOSPC once ``limit`` bytes have been written."""

    def __init__(self, limit):
        self.limit = limit

    def __call__(self, path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        if "w" not in mode and "a" not in mode:
            return f
        limit, real_write = self.limit, f.write

        def write(block):
            if f.tell() + len(block) > limit:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return real_write(block)
        f.write = write
        return f


def test_full_disk_while_downloading_says_how_much_is_free_where(tmp_path, archive, capsys, monkeypatch):
    data, sha = archive
    monkeypatch.setattr(download, "CHUNK", 64)
    monkeypatch.setattr(download, "open", FullDisk(len(data) // 2), raising=False)
    with Server({"/mvtec.tar.xz": data}) as server:
        rc = run(tmp_path, server.url("/mvtec.tar.xz"), "--sha256", sha)
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert "Not enough disk space for the download of mvtec.tar.xz" in err and "free on the disk of" in err
    assert str(tmp_path) in err and "resumes" in err
    assert 0 < (tmp_path / "mvtec.tar.xz.part").stat().st_size <= len(data) // 2  # kept, to resume
    monkeypatch.undo()
    with Server({"/mvtec.tar.xz": data}) as server:
        assert run(tmp_path, server.url("/mvtec.tar.xz"), "--sha256", sha) == 0  # space freed: it resumes
    assert server.requests[0][1] is not None


def test_too_little_free_space_is_refused_before_downloading_or_unpacking(tmp_path, archive, capsys, monkeypatch):
    data, sha = archive
    monkeypatch.setattr(download, "_free_space", lambda path: 10)
    with Server({"/mvtec.tar.xz": data}) as server:
        assert run(tmp_path, server.url("/mvtec.tar.xz"), "--sha256", sha) == 1
    err = capsys.readouterr().err
    assert f"It needs {download._size(len(data))}, 10 bytes free on the disk of {tmp_path}" in err
    assert not (tmp_path / "mvtec.tar.xz.part").exists()
    path = tmp_path / "a.tar.xz"
    path.write_bytes(data)
    with pytest.raises(download.DownloadError, match="Not enough disk space for unpacking a.tar.xz"):
        safe_extract(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_full_disk_while_unpacking_is_a_clear_error(tmp_path, archive, monkeypatch):
    data, _ = archive
    path = tmp_path / "a.tar.xz"
    path.write_bytes(data)

    def no_space(self, member, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", member.name)
    monkeypatch.setattr(tarfile.TarFile, "extract", no_space)
    with pytest.raises(download.DownloadError, match=r"Not enough disk space for unpacking a.tar.xz.*free on the disk"):
        safe_extract(path, tmp_path / "out")
    assert not list((tmp_path / "out").rglob(".complete"))  # nothing marked complete


def test_malformed_checksum_url_and_dest_fail_before_any_request(tmp_path, capsys):
    with Server({}) as server:
        url = server.url("/mvtec.tar.xz")
        assert run(tmp_path, url, "--sha256", "abc") == 1
        assert "--sha256 must be 64 hexadecimal digits" in capsys.readouterr().err
        assert main(["mvtec", "--dest", str(tmp_path), "--url", "mvtec.tar.xz"]) == 1
        assert "--url must be an http:// or https:// address" in capsys.readouterr().err
        (tmp_path / "afile").write_text("x")
        assert run(tmp_path / "afile", url) == 1
        assert "is a file; give a folder" in capsys.readouterr().err
        assert main(["mvtec", "--dest", str(tmp_path), "--categories", "../etc"]) == 1
        assert "Unknown MVTec AD category: '../etc'" in capsys.readouterr().err
        assert server.requests == []


def test_connection_that_breaks_before_the_announced_length_keeps_the_part(tmp_path, archive, capsys):
    data, sha = archive
    with Server({"/mvtec.tar.xz": data}, short_by=100) as server:
        assert run(tmp_path, server.url("/mvtec.tar.xz"), "--sha256", sha) == 1
    err = capsys.readouterr().err
    assert ("connection broke" in err or "stopped after" in err) and "Traceback" not in err and "resume" in err
    assert (tmp_path / "mvtec.tar.xz.part").stat().st_size == len(data) - 100
    with Server({"/mvtec.tar.xz": data}) as server:
        assert run(tmp_path, server.url("/mvtec.tar.xz"), "--sha256", sha) == 0
    assert server.requests == [("/mvtec.tar.xz", f"bytes={len(data) - 100}-")]


def test_server_error_is_reported_with_its_status(tmp_path, archive, capsys):
    data, _ = archive
    with Server({"/mvtec.tar.xz": data}, status=500) as server:
        assert run(tmp_path, server.url("/mvtec.tar.xz")) == 1
    err = capsys.readouterr().err
    assert "HTTP 500" in err and "Try again later" in err


def test_unwritable_downloads_folder_is_a_clear_error(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "ro"))
    monkeypatch.setattr(Path, "mkdir", refuse)
    with Server({"/mvtec.tar.xz": b"x"}) as server:
        assert run(tmp_path / "ro", server.url("/mvtec.tar.xz")) == 1
    err = capsys.readouterr().err
    assert "cannot write" in err and "Permission denied" in err and "--dest" in err
