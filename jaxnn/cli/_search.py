"""``jaxnn search`` and ``jaxnn ensemble``: many models at once, as populations.

``jaxnn search`` keeps its trials in an Optuna study (a SQLite file in ``--out`` unless
``--storage`` names another database): running the same command again continues it, and several
processes (or hosts, with a database server) running it share it. Each round asks the study for
``--population`` trials and trains those with the same categorical values as one vmapped
population.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
import time

from jaxnn.cli import CLIError
from jaxnn.cli._common import (
    TRAIN_FLAGS,
    add_device_flags,
    add_train_flags,
    build,
    config_error,
    config_from_args,
    new_run_dir,
    population_devices,
    replace_config,
    table,
    write_json,
)

#: ``--X-range`` flags: (flag dest, hyperparameter, the train flag giving its fixed value).
_RANGES = (
    ("lr_range", "learning_rate", "lr"),
    ("l2_range", "l2", "l2"),
    ("init_scale_range", "init_scale", "init_scale"),
    ("momentum_range", "momentum", "momentum"),
    ("weight_decay_range", "weight_decay", "weight_decay"),
)
#: Per-member hyperparameters and the ``jaxnn train`` flag (config key) of each.
_MEMBER_FLAGS = {"learning_rate": "lr", "l2": "l2", "init_scale": "init_scale",
                 "momentum": "momentum", "weight_decay": "weight_decay", "seed": "seed"}
#: Train flags ``--space`` can make categorical (they change the model or the optimizer).
_CATEGORICAL = ("activation", "optimizer", "hidden", "arch", "init", "bias_init", "batch_norm",
                "dropout", "loss", "schedule")
#: Search flags saved in ``results.json`` next to the training flags.
_SEARCH_FLAGS = ("method", "trials", "population", "pruner", "space", "lr_range", "l2_range",
                 "init_scale_range", "momentum_range", "weight_decay_range", "stages",
                 "coarse_epochs", "top_k", "study_name", "grace_period")
#: Keys of the search's own settings that must match to continue a study (the rest are the
#: training flags). Not among them: --trials (a rerun may raise it), --population, --storage.
_STUDY_KEYS = ("pruner", "space", "lr_range", "l2_range", "init_scale_range", "momentum_range",
               "weight_decay_range", "stages", "coarse_epochs", "top_k")
_STUDY_FILE = "study.db"
_SHOWN = 12  # table rows printed before eliding


def add_parser(sub) -> None:
    p = sub.add_parser(
        "search", help="hyperparameter search (TPE, CMA-ES, random, grid, coarse-to-fine) as "
                       "populations, in an Optuna study",
        description="Search hyperparameters with Optuna's samplers, training each round of "
                    "--population trials at once as vmapped populations (one per combination "
                    "of categorical values). Every epoch's validation loss is reported to each "
                    "trial, so --pruner stops poor trials early; a trial whose loss exceeds 3x "
                    "its initial loss (or turns NaN) stops at once (status diverged). Trials "
                    "live in an Optuna study (--storage, default a SQLite file in --out): the "
                    "same command continues the study up to --trials, and several processes "
                    "running it share it. Writes results.json (every trial with the `jaxnn "
                    "train` command that retrains it) and search.png.")
    g = p.add_argument_group("search")
    g.add_argument("--method", choices=("tpe", "cmaes", "random", "grid", "coarse-to-fine"),
                   default="tpe",
                   help="tpe / cmaes: Optuna's TPE / CMA-ES samplers; random: log-uniform "
                        "samples; grid: evenly spaced (log) values, the largest full grid of "
                        "at most --trials; coarse-to-fine: --stages random stages, each "
                        "narrowed around the previous stage's best")
    g.add_argument("--trials", type=int, default=64,
                   help="finished trials the study should hold (per stage for coarse-to-fine)")
    g.add_argument("--population", type=int, default=16,
                   help="trials asked and trained per round")
    g.add_argument("--pruner", choices=("median", "none"), default="median",
                   help="median: stop a trial whose validation loss is worse than the median "
                        "of completed trials at the same epoch")
    g.add_argument("--space", action="append", default=None, metavar="NAME=A|B,...",
                   help="categorical choices, e.g. activation=relu|tanh|elu,optimizer=momentum|"
                        "adam (any of " + ", ".join(_CATEGORICAL) + "; trials sharing them "
                        "train as one population), or a list of values for lr, l2, "
                        "init_scale, momentum, weight_decay, seed; repeatable")
    g.add_argument("--lr-range", default="1e-3,1",
                   help="learning-rate range LOW,HIGH searched log-uniformly, or 'none' to keep "
                        "--lr fixed")
    g.add_argument("--l2-range", default="1e-6,1e-1",
                   help="L2-strength range LOW,HIGH (log-uniform), or 'none' to keep --l2 fixed")
    g.add_argument("--init-scale-range", default="none",
                   help="range LOW,HIGH for a factor on the initial weights (log-uniform), or "
                        "'none'")
    g.add_argument("--momentum-range", default="none",
                   help="momentum range LOW,HIGH (uniform; optimizers momentum and nesterov), "
                        "or 'none'")
    g.add_argument("--weight-decay-range", default="none",
                   help="weight-decay range LOW,HIGH (log-uniform; optimizer adamw), or 'none'")
    g.add_argument("--stages", type=int, default=2, help="coarse-to-fine stages")
    g.add_argument("--coarse-epochs", type=int, default=None,
                   help="epochs of every coarse-to-fine stage but the last (default "
                        "ceil(--epochs / 3))")
    g.add_argument("--top-k", type=int, default=None,
                   help="coarse-to-fine: narrow each range around this many best trials "
                        "(default a quarter of --trials, at least 2)")
    g.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna storage: sqlite:///path.db, postgresql://USER:PASSWORD@HOST/DB "
                        "(needs jaxnn[postgres]), mysql://... (default sqlite:///OUT/study.db); "
                        "workers on several machines share a study through a database server")
    g.add_argument("--study-name", default="jaxnn-search", help="the study in --storage")
    g.add_argument("--grace-period", type=float, default=60.0, metavar="SECONDS",
                   help="a trial running in another process whose heartbeat is this old counts "
                        "as lost (its process was killed or cut off) and another trial takes its "
                        "place; until then this process waits for it")
    g.add_argument("--out", default=None,
                   help="output directory (default runs/search-<time>); the same --out "
                        "continues its search")
    g.add_argument("--quiet", action="store_true", help="no progress lines")
    g.add_argument("--tensorboard", action="store_true",
                   help="also write every trial's hyperparameters and final metrics into "
                        "OUT/tensorboard for TensorBoard's HParams tab (needs jaxnn[tensorboard])")
    add_train_flags(p, epochs=10)
    add_device_flags(p, multi_process=False)
    p.set_defaults(func=run_search)

    e = sub.add_parser(
        "ensemble", help="train K seeds as one population and average their probabilities",
        description="Train --members copies of the model that differ only in their seed, all "
                    "at once as one population; report each member's test accuracy and that "
                    "of their averaged predicted probabilities. Writes summary.json.")
    e.add_argument("--members", type=int, default=5, help="ensemble size K")
    e.add_argument("--out", default=None, help="output directory (default runs/ensemble-<time>)")
    e.add_argument("--quiet", action="store_true", help="no progress lines")
    add_train_flags(e, epochs=15)
    add_device_flags(e, multi_process=False)
    e.set_defaults(func=run_ensemble)


# --------------------------------------------------------------------------- the space
def _parse_range(text: str, flag: str, *, log: bool) -> tuple[float, float] | None:
    if str(text).strip().lower() == "none":
        return None
    parts = [s.strip() for s in str(text).split(",")]
    try:
        lo, hi = (float(s) for s in parts)
    except ValueError:
        raise CLIError(f"--{flag} must be LOW,HIGH (two numbers) or none, got {text!r}") from None
    if log and not (0 < lo < hi and math.isfinite(hi)):
        raise CLIError(f"--{flag} needs 0 < LOW < HIGH (it is searched log-uniformly), "
                       f"got {text!r}")
    if not log and not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise CLIError(f"--{flag} needs finite LOW < HIGH, got {text!r}")
    return lo, hi


def _space_items(texts: list[str] | None) -> dict[str, list[str]]:
    """``--space`` as ``{name: [value text, ...]}``. A comma separates entries, except inside a
    value (``hidden=128,64|64`` or ``arch=fc:64|fc:128,fc:64``): a piece without ``=`` belongs to
    the entry before it."""
    entries: list[str] = []
    for text in texts or []:
        for piece in str(text).split(","):
            if "=" in piece or not entries:
                entries.append(piece)
            else:
                entries[-1] += "," + piece
    out: dict[str, list[str]] = {}
    for entry in entries:
        name, sep, values = entry.partition("=")
        name = name.strip().replace("-", "_")
        vals = [v.strip() for v in values.split("|")]
        if not sep or not name or not all(vals):
            raise CLIError(f"--space: expected NAME=A|B|..., got {entry!r}")
        if name == "lr":
            name = "learning_rate"
        if name not in _CATEGORICAL and name not in _MEMBER_FLAGS:
            raise CLIError(f"--space: cannot search {name!r}; choose among "
                           f"{', '.join([*_CATEGORICAL, 'lr', *list(_MEMBER_FLAGS)[1:]])}")
        if name in out:
            raise CLIError(f"--space: {name} given twice")
        if len(set(vals)) != len(vals):
            raise CLIError(f"--space {name}: a value is listed twice")
        out[name] = vals
    return out


def _typed(name: str, text: str, types: dict):
    """A ``--space`` value converted like its flag (numbers, true/false, or the text)."""
    if name in _MEMBER_FLAGS:
        try:
            v = int(text) if name == "seed" else float(text)
        except ValueError:
            raise CLIError(f"--space {name}: expected numbers, got {text!r}") from None
        if not math.isfinite(v):
            raise CLIError(f"--space {name}: expected finite numbers, got {text!r}")
        return v
    typ = types.get(name)
    if typ is bool:
        if text.lower() not in ("true", "false"):
            raise CLIError(f"--space {name}: expected true or false, got {text!r}")
        return text.lower() == "true"
    if typ is float:
        try:
            v = float(text)
        except ValueError:
            raise CLIError(f"--space {name}: expected numbers, got {text!r}") from None
        if not math.isfinite(v):
            raise CLIError(f"--space {name}: expected finite numbers, got {text!r}")
        return v
    return text


def _space(args) -> tuple[dict, list[str], dict[str, list], dict[str, str]]:
    """The search space from the flags, the numeric names it varies, the categorical choices,
    and the flag each name came from."""
    from jaxnn import search

    types = {"batch_norm": bool, "bias_init": float, "dropout": float}
    items = _space_items(args.space)
    choices = {k: [_typed(k, v, types) for v in vs] for k, vs in items.items()}
    flags = {k: f"--space {k if k != 'learning_rate' else 'lr'}={'|'.join(vs)}"
             for k, vs in items.items()}
    space, varied = {}, []
    for dest, name, fixed in _RANGES:
        log = name in search.LOG_SCALE
        rng = _parse_range(getattr(args, dest), dest.replace("_", "-"), log=log)
        if rng is not None:
            if name in choices:
                raise CLIError(f"--{dest.replace('_', '-')} and --space {name}: give one")
            space[name] = search.loguniform(*rng) if log else search.uniform(*rng)
            flags[name] = f"--{dest.replace('_', '-')} {getattr(args, dest)}"
            varied.append(name)
        elif name in ("learning_rate", "l2"):
            space[name] = float(getattr(args, fixed))
        elif name == "init_scale" and args.init_scale != 1.0:
            space[name] = float(args.init_scale)
    for name, vals in choices.items():
        space[name] = search.choice(vals)
    if not varied and not any(len(v) > 1 for v in choices.values()):
        raise CLIError("nothing to search: every --*-range is none and --space lists no choice")
    return space, varied, choices, flags


def _check_search_flags(args) -> None:
    if args.trials < 1:
        raise CLIError(f"--trials must be >= 1, got {args.trials}")
    if args.population < 1:
        raise CLIError(f"--population must be >= 1, got {args.population}")
    if args.stages < 1:
        raise CLIError(f"--stages must be >= 1, got {args.stages}")
    if args.coarse_epochs is not None and args.coarse_epochs < 1:
        raise CLIError(f"--coarse-epochs must be >= 1, got {args.coarse_epochs}")
    if args.top_k is not None and not 1 <= args.top_k <= args.trials:
        raise CLIError(f"--top-k must be in [1, --trials={args.trials}], got {args.top_k}")
    if getattr(args, "augment", None):
        raise CLIError("--augment: search trains populations, which do not augment yet")
    if not (args.grace_period > 0 and math.isfinite(args.grace_period)):
        raise CLIError(f"--grace-period must be a positive number of seconds, got "
                       f"{args.grace_period}")


def _grid_points(trials: int, ranges: int, combinations: int) -> int | None:
    """Values per range of the largest full grid of at most ``trials`` trials (at least 2)."""
    if ranges == 0:
        return None
    points = int((trials / combinations) ** (1 / ranges) + 1e-9)
    if points < 2:
        raise CLIError(f"--method grid needs --trials >= {combinations * 2 ** ranges} for two "
                       f"values on each of the {ranges} searched ranges"
                       + (f" and the {combinations} categorical combinations"
                          if combinations > 1 else "") + f", got {trials}")
    return points


# --------------------------------------------------------------------------- the output directory
#: What a search writes in its directory (the rest of a marked directory is jaxnn's bookkeeping).
_SEARCH_FILES = ("results.json", "search.png", _STUDY_FILE, f"{_STUDY_FILE}-wal",
                 f"{_STUDY_FILE}-shm", f"{_STUDY_FILE}-journal", "tensorboard")


def _out_state(out: str | None) -> str:
    """What ``--out`` is, checked before anything is created: ``"new"`` (missing or empty, or
    ``None``: a fresh ``runs/search-<time>``), ``"search"`` (a jaxnn search directory, marked
    ``.jaxnn-run``: the search continues there), ``"legacy"`` (a search written before
    markers: ``results.json`` of a search, nothing but a search's files). Anything else is
    refused (:mod:`jaxnn.rundir`'s rules: a directory of another verb, a directory inside
    another run, one holding files jaxnn did not write, or a symbolic link)."""
    from jaxnn import rundir

    if out is None:
        return "new"
    if os.path.lexists(out) and not os.path.isdir(out):
        raise CLIError(f"--out {out!r} exists and is not a directory")
    inside = rundir.enclosing_run(out)
    if inside is not None:
        raise CLIError(f"--out: {out} is inside the run directory {inside}; choose a directory "
                       "outside it (jaxnn manages what is in there)")
    if not os.path.isdir(out):
        return "new"
    try:
        entries = os.listdir(out)
        marker = rundir.read_marker(out)
    except OSError as e:
        raise CLIError(f"--out {out!r}: cannot read it ({e.strerror or e})") from None
    except rundir.RunDirError as e:
        raise CLIError(f"--out: {e}") from None
    if not entries:
        return "new"
    links = [e for e in entries if os.path.islink(os.path.join(out, e))]
    if links:  # rundir refuses these too (its helper is private): never follow one
        raise CLIError(f"--out: {os.path.join(out, links[0])} is a symbolic link; jaxnn does "
                       "not follow symbolic links in a run directory (remove it)")
    if marker is not None:
        if marker["verb"] != "search":
            raise CLIError(f"--out {out!r} holds a jaxnn {marker['verb']} run, not a search; "
                           "choose another directory")
        return "search"
    if _legacy_search(out, entries):
        return "legacy"
    if any(os.path.lexists(os.path.join(out, f)) for f in rundir.RUN_FILES):
        raise CLIError(f"--out {out!r} already holds a run that is not a search; choose another "
                       "directory")
    if _marked_soon(out):  # another worker, started at the same moment, is creating it
        return "search"
    raise CLIError(f"--out {out!r} exists, is not empty and is not a jaxnn search directory; "
                   "choose a new or empty directory (jaxnn does not write over files it did not "
                   "write)")


def _creation_file(name: str) -> bool:
    """What a directory holds while :class:`jaxnn.rundir.RunDir` creates it: its lock, a probe,
    the marker or the marker's temporary file (written, then renamed)."""
    from jaxnn import rundir

    return (name in (".lock", rundir.MARKER) or name.startswith(".probe-")
            or name.startswith(rundir.MARKER + ".tmp-"))


def _marked_soon(out: str, seconds: float = 5.0) -> bool:
    """Whether ``out``, holding nothing but what a directory being created holds
    (:func:`_creation_file`: another process is creating it this very moment, between its lock
    and its marker), gets its search marker within ``seconds``."""
    from jaxnn import rundir

    deadline = time.monotonic() + seconds
    while True:
        try:
            entries = os.listdir(out)
            marker = rundir.read_marker(out)
        except (OSError, rundir.RunDirError):
            return False
        if marker is not None:
            return marker["verb"] == "search"
        if not entries or not all(_creation_file(e) for e in entries):
            return False
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _legacy_search(out: str, entries: list[str]) -> bool:
    """A search directory from before run-directory markers: its ``results.json`` is a
    search's, and it holds nothing but a search's files."""
    from jaxnn import rundir

    if "results.json" not in entries:
        return False
    ours = set(_SEARCH_FILES) | {".lock"}
    if any(e not in ours and not e.startswith(".probe-") for e in entries):
        return False
    try:
        res = rundir.read_json(os.path.join(out, "results.json"))
    except rundir.RunDirError:
        return False
    return {"method", "study", "trials"} <= set(res) and isinstance(res["trials"], list)


def _check_results(out: str, storage: str | None, study_name: str) -> None:
    """Refuse to continue in ``out`` a search whose ``results.json`` came from another study
    (another ``--storage`` or ``--study-name``): its results would be replaced by another
    search's. ``storage`` is the masked ``--storage`` (``None``: the study in ``out``)."""
    from jaxnn import rundir

    path = os.path.join(out, "results.json")
    if not os.path.isfile(path):
        return
    try:
        study = rundir.read_json(path).get("study") or {}
    except rundir.RunDirError:
        return
    old_storage, old_name = study.get("storage"), study.get("name")
    if not isinstance(old_storage, str):
        return
    # The study in --out: recorded as such, or (written before that was recorded) a study.db
    # URL, wherever the directory was then.
    old_own = study.get("in_out", old_storage.startswith("sqlite:")
                        and old_storage.endswith("/" + _STUDY_FILE))
    same = (old_own and storage is None) or (not old_own and old_storage == storage)
    if not same or old_name != study_name:
        where = ("--storage " + old_storage) if not old_own else "its own study.db"
        raise CLIError(f"--out {out!r} holds the results of study {old_name!r} in {where}; "
                       f"continue it with the same --storage and --study-name, or choose "
                       "another --out")


def _make_search_dir(out: str | None, state: str) -> str:
    """Create (``"new"``) or mark (``"legacy"``) the search directory; a ``"search"`` one is
    used as it is. Several processes started at once with the same new ``--out`` share it:
    one creates and marks it, the others find it marked."""
    from jaxnn import __version__, rundir

    if state == "search":
        return out
    if state == "legacy":
        rundir.write_json_atomic(os.path.join(out, rundir.MARKER),
                                 {"verb": "search", "version": __version__})
        return out
    for attempt in range(50):
        try:
            run = rundir.RunDir.create(out, prefix="search", verb="search")
        except rundir.RunDirError as e:
            if out is not None and attempt < 49 and _being_created(out, e):
                time.sleep(0.1)  # another worker is creating it this very moment
                if _out_state(out) == "search":
                    return out
                continue
            raise CLIError(f"--out: {e}" if out is not None else str(e)) from None
        run.close()  # no lock held while searching: several processes may share the directory
        return run.path
    raise AssertionError("unreachable")


def _being_created(out: str, error: Exception) -> bool:
    """Whether ``out`` looks like a search directory another process is creating right now
    (locked, or holding nothing but a lock, a probe and a marker)."""
    from jaxnn import rundir

    if isinstance(error, rundir.RunInUseError):
        return True
    try:
        entries = os.listdir(out)
    except OSError:
        return False
    return bool(entries) and all(_creation_file(e) for e in entries)


def _open_storage(url: str, *, flag: str = "--storage"):
    """The Optuna storage at ``url``, or a :class:`CLIError` naming it (its password
    masked)."""
    import optuna

    from jaxnn import search

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return search.open_storage(url)
    except search.StorageError as e:
        raise CLIError(f"{flag} {e}") from None


# --------------------------------------------------------------------------- retraining
def train_command(config, *, epochs: int) -> str:
    """The ``jaxnn train`` line that retrains one trial from its :class:`jaxnn.config.RunConfig`
    (:meth:`jaxnn.search.SearchTask.trial_config`): every training flag spelled out, floats
    exactly, ``--epochs`` the trial's budget."""
    argv = ["jaxnn", "train"]
    for k in TRAIN_FLAGS:
        v = int(epochs) if k == "epochs" else getattr(config, k)
        if v is None or v is False:
            continue
        flag = "--" + k.replace("_", "-")
        argv += [flag] if v is True else [flag, repr(v) if isinstance(v, float) else str(v)]
    return shlex.join(argv)


# --------------------------------------------------------------------------- search
def run_search(args) -> int:
    import optuna
    import sqlalchemy

    from jaxnn import plots, search
    from jaxnn.config import ConfigError

    _check_search_flags(args)
    if args.tensorboard:
        from jaxnn.cli._diagnose import require_tensorboard

        require_tensorboard()
    space, varied, choices, flags = _space(args)
    combos = math.prod(len(v) for v in choices.values()) if choices else 1
    config = config_from_args(args)
    settings = search.SearchSettings(
        method=args.method, trials=args.trials, population=args.population, pruner=args.pruner,
        grid_points=(_grid_points(args.trials, len(varied), combos) if args.method == "grid"
                     else None),
        stages=args.stages, coarse_epochs=args.coarse_epochs, top_k=args.top_k,
        grace_period=args.grace_period)
    search_config = {**{k: getattr(config, k) for k in TRAIN_FLAGS},
                     **{k: getattr(args, k) for k in _SEARCH_FLAGS}}
    try:
        task = search.SearchTask.from_config(
            config, space, devices=_devices(args, args.population), build=build,
            metadata={k: v for k, v in search_config.items()
                      if (k in TRAIN_FLAGS and k not in ("data_dir", "data_url"))
                      or k in _STUDY_KEYS})
        # Before writing anything: every categorical value makes a valid config
        # (task.config_for: the base config with that value) that builds (loads its data, fits
        # the model to it); a search without categorical values builds its one group.
        for name, vals in choices.items():
            if name not in _MEMBER_FLAGS:
                for v in vals:
                    task.group({name: v})
        if not any(name not in _MEMBER_FLAGS for name in choices):
            task.group({})
    except ConfigError as e:
        raise config_error(e) from None
    except ValueError as e:  # a range the optimizer refuses: name the flag that gave it
        msg = str(e)
        for name, flag in flags.items():
            if msg.startswith(f"space[{name!r}]: "):
                raise CLIError(f"{flag}: {msg[len(f'space[{name!r}]: '):]}") from None
        raise
    spec = task.space
    # Nothing is created before every check passed: the flags, the output directory, the
    # storage (it opens; the study there, if any, is this search) — then the directory.
    state = _out_state(args.out)
    storage, shown_storage, study_storage = args.storage, None, None
    if state != "new":
        _check_results(args.out, storage and search.mask_url(storage), args.study_name)
    if storage:
        shown_storage = search.mask_url(storage)
        study_storage = _open_storage(storage)
        _check_study(task, settings, study_storage, args.study_name, f"--storage {shown_storage}")
    elif state != "new" and os.path.isfile(os.path.join(args.out, _STUDY_FILE)):
        url = f"sqlite:///{os.path.abspath(os.path.join(args.out, _STUDY_FILE))}"
        study_storage = _open_storage(url, flag="--out")
        _check_study(task, settings, study_storage, args.study_name, f"--out {args.out}")
    out = _make_search_dir(args.out, state)
    if not storage:
        storage = shown_storage = f"sqlite:///{os.path.abspath(os.path.join(out, _STUDY_FILE))}"
    if study_storage is None:
        study_storage = _open_storage(storage, flag="--out")
    stage_epochs = settings.stage_epochs(task.epochs)

    def command(trial) -> str:
        return train_command(task.trial_config(trial.params),
                             epochs=stage_epochs[trial.stage or 0])

    def progress(r) -> None:
        if args.quiet:
            return
        best = ("-" if r.best is None else
                f"val_loss {r.best.val_loss:.4f} val_acc {_acc(r.best.val_acc)} "
                f"(trial {r.best.number})")
        print(f"round {r.number}: {r.finished}/{r.total} trials  best {best}  alive "
              f"{r.alive}/{r.members}  ({r.groups} population{'s' if r.groups != 1 else ''}, "
              f"{r.seconds:.1f}s)", flush=True)

    def waiting(n) -> None:
        if not args.quiet:
            print(f"waiting for {n} trial{'s' if n != 1 else ''} running in other processes "
                  f"(one whose process stopped is replaced after --grace-period "
                  f"{args.grace_period:g}s)", flush=True)

    start = time.perf_counter()
    try:
        res = search.optimize(task, settings, storage=study_storage, study_name=args.study_name,
                              trial_attrs=lambda t: {"command": command(t)}, on_round=progress,
                              on_wait=waiting)
    except search.StorageError as e:
        raise CLIError(f"--storage {e}") from None
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as e:
        raise CLIError(f"--storage {shown_storage}: "
                       f"{search.StorageError.describe(e, storage)}") from None
    seconds = time.perf_counter() - start

    trials = [{**search.to_json(t), "stage": None if t.stage is None else t.stage + 1,
               "command": command(t)}
              for t in res.trials]
    if args.method != "coarse-to-fine":
        for t in trials:
            del t["stage"]
    best = next((t for t in trials if t["status"] != "diverged" and t["val_loss"] is not None),
                None)
    result = {
        "method": args.method,
        "config": search_config,
        "space": search.to_json(spec),
        "study": {"storage": shown_storage, "name": args.study_name,
                  "in_out": not args.storage},
        "seconds": seconds,
        "trained_now": res.trained,
        "trials": trials,
        "best": best,
    }
    # Several processes may share --out: each writes under a name of its own, then renames.
    _shared_write(os.path.join(out, "results.json"), lambda p: write_json(p, result))
    numeric = [n for n in spec if isinstance(spec[n], search.LogUniform | search.Uniform)]
    plotted = [t for t in trials if t["val_acc"] is not None
               and all(n in t["params"] for n in numeric)]
    if plotted and numeric:
        _shared_write(os.path.join(out, "search.png"), lambda p: plots.scatter_by_param(
            plotted, numeric, p, log_params=[n for n in numeric
                                             if isinstance(spec[n], search.LogUniform)],
            title=f"{args.method} search, {len(trials)} trials"))

    if args.tensorboard:
        from jaxnn.tensorboard import write_hparams

        write_hparams(out, trials)  # all of the study's trials, also those of other processes
    shown = [n for n in spec if n in varied or n in choices]
    print(_trial_table(trials, shown))
    n_div = sum(t["status"] == "diverged" for t in trials)
    n_pruned = sum(t["status"] == "pruned" for t in trials)
    summary = (f"{len(trials)} trials ({n_div} diverged, {n_pruned} pruned; {res.trained} "
               f"trained now), {seconds:.1f}s")
    print(f"results: {os.path.join(out, 'results.json')}  study: {args.study_name} in "
          f"{shown_storage}")
    if best is None:
        sys.stderr.write(f"jaxnn search: no usable trial: {summary}; every trial diverged (try "
                         "a lower --lr-range)\n")
        return 1
    print("best: " + "  ".join(f"{n}={_fmt(best['params'].get(n))}" for n in shown)
          + f"  val_loss {best['val_loss']:.4f}  val_acc {_acc(best['val_acc'])}  ({summary})")
    print(f"retrain it: {best['command']}")
    return 0


def _check_study(task, settings, storage, study_name: str, where: str) -> None:
    """Refuse, before anything is written, a study in ``storage`` holding another search."""
    from jaxnn import search

    try:
        search.check_study(task, settings, storage=storage, study_name=study_name)
    except search.StorageError as e:
        raise CLIError(f"{where}: {str(e).partition(': ')[2] or e}") from None
    except ValueError as e:
        raise CLIError(f"{where}: {e}") from None


def _devices(args, size: int) -> int | None:
    """``--devices`` for a population of ``size``: ``None`` when not given (the population then
    splits over the host's CPU devices, :func:`jaxnn.population.default_devices`), ``1`` for
    ``--devices 1``."""
    n = population_devices(args, size)
    return n if n is not None or args.devices is None else 1


def _shared_write(path: str, write) -> None:
    """``write(tmp)`` to a name of this process's own, then rename it to ``path`` (atomic; the
    last process to finish wins, with the study as it then stands)."""
    root, ext = os.path.splitext(path)
    tmp = f"{root}.{os.getpid()}{ext}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _acc(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _trial_table(trials: list[dict], shown: list[str]) -> str:
    rows = [[i + 1, t["number"], *(_fmt(t["params"].get(n)) for n in shown),
             "-" if t["val_loss"] is None else t["val_loss"],
             "-" if t["val_acc"] is None else t["val_acc"], t["status"]]
            for i, t in enumerate(trials)]
    if len(rows) > _SHOWN:
        rows = rows[:_SHOWN - 2] + [["..."] + [""] * (len(rows[0]) - 1)] + rows[-1:]
    return table(rows, ["rank", "trial", *shown, "val_loss", "val_acc", "status"])


# --------------------------------------------------------------------------- ensemble
def _ensemble_progress(epochs: int, members: int):
    """One flushed line per epoch (on a terminal or not): members still training and their
    mean validation accuracy."""
    import numpy as np

    def on_epoch(epoch, metrics, trained):
        acc = np.asarray(metrics["val_acc"])[np.asarray(trained, bool)]
        mean = f"{acc.mean():.4f}" if acc.size else "-"
        print(f"epoch {epoch}/{epochs}: {int(np.sum(trained))}/{members} members training, "
              f"mean val_acc {mean}", flush=True)

    return on_epoch


def run_ensemble(args) -> int:
    import jax
    import numpy as np

    from jaxnn import ensemble, search

    if args.members < 1:
        raise CLIError(f"--members must be >= 1, got {args.members}")
    if getattr(args, "augment", None):
        raise CLIError("--augment: ensemble trains a population, which does not augment yet")
    config = config_from_args(args)
    # The init scale is each member's (as in search); the shared model keeps scale 1.
    exp = build(replace_config(config, init_scale=1.0))
    run_dir = new_run_dir(args.out, "ensemble")

    start = time.perf_counter()
    res = ensemble.ensemble(
        exp.data, members=args.members, epochs=config.epochs, key=jax.random.key(config.seed),
        model=exp.model, loss=exp.loss, optimizer=exp.optimizer,
        batch_size=config.batch_size, learning_rate=config.lr, l2=config.l2,
        init_scale=config.init_scale,
        devices=_devices(args, args.members),
        on_epoch=None if args.quiet else _ensemble_progress(args.epochs, args.members))
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
        "config": {k: getattr(config, k) for k in TRAIN_FLAGS},
    }
    os.makedirs(run_dir, exist_ok=True)
    write_json(os.path.join(run_dir, "summary.json"), search.to_json(summary))  # NaN -> null

    rows = [[f"seed {k}", float(a), float(l), s] for k, (a, l, s) in
            enumerate(zip(res.member_test_acc, res.member_test_loss, res.status, strict=True))]
    rows.append(["mean member", float(np.mean(res.member_test_acc)),
                 float(np.mean(res.member_test_loss)), ""])
    healthy = sum(s != "diverged" for s in res.status)
    rows.append([f"ensemble of {healthy}", float(res.ensemble_test_acc),
                 float(res.ensemble_test_loss), ""])
    print(table(rows, ["model", "test_acc", "test_loss", "status"]))
    print(f"summary: {os.path.join(run_dir, 'summary.json')}")
    if healthy == 0:
        sys.stderr.write(f"jaxnn ensemble: every member diverged ({seconds:.1f}s); try a lower "
                         "--lr\n")
        return 1
    gain = res.ensemble_test_acc - float(np.mean(res.member_test_acc))
    print(f"ensemble test accuracy {res.ensemble_test_acc:.4f} ({gain:+.4f} vs the mean member, "
          f"{seconds:.1f}s)")
    return 0
