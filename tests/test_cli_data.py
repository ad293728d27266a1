"""`jaxnn data download | list`, the data flags of the training verbs (--data-dir, --data-url,
--augment), run in-process against a local HTTP server (never the internet)."""

import hashlib
import json
from pathlib import Path

import pytest
from _datafiles import DEAD, trust

from jaxnn import datasets
from jaxnn.cli import main
from jaxnn.cli._data import DownloadProgress, augment_arg

pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture
def mirrored(server, monkeypatch):
    """Every dataset's table swapped for the served files, whose official location is down."""
    url, root, requests = server
    for name, algorithm in (("mnist", "sha256"), ("fashion_mnist", "md5"), ("cifar10", "md5")):
        trust(monkeypatch, name, root / name, algorithm=algorithm)
    return url, root, requests


def one_line_error(capsys, verb: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"jaxnn {verb}: error: ")
    return err


def test_download_then_list(mirrored, tmp_path, capsys):
    url, root, requests = mirrored
    cache = tmp_path / "cache"
    requests.clear()
    assert main(["data", "download", "mnist", "--data-dir", str(cache),
                 "--data-url", f"{url}mnist/"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == (f"mnist: downloaded 4 of 4 files, "
                           f"{sum(p.stat().st_size for p in (root / 'mnist').iterdir()) / 1024:.1f}"
                           f" KB, checksums verified, in {cache / 'mnist'}")
    assert err == ""  # not a terminal: no progress bar
    assert len(requests) == 4
    for f in (root / "mnist").iterdir():
        assert (cache / "mnist" / f.name).read_bytes() == f.read_bytes()
    # again: nothing fetched
    requests.clear()
    assert main(["data", "download", "mnist", "--data-dir", str(cache)]) == 0
    assert "mnist: already cached (4 files)" in capsys.readouterr().out and requests == []

    assert main(["data", "list", "--data-dir", str(cache), "--verify"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"cache: {cache}"
    rows = {line.split()[0]: line.split() for line in lines[3:]}
    assert rows["digits"][1] == "embedded"
    assert rows["mnist"][1:4] == ["cached,", "verified", "4/4"]
    assert rows["mnist"][-1] == str(cache / "mnist")
    assert rows["fashion_mnist"][1:4] == ["not", "cached", "0/4"]
    assert rows["cifar10"][1:4] == ["not", "cached", "0/1"]


def test_download_all_via_env_mirror_and_default_cache(mirrored, monkeypatch, tmp_path, capsys):
    url, root, _ = mirrored
    # one mirror serves one dataset's file names (mnist and fashion_mnist share them)
    monkeypatch.setenv("JAXNN_DATA_URL", f"{url}fashion_mnist")
    assert main(["data", "download", "fashion_mnist"]) == 0
    got = tmp_path / "default-cache" / "fashion_mnist"
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in
                                                           (root / "fashion_mnist").iterdir())
    monkeypatch.setenv("JAXNN_DATA_URL", f"{url}cifar10/")
    assert main(["data", "download", "cifar10", "cifar10"]) == 0  # named twice, fetched once
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["fashion_mnist", "cifar10"]


def test_download_failure_is_one_line_and_leaves_nothing(mirrored, monkeypatch, tmp_path, capsys):
    url, root, _ = mirrored
    src = datasets.SOURCES["cifar10"]
    wrong = "f" * 32
    monkeypatch.setitem(datasets.SOURCES, "cifar10",
                        src._replace(files=(src.files[0]._replace(digest=wrong),)))
    cache = tmp_path / "cache"
    assert main(["data", "download", "cifar10", "--data-dir", str(cache),
                 "--data-url", f"{url}cifar10"]) == 2
    err = one_line_error(capsys, "data download")
    actual = hashlib.md5((root / "cifar10" / "cifar-10-python.tar.gz").read_bytes()).hexdigest()
    assert f"{url}cifar10/cifar-10-python.tar.gz" in err
    assert f"expected md5 {wrong}, got {actual}" in err
    assert not cache.exists()
    assert main(["data", "download", "mnist", "--data-dir", str(cache),
                 "--data-url", f"{url}nothing-here/"]) == 2
    assert "HTTP 404" in one_line_error(capsys, "data download") and not cache.exists()


@pytest.mark.parametrize("argv, needle", [
    (["data", "download", "digits"], "digits is embedded"),
    (["data", "download", "imagenet"], "unknown dataset 'imagenet'"),
])
def test_download_bad_names(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in one_line_error(capsys, "data download")


def test_data_without_a_command_shows_help(capsys):
    assert main(["data"]) == 2
    err = capsys.readouterr().err
    assert "download" in err and "list" in err and "choose one of the commands" in err


@pytest.mark.slow
def test_train_downloads_on_first_use(mirrored, tmp_path, capsys):
    url, root, requests = mirrored
    cache, out = tmp_path / "cache", tmp_path / "run"
    requests.clear()
    code = main(["train", "--dataset", "mnist", "--data-dir", str(cache), "--data-url",
                 f"{url}mnist/", "--hidden", "8", "--epochs", "1", "--batch-size", "9",
                 "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert len(requests) == 4 and (cache / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "mnist" and config["data_url"] == f"{url}mnist/"


def test_train_download_failure_writes_no_run(mirrored, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "cache"),
                 "--no-progress", "--out", str(out)]) == 2  # the official location is down
    err = one_line_error(capsys, "train")
    assert "cifar-10-python.tar.gz" in err and DEAD in err and "expected md5" in err
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_train_augment_needs_images(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--augment", "crop:2,flip", "--hidden", "8", "--epochs", "1",
                 "--no-progress", "--out", str(out)]) == 2
    err = one_line_error(capsys, "train")
    assert "--augment: crop:2,flip" in err and "need images" in err and "arch" in err
    assert not out.exists()


def test_augment_flag_is_checked_and_canonical(capsys):
    assert augment_arg("flip, crop:3") == "crop:3,flip"
    assert augment_arg("none") is None
    with pytest.raises(SystemExit) as e:  # argparse's own error path
        main(["train", "--augment", "crop:0"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxnn train: error: argument --augment:") and "P >= 1" in err


def test_progress_bar_only_when_enabled(capsys):
    with DownloadProgress(enabled=False) as p:
        for name in ("a.gz", "b.gz"):
            for done in (0, 5, 10):
                p(name, done, 10)
    assert p.fetched == ["a.gz", "b.gz"] and capsys.readouterr().err == ""
    with DownloadProgress(enabled=True) as p:
        p("a.gz", 0, 2048)
        p("a.gz", 2048, 2048)
    assert "a.gz" in capsys.readouterr().err


def test_data_list_reports_partial_and_mismatch(mirrored, tmp_path, capsys):
    cache = tmp_path / "cache"
    (cache / "mnist").mkdir(parents=True)
    Path(cache / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(b"not the file")
    assert main(["data", "list", "--data-dir", str(cache)]) == 0
    row = next(r for r in capsys.readouterr().out.splitlines() if r.split()[0] == "mnist")
    assert "partly cached" in row and "1/4" in row
    assert main(["data", "list", "--data-dir", str(cache), "--verify"]) == 0
    row = next(r for r in capsys.readouterr().out.splitlines() if r.split()[0] == "mnist")
    assert "checksum mismatch: train-labels-idx1-ubyte.gz" in row
