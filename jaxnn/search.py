"""Hyperparameter search: grid, random (log-uniform where it matters) and coarse-to-fine, each
set of trials trained as **one** population (:func:`jaxnn.population.train_population`).

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

Trials of one search share ``seed`` (the same initial weights and data order: common random
numbers) unless the space varies it, so their differences come from the hyperparameters.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxnn import population as _population

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
    population's: ``"ok"``, ``"diverged"`` (loss NaN/inf or above 3x its initial loss: frozen and
    early-stopped) or ``"stopped"``. ``to_json(trial)`` is a plain dict."""

    params: dict
    val_acc: float | None
    val_loss: float | None
    train_loss: float | None
    status: str


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


def sort_trials(trials: Sequence[Trial]) -> list[Trial]:
    """Best first: by validation accuracy (higher first), ties by validation loss (lower first).
    Diverged trials and trials without a validation accuracy come after all the others (a
    learning rate that blows up is not a candidate, whatever it reached before)."""

    def rank(t: Trial):
        usable = t.status != "diverged" and t.val_acc is not None
        acc = t.val_acc if t.val_acc is not None else -math.inf
        loss = t.val_loss if t.val_loss is not None else math.inf
        return (not usable, -acc, loss)

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
    healthy = [t for t in sort_trials(trials) if t.status != "diverged" and t.val_acc is not None]
    if not healthy:
        return spec
    k = max(2, len(trials) // 4) if top_k is None else int(top_k)
    if k < 1:
        raise ValueError(f"narrow: top_k must be >= 1, got {top_k}")
    top = healthy[:k]
    out: dict[str, Spec] = {}
    for name, s in spec.items():
        missing = [t for t in top if name not in t.params]
        if missing:
            raise ValueError(f"narrow: a trial has no value for {name!r}")
        vals = [t.params[name] for t in top]
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


# --------------------------------------------------------------------------- JSON
def to_json(obj):
    """Plain JSON data from search objects: a :class:`Trial` becomes a dict, a range
    ``{"loguniform": [low, high]}``/``{"uniform": [low, high]}``, a choice ``{"choice": [...]}``,
    NaN/inf ``None``; containers are converted recursively."""
    if isinstance(obj, LogUniform | Uniform):
        return {type(obj).__name__.lower(): [obj.low, obj.high]}
    if isinstance(obj, Choice):
        return {"choice": [to_json(v) for v in obj.values]}
    if hasattr(obj, "_asdict"):
        return {k: to_json(v) for k, v in obj._asdict().items()}
    if isinstance(obj, Mapping):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
