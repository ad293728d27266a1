"""Shared test settings and fixtures.

DeprecationWarnings are errors (``filterwarnings`` in pyproject.toml), so nothing deprecated in
jax/optax slips in. Keep shapes small and share compiled functions through session fixtures.
"""

import jax
import pytest


@pytest.fixture(scope="session")
def key():
    return jax.random.key(0)
