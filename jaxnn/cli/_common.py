"""Flags shared by the verbs that train (train, resume, diagnose, search, compare, ensemble) and
turning them into data, a model and an optimizer. Everything is validated before anything is
written, so a bad flag leaves no run directory behind."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, NamedTuple

from jaxnn.cli import CLIError

#: Flags saved in ``config.json`` and read back by ``jaxnn resume``.
TRAIN_FLAGS = (
    "dataset", "data_dir", "hidden", "activation", "init", "bias_init", "batch_norm", "dropout",
    "loss", "optimizer", "lr", "schedule", "l2", "batch_size", "epochs", "preprocess", "seed",
)


def add_train_flags(p: argparse.ArgumentParser, *, epochs: int = 30, lr: float = 0.05) -> None:
    """Every choice of a training run as a flag (defaults train the digits MLP well)."""
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits",
                   help="digits (embedded, default) | mnist | cifar10 | path to a .npz with x, y")
    g.add_argument("--data-dir", default=None, help="directory holding the mnist/cifar10 files")
    g.add_argument("--preprocess", default="standardize",
                   help="none | center | standardize | pca:K | whiten | zca | mean_image | "
                        "per_channel_mean (default: standardize)")
    g = p.add_argument_group("model")
    g.add_argument("--hidden", default="128,64", help="hidden layer widths, e.g. 128,64")
    g.add_argument("--activation", default="relu", help="relu, leaky_relu, tanh, maxout, ...")
    g.add_argument("--init", default="he_normal", help="weight initializer (he_normal, ...)")
    g.add_argument("--bias-init", type=float, default=0.0, help="initial bias (0.01: positive)")
    g.add_argument("--batch-norm", action="store_true", help="batch norm before each activation")
    g.add_argument("--dropout", type=float, default=0.0, help="drop probability after activations")
    g = p.add_argument_group("training")
    g.add_argument("--loss", default="softmax_cross_entropy",
                   help="softmax_cross_entropy | multiclass_hinge_loss")
    g.add_argument("--optimizer", default="momentum",
                   help="sgd | momentum | nesterov | adagrad | rmsprop | adam | adamw")
    g.add_argument("--lr", type=float, default=lr, help=f"learning rate (default {lr})")
    g.add_argument("--schedule", default="constant",
                   help="constant | step_decay | exponential_decay | cosine | warmup_cosine")
    g.add_argument("--l2", type=float, default=1e-4, help="L2 regularization strength")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--seed", type=int, default=0)


class Setup(NamedTuple):
    """What the training flags resolve to."""

    config: dict
    data: Any  # jaxnn.data.Dataset, preprocessed
    model: Any  # jaxnn.layers.Model
    optimizer: Any
    loss: str
    hidden: list[int]


def parse_hidden(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise CLIError(f"--hidden must be comma-separated integers, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise CLIError(f"--hidden widths must be >= 1, got {text!r}")
    return sizes


def config_from_args(args) -> dict:
    return {k: getattr(args, k) for k in TRAIN_FLAGS}


def _preprocess(data, spec: str):
    from jaxnn import preprocessing

    name, _, arg = str(spec).partition(":")
    if name in ("", "none"):
        return data
    kw = {}
    if arg:
        try:
            kw["k"] = int(arg)
        except ValueError:
            raise CLIError(f"--preprocess {spec!r}: expected NAME or pca:K") from None
    try:
        pre = preprocessing.get(name, **kw)
    except (ValueError, TypeError) as e:
        raise CLIError(f"--preprocess {spec!r}: {e}") from None
    st = pre.fit(data.x_train)  # fitted on the training split only
    return data._replace(**{f"x_{s}": _np(pre.transform(st, getattr(data, f"x_{s}")))
                            for s in ("train", "val", "test")})


def _np(a):
    import numpy as np

    return np.asarray(a)


def build(config: dict, *, steps_per_epoch_hint: bool = True) -> Setup:
    """Load the data and build model and optimizer from a config dict (flags or config.json)."""
    from jaxnn import activations, data, initializers, layers, losses, optim

    c = dict(config)
    hidden = parse_hidden(c["hidden"])
    for flag, lo in (("batch_size", 1), ("epochs", 1)):
        if int(c[flag]) < lo:
            raise CLIError(f"--{flag.replace('_', '-')} must be >= {lo}, got {c[flag]}")
    if not c["lr"] > 0:
        raise CLIError(f"--lr must be positive, got {c['lr']}")
    if c["l2"] < 0:
        raise CLIError(f"--l2 must be >= 0, got {c['l2']}")
    if not 0 <= c["dropout"] < 1:
        raise CLIError(f"--dropout is a drop probability in [0, 1), got {c['dropout']}")
    if c["activation"] != "maxout" and c["activation"] not in activations.names():
        raise CLIError(f"--activation: unknown {c['activation']!r}; valid: "
                       f"{', '.join([*activations.names(), 'maxout'])}")
    if c["loss"] not in ("softmax_cross_entropy", "multiclass_hinge_loss"):
        raise CLIError(f"--loss: expected softmax_cross_entropy or multiclass_hinge_loss, "
                       f"got {c['loss']!r}")
    losses.get(c["loss"])
    initializers.get(c["init"])
    if c["optimizer"] not in optim.names():
        raise CLIError(f"--optimizer: unknown {c['optimizer']!r}; valid: {', '.join(optim.names())}")
    if c["schedule"] not in optim.schedule_names():
        raise CLIError(f"--schedule: unknown {c['schedule']!r}; valid: "
                       f"{', '.join(optim.schedule_names())}")

    ds = data.load(c["dataset"], data_dir=c["data_dir"], seed=c["seed"])
    ds = _preprocess(ds, c["preprocess"])
    n_in = int(ds.x_train.reshape(ds.x_train.shape[0], -1).shape[1])
    if ds.x_train.ndim != 2:
        ds = ds._replace(**{f"x_{s}": getattr(ds, f"x_{s}").reshape(
            getattr(ds, f"x_{s}").shape[0], -1) for s in ("train", "val", "test")})
    model = layers.mlp([n_in, *hidden, ds.num_classes], activation=c["activation"],
                       init=c["init"], bias_init=c["bias_init"], batch_norm=c["batch_norm"],
                       dropout=c["dropout"])
    steps_per_epoch = -(-ds.x_train.shape[0] // min(c["batch_size"], ds.x_train.shape[0]))
    lr = optim.get_schedule(c["schedule"], c["lr"], total_steps=steps_per_epoch * c["epochs"])
    if c["schedule"] == "constant":
        lr = c["lr"]  # a constant stays a number, so a population can replace it per member
    optimizer = optim.get(c["optimizer"], learning_rate=lr)
    return Setup(c, ds, model, optimizer, c["loss"], hidden)


def new_run_dir(out: str | None, verb: str) -> str:
    """The run directory to create: ``out`` or ``runs/<verb>-<time>``; refuses a directory that
    already holds a run."""
    path = out or os.path.join("runs", f"{verb}-{time.strftime('%Y%m%d-%H%M%S')}")
    if os.path.exists(path) and not os.path.isdir(path):
        raise CLIError(f"--out {path!r} exists and is not a directory")
    if os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, f))
        for f in ("config.json", "checkpoints", "results.json", "summary.json", "diagnosis.json")
    ):
        raise CLIError(f"--out {path!r} already holds a run; choose another directory "
                       "(or `jaxnn resume` it)")
    return path


def write_json(path: str, obj) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def table(rows: list[list], headers: list[str]) -> str:
    """A plain fixed-width text table."""
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.4f}"
    return str(v)
