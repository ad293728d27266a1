"""Datasets and mini-batches: the *sample* step of the training loop.

Two halves:

* **Loading** — :func:`load` returns a :class:`Dataset` of numpy arrays (``x`` float32 scaled to
  ``[0, 1]`` for image datasets, ``y`` int32 class ids) split into train / validation / test.
  ``load("digits")`` is the embedded default (scikit-learn's 1,797 8x8 handwritten digits, no
  download); ``"mnist"`` and ``"cifar10"`` read the original files from a local ``data_dir``; a path
  to a ``.npz`` with arrays ``x`` and ``y`` loads your own data. A missing or corrupt file raises
  ``FileNotFoundError`` / ``ValueError`` with a one-line message naming the file and the format
  expected.
* **Batching** — the shuffled order of an epoch is a pure function of ``(key, epoch)``:
  ``jax.random.permutation(jax.random.fold_in(key, epoch), n)``, so a resumed run sees exactly the
  batches an uninterrupted run would have seen. Every batch has the same shape: the ragged last
  batch is padded by wrapping around to the start of the epoch's permutation, and a float32
  ``mask`` (1 = real example, 0 = padding) says which rows count. Because shapes are fixed, a
  training step compiles once and a whole epoch can run inside one ``jax.lax.scan``.

Example::

    ds = load("digits", seed=0)
    batches = epoch_batches(ds.x_train, ds.y_train, 128, key=jax.random.key(0), epoch=3)
    # batches.x: [num_batches, 128, 64], batches.y / batches.mask: [num_batches, 128]
    state, metrics = jax.lax.scan(train_step, state, batches)
"""

from __future__ import annotations

import functools
import gzip
import importlib
import math
import os
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = [
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
]

#: Built-in dataset names accepted by :func:`load` (besides a path to a ``.npz`` file).
NAMES = ("digits", "mnist", "cifar10")


