"""Hyperparameter search: Optuna decides, jaxnn trains a whole batch of trials at once.

:func:`optimize` drives an Optuna study (TPE, CMA-ES, random, grid or coarse-to-fine) through its
ask-and-tell interface: each round asks for ``population`` trials and trains those that share
their categorical values as **one** population (:func:`jaxnn.population.train_population`),
reporting every epoch's validation loss (so Optuna's pruners can freeze members) and telling each
trial's final validation loss, the objective. The study lives in any Optuna storage (SQLite,
PostgreSQL, MySQL): the same call continues it, several processes share it. Without a study,
:func:`grid`, :func:`random`, :func:`run_trials` and :func:`coarse_to_fine` do the same in memory.

A *space* maps hyperparameter names to one of

====================================  =========================================================
``loguniform(low, high)``             a range sampled uniformly in ``log(value)``
``uniform(low, high)``                a range sampled uniformly in ``value``
``choice([a, b, ...])`` or a list     one of the listed values
a tuple ``(low, high)``               a range: log-uniform for ``learning_rate``, ``l2``,
                                      ``weight_decay`` and ``init_scale`` (:data:`LOG_SCALE`),
                                      uniform for anything else
a number                              a fixed value
====================================  =========================================================

Learning rates and regularization strengths act multiplicatively, so a range spanning decades is
searched log-uniformly: every decade gets the same share of the trials. Names a population can
vary are :data:`jaxnn.population.HPARAM_NAMES` (``learning_rate`` is required by
:func:`run_trials`; give it a fixed value to search only the others).

Example::

    space = {"learning_rate": (1e-4, 1.0), "l2": (1e-6, 1e-1)}
    trials = run_trials(random(space, 32, key=jax.random.key(0)), data=ds, epochs=10,
                        batch_size=64, key=jax.random.key(1))
    trials[0].params, trials[0].val_acc          # the best trial
    json.dumps(to_json(trials))                  # plain JSON

    res = coarse_to_fine(space, stages=2, trials=16, epochs=10, data=ds, key=jax.random.key(0))
    res.best, res.stages[1].space                # stage 2 searched a narrowed space

    res = optimize({**space, "activation": ["relu", "tanh"]}, data=ds, epochs=10, trials=64,
                   population=16, storage="sqlite:///study.db",
                   build=lambda v: {"model": jaxnn.models.mlp([64, 128, 10], v["activation"])})
    res.best, res.study                          # the best trial, the optuna.Study

Trials of one search share ``seed`` (the same initial weights and data order: common random
numbers) unless the space varies it, so their differences come from the hyperparameters.
"""

from __future__ import annotations

import itertools
import json
import math
import time
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optuna

from jaxnn import optim as _optim
from jaxnn import population as _population
from jaxnn import rundir as _rundir

__all__ = [
    "LOG_SCALE",
    "LogUniform",
    "Uniform",
    "Choice",
    "loguniform",
    "uniform",
    "choice",
    "normalize",
    "grid",
    "random",
    "Trial",
    "Stage",
    "SearchResult",
    "run_trials",
    "sort_trials",
    "narrow",
    "coarse_to_fine",
    "usable",
    "METHODS",
    "FINISHED",
    "Round",
    "StudyResult",
    "open_storage",
    "study_trials",
    "optimize",
    "to_json",
]

#: Names whose ``(low, high)`` ranges are searched log-uniformly.
LOG_SCALE = ("learning_rate", "l2", "weight_decay", "init_scale")


# --------------------------------------------------------------------------- the space
class LogUniform(NamedTuple):
    """A range sampled uniformly in ``log(value)``; ``0 < low <= high``."""

    low: float
    high: float


class Uniform(NamedTuple):
    """A range sampled uniformly in ``value``; ``low <= high``."""

    low: float
    high: float


class Choice(NamedTuple):
    """One of ``values`` (a fixed value is a choice of one)."""

    values: tuple


Spec = LogUniform | Uniform | Choice


def loguniform(low: float, high: float) -> LogUniform:
    """A log-uniform range ``[low, high]``, ``0 < low <= high``."""
    low, high = float(low), float(high)
    if not (0 < low <= high and math.isfinite(high)):
        raise ValueError(f"loguniform needs 0 < low <= high < inf, got ({low}, {high})")
    return LogUniform(low, high)


def uniform(low: float, high: float) -> Uniform:
    """A uniform range ``[low, high]``, ``low <= high``."""
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ValueError(f"uniform needs finite low <= high, got ({low}, {high})")
    return Uniform(low, high)


def choice(values: Sequence) -> Choice:
    """One of ``values`` (a non-empty sequence)."""
    values = tuple(_scalar(v) for v in values)
    if not values:
        raise ValueError("choice needs at least one value")
    return Choice(values)


def _scalar(v):
    return v.item() if isinstance(v, np.generic | np.ndarray) else v


