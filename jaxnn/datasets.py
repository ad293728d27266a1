"""Datasets: download, verify, read and split the data a network trains on.

:func:`load` returns a :class:`Dataset` of numpy arrays (``x`` float32, image pixels scaled to
``[0, 1]``; ``y`` int32 class ids) split into train / validation / test:

* ``"digits"`` — the embedded default, scikit-learn's 1,797 8x8 handwritten digits (no download);
* ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"`` — the original files, downloaded on first use
  into a cache directory (see :func:`cache_dir`) from the official locations or a mirror,
  verified against the published checksums (:data:`SOURCES`) and written atomically;
* a path to a ``.npz`` with arrays ``x`` and ``y`` (optionally ``x_test``, ``y_test``).

Every problem with a file (missing, corrupt, failing its checksum, inconsistent data) raises
``FileNotFoundError`` or ``ValueError`` with one line naming the file and what was expected.
Nothing here prints: a download reports progress through a ``progress`` callback.

Example::

    ds = load("mnist", flatten=False)       # downloads ~11 MB into ~/.cache/jaxnn/mnist once
    ds.x_train.shape                        # (54000, 28, 28, 1)
"""

from __future__ import annotations

import gzip
import importlib
import importlib.util
import io
import math
import os
import pickle
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from jaxnn._download import DownloadError, Progress, fetch, file_digest

__all__ = [
    "CacheStatus",
    "Dataset",
    "DownloadError",
    "NAMES",
    "RemoteFile",
    "SOURCES",
    "Source",
    "cache_dir",
    "cache_status",
    "download",
    "load",
    "read_idx",
    "split_indices",
]

#: Built-in dataset names accepted by :func:`load` (besides a path to a ``.npz`` file).
NAMES = ("digits", "mnist", "fashion_mnist", "cifar10")

#: Largest class id a label may hold: labels become int32.
_MAX_LABEL = 2**31 - 1


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


# --------------------------------------------------------------------------------------------
# Where the files come from
# --------------------------------------------------------------------------------------------


class RemoteFile(NamedTuple):
    """One original file: its ``name`` (on the server, on a mirror and in the cache), its
    published checksum (``algorithm`` ``"sha256"`` or ``"md5"``, hex ``digest``) and its
    ``size`` in bytes when known (a download is cut off beyond it, and its deadline scales
    with it)."""

    name: str
    algorithm: str
    digest: str
    size: int | None = None


class Source(NamedTuple):
    """Where a dataset's files are published: each file is ``url + file.name``."""

    url: str
    files: tuple[RemoteFile, ...]


_IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

#: The official location and published checksum of every downloadable file.
#:
#: * ``mnist`` — the Common Visual Data Foundation's copy of LeCun, Cortes and Burges' files
#:   (the original http://yann.lecun.com/exdb/mnist/ no longer serves them reliably); SHA-256 of
#:   the original ``.gz`` files as TensorFlow Datasets and Bazel rules pin them.
#: * ``fashion_mnist`` — Zalando Research's repository; MD5 as its README publishes them.
#: * ``cifar10`` — Alex Krizhevsky's page https://www.cs.toronto.edu/~kriz/cifar.html, which
#:   publishes the MD5 of the python version.
#:
#: A mirror (``data_url`` / ``$JAXNN_DATA_URL``) serves the same file names under its own URL.
SOURCES: dict[str, Source] = {
    "mnist": Source(
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        tuple(
            RemoteFile(name, "sha256", digest, size)
            for name, digest, size in zip(
                _IDX_NAMES,
                (
                    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                ),
                (9912422, 28881, 1648877, 4542),
                strict=True,
            )
        ),
    ),
    "fashion_mnist": Source(
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        tuple(
            RemoteFile(name, "md5", digest, size)
            for name, digest, size in zip(
                _IDX_NAMES,
                (
                    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                    "25c81989df183df01b3e8a0aad5dffbe",
                    "bef4ecab320f06d8554ea6380940ec79",
                    "bb300cfdad3c16e7a12a480ee83cd310",
                ),
                (26421880, 29515, 4422102, 5148),
                strict=True,
            )
        ),
    ),
    "cifar10": Source(
        "https://www.cs.toronto.edu/~kriz/",
        (RemoteFile("cifar-10-python.tar.gz", "md5", "c58f30108f718f92721af3b95e74349a",
                    170498071),),
    ),
}

