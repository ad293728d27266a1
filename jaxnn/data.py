"""Data: the *sample* step of the training loop, in one namespace.

Two modules do the work; every name is re-exported here, so ``jaxnn.data.load`` and
``jaxnn.data.batch_indices`` are the same functions as in the modules:

* :mod:`jaxnn.datasets` — loading: :func:`load` returns a :class:`Dataset` (digits embedded;
  MNIST, Fashion-MNIST and CIFAR-10 downloaded on first use into a checksum-verified cache by
  :func:`download`; your own ``.npz``), split train / validation / test.
* :mod:`jaxnn.batching` — batching on device: the shuffled order of epoch ``e`` is a pure
  function of ``(key, e)``, fixed-shape batches with a padding ``mask`` (:class:`Batch`) so a
  whole epoch runs in one ``lax.scan``, and random crop / flip augmentation (:func:`augment`).

Example::

    ds = load("digits", seed=0)
    batches = epoch_batches(ds.x_train, ds.y_train, 128, key=jax.random.key(0), epoch=3)
    # batches.x: [num_batches, 128, 64], batches.y / batches.mask: [num_batches, 128]
    state, metrics = jax.lax.scan(train_step, state, batches)
"""

from jaxnn.batching import (
    Augment,
    Batch,
    augment,
    augment_key,
    batch_indices,
    check_augment,
    epoch_batches,
    gather_batch,
    iterate_batches,
    num_batches,
    parse_augment,
)
from jaxnn.datasets import (
    NAMES,
    SOURCES,
    CacheStatus,
    Dataset,
    DownloadError,
    RemoteFile,
    Source,
    cache_dir,
    cache_status,
    download,
    load,
    read_idx,
    split_indices,
)

__all__ = [
    # loading (jaxnn.datasets)
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
    # batching (jaxnn.batching)
    "Augment",
    "Batch",
    "augment",
    "augment_key",
    "batch_indices",
    "check_augment",
    "epoch_batches",
    "gather_batch",
    "iterate_batches",
    "num_batches",
    "parse_augment",
]