def _is_number(v) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def _spec(name: str, entry) -> Spec:
    try:
        if isinstance(entry, LogUniform | Uniform | Choice):
            # Re-validate: a NamedTuple can be built without the factory's checks.
            return (loguniform(*entry) if isinstance(entry, LogUniform) else
                    uniform(*entry) if isinstance(entry, Uniform) else choice(entry.values))
        if isinstance(entry, tuple):
            if len(entry) != 2 or not all(_is_number(v) for v in entry):
                raise ValueError(f"a range is a tuple (low, high) of two numbers, got {entry!r}")
            return loguniform(*entry) if name in LOG_SCALE else uniform(*entry)
        if isinstance(entry, list):
            return choice(entry)
        if _is_number(entry):
            return Choice((_scalar(entry),))
        if isinstance(entry, str | bool) and name not in _population.HPARAM_NAMES:
            return Choice((entry,))  # a fixed model or optimizer choice, e.g. "relu"
    except ValueError as e:
        raise ValueError(f"space[{name!r}]: {e}") from None
    raise ValueError(f"space[{name!r}]: expected (low, high), a list, a number, or loguniform/"
                     f"uniform/choice, got {entry!r}")


def normalize(space: Mapping[str, Any]) -> dict[str, Spec]:
    """The space with every entry as a :class:`LogUniform`, :class:`Uniform` or
    :class:`Choice` (see the module docstring for the accepted forms)."""
    if not isinstance(space, Mapping) or not space:
        raise ValueError(f"space must be a non-empty mapping of names to ranges, got {space!r}")
    return {str(k): _spec(str(k), v) for k, v in space.items()}


def grid(space: Mapping[str, Any], *, points: int | None = None) -> list[dict]:
    """Every combination of the space's values (the cartesian product, the last name varying
    fastest).

    Lists, choices and fixed values are used as given; a range needs ``points``: that many values
    from ``low`` to ``high``, evenly spaced in ``log(value)`` for :class:`LogUniform` ranges and in
    ``value`` for :class:`Uniform` ones (``points=1``: the range's (geometric) middle).

    Example::

        grid({"learning_rate": [0.01, 0.1], "l2": [0.0, 1e-4, 1e-3]})   # 6 trials
        grid({"learning_rate": (1e-3, 1e-1)}, points=3)                 # 0.001, 0.01, 0.1
    """
    spec = normalize(space)
    if points is not None and int(points) < 1:
        raise ValueError(f"points must be >= 1, got {points}")
    axes = []
    for name, s in spec.items():
        if isinstance(s, Choice):
            axes.append(list(s.values))
            continue
        if points is None:
            raise ValueError(f"grid: space[{name!r}] is a range; pass points=K to place K values "
                             "on it, or give a list of values")
        make = np.geomspace if isinstance(s, LogUniform) else np.linspace
        if int(points) == 1:  # the (geometric) middle of the range
            vals = make(s.low, s.high, 3)[1:2]
        else:
            vals = make(s.low, s.high, int(points))
            vals[0], vals[-1] = s.low, s.high  # exactly the bounds, no rounding past them
        axes.append([float(v) for v in vals])
    return [dict(zip(spec, combo, strict=True)) for combo in itertools.product(*axes)]


def random(space: Mapping[str, Any], n: int, *, key: jax.Array) -> list[dict]:
    """``n`` trials drawn independently from the space.

    :class:`LogUniform` entries are ``exp(U(log low, log high))``, :class:`Uniform` entries
    ``U(low, high)``, :class:`Choice` entries uniform over the values. Deterministic for a given
    ``key``; each name draws from its own stream (``fold_in(key, crc32(name))``), so adding a name
    to the space leaves the others' values unchanged.
    """
    spec = normalize(space)
    n = int(n)
    if n < 1:
        raise ValueError(f"random: n must be >= 1, got {n}")
    cols = {}
    for name, s in spec.items():
        k = jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)
        if isinstance(s, Choice):
            idx = np.asarray(jax.random.randint(k, (n,), 0, len(s.values)))
            cols[name] = [s.values[i] for i in idx]
            continue
        u = np.asarray(jax.random.uniform(k, (n,)), np.float64)
        if isinstance(s, LogUniform):
            lo, hi = math.log(s.low), math.log(s.high)
            v = np.exp(lo + u * (hi - lo))
        else:
            v = s.low + u * (s.high - s.low)
        cols[name] = [float(x) for x in np.clip(v, s.low, s.high)]
    return [{name: cols[name][i] for name in spec} for i in range(n)]


# --------------------------------------------------------------------------- running trials
class Trial(NamedTuple):
    """One trained configuration. ``params`` are its hyperparameters; ``val_acc``/``val_loss``/
    ``train_loss`` are of its last healthy epoch (``None`` when it has none); ``status`` is the
    population's: ``"ok"``, ``"diverged"`` (:func:`jaxnn.train.diverged`: loss NaN/inf or above 3x
    its initial loss, or NaN/inf parameters; frozen at once), ``"pruned"`` (stopped by a pruner)
    or ``"stopped"`` (early stop). From :func:`optimize`: ``number`` is the Optuna trial number,
    ``epochs`` the epochs it trained, ``key_seed`` the seed of its PRNG key
    (``jax.random.key(key_seed)``: initial parameters, data order, dropout) and ``stage`` its
    coarse-to-fine stage (from 0). ``to_json(trial)`` is a plain dict."""

    params: dict
    val_acc: float | None
    val_loss: float | None
    train_loss: float | None
    status: str
    number: int | None = None
    epochs: int | None = None
    key_seed: int | None = None
    stage: int | None = None


