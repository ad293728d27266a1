"""Tests for jaxnn.datasets: loaders on small files in the original formats, splits, label and
file validation, and downloads from a local HTTP server (never the internet)."""

import contextlib
import fcntl
import hashlib
import os
import pickle
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _datafiles import (
    CIFAR_BATCHES,
    DEAD,
    digest,
    idx_bytes,
    trust,
    write_cifar,
    write_cifar_archive,
    write_idx_set,
)

from jaxnn import _download, datasets
from jaxnn._download import DownloadError, deadline_for, fetch

pytestmark = pytest.mark.usefixtures("offline")


def files_under(path) -> list:
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*")) if Path(
        path).exists() else []


# --------------------------------------------------------------------------------------------
# digits and splits
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits", seed=0)


def test_digits_shapes_and_classes(digits):
    n = 1797
    n_test, n_val = round(n * 0.2), round(n * 0.1)
    assert digits.x_train.shape == (n - n_test - n_val, 64)
    assert digits.x_val.shape == (n_val, 64)
    assert digits.x_test.shape == (n_test, 64)
    assert digits.num_classes == 10 and digits.name == "digits"
    for x, y in [(digits.x_train, digits.y_train), (digits.x_val, digits.y_val)]:
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert x.shape[0] == y.shape[0]
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert set(np.unique(digits.y_train)) == set(range(10))
    # every split is stratified: each class near its overall share (about 10%)
    for y in (digits.y_train, digits.y_val, digits.y_test):
        share = np.bincount(y, minlength=10) / len(y)
        assert np.all(np.abs(share - 0.1) < 0.03)


def test_digits_values_match_sklearn(digits):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    tr, va, te = datasets.split_indices(bunch.target, seed=0)
    np.testing.assert_array_equal(digits.x_train, bunch.data[tr] / 16.0)
    np.testing.assert_array_equal(digits.y_test, bunch.target[te])
    np.testing.assert_array_equal(digits.y_val, bunch.target[va])


def test_digits_images_and_custom_fractions():
    ds = datasets.load("digits", flatten=False, val_fraction=0.0, test_fraction=0.5)
    assert ds.x_train.shape == (899, 8, 8, 1) and ds.x_test.shape == (898, 8, 8, 1)
    assert ds.x_val.shape == (0, 8, 8, 1) and ds.y_val.shape == (0,)


def test_digits_deterministic_per_seed(digits):
    again = datasets.load("digits", seed=0)
    for a, b in zip(digits[:6], again[:6], strict=True):
        np.testing.assert_array_equal(a, b)
    other = datasets.load("digits", seed=1)
    assert not np.array_equal(digits.y_train, other.y_train)


def test_split_indices_disjoint_and_complete():
    y = np.random.default_rng(0).integers(0, 7, size=503)
    tr, va, te = datasets.split_indices(y, seed=3, val_fraction=0.15, test_fraction=0.25)
    assert (len(tr), len(va), len(te)) == (503 - 126 - 75, 75, 126)
    joined = np.concatenate([tr, va, te])
    assert len(np.unique(joined)) == 503 and set(joined) == set(range(503))
    # splits are not grouped by class
    assert not np.all(np.diff(y[tr]) >= 0)


@pytest.mark.parametrize(
    "kw",
    [dict(val_fraction=1.0), dict(test_fraction=-0.1), dict(val_fraction=0.5, test_fraction=0.5)],
)
def test_split_bad_fractions(kw):
    with pytest.raises(ValueError, match="fraction"):
        datasets.split_indices(np.zeros(10, int), **kw)


@pytest.mark.parametrize("val, test", [(0.1, 0.2), (0.1, 0.0), (0.25, 0.25), (0.05, 0.3)])
def test_split_too_few_examples_says_how_many(val, test):
    # Reference: the smallest n whose rounded split sizes leave every split with a positive
    # fraction non-empty, by brute force over n.
    def ok(n):
        n_test, n_val = round(n * test), round(n * val)
        return (n - n_test - n_val >= 1 and (n_val >= 1 or val == 0)
                and (n_test >= 1 or test == 0))

    need = next(n for n in range(1, 10_000) if ok(n))
    tr, va, te = datasets.split_indices(np.zeros(need, int), val_fraction=val, test_fraction=test)
    assert len(tr) >= 1 and (len(va) >= 1 or val == 0) and (len(te) >= 1 or test == 0)
    with pytest.raises(ValueError, match=rf"needs at least {need} examples, got {need - 1}\."):
        datasets.split_indices(np.zeros(need - 1, int), val_fraction=val, test_fraction=test)