#: Other directory layouts (relative to ``data_dir``) where a dataset's files are also found,
#: e.g. torchvision's.
_OTHER_DIRS = {
    "mnist": ("MNIST/raw",),
    "fashion_mnist": ("FashionMNIST/raw", "fashion-mnist"),
    "cifar10": ("cifar-10-batches-py",),
}


def _source(name: str) -> Source:
    if name == "digits":
        raise ValueError("'digits' is embedded (scikit-learn's bundled digits): nothing to download.")
    if name not in SOURCES:
        raise ValueError(
            f"unknown dataset {name!r}: expected one of {', '.join(repr(n) for n in SOURCES)}."
        )
    return SOURCES[name]


def cache_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The directory downloads go to and are looked up in: ``data_dir`` if given, else
    ``$JAXNN_DATA`` if set, else ``~/.cache/jaxnn``. Dataset ``NAME`` lives in ``<dir>/NAME``."""
    chosen = data_dir if data_dir is not None else os.environ.get("JAXNN_DATA") or "~/.cache/jaxnn"
    return Path(chosen).expanduser()


def _base_url(name: str, data_url: str | None) -> str:
    return data_url or os.environ.get("JAXNN_DATA_URL") or _source(name).url


def _join(base: str, file_name: str) -> str:
    return base.rstrip("/") + "/" + file_name


def download(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    data_url: str | None = None,
    progress: Progress | None = None,
) -> tuple[Path, ...]:
    """Make sure the original files of dataset ``name`` are in ``cache_dir(data_dir) / name``.

    Files already there that match their published checksum are kept; every other file is
    fetched from ``data_url`` (else ``$JAXNN_DATA_URL``, else the official location in
    :data:`SOURCES`) as ``<url>/<original file name>``, verified, and renamed into place only
    then. ``urllib`` does the transfer, so ``file://`` URLs work as mirrors too.

    Args:
      name: ``"mnist"``, ``"fashion_mnist"`` or ``"cifar10"``.
      data_dir: the cache directory (see :func:`cache_dir`).
      data_url: base URL of a mirror.
      progress: called as ``progress(file_name, bytes_done, bytes_total_or_None)`` during each
        transfer (e.g. to drive a progress bar).

    Returns:
      The paths of the verified files, in :data:`SOURCES` order.

    Raises:
      DownloadError: (a ``ValueError``) an HTTP error, no network, or a checksum mismatch; one
        line naming the file, the URL and the expected (and actual) digest. Nothing is left in
        the cache: no partial file, and no directory this call created.
    """
    source = _source(name)
    base = _base_url(name, data_url)
    directory = cache_dir(data_dir) / name
    created = _make_dirs(directory)
    paths = []
    try:
        for remote in source.files:
            dest = directory / remote.name
            if not (dest.is_file() and _matches(dest, remote)):
                fetch(_join(base, remote.name), dest, algorithm=remote.algorithm,
                      digest=remote.digest, progress=progress, size=remote.size)
            paths.append(dest)
    except BaseException:
        for d in created:  # deepest first; only empty directories go
            try:
                d.rmdir()
            except OSError:
                break
        raise
    return tuple(paths)


def _make_dirs(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; return those created, deepest first."""
    missing = []
    d = directory
    while not d.exists():
        missing.append(d)
        if d.parent == d:
            break
        d = d.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(
            f"cannot create the data directory {directory} (data_dir, --data-dir, or "
            f"$JAXNN_DATA): {e.strerror or e}."
        ) from None
    return missing


def _matches(path: Path, remote: RemoteFile) -> bool:
    return file_digest(path, remote.algorithm) == remote.digest.lower()


def _verify(path: Path, name: str) -> None:
    """Check a file that carries an original file name against its published checksum."""
    remote = next((f for f in SOURCES[name].files if f.name == path.name), None)
    if remote is None:
        return
    actual = file_digest(path, remote.algorithm)
    if actual != remote.digest.lower():
        raise ValueError(
            f"{path}: checksum mismatch: expected {remote.algorithm} {remote.digest}, got "
            f"{actual}; this is not the original {name} file (download({name!r}) or "
            f"`jaxnn data download {name}` fetches it again)."
        )


class CacheStatus(NamedTuple):
    """What :func:`cache_status` found: the cache ``directory`` of dataset ``name``, the original
    files ``missing`` from it, the ``size`` in bytes of those present, and (with ``verify=True``)
    the files present that fail their checksum (``mismatched``)."""

    name: str
    directory: Path
    missing: tuple[str, ...]
    size: int
    mismatched: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.missing and not self.mismatched


