"""``jaxnn search`` and ``jaxnn ensemble``: many models at once, as one population."""

from __future__ import annotations

import math
import os
import time

from jaxnn.cli import CLIError
from jaxnn.cli._common import (
    add_device_flags,
    add_train_flags,
    build,
    config_from_args,
    new_run_dir,
    population_devices,
    table,
    write_json,
)

#: ``--X-range`` flags: (flag dest, hyperparameter, the train flag giving its fixed value).
_RANGES = (
    ("lr_range", "learning_rate", "lr"),
    ("l2_range", "l2", "l2"),
    ("init_scale_range", "init_scale", None),
)
#: Search flags saved in ``results.json`` next to the training flags.
_SEARCH_FLAGS = ("method", "trials", "lr_range", "l2_range", "init_scale_range", "stages",
                 "coarse_epochs", "top_k")
_SHOWN = 12  # table rows printed before eliding


def add_parser(sub) -> None:
    p = sub.add_parser(
        "search", help="hyperparameter search (grid, random, coarse-to-fine) as populations",
        description="Search learning rate and regularization: every trial of a stage is trained "
                    "at once as one vmapped population; a trial whose loss exceeds 3x its "
                    "initial loss is stopped (status diverged). Writes results.json (trials "
                    "sorted by validation accuracy, best, and per-stage trials for "
                    "coarse-to-fine) and search.png (validation accuracy against each "
                    "hyperparameter, log axes).")
    p.add_argument("--method", choices=("grid", "random", "coarse-to-fine"), default="random",
                   help="grid: evenly spaced (log) values, about --trials in all; random: "
                        "--trials log-uniform samples; coarse-to-fine: --stages random stages, "
                        "each narrowed around the previous stage's best (default random)")
    p.add_argument("--trials", type=int, default=16,
                   help="trials (per stage for coarse-to-fine; grid uses the largest full grid "
                        "not above it) (default 16)")
    p.add_argument("--lr-range", default="1e-3,1",
                   help="learning-rate range LOW,HIGH searched log-uniformly, or 'none' to keep "
                        "--lr fixed (default 1e-3,1)")
    p.add_argument("--l2-range", default="1e-6,1e-1",
                   help="L2-strength range LOW,HIGH (log-uniform), or 'none' to keep --l2 fixed "
                        "(default 1e-6,1e-1)")
    p.add_argument("--init-scale-range", default="none",
                   help="range LOW,HIGH for a factor on the initial weights (log-uniform), or "
                        "'none' (default: none, the initializer's own scale)")
    p.add_argument("--stages", type=int, default=2, help="coarse-to-fine stages (default 2)")
    p.add_argument("--coarse-epochs", type=int, default=None,
                   help="epochs of every coarse-to-fine stage but the last (default "
                        "ceil(--epochs / 3))")
    p.add_argument("--top-k", type=int, default=None,
                   help="coarse-to-fine: narrow each range around this many best trials "
                        "(default a quarter of --trials, at least 2)")
    p.add_argument("--out", default=None, help="output directory (default runs/search-<time>)")
    add_train_flags(p, epochs=10)
    add_device_flags(p, multi_process=False)
    p.set_defaults(func=run_search)

    e = sub.add_parser(
        "ensemble", help="train K seeds as one population and average their probabilities",
        description="Train --members copies of the model that differ only in their seed, all "
                    "at once as one population; report each member's test accuracy and that "
                    "of their averaged predicted probabilities. Writes summary.json.")
    e.add_argument("--members", type=int, default=5, help="ensemble size K (default 5)")
    e.add_argument("--out", default=None, help="output directory (default runs/ensemble-<time>)")
    add_train_flags(e, epochs=15)
    add_device_flags(e, multi_process=False)
    e.set_defaults(func=run_ensemble)


