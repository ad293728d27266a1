"""Flags shared by the verbs that train (train, resume, diagnose, search, compare, ensemble) and
turning them into data, a model and an optimizer. Everything is validated before anything is
written, so a bad flag leaves no run directory behind."""

from __future__ import annotations

import argparse
import sys
from typing import Any, NamedTuple

from jaxnn.arch import ARCH_HELP
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
                   help="hidden layers, replacing --hidden: " + ARCH_HELP + "; --activation "
                        "follows every conv and fc, the output layer is added; e.g. "
                        "conv:16,res(conv:16,conv:16),pool,fc:64")
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


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def config_error(e, *, source: str | None = None) -> CLIError:
    """A :class:`jaxnn.config.ConfigError` as the CLI's one line: ``--flag: problem`` for a
    config made from flags, ``FILE: key 'k': problem`` for one read from a file."""
    if e.source is not None or source is not None:
        return CLIError(str(e if source is None else e.with_source(source)))
    return CLIError(f"{_flag(e.key)}: {e.problem}")


def config_from_args(args, **extra):
    """The training flags (and ``extra`` run keys) as a validated
    :class:`jaxnn.config.RunConfig`; a bad value is a :class:`CLIError` naming its flag."""
    from jaxnn.config import ConfigError, RunConfig

    values = {k: getattr(args, k) for k in TRAIN_FLAGS if hasattr(args, k)}
    values.update(extra)
    try:
        return RunConfig(**values)
    except ConfigError as e:
        raise config_error(e) from None


def replace_config(cfg, **changes):
    """``cfg.replace(**changes)``, a bad value a :class:`CLIError` (naming the flag)."""
    from jaxnn.config import ConfigError

    try:
        return cfg.replace(**changes)
    except ConfigError as e:
        raise config_error(e) from None


def build(cfg, *, source: str | None = None):
    """:func:`jaxnn.config.build` with a download progress bar on a terminal; a config the data
    cannot serve is a :class:`CLIError` (naming the flag, or ``source``'s key)."""
    from jaxnn import config

    try:
        with DownloadProgress() as progress:  # a bar on a terminal when a dataset downloads
            return config.build(cfg, progress=progress)
    except config.ConfigError as e:
        raise config_error(e, source=source) from None


#: Run directories created by this process; the CLI abandons those left empty by an error.
OPEN_RUNS: list = []


def new_run_dir(out: str | None, verb: str, *, main: bool = True):
    """Create, lock and mark (``.jaxnn-run``, with ``verb``) the run directory of a new run
    (``out``, or ``runs/<verb>-<time>`` made atomically), checked writable before any data is
    loaded. An ``out`` that exists must be empty (or a ``verb`` directory that a run left
    without a file of its own), and none may lie inside another run directory. Returns a
    :class:`jaxnn.rundir.RunDir`; use it as a context manager so that a run failing before it
    writes anything leaves no directory behind."""
    from jaxnn import rundir

    try:
        run = rundir.RunDir.create(out, prefix=verb, verb=verb, main=main)
        OPEN_RUNS.append(run)
        return run
    except rundir.RunDirError as e:
        raise CLIError(f"--out: {e}" if out is not None else str(e)) from None


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