class Dataset(NamedTuple):
    """A classification dataset split into train, validation and test sets.

    ``x_*`` are float32 numpy arrays of shape ``[n, ...features]``; ``y_*`` are int32 numpy arrays
    of shape ``[n]`` holding class ids in ``[0, num_classes)``. A split may be empty (``n = 0``,
    e.g. ``val_fraction=0``) but keeps its feature shape.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str = ""


class Batch(NamedTuple):
    """One mini-batch (or, stacked, a whole epoch of them).

    Attributes:
      x: inputs, ``[batch_size, ...features]`` (``[num_batches, batch_size, ...]`` when stacked).
      y: integer labels, ``[batch_size]`` (``[num_batches, batch_size]``).
      mask: float32, 1 for real examples and 0 for padding, same leading shape as ``y``. Reduce a
        per-example loss as ``sum(loss * mask) / max(sum(mask), 1)``.
    """

    x: jax.Array
    y: jax.Array
    mask: jax.Array


# --------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}.")
    return value


def _systematic(n: int, count: int) -> np.ndarray:
    """Boolean mask selecting exactly ``count`` of ``n`` positions, spread evenly."""
    j = np.arange(n, dtype=np.int64)
    return ((j + 1) * count) // n > (j * count) // n


def split_indices(
    y: ArrayLike, *, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, seeded train / validation / test split of ``n = len(y)`` examples.

    The sizes are exact: ``n_test = round(n * test_fraction)``, ``n_val = round(n *
    val_fraction)``, the rest is training. Stratification: the examples are shuffled with
    ``np.random.default_rng(seed)``, grouped by class (keeping the shuffled order inside each
    class), and every ``1/test_fraction``-th position of that grouped order goes to test (then the
    same for validation among the remaining ones), so each split holds every class in about its
    overall proportion. Each returned index array is in the shuffled order (not grouped by class).

    Args:
      y: integer labels, shape ``[n]``.
      seed: seed for ``np.random.default_rng``; the same seed gives the same split.
      val_fraction: fraction of all examples for validation, in ``[0, 1)``.
      test_fraction: fraction of all examples for test, in ``[0, 1)``.

    Returns:
      ``(train_idx, val_idx, test_idx)``, disjoint int64 arrays that together cover ``range(n)``.

    Example:
      >>> tr, va, te = split_indices(np.arange(10) % 2, seed=0, val_fraction=0.2, test_fraction=0.2)
      >>> len(tr), len(va), len(te)
      (6, 2, 2)
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must have shape [n], got shape {y.shape}.")
    val_fraction = _check_fraction("val_fraction", val_fraction)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    n = y.shape[0]
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if n - n_test - n_val < 1:
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} leave no training "
            f"examples out of n={n}."
        )
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    grouped = perm[np.argsort(y[perm], kind="stable")]  # by class, shuffled within each class
    is_test = _systematic(n, n_test)
    rest = grouped[~is_test]
    is_val = _systematic(rest.shape[0], n_val)
    rank = np.empty(n, dtype=np.int64)
    rank[perm] = np.arange(n)  # position of each example in the shuffled order

    def in_shuffled_order(idx: np.ndarray) -> np.ndarray:
        return idx[np.argsort(rank[idx], kind="stable")].astype(np.int64)

    return (
        in_shuffled_order(rest[~is_val]),
        in_shuffled_order(rest[is_val]),
        in_shuffled_order(grouped[is_test]),
    )


def _make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    *,
    x_test: np.ndarray | None,
    y_test: np.ndarray | None,
    num_classes: int,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    name: str,
) -> Dataset:
    """Split ``(x, y)`` (and use ``(x_test, y_test)`` as the test set when given)."""
    if x_test is None:
        tr, va, te = split_indices(
            y, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction
        )
        x_test, y_test = x[te], y[te]
    else:
        tr, va, _ = split_indices(y, seed=seed, val_fraction=val_fraction, test_fraction=0.0)
    as_x = lambda a: np.ascontiguousarray(a, dtype=np.float32)
    as_y = lambda a: np.ascontiguousarray(a, dtype=np.int32)
    return Dataset(
        as_x(x[tr]),
        as_y(y[tr]),
        as_x(x[va]),
        as_y(y[va]),
        as_x(x_test),
        as_y(y_test),
        int(num_classes),
        name,
    )


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def _check_labels(y: np.ndarray, what: str, num_classes: int | None = None) -> np.ndarray:
    """Validate integer class ids (shape [n], integer dtype, >= 0, < num_classes if given)."""
    if y.ndim != 1:
        raise ValueError(f"{what}: labels must have shape [n], got shape {y.shape}.")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise ValueError(
            f"{what}: labels must be integer class ids, got dtype {y.dtype} "
            "(convert with y.astype(int) if the values are whole numbers)."
        )
    if y.size:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0:
            raise ValueError(f"{what}: labels must be >= 0, got minimum {lo}.")
        if num_classes is not None and hi >= num_classes:
            raise ValueError(f"{what}: labels must be < {num_classes}, got maximum {hi}.")
    return y.astype(np.int64)


def _load_digits(*, seed, val_fraction, test_fraction, flatten) -> Dataset:
    from sklearn.datasets import load_digits  # lazy: scikit-learn is only needed here

    bunch = load_digits()
    x = np.asarray(bunch.images, dtype=np.float32) / 16.0  # pixel counts 0..16 -> [0, 1]
    x = x.reshape(-1, 64) if flatten else x[..., None]
    y = np.asarray(bunch.target, dtype=np.int64)
    return _make_dataset(
        x,
        y,
        x_test=None,
        y_test=None,
        num_classes=10,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        name="digits",
    )


# IDX dtype codes (http://yann.lecun.com/exdb/mnist/): all multi-byte types are big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_FORMAT = (
    "an IDX file: 2 zero bytes, a dtype code (0x08 = ubyte), the number of dims, "
    "then one big-endian uint32 per dim and the data"
)


def _read_bytes(path: Path, fmt: str) -> bytes:
    """Read a file, gunzipping it if its name ends in ``.gz``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found; expected {fmt}.")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zipfile.BadZipFile) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot read ({e}); expected {fmt}.") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (plain or ``.gz``) into a numpy array, checking header and size."""
    path = Path(path)
    raw = _read_bytes(path, _IDX_FORMAT)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] < 1:
        raise ValueError(
            f"{path}: bad magic number {raw[:4].hex() or '(empty file)'}; expected {_IDX_FORMAT}."
        )
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated header ({len(raw)} bytes); expected {_IDX_FORMAT}.")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: {'truncated' if len(raw) - header < expected else 'trailing'} data: "
            f"header says shape {dims} ({expected} bytes), file has {len(raw) - header} bytes "
            f"after the header; expected {_IDX_FORMAT}."
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find_dir(data_dir: str | os.PathLike | None, name: str, subdirs: tuple[str, ...]) -> Path:
    if data_dir is None:
        raise ValueError(f"load({name!r}) needs data_dir=, a local directory with the files.")
    base = Path(data_dir).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: data directory for {name!r} not found.")
    for sub in subdirs:
        if (base / sub).is_dir():
            return base / sub
    return base


def _find_file(directory: Path, names: tuple[str, ...], fmt: str) -> Path:
    for stem in names:
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(
        f"{directory / names[0]}: file not found (also tried .gz); expected {fmt}."
    )


def _load_mnist(data_dir, *, seed, val_fraction, flatten) -> Dataset:
    directory = _find_dir(data_dir, "mnist", ("mnist", "MNIST/raw"))

    def part(prefix: str, kind: str, rank: int) -> tuple[np.ndarray, Path]:
        path = _find_file(
            directory,
            (f"{prefix}-{kind}-idx{rank}-ubyte", f"{prefix}-{kind}.idx{rank}-ubyte"),
            _IDX_FORMAT,
        )
        arr = read_idx(path)
        if arr.ndim != rank:
            raise ValueError(f"{path}: expected a {rank}-D IDX array, got shape {arr.shape}.")
        return arr, path

    def images_labels(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        (images, ipath), (labels, lpath) = part(prefix, "images", 3), part(prefix, "labels", 1)
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{ipath}: {images.shape[0]} images but {lpath.name} has {labels.shape[0]} labels."
            )
        if images.shape[0] == 0:
            raise ValueError(f"{ipath}: the file holds no images.")
        x = images.astype(np.float32) / 255.0
        x = x.reshape(x.shape[0], -1) if flatten else x[..., None]
        return x, _check_labels(labels, str(lpath), 10)

    x, y = images_labels("train")
    x_test, y_test = images_labels("t10k")
    if x.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"{directory}: train images have shape {x.shape[1:]} but test images "
            f"{x_test.shape[1:]}."
        )
    return _make_dataset(
        x,
        y,
        x_test=x_test,
        y_test=y_test,
        num_classes=10,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=0.0,
        name="mnist",
    )


_CIFAR_FORMAT = (
    "a CIFAR-10 python batch: a pickled dict with b'data' (uint8 [n, 3072]) and b'labels' "
    "(extract cifar-10-python.tar.gz)"
)

# Only what a pickled dict of numpy arrays and lists needs; nothing else can be called.
_PICKLE_ALLOWED = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("builtins", "bytearray"),
}


class _SafeUnpickler(pickle.Unpickler):
    """Refuses every global except the few numpy reconstructors an array pickle needs."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("numpy.core"):  # pickles written by numpy < 2
            module = "numpy._core" + module[len("numpy.core") :]
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return getattr(importlib.import_module(module), name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _SafeUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise
    except Exception as e:  # unpickling can raise nearly anything on a corrupt file
        raise ValueError(
            f"{path}: cannot unpickle ({type(e).__name__}: {e}); expected {_CIFAR_FORMAT}."
        ) from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: got a {type(batch).__name__}; expected {_CIFAR_FORMAT}.")
    get = lambda k: batch.get(k.encode(), batch.get(k))
    data, labels = get("data"), get("labels")
    if data is None or labels is None:
        raise ValueError(f"{path}: missing b'data' or b'labels'; expected {_CIFAR_FORMAT}.")
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise ValueError(
            f"{path}: b'data' has shape {data.shape} and dtype {data.dtype}; "
            f"expected {_CIFAR_FORMAT}."
        )
    labels = _check_labels(np.asarray(labels), str(path), 10)
    if labels.shape[0] != data.shape[0]:
        raise ValueError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels.")
    return data, labels


def _load_cifar10(data_dir, *, seed, val_fraction, flatten) -> Dataset:
    directory = _find_dir(data_dir, "cifar10", ("cifar-10-batches-py",))

    def read(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = []
        for name in names:
            path = directory / name
            if not path.is_file():
                raise FileNotFoundError(f"{path}: file not found; expected {_CIFAR_FORMAT}.")
            parts.append(_read_cifar_batch(path))
        data = np.concatenate([p[0] for p in parts])
        if data.shape[0] == 0:
            raise ValueError(f"{directory / names[0]}: no images; expected {_CIFAR_FORMAT}.")
        # rows are 1024 red, 1024 green, 1024 blue values, each 32x32 row-major -> NHWC
        x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32) / 255.0
        return (x.reshape(x.shape[0], -1) if flatten else x), np.concatenate([p[1] for p in parts])

    x, y = read([f"data_batch_{i}" for i in range(1, 6)])
    x_test, y_test = read(["test_batch"])
    return _make_dataset(
        x,
        y,
        x_test=x_test,
        y_test=y_test,
        num_classes=10,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=0.0,
        name="cifar10",
    )


_NPZ_FORMAT = (
    "a .npz with arrays x ([n, ...features]) and y (integer class ids [n]), "
    "optionally x_test and y_test"
)


def _load_npz(path: Path, *, seed, val_fraction, test_fraction, flatten) -> Dataset:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found; expected {_NPZ_FORMAT}.")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("not a .npz archive")
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: cannot read ({e}); expected {_NPZ_FORMAT}.") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise ValueError(
            f"{path}: missing array(s) {missing} (found {sorted(arrays)}); expected {_NPZ_FORMAT}."
        )
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise ValueError(f"{path}: x_test and y_test must be given together.")

    def pair(xk: str, yk: str) -> tuple[np.ndarray, np.ndarray]:
        x, y = arrays[xk], arrays[yk]
        if x.ndim < 2:
            raise ValueError(f"{path}: {xk} must have shape [n, ...features], got {x.shape}.")
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise ValueError(f"{path}: {xk} must be numeric, got dtype {x.dtype}.")
        y = _check_labels(y, f"{path}: {yk}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{path}: {xk} has {x.shape[0]} examples but {yk} has {y.shape[0]}; "
                "lengths must match."
            )
        if x.shape[0] == 0:
            raise ValueError(f"{path}: {xk} and {yk} are empty; expected at least one example.")
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise ValueError(f"{path}: {xk} contains NaN or inf.")
        return (x.reshape(x.shape[0], -1) if flatten else x), y

    x, y = pair("x", "y")
    x_test = y_test = None
    num_classes = int(y.max()) + 1
    if "x_test" in arrays:
        x_test, y_test = pair("x_test", "y_test")
        if x_test.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"{path}: x has features of shape {x.shape[1:]} but x_test {x_test.shape[1:]}."
            )
        num_classes = max(num_classes, int(y_test.max()) + 1)
    return _make_dataset(
        x,
        y,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        name=path.stem,
    )


