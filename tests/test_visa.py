"""VisA (issue 21): `make visa` against a local HTTP server serving a tiny archive in VisA's layout, the loader on
its official one-class split, and the AD_DATA=visa switch."""

import hashlib
import io
import re
import socket
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_download import Server  # the same local server as the MVTec AD tests

from anomaly_utils import download, sources
from anomaly_utils.download import VISA_DIRNAME, main
from anomaly_utils.loaders import load_visa

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = ["--timeout", "5"]
H, W = 40, 60  # VisA's photos are wider than high (about 1000 x 1500); 2 : 3 here
N_TRAIN, N_TEST_NORMAL, N_ANOMALY = 5, 6, 6


def jpg(value):
    yy, xx = np.mgrid[:H, :W]
    a = np.stack([np.full((H, W), value), (xx * 4) % 256, (yy * 6) % 256], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def mask_png(i):
    m = np.zeros((H, W), np.uint8)
    m[4 + i:10 + i, 30:36] = 1 + i % 2  # VisA's masks number their defects 1, 2, ...: non-zero is defect
    buf = io.BytesIO()
    Image.fromarray(m).save(buf, format="PNG")
    return buf.getvalue()


def visa_files(categories=("candle", "pcb1")) -> dict:
    """{path: bytes} of a VisA-like archive: no top folder, split_csv/1cls.csv with paths relative to its root."""
    files, rows = {"LICENSE-DATASET": b"CC BY 4.0\n"}, ["object,split,label,image,mask"]
    for c in categories:
        anno = ["image,label,mask"]
        for i in range(N_TRAIN + N_TEST_NORMAL):
            name = f"{c}/Data/Images/Normal/{i:04d}.JPG"
            files[name] = jpg(100 + 10 * i)
            rows.append(f"{c},{'train' if i < N_TRAIN else 'test'},normal,{name},")
            anno.append(f"{name},normal,")
        for i in range(N_ANOMALY):
            name, mask = f"{c}/Data/Images/Anomaly/{i:03d}.JPG", f"{c}/Data/Masks/Anomaly/{i:03d}.png"
            files[name], files[mask] = jpg(20 + 5 * i), mask_png(i)
            rows.append(f"{c},test,anomaly,{name},{mask}")
            anno.append(f"{name},{'scratch' if i < 3 else 'chunk of wax missing'},{mask}")
        files[f"{c}/image_anno.csv"] = ("\n".join(anno) + "\n").encode()
    files["split_csv/1cls.csv"] = ("\n".join(rows) + "\n").encode()
    return files


def tar(files: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:  # VisA ships a plain .tar
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    for var in ("AD_VISA_URL", "AD_VISA_ROOT", "AD_DATA"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def archive():
    data = tar(visa_files())
    return data, hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()


@pytest.fixture
def root(tmp_path, archive):
    """VisA unpacked by the downloader into tmp_path/visa."""
    data, sha, md5 = archive
    with Server({"/VisA_20220922.tar": data}) as server:
        assert main(["visa", "--dest", str(tmp_path), "--url", server.url("/VisA_20220922.tar"), "--sha256", sha,
                     "--md5", md5, *TIMEOUT]) == 0
    return tmp_path / VISA_DIRNAME


def run(dest, url, *extra):
    return main(["visa", "--dest", str(dest), "--url", url, *TIMEOUT, *extra])


# --------------------------------------------------------------------------- download

def test_default_plan_is_the_official_archive_with_both_known_checksums():
    (archive,) = download.visa_plan()
    assert archive.urls == ("https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",)
    assert archive.name == "VisA_20220922.tar" and archive.md5 == "ef908989b6dc701fc218f643c127a4de"
    assert archive.sha256 == "2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362"
    assert archive.categories == download.VISA_CATEGORIES and len(download.VISA_CATEGORIES) == 12
    (mine,) = download.visa_plan(sha256="a" * 64)  # a checksum of your own replaces the known ones
    assert (mine.sha256, mine.md5) == ("a" * 64, None)


def test_download_check_unpack_then_load(root, archive):
    data, _, _ = archive
    assert (root.parent / "VisA_20220922.tar").read_bytes() == data
    assert not (root.parent / "VisA_20220922.tar.part").exists()
    assert sorted(p.name for p in root.iterdir()) == ["LICENSE-DATASET", "candle", "pcb1", "split_csv"]
    assert (root / "split_csv" / "1cls.csv").is_file() and (root / "candle" / ".complete").is_file()
    train, test = load_visa(root, "candle", size=32, split="official")
    assert len(train) == N_TRAIN and len(test) == N_TEST_NORMAL + N_ANOMALY
    assert train.images.shape == (N_TRAIN, 3, 32, 32)


def test_resume_from_partial_file(tmp_path, archive):
    data, sha, md5 = archive
    half = len(data) // 2
    (tmp_path / "VisA_20220922.tar.part").write_bytes(data[:half])
    with Server({"/VisA_20220922.tar": data}) as server:
        assert run(tmp_path, server.url("/VisA_20220922.tar"), "--sha256", sha, "--md5", md5) == 0
    assert server.requests == [("/VisA_20220922.tar", f"bytes={half}-")]
    assert (tmp_path / "VisA_20220922.tar").read_bytes() == data


@pytest.mark.parametrize("which", ["sha256", "md5"])
def test_checksum_mismatch_keeps_nothing_that_looks_good(tmp_path, archive, capsys, which):
    data, sha, md5 = archive
    checks = {"sha256": sha, "md5": md5}
    checks[which] = "0" * len(checks[which])
    with Server({"/VisA_20220922.tar": data}) as server:
        assert run(tmp_path, server.url("/VisA_20220922.tar"), "--sha256", checks["sha256"],
                   "--md5", checks["md5"]) == 1
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and ("MD5" if which == "md5" else "SHA-256") in err
    assert not (tmp_path / "VisA_20220922.tar").exists() and (tmp_path / "VisA_20220922.tar.bad").is_file()
    assert not (tmp_path / VISA_DIRNAME).exists()


def test_some_categories_unpack_with_the_split_file_and_a_rerun_does_nothing(tmp_path, archive, capsys):
    data, sha, md5 = archive
    with Server({"/VisA_20220922.tar": data}) as server:
        url = server.url("/VisA_20220922.tar")
        assert run(tmp_path, url, "--sha256", sha, "--md5", md5, "--categories", "pcb1") == 0
        root = tmp_path / VISA_DIRNAME
        assert sorted(p.name for p in root.iterdir()) == ["LICENSE-DATASET", "pcb1", "split_csv"]
        capsys.readouterr()
        assert run(tmp_path, url, "--sha256", sha, "--md5", md5, "--categories", "pcb1") == 0
        assert "already extracted" in capsys.readouterr().out
        assert len(server.requests) == 1
        assert run(tmp_path, url, "--categories", "pcb2") == 1  # a VisA category this archive lacks
        assert "holds no folder for pcb2" in capsys.readouterr().err
        assert run(tmp_path, url, "--categories", "bottle") == 1
        assert "Unknown VisA category: 'bottle'" in capsys.readouterr().err


def test_archive_without_the_split_file_is_an_error(tmp_path, capsys):
    files = visa_files(("candle",))
    del files["split_csv/1cls.csv"]
    data = tar(files)
    with Server({"/v.tar": data}) as server:
        assert run(tmp_path, server.url("/v.tar"), "--sha256", hashlib.sha256(data).hexdigest()) == 1
    assert "has no split_csv/1cls.csv" in capsys.readouterr().err


def test_archive_with_a_top_folder_is_unpacked_without_it(tmp_path):
    data = tar({f"VisA_20220922/{k}": v for k, v in visa_files(("candle",)).items()})
    path = tmp_path / "v.tar"
    path.write_bytes(data)
    assert download.safe_extract(path, tmp_path / "out", dataset=download.VISA) == ["candle"]
    assert (tmp_path / "out" / "split_csv" / "1cls.csv").is_file()


def test_offline_says_what_to_do(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    assert run(tmp_path, f"http://127.0.0.1:{port}/VisA_20220922.tar") == 1
    assert time.monotonic() - t0 < 5
    err = capsys.readouterr().err
    assert "Check your internet connection" in err and "github.com/amazon-science/spot-diff" in err
    assert str(tmp_path / VISA_DIRNAME) in err


def test_makefile_has_a_visa_target():
    text = (REPO / "Makefile").read_text()
    rule = re.search(r"^visa:.*\n\t(.*)$", text, re.M)
    assert rule and "anomaly_utils.download visa" in rule.group(1) and "CATEGORIES" in rule.group(1)


# --------------------------------------------------------------------------- loader

def test_loader_follows_the_official_split_and_cuts_val_from_test(root):
    train, official = load_visa(root, "candle", size=32, split="official")
    _, val = load_visa(root, "candle", size=32, split="val", seed=0)
    _, test = load_visa(root, "candle", size=32, split="test", seed=0)
    assert (train.labels == 0).all() and train.kinds == ["good"] * N_TRAIN
    assert official.labels.tolist() == [0] * N_TEST_NORMAL + [1] * N_ANOMALY
    assert len(val) + len(test) == len(official) and (val.labels == 0).sum() == 2 and (val.labels == 1).sum() == 2
    key = lambda ds: {bytes(x.numpy()) for x in ds.images}  # noqa: E731
    assert key(val).isdisjoint(key(test)) and key(val) | key(test) == key(official)
    assert key(train).isdisjoint(key(official))
    # the kinds come from image_anno.csv; val takes a third of each
    assert sorted(set(official.kinds)) == ["chunk of wax missing", "good", "scratch"]
    assert val.kinds.count("scratch") == 1 and val.kinds.count("chunk of wax missing") == 1
    assert val.name == "visa/candle/test/val" and test.has_masks


def test_masks_are_every_non_zero_pixel_and_the_image_is_resized_whole(root):
    _, official = load_visa(root, "candle", size=None, split="official")
    assert official.images.shape[2:] == (H, W)  # size=None: the stored size
    m = official.masks[N_TEST_NORMAL:]
    assert (m.flatten(1).sum(1) == 36).all()  # 6 x 6, also where the label value is 1 (not > 127)
    assert official.masks[:N_TEST_NORMAL].sum() == 0
    _, small = load_visa(root, "candle", size=(20, 30), split="official")
    assert small.images.shape[2:] == (20, 30) and (small.masks[N_TEST_NORMAL:].flatten(1).sum(1) >= 4).all()
    _, square = load_visa(root, "candle", size=16, split="official")
    assert square.images.shape[2:] == (16, 16)
    # squashed, not cropped: the defect near the right edge (columns 30-35 of 60) is still there
    assert (square.masks[N_TEST_NORMAL:, :, 8:].flatten(1).sum(1) > 0).all()


def test_loader_errors_say_what_to_do(root, tmp_path):
    with pytest.raises(ValueError, match=r"no category 'bottle'.*candle, pcb1"):
        load_visa(root, "bottle")
    with pytest.raises(ValueError, match="split must be one of"):
        load_visa(root, "candle", split="train")
    with pytest.raises(ValueError, match="seed must be"):
        load_visa(root, "candle", seed=-1)
    with pytest.raises(FileNotFoundError, match=r"split_csv.*make visa"):
        load_visa(tmp_path, "candle")
    (root / "pcb1" / "Data" / "Masks" / "Anomaly" / "002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"pcb1: 1 file\(s\).*002.png.*make visa CATEGORIES=pcb1"):
        load_visa(root, "pcb1")


# --------------------------------------------------------------------------- the AD_DATA switch

def test_ad_data_visa_switches_the_sources(root, monkeypatch):
    monkeypatch.setenv("AD_DATA", "visa")
    monkeypatch.setenv("AD_VISA_ROOT", str(root))
    assert sources.real_data_name() == "visa" and sources.visa_root() == root
    assert sources.real_categories() == ["candle", "pcb1"]
    train, val = sources.load_real("pcb1", size=24, split="val", seed=1)
    _, test = sources.load_real("pcb1", size=24, split="test", seed=1)
    assert train.images.shape[1:] == (3, 24, 24) and len(val) + len(test) == N_TEST_NORMAL + N_ANOMALY
    assert torch.equal(val.images, load_visa(root, "pcb1", size=24, split="val", seed=1)[1].images)
    with pytest.raises(FileNotFoundError, match="make visa CATEGORIES=pcb2"):
        sources.load_real("pcb2")


def test_ad_data_visa_without_the_data_says_make_visa(tmp_path, monkeypatch):
    monkeypatch.setenv("AD_DATA", "visa")
    monkeypatch.setenv("AD_VISA_ROOT", str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match=r"AD_DATA=visa.*make visa"):
        sources.real_categories()
    monkeypatch.delenv("AD_VISA_ROOT")
    assert sources.visa_root().parts[-3:] == ("data", "downloads", "visa")


def test_val_then_test_decode_the_photos_once_and_return_copies(root, monkeypatch):
    import anomaly_utils.loaders as loaders

    loaders._visa_official.cache_clear()
    calls = []
    real_build = loaders._build
    monkeypatch.setattr(loaders, "_build", lambda *a, **k: calls.append(1) or real_build(*a, **k))
    train, val = load_visa(root, "candle", size=16, split="val")
    train.images.zero_()  # a learner's in-place edit must not reach the next call
    train2, test = load_visa(root, "candle", size=16, split="test")
    assert len(calls) == 1 and train2.images.abs().sum() > 0
    load_visa(root, "pcb1", size=16, split="val")
    assert len(calls) == 2