def test_unknown_name():
    with pytest.raises(ValueError, match="'digits', 'mnist', 'fashion_mnist', 'cifar10'.*npz"):
        datasets.load("imagenet")
    with pytest.raises(ValueError, match="embedded"):
        datasets.download("digits")
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        datasets.download("imagenet")


# --------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST files (IDX)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_dataset_loads(tmp_path, monkeypatch, name, gz):
    arrays = write_idx_set(tmp_path, gz=gz)
    if gz:  # files under the original names are checked against the (here swapped) table
        trust(monkeypatch, name, tmp_path)
    ds = datasets.load(name, data_dir=tmp_path, val_fraction=0.2, download=False)
    assert ds.x_train.shape == (24, 784) and ds.x_val.shape == (6, 784)
    assert ds.x_test.shape == (10, 784) and ds.num_classes == 10 and ds.name == name
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    np.testing.assert_allclose(
        ds.x_test, arrays["t10k-images-idx3-ubyte"].reshape(10, 784) / 255.0, rtol=1e-6
    )
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
    # train + val is exactly the IDX training set
    train_rows = {r.tobytes() for r in (arrays["train-images-idx3-ubyte"] / 255.0).astype("f4")}
    got = {r.tobytes() for r in np.concatenate([ds.x_train, ds.x_val]).reshape(-1, 28, 28)}
    assert got == train_rows
    images = datasets.load(name, data_dir=tmp_path, flatten=False, download=False)
    assert images.x_test.shape == (10, 28, 28, 1)


def test_idx_other_layouts(tmp_path):
    arrays = write_idx_set(tmp_path / "MNIST" / "raw", seed=5)  # torchvision's layout
    ds = datasets.load("mnist", data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
    d = tmp_path / "dotted"  # the train-images.idx3-ubyte spelling
    write_idx_set(d)
    for f in list(d.iterdir()):
        prefix, kind, tail = f.name.split("-", 2)
        f.rename(d / f"{prefix}-{kind}.{tail}")
    assert datasets.load("mnist", data_dir=d, download=False).x_test.shape == (10, 784)


def test_read_idx_roundtrip(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.idx").write_bytes(idx_bytes(arr))
    np.testing.assert_array_equal(datasets.read_idx(tmp_path / "a.idx"), arr)


def test_idx_bad_magic(tmp_path):
    write_idx_set(tmp_path)
    raw = b"\x12\x34\x08\x03" + idx_bytes(np.zeros((30, 28, 28)))[4:]
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*magic.*IDX"):
        datasets.load("mnist", data_dir=tmp_path)


def test_idx_truncated(tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((10, 28, 28)))[:-100])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.*truncated"):
        datasets.load("mnist", data_dir=tmp_path)


def test_idx_corrupt_gzip(tmp_path, monkeypatch):
    write_idx_set(tmp_path, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    for junk in (path.read_bytes()[:20], b"not gzip at all"):  # cut short; not gzip
        path.write_bytes(junk)
        trust(monkeypatch, "mnist", tmp_path)  # so that the reader, not the checksum, objects
        with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz: cannot read"):
            datasets.load("mnist", data_dir=tmp_path)


def test_idx_inconsistent(tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(29)))
    with pytest.raises(ValueError, match="30 images.*29 labels"):
        datasets.load("mnist", data_dir=tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(30, 12)))
    with pytest.raises(ValueError, match="labels must be < 10"):
        datasets.load("mnist", data_dir=tmp_path)


