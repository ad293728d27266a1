"""What a search trains (:class:`SearchTask`) and how it searches (:class:`SearchSettings`).

A task's space splits in two: the names a population carries per member (learning rate, L2,
init scale, momentum, weight decay, seed) vary *inside* a population; every other name is
*categorical* and picks a :class:`Group` — the data, model, optimizer and loss its trials train.
A task made from a :class:`jaxnn.config.RunConfig` builds each group with
``jaxnn.config.build(config.replace(**categorical_values))`` (a group whose ``arch`` is a convnet
gets image data, an MLP group flat data); a task made from data and a model uses them as given
(and ``build(values)`` for the categorical names).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from jaxnn import optim as _optim
from jaxnn import population as _population
from jaxnn.search._space import Choice, Spec, check_domain, is_number, normalize
from jaxnn.train import DIVERGENCE_FACTOR

#: The methods of :func:`jaxnn.search.optimize`.
METHODS = ("tpe", "cmaes", "random", "grid", "coarse-to-fine")

#: The config key of each per-member hyperparameter (the rest are spelled alike).
CONFIG_KEYS = {"learning_rate": "lr"}
#: Config keys a search controls itself, never per group.
_NOT_CATEGORICAL = ("lr", "epochs", "batch_size", "augment", "devices", "keep_checkpoints",
                    "patience", "tensorboard")


def coarse_epochs(epochs: int) -> int:
    """The epochs of every coarse-to-fine stage but the last, by default: ``ceil(epochs / 3)``
    (at least 1)."""
    return max(1, -(-int(epochs) // 3))


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchSettings:
    """How a search searches.

    Args:
      method: ``tpe`` (:class:`optuna.samplers.TPESampler`), ``cmaes``
        (:class:`optuna.samplers.CmaEsSampler`, population size = ``population``), ``random``,
        ``grid`` (every combination of :func:`jaxnn.search.grid`, ``grid_points`` values on each
        range) or ``coarse-to-fine`` (``stages`` random stages, each narrowed around the previous
        stage's best ``top_k`` trials (:func:`jaxnn.search.narrow`); the earlier stages train
        ``coarse_epochs``, default :func:`coarse_epochs` of the task's epochs).
      trials: the finished trials the study should hold (``grid``: at most the grid size;
        ``coarse-to-fine``: per stage).
      population: trials asked (and trained) per round.
      pruner: ``"median"`` (:class:`optuna.pruners.MedianPruner`), ``"none"`` or a pruner.
      grace_period: seconds after which a ``RUNNING`` trial whose process stopped recording
        its heartbeat (killed, or cut off from the database) counts as lost, and another trial
        takes its place (:func:`jaxnn.search.optimize`). Heartbeats are recorded every
        :attr:`heartbeat_interval` seconds.

    ``tpe`` samples its first ``min(10, population)`` trials at random (Optuna's default is 10
    whatever the batch), so from the second round on TPE models the finished trials.
    """

    method: str = "tpe"
    trials: int = 64
    population: int = 16
    pruner: Any = "median"
    grid_points: int | None = None
    stages: int = 2
    coarse_epochs: int | None = None
    top_k: int | None = None
    grace_period: float = 60.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("trials", "population", "stages"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("grid_points", "coarse_epochs", "top_k"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (isinstance(self.grace_period, int | float) and self.grace_period > 0
                and math.isfinite(self.grace_period)):
            raise ValueError(f"grace_period must be a positive number of seconds, got "
                             f"{self.grace_period!r}")

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between a running trial's heartbeats: a sixth of :attr:`grace_period`, at
        most 10 s (at least 0.5 s)."""
        return max(0.5, min(10.0, float(self.grace_period) / 6))

    def stage_epochs(self, epochs: int) -> list[int]:
        """The epochs each stage trains: ``[epochs]``, or for coarse-to-fine the coarse epochs
        for every stage but the last."""
        if self.method != "coarse-to-fine":
            return [int(epochs)]
        coarse = coarse_epochs(epochs) if self.coarse_epochs is None else int(self.coarse_epochs)
        return [coarse] * (int(self.stages) - 1) + [int(epochs)]


class Group(NamedTuple):
    """What the trials of one combination of categorical values train: ``data`` (a
    :class:`jaxnn.data.Dataset`), ``model``, ``optimizer`` (its injected hyperparameters are
    replaced per member), ``loss``, and the ``config`` it was built from (``None`` for a task
    made from data)."""

    data: Any
    model: Any
    optimizer: Any
    loss: Any
    config: Any = None


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class SearchTask:
    """What a search trains.

    Make one with :meth:`from_config` (a :class:`jaxnn.config.RunConfig`: every categorical
    combination built from it) or :meth:`from_data` (a dataset and a model); or directly, with
    ``groups(values) -> Group`` for the categorical values.

    Attributes:
      space: names to ranges or choices (normalized, :func:`jaxnn.search.normalize`);
        ``learning_rate`` is required (a fixed value is fine).
      groups: the categorical values (a dict over :attr:`categorical`) -> :class:`Group`
        (called once per combination: the task caches groups).
      epochs: each trial's epochs (coarse-to-fine: the last stage's).
      batch_size, devices, divergence_factor: as in :func:`jaxnn.population.train_population`.
      key_seed: every trial trains from ``jax.random.key(key_seed)`` (the same initial weights
        and data order: common random numbers), unless the space varies ``seed``, which then is
        the trial's key seed. It also seeds the samplers (per trial number).
      member_names: the names a population carries per member.
      config: the config the groups are built from (:meth:`from_config`), else ``None``.
      metadata: what the search is, recorded in the study (a study holding different metadata
        is refused).
    """

    space: Mapping[str, Any]
    groups: Callable[[dict], Group]
    epochs: int
    batch_size: int = 64
    key_seed: int = 0
    devices: int | None = None
    divergence_factor: float = DIVERGENCE_FACTOR
    member_names: tuple[str, ...] = tuple(n for n in _population.HPARAM_NAMES if n != "dropout")
    config: Any = None
    metadata: Mapping[str, Any] | None = None
    _cache: dict = dataclasses.field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        spec = normalize(self.space)
        object.__setattr__(self, "space", spec)
        if int(self.epochs) < 1 or int(self.batch_size) < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, "
                             f"{self.batch_size}")
        unknown = set(self.member_names) - set(_population.HPARAM_NAMES)
        if unknown:
            raise ValueError(f"member_names: a population cannot vary {sorted(unknown)}")
        if "learning_rate" not in spec:
            raise ValueError("space needs a learning_rate (a fixed value is fine)")
        for name in self.member_names:
            if name in spec and not all(is_number(v) for v in getattr(spec[name], "values", ())):
                raise ValueError(f"space[{name!r}]: a per-member hyperparameter takes numbers")
            if name in spec:
                check_domain(name, spec[name])

    # ------------------------------------------------------------------ the space's parts
    @property
    def categorical(self) -> tuple[str, ...]:
        """The names that pick a group (every name not carried per member)."""
        return tuple(k for k in self.space if k not in self.member_names)

    @property
    def fixed(self) -> dict[str, Any]:
        """The names with one value (not Optuna parameters) and their values."""
        return {k: s.values[0] for k, s in self.space.items()
                if isinstance(s, Choice) and len(s.values) == 1}

    @property
    def free(self) -> dict[str, Spec]:
        """The names searched (ranges and choices of two or more values)."""
        fixed = self.fixed
        return {k: s for k, s in self.space.items() if k not in fixed}

    # ------------------------------------------------------------------ groups
    def group(self, values: Mapping[str, Any]) -> Group:
        """The group of the categorical ``values`` (names missing take the space's fixed
        values, then the config's), built once."""
        values = {**{k: v for k, v in self.fixed.items() if k in self.categorical},
                  **{k: v for k, v in values.items() if k in self.categorical}}
        key_of = getattr(self.groups, "key", None)
        key = key_of(values) if key_of is not None else tuple(sorted(values.items(), key=str))
        if key not in self._cache:
            self._cache[key] = self.groups(dict(values))
        return self._cache[key]

    def trial_names(self, group: Group) -> tuple[str, ...]:
        """The per-member names ``group``'s members carry: :attr:`member_names` without the
        optimizer hyperparameters its optimizer does not have (momentum for adam)."""
        key = ("trial_names", id(group.optimizer))
        if key not in self._cache:
            have = _optim.hyperparam_names(group.optimizer)
            self._cache[key] = tuple(n for n in self.member_names
                                     if n not in _population.OPTIMIZER_HPARAMS or n in have)
        return self._cache[key]

    def config_for(self, values: Mapping[str, Any]):
        """The :class:`jaxnn.config.RunConfig` of the categorical ``values`` (a task made
        :meth:`from_config` only)."""
        config_for = getattr(self.groups, "config_for", None)
        if config_for is None:
            raise TypeError("config_for: this task was not made from a RunConfig")
        return config_for({**{k: v for k, v in self.fixed.items() if k in self.categorical},
                           **{k: v for k, v in values.items() if k in self.categorical}})

    def trial_config(self, params: Mapping[str, Any]):
        """The :class:`jaxnn.config.RunConfig` that trains a trial with ``params`` alone (``jaxnn
        train`` with it retrains the trial): its group's config with its per-member values
        (``learning_rate`` as ``lr``; momentum and weight decay only where the optimizer takes
        them). A task made :meth:`from_config` only."""
        from jaxnn import config as _config

        cfg = self.config_for(params)
        have = _optim.hyperparam_names(_config.build_optimizer(cfg, steps_per_epoch=1))
        changes = {}
        for name, v in params.items():
            if name not in self.member_names:
                continue
            if name in _population.OPTIMIZER_HPARAMS and name not in have:
                continue
            changes[CONFIG_KEYS.get(name, name)] = int(v) if name == "seed" else v
        return cfg.replace(**changes)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_config(cls, config, space: Mapping[str, Any], *, epochs: int | None = None,
                    devices: int | None = None, build: Callable | None = None,
                    metadata: Mapping[str, Any] | None = None,
                    divergence_factor: float = DIVERGENCE_FACTOR) -> SearchTask:
        """A search over ``space`` around ``config`` (a :class:`jaxnn.config.RunConfig`).

        Categorical names are config keys (``activation``, ``optimizer``, ``arch``, ``hidden``,
        ``dropout``, ...); each combination trains the group ``build(config.replace(**values))``
        (``build``: :func:`jaxnn.config.build`; an ``arch`` value replaces ``hidden`` and a
        ``hidden`` value ``arch``). Per-member names are those of
        :data:`jaxnn.population.HPARAM_NAMES` but ``dropout``; ``learning_rate`` and ``l2``
        default to the config's ``lr`` and ``l2``; a searched ``init_scale`` replaces the
        config's. ``epochs`` (default the config's), ``batch_size`` and ``key_seed`` (the
        config's ``seed``) come from the config; ``metadata`` defaults to the config's keys
        but ``data_dir``, ``data_url`` and the run options.

        Example::

            cfg = RunConfig(epochs=10)
            task = SearchTask.from_config(cfg, {"learning_rate": (1e-3, 1.0),
                                                "arch": ["fc:64", "conv:8,pool,fc:32"]})
        """
        from jaxnn.config import RunConfig

        if not isinstance(config, RunConfig):
            raise TypeError(f"from_config: expected a RunConfig, got {type(config).__name__}")
        if not isinstance(space, Mapping):
            raise ValueError(f"space must be a non-empty mapping of names to ranges, got "
                             f"{space!r}")
        if config.augment is not None:
            raise ValueError("augment: a search trains populations, which do not augment yet")
        members = tuple(n for n in _population.HPARAM_NAMES if n != "dropout")
        for name in space:
            if name not in members and (name not in RunConfig.fields()
                                        or name in _NOT_CATEGORICAL):
                raise ValueError(f"space[{name!r}]: not a per-member hyperparameter "
                                 f"({', '.join(members)}) nor a config key a group can vary")
        space = {"learning_rate": config.lr, "l2": config.l2, **space}
        if metadata is None:
            metadata = {k: v for k, v in config.to_dict().items()
                        if k not in ("data_dir", "data_url", "devices", "keep_checkpoints",
                                     "tensorboard")}
        return cls(space=space, epochs=config.epochs if epochs is None else epochs,
                   groups=_FromConfig(config, build, per_member_scale="init_scale" in space),
                   batch_size=config.batch_size, key_seed=config.seed, devices=devices,
                   divergence_factor=divergence_factor, member_names=members, config=config,
                   metadata=metadata)

    @classmethod
    def from_data(cls, data, space: Mapping[str, Any], *, epochs: int, model=None,
                  optimizer=None, loss: str | Callable = "softmax_cross_entropy",
                  build: Callable[[dict], Mapping[str, Any]] | None = None,
                  batch_size: int = 64, key_seed: int = 0, devices: int | None = None,
                  divergence_factor: float = DIVERGENCE_FACTOR,
                  metadata: Mapping[str, Any] | None = None) -> SearchTask:
        """A search over ``space`` training ``model`` on ``data`` (no config).

        ``model``, ``optimizer`` and ``loss`` are those of
        :func:`jaxnn.population.train_population` (build the optimizer with a constant rate;
        each member's replaces it). Per-member names are
        :data:`jaxnn.population.HPARAM_NAMES` (``dropout`` only when ``model`` is a factory
        ``rate -> Model``); any other name is categorical: ``build(values)`` turns each
        combination into ``{"model": ..., "optimizer": ..., "loss": ..., "data": ...}`` (keys
        it leaves out default to the arguments).

        Example::

            task = SearchTask.from_data(ds, {"learning_rate": (1e-3, 1.0),
                                             "activation": ["relu", "tanh"]}, epochs=10,
                                        build=lambda v: {"model": mlp(
                                            [64, 32, 10], activation=v["activation"])})
        """
        factory = model is not None and not (hasattr(model, "init") and hasattr(model, "apply"))
        members = tuple(n for n in _population.HPARAM_NAMES if n != "dropout" or factory)
        task = cls(space=space, groups=_FromData(data, model, optimizer, loss, build),
                   epochs=epochs, batch_size=batch_size, key_seed=key_seed, devices=devices,
                   divergence_factor=divergence_factor, member_names=members, metadata=metadata)
        searched = [k for k in task.categorical if k in task.free]
        if build is None and searched:
            raise ValueError(f"space: {', '.join(searched)} change the model or optimizer; "
                             "pass build=")
        return task