def load(
    name_or_path: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    flatten: bool = True,
) -> Dataset:
    """Load a classification dataset, split into train / validation / test.

    ========================  ================================================================
    ``name_or_path``          source
    ========================  ================================================================
    ``"digits"``              scikit-learn's bundled 8x8 digits (1,797 images, 10 classes),
                              pixels divided by 16; ``[n, 64]``, or ``[n, 8, 8, 1]``.
    ``"mnist"``               IDX files in ``data_dir`` (``train-images-idx3-ubyte``,
                              ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
                              ``t10k-labels-idx1-ubyte``, each plain or ``.gz``), pixels / 255;
                              ``[n, 784]`` or ``[n, 28, 28, 1]``.
    ``"cifar10"``             the python batches ``data_batch_1`` .. ``data_batch_5`` and
                              ``test_batch`` in ``data_dir`` or ``data_dir/cifar-10-batches-py``,
                              pixels / 255; ``[n, 3072]`` or ``[n, 32, 32, 3]`` (NHWC).
    ``"path/to/file.npz"``    arrays ``x`` and ``y`` (optionally ``x_test``, ``y_test``); ``x``
                              is cast to float32 but not rescaled; ``num_classes = max(y) + 1``.
    ========================  ================================================================

    Splits use :func:`split_indices` (stratified, seeded with ``np.random.default_rng(seed)``):
    where the source has its own test set (MNIST, CIFAR-10, a ``.npz`` with ``x_test``) that set is
    the test split, ``test_fraction`` is ignored, and validation (``val_fraction`` of the
    training examples) is carved out of the training set. Otherwise ``test_fraction`` and
    ``val_fraction`` of all examples go to test and validation.

    CIFAR-10 pickles are read with an unpickler that only admits numpy arrays, so a malicious
    pickle cannot run code.

    Args:
      name_or_path: ``"digits"``, ``"mnist"``, ``"cifar10"``, or a path to a ``.npz`` file.
      data_dir: directory holding the MNIST or CIFAR-10 files (required for those two).
      seed: seed of the split; the same seed always gives the same split.
      val_fraction: fraction for the validation split, in ``[0, 1)``.
      test_fraction: fraction for the test split, in ``[0, 1)`` (only without a given test set).
      flatten: ``True`` gives ``x`` of shape ``[n, features]``; ``False`` keeps images as
        ``[n, height, width, channels]`` (a ``.npz`` keeps the stored shape).

    Returns:
      A :class:`Dataset` of numpy arrays (``x`` float32, ``y`` int32).

    Raises:
      FileNotFoundError: a directory or file is missing.
      ValueError: unknown name, corrupt file, or inconsistent data; the message names the file
        and the format expected.

    Example:
      >>> ds = load("digits", seed=0)
      >>> ds.x_train.shape, ds.x_val.shape, ds.x_test.shape, ds.num_classes
      ((1258, 64), (180, 64), (359, 64), 10)
    """
    kw = dict(seed=seed, val_fraction=val_fraction, flatten=flatten)
    key = str(name_or_path)
    if key == "digits":
        return _load_digits(test_fraction=test_fraction, **kw)
    if key == "mnist":
        return _load_mnist(data_dir, **kw)
    if key in ("cifar10", "cifar-10"):
        return _load_cifar10(data_dir, **kw)
    path = Path(name_or_path).expanduser()
    if path.suffix == ".npz":
        return _load_npz(path, test_fraction=test_fraction, **kw)
    raise ValueError(
        f"unknown dataset {key!r}: expected one of {', '.join(repr(n) for n in NAMES)} "
        "or a path to a .npz file with arrays x and y."
    )


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------