def cache_status(
    name: str, *, data_dir: str | os.PathLike | None = None, verify: bool = False
) -> CacheStatus:
    """Which of dataset ``name``'s original files are in ``cache_dir(data_dir) / name``; with
    ``verify=True`` each present file is also checked against its published checksum."""
    source = _source(name)
    directory = cache_dir(data_dir) / name
    present = [f for f in source.files if (directory / f.name).is_file()]
    missing = tuple(f.name for f in source.files if f not in present)
    size = sum((directory / f.name).stat().st_size for f in present)
    bad = tuple(f.name for f in present if verify and not _matches(directory / f.name, f))
    return CacheStatus(name, directory, missing, size, bad)


# --------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}.")
    return value


def _split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    return n - n_test - n_val, n_val, n_test


def _big_enough(n: int, val_fraction: float, test_fraction: float) -> bool:
    n_train, n_val, n_test = _split_sizes(n, val_fraction, test_fraction)
    return n_train >= 1 and (n_val >= 1 or val_fraction == 0) and (n_test >= 1 or test_fraction == 0)


def _min_examples(val_fraction: float, test_fraction: float) -> int:
    """The smallest ``n`` that leaves every split with a positive fraction non-empty."""
    if val_fraction + test_fraction >= 1.0:
        return math.inf  # never enough; the caller reports the fractions
    # round(n * f) >= 1 needs n * f > 1/2: start just below the bound and walk up.
    n = max([1] + [math.floor(0.5 / f) for f in (val_fraction, test_fraction) if f > 0])
    while not _big_enough(n, val_fraction, test_fraction):
        n += 1
    return n


def _systematic(n: int, count: int) -> np.ndarray:
    """Boolean mask selecting exactly ``count`` of ``n`` positions, spread evenly."""
    j = np.arange(n, dtype=np.int64)
    return ((j + 1) * count) // n > (j * count) // n


def split_indices(
    y: ArrayLike, *, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, seeded train / validation / test split of ``n = len(y)`` examples.

    The sizes are exact: ``n_test = round(n * test_fraction)``, ``n_val = round(n *
    val_fraction)``, the rest is training. A split with a positive fraction is never empty: too
    few examples for that raise ``ValueError`` saying how many are needed. Stratification: the
    examples are shuffled with ``np.random.default_rng(seed)``, grouped by class (keeping the
    shuffled order inside each class), and every ``1/test_fraction``-th position of that grouped
    order goes to test (then the same for validation among the remaining ones), so each split
    holds every class in about its overall proportion. Each returned index array is in the
    shuffled order (not grouped by class).

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
    if not _big_enough(n, val_fraction, test_fraction):
        need = _min_examples(val_fraction, test_fraction)
        if need == math.inf:
            raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} "
                             "leave no training examples.")
        raise ValueError(
            f"too few examples for a train/validation/test split with val_fraction="
            f"{val_fraction} and test_fraction={test_fraction}: needs at least {need} "
            f"examples, got {n}."
        )
    n_train, n_val, n_test = _split_sizes(n, val_fraction, test_fraction)
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
    origin: str,
) -> Dataset:
    """Split ``(x, y)`` (and use ``(x_test, y_test)`` as the test set when given); ``origin``
    (a file or a dataset name) prefixes the message when there are too few examples."""
    try:
        if x_test is None:
            tr, va, te = split_indices(
                y, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction
            )
            x_test, y_test = x[te], y[te]
        else:
            tr, va, _ = split_indices(y, seed=seed, val_fraction=val_fraction, test_fraction=0.0)
    except ValueError as e:
        raise ValueError(f"{origin}: {e}") from None
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
# Labels
# --------------------------------------------------------------------------------------------


