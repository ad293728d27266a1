"""Tests for jaxnn.data: loaders (on small files written here), splits, and batching."""

import gzip
import os
import pickle
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import data

# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def test_public_names():
    assert set(data.__all__) == {
        "Batch",
        "Dataset",
        "NAMES",
        "batch_indices",
        "epoch_batches",
        "gather_batch",
        "iterate_batches",
        "load",
        "num_batches",
        "read_idx",
        "split_indices",
    }
    for name in data.__all__:
        assert hasattr(data, name)
    assert data.Dataset._fields == (
        "x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "num_classes", "name"
    )  # fmt: skip
    assert data.Batch._fields == ("x", "y", "mask")


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", seed=0)


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
    tr, va, te = data.split_indices(bunch.target, seed=0)
    np.testing.assert_array_equal(digits.x_train, bunch.data[tr] / 16.0)
    np.testing.assert_array_equal(digits.y_test, bunch.target[te])
    np.testing.assert_array_equal(digits.y_val, bunch.target[va])


def test_digits_images_and_custom_fractions():
    ds = data.load("digits", flatten=False, val_fraction=0.0, test_fraction=0.5)
    assert ds.x_train.shape == (899, 8, 8, 1) and ds.x_test.shape == (898, 8, 8, 1)
    assert ds.x_val.shape == (0, 8, 8, 1) and ds.y_val.shape == (0,)


def test_digits_deterministic_per_seed(digits):
    again = data.load("digits", seed=0)
    for a, b in zip(digits[:6], again[:6], strict=True):
        np.testing.assert_array_equal(a, b)
    other = data.load("digits", seed=1)
    assert not np.array_equal(digits.y_train, other.y_train)


def test_split_indices_disjoint_and_complete():
    y = np.random.default_rng(0).integers(0, 7, size=503)
    tr, va, te = data.split_indices(y, seed=3, val_fraction=0.15, test_fraction=0.25)
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
        data.split_indices(np.zeros(10, int), **kw)


def test_unknown_name():
    with pytest.raises(ValueError, match="'digits', 'mnist', 'cifar10'.*npz"):
        data.load("imagenet")


# --------------------------------------------------------------------------------------------
# MNIST (IDX)
# --------------------------------------------------------------------------------------------


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.tobytes()


def write_mnist(directory, *, gz=False, n_train=30, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    os.makedirs(directory, exist_ok=True)
    for name, arr in arrays.items():
        raw = idx_bytes(arr)
        if gz:
            with gzip.open(os.path.join(directory, name + ".gz"), "wb") as f:
                f.write(raw)
        else:
            with open(os.path.join(directory, name), "wb") as f:
                f.write(raw)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_loads(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz=gz)
    ds = data.load("mnist", data_dir=tmp_path, val_fraction=0.2)
    assert ds.x_train.shape == (24, 784) and ds.x_val.shape == (6, 784)
    assert ds.x_test.shape == (10, 784) and ds.num_classes == 10
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    np.testing.assert_allclose(
        ds.x_test, arrays["t10k-images-idx3-ubyte"].reshape(10, 784) / 255.0, rtol=1e-6
    )
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
    # train + val is exactly the IDX training set
    train_rows = {r.tobytes() for r in (arrays["train-images-idx3-ubyte"] / 255.0).astype("f4")}
    got = {r.tobytes() for r in np.concatenate([ds.x_train, ds.x_val]).reshape(-1, 28, 28)}
    assert got == train_rows
    images = data.load("mnist", data_dir=tmp_path, flatten=False)
    assert images.x_test.shape == (10, 28, 28, 1)


def test_read_idx_roundtrip(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.idx").write_bytes(idx_bytes(arr))
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a.idx"), arr)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_bad_magic(tmp_path, gz):
    write_mnist(tmp_path, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    raw = b"\x12\x34\x08\x03" + idx_bytes(np.zeros((30, 28, 28)))[4:]
    (tmp_path / name).write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(ValueError, match=rf"{name}.*magic.*IDX"):
        data.load("mnist", data_dir=tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_truncated(tmp_path, gz):
    write_mnist(tmp_path, gz=gz)
    name = "t10k-images-idx3-ubyte" + (".gz" if gz else "")
    raw = idx_bytes(np.zeros((10, 28, 28)))[:-100]
    (tmp_path / name).write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(ValueError, match=rf"{name}.*truncated"):
        data.load("mnist", data_dir=tmp_path)


def test_mnist_corrupt_gzip(tmp_path):
    write_mnist(tmp_path, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])  # gzip stream cut short
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz"):
        data.load("mnist", data_dir=tmp_path)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz"):
        data.load("mnist", data_dir=tmp_path)


def test_mnist_inconsistent(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(29)))
    with pytest.raises(ValueError, match="30 images.*29 labels"):
        data.load("mnist", data_dir=tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(30, 12)))
    with pytest.raises(ValueError, match="labels must be < 10"):
        data.load("mnist", data_dir=tmp_path)


def test_mnist_missing(tmp_path):
    with pytest.raises(ValueError, match="data_dir"):
        data.load("mnist")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.load("mnist", data_dir=tmp_path / "nowhere")
    write_mnist(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.*IDX"):
        data.load("mnist", data_dir=tmp_path)


# --------------------------------------------------------------------------------------------
# CIFAR-10 (python batches)
# --------------------------------------------------------------------------------------------


def write_cifar(directory, *, n=4, protocol=2):
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    batches = {}
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        batch = {
            b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
            b"labels": [int(v) for v in (np.arange(n) + i) % 10],
            b"batch_label": name.encode(),
        }
        with open(os.path.join(directory, name), "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        batches[name] = batch
    return batches


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("subdir", [False, True])
def test_cifar_loads(tmp_path, protocol, subdir):
    where = tmp_path / "cifar-10-batches-py" if subdir else tmp_path
    batches = write_cifar(where, protocol=protocol)
    ds = data.load("cifar10", data_dir=tmp_path, flatten=False, val_fraction=0.2)
    assert ds.x_train.shape == (16, 32, 32, 3) and ds.x_val.shape == (4, 32, 32, 3)
    assert ds.x_test.shape == (4, 32, 32, 3) and ds.num_classes == 10
    raw = batches["test_batch"][b"data"]
    # channel-major rows -> NHWC: x[i, h, w, c] == raw[i, c * 1024 + h * 32 + w] / 255
    for i, h, w, c in [(0, 0, 0, 0), (1, 5, 7, 2), (3, 31, 30, 1)]:
        assert ds.x_test[i, h, w, c] == np.float32(raw[i, c * 1024 + h * 32 + w] / 255.0)
    np.testing.assert_array_equal(ds.y_test, batches["test_batch"][b"labels"])
    flat = data.load("cifar10", data_dir=tmp_path)
    assert flat.x_test.shape == (4, 3072)
    np.testing.assert_array_equal(flat.x_test, ds.x_test.reshape(4, -1))


def test_cifar_corrupt(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match="data_batch_3.*unpickle.*CIFAR-10"):
        data.load("cifar10", data_dir=tmp_path)


def test_cifar_refuses_code_in_pickle(tmp_path):
    write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(ValueError, match="test_batch.*refusing"):
        data.load("cifar10", data_dir=tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_cifar_inconsistent(tmp_path):
    write_cifar(tmp_path)
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2]}, f)
    with pytest.raises(ValueError, match="data_batch_1.*4 images but 3 labels"):
        data.load("cifar10", data_dir=tmp_path)
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, f)
    with pytest.raises(ValueError, match="data_batch_1.*shape"):
        data.load("cifar10", data_dir=tmp_path)
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(ValueError, match="data_batch_1.*list"):
        data.load("cifar10", data_dir=tmp_path)