def num_batches(n: int, batch_size: int, *, drop_last: bool = False) -> int:
    """Number of batches in an epoch of ``n`` examples: ``ceil(n / b)`` (``floor`` if drop_last).

    Example:
      >>> num_batches(10, 4), num_batches(10, 4, drop_last=True)
      (3, 2)
    """
    n, batch_size = int(n), int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
    if n < 1:
        raise ValueError(f"n (the number of examples) must be at least 1, got {n}.")
    count = n // batch_size if drop_last else -(-n // batch_size)
    if count == 0:
        raise ValueError(f"drop_last=True with n={n} < batch_size={batch_size} leaves no batches.")
    return count


def _as_key(key: Any) -> jax.Array | None:
    if key is None:
        return None
    if isinstance(key, int | np.integer):
        return jax.random.key(int(key))
    return key


@functools.partial(jax.jit, static_argnames=("n", "batch_size", "drop_last"))
def _batch_indices(key, epoch, *, n: int, batch_size: int, drop_last: bool):
    count = num_batches(n, batch_size, drop_last=drop_last)
    if key is None:
        order = jnp.arange(n, dtype=jnp.int32)
    else:
        order = jax.random.permutation(jax.random.fold_in(key, epoch), n).astype(jnp.int32)
    pos = jnp.arange(count * batch_size, dtype=jnp.int32)
    idx = order[pos % n]  # padding wraps around to the start of this epoch's order
    mask = (pos < n).astype(jnp.float32)
    return idx.reshape(count, batch_size), mask.reshape(count, batch_size)