def _class_ids(y: np.ndarray, what: str, num_classes: int | None = None) -> np.ndarray:
    """Validate class ids: shape ``[n]``; integer, bool, or whole-number float dtype; values in
    ``[0, 2**31)`` (and ``< num_classes`` if given). Returns them as int64, never wrapped."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{what}: labels must have shape [n], got shape {y.shape}.")
    if y.dtype == np.bool_:
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating):
        whole = np.isfinite(y) & (y == np.round(y))
        if not whole.all():
            bad = y[~whole][0]
            raise ValueError(
                f"{what}: labels must be whole-number class ids, got {float(bad)} (dtype {y.dtype})."
            )
    elif not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{what}: labels must be integer class ids, got dtype {y.dtype}.")
    if y.size:
        lo, hi = y.min(), y.max()
        if lo < 0:
            raise ValueError(f"{what}: labels must be >= 0, got minimum {_num(lo)}.")
        if hi > _MAX_LABEL:
            raise ValueError(
                f"{what}: labels must be class ids below 2**31, got maximum {_num(hi)}."
            )
        if num_classes is not None and hi >= num_classes:
            raise ValueError(f"{what}: labels must be < {num_classes}, got maximum {_num(hi)}.")
    return y.astype(np.int64)


def _ids(classes: np.ndarray, limit: int = 10) -> str:
    """Class ids for a message: ``0, 3, 7`` (the first ``limit``, then ``...``)."""
    shown = ", ".join(str(int(c)) for c in classes[:limit])
    return shown + (f", ... ({len(classes)} in all)" if len(classes) > limit else "")


def _check_classes(origin: str, y_train, *, stacklevel: int = 2, **evaluation) -> None:
    """Refuse training labels with fewer than 2 classes; warn about evaluation classes that
    training never shows.

    With one class a model learns a constant and reports a perfect accuracy and a zero loss on
    test data of that class: a ``ValueError`` naming ``origin`` (a file, a dataset or a split)
    and the classes found. Labels of a class the training split lacks in an ``evaluation`` split
    (``validation=y_val, test=y_test``) can never be predicted right: one :class:`UserWarning`
    line per split naming those classes (``stacklevel`` as for :func:`warnings.warn`, counted
    from the caller of this function).
    """
    train = np.unique(np.asarray(y_train))
    if train.size < 2:
        found = f"only class {_ids(train)}" if train.size else "no labels"
        raise ValueError(f"{origin}: the training labels hold {found}; a classifier needs at "
                         "least 2 classes to learn from.")
    for what, labels in evaluation.items():
        unseen = np.setdiff1d(np.unique(np.asarray(labels)), train)
        if unseen.size:
            warnings.warn(f"{origin}: the {what} labels hold class{'es' if unseen.size > 1 else ''}"
                          f" {_ids(unseen)} that the training labels lack; the model cannot "
                          "learn them.", UserWarning, stacklevel=stacklevel + 1)


def _num(v: Any) -> int | float:
    """A numpy scalar as a Python number for messages (ints stay exact)."""
    return int(v) if np.issubdtype(np.asarray(v).dtype, np.integer) else float(v)


def _num_classes(origin: str, *labels: np.ndarray) -> int:
    """``C = max label + 1``, refused when fewer than half of the ids ``0..C-1`` occur.

    Labels are class ids; ``{0, 1, 2, 5}`` (C = 6, 4 present) is fine, and so are 1-based labels
    ``1..K``. Labels such as ``{0, 10**8}`` are ids of something else: taking them literally would
    build a model with 10**8 outputs, so they are refused with the remedy.
    """
    y = np.concatenate(labels)
    c = int(y.max()) + 1
    k = int(np.unique(y).size)
    if c > 2 * k:
        raise ValueError(
            f"{origin}: the largest label {c - 1} asks for {c} classes but only {k} distinct "
            f"labels occur; labels must be class ids 0..C-1 with at least half of them present "
            "(renumber them, e.g. y = np.unique(y, return_inverse=True)[1])."
        )
    return c


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``(images [1797, 8, 8] pixel counts 0..16, targets)``.

    Read straight from the ``digits.csv.gz`` scikit-learn ships (64 pixel columns, then the
    target), found without importing scikit-learn: the import alone takes longer than a short
    training run. Falls back to ``sklearn.datasets.load_digits`` if the file is not there."""
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(root, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            table = np.loadtxt(path, delimiter=",")
            return table[:, :64].reshape(-1, 8, 8), table[:, 64]
    from sklearn.datasets import load_digits  # lazy: scikit-learn is only needed here

    bunch = load_digits()
    return np.asarray(bunch.images), np.asarray(bunch.target)


def _load_digits(*, seed, val_fraction, test_fraction, flatten) -> Dataset:
    images, target = _digits_arrays()
    x = np.asarray(images, dtype=np.float32) / 16.0  # pixel counts 0..16 -> [0, 1]
    x = x.reshape(-1, 64) if flatten else x[..., None]
    y = np.asarray(target, dtype=np.int64)
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
        origin="digits",
    )


# --------------------------------------------------------------------------------------------
# Finding a downloadable dataset's files
# --------------------------------------------------------------------------------------------


