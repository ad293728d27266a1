"""``jaxnn train`` and ``jaxnn resume``."""

from __future__ import annotations

import json
import os
import sys

from jaxnn.cli import CLIError
from jaxnn.cli._common import (
    add_device_flags,
    add_train_flags,
    build,
    config_from_args,
    new_run_dir,
    setup_devices,
    table,
    write_json,
)


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train an MLP (default: the embedded digits data)",
                       description="Train a network with mini-batch SGD and write a run "
                                   "directory: config.json, metrics.jsonl, checkpoints/, "
                                   "summary.json and curves.png. With --devices N every batch "
                                   "is split over N devices (data parallel); with --coordinator "
                                   "the run spans several processes/hosts.")
    add_train_flags(p)
    add_device_flags(p)
    p.add_argument("--out", default=None, help="run directory (default runs/train-<time>)")
    p.add_argument("--keep-checkpoints", type=int, default=3, help="checkpoints kept (last N)")
    p.add_argument("--patience", type=int, default=None,
                   help="stop after this many epochs without a better validation loss")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)

    r = sub.add_parser("resume", help="continue an interrupted `jaxnn train` run",
                       description="Continue a run from its latest checkpoint; the remaining "
                                   "epochs are exactly those of an uninterrupted run.")
    r.add_argument("run_dir", help="the run directory of an interrupted `jaxnn train`")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_flags(r)
    r.set_defaults(func=run_resume)


def run_train(args) -> int:
    config = config_from_args(args)
    config["keep_checkpoints"] = args.keep_checkpoints
    config["patience"] = args.patience
    if args.keep_checkpoints < 1:
        raise CLIError(f"--keep-checkpoints must be >= 1, got {args.keep_checkpoints}")
    if args.coordinator is not None and args.out is None:
        raise CLIError("a multi-process run needs --out: the same run directory in every process")
    dev = setup_devices(args, batch_size=config["batch_size"])  # before any other JAX call
    config["devices"] = dev.count
    setup = build(config)  # validates everything and loads the data before writing anything
    _check_effective_batch(setup, dev)
    run_dir = new_run_dir(args.out, "train")  # every process checks before process 0 writes
    _barrier(dev, "jaxnn: run directory checked")
    if dev.main:
        os.makedirs(run_dir, exist_ok=True)
        write_json(os.path.join(run_dir, "config.json"), config)
    return _fit_and_report(setup, run_dir, resume=False, progress=not args.no_progress, dev=dev)


def run_resume(args) -> int:
    run_dir = args.run_dir
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise CLIError(f"{run_dir!r} is not a jaxnn run directory (no config.json)")
    try:
        with open(path) as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise CLIError(f"{path}: not valid JSON ({e.msg})") from None
    if os.path.exists(os.path.join(run_dir, "summary.json")):
        print(f"{run_dir}: already finished (summary.json exists); nothing to do")
        return 0
    # The saved device count unless --devices says otherwise (the numbers do not depend on it).
    dev = setup_devices(args, batch_size=int(config["batch_size"]),
                        default=config.get("devices", 1) if args.coordinator is None else None)
    config["devices"] = dev.count
    setup = build(config)
    _check_effective_batch(setup, dev)
    return _fit_and_report(setup, run_dir, resume=True, progress=not args.no_progress, dev=dev)


def _check_effective_batch(setup, dev) -> None:
    """fit trains with min(batch size, training examples): that must divide by the devices."""
    n = setup.data.x_train.shape[0]
    if setup.config["batch_size"] > n and n % dev.count:
        raise CLIError(f"--batch-size: the whole training split ({n} examples) is one batch, "
                       f"which must divide by the number of data shards ({dev.count} devices)")


def _barrier(dev, name: str) -> None:
    """Wait for every process (a no-op in a single-process run)."""
    if dev.processes > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _fit_and_report(setup, run_dir: str, *, resume: bool, progress: bool, dev) -> int:
    import jax

    from jaxnn import distributed, plots, train

    c = setup.config
    history = train.fit(
        setup.model, setup.data, optimizer=setup.optimizer, epochs=c["epochs"],
        key=jax.random.key(c["seed"]), loss=setup.loss, batch_size=c["batch_size"], l2=c["l2"],
        out_dir=run_dir, keep_checkpoints=c.get("keep_checkpoints", 3), resume=resume,
        patience=c.get("patience"), progress=progress and sys.stderr.isatty(), mesh=dev.mesh,
    )
    state = history.state
    x_test, y_test = setup.data.x_test, setup.data.y_test
    if dev.mesh is not None:
        x_test, y_test = distributed.replicate((x_test, y_test), dev.mesh)
    test = train.evaluate(setup.model.apply, state.params, state.model_state, x_test, y_test,
                          loss=setup.loss)
    if not dev.main:  # only process 0 writes and prints
        return 1 if history.diverged else 0
    summary = {
        "test_acc": float(test.accuracy),
        "test_loss": float(test.loss),
        "epochs_done": len(history.records),
        "stopped_reason": history.stopped_reason,
        "initial_loss": history.initial_loss,
        "final_train_loss": history.records[-1]["train_loss"] if history.records else None,
        "final_val_acc": history.records[-1]["val_acc"] if history.records else None,
    }
    if history.records:
        plots.learning_curves(history.records, os.path.join(run_dir, "curves.png"),
                              title=f"{c['dataset']}: {c['hidden']} {c['activation']}")
    write_json(os.path.join(run_dir, "summary.json"), summary)

    rows = [[r["epoch"], r["train_loss"], r["train_acc"], r["val_loss"], r["val_acc"]]
            for r in history.records]
    shown = rows if len(rows) <= 8 else rows[:3] + [["...", "", "", "", ""]] + rows[-4:]
    print(table(shown, ["epoch", "train_loss", "train_acc", "val_loss", "val_acc"]))
    print(f"test accuracy {summary['test_acc']:.4f}  test loss {summary['test_loss']:.4f}  "
          f"({summary['epochs_done']} epochs, {history.stopped_reason})")
    print(f"run directory: {run_dir}")
    if history.diverged:
        sys.stderr.write(f"jaxnn train: {history.stopped_reason}; the last good checkpoint is "
                         f"kept in {os.path.join(run_dir, 'checkpoints')}\n")
        return 1
    return 0
