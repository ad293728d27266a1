"""Hyperparameter search: Optuna decides, jaxnn trains a whole batch of trials at once.

:func:`optimize` drives an Optuna study (TPE, CMA-ES, random, grid or coarse-to-fine) through its
ask-and-tell interface: each round asks for ``population`` trials and trains those that share
their categorical values as **one** population (:func:`jaxnn.population.train_population`),
reporting every epoch's validation loss (so Optuna's pruners can freeze members) and telling each
trial's final validation loss, the objective. The study lives in any Optuna storage (SQLite,
PostgreSQL, MySQL) or in memory: the same call continues it, several processes share it. Every
method — :func:`coarse_to_fine` included — runs on this one engine.

Two objects say what to do: a :class:`SearchTask` (what to train: the space, and for each
combination of categorical values a :class:`Group` of data, model, optimizer and loss — built
from a :class:`jaxnn.config.RunConfig` with :meth:`SearchTask.from_config`, or given with
:meth:`SearchTask.from_data`) and :class:`SearchSettings` (how: method, trials, population,
pruner, stages).

A *space* maps hyperparameter names to one of

====================================  =========================================================
``loguniform(low, high)``             a range sampled uniformly in ``log(value)``
``uniform(low, high)``                a range sampled uniformly in ``value``
``choice([a, b, ...])`` or a list     one of the listed values
a tuple ``(low, high)``               a range: log-uniform for ``learning_rate``, ``l2``,
                                      ``weight_decay`` and ``init_scale`` (:data:`LOG_SCALE`),
                                      uniform for anything else
a number (or a string)                a fixed value
====================================  =========================================================

Learning rates and regularization strengths act multiplicatively, so a range spanning decades is
searched log-uniformly: every decade gets the same share of the trials. Names a population can
vary per member are :data:`jaxnn.population.HPARAM_NAMES`; every other name is categorical.
:func:`grid`, :func:`random` and :func:`narrow` are the space's pure functions (points, no
training).

Example::

    cfg = jaxnn.config.RunConfig(epochs=10)
    task = SearchTask.from_config(cfg, {"learning_rate": (1e-4, 1.0), "l2": (1e-6, 1e-1),
                                        "arch": ["fc:64", "conv:8,pool,fc:32"]})
    res = optimize(task, SearchSettings(method="tpe", trials=64, population=16),
                   storage="sqlite:///study.db")
    res.best, res.study                          # the best trial, the optuna.Study
    task.trial_config(res.best.params)           # the RunConfig that retrains it

    task = SearchTask.from_data(ds, {"learning_rate": (1e-3, 1.0)}, epochs=10, model=net)
    res = coarse_to_fine(task, stages=2, trials=16)
    res.stages[1].space                          # stage 2 searched a narrowed space
    json.dumps(to_json(res.trials))              # plain JSON

Trials of one search share ``seed`` (the same initial weights and data order: common random
numbers) unless the space varies it, so their differences come from the hyperparameters.
"""

from jaxnn.search._space import (
    DOMAINS,
    LOG_SCALE,
    Choice,
    LogUniform,
    Uniform,
    choice,
    grid,
    loguniform,
    narrow,
    normalize,
    random,
    uniform,
)
from jaxnn.search._storage import StorageError, mask_url, open_storage
from jaxnn.search._study import FINISHED, check_study, coarse_to_fine, optimize, study_trials
from jaxnn.search._task import METHODS, Group, SearchSettings, SearchTask, coarse_epochs
from jaxnn.search._trials import Round, Stage, StudyResult, Trial, sort_trials, to_json, usable

__all__ = [
    "LOG_SCALE",
    "DOMAINS",
    "LogUniform",
    "Uniform",
    "Choice",
    "loguniform",
    "uniform",
    "choice",
    "normalize",
    "grid",
    "random",
    "narrow",
    "Trial",
    "Stage",
    "Round",
    "StudyResult",
    "sort_trials",
    "usable",
    "to_json",
    "METHODS",
    "FINISHED",
    "SearchTask",
    "SearchSettings",
    "Group",
    "coarse_epochs",
    "open_storage",
    "mask_url",
    "StorageError",
    "check_study",
    "study_trials",
    "optimize",
    "coarse_to_fine",
]