def _probe(name: str, d: Path) -> tuple[dict[str, Path], list[str]] | None:
    """The files of dataset ``name`` in directory ``d``: ``(found, missing)`` by part, or
    ``None`` when ``d`` holds none of them."""
    if name == "cifar10":
        archive = d / SOURCES["cifar10"].files[0].name
        if archive.is_file():
            return {"archive": archive}, []
        for sub in (d / "cifar-10-batches-py", d):
            found = {b: sub / b for b in _CIFAR_BATCHES if (sub / b).is_file()}
            if found:
                return found, [str(sub / b) for b in _CIFAR_BATCHES if b not in found]
        return None
    found, missing = {}, []
    for part in _IDX_PARTS:
        path = next((d / s for s in _idx_spellings(part) if (d / s).is_file()), None)
        if path is None:
            missing.append(str(d / f"{part}.gz"))
        else:
            found[part] = path
    return (found, missing) if found else None


def _locate(name: str, *, data_dir, allow_download: bool, data_url, progress) -> dict[str, Path]:
    """Find dataset ``name``'s files, downloading them into the cache when absent.

    Looked up, in order: ``<root>/<name>`` (the cache), other common layouts under ``<root>``
    (:data:`_OTHER_DIRS`), and ``<root>`` itself, where ``<root> = cache_dir(data_dir)``. The
    first directory holding any of the files must hold all of them, except the cache directory,
    which a download completes.
    """
    root = cache_dir(data_dir)
    cache = root / name
    candidates = [cache, *(root / d for d in _OTHER_DIRS[name]), root]
    for d in candidates:
        probe = _probe(name, d)
        if probe is None:
            continue
        found, missing = probe
        if not missing:
            return found
        if d == cache and allow_download:
            break
        raise FileNotFoundError(
            f"{missing[0]}: file not found (the other {name} files are in {d}); expected "
            f"{_FORMATS[name]}; download({name!r}) or `jaxnn data download {name}` fetches "
            f"them into {cache}."
        )
    if not allow_download:
        files = ", ".join(f.name for f in SOURCES[name].files)
        raise FileNotFoundError(
            f"{name}: not found in {cache} (nor in {root}): expected {files}; get them with "
            f"download({name!r}) or `jaxnn data download {name}`, or set data_dir (--data-dir) "
            "to a directory that holds them."
        )
    download(name, data_dir=data_dir, data_url=data_url, progress=progress)
    return _probe(name, cache)[0]


# --------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST (IDX)
# --------------------------------------------------------------------------------------------

_IDX_PARTS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# IDX dtype codes (http://yann.lecun.com/exdb/mnist/): all multi-byte types are big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_FORMAT = (
    "an IDX file: 2 zero bytes, a dtype code (0x08 = ubyte), the number of dims, "
    "then one big-endian uint32 per dim and the data"
)


def _idx_spellings(part: str) -> tuple[str, ...]:
    """File names a part is found under: the original ``.gz``, uncompressed, and the dotted
    spelling some copies use (``train-images.idx3-ubyte``)."""
    prefix, kind, tail = part.split("-", 2)
    dotted = f"{prefix}-{kind}.{tail}"
    return (f"{part}.gz", part, dotted, f"{dotted}.gz")


