"""``jaxnn train`` and ``jaxnn resume``."""

from __future__ import annotations

import os
import sys

from jaxnn.cli import CLIError
from jaxnn.cli._common import (
    add_device_flags,
    add_train_flags,
    build,
    config_error,
    config_from_args,
    new_run_dir,
    replace_config,
    setup_devices,
    table,
)
from jaxnn.cli._progress import Progress

#: Up to this many epochs the final table shows every epoch; beyond, the first and last few.
FULL_TABLE_EPOCHS = 40


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a network (default: an MLP on the embedded digits)",
                       description="Train a network with mini-batch SGD and write a run "
                                   "directory: config.json, metrics.jsonl, checkpoints/, "
                                   "summary.json, curves.png and report.html (the "
                                   "babysitting page, `jaxnn report`). With --devices N every "
                                   "batch "
                                   "is split over N devices (data parallel); with --coordinator "
                                   "the run spans several processes/hosts.")
    add_train_flags(p)
    add_device_flags(p)
    g = p.add_argument_group("run")
    g.add_argument("--out", default=None,
                   help="run directory (default: runs/train-<date>-<time>, a new one)")
    g.add_argument("--keep-checkpoints", type=int, default=3,
                   help="checkpoints kept, the newest N (default: %(default)s)")
    g.add_argument("--patience", type=int, default=None,
                   help="stop after this many epochs without a better validation loss "
                        "(default: never)")
    g.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files into RUN/tensorboard: per-epoch "
                        "losses, accuracies, learning rate, per-layer update/weight ratios, dead "
                        "and saturated fractions, activation and gradient histograms (needs "
                        "jaxnn[tensorboard])")
    _add_output_flags(g)
    p.set_defaults(func=run_train)

    r = sub.add_parser("resume", help="continue an interrupted `jaxnn train` run",
                       description="Continue a run from its newest checkpoint that restores; "
                                   "the remaining epochs are exactly those of an uninterrupted "
                                   "run.")
    r.add_argument("run_dir", help="the run directory of an interrupted `jaxnn train`")
    _add_output_flags(r)
    add_device_flags(r)
    r.set_defaults(func=run_resume)


def _add_output_flags(g) -> None:
    g.add_argument("--quiet", action="store_true",
                   help="no progress (the final table and errors are still printed)")
    g.add_argument("--no-progress", action="store_true", help="same as --quiet")
    g.add_argument("--no-report", action="store_true",
                   help="do not write RUN/report.html, the babysitting page (`jaxnn report`)")


def run_train(args) -> int:
    if args.tensorboard:
        from jaxnn.cli._diagnose import require_tensorboard

        require_tensorboard()
    cfg = config_from_args(args, keep_checkpoints=args.keep_checkpoints, patience=args.patience,
                           tensorboard=bool(args.tensorboard))
    if args.coordinator is not None and args.out is None:
        raise CLIError("a multi-process run needs --out: the same run directory in every process")
    dev = setup_devices(args, batch_size=cfg.batch_size)  # before any other JAX call
    cfg = replace_config(cfg, devices=dev.count)
    # The run directory is created, locked and checked writable before any data is loaded; it
    # is removed again if anything below fails before the run writes its first file.
    with new_run_dir(args.out, "train", main=dev.main) as run:
        _barrier(dev, "jaxnn: run directory checked")
        exp = build(cfg)
        _check_effective_batch(exp, dev)
        return _fit_and_report(exp, run, resume=False, args=args, dev=dev)


def run_resume(args) -> int:
    from jaxnn import rundir
    from jaxnn.config import ConfigError, RunConfig

    def read_config(run):
        try:
            return RunConfig.load(run.file("config.json"))
        except ConfigError as e:
            raise config_error(e) from None

    try:  # a first look, to know the devices (joining a multi-process run comes first)
        peek = read_config(rundir.RunDir.open(args.run_dir, main=False))
        if os.path.exists(os.path.join(args.run_dir, "summary.json")):
            print(f"{args.run_dir}: already finished (summary.json exists); nothing to do")
            return 0
        # The saved device count unless --devices says otherwise (the numbers do not depend
        # on it); config.json records what this run uses.
        dev = setup_devices(args, batch_size=peek.batch_size,
                            default=(peek.devices or 1) if args.coordinator is None else None)
        run = rundir.RunDir.open(args.run_dir, main=dev.main)  # locked from here on
    except rundir.RunDirError as e:
        raise CLIError(str(e)) from None
    with run:
        cfg = read_config(run)
        if run.exists("summary.json"):  # finished while this process was starting
            print(f"{run.path}: already finished (summary.json exists); nothing to do")
            return 0
        exp = build(cfg, source=run.file("config.json"))
        _check_effective_batch(exp, dev)
        if cfg.devices != dev.count:
            cfg = cfg.replace(devices=dev.count)
            exp = exp._replace(config=cfg)
            run.write_json("config.json", cfg.to_dict())
        return _fit_and_report(exp, run, resume=True, args=args, dev=dev)


def _check_effective_batch(exp, dev) -> None:
    """fit trains with min(batch size, training examples): that must divide by the devices."""
    n = exp.data.x_train.shape[0]
    if exp.config.batch_size > n and n % dev.count:
        raise CLIError(f"--batch-size: the whole training split ({n} examples) is one batch, "
                       f"which must divide by the number of data shards ({dev.count} devices)")


def _barrier(dev, name: str) -> None:
    """Wait for every process (a no-op in a single-process run)."""
    if dev.processes > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