# --------------------------------------------------------------------------- search
def _parse_range(text: str, flag: str) -> tuple[float, float] | None:
    if str(text).strip().lower() == "none":
        return None
    parts = [s.strip() for s in str(text).split(",")]
    try:
        lo, hi = (float(s) for s in parts)
    except ValueError:
        raise CLIError(f"--{flag} must be LOW,HIGH (two numbers) or none, got {text!r}") from None
    if not (0 < lo < hi and math.isfinite(hi)):
        raise CLIError(f"--{flag} needs 0 < LOW < HIGH (it is searched log-uniformly), "
                       f"got {text!r}")
    return lo, hi


def _space(args) -> tuple[dict, list[str]]:
    """The search space from the flags and the names it varies."""
    space, varied = {}, []
    for dest, name, fixed in _RANGES:
        rng = _parse_range(getattr(args, dest), dest.replace("_", "-"))
        if rng is not None:
            space[name] = rng
            varied.append(name)
        elif fixed is not None:
            space[name] = float(getattr(args, fixed))
    if not varied:
        raise CLIError("nothing to search: every --*-range is none")
    return space, varied


def _check_search_flags(args) -> None:
    if args.trials < 1:
        raise CLIError(f"--trials must be >= 1, got {args.trials}")
    if args.stages < 1:
        raise CLIError(f"--stages must be >= 1, got {args.stages}")
    if args.coarse_epochs is not None and args.coarse_epochs < 1:
        raise CLIError(f"--coarse-epochs must be >= 1, got {args.coarse_epochs}")
    if args.top_k is not None and not 1 <= args.top_k <= args.trials:
        raise CLIError(f"--top-k must be in [1, --trials={args.trials}], got {args.top_k}")
    if args.schedule != "constant":
        raise CLIError(f"--schedule {args.schedule}: a search sets each trial's learning rate, "
                       "which a schedule would override; use constant")


def _grid_points(trials: int, ranges: int) -> int:
    """Values per range of the largest full grid of at most ``trials`` trials (at least 2)."""
    points = int(trials ** (1 / ranges) + 1e-9)
    if points < 2:
        raise CLIError(f"--method grid needs --trials >= {2 ** ranges} for two values on each of "
                       f"the {ranges} searched ranges, got {trials}")
    return points


def run_search(args) -> int:
    import jax

    from jaxnn import plots, search

    _check_search_flags(args)
    space, varied = _space(args)
    if args.method == "grid":
        _grid_points(args.trials, len(varied))
    config = config_from_args(args)
    setup = build(config)  # validates everything and loads the data before writing anything
    run_dir = new_run_dir(args.out, "search")

    key = jax.random.key(args.seed)
    common = dict(data=setup.data, batch_size=args.batch_size, model=setup.model,
                  loss=setup.loss, optimizer=setup.optimizer)
    start = time.perf_counter()
    if args.method == "coarse-to-fine":
        epochs = (args.epochs if args.coarse_epochs is None else
                  [args.coarse_epochs] * (args.stages - 1) + [args.epochs])
        res = search.coarse_to_fine(space, stages=args.stages, trials=args.trials, epochs=epochs,
                                    key=key, top_k=args.top_k,
                                    devices=population_devices(args, args.trials), **common)
    else:
        if args.method == "grid":
            trials = search.grid(space, points=_grid_points(args.trials, len(varied)))
        else:
            trials = search.random(space, args.trials, key=jax.random.fold_in(key, 1))
        ranked = search.run_trials(trials, epochs=args.epochs, key=key,
                                   devices=population_devices(args, len(trials)), **common)
        res = search.SearchResult(trials=ranked, best=ranked[0], stages=[])
    seconds = time.perf_counter() - start

    out = {
        "method": args.method,
        "config": {**config, **{k: getattr(args, k) for k in _SEARCH_FLAGS}},
        "space": search.to_json(search.normalize(space)),
        "seconds": seconds,
        "trials": search.to_json(res.trials),
        "best": search.to_json(res.best),
    }
    if args.method == "coarse-to-fine":
        out["stages"] = search.to_json(res.stages)
    os.makedirs(run_dir, exist_ok=True)
    write_json(os.path.join(run_dir, "results.json"), out)
    plotted = [t for t in out["trials"] if t["val_acc"] is not None]
    if plotted:
        plots.scatter_by_param(plotted, varied, os.path.join(run_dir, "search.png"),
                               log_params=[n for n in varied if n in search.LOG_SCALE])

    for i, st in enumerate(res.stages):
        ranges = "  ".join(f"{n} [{st.space[n].low:.3g}, {st.space[n].high:.3g}]" for n in varied)
        print(f"stage {i + 1}: {len(st.trials)} trials x {st.epochs} epochs  {ranges}  "
              f"best val_acc {_acc(st.trials[0].val_acc)}")
    print(_trial_table(out["trials"], varied))
    n_div = sum(t["status"] == "diverged" for t in out["trials"])
    best = out["best"]
    print("best: " + "  ".join(f"{n}={best['params'][n]:.4g}" for n in varied)
          + f"  val_acc {_acc(best['val_acc'])}  ({len(out['trials'])} trials, {n_div} diverged, "
          f"{seconds:.1f}s)")
    print(f"results: {os.path.join(run_dir, 'results.json')}")
    return 0