def batch_indices(
    n: int,
    batch_size: int,
    *,
    key: ArrayLike | int | None = None,
    epoch: ArrayLike = 0,
    drop_last: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Example indices of every batch of one epoch, and the padding mask.

    The order is a pure function of ``(key, epoch)``:

    .. math::
        \\pi_e = \\operatorname{permutation}(\\operatorname{fold\\_in}(key, e), n)

    and batch ``i`` holds ``pi_e[i*b : (i+1)*b]``. The ragged last batch is filled up by wrapping
    around to the start of ``pi_e`` (so padding rows are real examples, e.g. harmless for batch
    norm statistics) and marked with ``mask = 0``; with ``drop_last=True`` it is dropped instead.
    ``key=None`` keeps the original order. Works under ``jit`` with ``key`` and ``epoch`` traced
    (``n``, ``batch_size``, ``drop_last`` must be static).

    Args:
      n: number of examples.
      batch_size: examples per batch.
      key: a ``jax.random`` key (or an int seed); ``None`` for no shuffling.
      epoch: epoch number folded into ``key`` (an int or an int32 scalar array).
      drop_last: drop the incomplete last batch instead of padding it.

    Returns:
      ``(indices, mask)``: int32 ``[num_batches, batch_size]`` and float32
      ``[num_batches, batch_size]``; ``mask.sum() == n`` (``num_batches * batch_size`` if
      drop_last).

    Example:
      >>> idx, mask = batch_indices(5, 2, key=jax.random.key(0), epoch=0)
      >>> idx.shape, mask.tolist()
      ((3, 2), [[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    """
    return _batch_indices(
        _as_key(key), epoch, n=int(n), batch_size=int(batch_size), drop_last=bool(drop_last)
    )


def _check_xy(x: ArrayLike, y: ArrayLike) -> tuple[jax.Array, jax.Array]:
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must have the same leading (example) dimension; got x {x.shape} "
            f"and y {y.shape}."
        )
    return x, y


def gather_batch(x: ArrayLike, y: ArrayLike, indices: ArrayLike, mask: ArrayLike) -> Batch:
    """Gather examples ``indices`` (any shape) from ``x`` and ``y`` with ``jnp.take``.

    Inside a ``lax.scan`` over ``batch_indices(...)`` this builds each batch on device without
    materializing a permuted copy of the whole dataset (use it instead of :func:`epoch_batches`
    when the dataset is large).

    Example:
      >>> idx, mask = batch_indices(4, 2)
      >>> gather_batch(jnp.arange(8.0).reshape(4, 2), jnp.arange(4), idx[1], mask[1]).y.tolist()
      [2, 3]
    """
    indices = jnp.asarray(indices)
    return Batch(
        jnp.take(jnp.asarray(x), indices, axis=0),
        jnp.take(jnp.asarray(y), indices, axis=0),
        jnp.asarray(mask, dtype=jnp.float32),
    )


def epoch_batches(
    x: ArrayLike,
    y: ArrayLike,
    batch_size: int,
    *,
    key: ArrayLike | int | None = None,
    epoch: ArrayLike = 0,
    drop_last: bool = False,
) -> Batch:
    """All batches of one epoch, stacked: ready for ``jax.lax.scan``.

    Same order and padding as :func:`batch_indices`; the gather runs in jax (on device).

    Args:
      x: inputs ``[n, ...features]`` (numpy or jax).
      y: labels ``[n]``.
      batch_size: examples per batch.
      key: a ``jax.random`` key (or an int seed); ``None`` for no shuffling.
      epoch: epoch number folded into ``key``.
      drop_last: drop the incomplete last batch instead of padding it.

    Returns:
      ``Batch(x=[num_batches, batch_size, ...features], y=[num_batches, batch_size],
      mask=[num_batches, batch_size])``; unpacks as ``xb, yb, mask``.

    Example:
      >>> b = epoch_batches(np.zeros((10, 3)), np.arange(10), 4, key=jax.random.key(0), epoch=1)
      >>> b.x.shape, b.y.shape, float(b.mask.sum())
      ((3, 4, 3), (3, 4), 10.0)
    """
    x, y = _check_xy(x, y)
    idx, mask = batch_indices(x.shape[0], batch_size, key=key, epoch=epoch, drop_last=drop_last)
    return gather_batch(x, y, idx, mask)


def iterate_batches(
    x: ArrayLike,
    y: ArrayLike,
    batch_size: int,
    *,
    key: ArrayLike | int | None = None,
    epoch: ArrayLike = 0,
    drop_last: bool = False,
) -> Iterator[Batch]:
    """Yield the batches of one epoch one at a time, each ``Batch`` of fixed shape.

    The same batches, in the same order, as :func:`epoch_batches` (the last one padded and
    masked), for a plain Python loop around a jitted step.

    Example:
      >>> [int(b.mask.sum()) for b in iterate_batches(np.zeros((5, 2)), np.zeros(5, int), 2)]
      [2, 2, 1]
    """
    x, y = _check_xy(x, y)
    idx, mask = batch_indices(x.shape[0], batch_size, key=key, epoch=epoch, drop_last=drop_last)
    for i in range(idx.shape[0]):
        yield gather_batch(x, y, idx[i], mask[i])