class _Progress(Progress):
    """The CLI's view of training (:class:`jaxnn.cli._progress.Progress`): a tqdm bar on a
    terminal, one flushed line per epoch when stderr is not a terminal (a pipe, a log file,
    nohup, SLURM), nothing with ``--quiet``."""

    def __init__(self, *, total: int, quiet: bool, enabled: bool):
        super().__init__(total=total, desc="train", unit="epoch", quiet=quiet, enabled=enabled,
                         prefix=False)

    def __call__(self, rec: dict, state=None) -> None:
        self.step(f"epoch {rec['epoch']}/{self.total}  train_loss {rec['train_loss']:.4f}  "
                  f"train_acc {rec['train_acc']:.4f}  val_loss {rec['val_loss']:.4f}  "
                  f"val_acc {rec['val_acc']:.4f}  ({rec['seconds']:.3f} s)",
                  postfix={"loss": f"{rec['train_loss']:.4f}", "val_acc": f"{rec['val_acc']:.4f}"})


def _say(message: str) -> None:
    sys.stderr.write(f"jaxnn: {message}\n")
    sys.stderr.flush()


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _fit_and_report(exp, run, *, resume: bool, args, dev) -> int:
    import jax

    from jaxnn import distributed, inference, plots, rundir, train

    c = exp.config
    quiet = getattr(args, "quiet", False) or getattr(args, "no_progress", False)
    progress = _Progress(total=c.epochs, quiet=quiet, enabled=dev.main)
    progress_started = []

    tb = None
    if c.tensorboard and dev.main:
        from jaxnn.tensorboard import TensorBoardCallback

        n = min(256, exp.data.x_val.shape[0])
        tb = TensorBoardCallback(run, exp.model, exp.data.x_val[:n], exp.data.y_val[:n],
                                 loss=exp.loss, l2=c.l2, optimizer=exp.optimizer,
                                 activation=c.activation)

    def on_start(state, initial_loss):
        # The fitted preprocessing, so that loading the run never refits it (jaxnn.inference);
        # a resumed run from before it existed gets it too.
        if not run.exists(inference.PREPROCESS_FILE):
            inference.save_preprocessing(run, exp)
        if tb is not None and not resume:
            tb.on_start(state, initial_loss)

    def on_epoch(rec, state):
        if not progress_started:
            progress.start(rec["epoch"] - 1)
            progress_started.append(True)
        progress(rec)
        if tb is not None:
            tb(rec, state)

    try:
        history = rundir.fit(
            run, exp.model, exp.data, optimizer=exp.optimizer, epochs=c.epochs,
            key=jax.random.key(c.seed), loss=exp.loss, batch_size=c.batch_size,
            l2=c.l2, keep_checkpoints=c.keep_checkpoints, resume=resume,
            patience=c.patience, mesh=dev.mesh, config=None if resume else c.to_dict(),
            augment=c.augment,
            callback=on_epoch, notify=_say if dev.main else None,
            on_start=on_start,
        )
    except rundir.RunDirError as e:
        raise CLIError(str(e)) from None
    finally:
        progress.close()
        if tb is not None:
            tb.close()
    state = history.state
    x_test, y_test = exp.data.x_test, exp.data.y_test
    if dev.mesh is not None:
        x_test, y_test = distributed.replicate((x_test, y_test), dev.mesh)
    test = train.evaluate(exp.model.apply, state.params, state.model_state, x_test, y_test,
                          loss=exp.loss)
    if not dev.main:  # only process 0 writes and prints
        return 1 if history.diverged else 0
    records = history.records
    summary = {
        "test_acc": float(test.accuracy),
        "test_loss": float(test.loss),
        "epochs_done": history.epochs_done,
        "stopped_reason": history.stopped_reason,
        "status": history.status,
        "initial_loss": history.initial_loss,
        "final_train_loss": records[-1]["train_loss"] if records else None,
        "final_val_acc": records[-1]["val_acc"] if records else None,
    }
    if records:
        plots.learning_curves(records, run.file("curves.png"),
                              title=f"{c.dataset}: {c.arch or c.hidden} {c.activation}")
    run.write_json("summary.json", summary)
    report = None if getattr(args, "no_report", False) else _write_report(run, exp, state)

    if records:
        rows = [[r["epoch"], r["train_loss"], r["train_acc"], r["val_loss"], r["val_acc"]]
                for r in records]
        elided = len(rows) > FULL_TABLE_EPOCHS
        shown = rows if not elided else rows[:3] + [["...", "", "", "", ""]] + rows[-4:]
        print(table(shown, ["epoch", "train_loss", "train_acc", "val_loss", "val_acc"]))
        if elided:
            print(f"(every epoch: {run.file('metrics.jsonl')})")
    if history.diverged:
        good = history.epochs_done
        state_name = f"epoch {good}" if good else "the initial parameters"
        print(f"test accuracy {summary['test_acc']:.4f}  test loss {summary['test_loss']:.4f}  "
              f"(of the last good state: {state_name})")
        print(f"run directory: {run.path}")
        if report:
            print(f"report: {report}")
        sys.stderr.write(f"jaxnn {'resume' if resume else 'train'}: {history.stopped_reason}; "
                         f"the last good state (epoch {good}) is kept in "
                         f"{run.file('checkpoints')}\n")
        return 1
    print(f"test accuracy {summary['test_acc']:.4f}  test loss {summary['test_loss']:.4f}  "
          f"({_plural(history.epochs_done, 'epoch')}, {history.stopped_reason})")
    print(f"run directory: {run.path}")
    if report:
        print(f"report: {report}")
    return 0


def _write_report(run, exp, state) -> str | None:
    """RUN/report.html (:mod:`jaxnn.report`, from the model and data in memory); the run is
    complete by then, so a failure is one line on stderr, never the run's failure."""
    from jaxnn import report

    try:
        return report.write_report(run.path, experiment=exp, state=state)
    except Exception as e:  # noqa: BLE001 -- the run's own files are all written
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        _say(f"could not write the report: {msg}")
        return None