def test_idx_one_file_missing_is_named(tmp_path):
    write_idx_set(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte.gz: file not found.*IDX"):
        datasets.load("mnist", data_dir=tmp_path)  # a user's directory is not downloaded into


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_missing_without_download_says_how_to_get_it(tmp_path, name):
    with pytest.raises(FileNotFoundError) as e:
        datasets.load(name, data_dir=tmp_path / "nowhere", download=False)
    msg = str(e.value)
    assert "\n" not in msg
    for f in datasets.SOURCES[name].files:
        assert f.name in msg
    assert f"jaxnn data download {name}" in msg and "--data-dir" in msg
    assert str(tmp_path / "nowhere" / name) in msg
    assert not (tmp_path / "nowhere").exists()


def test_checksum_mismatch_on_load(tmp_path):
    write_idx_set(tmp_path, gz=True)  # random files under the original MNIST names
    path = tmp_path / "train-images-idx3-ubyte.gz"
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    expected = datasets.SOURCES["mnist"].files[0].digest
    with pytest.raises(ValueError, match=rf"{path.name}: checksum mismatch: expected sha256 "
                                         rf"{expected}, got {actual}"):
        datasets.load("mnist", data_dir=tmp_path)


# --------------------------------------------------------------------------------------------
# CIFAR-10 (python batches)
# --------------------------------------------------------------------------------------------


def check_cifar(ds, batches):
    raw = batches["test_batch"][b"data"]
    # channel-major rows -> NHWC: x[i, h, w, c] == raw[i, c * 1024 + h * 32 + w] / 255
    for i, h, w, c in [(0, 0, 0, 0), (1, 5, 7, 2), (3, 31, 30, 1)]:
        assert ds.x_test[i, h, w, c] == np.float32(raw[i, c * 1024 + h * 32 + w] / 255.0)
    np.testing.assert_array_equal(ds.y_test, batches["test_batch"][b"labels"])
    train = np.concatenate([batches[b][b"data"] for b in CIFAR_BATCHES[:5]])
    got = np.concatenate([ds.x_train, ds.x_val])
    want = train.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1) / 255.0
    assert {r.tobytes() for r in got.astype("f4")} == {r.tobytes() for r in want.astype("f4")}


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("subdir", [False, True])
def test_cifar_extracted_loads(tmp_path, protocol, subdir):
    where = tmp_path / "cifar-10-batches-py" if subdir else tmp_path
    batches = write_cifar(where, protocol=protocol)
    ds = datasets.load("cifar10", data_dir=tmp_path, flatten=False, val_fraction=0.2)
    assert ds.x_train.shape == (16, 32, 32, 3) and ds.x_val.shape == (4, 32, 32, 3)
    assert ds.x_test.shape == (4, 32, 32, 3) and ds.num_classes == 10
    check_cifar(ds, batches)
    flat = datasets.load("cifar10", data_dir=tmp_path)
    assert flat.x_test.shape == (4, 3072)
    np.testing.assert_array_equal(flat.x_test, ds.x_test.reshape(4, -1))


def test_cifar_archive_loads_without_extracting(tmp_path, monkeypatch):
    batches = write_cifar_archive(tmp_path / "cifar10" / "cifar-10-python.tar.gz", seed=7)
    trust(monkeypatch, "cifar10", tmp_path / "cifar10", algorithm="md5")
    ds = datasets.load("cifar10", data_dir=tmp_path, flatten=False, val_fraction=0.2)
    check_cifar(ds, batches)
    assert files_under(tmp_path) == ["cifar10", "cifar10/cifar-10-python.tar.gz"]


def test_cifar_archive_incomplete_or_corrupt(tmp_path, monkeypatch):
    path = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    write_cifar_archive(path, skip=("data_batch_4",))
    trust(monkeypatch, "cifar10", path.parent, algorithm="md5")
    with pytest.raises(ValueError, match="cifar-10-python.tar.gz: the archive holds no "
                                         "data_batch_4"):
        datasets.load("cifar10", data_dir=tmp_path)
    path.write_bytes(b"junk")
    trust(monkeypatch, "cifar10", path.parent, algorithm="md5")
    with pytest.raises(ValueError, match="cifar-10-python.tar.gz: not a readable tar.gz"):
        datasets.load("cifar10", data_dir=tmp_path)


def test_cifar_corrupt(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match="data_batch_3.*unpickle.*CIFAR-10"):
        datasets.load("cifar10", data_dir=tmp_path)


def test_cifar_refuses_code_in_pickle(tmp_path):
    write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(ValueError, match="test_batch.*refusing"):
        datasets.load("cifar10", data_dir=tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_cifar_inconsistent(tmp_path):
    write_cifar(tmp_path)
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2]}, f)
    with pytest.raises(ValueError, match="data_batch_1.*4 images but 3 labels"):
        datasets.load("cifar10", data_dir=tmp_path)
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, f)
    with pytest.raises(ValueError, match="data_batch_1.*shape"):
        datasets.load("cifar10", data_dir=tmp_path)
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(ValueError, match="data_batch_1.*list"):
        datasets.load("cifar10", data_dir=tmp_path)


def test_cifar_missing_batch(tmp_path):
    write_cifar(tmp_path)
    os.remove(tmp_path / "data_batch_5")
    with pytest.raises(FileNotFoundError, match="data_batch_5: file not found"):
        datasets.load("cifar10", data_dir=tmp_path)


# --------------------------------------------------------------------------------------------
# .npz
# --------------------------------------------------------------------------------------------


