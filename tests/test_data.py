"""Tests for jaxnn.data: one namespace over jaxnn.datasets (loading) and jaxnn.batching (batches),
so code written against ``jaxnn.data.X`` keeps working."""

import numpy as np

from jaxnn import batching, data, datasets


def test_reexports_are_the_modules_objects():
    assert set(data.__all__) == set(datasets.__all__) | set(batching.__all__)
    assert not set(datasets.__all__) & set(batching.__all__)  # one home per name
    for name in datasets.__all__:
        assert getattr(data, name) is getattr(datasets, name), name
    for name in batching.__all__:
        assert getattr(data, name) is getattr(batching, name), name


def test_names_other_modules_rely_on():
    # train, population, distributed and the CLI use these through jaxnn.data
    for name in ("load", "Dataset", "Batch", "batch_indices", "gather_batch", "epoch_batches",
                 "iterate_batches", "split_indices", "NAMES", "augment", "Augment"):
        assert name in data.__all__
    assert data.Dataset._fields == (
        "x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "num_classes", "name"
    )  # fmt: skip
    assert data.Batch._fields == ("x", "y", "mask")
    assert data.NAMES == ("digits", "mnist", "fashion_mnist", "cifar10")


def test_load_then_batch_through_one_namespace(key):
    ds = data.load("digits", seed=0)
    b = data.epoch_batches(ds.x_train, ds.y_train, 100, key=key, epoch=0)
    assert b.x.shape == (13, 100, 64) and float(b.mask.sum()) == ds.x_train.shape[0]
    rows = np.asarray(b.x)[np.asarray(b.mask) == 1]
    assert {r.tobytes() for r in rows} == {r.tobytes() for r in ds.x_train}
