"""Shared test settings and fixtures.

DeprecationWarnings are errors (``filterwarnings`` in pyproject.toml), so nothing deprecated in
jax/optax slips in. Keep shapes small and share compiled functions through session fixtures.
"""

import jax
import pytest


@pytest.fixture(scope="session")
def key():
    return jax.random.key(0)


def _blobs(*, n: int, classes: int, spread: float, n_train: int, n_val: int, d: int = 6):
    """Gaussian blobs around ``classes`` random centres (scaled by ``spread``) as a Dataset."""
    import numpy as np

    from jaxnn import data

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(classes, d)) * spread
    y = rng.integers(0, classes, size=n).astype(np.int32)
    x = (centers[y] + rng.normal(size=(n, d))).astype(np.float32)
    a, b = n_train, n_train + n_val
    return data.Dataset(x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:], classes, "blobs")


@pytest.fixture(scope="session")
def make_blobs():
    """A small separable classification Dataset, built by keyword (see ``_blobs``)."""
    return _blobs