def _acc(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _trial_table(trials: list[dict], varied: list[str]) -> str:
    rows = [[i + 1, *(float(t["params"][n]) for n in varied),
             "-" if t["val_acc"] is None else t["val_acc"],
             "-" if t["val_loss"] is None else t["val_loss"], t["status"]]
            for i, t in enumerate(trials)]
    if len(rows) > _SHOWN:
        rows = rows[:_SHOWN - 2] + [["..."] + [""] * (len(rows[0]) - 1)] + rows[-1:]
    return table(rows, ["rank", *varied, "val_acc", "val_loss", "status"])


# --------------------------------------------------------------------------- ensemble
def run_ensemble(args) -> int:
    import jax
    import numpy as np

    from jaxnn import ensemble, search

    if args.members < 1:
        raise CLIError(f"--members must be >= 1, got {args.members}")
    config = config_from_args(args)
    setup = build(config)
    run_dir = new_run_dir(args.out, "ensemble")

    start = time.perf_counter()
    res = ensemble.ensemble(
        setup.data, members=args.members, epochs=args.epochs, key=jax.random.key(args.seed),
        model=setup.model, loss=setup.loss, optimizer=setup.optimizer,
        batch_size=args.batch_size, learning_rate=args.lr, l2=args.l2,
        devices=population_devices(args, args.members))
    seconds = time.perf_counter() - start
    summary = {
        "members": args.members,
        "member_test_acc": res.member_test_acc,
        "member_test_loss": res.member_test_loss,
        "mean_member_test_acc": np.mean(res.member_test_acc),
        "ensemble_test_acc": res.ensemble_test_acc,
        "ensemble_test_loss": res.ensemble_test_loss,
        "status": res.status,
        "seconds": seconds,
        "config": config,
    }
    os.makedirs(run_dir, exist_ok=True)
    write_json(os.path.join(run_dir, "summary.json"), search.to_json(summary))  # NaN -> null

    rows = [[f"seed {k}", float(a), float(l), s] for k, (a, l, s) in
            enumerate(zip(res.member_test_acc, res.member_test_loss, res.status, strict=True))]
    rows.append(["mean member", float(np.mean(res.member_test_acc)),
                 float(np.mean(res.member_test_loss)), ""])
    rows.append([f"ensemble of {sum(s != 'diverged' for s in res.status)}",
                 float(res.ensemble_test_acc), float(res.ensemble_test_loss), ""])
    print(table(rows, ["model", "test_acc", "test_loss", "status"]))
    gain = res.ensemble_test_acc - float(np.mean(res.member_test_acc))
    print(f"ensemble test accuracy {res.ensemble_test_acc:.4f} ({gain:+.4f} vs the mean member, "
          f"{seconds:.1f}s)")
    print(f"summary: {os.path.join(run_dir, 'summary.json')}")
    return 0