class Stage(NamedTuple):
    """One stage of :func:`coarse_to_fine`: the space it sampled, its epochs, its sorted trials."""

    space: dict
    epochs: int
    trials: list


class SearchResult(NamedTuple):
    """What :func:`coarse_to_fine` returns: the last stage's ``trials`` (sorted, best first), its
    ``best`` trial, and every ``stage``."""

    trials: list
    best: Trial
    stages: list


def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def usable(trial: Trial) -> bool:
    """A candidate for the best trial: not diverged and with a validation loss (a learning rate
    that blows up is not a candidate, whatever it reached before)."""
    return trial.status != "diverged" and trial.val_loss is not None


def sort_trials(trials: Sequence[Trial]) -> list[Trial]:
    """Best first: by validation loss (lower first: the objective), ties by validation accuracy
    (higher first). Trials that are not :func:`usable` come after all the others.

    The validation loss is the objective everywhere in this module (and the value reported to
    Optuna and its pruners every epoch): it is smoother than the accuracy on a few hundred
    validation examples, where many trials tie."""

    def rank(t: Trial):
        acc = t.val_acc if t.val_acc is not None else -math.inf
        loss = t.val_loss if t.val_loss is not None else math.inf
        return (not usable(t), loss, -acc)

    return sorted(trials, key=rank)


def _hparams(trials: Sequence[Mapping]) -> dict[str, np.ndarray]:
    if not trials:
        raise ValueError("run_trials: no trials given")
    names = list(trials[0])
    for i, t in enumerate(trials):
        if set(t) != set(names):
            raise ValueError(f"run_trials: every trial needs the same names; trial 0 has "
                             f"{sorted(names)}, trial {i} has {sorted(t)}")
    if "learning_rate" not in names:
        raise ValueError("run_trials: every trial needs a learning_rate (give the space a fixed "
                         "value, e.g. {'learning_rate': 0.05, ...})")
    unknown = set(names) - set(_population.HPARAM_NAMES)
    if unknown:
        raise ValueError(f"run_trials: a population cannot vary {sorted(unknown)}; valid names: "
                         f"{', '.join(_population.HPARAM_NAMES)}")
    hp = {k: np.asarray([t[k] for t in trials]) for k in names}
    hp.setdefault("seed", np.zeros(len(trials), np.int32))  # common random numbers
    return hp


def run_trials(
    trials: Sequence[Mapping],
    *,
    data,
    epochs: int,
    batch_size: int = 64,
    key: jax.Array,
    model=None,
    loss: str | Callable = "softmax_cross_entropy",
    optimizer=None,
    devices: int | None = None,
    divergence_factor: float = 3.0,
) -> list[Trial]:
    """Train every trial at once as one population and return :class:`Trial` records sorted by
    validation accuracy (:func:`sort_trials`).

    ``trials`` are dicts of hyperparameters (from :func:`grid` or :func:`random`), all with the
    same names, among them ``learning_rate``. Without a ``seed`` every trial starts from the same
    weights (``fold_in(key, 0)``). A trial whose loss turns NaN/inf or exceeds
    ``divergence_factor`` times its initial loss is frozen at once (status ``"diverged"``) without
    disturbing the others. The other arguments are those of
    :func:`jaxnn.population.train_population` (the optimizer's learning rate is replaced per trial,
    so build it with a constant one).
    """
    trials = [dict(t) for t in trials]
    res = _population.train_population(
        data=data, hparams=_hparams(trials), epochs=epochs, batch_size=batch_size, key=key,
        model=model, loss=loss, optimizer=optimizer, devices=devices,
        divergence_factor=divergence_factor,
    )
    f = res.final
    out = [
        Trial(params={k: _scalar(v) for k, v in t.items()}, val_acc=_num(f["val_acc"][i]),
              val_loss=_num(f["val_loss"][i]), train_loss=_num(f["train_loss"][i]),
              status=str(res.status[i]))
        for i, t in enumerate(trials)
    ]
    return sort_trials(out)