def test_cifar_missing_batch(tmp_path):
    write_cifar(tmp_path)
    os.remove(tmp_path / "data_batch_5")
    with pytest.raises(FileNotFoundError, match="data_batch_5"):
        data.load("cifar10", data_dir=tmp_path)


# --------------------------------------------------------------------------------------------
# .npz
# --------------------------------------------------------------------------------------------


def test_npz_loads(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 2, 3))
    y = np.arange(50) % 4
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    ds = data.load(tmp_path / "mine.npz", val_fraction=0.2, test_fraction=0.2)
    assert ds.x_train.shape == (30, 6) and ds.x_val.shape == (10, 6) and ds.x_test.shape == (10, 6)
    assert ds.num_classes == 4 and ds.name == "mine"
    ds = data.load(str(tmp_path / "mine.npz"), flatten=False)
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
    ds = data.load(tmp_path / "d.npz", val_fraction=0.25)
    assert ds.x_train.shape == (15, 3) and ds.x_val.shape == (5, 3) and ds.x_test.shape == (5, 3)
    assert ds.num_classes == 3
    np.testing.assert_array_equal(ds.y_test, [0, 1, 2, 0, 1])


@pytest.mark.parametrize(
    "arrays, match",
    [
        (dict(x=np.zeros((5, 2)), y=np.zeros(4, int)), "5 examples but y has 4"),
        (dict(x=np.zeros((4, 2)), y=np.array([0.0, 1.5, 1.0, 0.0])), "integer class ids.*float"),
        (dict(x=np.zeros((4, 2)), y=np.array([0, -1, 1, 0])), "labels must be >= 0"),
        (dict(x=np.zeros((0, 2)), y=np.zeros(0, int)), "empty"),
        (dict(x=np.zeros((4, 2))), r"missing array\(s\) \['y'\]"),
        (dict(x=np.zeros(4), y=np.zeros(4, int)), r"shape \[n, ...features\]"),
        (dict(x=np.full((4, 2), np.nan), y=np.zeros(4, int)), "NaN"),
        (dict(x=np.zeros((4, 2)), y=np.zeros(4, int), x_test=np.zeros((2, 2))), "together"),
    ],
)
def test_npz_inconsistent(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=rf"bad.npz.*{match}"):
        data.load(tmp_path / "bad.npz")


