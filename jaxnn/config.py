r"""The one place a configuration becomes objects: :class:`RunConfig` and :func:`build`.

A :class:`RunConfig` is a frozen dataclass of every field of a run's ``config.json`` (what
``jaxnn train``'s flags set), typed, with the defaults that train the digits MLP well. It is
validated when it is made, so a config that exists is one that can run: every error is one line
naming the key (and the file it came from)::

    cfg = RunConfig(arch="conv:16,res(conv:16,conv:16),pool,fc:64", epochs=5)
    exp = build(cfg)                      # Experiment(config, data, model, optimizer, loss, ...)
    history = jaxnn.train.fit(exp.model, exp.data, optimizer=exp.optimizer, loss=exp.loss,
                              epochs=cfg.epochs, batch_size=cfg.batch_size, l2=cfg.l2,
                              key=jax.random.key(cfg.seed))

    cfg.save("run/config.json")           # atomic; RunConfig.load reads it back (and 0.1 configs)
    cfg.replace(lr=0.1)                   # a new, validated config

:func:`build` is made of small pure builders a user can call on their own:
:func:`build_data` (load, split, fit the preprocessing on the training split),
:func:`build_model` (``cfg, input_shape, num_classes -> Model``), :func:`build_optimizer` and
:func:`build_loss`. Every ``jaxnn`` verb goes through them; the command line only parses flags
and prints.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

__all__ = [
    "ConfigError",
    "RunConfig",
    "Experiment",
    "build",
    "build_data",
    "build_model",
    "build_optimizer",
    "build_loss",
    "hidden_items",
    "steps_per_epoch",
]


class ConfigError(ValueError):
    """A configuration that cannot run. ``key`` is the field, ``problem`` what is wrong with it,
    ``source`` the file it came from (if any); ``str(e)`` is one line naming them."""

    def __init__(self, key: str, problem: str, *, source: str | os.PathLike | None = None):
        self.key, self.problem = key, problem
        self.source = None if source is None else os.fspath(source)
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.source is not None:
            return f"{self.source}: key {self.key!r}: {self.problem}"
        return f"{self.key}: {self.problem}"

    def with_source(self, source) -> ConfigError:
        return ConfigError(self.key, self.problem, source=source)


_ABSENT = object()


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything a training run is, as in ``config.json``; the defaults train the digits MLP.

    Data: ``dataset`` (``digits``, ``mnist``, ``fashion_mnist``, ``cifar10`` or a ``.npz``
    path), ``data_dir``, ``data_url``, ``preprocess`` (a :mod:`jaxnn.preprocessing` name,
    ``pca:K`` or ``none``; fitted on the training split), ``augment`` (``crop:P,flip``),
    ``split_seed`` (the train/val/test split; fixed so runs with different seeds share a test
    set). Model: ``hidden`` (``"128,64"``, shorthand for ``arch="fc:128,fc:64"``), ``arch``
    (:mod:`jaxnn.arch`; replaces ``hidden``), ``activation``, ``init``, ``bias_init``,
    ``batch_norm``, ``dropout``, ``init_scale`` (a factor on every initial weight matrix).
    Training: ``loss``, ``optimizer``, ``lr``, ``schedule``, ``l2``, ``momentum``,
    ``weight_decay`` (``None``: the optimizer's default), ``batch_size``, ``epochs``, ``seed``.
    Run: ``keep_checkpoints``, ``patience`` (``None``: never stop early), ``devices``,
    ``tensorboard``.

    Raises:
      ConfigError: on construction, naming the first key that cannot run.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    data_url: str | None = None
    preprocess: str = "standardize"
    augment: str | None = None
    split_seed: int = 0
    hidden: str = "128,64"
    arch: str | None = None
    activation: str = "relu"
    init: str = "he_normal"
    bias_init: float = 0.0
    batch_norm: bool = False
    dropout: float = 0.0
    init_scale: float = 1.0
    loss: str = "softmax_cross_entropy"
    optimizer: str = "momentum"
    lr: float = 0.05
    schedule: str = "constant"
    l2: float = 1e-3
    momentum: float | None = None
    weight_decay: float | None = None
    batch_size: int = 64
    epochs: int = 30
    seed: int = 0
    keep_checkpoints: int = 3
    patience: int | None = None
    devices: int | None = None
    tensorboard: bool = False

    def __post_init__(self):
        _check_types(self)
        _check_values(self)

    # ------------------------------------------------------------------ reading and writing
    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The keys, in ``config.json`` order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str | os.PathLike | None = None,
                  strict: bool = True) -> RunConfig:
        """A config from a dict (``config.json``'s contents). Keys it lacks take their defaults
        (configs written by older jaxnn lack the newer keys); with ``strict``, a key that is not
        a field is refused, and a dict from a file (``source``) must hold at least the keys
        every ``jaxnn train`` config has held since 0.1."""
        if not isinstance(d, Mapping):
            raise ConfigError("config", f"expected a JSON object, got {type(d).__name__}",
                              source=source)
        known = set(cls.fields())
        if source is not None:
            missing = [k for k in _REQUIRED_KEYS if k not in d]
            if missing:
                raise ConfigError(missing[0], "missing (is this a `jaxnn train` run directory?)",
                                  source=source)
        if strict:
            unknown = sorted(set(d) - known)
            if unknown:
                raise ConfigError(unknown[0], "unknown key", source=source)
        try:
            return cls(**{k: v for k, v in d.items() if k in known})
        except ConfigError as e:
            raise e.with_source(source) if source is not None else e from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunConfig:
        """Read and validate ``path`` (a ``config.json``); errors name the file and the key."""
        from jaxnn import rundir

        try:
            d = rundir.read_json(path)
        except rundir.RunDirError as e:
            raise ConfigError("config", str(e).removeprefix(f"{os.fspath(path)}: "),
                              source=path) from None
        return cls.from_dict(d, source=path)

    def to_dict(self) -> dict[str, Any]:
        """Every field, as JSON values."""
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` atomically (temporary file, fsync, rename)."""
        from jaxnn import rundir

        rundir.write_json_atomic(path, self.to_dict())

    def replace(self, **changes: Any) -> RunConfig:
        """A new config with ``changes`` (validated like any other)."""
        unknown = sorted(set(changes) - set(self.fields()))
        if unknown:
            raise ConfigError(unknown[0], "unknown key")
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ derived
    @property
    def arch_items(self):
        """The hidden layers: ``arch`` parsed, else ``hidden`` as ``fc`` entries."""
        return hidden_items(self)

    @property
    def images(self) -> bool:
        """Whether the model keeps the data's image shape (a conv or pool entry)."""
        from jaxnn import arch

        return arch.needs_images(self.arch_items)


#: The keys every `jaxnn train` config.json has held since jaxnn 0.1.0.
_REQUIRED_KEYS = ("dataset", "data_dir", "hidden", "activation", "init", "bias_init", "batch_norm",
                  "dropout", "loss", "optimizer", "lr", "schedule", "l2", "batch_size", "epochs",
                  "preprocess", "seed")

_FLOAT32_MAX = 3.4028234663852886e38
#: Seeds are 32-bit: jax.random.key keeps the low 32 bits of a larger one (2**32 would be seed 0).
_SEED_RANGE = (0, 2**32 - 1)

_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _check_types(cfg: RunConfig) -> None:
    """Every field holds a value of its type (ints are numbers too; bools are not)."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        typ = f.type.split(" | ")[0] if isinstance(f.type, str) else f.type
        optional = isinstance(f.type, str) and f.type.endswith("| None")
        if v is None:
            if optional:
                continue
            raise ConfigError(f.name, "expected a value, got null")
        t = {"int": int, "float": float, "bool": bool, "str": str}[typ]
        if t is bool:
            ok = isinstance(v, bool)
        elif t is int:
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif t is float:
            ok = isinstance(v, int | float) and not isinstance(v, bool)
        else:
            ok = isinstance(v, str)
        if not ok:
            raise ConfigError(f.name, f"expected {_TYPE_NAMES[t]}, got {v!r}")
        if t is float:
            # Training computes in float32: a value finite in float64 but not in float32
            # (1e308) would be inf there.
            if not math.isfinite(v) or abs(v) > _FLOAT32_MAX:
                raise ConfigError(f.name, f"must be a finite number (|x| <= {_FLOAT32_MAX:.4g}, "
                                  f"the float32 range), got {v}")
            object.__setattr__(cfg, f.name, float(v))


def _at_least(cfg, key: str, lo: int) -> None:
    v = getattr(cfg, key)
    if v is not None and v < lo:
        raise ConfigError(key, f"must be >= {lo}, got {v}")


def _known(key: str, name: str, valid) -> None:
    if name not in valid:
        raise ConfigError(key, f"unknown {name!r}; valid: {', '.join(valid)}")


def _check_values(cfg: RunConfig) -> None:
    """Every value means something: ranges, registry names, the architecture, the options."""
    from jaxnn import activations, arch, batching, initializers, losses, optim, preprocessing

    for key in ("batch_size", "epochs", "keep_checkpoints", "patience", "devices"):
        _at_least(cfg, key, 1)
    for key in ("seed", "split_seed"):
        lo, hi = _SEED_RANGE
        if not lo <= getattr(cfg, key) <= hi:
            raise ConfigError(key, f"must be in [{lo}, {hi}] (a 32-bit seed), got "
                              f"{getattr(cfg, key)}")
    if not cfg.lr > 0:
        raise ConfigError("lr", f"must be positive, got {cfg.lr}")
    if cfg.l2 < 0:
        raise ConfigError("l2", f"must be >= 0, got {cfg.l2}")
    if not 0 <= cfg.dropout < 1:
        raise ConfigError("dropout", f"is a drop probability in [0, 1), got {cfg.dropout}")
    if not cfg.init_scale > 0:
        raise ConfigError("init_scale", f"must be positive, got {cfg.init_scale}")
    _known("activation", cfg.activation, list(activations.names()))
    _known("loss", cfg.loss, list(losses.names()))
    _known("optimizer", cfg.optimizer, list(optim.names()))
    _known("schedule", cfg.schedule, list(optim.schedule_names()))
    _check_initializer(cfg.init, initializers)
    hidden_items(cfg)  # hidden / arch parse
    if cfg.arch is not None and cfg.hidden != "128,64":
        raise ConfigError("arch", f"{cfg.arch!r} and hidden {cfg.hidden!r} both give the hidden "
                          "layers; use one (hidden 128,64 is arch fc:128,fc:64)")
    if cfg.augment is not None:
        try:
            batching.parse_augment(cfg.augment)
        except ValueError as e:
            raise ConfigError("augment", str(e)) from None
        if not arch.needs_images(hidden_items(cfg)):
            raise ConfigError("augment", f"{cfg.augment}: crop and flip need images; an arch "
                              "with conv or pool layers keeps the image shape")
    _preprocessor(cfg.preprocess, preprocessing)
    for key in ("momentum", "weight_decay"):  # options only some optimizers take
        takers = [n for n in optim.names() if key in optim.entry(n).options
                  and not optim.entry(n).alias_of]
        value = getattr(cfg, key)
        if value is not None and cfg.optimizer not in takers:
            raise ConfigError(key, f"only for optimizer {' or '.join(takers)}, got "
                              f"{cfg.optimizer}")
        if value is not None:  # the optimizer's own range (momentum in [0, 1), ...)
            try:
                optim.get(cfg.optimizer, learning_rate=cfg.lr, **{key: value})
            except ValueError as e:
                raise ConfigError(key, str(e).split(f"{key} ", 1)[-1]) from None


def _check_initializer(name: str, initializers) -> None:
    _known("init", name, list(initializers.names()))

    def needs_options(n):  # a factory that cannot be called without arguments
        e = initializers.entry(n)
        return e.factory and bool(e.required)

    if needs_options(name):
        usable = [n for n in initializers.names() if not needs_options(n)]
        raise ConfigError("init", f"{name!r} needs arguments a config does not give; choose "
                          f"one of {', '.join(usable)}")


def _preprocessor(spec: str, preprocessing):
    """``preprocess`` as a :class:`jaxnn.preprocessing.Preprocessor` (``None`` for none)."""
    name, _, arg = str(spec).partition(":")
    if name in ("", "none"):
        return None
    kw = {}
    if arg:
        try:
            kw["k"] = int(arg)
        except ValueError:
            raise ConfigError("preprocess", f"{spec!r}: expected NAME or pca:K") from None
    try:
        return preprocessing.get(name, **kw)
    except (ValueError, TypeError) as e:
        raise ConfigError("preprocess", f"{spec!r}: {e}") from None


def hidden_items(cfg: RunConfig):
    """The hidden layers of ``cfg`` as :class:`jaxnn.arch.ArchItem`\\ s: ``arch`` parsed, else
    ``hidden`` (comma-separated widths) as ``fc`` entries."""
    from jaxnn import arch

    if cfg.arch is not None:
        try:
            return arch.parse_arch(cfg.arch)
        except ValueError as e:
            raise ConfigError("arch", str(e)) from None
    text = str(cfg.hidden).strip()
    try:
        sizes = [int(s) for s in text.split(",")] if text else []
    except ValueError:
        raise ConfigError("hidden", f"must be comma-separated integers, got {cfg.hidden!r}") from None
    if any(s < 1 for s in sizes):
        raise ConfigError("hidden", f"widths must be >= 1, got {cfg.hidden!r}")
    return tuple(arch.ArchItem("fc", s) for s in sizes)


# --------------------------------------------------------------------------- building
class Experiment(NamedTuple):
    """What a config builds: the ``config``, the preprocessed ``data``
    (:class:`jaxnn.data.Dataset`), the ``model``, the ``optimizer`` (optax), the ``loss`` (a
    :mod:`jaxnn.losses` name, or a function of scores and integer labels), and the fitted
    preprocessing (``preprocessor`` and its ``preprocess_state``; ``None`` for none)."""

    config: RunConfig
    data: Any
    model: Any
    optimizer: Any
    loss: str | Callable
    preprocessor: Any = None
    preprocess_state: Any = None


def _np(a):
    import numpy as np

    return np.asarray(a)


def build_data(cfg: RunConfig, *, progress=None):
    """Load ``cfg.dataset`` (split with ``cfg.split_seed``), keep the image shape when the
    architecture needs it (else flatten each example), and fit ``cfg.preprocess`` on the
    training split only, then transform every split. Returns ``(dataset, preprocessor,
    state)``. ``progress(file, done, total)`` sees downloads.

    Raises:
      ConfigError: for data the configuration cannot use (naming ``dataset``, ``arch``,
        ``augment`` or ``preprocess``).
      jaxnn.data.DownloadError, ValueError, OSError: from loading (naming the file).
    """
    from jaxnn import data, preprocessing

    images = cfg.images
    ds = data.load(cfg.dataset, data_dir=cfg.data_dir, seed=cfg.split_seed, flatten=not images,
                   data_url=cfg.data_url, progress=progress)
    if images and ds.x_train.ndim != 4:
        raise ConfigError("arch", f"{cfg.arch}: convolutions and pooling need images [height, "
                          f"width, channels]; {cfg.dataset} gives examples of shape "
                          f"{tuple(ds.x_train.shape[1:])}")
    if not images and ds.x_train.ndim != 2:
        ds = ds._replace(**{f"x_{s}": getattr(ds, f"x_{s}").reshape(
            getattr(ds, f"x_{s}").shape[0], -1) for s in ("train", "val", "test")})
    pre = _preprocessor(cfg.preprocess, preprocessing)
    if pre is None:
        return ds, None, None
    try:
        state = pre.fit(ds.x_train)  # fitted on the training split only
    except ValueError as e:
        raise ConfigError("preprocess", f"{cfg.preprocess}: {e}") from None
    ds = ds._replace(**{f"x_{s}": _np(pre.transform(state, getattr(ds, f"x_{s}")))
                        for s in ("train", "val", "test")})
    return ds, pre, state


def build_model(cfg: RunConfig, input_shape, num_classes: int):
    """The model of ``cfg`` for examples of ``input_shape`` and ``num_classes`` outputs: the
    hidden layers of ``arch`` (or ``hidden``) and the output layer
    (:func:`jaxnn.models.convnet`), its ``init`` scaled by ``init_scale``.

    Raises:
      ConfigError: naming ``arch`` when the layers do not fit the input shape.
    """
    from jaxnn import models

    try:
        model = models.convnet(tuple(input_shape), int(num_classes), hidden_items(cfg),
                               activation=cfg.activation, init=cfg.init,
                               bias_init=cfg.bias_init, batch_norm=cfg.batch_norm,
                               dropout=cfg.dropout)
    except ValueError as e:
        raise ConfigError("arch" if cfg.arch is not None else "hidden", str(e)) from None
    _check_fits(model, "arch" if cfg.arch is not None else "hidden")
    return _scaled_init(model, cfg.init_scale)


def _check_fits(model, key: str) -> None:
    """Refuse a model whose parameters, gradients and optimizer state alone exceed memory
    (before anything is allocated), naming its size."""
    from jaxnn import distributed, models

    try:
        distributed.check_fits(models.parameter_count(model))
    except ValueError as e:
        raise ConfigError(key, str(e)) from None


def _scaled_init(model, scale: float):
    """``model`` whose ``init`` multiplies every weight matrix by ``scale``; itself for 1."""
    if scale == 1.0:
        return model
    import jax
    import jax.numpy as jnp

    from jaxnn import regularizers

    def init(key):
        params, state = model.init(key)
        flags = regularizers.weight_mask(params)
        return jax.tree.map(lambda p, f: p * jnp.asarray(scale, p.dtype) if f else p,
                            params, flags), state

    return model._replace(init=init)


def steps_per_epoch(cfg: RunConfig, num_train: int) -> int:
    """Mini-batches per epoch: ``ceil(n / min(batch_size, n))``."""
    n = max(int(num_train), 1)
    return -(-n // min(cfg.batch_size, n))


def build_optimizer(cfg: RunConfig, *, steps_per_epoch: int):
    """The optax optimizer of ``cfg``. The rate stays a number and a schedule is its shape
    (value 1 scaled by the rate), so a population can give each member its own rate under the
    same schedule (:mod:`jaxnn.optim`)."""
    from jaxnn import optim

    shape = None if cfg.schedule == "constant" else optim.get_schedule(
        cfg.schedule, 1.0, total_steps=int(steps_per_epoch) * cfg.epochs)
    opts = {k: getattr(cfg, k) for k in ("momentum", "weight_decay")
            if getattr(cfg, k) is not None}
    return optim.get(cfg.optimizer, learning_rate=cfg.lr, schedule=shape, **opts)


def build_loss(cfg: RunConfig):
    """``cfg.loss`` as a loss of ``(scores [batch, C], integer labels [batch])``
    (:func:`jaxnn.losses.for_labels`: the loss itself when it takes class labels, else that loss
    of one-hot labels, for losses of targets shaped like the scores: ``l2_loss``, ``mse``,
    ``sigmoid_binary_cross_entropy``)."""
    from jaxnn import losses

    try:
        return losses.for_labels(cfg.loss)
    except ValueError as e:
        raise ConfigError("loss", str(e)) from None


def build(cfg: RunConfig, *, progress=None) -> Experiment:
    """Data, model, optimizer and loss of ``cfg`` (:func:`build_data`, :func:`build_model`,
    :func:`build_optimizer`, :func:`build_loss`).

    Example::

        exp = build(RunConfig(arch="conv:8,pool,fc:32", epochs=3))
        exp.model.input_shape, exp.data.x_train.shape      # (8, 8, 1), (1293, 8, 8, 1)
    """
    if not isinstance(cfg, RunConfig):
        raise TypeError(f"build: expected a RunConfig, got {type(cfg).__name__} (use "
                        "RunConfig.from_dict for a dict)")
    loss = build_loss(cfg)
    ds, pre, state = build_data(cfg, progress=progress)
    model = build_model(cfg, ds.x_train.shape[1:], ds.num_classes)
    optimizer = build_optimizer(cfg, steps_per_epoch=steps_per_epoch(cfg, ds.x_train.shape[0]))
    return Experiment(cfg, ds, model, optimizer, loss, pre, state)