class _FromConfig:
    """Groups built from a config: ``build(config.replace(**values))``, keyed by that config."""

    def __init__(self, config, build, *, per_member_scale: bool):
        from jaxnn import config as _config

        self.base = config.replace(init_scale=1.0) if per_member_scale else config
        self.build = _config.build if build is None else build

    def config_for(self, values: Mapping[str, Any]):
        changes = dict(values)
        if "arch" in changes and "hidden" not in changes:  # an arch replaces the hidden widths
            changes["hidden"] = _default("hidden")
        if "hidden" in changes and "arch" not in changes:
            changes["arch"] = None
        return self.base.replace(**changes)

    def key(self, values: Mapping[str, Any]):
        return self.config_for(values)

    def __call__(self, values: Mapping[str, Any]) -> Group:
        cfg = self.config_for(values)
        exp = self.build(cfg)
        return Group(exp.data, exp.model, exp.optimizer, exp.loss, cfg)


def _default(key: str):
    from jaxnn.config import RunConfig

    return next(f.default for f in dataclasses.fields(RunConfig) if f.name == key)


class _FromData:
    """Groups of one dataset and model; ``build(values)`` overrides per combination."""

    def __init__(self, data, model, optimizer, loss, build):
        self.data, self.model, self.optimizer, self.loss = data, model, optimizer, loss
        self.build = build

    def __call__(self, values: Mapping[str, Any]) -> Group:
        made = dict(self.build(dict(values))) if self.build is not None and values else {}
        optimizer = made.get("optimizer", self.optimizer)
        if optimizer is None:
            optimizer = _optim.momentum(0.1)
        return Group(made.get("data", self.data), made.get("model", self.model), optimizer,
                     made.get("loss", self.loss))