def test_npz_corrupt_and_missing(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip archive")
    with pytest.raises(ValueError, match="junk.npz.*cannot read"):
        data.load(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        data.load(tmp_path / "absent.npz")


# --------------------------------------------------------------------------------------------
# batching
# --------------------------------------------------------------------------------------------


def test_num_batches():
    assert data.num_batches(10, 4) == 3 and data.num_batches(10, 4, drop_last=True) == 2
    assert data.num_batches(8, 4) == 2 and data.num_batches(3, 8) == 1
    with pytest.raises(ValueError, match="batch_size"):
        data.num_batches(10, 0)
    with pytest.raises(ValueError, match="no batches"):
        data.num_batches(3, 8, drop_last=True)


@pytest.mark.parametrize("n, b", [(10, 4), (12, 4), (5, 8), (1, 1)])
def test_batch_indices_cover_epoch(n, b, key):
    idx, mask = data.batch_indices(n, b, key=key, epoch=2)
    nb = -(-n // b)
    assert idx.shape == (nb, b) and mask.shape == (nb, b)
    assert idx.dtype == jnp.int32 and mask.dtype == jnp.float32
    assert float(mask.sum()) == n
    real = np.asarray(idx)[np.asarray(mask) == 1]
    np.testing.assert_array_equal(np.sort(real), np.arange(n))  # each example exactly once
    # the real examples come first; padding only in the last batch
    np.testing.assert_array_equal(np.asarray(mask).ravel(), np.arange(nb * b) < n)
    assert np.all((0 <= np.asarray(idx)) & (np.asarray(idx) < n))


def test_batch_order_pure_function_of_key_and_epoch(key):
    a = data.batch_indices(100, 16, key=key, epoch=3)[0]
    b = data.batch_indices(100, 16, key=jax.random.key(0), epoch=3)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, data.batch_indices(100, 16, key=key, epoch=4)[0])
    assert not np.array_equal(a, data.batch_indices(100, 16, key=jax.random.key(1), epoch=3)[0])
    # reference: the documented formula
    perm = jax.random.permutation(jax.random.fold_in(key, 3), 100)
    np.testing.assert_array_equal(np.asarray(a).ravel()[:100], perm)
    # an int seed is the same as jax.random.key(seed); key=None keeps the order
    np.testing.assert_array_equal(a, data.batch_indices(100, 16, key=0, epoch=3)[0])
    np.testing.assert_array_equal(data.batch_indices(6, 3)[0], [[0, 1, 2], [3, 4, 5]])


def test_batch_indices_drop_last(key):
    idx, mask = data.batch_indices(10, 4, key=key, epoch=0, drop_last=True)
    assert idx.shape == (2, 4) and float(mask.sum()) == 8
    assert len(np.unique(idx)) == 8


def test_batch_indices_under_jit(key):
    f = jax.jit(lambda k, e: data.batch_indices(37, 8, key=k, epoch=e))
    for e in (0, 5):
        got_idx, got_mask = f(key, jnp.int32(e))
        want_idx, want_mask = data.batch_indices(37, 8, key=key, epoch=e)
        np.testing.assert_array_equal(got_idx, want_idx)
        np.testing.assert_array_equal(got_mask, want_mask)


def test_epoch_batches_and_iterator(key):
    n, b = 23, 5
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    y = np.arange(n, dtype=np.int32)
    batches = data.epoch_batches(x, y, b, key=key, epoch=1)
    assert isinstance(batches, data.Batch)
    xb, yb, mask = batches
    assert xb.shape == (5, b, 3) and yb.shape == (5, b) and mask.shape == (5, b)
    np.testing.assert_array_equal(xb[..., 0], 3 * yb)  # rows stay aligned with their labels
    real = np.asarray(yb)[np.asarray(mask) == 1]
    np.testing.assert_array_equal(np.sort(real), y)
    it = list(data.iterate_batches(jnp.asarray(x), y, b, key=key, epoch=1))
    assert len(it) == 5 and all(isinstance(bt, data.Batch) for bt in it)
    for i, bt in enumerate(it):
        assert bt.x.shape == (b, 3) and bt.y.shape == (b,) and bt.mask.shape == (b,)
        np.testing.assert_array_equal(bt.x, xb[i])
        np.testing.assert_array_equal(bt.mask, mask[i])


def test_epoch_in_one_scan(key):
    x = np.ones((10, 2), np.float32)
    y = np.arange(10) % 3

    def step(total, batch):
        return total + jnp.sum(batch.x[:, 0] * batch.mask), jnp.sum(batch.mask)

    total, counts = jax.lax.scan(step, 0.0, data.epoch_batches(x, y, 4, key=key, epoch=0))
    assert float(total) == 10.0 and counts.tolist() == [4.0, 4.0, 2.0]


def test_batching_bad_input():
    with pytest.raises(ValueError, match="same leading"):
        data.epoch_batches(np.zeros((5, 2)), np.zeros(4), 2)
    with pytest.raises(ValueError, match="at least 1"):
        data.epoch_batches(np.zeros((0, 2)), np.zeros(0), 2)
