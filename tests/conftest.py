"""Shared test settings and fixtures.

DeprecationWarnings are errors (``filterwarnings`` in pyproject.toml), so nothing deprecated in
jax/optax slips in. Keep shapes small and share compiled functions through session fixtures.
"""

import os
import pathlib

# The suite's own persistent compilation cache (under .pytest_cache, never the user's), so a
# second run, and the subprocesses of the CLI tests, load compiled programs instead of compiling
# them again. Set before JAX is imported; the console script in a subprocess sees these variables
# and leaves them alone. A user's own JAX cache settings, or JAXNN_NO_COMPILE_CACHE=1, win.
# A cache hit is the executable the compiler would have produced (JAX keys entries on the
# program, the compile options, the devices and the versions), so it cannot change a result.
from jaxnn._startup import JAX_CACHE_VARIABLES, OFF_VARIABLE  # imports no JAX

if os.environ.get(OFF_VARIABLE, "") in ("", "0") and not any(
        v in os.environ for v in JAX_CACHE_VARIABLES):
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(
        pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax-compile")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import jax  # noqa: E402
import pytest  # noqa: E402


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


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No test reaches the official dataset locations, and none writes to ~/.cache (the data
    tests use it on every test: ``pytestmark = pytest.mark.usefixtures("offline")``)."""
    from _datafiles import DEAD

    from jaxnn import datasets

    monkeypatch.delenv("JAXNN_DATA_URL", raising=False)
    monkeypatch.setenv("JAXNN_DATA", str(tmp_path / "default-cache"))
    for name, source in list(datasets.SOURCES.items()):
        monkeypatch.setitem(datasets.SOURCES, name, source._replace(url=DEAD))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``(base_url, served_dir, requests)`` of a local server of original-format data files."""
    from _datafiles import serve, served_tree

    root = served_tree(tmp_path_factory.mktemp("served"))
    with serve(root) as (url, requests):
        yield url, root, requests


#: The report's own tests; every other test's `jaxnn train` skips writing report.html.
_REPORT_TESTS = ("test_report", "test_cli_report")


@pytest.fixture(autouse=True)
def _reports_only_where_tested(request, monkeypatch):
    """`jaxnn train` writes report.html at the end of every run (about a second of CPU: figures
    and a compiled layer_stats). The report's tests keep it, and check that train writes it;
    the others skip it, which keeps the suite inside its time budget."""
    if request.module.__name__ in _REPORT_TESTS:
        return
    monkeypatch.setattr("jaxnn.cli._train._write_report", lambda run, exp, state: None)
