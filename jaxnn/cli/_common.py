"""Flags shared by the verbs that train (train, resume, diagnose, search, compare, ensemble) and
turning them into data, a model and an optimizer. Everything is validated before anything is
written, so a bad flag leaves no run directory behind."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, NamedTuple

from jaxnn.cli import CLIError

#: Flags saved in ``config.json`` and read back by ``jaxnn resume``.
TRAIN_FLAGS = (
    "dataset", "data_dir", "hidden", "arch", "activation", "init", "bias_init", "batch_norm",
    "dropout", "loss", "optimizer", "lr", "schedule", "l2", "batch_size", "epochs", "preprocess", "seed",
    "data_url", "augment", "init_scale", "momentum", "weight_decay",
)


def add_train_flags(p: argparse.ArgumentParser, *, epochs: int = 30, lr: float = 0.05) -> None:
    """Every choice of a training run as a flag (defaults train the digits MLP well); ``epochs``
    and ``lr`` are the verb's own defaults. Help lines list the registries' names (placeholders
    filled when help is shown) and every default."""
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits",
                   help="digits (embedded) | mnist | fashion_mnist | cifar10 (downloaded on "
                        "first use) | path to a .npz with x, y")
    g.add_argument("--data-dir", default=None,
                   help="directory of the downloaded datasets (default: $JAXNN_DATA, else "
                        "~/.cache/jaxnn)")
    g.add_argument("--data-url", default=None, metavar="URL",
                   help="base URL of a mirror serving the original file names (default: "
                        "$JAXNN_DATA_URL, else the official locations)")
    g.add_argument("--preprocess", default="standardize",
                   help="fitted on the training split: one of {preprocessors}; pca:K keeps K "
                        "components")
    g.add_argument("--augment", type=augment_arg, default=None, metavar="crop:P,flip",
                   help="augment image batches on the device: random crop after zero padding "
                        "by P pixels and/or random horizontal flip (needs an --arch that keeps "
                        "the image shape)")
    g = p.add_argument_group("model")
    g.add_argument("--hidden", default="128,64",
                   help="hidden layer widths, comma-separated (shorthand for --arch fc:128,fc:64)")
    g.add_argument("--arch", default=None,
                   help="hidden layers, replacing --hidden: comma-separated conv:C (3x3 SAME), "
                        "conv:C:K (KxK), pool (2x2 max), avgpool (2x2 average), fc:N, dropout:P; "
                        "--activation follows every conv and fc, the output layer is added; "
                        "e.g. conv:32,conv:32,pool,conv:64,pool,fc:128")
    g.add_argument("--activation", default="relu", help="hidden activation: {activations}")
    g.add_argument("--init", default="he_normal", help="weight initializer: {initializers}")
    g.add_argument("--bias-init", type=float, default=0.0,
                   help="initial bias (0.01: the slightly positive ReLU bias)")
    g.add_argument("--batch-norm", action="store_true", help="batch norm before each activation")
    g.add_argument("--dropout", type=float, default=0.0, help="drop probability after activations")
    g.add_argument("--init-scale", type=float, default=1.0,
                   help="factor on every initial weight matrix (search varies it per trial)")
    g = p.add_argument_group("training")
    g.add_argument("--loss", default="softmax_cross_entropy",
                   help="{losses} (losses of targets shaped like the scores train on one-hot "
                        "labels)")
    g.add_argument("--optimizer", default="momentum", help="{optimizers}")
    g.add_argument("--lr", type=float, default=lr, help="learning rate")
    g.add_argument("--schedule", default="constant", help="learning-rate schedule: {schedules}")
    g.add_argument("--l2", type=float, default=1e-3, help="L2 regularization strength")
    g.add_argument("--momentum", type=float, default=None,
                   help="momentum of the momentum and nesterov optimizers (not set: 0.9)")
    g.add_argument("--weight-decay", type=float, default=None,
                   help="decoupled weight decay of adamw (not set: 1e-4)")
    g.add_argument("--batch-size", type=int, default=64, help="examples per mini-batch")
    g.add_argument("--epochs", type=int, default=epochs, help="passes over the training split")
    g.add_argument("--seed", type=int, default=0,
                   help="seeds the initialization, the data order and dropout")


def label_loss(name: str):
    """``--loss NAME`` as a loss of ``(scores [batch, C], integer labels [batch])``: the name
    itself when the registry's loss takes class labels, else that loss applied to one-hot
    labels (losses of targets shaped like the scores: l2, mse, sigmoid_binary_cross_entropy, ...).
    Which of the two is found by calling the loss once on a tiny batch."""
    import jax
    import jax.numpy as jnp

    from jaxnn import losses

    if name not in losses.names():
        raise CLIError(f"--loss: unknown {name!r}; valid: {', '.join(losses.names())}")
    fn = losses.get(name)
    scores, labels = jnp.zeros((2, 3), jnp.float32), jnp.asarray([0, 2], jnp.int32)

    def on_one_hot(scores, labels):
        return fn(scores, jax.nn.one_hot(labels, scores.shape[-1], dtype=scores.dtype))

    for candidate in (fn, on_one_hot):
        try:
            if jnp.shape(candidate(scores, labels)) == (2,):
                return name if candidate is fn else on_one_hot
        except (ValueError, TypeError):
            pass
    raise CLIError(f"--loss {name}: takes neither class labels nor one-hot targets, so it "
                   f"cannot train a classifier")


def check_initializer(name: str) -> None:
    """``--init NAME`` names an initializer that needs no options, else a :class:`CLIError`."""
    from jaxnn import initializers

    if name not in initializers.names():
        raise CLIError(f"--init: unknown {name!r}; valid: {', '.join(initializers.names())}")
    try:
        initializers.get(name)
    except (ValueError, TypeError):
        usable = []
        for n in initializers.names():
            try:
                initializers.get(n)
                usable.append(n)
            except (ValueError, TypeError):
                pass
        raise CLIError(f"--init: {name!r} needs arguments the command line does not take; "
                       f"choose one of {', '.join(usable)}") from None


def _devices_arg(text: str):
    """argparse type of ``--devices``: a positive integer or ``all``."""
    if str(text).strip().lower() == "all":
        return "all"
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}")
    return n


def add_device_flags(p: argparse.ArgumentParser, *, multi_process: bool = True) -> None:
    """``--devices N|all`` and, with ``multi_process``, ``--coordinator HOST:PORT
    --num-processes P --process-id I`` to join a multi-process run."""
    g = p.add_argument_group("devices")
    g.add_argument("--devices", type=_devices_arg, default=None, metavar="N|all",
                   help="split every batch (for populations: the members) over N devices; "
                        "'all' = every device of every process (default 1; all in a "
                        "multi-process run)")
    if not multi_process:
        return
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="join a multi-process run served by process 0 at HOST:PORT "
                        "('auto': detect it on a Cloud TPU slice, SLURM or Open MPI)")
    g.add_argument("--num-processes", type=int, default=None, metavar="P",
                   help="number of processes in the run (with --coordinator)")
    g.add_argument("--process-id", type=int, default=None, metavar="I",
                   help="this process's rank in [0, P) (with --coordinator); process 0 writes")


class Devices(NamedTuple):
    """What the device flags resolve to: ``count`` devices, the data ``mesh`` (``None`` for one
    device) and whether this is the process that writes files (``main``)."""

    count: int
    mesh: Any
    main: bool
    processes: int


def _check_process_flags(args) -> bool:
    """Validate the multi-process flags (no JAX call); True when they ask for one."""
    coord = getattr(args, "coordinator", None)
    nproc, pid = getattr(args, "num_processes", None), getattr(args, "process_id", None)
    if coord is None:
        if nproc is not None or pid is not None:
            raise CLIError("--num-processes and --process-id need --coordinator HOST:PORT")
        return False
    if coord == "auto":
        return True
    host, _, port = coord.rpartition(":")
    if not host or not port.isdigit():
        raise CLIError(f"--coordinator must be HOST:PORT (or 'auto'), got {coord!r}")
    if nproc is None or pid is None:
        raise CLIError("--coordinator needs --num-processes P and --process-id I")
    if nproc < 1:
        raise CLIError(f"--num-processes must be >= 1, got {nproc}")
    if not 0 <= pid < nproc:
        raise CLIError(f"--process-id must be in [0, {nproc}), got {pid}")
    return True


def setup_devices(args, *, batch_size: int, default=None) -> Devices:
    """Join the multi-process run if asked (before anything else touches JAX), resolve
    ``--devices`` (``default`` when not given: 1, or every device in a multi-process run) and
    check that ``batch_size`` divides by the number of data shards."""
    multi = _check_process_flags(args)
    if multi:
        from jaxnn import distributed

        coord = args.coordinator
        try:
            if coord == "auto":
                distributed.initialize()
            else:
                distributed.initialize(coord, args.num_processes, args.process_id)
        except (RuntimeError, ValueError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CLIError(f"--coordinator {coord}: could not join the run: {msg}") from None
    import jax

    from jaxnn import distributed

    requested = args.devices if args.devices is not None else default
    if requested is None:
        requested = "all" if jax.process_count() > 1 else 1
    try:
        n = distributed.resolve_devices(requested)
        if jax.process_count() > 1 and n != jax.device_count():
            raise ValueError(f"a multi-process run uses every device: --devices all (or "
                             f"{jax.device_count()}), got {n}")
    except ValueError as e:
        raise CLIError(f"--devices: {e}") from None
    if batch_size % n:
        raise CLIError(f"--batch-size {batch_size} must divide by the number of data shards "
                       f"({n} devices); try --batch-size {max(n, batch_size - batch_size % n)}")
    mesh = distributed.data_mesh(n) if n > 1 else None
    return Devices(n, mesh, jax.process_index() == 0, jax.process_count())


def population_devices(args, population_size: int) -> int | None:
    """``--devices`` for a population verb (search, compare, ensemble): ``None`` for one device,
    else the number of devices the member axis is split over (``population_size`` must divide
    by it). Pass it on as ``train_population(..., devices=...)``."""
    if getattr(args, "devices", None) is None:
        return None
    from jaxnn import distributed

    try:
        n = distributed.resolve_devices(args.devices)
    except ValueError as e:
        raise CLIError(f"--devices: {e}") from None
    if population_size % n:
        raise CLIError(f"--devices {n}: the population of {population_size} members must divide "
                       f"by the number of devices")
    return None if n == 1 else n


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


def parse_arch(config: dict):
    """The hidden layers of a config: ``--arch`` parsed (:func:`jaxnn.models.parse_arch`), else
    ``--hidden`` as ``fc`` entries."""
    from jaxnn import models

    arch = config.get("arch")
    if arch is None:
        return tuple(models.ArchItem("fc", n) for n in parse_hidden(config["hidden"]))
    try:
        return models.parse_arch(arch)
    except ValueError as e:
        raise CLIError(f"--arch: {e}") from None


def config_from_args(args) -> dict:
    """The training flags as a config dict; ``--arch`` and a non-default ``--hidden`` together
    are refused (one would be ignored)."""
    if getattr(args, "arch", None) is not None and getattr(args, "hidden", "128,64") != "128,64":
        raise CLIError("--hidden and --arch both give the hidden layers; use one (--hidden 128,64 "
                       "is --arch fc:128,fc:64)")
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
    try:
        st = pre.fit(data.x_train)  # fitted on the training split only
    except ValueError as e:
        raise CLIError(f"--preprocess {spec}: {e}") from None
    return data._replace(**{f"x_{s}": _np(pre.transform(st, getattr(data, f"x_{s}")))
                            for s in ("train", "val", "test")})


def _np(a):
    import numpy as np

    return np.asarray(a)


def build(config: dict) -> Setup:
    """Load the data and build model and optimizer from a config dict (flags or config.json)."""
    from jaxnn import activations, data, models, optim

    c = check_config(dict(config))
    arch = parse_arch(c)
    hidden = [int(i.size) for i in arch if i.kind == "fc"]
    images = any(i.kind in ("conv", "pool", "avgpool") for i in arch)
    for flag, lo in (("batch_size", 1), ("epochs", 1)):
        if int(c[flag]) < lo:
            raise CLIError(f"--{flag.replace('_', '-')} must be >= {lo}, got {c[flag]}")
    if not c["lr"] > 0:
        raise CLIError(f"--lr must be positive, got {c['lr']}")
    if c["l2"] < 0:
        raise CLIError(f"--l2 must be >= 0, got {c['l2']}")
    if not 0 <= c["dropout"] < 1:
        raise CLIError(f"--dropout is a drop probability in [0, 1), got {c['dropout']}")
    if c["activation"] not in activations.names():
        raise CLIError(f"--activation: unknown {c['activation']!r}; valid: "
                       f"{', '.join(activations.names())}")
    loss = label_loss(c["loss"])
    check_initializer(c["init"])
    if c["optimizer"] not in optim.names():
        raise CLIError(f"--optimizer: unknown {c['optimizer']!r}; valid: {', '.join(optim.names())}")
    if c["schedule"] not in optim.schedule_names():
        raise CLIError(f"--schedule: unknown {c['schedule']!r}; valid: "
                       f"{', '.join(optim.schedule_names())}")

    # The split is fixed (seed 0) so that runs with different --seed share one test set.
    with DownloadProgress() as progress:  # a bar on a terminal when a dataset downloads
        ds = data.load(c["dataset"], data_dir=c["data_dir"], seed=c.get("split_seed", 0),
                       flatten=not images,  # convolutions see [H, W, C] images
                       data_url=c.get("data_url"), progress=progress)
    ds = _preprocess(ds, c["preprocess"])
    if images and ds.x_train.ndim != 4:
        raise CLIError(f"--arch {c['arch']}: convolutions and pooling need images [height, "
                       f"width, channels]; {c['dataset']} gives examples of shape "
                       f"{tuple(ds.x_train.shape[1:])}")
    if c.get("augment") and (not images or ds.x_train.ndim != 4):
        raise CLIError(f"--augment {c['augment']}: crop and flip need images; {c['dataset']} "
                       f"is used as examples of shape {tuple(ds.x_train.shape[1:])} here (an "
                       "--arch with conv or pool layers keeps the image shape)")
    if not images and ds.x_train.ndim != 2:
        ds = ds._replace(**{f"x_{s}": getattr(ds, f"x_{s}").reshape(
            getattr(ds, f"x_{s}").shape[0], -1) for s in ("train", "val", "test")})
    try:
        model = models.convnet(ds.x_train.shape[1:], ds.num_classes, arch,
                               activation=c["activation"], init=c["init"],
                               bias_init=c["bias_init"], batch_norm=c["batch_norm"],
                               dropout=c["dropout"])
    except ValueError as e:
        raise CLIError(f"--arch: {e}") from None
    model = _scaled_init(model, c.get("init_scale", 1.0))
    steps_per_epoch = -(-ds.x_train.shape[0] // min(c["batch_size"], ds.x_train.shape[0]))
    # The rate stays a number and a schedule is its shape (value 1), so a population can give
    # each member its own rate under the same schedule (jaxnn.optim).
    shape = None if c["schedule"] == "constant" else optim.get_schedule(
        c["schedule"], 1.0, total_steps=steps_per_epoch * c["epochs"])
    optimizer = optim.get(c["optimizer"], learning_rate=c["lr"], schedule=shape,
                          **_optimizer_options(c))
    return Setup(c, ds, model, optimizer, loss, hidden)


def _optimizer_options(c: dict) -> dict:
    """``--momentum`` / ``--weight-decay`` for the optimizers that take them."""
    opts = {}
    for key, takers in (("momentum", ("momentum", "nesterov")), ("weight_decay", ("adamw",))):
        v = c.get(key)
        if v is None:
            continue
        if c["optimizer"] not in takers:
            raise CLIError(f"--{key.replace('_', '-')}: only for --optimizer "
                           f"{' or '.join(takers)}, got {c['optimizer']}")
        opts[key] = v
    return opts


def _scaled_init(model, scale: float):
    """``model`` whose ``init`` multiplies every weight matrix by ``scale`` (as a population
    member's ``init_scale`` does); the model itself for 1."""
    if scale == 1.0:
        return model
    if not scale > 0:
        raise CLIError(f"--init-scale must be positive, got {scale}")
    import jax
    import jax.numpy as jnp

    from jaxnn import regularizers

    def init(key):
        params, state = model.init(key)
        flags = regularizers.weight_mask(params)
        params = jax.tree.map(lambda p, f: p * jnp.asarray(scale, p.dtype) if f else p,
                              params, flags)
        return params, state

    return model._replace(init=init)


#: Run directories created by this process; the CLI abandons those left empty by an error.
OPEN_RUNS: list = []


def new_run_dir(out: str | None, verb: str, *, main: bool = True):
    """Create and lock the run directory of a new run (``out``, or ``runs/<verb>-<time>`` made
    atomically), checked writable before any data is loaded. Returns a
    :class:`jaxnn.rundir.RunDir`; use it as a context manager so that a run failing before it
    writes anything leaves no directory behind."""
    from jaxnn import rundir

    try:
        run = rundir.RunDir.create(out, prefix=verb, main=main)
        OPEN_RUNS.append(run)
        return run
    except rundir.RunDirError as e:
        raise CLIError(f"--out: {e}" if out is not None else str(e)) from None


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _config_types() -> dict[str, tuple[Any, bool]]:
    """``{key: (type, may_be_none)}`` of every key in :data:`TRAIN_FLAGS`, read off the parser
    (so a flag added to :func:`add_train_flags` is checked too)."""
    p = argparse.ArgumentParser(add_help=False)
    add_train_flags(p)
    out = {}
    for a in p._actions:
        if a.dest not in TRAIN_FLAGS:
            continue
        if isinstance(a, argparse._StoreTrueAction | argparse._StoreFalseAction):
            out[a.dest] = (bool, False)
        else:
            out[a.dest] = (a.type or str, a.default is None)
    return out


#: Keys a train run adds to its config besides the flags: (type, may be None).
_EXTRA_KEYS = {"keep_checkpoints": (int, False), "patience": (int, True), "devices": (int, True),
               "tensorboard": (bool, False)}


#: The keys every `jaxnn train` config.json has held since jaxnn 0.1.0; keys added since then
#: take their flag's default when an older config lacks them.
_REQUIRED_KEYS = ("dataset", "data_dir", "hidden", "activation", "init", "bias_init", "batch_norm",
                  "dropout", "loss", "optimizer", "lr", "schedule", "l2", "batch_size", "epochs",
                  "preprocess", "seed")


def _with_defaults(config: dict) -> dict:
    """``config`` with every train flag it lacks set to the flag's default."""
    p = argparse.ArgumentParser(add_help=False)
    add_train_flags(p)
    return {**{k: p.get_default(k) for k in TRAIN_FLAGS}, **config}


def check_config(config: dict, *, source: str | None = None) -> dict:
    """Check a run's config before anything runs: every key present with a value of its flag's
    type, numbers finite. ``source`` is the file it came from (``config.json``), named in the
    error with the key; without it the error names the flag. Returns the config."""
    if not isinstance(config, dict):
        raise CLIError(f"{source}: expected a JSON object")

    def where(k):
        return f"{source}: key {k!r}" if source else _flag(k)

    types = {**_config_types(), **(_EXTRA_KEYS if source else {})}
    if source:
        missing = [k for k in _REQUIRED_KEYS if k not in config]
        if missing:
            raise CLIError(f"{source}: missing key {missing[0]!r} (is this a `jaxnn train` "
                           "run directory?)")
        unknown = sorted(set(config) - set(types) - {"split_seed"})
        if unknown:
            raise CLIError(f"{source}: unknown key {unknown[0]!r}")
        config = _with_defaults(config)
    for k, (typ, may_be_none) in types.items():
        if k not in config:
            continue
        v = config[k]
        if v is None:
            if may_be_none:
                continue
            raise CLIError(f"{where(k)}: expected a value, got null")
        if typ is bool:
            ok = isinstance(v, bool)
        elif typ is int:
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif typ is float:
            ok = isinstance(v, int | float) and not isinstance(v, bool)
        elif typ is str:
            ok = isinstance(v, str)
        else:  # a custom argparse type: it must accept the value's text
            try:
                typ(str(v))
                ok = not isinstance(v, dict | list)
            except (argparse.ArgumentTypeError, TypeError, ValueError):
                ok = False
        if not ok:
            name = {int: "an integer", float: "a number", bool: "true or false",
                    str: "a string"}.get(typ, "a valid value")
            raise CLIError(f"{where(k)}: expected {name}, got {v!r}")
        if typ is float and not math.isfinite(v):
            raise CLIError(f"{where(k)} must be a finite number, got {v}")
    return config


def jsonable(obj):
    """``obj`` as strict JSON values (NamedTuples as dicts, numpy plain, NaN/inf as ``None``)."""
    from jaxnn import rundir

    return rundir.jsonable(obj)


def write_json(path, obj) -> None:
    """Write ``obj`` as strict JSON atomically (:func:`jaxnn.rundir.write_json_atomic`)."""
    from jaxnn import rundir

    rundir.write_json_atomic(path, obj)


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


# --------------------------------------------------------------------------- data
class DownloadProgress:
    """A ``progress(file_name, bytes_done, bytes_total)`` callback for the library's downloads:
    one tqdm bar per file on stderr when ``enabled`` (default: stderr is a terminal), nothing
    otherwise. ``fetched`` lists the files transferred. Use it as a context manager so that the
    last bar is closed."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else bool(enabled)
        self.fetched: list[str] = []
        self._bar = None

    def __call__(self, name: str, done: int, total: int | None) -> None:
        if done == 0:  # a transfer starts
            self.close()
            self.fetched.append(name)
            if self.enabled:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=name, unit="B", unit_scale=True,
                                 unit_divisor=1024, leave=False, file=sys.stderr)
        if self._bar is not None:
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> DownloadProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def augment_arg(text: str) -> str | None:
    """argparse type of ``--augment``: the spec checked (:func:`jaxnn.batching.parse_augment`)
    and written canonically (``"crop:4,flip"``); ``none`` gives ``None``."""
    from jaxnn.batching import parse_augment

    try:
        spec = parse_augment(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if spec is None:
        return None
    return ",".join([f"crop:{spec.crop}"] * bool(spec.crop) + ["flip"] * spec.flip)
