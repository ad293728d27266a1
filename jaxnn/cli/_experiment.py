"""``jaxnn experiment init-depth | activations | losses`` and ``jaxnn compare``: the curriculum's
demonstrations (:mod:`jaxnn.experiments`), each writing a JSON table and PNG plots.

``jaxnn compare`` and ``jaxnn experiment activations`` are the same experiment (activations x
initializers, each group a population over seeds) under two names.
"""

from __future__ import annotations

import argparse
import math
import os

from jaxnn.cli import CLIError
from jaxnn.cli._common import (
    add_train_flags,
    build,
    config_from_args,
    new_run_dir,
    replace_config,
    table,
    write_json,
)
from jaxnn.cli._progress import Progress, add_quiet_flag


def add_parser(sub) -> None:
    e = sub.add_parser(
        "experiment", help="the curriculum's experiments: init-depth, activations, losses",
        description="Reproduce the curriculum's demonstrations. Each writes results.json and "
                    "PNG plots into --out and prints a table.")
    ex = e.add_subparsers(dest="experiment", metavar="EXPERIMENT", parser_class=type(e))

    d = ex.add_parser(
        "init-depth", help="activations through a deep net for five (activation, init) pairs",
        description="Unit-Gaussian data through --depth layers of --width units (no bias) for "
                    "tanh + N(0, 0.01), tanh + N(0, 1), tanh + Xavier 1/n (lecun_normal), "
                    "relu + Xavier 1/n and relu + He 2/n (he_normal). Writes results.json "
                    "(per-layer mean, std, saturated and dead fractions) and histograms.png "
                    "(one row per configuration, one panel per layer); prints the per-layer "
                    "std table.")
    d.add_argument("--depth", type=int, default=10, help="layers")
    d.add_argument("--width", type=int, default=500, help="units per layer")
    d.add_argument("--examples", type=int, default=1000, help="input examples")
    d.add_argument("--bins", type=int, default=50, help="histogram bins")
    d.add_argument("--seed", type=int, default=0, help="seeds the inputs and the weights")
    d.add_argument("--out", default=None,
                   help="output directory (default: runs/init-depth-<date>-<time>)")
    add_quiet_flag(d)
    d.set_defaults(func=run_init_depth)

    for parent, name in ((ex, "activations"), (sub, "compare")):
        c = parent.add_parser(
            name, help="activations x initializers, each group a population over seeds",
            description="Train the same MLP on the same data and budget with every activation "
                        "and initializer in --activations x --inits; each group is one "
                        "vmapped population over --seeds seeds. Writes results.json (rows: "
                        "activation, init, mean and spread of the final validation accuracy, "
                        "dead-ReLU fraction, learning curves) and curves.png; prints the "
                        "table. --activation NAME and --init NAME are --activations NAME and "
                        "--inits NAME.")
        c.add_argument("--activations", default=None,
                       help="comma-separated activations (default: {compared_activations})")
        c.add_argument("--inits", default=None,
                       help="comma-separated initializers, e.g. lecun_normal,he_normal "
                            "(default: he_normal)")
        c.add_argument("--seeds", type=int, default=2, help="seeds per group")
        c.add_argument("--out", default=None,
                       help=f"output directory (default: runs/{name}-<date>-<time>)")
        add_train_flags(c, epochs=5)
        _replace_flag(c, "activation", default=None,
                      help="compare this one activation (the same as --activations NAME)")
        _replace_flag(c, "init", default=None,
                      help="compare with this one initializer (the same as --inits NAME)")
        add_quiet_flag(c)
        c.set_defaults(func=run_compare, verb_name=name)

    lo = ex.add_parser(
        "losses", help="multiclass hinge loss vs softmax cross-entropy",
        description="The hinge loss and cross-entropy on the same scores (loss and gradient as "
                    "the correct class's score grows: hinge is exactly 0 once the margins are "
                    "met, cross-entropy always wants more) and in training (the same model, "
                    "data and seeds, once per loss; margins tracked on training examples). "
                    "Writes results.json, scores.png and curves.png. Both losses are trained, "
                    "so there is no --loss; --l2 defaults to 0 here.")
    lo.add_argument("--seeds", type=int, default=2, help="seeds per loss")
    lo.add_argument("--out", default=None,
                    help="output directory (default: runs/losses-<date>-<time>)")
    # A gentle learning rate and no regularization by default, so the difference shows: the
    # hinge model's margins stop growing once met (with L2 they even shrink back), the
    # cross-entropy model's keep growing.
    add_train_flags(lo, epochs=8, lr=0.01)
    _replace_flag(lo, "loss", default=None, help=argparse.SUPPRESS)  # given: refused
    add_quiet_flag(lo)
    lo.set_defaults(func=run_losses, l2=0.0)


