"""``jaxnn diagnose``: babysit a training configuration (:mod:`jaxnn.diagnostics`).

Runs the initial-loss check, the overfit check on a tiny subset, a short training run tracking
dead ReLUs, per-layer statistics of the trained network, and the plain-words verdicts; writes
``diagnosis.json`` (and ``curves.png``) and prints a report. Its job is to diagnose, so a run that
diverges is a finding, not a failure: the exit status is 0 once the diagnosis is written.
"""

from __future__ import annotations

import os

from jaxnn.cli._common import (
    add_train_flags,
    build,
    config_from_args,
    new_run_dir,
    table,
    write_json,
)
from jaxnn.cli._progress import Progress, add_quiet_flag

#: The units of work of a diagnosis, in order: one progress line each when stderr is not a
#: terminal (and one per training epoch while the training stage runs).
STAGES = ("initial loss check", "overfit check", "training", "layer statistics",
          "curves.png and diagnosis.json")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "diagnose", help="is training healthy? initial loss, overfit check, layer stats, verdicts",
        description="Babysit a training configuration (the train flags, e.g. --lr 1000): check "
                    "the initial loss against log(C), overfit a tiny subset, train a few "
                    "epochs while tracking dead ReLUs, measure every layer (activation mean/"
                    "std, saturated and dead fractions, gradient norm, update/weight ratio) and "
                    "give plain-words verdicts (learning rate too low/high, overfitting, "
                    "underfitting, dead ReLUs). Writes diagnosis.json and curves.png (the "
                    "learning curves, or the reason there are none when the first epoch "
                    "diverged).")
    p.add_argument("--out", default=None,
                   help="output directory (default: runs/diagnose-<date>-<time>)")
    p.add_argument("--overfit-examples", type=int, default=20,
                   help="training examples for the overfit check")
    p.add_argument("--overfit-epochs", type=int, default=200,
                   help="full-batch epochs of the overfit check")
    p.add_argument("--probe-examples", type=int, default=256,
                   help="validation examples for layer statistics and dead units")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files into OUT/tensorboard: per-epoch "
                        "losses, accuracies, update/weight ratios, dead and saturated fractions, "
                        "activation and gradient histograms (needs jaxnn[tensorboard])")
    add_train_flags(p, epochs=5)
    add_quiet_flag(p)
    p.set_defaults(func=run_diagnose)


