"""jaxnn: a functional JAX library and CLI for training neural networks well.

Pure functions over parameter pytrees, jitted and vmapped. Submodules (each with its own
``__all__``) are imported on first use, so ``import jaxnn`` stays cheap::

    import jaxnn
    jaxnn.activations.relu(x)
    jaxnn.losses.softmax_cross_entropy(logits, labels)
    jaxnn.load_run("runs/exp1").predict(x)     # jaxnn.inference.load_run
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: Public submodules, in the order data flows through them (numerics first, the CLI last).
SUBMODULES = (
    "registry",
    "activations",
    "losses",
    "regularizers",
    "initializers",
    "gradcheck",
    "preprocessing",
    "optim",
    "data",
    "datasets",
    "batching",
    "checkpoint",
    "plots",
    "distributed",
    "layers",
    "arch",
    "models",
    "train",
    "rundir",
    "config",
    "diagnostics",
    "tensorboard",
    "population",
    "search",
    "ensemble",
    "experiments",
    "inference",
    "report",
    "cli",
)

#: Functions of a submodule re-exported here (imported on first use too).
FUNCTIONS = {"load_run": "inference"}

__all__ = ["__version__", *SUBMODULES, *FUNCTIONS]


def __getattr__(name: str):
    if name in SUBMODULES:
        module = importlib.import_module(f"jaxnn.{name}")
        globals()[name] = module
        return module
    if name in FUNCTIONS:
        value = getattr(importlib.import_module(f"jaxnn.{FUNCTIONS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jaxnn' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