def _read_bytes(path: Path, fmt: str) -> bytes:
    """Read a file, gunzipping it if its name ends in ``.gz``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found; expected {fmt}.")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
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


def _load_idx_dataset(name: str, files: dict[str, Path], *, seed, val_fraction, flatten):
    for path in files.values():
        _verify(path, name)

    def part(key: str, rank: int) -> np.ndarray:
        arr = read_idx(files[key])
        if arr.ndim != rank:
            raise ValueError(f"{files[key]}: expected a {rank}-D IDX array, got shape {arr.shape}.")
        return arr

    def images_labels(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        images = part(f"{prefix}-images-idx3-ubyte", 3)
        lpath = files[f"{prefix}-labels-idx1-ubyte"]
        labels = part(f"{prefix}-labels-idx1-ubyte", 1)
        ipath = files[f"{prefix}-images-idx3-ubyte"]
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{ipath}: {images.shape[0]} images but {lpath.name} has {labels.shape[0]} labels."
            )
        if images.shape[0] == 0:
            raise ValueError(f"{ipath}: the file holds no images.")
        x = images.astype(np.float32) / 255.0
        x = x.reshape(x.shape[0], -1) if flatten else x[..., None]
        return x, _class_ids(labels, str(lpath), 10)

    x, y = images_labels("train")
    x_test, y_test = images_labels("t10k")
    if x.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"{files['t10k-images-idx3-ubyte']}: test images have shape {x_test.shape[1:]} but "
            f"the training images {x.shape[1:]}."
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
        name=name,
        origin=str(files["train-images-idx3-ubyte"]),
    )


# --------------------------------------------------------------------------------------------
# CIFAR-10 (python pickles, in the original tar.gz or extracted)
# --------------------------------------------------------------------------------------------

_CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_CIFAR_FORMAT = (
    "a CIFAR-10 python batch: a pickled dict with b'data' (uint8 [n, 3072]) and b'labels' "
    "(as in cifar-10-python.tar.gz)"
)
_FORMATS = {"mnist": _IDX_FORMAT, "fashion_mnist": _IDX_FORMAT, "cifar10": _CIFAR_FORMAT}

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


def _parse_cifar_batch(f: IO[bytes], where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _SafeUnpickler(f, encoding="bytes").load()
    except Exception as e:  # unpickling can raise nearly anything on a corrupt file
        raise ValueError(
            f"{where}: cannot unpickle ({type(e).__name__}: {e}); expected {_CIFAR_FORMAT}."
        ) from None
    if not isinstance(batch, dict):
        raise ValueError(f"{where}: got a {type(batch).__name__}; expected {_CIFAR_FORMAT}.")
    get = lambda k: batch.get(k.encode(), batch.get(k))
    data, labels = get("data"), get("labels")
    if data is None or labels is None:
        raise ValueError(f"{where}: missing b'data' or b'labels'; expected {_CIFAR_FORMAT}.")
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise ValueError(
            f"{where}: b'data' has shape {data.shape} and dtype {data.dtype}; "
            f"expected {_CIFAR_FORMAT}."
        )
    labels = _class_ids(np.asarray(labels), where, 10)
    if labels.shape[0] != data.shape[0]:
        raise ValueError(f"{where}: {data.shape[0]} images but {labels.shape[0]} labels.")
    return data, labels


def _read_cifar_archive(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The six batches straight from ``cifar-10-python.tar.gz`` (nothing is extracted)."""
    out = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if base in _CIFAR_BATCHES and member.isfile() and base not in out:
                    f = tar.extractfile(member)
                    out[base] = _parse_cifar_batch(io.BytesIO(f.read()), f"{path}:{member.name}")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise ValueError(
            f"{path}: not a readable tar.gz archive ({e}); expected cifar-10-python.tar.gz "
            "holding cifar-10-batches-py/data_batch_1..5 and test_batch."
        ) from None
    missing = [b for b in _CIFAR_BATCHES if b not in out]
    if missing:
        raise ValueError(f"{path}: the archive holds no {', '.join(missing)}; expected "
                         "cifar-10-batches-py/data_batch_1..5 and test_batch.")
    return out


def _read_cifar_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        return _parse_cifar_batch(f, str(path))


def _load_cifar10(files: dict[str, Path], *, seed, val_fraction, flatten) -> Dataset:
    if "archive" in files:
        _verify(files["archive"], "cifar10")
        batches = _read_cifar_archive(files["archive"])
        origin = str(files["archive"])
    else:
        batches = {b: _read_cifar_file(p) for b, p in files.items()}
        origin = str(files["data_batch_1"].parent)

    def stack(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        data = np.concatenate([batches[b][0] for b in names])
        if data.shape[0] == 0:
            raise ValueError(f"{origin}: {names[0]} holds no images; expected {_CIFAR_FORMAT}.")
        # rows are 1024 red, 1024 green, 1024 blue values, each 32x32 row-major -> NHWC
        x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32) / 255.0
        x = x.reshape(x.shape[0], -1) if flatten else x
        return x, np.concatenate([batches[b][1] for b in names])

    x, y = stack(_CIFAR_BATCHES[:5])
    x_test, y_test = stack(_CIFAR_BATCHES[5:])
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
        origin=origin,
    )


# --------------------------------------------------------------------------------------------
# .npz
# --------------------------------------------------------------------------------------------