def _count(n: int, noun: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _written(run_dir) -> None:
    """Tell the run directory that this run has written a file of its own (keep it on error)."""
    mark = getattr(run_dir, "mark_written", None)
    if mark is not None:
        mark()


def require_tensorboard() -> None:
    """A one-line :class:`CLIError` when the optional tensorboardX is not installed."""
    from jaxnn.cli import CLIError
    from jaxnn.tensorboard import require_tensorboardx

    try:
        require_tensorboardx()
    except ModuleNotFoundError as e:
        raise CLIError(f"--tensorboard: {e}") from None


def _check(flag: str, value: int) -> None:
    from jaxnn.cli import CLIError

    if value < 1:
        raise CLIError(f"--{flag} must be >= 1, got {value}")


def run_diagnose(args) -> int:
    import jax

    from jaxnn import diagnostics, plots, train
    from jaxnn.train import Status

    for flag in ("overfit_examples", "overfit_epochs", "probe_examples"):
        _check(flag.replace("_", "-"), getattr(args, flag))
    if args.tensorboard:
        require_tensorboard()
    out = new_run_dir(args.out, "diagnose")  # created, locked and writable before any data
    exp = build(config_from_args(args))
    c, data, model = exp.config, exp.data, exp.model
    key = jax.random.key(c.seed)
    say = lambda msg: print(msg, flush=True)

    say(f"diagnosing: {c.dataset}, hidden {c.hidden} {c.activation} ({c.init}), "
        f"{c.loss}, {c.optimizer} lr {c.lr:g}, l2 {c.l2:g}")
    progress = Progress(total=len(STAGES), desc="diagnose", unit="check", quiet=args.quiet)

    def done(what: str) -> None:  # one stage of STAGES finished
        progress.step(f"{progress.count()} {what} ({progress.elapsed():.1f} s)", postfix=what)
        progress.restart_clock()

    def on_epoch(rec, state) -> None:  # the training stage, epoch by epoch
        progress.note(f"{progress.count()} training, epoch {rec['epoch']}/{c.epochs}: train_loss "
                      f"{rec['train_loss']:.4f}, val_acc {rec['val_acc']:.4f} "
                      f"({rec['seconds']:.1f} s)",
                      postfix=f"training, epoch {rec['epoch']}/{c.epochs}")

    try:
        init = diagnostics.initial_loss_check(model, data, key=key, loss=exp.loss)
        done("initial loss check done")
        overfit = diagnostics.overfit_check(
            model, data, optimizer=exp.optimizer, key=key, loss=exp.loss,
            num_examples=args.overfit_examples, epochs=args.overfit_epochs)
        done("overfit check done")
        x_probe, y_probe = data.x_val[:args.probe_examples], data.y_val[:args.probe_examples]
        if x_probe.shape[0] == 0:
            x_probe = data.x_train[:args.probe_examples]
            y_probe = data.y_train[:args.probe_examples]
        callbacks = [diagnostics.dead_fraction_callback(model, x_probe), on_epoch]
        on_start = None
        if args.tensorboard:
            from jaxnn.tensorboard import TensorBoardCallback

            tb = TensorBoardCallback(out, model, x_probe, y_probe, loss=exp.loss, l2=c.l2,
                                     optimizer=exp.optimizer, activation=c.activation)
            callbacks.insert(1, tb)
            on_start = tb.on_start
            _written(out)
        try:
            history = train.fit(
                model, data, optimizer=exp.optimizer, epochs=c.epochs, key=key,
                loss=exp.loss, batch_size=c.batch_size, l2=c.l2, on_start=on_start,
                callback=lambda rec, state: [cb(rec, state) for cb in callbacks])
        finally:
            if args.tensorboard:
                tb.close()
        done(f"training done: {history.stopped_reason}")
        st = history.state
        layers = diagnostics.layer_stats(
            model, st.params, st.model_state, x_probe, y_probe, loss=exp.loss,
            activation=c.activation, optimizer=exp.optimizer, opt_state=st.opt_state,
            l2=c.l2)
        done("layer statistics done")
        verdict = diagnostics.diagnose(history)

        os.makedirs(out, exist_ok=True)
        plots.learning_curves(history.records, os.path.join(out, "curves.png"),
                              title=f"diagnose: {c.optimizer} lr {c.lr:g}",
                              note=history.stopped_reason if history.diverged else "")
        _written(out)
        write_json(os.path.join(out, "diagnosis.json"), {
            "config": c.to_dict(),
            "initial_loss": init._asdict(),
            "overfit": overfit._asdict(),
            "layers": [{k: v for k, v in s._asdict().items() if k != "activations"}
                       for s in layers],
            "verdicts": verdict.verdicts,
            "reasons": verdict.reasons,
            "training": {"records": history.records, "stopped_reason": history.stopped_reason,
                         "initial_loss": history.initial_loss},
        })
        done("curves.png and diagnosis.json written")
    finally:
        progress.close()

    say("")
    say("1. initial loss (weights scaled by "
        f"{init.init_scale:g}, no regularization): {init.measured:.4f}, expected "
        f"{init.expected:.4f}  [{'ok' if init.ok else 'CHECK'}]")
    say(f"   with L2 {init.l2:g}: {init.with_l2:.4f} ({'raised' if init.with_l2 > init.measured else 'NOT raised'}); "
        f"as initialized: {init.as_initialized:.4f}")
    say(f"2. overfit {overfit.num_examples} examples, {_count(overfit.epochs, 'healthy epoch')}: loss "
        f"{overfit.final_loss:.4g}, accuracy {overfit.train_acc:.3f}  "
        f"[{'ok' if overfit.ok else 'FAILED: a bug in the pipeline, or the learning rate'}]"
        + ("" if overfit.status == Status.OK else f" ({overfit.stopped_reason})"))
    last = history.records[-1] if history.records else None
    say(f"3. training {len(history.records)}/{_count(c.epochs, 'epoch')}: {history.stopped_reason}"
        + (f"; train loss {history.initial_loss:.4g} -> {last['train_loss']:.4g}, train acc "
           f"{last['train_acc']:.3f}, val acc {last['val_acc']:.3f}, dead "
           f"{last['dead_fraction']:.3f}" if last else ""))
    say("4. layers (training mode, after training; update ratio of one step, healthy ~1e-3):")
    say(table([[s.name, s.mean, s.std, s.saturated, s.dead, s.grad_norm, s.update_ratio]
               for s in layers],
              ["layer", "mean", "std", "saturated", "dead", "grad_norm", "update/weight"]))
    say("5. verdicts:")
    if verdict.verdicts:
        for v, r in zip(verdict.verdicts, verdict.reasons, strict=True):
            say(f"   - {v} ({r})")
    else:
        say("   - no problem found")
    say(f"output directory: {out}")
    return 0