def test_npz_loads(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 2, 3))
    y = np.arange(50) % 4
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    ds = datasets.load(tmp_path / "mine.npz", val_fraction=0.2, test_fraction=0.2)
    assert ds.x_train.shape == (30, 6) and ds.x_val.shape == (10, 6) and ds.x_test.shape == (10, 6)
    assert ds.num_classes == 4 and ds.name == "mine"
    ds = datasets.load(str(tmp_path / "mine.npz"), flatten=False)
    assert ds.x_train.shape[1:] == (2, 3)
    # values kept (no rescaling), every row of x present once
    allx = np.concatenate([ds.x_train, ds.x_val, ds.x_test])
    np.testing.assert_allclose(np.sort(allx.ravel()), np.sort(x.astype("f4").ravel()))


def test_npz_with_test_split(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz",
        x=rng.normal(size=(20, 3)),
        y=np.arange(20) % 2,
        x_test=rng.normal(size=(5, 3)),
        y_test=np.array([0, 1, 2, 0, 1]),
    )
    with pytest.warns(UserWarning, match="test labels hold class 2 that the training labels "
                                         "lack"):
        ds = datasets.load(tmp_path / "d.npz", val_fraction=0.25)
    assert ds.x_train.shape == (15, 3) and ds.x_val.shape == (5, 3) and ds.x_test.shape == (5, 3)
    assert ds.num_classes == 3
    np.testing.assert_array_equal(ds.y_test, [0, 1, 2, 0, 1])


def test_npz_label_forms_accepted(tmp_path):
    x = np.zeros((10, 2))
    for y, classes in [
        (np.arange(10.0) % 3, 3),  # whole-number floats
        (np.arange(10, dtype=np.uint64) % 3 + 1, 4),  # 1-based: class 0 unused, still fine
        (np.arange(10) % 2 == 1, 2),  # bool
        (np.array([0, 1, 2, 5] * 2 + [0, 1]), 6),  # 4 of 6 ids present: at least half
    ]:
        np.savez(tmp_path / "ok.npz", x=x, y=y)
        ds = datasets.load(tmp_path / "ok.npz")
        assert ds.num_classes == classes
        got = np.sort(np.concatenate([ds.y_train, ds.y_val, ds.y_test]))
        np.testing.assert_array_equal(got, np.sort(y.astype(np.int64)))


@pytest.mark.parametrize(
    "arrays, match",
    [
        (dict(x=np.zeros((5, 2)), y=np.zeros(4, int)), "5 examples but y has 4"),
        (dict(x=np.zeros((4, 2)), y=np.array([0.0, 1.5, 1.0, 0.0])),
         r"whole-number class ids, got 1.5 \(dtype float64\)"),
        (dict(x=np.zeros((4, 2)), y=np.array([0.0, np.nan, 1.0, 0.0])), "whole-number.*nan"),
        (dict(x=np.zeros((4, 2)), y=np.array(["a", "b", "a", "b"])), "integer class ids.*<U1"),
        (dict(x=np.zeros((4, 2)), y=np.array([0, -1, 1, 0])), "labels must be >= 0"),
        (dict(x=np.zeros((4, 2)), y=np.array([0, 2**32 + 2, 1, 2], np.int64)),
         rf"below 2\*\*31, got maximum {2**32 + 2}\."),
        (dict(x=np.zeros((4, 2)), y=np.array([0, 2**63 + 5, 1, 2], np.uint64)),
         rf"below 2\*\*31, got maximum {2**63 + 5}\."),
        (dict(x=np.zeros((4, 2)), y=np.array([0.0, 1e20, 1.0, 2.0])), r"below 2\*\*31"),
        (dict(x=np.zeros((10, 2)), y=np.array([0, 100_000_000] * 5)),
         "the largest label 100000000 asks for 100000001 classes but only 2 distinct"),
        (dict(x=np.zeros((10, 2)), y=np.array([0, 7] * 5)), "asks for 8 classes but only 2"),
        (dict(x=np.zeros((0, 2)), y=np.zeros(0, int)), "empty"),
        (dict(x=np.zeros((4, 2))), r"missing array\(s\) \['y'\]"),
        (dict(x=np.zeros(4), y=np.zeros(4, int)), r"shape \[n, ...features\]"),
        (dict(x=np.zeros((4, 2), complex), y=np.zeros(4, int)), "x must be real, got dtype "
                                                                 "complex128"),
        (dict(x=np.full((4, 2), np.nan), y=np.zeros(4, int)), "NaN"),
        (dict(x=np.full((4, 2), 1e39), y=np.zeros(4, int)), "NaN or inf"),  # beyond float32
        (dict(x=np.zeros((4, 2)), y=np.zeros(4, int), x_test=np.zeros((2, 2))), "together"),
        (dict(x=np.zeros((5, 2)), y=np.arange(5) % 2),
         r"needs at least 6 examples, got 5\."),  # default fractions 0.1 / 0.2
    ],
)
def test_npz_bad_data_one_line(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=rf"bad.npz.*{match}") as e:
        datasets.load(tmp_path / "bad.npz")
    assert "\n" not in str(e.value)