def _replace_flag(parser, dest: str, *, default, help: str) -> None:
    """Give the flag with destination ``dest`` (added by ``add_train_flags``) a verb-specific
    meaning: a new default and help line."""
    (action,) = [a for a in parser._actions if a.dest == dest]
    action.default, action.help = default, help


# --------------------------------------------------------------------------- helpers
def line_panels(panels: list[dict], path: str, *, title: str = "", ncols: int | None = None) -> str:
    """Line-plot panels (``ncols`` per row, default all in one row), each ``{"title", "xlabel", "ylabel", "lines": {label: (x, y)},
    "logy": bool, "hline": y or None}``, saved as one PNG."""
    from jaxnn import plots

    plt = plots._pyplot()
    ncols = ncols or len(panels)
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    for ax, p in zip(axes.ravel(), panels, strict=False):
        for i, (label, (xs, ys)) in enumerate(p["lines"].items()):
            ax.plot(xs, ys, marker="." if len(xs) <= 30 else None, label=label,
                    color=f"C{i % 10}", linestyle="-" if i < 10 else "--")
        if p.get("hline") is not None:
            ax.axhline(p["hline"], color="0.5", linewidth=0.8)
        if p.get("logy"):
            ax.set_yscale("log")
        if p.get("xlabel") == "epoch":
            plots._integer_ticks(ax.xaxis)
        ax.set(title=p.get("title", ""), xlabel=p.get("xlabel", ""), ylabel=p.get("ylabel", ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return plots._save(fig, path)


def _names(text: str, flag: str) -> list[str]:
    names = [s.strip() for s in str(text).split(",") if s.strip()]
    if not names:
        raise CLIError(f"{flag} needs at least one name")
    return names


def _one_or_list(args, one: str, many: str, default: str) -> list[str]:
    """The names of ``--MANY a,b`` or ``--ONE a`` (not both), else ``default``."""
    a, b = getattr(args, one), getattr(args, many)
    if a is not None and b is not None:
        raise CLIError(f"give --{many} or --{one}, not both")
    if a is not None:
        return _names(a, f"--{one}")
    return _names(default if b is None else b, f"--{many}")


def _known(names: list[str], valid, flag: str) -> None:
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise CLIError(f"{flag}: unknown {', '.join(map(repr, unknown))}; valid: "
                       f"{', '.join(valid)}")


def _check_positive(**flags) -> None:
    for name, v in flags.items():
        if v < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {v}")


# --------------------------------------------------------------------------- init-depth
def run_init_depth(args) -> int:
    import jax

    from jaxnn import experiments, plots

    _check_positive(depth=args.depth, width=args.width, examples=args.examples, bins=args.bins)
    out = new_run_dir(args.out, "init-depth")
    key = jax.random.key(args.seed)
    configs, hists = [], {}
    with Progress(total=len(experiments.INIT_DEPTH_CONFIGS), desc="init-depth", unit="config",
                  quiet=args.quiet) as progress:
        for cfg in experiments.INIT_DEPTH_CONFIGS:
            stats = experiments.init_depth(cfg.activation, cfg.init, key=key, depth=args.depth,
                                           width=args.width, num_examples=args.examples)
            configs.append({
                "label": cfg.label, "activation": cfg.activation, "init": cfg.init_name,
                "layers": [{"layer": i + 1, "pre_mean": s.pre_mean, "pre_std": s.pre_std,
                            "mean": s.mean, "std": s.std, "saturated": s.saturated,
                            "dead": s.dead} for i, s in enumerate(stats)],
            })
            hists[cfg.label] = [s.activations for s in stats]
            progress.step(f"{progress.count()} {cfg.label} done ({progress.elapsed():.1f} s)",
                          postfix=cfg.label)
            progress.restart_clock()
    os.makedirs(out, exist_ok=True)
    plots.histogram_grid(hists, os.path.join(out, "histograms.png"), bins=args.bins,
                         title=f"activations per layer ({args.width} units, "
                               f"{args.examples} unit-Gaussian inputs)")
    write_json(os.path.join(out, "results.json"), {
        "depth": args.depth, "width": args.width, "num_examples": args.examples,
        "seed": args.seed, "configs": configs})

    rows = [[i + 1, *[c["layers"][i]["std"] for c in configs]] for i in range(args.depth)]
    print("std of the activations per layer:")
    print(table(rows, ["layer", *[c["label"] for c in configs]]))
    print()
    summary = [[c["label"], c["layers"][-1]["mean"], c["layers"][-1]["std"],
                c["layers"][-1]["saturated"], c["layers"][-1]["dead"]] for c in configs]
    print(f"layer {args.depth}:")
    print(table(summary, ["configuration", "mean", "std", "saturated", "dead"]))
    print(f"output directory: {out}")
    return 0


# --------------------------------------------------------------------------- compare
def run_compare(args) -> int:
    import jax

    from jaxnn import activations as activation_registry
    from jaxnn import experiments, initializers

    activations = _one_or_list(args, "activation", "activations",
                               ",".join(experiments.ACTIVATIONS))
    inits = _one_or_list(args, "init", "inits", "he_normal")
    _known(activations, activation_registry.names(), "--activations")
    _known(inits, initializers.names(), "--inits")
    _check_positive(seeds=args.seeds)
    # The train flags are validated with every pair (the groups build their own models).
    cfg = config_from_args(args, activation=activations[0], init=inits[0])
    for a in activations:
        for i in inits:
            replace_config(cfg, activation=a, init=i)
    out = new_run_dir(args.out, args.verb_name)  # created, locked and writable before any data
    exp = build(cfg)  # loads the data
    c = cfg

    def model(activation, init):  # each pair's model: the configured architecture
        from jaxnn.config import build_model

        return build_model(replace_config(cfg, activation=activation, init=init),
                           exp.data.x_train.shape[1:], exp.data.num_classes)

    progress = Progress(total=len(activations) * len(inits), desc=args.verb_name, unit="group",
                        quiet=args.quiet)

    def report(row):  # one unit of work per finished group
        group = f"{row.activation} + {row.init}"
        progress.step(f"{progress.count()} {group} done: val_acc {row.val_acc_mean:.4f} +- "
                      f"{row.val_acc_std:.4f}, dead {row.dead_fraction:.3f} "
                      f"({progress.elapsed():.1f} s)", postfix=group)
        progress.restart_clock()

    with progress:
        rows = experiments.activation_comparison(
            exp.data, key=jax.random.key(c.seed), activations=activations, inits=inits,
            epochs=c.epochs, seeds=args.seeds, learning_rate=c.lr, optimizer=exp.optimizer,
            batch_size=c.batch_size, loss=exp.loss, l2=c.l2, model=model, on_group=report)

    os.makedirs(out, exist_ok=True)
    label = lambda r: r.activation if len(inits) == 1 else f"{r.activation} + {r.init}"
    epochs = lambda ys: list(range(1, len(ys) + 1))
    line_panels([
        {"title": "validation accuracy (mean over seeds)", "xlabel": "epoch",
         "ylabel": "val_acc", "lines": {label(r): (epochs(r.val_acc), r.val_acc) for r in rows}},
        {"title": "training loss", "xlabel": "epoch", "ylabel": c.loss, "logy": True,
         "lines": {label(r): (epochs(r.train_loss), r.train_loss) for r in rows}},
        {"title": "dead hidden units", "xlabel": "epoch", "ylabel": "fraction dead",
         "lines": {label(r): (epochs(r.dead_fraction_curve), r.dead_fraction_curve)
                   for r in rows}},
    ], os.path.join(out, "curves.png"),
        title=f"{c.dataset}: {_arch_label(c)}, {c.optimizer} lr {c.lr:g}, {args.seeds} seeds")
    write_json(os.path.join(out, "results.json"), {
        "config": {**_without(c, "activation", "init"), "activations": activations,
                   "inits": inits, "seeds": args.seeds},
        "rows": [{
            "activation": r.activation, "init": r.init, "val_acc_mean": r.val_acc_mean,
            "val_acc_std": r.val_acc_std, "dead_fraction": r.dead_fraction,
            "val_acc_per_seed": r.val_acc_per_seed, "status": r.status,
            "curves": {"val_acc": r.val_acc, "train_loss": r.train_loss,
                       "dead_fraction": r.dead_fraction_curve},
        } for r in rows],
    })
    ranked = sorted(rows, key=lambda r: -r.val_acc_mean if math.isfinite(r.val_acc_mean) else 1)
    print(table([[r.activation, r.init, r.val_acc_mean, r.val_acc_std, r.dead_fraction,
                  _status(r.status)] for r in ranked],
                ["activation", "init", "val_acc_mean", "val_acc_std", "dead_fraction", "status"]))
    print(f"output directory: {out}")
    return 0


def _arch_label(c) -> str:
    return f"arch {c.arch}" if c.arch is not None else f"hidden {c.hidden}"


def _without(c, *keys) -> dict:
    """The config's fields but ``keys`` (those the experiment varies itself)."""
    return {k: v for k, v in c.to_dict().items() if k not in keys}


def _status(statuses: list[str]) -> str:
    counts = {s: statuses.count(s) for s in dict.fromkeys(statuses)}
    return ", ".join(f"{n} {s}" for s, n in counts.items())


# --------------------------------------------------------------------------- losses
def run_losses(args) -> int:
    import jax
    import numpy as np

    from jaxnn import experiments

    if args.loss is not None:
        raise CLIError("--loss: this experiment trains both multiclass_hinge_loss and "
                       "softmax_cross_entropy; leave --loss out")
    _check_positive(seeds=args.seeds)
    out = new_run_dir(args.out, "losses")  # created, locked and writable before any data
    exp = build(config_from_args(args, loss="softmax_cross_entropy"))
    c = exp.config
    trained = ("multiclass_hinge_loss", "softmax_cross_entropy")  # loss_comparison's default
    progress = Progress(total=len(trained) * c.epochs, desc="losses", unit="epoch",
                        quiet=args.quiet)

    def on_epoch(loss, epoch, metrics):  # one unit of work per epoch of each loss
        progress.step(f"training with {loss}, epoch {epoch}/{c.epochs}: val_acc "
                      f"{float(np.nanmean(metrics['val_acc'])):.4f} "
                      f"({progress.elapsed():.1f} s)", postfix=f"{loss}, epoch {epoch}")
        progress.restart_clock()

    with progress:
        res = experiments.loss_comparison(
            exp.data, key=jax.random.key(c.seed), losses=trained, epochs=c.epochs,
            seeds=args.seeds, model=exp.model, learning_rate=c.lr, optimizer=exp.optimizer,
            batch_size=c.batch_size, l2=c.l2, on_epoch=on_epoch)
    sw = res.sweep

    os.makedirs(out, exist_ok=True)
    others = ", ".join(f"{o:g}" for o in sw.other_scores)
    line_panels([
        {"title": "loss of one example", "xlabel": "correct-class score s_y",
         "ylabel": "loss", "lines": {"hinge": (sw.correct_score, sw.hinge),
                                     "cross-entropy": (sw.correct_score, sw.cross_entropy)},
         "hline": 0.0},
        {"title": "d loss / d s_y", "xlabel": "correct-class score s_y", "ylabel": "gradient",
         "lines": {"hinge": (sw.correct_score, sw.hinge_grad),
                   "cross-entropy": (sw.correct_score, sw.cross_entropy_grad)}, "hline": 0.0},
    ], os.path.join(out, "scores.png"),
        title=f"other scores fixed at ({others}): hinge is satisfied once s_y >= "
              f"{max(sw.other_scores) + 1:g}, cross-entropy never is")
    short = {"multiclass_hinge_loss": "hinge", "softmax_cross_entropy": "cross-entropy"}
    name = lambda r: f"trained with {short.get(r.loss, r.loss)}"
    epochs = lambda ys: list(range(1, len(ys) + 1))
    line_panels([
        {"title": "mean margin s_y - max_k s_k (train)", "xlabel": "epoch", "ylabel": "margin",
         "lines": {name(r): (epochs(r.margin_curve), r.margin_curve) for r in res.rows}},
        {"title": "examples with every margin >= 1", "xlabel": "epoch", "ylabel": "fraction",
         "lines": {name(r): (epochs(r.satisfied_curve), r.satisfied_curve) for r in res.rows}},
        {"title": "validation accuracy", "xlabel": "epoch", "ylabel": "val_acc",
         "lines": {name(r): (epochs(r.val_acc), r.val_acc) for r in res.rows}},
    ], os.path.join(out, "curves.png"),
        title=f"{c.dataset}: {_arch_label(c)} {c.activation}, {args.seeds} seeds")
    write_json(os.path.join(out, "results.json"), {
        "config": {**_without(c, "loss"), "seeds": args.seeds},
        "scores": {"other_scores": list(sw.other_scores), "correct_score": sw.correct_score,
                   "hinge": sw.hinge, "hinge_grad": sw.hinge_grad,
                   "cross_entropy": sw.cross_entropy, "cross_entropy_grad": sw.cross_entropy_grad},
        "rows": [r._asdict() for r in res.rows],
    })

    probe = [(-1.0, "violated"), (max(sw.other_scores) + 0.5, "inside the margin"),
             (max(sw.other_scores) + 3.0, "margin met")]
    sweep_rows = []
    for s, what in probe:
        i = int(np.argmin(np.abs(sw.correct_score - s)))
        sweep_rows.append([f"{sw.correct_score[i]:g} ({what})", float(sw.hinge[i]),
                           float(sw.hinge_grad[i]), float(sw.cross_entropy[i]),
                           float(sw.cross_entropy_grad[i])])
    print(f"one example, other scores ({others}):")
    print(table(sweep_rows, ["s_y", "hinge", "d hinge/d s_y", "cross-entropy", "d CE/d s_y"]))
    print()
    half = lambda ys: ys[len(ys) // 2 - 1] if len(ys) > 1 else ys[0]
    print("training, the same model and data with each loss:")
    print(table([[short.get(r.loss, r.loss), r.val_acc_mean, r.val_acc_std, half(r.margin_curve),
                  r.margin, r.satisfied_curve[-1]] for r in res.rows],
                ["loss", "val_acc_mean", "val_acc_std", "margin (half-way)", "margin (end)",
                 "margins met"]))
    print(f"output directory: {out}")
    return 0