_NPZ_FORMAT = (
    "a .npz with arrays x ([n, ...features], real numbers) and y (class ids [n]), "
    "optionally x_test and y_test"
)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found; expected {_NPZ_FORMAT}.")
    if not zipfile.is_zipfile(path):  # else numpy tries pickle and advises allow_pickle
        raise ValueError(f"{path}: not a valid .npz file (a zip archive of .npy arrays, as "
                         f"np.savez writes); expected {_NPZ_FORMAT}.")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        if "pickle" in str(e):
            raise ValueError(f"{path}: holds Python objects (pickled arrays), which are not "
                             f"loaded; expected {_NPZ_FORMAT}.") from None
        raise ValueError(f"{path}: not a valid .npz file ({_one_line(e)}); expected "
                         f"{_NPZ_FORMAT}.") from None
    except Exception as e:  # noqa: BLE001 -- numpy's readers raise whatever the bytes provoke
        # A corrupt member can fail anywhere in numpy's parsing: OSError, EOFError, BadZipFile,
        # zlib.error, KeyError, but also tokenize.TokenError or SyntaxError from a damaged .npy
        # header, MemoryError from a header claiming a huge shape. All mean the same: this file.
        raise ValueError(f"{path}: not a valid .npz file ({_one_line(e)}); expected "
                         f"{_NPZ_FORMAT}.") from None
    raw = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]
    if raw:  # numpy hands back the bytes of a member that is not a .npy array
        raise ValueError(f"{path}: not a valid .npz file ({raw[0]} is not a .npy array); "
                         f"expected {_NPZ_FORMAT}.")
    return arrays


def _one_line(e: BaseException, limit: int = 200) -> str:
    """An exception as one short line: its type and its message's whitespace collapsed."""
    text = " ".join(str(e).split()) or "no detail"
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(e).__name__}: {text}"


def _npz_pair(path: Path, arrays: dict, xk: str, yk: str, *, flatten: bool):
    x, y = arrays[xk], arrays[yk]
    if x.ndim < 2:
        raise ValueError(f"{path}: {xk} must have shape [n, ...features], got {x.shape}.")
    if np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{path}: {xk} must be real, got dtype {x.dtype}.")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise ValueError(f"{path}: {xk} must be numeric, got dtype {x.dtype}.")
    y = _class_ids(y, f"{path}: {yk}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{path}: {xk} has {x.shape[0]} examples but {yk} has {y.shape[0]}; "
            "lengths must match."
        )
    if x.shape[0] == 0:
        raise ValueError(f"{path}: {xk} and {yk} are empty; expected at least one example.")
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused just below
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: {xk} contains NaN or inf (or values beyond float32's range).")
    return (x.reshape(x.shape[0], -1) if flatten else x), y


def _load_npz(path: Path, *, seed, val_fraction, test_fraction, flatten) -> Dataset:
    arrays = _read_npz(path)
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise ValueError(
            f"{path}: missing array(s) {missing} (found {sorted(arrays)}); expected {_NPZ_FORMAT}."
        )
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise ValueError(f"{path}: x_test and y_test must be given together.")
    x, y = _npz_pair(path, arrays, "x", "y", flatten=flatten)
    x_test = y_test = None
    if "x_test" in arrays:
        x_test, y_test = _npz_pair(path, arrays, "x_test", "y_test", flatten=flatten)
        if x_test.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"{path}: x has features of shape {x.shape[1:]} but x_test {x_test.shape[1:]}."
            )
    num_classes = _num_classes(str(path), y, *(() if y_test is None else (y_test,)))
    ds = _make_dataset(
        x,
        y,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        name=path.stem,
        origin=str(path),
    )
    # stacklevel 3: the warning points at the caller of load().
    _check_classes(str(path), ds.y_train, validation=ds.y_val, test=ds.y_test, stacklevel=3)
    return ds


# --------------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------------


