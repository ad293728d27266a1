"""What a search returns: trained trials, how they rank, stages, rounds, the study's result, and
all of them as plain JSON."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from jaxnn import rundir as _rundir
from jaxnn.train import Status


class Trial(NamedTuple):
    """One trained configuration. ``params`` are its hyperparameters (categorical and per-member);
    ``val_acc``/``val_loss``/``train_loss`` are of its last healthy epoch (``None`` when it has
    none); ``status`` is the population's :class:`jaxnn.train.Status` (a ``str``): ``"ok"``,
    ``"diverged"`` (:func:`jaxnn.train.diverged`: loss NaN/inf or above 3x its initial loss, or
    NaN/inf parameters; frozen at once), ``"pruned"`` (stopped by a pruner) or ``"stopped"``
    (early stop). ``number`` is the Optuna trial number, ``epochs`` the epochs it trained,
    ``key_seed`` the seed of its PRNG key (``jax.random.key(key_seed)``: initial parameters, data
    order, dropout) and ``stage`` its coarse-to-fine stage (from 0; ``None`` for the other
    methods). ``to_json(trial)`` is a plain dict."""

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
    """One stage of a search: the ``space`` it sampled (coarse-to-fine: narrowed around the
    previous stage's best trials), the ``epochs`` each trial trained, and its sorted
    ``trials``."""

    space: dict
    epochs: int
    trials: list


class Round(NamedTuple):
    """What :func:`jaxnn.search.optimize` reports after every round (``on_round``): the round's
    ``number`` (from 1, in this call), the study's ``finished`` trials of ``total``, the ``best``
    trial so far (``None`` while no trial is usable), how many of the round's ``members`` ended
    ``alive`` (neither pruned nor diverged), the round's ``groups`` (populations) and
    ``seconds``."""

    number: int
    finished: int
    total: int
    best: Trial | None
    alive: int
    members: int
    groups: int
    seconds: float


class StudyResult(NamedTuple):
    """What :func:`jaxnn.search.optimize` returns: every finished trial of the study, sorted
    (best first, :func:`sort_trials`), the ``best`` usable one (``None`` if every trial
    diverged), the :class:`optuna.Study`, the number of trials ``trained`` by this call, and
    the ``stages`` (one for every method but coarse-to-fine)."""

    trials: list
    best: Trial | None
    study: Any
    trained: int
    stages: list


def num(x) -> float | None:
    """``float(x)``, ``None`` for NaN/inf."""
    x = float(x)
    return x if math.isfinite(x) else None


def usable(trial: Trial) -> bool:
    """A candidate for the best trial: not diverged and with a validation loss (a learning rate
    that blows up is not a candidate, whatever it reached before)."""
    return trial.status != Status.DIVERGED and trial.val_loss is not None


def sort_trials(trials: Sequence[Trial]) -> list[Trial]:
    """Best first: by validation loss (lower first: the objective), ties by validation accuracy
    (higher first). Trials that are not :func:`usable` come after all the others.

    The validation loss is the objective everywhere in :mod:`jaxnn.search` (and the value
    reported to Optuna and its pruners every epoch): it is smoother than the accuracy on a few
    hundred validation examples, where many trials tie."""

    def rank(t: Trial):
        acc = t.val_acc if t.val_acc is not None else -math.inf
        loss = t.val_loss if t.val_loss is not None else math.inf
        return (not usable(t), loss, -acc)

    return sorted(trials, key=rank)


def to_json(obj):
    """Plain JSON data from search objects: a :class:`Trial` becomes a dict, a range
    ``{"loguniform": [low, high]}``/``{"uniform": [low, high]}``, a choice ``{"choice": [...]}``,
    a status its text, NaN/inf ``None``; containers are converted recursively."""
    from jaxnn.search._space import spec_json

    def convert(x):
        return str(x) if isinstance(x, Status) else spec_json(x)

    return _rundir.jsonable(obj, convert=convert)