def test_npz_too_few_for_validation_with_own_test_set(tmp_path):
    np.savez(tmp_path / "t.npz", x=np.zeros((4, 2)), y=np.arange(4) % 2,
             x_test=np.zeros((3, 2)), y_test=np.arange(3) % 2)
    # val_fraction=0.1 of the training examples needs round(0.1 n) >= 1 and one left to train
    with pytest.raises(ValueError, match=r"t.npz: .*needs at least 6 examples, got 4\."):
        datasets.load(tmp_path / "t.npz")
    assert datasets.load(tmp_path / "t.npz", val_fraction=0.0).x_train.shape == (4, 2)


def test_npz_corrupt_and_missing(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip archive")
    with pytest.raises(ValueError, match="junk.npz: not a valid .npz file") as e:
        datasets.load(tmp_path / "junk.npz")
    assert "pickle" not in str(e.value)
    np.savez(tmp_path / "cut.npz", x=np.zeros((50, 20)), y=np.zeros(50, int))
    raw = (tmp_path / "cut.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="cut.npz: not a valid .npz file"):
        datasets.load(tmp_path / "cut.npz")
    with zipfile.ZipFile(tmp_path / "member.npz", "w") as z:  # a zip whose member is no .npy
        z.writestr("x.npy", b"garbage")
        z.writestr("y.npy", b"garbage")
    with pytest.raises(ValueError, match="member.npz: not a valid .npz file"):
        datasets.load(tmp_path / "member.npz")
    np.savez(tmp_path / "objects.npz", x=np.array([{}, {}], dtype=object), y=np.zeros(2, int))
    with pytest.raises(ValueError, match="objects.npz: holds Python objects"):
        datasets.load(tmp_path / "objects.npz")
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        datasets.load(tmp_path / "absent.npz")


# --------------------------------------------------------------------------------------------
# downloads (from the local server)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, algorithm", [("mnist", "sha256"), ("fashion_mnist", "md5"),
                                             ("cifar10", "md5")])
def test_download_and_load_round_trip(server, monkeypatch, tmp_path, name, algorithm):
    url, root, requests = server
    trust(monkeypatch, name, root / name, url=f"{url}{name}/", algorithm=algorithm)
    seen = []
    requests.clear()
    ds = datasets.load(name, data_dir=tmp_path, flatten=False,
                       progress=lambda f, done, total: seen.append((f, done, total)))
    names = [f.name for f in datasets.SOURCES[name].files]
    assert requests == [f"/{name}/{f}" for f in names]
    assert files_under(tmp_path) == [name] + [f"{name}/{f}" for f in sorted(names)]
    for f in names:  # byte for byte what was served
        assert (tmp_path / name / f).read_bytes() == (root / name / f).read_bytes()
        size = (root / name / f).stat().st_size
        calls = [(d, t) for g, d, t in seen if g == f]
        assert calls[0] == (0, size) and calls[-1] == (size, size)
        assert all(a[0] <= b[0] for a, b in zip(calls, calls[1:], strict=False))
    # the data is what the served files hold
    if name == "cifar10":
        check_cifar(ds, write_cifar_archive(tmp_path / "again" / "c.tar.gz", seed=3))
    else:
        want = write_idx_set(tmp_path / "again", seed={"mnist": 1, "fashion_mnist": 2}[name])
        np.testing.assert_array_equal(ds.y_test, want["t10k-labels-idx1-ubyte"])
        np.testing.assert_allclose(ds.x_test[..., 0], want["t10k-images-idx3-ubyte"] / 255.0,
                                   rtol=1e-6)
    # cached: a second load asks the server for nothing
    requests.clear()
    again = datasets.load(name, data_dir=tmp_path, flatten=False)
    assert requests == []
    np.testing.assert_array_equal(again.x_test, ds.x_test)