def load(
    name_or_path: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    flatten: bool = True,
    download: bool = True,
    data_url: str | None = None,
    progress: Progress | None = None,
) -> Dataset:
    """Load a classification dataset, split into train / validation / test.

    ========================  ================================================================
    ``name_or_path``          source
    ========================  ================================================================
    ``"digits"``              scikit-learn's bundled 8x8 digits (1,797 images, 10 classes),
                              pixels divided by 16; ``[n, 64]``, or ``[n, 8, 8, 1]``.
    ``"mnist"``,              the four IDX files (``train-images-idx3-ubyte.gz``,
    ``"fashion_mnist"``       ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
                              ``t10k-labels-idx1-ubyte.gz``; also found uncompressed), pixels
                              / 255; ``[n, 784]`` or ``[n, 28, 28, 1]``; 60,000 training and
                              10,000 test images.
    ``"cifar10"``             ``cifar-10-python.tar.gz`` (read without extracting), or its
                              extracted ``data_batch_1`` .. ``data_batch_5`` and
                              ``test_batch``, pixels / 255; ``[n, 3072]`` or ``[n, 32, 32, 3]``
                              (NHWC); 50,000 training and 10,000 test images.
    ``"path/to/file.npz"``    arrays ``x`` and ``y`` (optionally ``x_test``, ``y_test``); ``x``
                              is cast to float32 but not rescaled; ``num_classes = max(y) + 1``.
    ========================  ================================================================

    Where the downloadable datasets are looked for: ``<root>/<name>`` (the cache, where
    :func:`download` writes), the torchvision-style layouts ``<root>/MNIST/raw``,
    ``<root>/FashionMNIST/raw``, ``<root>/cifar-10-batches-py``, and ``<root>`` itself, with
    ``<root> = cache_dir(data_dir)`` (``data_dir``, else ``$JAXNN_DATA``, else
    ``~/.cache/jaxnn``). When none holds them, ``download=True`` fetches them into the cache
    first (see :func:`download`). Files under their original names are checked against the
    published checksums on every load.

    Splits use :func:`split_indices` (stratified, seeded with ``np.random.default_rng(seed)``):
    where the source has its own test set (MNIST, Fashion-MNIST, CIFAR-10, a ``.npz`` with
    ``x_test``) that set is the test split, ``test_fraction`` is ignored, and validation
    (``val_fraction`` of the training examples) is carved out of the training set. Otherwise
    ``test_fraction`` and ``val_fraction`` of all examples go to test and validation. A split
    with a positive fraction is never empty: too few examples is an error saying how many are
    needed.

    Labels of a ``.npz`` must be class ids: integers (or whole-number floats) in ``[0, 2**31)``,
    with ``C = max(y) + 1`` classes of which at least half occur in ``y`` and ``y_test``
    (labels such as ``{0, 10**8}`` are refused rather than building a 10**8-class model);
    ``x`` must be real and finite in float32.

    CIFAR-10 pickles are read with an unpickler that only admits numpy arrays, so a malicious
    pickle cannot run code.

    Args:
      name_or_path: one of :data:`NAMES`, or a path to a ``.npz`` file.
      data_dir: where downloadable datasets are cached and looked for (see above).
      seed: seed of the split; the same seed always gives the same split.
      val_fraction: fraction for the validation split, in ``[0, 1)``.
      test_fraction: fraction for the test split, in ``[0, 1)`` (only without a given test set).
      flatten: ``True`` gives ``x`` of shape ``[n, features]``; ``False`` keeps images as
        ``[n, height, width, channels]`` (a ``.npz`` keeps the stored shape).
      download: fetch a missing downloadable dataset (``False``: raise ``FileNotFoundError``).
      data_url: base URL of a mirror for the download (else ``$JAXNN_DATA_URL``, else the
        official location).
      progress: download progress callback, ``progress(file_name, bytes_done, bytes_total)``.

    Returns:
      A :class:`Dataset` of numpy arrays (``x`` float32, ``y`` int32).

    Raises:
      FileNotFoundError: a file is missing (and not downloaded).
      ValueError: unknown name, corrupt file, checksum mismatch, a failed download
        (:class:`DownloadError`), or inconsistent data; the message names the file and what
        was expected.

    Example:
      >>> ds = load("digits", seed=0)
      >>> ds.x_train.shape, ds.x_val.shape, ds.x_test.shape, ds.num_classes
      ((1258, 64), (180, 64), (359, 64), 10)
    """
    kw = dict(seed=seed, val_fraction=val_fraction, flatten=flatten)
    key = {"cifar-10": "cifar10", "fashion-mnist": "fashion_mnist"}.get(str(name_or_path),
                                                                        str(name_or_path))
    if key == "digits":
        return _load_digits(test_fraction=test_fraction, **kw)
    if key in SOURCES:
        files = _locate(key, data_dir=data_dir, allow_download=download, data_url=data_url,
                        progress=progress)
        if key == "cifar10":
            return _load_cifar10(files, **kw)
        return _load_idx_dataset(key, files, **kw)
    path = Path(name_or_path).expanduser()
    if path.suffix == ".npz":
        return _load_npz(path, test_fraction=test_fraction, **kw)
    raise ValueError(
        f"unknown dataset {key!r}: expected one of {', '.join(repr(n) for n in NAMES)} "
        "or a path to a .npz file with arrays x and y."
    )