# --------------------------------------------------------------------------- coarse to fine
def narrow(space: Mapping[str, Any], trials: Sequence[Trial], *, top_k: int | None = None,
           widen: float = 0.25, min_width: float = 0.2) -> dict[str, Spec]:
    """The space narrowed around the best trials.

    For each range, take the ``top_k`` best healthy trials (default a quarter of the trials, at
    least 2) and span their values — in ``log(value)`` for :class:`LogUniform` — then pad each side
    by ``widen`` times that span, or by enough to keep at least ``min_width`` of the old width,
    whichever is more; the result is clipped to the old range, so it lies inside it and contains
    every top trial (the best included). A :class:`Choice` keeps the values the top trials used.
    With no healthy trial the space is returned unchanged.
    """
    spec = normalize(space)
    if widen < 0 or not 0 <= min_width <= 1:
        raise ValueError(f"narrow: need widen >= 0 and 0 <= min_width <= 1, got {widen}, "
                         f"{min_width}")
    healthy = [t for t in sort_trials(trials) if usable(t)]
    if not healthy:
        return spec
    k = max(2, len(trials) // 4) if top_k is None else int(top_k)
    if k < 1:
        raise ValueError(f"narrow: top_k must be >= 1, got {top_k}")
    top = healthy[:k]
    out: dict[str, Spec] = {}
    for name, s in spec.items():
        vals = [t.params[name] for t in top if name in t.params]
        if not vals:  # a conditional name none of the top trials has (e.g. momentum for adam)
            out[name] = s
            continue
        if isinstance(s, Choice):
            out[name] = Choice(tuple(v for v in s.values if v in vals))
            continue
        to, back = ((math.log, math.exp) if isinstance(s, LogUniform) else
                    (float, float))
        lo_old, hi_old = to(s.low), to(s.high)
        tv = [to(min(max(float(v), s.low), s.high)) for v in vals]
        span = max(tv) - min(tv)
        pad = max(widen * span, (min_width * (hi_old - lo_old) - span) / 2, 0.0)
        lo, hi = max(lo_old, min(tv) - pad), min(hi_old, max(tv) + pad)
        # Keep a bound that was not moved exactly; back(to(x)) may round a hair past the values.
        low = s.low if lo <= lo_old else min(max(back(lo), s.low), min(vals))
        high = s.high if hi >= hi_old else max(min(back(hi), s.high), max(vals))
        out[name] = type(s)(float(low), float(high))
    return out


def coarse_to_fine(
    space: Mapping[str, Any],
    *,
    stages: int = 2,
    trials: int = 16,
    epochs: int | Sequence[int] = 10,
    data,
    key: jax.Array,
    top_k: int | None = None,
    widen: float = 0.25,
    batch_size: int = 64,
    model=None,
    loss: str | Callable = "softmax_cross_entropy",
    optimizer=None,
    devices: int | None = None,
    divergence_factor: float = 3.0,
) -> SearchResult:
    """Search in ``stages`` rounds, each ONE population of ``trials`` random trials: the first
    over the whole space for few epochs, each next one over the space :func:`narrow`-ed around the
    previous stage's best trials.

    ``epochs`` is either one number per stage or the last stage's epochs ``E``, in which case the
    earlier stages train ``ceil(E / 3)`` epochs. A trial whose loss exceeds ``divergence_factor``
    times its initial loss is stopped at once (status ``"diverged"``). Returns the last stage's
    sorted trials and best trial, and every stage's space, epochs and trials.
    """
    stages, trials = int(stages), int(trials)
    if stages < 1 or trials < 1:
        raise ValueError(f"coarse_to_fine: stages and trials must be >= 1, got {stages}, {trials}")
    if isinstance(epochs, int | np.integer):
        per_stage = [max(1, -(-int(epochs) // 3))] * (stages - 1) + [int(epochs)]
    else:
        per_stage = [int(e) for e in epochs]
        if len(per_stage) != stages:
            raise ValueError(f"coarse_to_fine: {len(per_stage)} epoch counts for {stages} stages")
    if min(per_stage) < 1:
        raise ValueError(f"coarse_to_fine: epochs must be >= 1, got {per_stage}")
    spec = normalize(space)
    sample_key, train_key = jax.random.split(key)
    done: list[Stage] = []
    for s, ep in enumerate(per_stage):
        if done:
            spec = narrow(spec, done[-1].trials, top_k=top_k, widen=widen)
        sampled = random(spec, trials, key=jax.random.fold_in(sample_key, s))
        ranked = run_trials(sampled, data=data, epochs=ep, batch_size=batch_size, key=train_key,
                            model=model, loss=loss, optimizer=optimizer, devices=devices,
                            divergence_factor=divergence_factor)
        done.append(Stage(space=spec, epochs=ep, trials=ranked))
    return SearchResult(trials=done[-1].trials, best=done[-1].trials[0], stages=done)


# --------------------------------------------------------------------------- Optuna studies
#: The methods of :func:`optimize`.
METHODS = ("tpe", "cmaes", "random", "grid", "coarse-to-fine")
#: Trial states that count as done: told with a value, or frozen early (pruned or diverged).
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


class Round(NamedTuple):
    """What :func:`optimize` reports after every round (``on_round``): the round's ``number``
    (from 1, in this call), the study's ``finished`` trials of ``total``, the ``best`` trial so far
    (``None`` while no trial is usable), how many of the round's ``members`` ended ``alive``
    (neither pruned nor diverged), the round's ``groups`` (populations) and ``seconds``."""

    number: int
    finished: int
    total: int
    best: Trial | None
    alive: int
    members: int
    groups: int
    seconds: float


class StudyResult(NamedTuple):
    """What :func:`optimize` returns: every finished ``trials`` of the study, sorted (best
    first, :func:`sort_trials`), the ``best`` usable one (``None`` if every trial diverged), the
    :class:`optuna.Study` and the number of trials ``trained`` by this call."""

    trials: list
    best: Trial | None
    study: Any
    trained: int


def open_storage(storage: str | optuna.storages.BaseStorage | None):
    """An Optuna storage from a URL (``sqlite:///path.db``, ``postgresql://...``,
    ``mysql://...``), a storage object (returned as is) or ``None`` (in memory).

    SQLite files are opened in write-ahead-log mode (``journal_mode=WAL``, ``synchronous=NORMAL``:
    a committed trial survives a killed process; writes cost a few milliseconds instead of a
    synchronous flush each) with a 60 s lock timeout, so several processes on one machine can
    share the file."""
    if storage is None:
        return optuna.storages.InMemoryStorage()
    if not isinstance(storage, str):
        return storage
    if not storage.startswith("sqlite"):
        return _rdb(storage, {})
    import sqlalchemy

    rdb = _rdb(storage, {"connect_args": {"timeout": 60}})

    def _pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(rdb.engine, "connect", _pragmas)
    rdb.engine.dispose()  # connections opened from now on get the pragmas
    return rdb


def _rdb(url: str, engine_kwargs: dict, attempts: int = 5):
    """``RDBStorage(url)``. Processes that open a new database at the same moment race to create
    its tables (one of them fails on the schema-version row); the loser opens it again once the
    tables exist."""
    import sqlalchemy

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


class _SeedPerTrial(optuna.samplers.BaseSampler):
    """A sampler re-created for every trial with the seed ``hash(seed, trial number)``.

    Trial numbers are unique in a study's storage, so several processes sharing a study (or a
    search continued after a kill) never draw the same random numbers, and a search run by one
    process is reproducible. ``make(seed)`` builds the inner sampler (TPE and CMA-ES keep their
    state in the study, so a fresh one per trial loses nothing)."""

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int):
        self._make, self._seed, self._inner = make, int(seed), {}

    def _for(self, trial) -> optuna.samplers.BaseSampler:
        inner = self._inner.get(trial.number)
        if inner is None:
            seed = zlib.crc32(f"{self._seed}:{trial.number}".encode())
            inner = self._inner[trial.number] = self._make(seed)
        return inner

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self._for(trial).after_trial(study, trial, state, values)
        self._inner.pop(trial.number, None)


class _Grid(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its ``study.stop()`` (which only works inside
    ``Study.optimize``): :func:`optimize` stops when the study holds the whole grid."""

    def after_trial(self, study, trial, state, values):
        pass


class _Within(optuna.samplers.RandomSampler):
    """Random sampling inside a narrowed space (a coarse-to-fine stage); the trial records the
    full space's distributions, which contain the narrowed ones."""

    def __init__(self, narrowed: dict, seed: int):
        super().__init__(seed=seed)
        self._narrowed = narrowed

    def sample_independent(self, study, trial, param_name, param_distribution):
        return super().sample_independent(study, trial, param_name,
                                          self._narrowed.get(param_name, param_distribution))


def _distribution(s: Spec):
    if isinstance(s, LogUniform):
        return optuna.distributions.FloatDistribution(s.low, s.high, log=True)
    if isinstance(s, Uniform):
        return optuna.distributions.FloatDistribution(s.low, s.high)
    return optuna.distributions.CategoricalDistribution(list(s.values))


def _pruner(pruner):
    if pruner is None or pruner == "none":
        return optuna.pruners.NopPruner()
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5)
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    raise ValueError(f"pruner must be 'median', 'none' or an optuna pruner, got {pruner!r}")


def _grid_values(spec: dict[str, Spec], points: int | None) -> dict[str, list]:
    """Every name's grid values (as :func:`grid` places them)."""
    values: dict[str, list] = {}
    for name in spec:
        values[name] = sorted({t[name] for t in grid({name: spec[name]}, points=points)},
                              key=lambda v: (str(type(v)), v))
    return values


def _member_names(model) -> tuple[str, ...]:
    """The names a population carries per member: ``dropout`` only for a model factory."""
    factory = model is not None and not (hasattr(model, "init") and hasattr(model, "apply"))
    return tuple(n for n in _population.HPARAM_NAMES if n != "dropout" or factory)


class _Group(NamedTuple):
    """The model, optimizer and loss of one combination of categorical values, and the member
    names its optimizer can take."""

    model: Any
    optimizer: Any
    loss: Any
    names: tuple[str, ...]


def _bucket(m: int, devices: int | None) -> int:
    """Members trained for a group of ``m``: the next power of two (few distinct shapes, so few
    compilations), a multiple of ``devices``."""
    size = 1 << (m - 1).bit_length()
    d = devices or 1
    return -(-size // d) * d


def _result_trial(ft, fixed: dict) -> Trial | None:
    """A finished Optuna trial as a :class:`Trial` (``None`` if not made by :func:`optimize`)."""
    attrs = ft.user_attrs
    if "status" not in attrs:
        return None
    value = ft.value if ft.state == optuna.trial.TrialState.COMPLETE else attrs.get("val_loss")
    return Trial(params={**fixed, **ft.params}, val_acc=attrs.get("val_acc"),
                 val_loss=None if value is None else _num(value),
                 train_loss=attrs.get("train_loss"), status=attrs["status"], number=ft.number,
                 epochs=attrs.get("epochs"), key_seed=attrs.get("key_seed"),
                 stage=attrs.get("stage"))


def study_trials(study, *, fixed: Mapping[str, Any] | None = None) -> list[Trial]:
    """Every finished trial that :func:`optimize` recorded in ``study``, sorted best first.
    ``fixed`` adds the space's fixed values (not Optuna parameters) to every trial's params."""
    out = [_result_trial(ft, dict(fixed or {}))
           for ft in study.get_trials(deepcopy=False, states=FINISHED)]
    return sort_trials([t for t in out if t is not None])


def _check_metadata(study, metadata: dict) -> None:
    """Record what the search is (model, data, epochs, space) in a new study; refuse to continue
    a study that another search made."""
    if not metadata:
        return
    metadata = json.loads(json.dumps(to_json(metadata)))
    old = study.user_attrs.get("jaxnn_search")
    if old is None:
        study.set_user_attr("jaxnn_search", metadata)
        return
    diff = sorted(k for k in set(old) | set(metadata) if old.get(k) != metadata.get(k))
    if diff:
        k = diff[0]
        raise ValueError(f"study {study.study_name!r} holds a different search: {k} is "
                         f"{old.get(k)!r} there and {metadata.get(k)!r} here; choose another "
                         "study name (or storage) or the same settings")


def optimize(
    space: Mapping[str, Any],
    *,
    data,
    epochs: int,
    trials: int,
    key_seed: int = 0,
    method: str = "tpe",
    population: int = 16,
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str = "jaxnn-search",
    pruner: str | Any = "median",
    batch_size: int = 64,
    model=None,
    loss: str | Callable = "softmax_cross_entropy",
    optimizer=None,
    build: Callable[[dict], Mapping[str, Any]] | None = None,
    grid_points: int | None = None,
    stages: int = 2,
    coarse_epochs: int | None = None,
    top_k: int | None = None,
    devices: int | None = None,
    divergence_factor: float = 3.0,
    metadata: Mapping[str, Any] | None = None,
    trial_attrs: Callable[[Trial], Mapping[str, Any]] | None = None,
    on_round: Callable[[Round], None] | None = None,
) -> StudyResult:
    """Search ``space`` with an Optuna study, training each round of trials as populations.

    Each round asks the study for up to ``population`` trials (Optuna's ask-and-tell), trains
    the trials that share their categorical values as ONE population
    (:func:`jaxnn.population.train_population`), reports every epoch's validation loss to each
    trial (so the ``pruner`` can freeze members, status ``"pruned"``) and tells the study each
    trial's final validation loss, the objective (minimized). Rounds repeat until the study
    holds ``trials`` finished trials (complete or pruned) — counting those of earlier calls and
    of other processes: calling again with the same ``storage`` and ``study_name`` continues the
    study, and several processes can share one study (each asks its own trials; Optuna numbers
    them uniquely). A killed process loses at most its round in flight: its trials stay
    ``RUNNING`` in the study and are neither counted nor waited for. Diverged trials are told
    as pruned (status ``"diverged"``), so samplers learn to avoid them and they are never the
    best.

    Args:
      space: names to ranges or choices (see the module docstring). Names a population carries
        per member (:data:`jaxnn.population.HPARAM_NAMES`; ``dropout`` only when ``model`` is a
        factory ``rate -> Model``) vary inside a population; every other name (e.g.
        ``activation``, ``optimizer``) is categorical: ``build(values)`` turns each combination
        into ``{"model": ..., "optimizer": ..., "loss": ...}`` (keys it leaves out default to
        the arguments). ``learning_rate`` is required (a fixed value is fine).
        ``momentum``/``weight_decay`` are asked only for optimizers that carry them.
      data, epochs, batch_size, model, loss, optimizer, devices, divergence_factor: as in
        :func:`jaxnn.population.train_population`.
      trials: the number of finished trials the study should hold (``grid``: at most the grid
        size; ``coarse-to-fine``: per stage).
      key_seed: every trial trains from ``jax.random.key(key_seed)`` (the same initial weights
        and data order: common random numbers), unless the space varies ``seed``, which then
        is the trial's key seed. It also seeds the samplers (per trial number).
      method: ``tpe`` (:class:`optuna.samplers.TPESampler`), ``cmaes``
        (:class:`optuna.samplers.CmaEsSampler`, population size = ``population``), ``random``,
        ``grid`` (every combination, ``grid_points`` values on each range) or
        ``coarse-to-fine`` (``stages`` random stages, each narrowed around the previous
        stage's best ``top_k`` trials (:func:`narrow`); the earlier stages train
        ``coarse_epochs``, default ``ceil(epochs / 3)``).
      population: trials asked per round.
      storage, study_name: the study (:func:`open_storage`; ``None``: in memory).
      pruner: ``"median"`` (:class:`optuna.pruners.MedianPruner`), ``"none"`` or a pruner.
      metadata: what the search is (recorded in the study; a study holding different metadata
        is refused).
      trial_attrs: extra user attributes of each trial (e.g. the command that retrains it).
      on_round: called after every round with a :class:`Round`.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "cmaes":
        try:
            import cmaes  # noqa: F401  (Optuna's CMA-ES sampler runs on it)
        except ImportError:
            raise ValueError("method 'cmaes' needs the cmaes package: pip install cmaes (or "
                             "jaxnn[cmaes])") from None
    trials, population, epochs = int(trials), int(population), int(epochs)
    if trials < 1 or population < 1 or epochs < 1:
        raise ValueError(f"trials, population and epochs must be >= 1, got {trials}, "
                         f"{population}, {epochs}")
    spec = normalize(space)
    if "learning_rate" not in spec:
        raise ValueError("space needs a learning_rate (a fixed value is fine)")
    pruner = _pruner(pruner)
    member_names = _member_names(model)
    for name in _population.HPARAM_NAMES:
        if name in spec and name in member_names and not all(
                _is_number(v) for v in getattr(spec[name], "values", ())):
            raise ValueError(f"space[{name!r}]: a per-member hyperparameter takes numbers")
    fixed = {k: s.values[0] for k, s in spec.items() if isinstance(s, Choice) and
             len(s.values) == 1}
    free = {k: s for k, s in spec.items() if k not in fixed}
    groups_by = [k for k in spec if k not in member_names]
    if build is None and any(k in free for k in groups_by):
        raise ValueError(f"space: {', '.join(k for k in groups_by if k in free)} change the "
                         "model or optimizer; pass build=")
    dists = {k: _distribution(s) for k, s in free.items()}

    stage_epochs = [epochs]
    if method == "coarse-to-fine":
        stages = int(stages)
        if stages < 1:
            raise ValueError(f"stages must be >= 1, got {stages}")
        coarse = max(1, -(-epochs // 3)) if coarse_epochs is None else int(coarse_epochs)
        stage_epochs = [coarse] * (stages - 1) + [epochs]
    total = trials * len(stage_epochs)
    if method == "grid":
        values = _grid_values(free, grid_points) if free else {}
        total = min(trials, math.prod(len(v) for v in values.values()))
    narrowed: dict = {}
    makers = {
        "tpe": lambda s: optuna.samplers.TPESampler(seed=s),
        "cmaes": lambda s: optuna.samplers.CmaEsSampler(seed=s, popsize=max(2, population),
                                                        warn_independent_sampling=False),
        "random": lambda s: optuna.samplers.RandomSampler(seed=s),
        "coarse-to-fine": lambda s: _Within(narrowed, s),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # One grid sampler: its shuffled grid order must be the same for every trial (its
        # first trials take grid point number = trial number, unique across processes).
        sampler = (_Grid(values, seed=key_seed) if method == "grid" else
                   _SeedPerTrial(makers[method], key_seed))
        study = optuna.create_study(storage=open_storage(storage), study_name=study_name,
                                    direction="minimize", load_if_exists=True, pruner=pruner,
                                    sampler=sampler)
    _check_metadata(study, {**dict(metadata or {}), "method": method,
                            "space": {k: to_json(s) for k, s in spec.items()},
                            "epochs": stage_epochs})

    groups: dict[tuple, _Group] = {}

    def group_for(values: dict) -> _Group:
        k = tuple(values[n] for n in groups_by)
        if k not in groups:
            made = dict(build(dict(values))) if build is not None and values else {}
            g_model = made.get("model", model)
            g_opt = made.get("optimizer", optimizer)
            if g_opt is None:
                g_opt = _optim.momentum(0.1)
            have = _optim.hyperparam_names(g_opt)
            names = tuple(n for n in member_names if n not in _population.OPTIMIZER_HPARAMS
                          or n in have)
            groups[k] = _Group(g_model, g_opt, made.get("loss", loss), names)
        return groups[k]

    trained, number = 0, 0
    while True:
        done = study.get_trials(deepcopy=False, states=FINISHED)
        stage, ask = 0, min(population, total - len(done))
        if method == "coarse-to-fine":
            stage, missing, space_now = _stage(done, trials, len(stage_epochs), free, fixed,
                                               top_k)
            ask = min(population, missing)
            narrowed.clear()
            narrowed.update({k: _distribution(v) for k, v in space_now.items()})
        if ask <= 0:
            break
        number += 1
        t0 = time.perf_counter()
        alive, members, n_groups = _round(
            study, ask, dists=dists, fixed=fixed, groups_by=groups_by,
            group_for=group_for, data=data, epochs=stage_epochs[stage], batch_size=batch_size,
            key_seed=key_seed, devices=devices, divergence_factor=divergence_factor,
            stage=stage if method == "coarse-to-fine" else None, trial_attrs=trial_attrs)
        trained += members
        if on_round is not None:
            done = study_trials(study, fixed=fixed)
            best = next((t for t in done if usable(t)), None)
            on_round(Round(number, len(done), total, best, alive, members, n_groups,
                           time.perf_counter() - t0))
    ranked = study_trials(study, fixed=fixed)
    return StudyResult(ranked, next((t for t in ranked if usable(t)), None), study, trained)


def _suggest(trial, name: str, dist):
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)


def _stage(done, trials: int, stages: int, free: dict, fixed: dict, top_k):
    """Coarse-to-fine: the stage to work on (the first holding fewer than ``trials`` finished
    trials), how many it misses, and its space: ``free`` narrowed around the previous stage's
    best trials (:func:`narrow`). ``(stages, 0, {})`` when every stage is complete."""
    per_stage = [sum(1 for t in done if t.user_attrs.get("stage") == s) for s in range(stages)]
    stage = next((s for s, c in enumerate(per_stage) if c < trials), stages)
    if stage == stages:
        return stage, 0, {}
    if stage == 0:
        return 0, trials - per_stage[0], dict(free)
    prev = [_result_trial(ft, fixed) for ft in done if ft.user_attrs.get("stage") == stage - 1]
    return stage, trials - per_stage[stage], narrow(free, [t for t in prev if t is not None],
                                                    top_k=top_k)


def _round(study, ask: int, *, dists, fixed, groups_by, group_for, data, epochs,
           batch_size, key_seed, devices, divergence_factor, stage, trial_attrs):
    """Ask ``ask`` trials, train them (one population per categorical combination), tell the
    study. Returns (members alive at the end, members trained, populations)."""
    asked, told = [], set()
    try:
        by_group: dict[tuple, list] = {}
        categorical = {k: d for k, d in dists.items() if k in groups_by}
        for _ in range(ask):
            trial = study.ask(categorical)
            if stage is not None:
                trial.set_user_attr("stage", stage)
            values = {**fixed, **trial.params}
            g = group_for({k: values[k] for k in groups_by})
            for name in g.names:
                if name in dists:
                    values[name] = _suggest(trial, name, dists[name])
            asked.append(trial)
            by_group.setdefault(tuple(values[k] for k in groups_by), []).append((trial, values))
        alive = 0
        for members in by_group.values():
            g = group_for({k: members[0][1][k] for k in groups_by})
            alive += _train_group(study, members, g, data=data, epochs=epochs,
                                  batch_size=batch_size, key_seed=key_seed, devices=devices,
                                  divergence_factor=divergence_factor, told=told,
                                  trial_attrs=trial_attrs, stage=stage)
        return alive, len(asked), len(by_group)
    except BaseException:
        for trial in asked:  # never leave a trial of ours RUNNING when we can say it failed
            if trial.number not in told:
                try:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL,
                               skip_if_finished=True)
                except Exception:  # the storage itself failed: the trial stays RUNNING
                    pass
        raise


def _train_group(study, members, g: _Group, *, data, epochs, batch_size, key_seed, devices,
                 divergence_factor, told, trial_attrs, stage) -> int:
    """Train one group's trials as one population (padded to :func:`_bucket` members with copies
    of the first); report, prune and tell. Returns the members that ended alive."""
    m = len(members)
    size = _bucket(m, devices)
    rows = [v for _, v in members] + [members[0][1]] * (size - m)
    names = [n for n in g.names if n in rows[0] and n != "seed"]
    hparams = {n: np.asarray([r[n] for r in rows], np.float64) for n in names}
    seeds = [int(r.get("seed", key_seed)) for r in rows]
    keys = jnp.stack([jax.random.key(s) for s in seeds])
    trials = [t for t, _ in members]
    prune = not isinstance(study.pruner, optuna.pruners.NopPruner)

    def on_epoch(epoch, metrics, trained):
        stop = np.zeros(size, bool)
        for j, trial in enumerate(trials):
            if trained[j]:
                trial.report(float(metrics["val_loss"][j]), epoch)
                stop[j] = prune and trial.should_prune()
        return stop

    res = _population.train_population(
        data=data, hparams=hparams, epochs=epochs, batch_size=batch_size, key=keys,
        model=g.model, loss=g.loss, optimizer=g.optimizer, devices=devices,
        divergence_factor=divergence_factor, on_epoch=on_epoch)
    alive = 0
    for j, (trial, values) in enumerate(members):
        status = str(res.status[j])
        f = {k: _num(res.final[k][j]) for k in ("val_acc", "val_loss", "train_loss")}
        record = Trial(params={k: _scalar(v) for k, v in values.items()}, status=status,
                       number=trial.number, epochs=int(res.epochs[j]), key_seed=seeds[j],
                       stage=stage, **f)
        attrs = {"status": status, "val_acc": f["val_acc"], "val_loss": f["val_loss"],
                 "train_loss": f["train_loss"], "epochs": record.epochs, "key_seed": seeds[j]}
        if trial_attrs is not None:
            attrs.update(trial_attrs(record))
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        if status in ("ok", "stopped") and f["val_loss"] is not None:
            study.tell(trial, f["val_loss"])
            alive += 1
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        told.add(trial.number)
    return alive


# --------------------------------------------------------------------------- JSON
def to_json(obj):
    """Plain JSON data from search objects: a :class:`Trial` becomes a dict, a range
    ``{"loguniform": [low, high]}``/``{"uniform": [low, high]}``, a choice ``{"choice": [...]}``,
    NaN/inf ``None``; containers are converted recursively."""
    return _rundir.jsonable(obj, convert=_spec_json)


def _spec_json(obj):
    """A search space entry as JSON: ``{"loguniform": [low, high]}``, ``{"choice": [...]}``."""
    if isinstance(obj, LogUniform | Uniform):
        return {type(obj).__name__.lower(): [obj.low, obj.high]}
    if isinstance(obj, Choice):
        return {"choice": list(obj.values)}
    return obj
