"""The search space: ranges and choices, their normal form, grid points, random points, and the
narrowing of a space around its best trials (coarse-to-fine). Pure functions, no training."""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxnn import population as _population
from jaxnn.search._trials import Trial, sort_trials, usable

#: Names whose ``(low, high)`` ranges are searched log-uniformly.
LOG_SCALE = ("learning_rate", "l2", "weight_decay", "init_scale")


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
    values = tuple(scalar(v) for v in values)
    if not values:
        raise ValueError("choice needs at least one value")
    return Choice(values)


def scalar(v):
    """A numpy scalar as a plain Python value (anything else as is)."""
    return v.item() if isinstance(v, np.generic | np.ndarray) else v


def is_number(v) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def _spec(name: str, entry) -> Spec:
    try:
        if isinstance(entry, LogUniform | Uniform | Choice):
            # Re-validate: a NamedTuple can be built without the factory's checks.
            return (loguniform(*entry) if isinstance(entry, LogUniform) else
                    uniform(*entry) if isinstance(entry, Uniform) else choice(entry.values))
        if isinstance(entry, tuple):
            if len(entry) != 2 or not all(is_number(v) for v in entry):
                raise ValueError(f"a range is a tuple (low, high) of two numbers, got {entry!r}")
            return loguniform(*entry) if name in LOG_SCALE else uniform(*entry)
        if isinstance(entry, list):
            return choice(entry)
        if is_number(entry):
            return Choice((scalar(entry),))
        if isinstance(entry, str | bool) and name not in _population.HPARAM_NAMES:
            return Choice((entry,))  # a fixed model or optimizer choice, e.g. "relu"
    except ValueError as e:
        raise ValueError(f"space[{name!r}]: {e}") from None
    raise ValueError(f"space[{name!r}]: expected (low, high), a list, a number, or loguniform/"
                     f"uniform/choice, got {entry!r}")


#: What each per-member hyperparameter accepts (the values
#: :func:`jaxnn.population.train_population` and the optimizers take): ``(low, high, low
#: included, high included)`` and the interval as written in messages.
DOMAINS = {
    "learning_rate": ((0.0, math.inf, False, False), "> 0"),
    "init_scale": ((0.0, math.inf, False, False), "> 0"),
    "l2": ((0.0, math.inf, True, False), ">= 0"),
    "weight_decay": ((0.0, math.inf, True, False), ">= 0"),
    "momentum": ((0.0, 1.0, True, False), "in [0, 1)"),
    "dropout": ((0.0, 1.0, True, False), "in [0, 1)"),
}


def check_domain(name: str, spec: Spec) -> None:
    """Refuse a space entry whose values the optimizer or the population would refuse (checked
    at a range's bounds and at every listed value): e.g. ``momentum`` outside ``[0, 1)``, a
    negative ``l2``, a ``seed`` that is not an integer."""
    values = (spec.values if isinstance(spec, Choice) else (spec.low, spec.high))
    if name == "seed":
        bad = [v for v in values if not (is_number(v) and float(v).is_integer())]
        if isinstance(spec, LogUniform | Uniform) or bad:
            raise ValueError(f"space['seed']: seeds are integers, given as a list, got "
                             f"{_describe(spec)}")
        return
    if name not in DOMAINS:
        return
    (lo, hi, lo_in, hi_in), text = DOMAINS[name]
    for v in values:
        v = float(v)
        inside = ((v > lo or (lo_in and v == lo)) and (v < hi or (hi_in and v == hi)))
        if not inside:
            raise ValueError(f"space[{name!r}]: {name} must be {text}, got {_describe(spec)}")


def _describe(spec: Spec) -> str:
    if isinstance(spec, LogUniform | Uniform):
        return f"{type(spec).__name__.lower()}({spec.low:g}, {spec.high:g})"
    return ", ".join(f"{v:g}" if is_number(v) else repr(v) for v in spec.values)


def normalize(space: Mapping[str, Any]) -> dict[str, Spec]:
    """The space with every entry as a :class:`LogUniform`, :class:`Uniform` or
    :class:`Choice` (see :mod:`jaxnn.search` for the accepted forms)."""
    if not isinstance(space, Mapping) or not space:
        raise ValueError(f"space must be a non-empty mapping of names to ranges, got {space!r}")
    return {str(k): _spec(str(k), v) for k, v in space.items()}


def grid(space: Mapping[str, Any], *, points: int | None = None) -> list[dict]:
    """Every combination of the space's values (the cartesian product, the last name varying
    fastest).

    Lists, choices and fixed values are used as given; a range needs ``points``: that many values
    from ``low`` to ``high``, evenly spaced in ``log(value)`` for :class:`LogUniform` ranges and in
    ``value`` for :class:`Uniform` ones (``points=1``: the range's (geometric) middle). The
    ``grid`` method of :func:`jaxnn.search.optimize` trains these points.

    Example::

        grid({"learning_rate": [0.01, 0.1], "l2": [0.0, 1e-4, 1e-3]})   # 6 points
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


def grid_values(spec: Mapping[str, Spec], points: int | None) -> dict[str, list]:
    """Every name's grid values (as :func:`grid` places them), sorted."""
    return {name: sorted({t[name] for t in grid({name: s}, points=points)},
                         key=lambda v: (str(type(v)), v))
            for name, s in spec.items()}


def random(space: Mapping[str, Any], n: int, *, key: jax.Array) -> list[dict]:
    """``n`` points drawn independently from the space.

    :class:`LogUniform` entries are ``exp(U(log low, log high))``, :class:`Uniform` entries
    ``U(low, high)``, :class:`Choice` entries uniform over the values. Deterministic for a given
    ``key``; each name draws from its own stream (``fold_in(key, crc32(name))``), so adding a name
    to the space leaves the others' values unchanged. (The ``random`` method of
    :func:`jaxnn.search.optimize` draws with Optuna's random sampler, seeded per trial.)
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


def narrow(space: Mapping[str, Any], trials: Sequence[Trial], *, top_k: int | None = None,
           widen: float = 0.25, min_width: float = 0.2) -> dict[str, Spec]:
    """The space narrowed around the best trials (a coarse-to-fine stage's next space).

    For each range, take the ``top_k`` best usable trials (default a quarter of the trials, at
    least 2) and span their values — in ``log(value)`` for :class:`LogUniform` — then pad each side
    by ``widen`` times that span, or by enough to keep at least ``min_width`` of the old width,
    whichever is more; the result is clipped to the old range, so it lies inside it and contains
    every top trial (the best included). A :class:`Choice` keeps the values the top trials used.
    With no usable trial the space is returned unchanged.
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


def spec_json(obj):
    """A space entry as JSON: ``{"loguniform": [low, high]}``, ``{"uniform": [low, high]}``,
    ``{"choice": [...]}``; anything else as is."""
    if isinstance(obj, LogUniform | Uniform):
        return {type(obj).__name__.lower(): [obj.low, obj.high]}
    if isinstance(obj, Choice):
        return {"choice": list(obj.values)}
    return obj


def spec_from_json(d: Mapping[str, Any]) -> dict[str, Spec]:
    """The inverse of :func:`spec_json` over a whole space."""
    out: dict[str, Spec] = {}
    for name, entry in d.items():
        (kind, v), = entry.items()
        out[name] = (LogUniform(*v) if kind == "loguniform" else Uniform(*v) if kind == "uniform"
                     else Choice(tuple(v)))
    return out