def test_default_cache_is_jaxnn_data_then_home(server, monkeypatch, tmp_path):
    url, root, _ = server
    trust(monkeypatch, "mnist", root / "mnist", url=f"{url}mnist/")
    datasets.download("mnist")  # $JAXNN_DATA (set by the fixture)
    assert (tmp_path / "default-cache" / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file()
    assert datasets.cache_dir() == tmp_path / "default-cache"
    monkeypatch.delenv("JAXNN_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert datasets.cache_dir() == tmp_path / "home" / ".cache" / "jaxnn"
    assert datasets.cache_dir("~/x") == tmp_path / "home" / "x"


def test_mirror_from_env_and_argument(server, monkeypatch, tmp_path):
    url, root, requests = server
    trust(monkeypatch, "mnist", root / "mnist", url=DEAD)  # the official location is down
    monkeypatch.setenv("JAXNN_DATA_URL", f"{url}mnist")  # no trailing slash: joined with one
    requests.clear()
    datasets.download("mnist", data_dir=tmp_path / "a")
    assert requests == [f"/mnist/{f}" for f in
                        ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")]
    monkeypatch.setenv("JAXNN_DATA_URL", DEAD)  # the argument wins over the variable
    paths = datasets.download("mnist", data_dir=tmp_path / "b", data_url=f"{url}mnist/")
    assert [p.parent for p in paths] == [tmp_path / "b" / "mnist"] * 4
    # a file:// mirror works too (urllib)
    d = datasets.download("mnist", data_dir=tmp_path / "c", data_url=(root / "mnist").as_uri())
    assert d[0].read_bytes() == (root / "mnist" / d[0].name).read_bytes()


def test_checksum_mismatch_leaves_nothing(server, monkeypatch, tmp_path):
    url, root, _ = server
    trust(monkeypatch, "mnist", root / "mnist", url=f"{url}mnist/")
    src = datasets.SOURCES["mnist"]
    wrong = "0" * 64
    files = (src.files[0], src.files[1]._replace(digest=wrong), *src.files[2:])
    monkeypatch.setitem(datasets.SOURCES, "mnist", src._replace(files=files))
    name = "train-labels-idx1-ubyte.gz"
    actual = hashlib.sha256((root / "mnist" / name).read_bytes()).hexdigest()
    with pytest.raises(datasets.DownloadError) as e:
        datasets.load("mnist", data_dir=tmp_path / "cache")
    msg = str(e.value)
    assert isinstance(e.value, ValueError) and "\n" not in msg
    assert name in msg and f"{url}mnist/{name}" in msg
    assert f"expected sha256 {wrong}, got {actual}" in msg
    # the file that verified stays; the one that did not is nowhere, not even partly
    assert files_under(tmp_path / "cache") == ["mnist", "mnist/train-images-idx3-ubyte.gz"]


@pytest.mark.parametrize("where, needle", [
    ("missing/", "HTTP 404"),
    ("dead", "Connection refused"),
    ("short/mnist/", "stopped after"),  # the server sends half of what it announced
])
def test_failed_download_leaves_nothing(server, monkeypatch, tmp_path, where, needle):
    url, root, _ = server
    base = DEAD if where == "dead" else f"{url}{where}"
    trust(monkeypatch, "mnist", root / "mnist", url=base)
    expected = datasets.SOURCES["mnist"].files[0].digest
    with pytest.raises(datasets.DownloadError) as e:
        datasets.download("mnist", data_dir=tmp_path / "cache")
    msg = str(e.value)
    assert "\n" not in msg and needle in msg
    assert f"{base}train-images-idx3-ubyte.gz" in msg and f"expected sha256 {expected}" in msg
    assert not (tmp_path / "cache").exists()  # no partial file, no directory we created


def test_interrupted_download_leaves_no_partial_file(server, monkeypatch, tmp_path):
    url, root, _ = server
    trust(monkeypatch, "mnist", root / "mnist", url=f"{url}mnist/")
    cache = tmp_path / "cache"
    (cache / "mnist").mkdir(parents=True)

    def interrupt(name, done, total):
        if done > 0:  # mid-transfer, after bytes were written to the temporary file
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        datasets.download("mnist", data_dir=cache, progress=interrupt)
    assert files_under(cache) == ["mnist"]  # the directory existed before; nothing inside


def test_corrupt_cached_file_is_refused_then_fetched_again(server, monkeypatch, tmp_path):
    url, root, requests = server
    trust(monkeypatch, "mnist", root / "mnist", url=f"{url}mnist/")
    datasets.download("mnist", data_dir=tmp_path)
    cached = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    cached.write_bytes(cached.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz: checksum mismatch.*"
                                         r"jaxnn data download mnist"):
        datasets.load("mnist", data_dir=tmp_path)
    requests.clear()
    datasets.download("mnist", data_dir=tmp_path)  # keeps the good files, replaces the bad one
    assert requests == ["/mnist/t10k-images-idx3-ubyte.gz"]
    assert digest(cached, "sha256") == digest(root / "mnist" / cached.name, "sha256")
    assert datasets.load("mnist", data_dir=tmp_path).x_test.shape == (10, 784)


def test_partial_cache_is_completed(server, monkeypatch, tmp_path):
    url, root, requests = server
    trust(monkeypatch, "mnist", root / "mnist", url=f"{url}mnist/")
    (tmp_path / "mnist").mkdir()
    keep = "train-labels-idx1-ubyte.gz"
    (tmp_path / "mnist" / keep).write_bytes((root / "mnist" / keep).read_bytes())
    requests.clear()
    datasets.load("mnist", data_dir=tmp_path)
    assert sorted(requests) == sorted(f"/mnist/{f.name}" for f in datasets.SOURCES["mnist"].files
                                      if f.name != keep)


def test_cache_status(server, monkeypatch, tmp_path):
    url, root, _ = server
    trust(monkeypatch, "mnist", root / "mnist", url=f"{url}mnist/")
    st = datasets.cache_status("mnist", data_dir=tmp_path)
    assert st.directory == tmp_path / "mnist" and len(st.missing) == 4 and not st.complete
    datasets.download("mnist", data_dir=tmp_path)
    st = datasets.cache_status("mnist", data_dir=tmp_path, verify=True)
    size = sum(p.stat().st_size for p in (root / "mnist").iterdir())
    assert st.complete and st.missing == () and st.size == size and st.mismatched == ()
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"x")
    st = datasets.cache_status("mnist", data_dir=tmp_path, verify=True)
    assert st.mismatched == ("t10k-labels-idx1-ubyte.gz",) and not st.complete
    assert datasets.cache_status("mnist", data_dir=tmp_path).mismatched == ()  # not checked


# --------------------------------------------------------------------------------------------
# downloads that stall, overflow or were killed
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _bad_server(kind: str):
    """``trickle``: announces 1000 bytes, sends one every 0.2 s; ``endless``: no length, sends
    1 KiB chunks until the client hangs up."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            if kind == "trickle":
                self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(1000):
                    self.wfile.write(b"x" if kind == "trickle" else b"x" * 1024)
                    self.wfile.flush()
                    time.sleep(0.2 if kind == "trickle" else 0.001)
            except OSError:
                pass
            self.close_connection = True

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/f.bin"
    finally:
        server.shutdown()
        server.server_close()


def test_a_trickling_server_meets_the_overall_deadline(tmp_path, monkeypatch):
    """The per-read timeout never fires when a byte arrives every 0.2 s; the deadline does."""
    monkeypatch.setenv("JAXNN_DOWNLOAD_DEADLINE", "1.5")
    with _bad_server("trickle") as url:
        t0 = time.monotonic()
        with pytest.raises(DownloadError, match=r"f.bin: the download .* took longer than 1.5 s"
                           ) as e:
            fetch(url, tmp_path / "f.bin", algorithm="sha256", digest="0" * 64)
        assert time.monotonic() - t0 < 6 and "\n" not in str(e.value)
    assert os.listdir(tmp_path) == []
    assert deadline_for(None) == 1.5
    monkeypatch.delenv("JAXNN_DOWNLOAD_DEADLINE")
    assert deadline_for(16 * 1024 * 100) == pytest.approx(_download.DEADLINE_BASE + 100)


def test_a_download_stops_at_the_expected_size(tmp_path):
    with _bad_server("endless") as url:
        with pytest.raises(DownloadError, match="sent more than the expected 5000 bytes"):
            fetch(url, tmp_path / "f.bin", algorithm="sha256", digest="0" * 64, size=5000)
    assert os.listdir(tmp_path) == []


def test_partial_files_of_killed_downloads_are_removed_by_the_next(tmp_path, monkeypatch):
    """kill -9 mid-transfer leaves a .part file; the next download of that file removes it,
    and only such leftovers: not another file's, not a live download's, nothing else."""
    with _bad_server("trickle") as url:
        code = ("import sys; from jaxnn._download import fetch; "
                "fetch(sys.argv[1], sys.argv[2], algorithm='sha256', digest='0' * 64)")
        p = subprocess.Popen([sys.executable, "-c", code, url, str(tmp_path / "f.bin")])
        try:
            t0 = time.monotonic()
            while not any(n.endswith(".part") for n in os.listdir(tmp_path)):
                assert time.monotonic() - t0 < 60 and p.poll() is None
                time.sleep(0.05)
        finally:
            p.kill()
            p.wait()
    (left,) = os.listdir(tmp_path)
    assert left.startswith(".f.bin.") and left.endswith(".part")
    keep = [".other.bin.abcd1234.part", ".f.bin.part", "f.bin.abcd1234.part", "notes.txt"]
    for name in keep:
        (tmp_path / name).write_text("the user's")
    live = tmp_path / ".f.bin.live0000.part"  # a download still running: locked
    live.write_text("")
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        old = time.time() - 3600
        for name in os.listdir(tmp_path):
            os.utime(tmp_path / name, (old, old))
        with pytest.raises(DownloadError):  # any download of f.bin cleans up first
            fetch(DEAD + "f.bin", tmp_path / "f.bin", algorithm="sha256", digest="0" * 64)
        assert sorted(os.listdir(tmp_path)) == sorted(keep + [live.name])
    finally:
        os.close(fd)


def test_published_checksum_table():
    """The table holds each dataset's original files with well-formed digests."""
    want = {"mnist": ("sha256", 4), "fashion_mnist": ("md5", 4), "cifar10": ("md5", 1)}
    assert set(datasets.SOURCES) == set(want) == set(datasets.NAMES) - {"digits"}
    width = {"sha256": 64, "md5": 32}
    for name, (algorithm, count) in want.items():
        files = datasets.SOURCES[name].files
        assert len(files) == count and len({f.name for f in files}) == count
        for f in files:
            assert f.algorithm == algorithm and len(f.digest) == width[algorithm]
            int(f.digest, 16)
            assert isinstance(f.size, int) and f.size > 1000  # caps the download


def test_digits_read_without_importing_sklearn_equal_sklearns():
    from sklearn.datasets import load_digits

    from jaxnn.datasets import _digits_arrays

    images, target = _digits_arrays()
    ref = load_digits()
    np.testing.assert_array_equal(images, ref.images)
    np.testing.assert_array_equal(target, ref.target)


# --------------------------------------------------------------------------------------------
# trust, round two: degenerate labels, any corruption of a .npy inside the .npz
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("y, found", [(np.zeros(40, int), "only class 0"),
                                      (np.ones(40, int), "only class 1"),
                                      (np.full(40, 1.0), "only class 1")])
def test_npz_with_one_training_class_is_refused(tmp_path, y, found):
    # Cause: nothing asked for two classes; y all zeros trained a one-class model that reported
    # "test accuracy 1.0000, test loss 0.0000".
    np.savez(tmp_path / "one.npz", x=np.random.default_rng(0).normal(size=(40, 3)), y=y)
    with pytest.raises(ValueError, match=rf"one.npz: the training labels hold {found}; .*at "
                                         r"least 2 classes") as e:
        datasets.load(tmp_path / "one.npz")
    assert "\n" not in str(e.value)


def test_npz_test_classes_the_training_split_lacks_are_a_warning(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "unseen.npz", x=rng.normal(size=(40, 3)), y=np.arange(40) % 2,
             x_test=rng.normal(size=(6, 3)), y_test=np.array([0, 1, 2, 3, 3, 0]))
    with pytest.warns(UserWarning, match=r"unseen.npz: the test labels hold classes 2, 3 that "
                                         "the training labels lack") as record:
        ds = datasets.load(tmp_path / "unseen.npz")
    assert ds.num_classes == 4 and len(record) == 1
    assert "\n" not in str(record[0].message)
    assert record[0].filename == __file__  # points at the caller of load()


def test_npz_any_failure_inside_numpy_is_one_line_naming_the_file(tmp_path):
    # Cause: only some exception types were caught; a damaged .npy header made numpy's header
    # parser raise tokenize.TokenError, which came out as a traceback.
    np.savez(tmp_path / "good.npz", x=np.ones((10, 3), np.float32), y=np.arange(10) % 2)
    with zipfile.ZipFile(tmp_path / "good.npz") as z:
        members = {n: z.read(n) for n in z.namelist()}
    header = bytearray(members["x.npy"])
    start = header.index(b"{")
    header[start:start + 20] = b"{'descr': '<f4', ((("  # an unclosed bracket in the header
    for name, x_bytes in [("tokens", bytes(header)),
                          ("shape", bytes(members["x.npy"]).replace(b"(10, 3)", b"(1e9, 3)"))]:
        with zipfile.ZipFile(tmp_path / f"{name}.npz", "w") as z:
            z.writestr("x.npy", x_bytes)
            z.writestr("y.npy", members["y.npy"])
        with pytest.raises(ValueError, match=rf"{name}.npz: not a valid .npz file") as e:
            datasets.load(tmp_path / f"{name}.npz")
        assert "\n" not in str(e.value)
