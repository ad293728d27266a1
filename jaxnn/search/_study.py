"""The Optuna driver: the study (storage, samplers, pruner, metadata), the loop of ask-and-tell
rounds (:func:`optimize`, every method), coarse-to-fine stages, and reading trials back."""

from __future__ import annotations

import bisect
import contextlib
import copy
import json
import math
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import optuna

from jaxnn.search._round import run_round
from jaxnn.search._space import LogUniform, Spec, Uniform, grid_values, narrow, spec_from_json
from jaxnn.search._storage import Heartbeat, Liveness, open_storage
from jaxnn.search._task import SearchSettings, SearchTask
from jaxnn.search._trials import Round, Stage, StudyResult, Trial, num, sort_trials, to_json
from jaxnn.search._trials import usable as _usable
from jaxnn.train import Status

#: Trial states that count as done: told with a value, or frozen early (pruned or diverged).
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
_RUNNING = (optuna.trial.TrialState.RUNNING,)
_STAGE_ATTR = "jaxnn_stage_{}"


def optimize(
    task: SearchTask,
    settings: SearchSettings | None = None,
    *,
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str = "jaxnn-search",
    trial_attrs: Callable[[Trial], Mapping[str, Any]] | None = None,
    on_round: Callable[[Round], None] | None = None,
    on_wait: Callable[[int], None] | None = None,
) -> StudyResult:
    """Search ``task``'s space with an Optuna study, training each round of trials as
    populations.

    Each round asks the study for up to ``settings.population`` trials (Optuna's
    ask-and-tell), trains the trials that share their categorical values as ONE population
    (:func:`jaxnn.population.train_population` on the task's :class:`Group` of those values),
    reports every epoch's validation loss to each trial (so the pruner can freeze members,
    status ``"pruned"``) and tells the study each trial's final validation loss, the objective
    (minimized). Rounds repeat until the study holds exactly ``settings.trials`` finished trials
    (complete or pruned; per stage for coarse-to-fine) — counting those of earlier calls and of
    other processes: calling again with the same ``storage`` and ``study_name`` continues the
    study, and several processes (on several hosts, with a database server) can share it.

    Processes sharing a study never train a trial twice nor overshoot ``settings.trials``: each
    keeps its running trials alive with heartbeats (with a database storage), asks only for
    the trials that neither finished nor run live elsewhere, and after asking keeps a trial only
    if fewer than ``settings.trials`` finished-or-live trials have lower numbers (Optuna numbers
    trials in the order they were created, so when processes ask at the same moment the lower
    numbers win; a trial that loses is told ``FAIL`` at once, untrained, with the user attribute
    ``jaxnn_surplus``). When the missing trials all run in other processes, it waits for them.
    A killed process loses at most its round in flight: its trials stay ``RUNNING``, are never
    counted as finished, and once their heartbeats are ``settings.grace_period`` seconds old,
    other trials take their place. Diverged trials are told as pruned (status ``"diverged"``),
    so samplers learn to avoid them and they are never the best.

    Args:
      task: what to train (:class:`SearchTask`).
      settings: how to search (:class:`SearchSettings`; default TPE, 64 trials, rounds of 16).
      storage, study_name: the study (:func:`open_storage`; ``None``: in memory).
      trial_attrs: extra user attributes of each trial (e.g. the command that retrains it).
      on_round: called after every round with a :class:`Round`.
      on_wait: called with the number of trials running in other processes when this one
        starts waiting for them.
    """
    settings = SearchSettings() if settings is None else settings
    plan = _plan(task, settings)
    storage = open_storage(storage)
    study = _study(task, settings, storage, study_name, plan)
    _check_metadata(study, plan.metadata)
    stage_epochs, c2f, total = plan.stage_epochs, plan.c2f, plan.total
    liveness = Liveness(storage, settings.grace_period)
    trained, number, waiting = 0, 0, False
    with Heartbeat(storage, settings.heartbeat_interval) as beat:
        while True:
            trials = study.get_trials(deepcopy=False, states=FINISHED + _RUNNING)
            done = [t for t in trials if t.state in FINISHED]
            running = liveness.live([t for t in trials if t.state not in FINISHED])
            stage, missing, cap = 0, total - len(done), total
            if c2f:
                stage, missing, space_now = _stage(study, task, settings, done)
                cap = settings.trials
                running = [t for t in running if t.user_attrs.get("stage", stage) == stage]
                plan.narrowed.clear()
                plan.narrowed.update({k: _distribution(v) for k, v in space_now.items()})
            if missing <= 0:
                break
            ask = min(settings.population, missing - len(running))
            if ask <= 0:  # the missing trials run in other processes: wait for them
                if not waiting and on_wait is not None:
                    on_wait(len(running))
                waiting = True
                time.sleep(min(1.0, settings.heartbeat_interval))  # one query a second
                continue
            waiting = False
            number += 1
            t0 = time.perf_counter()
            alive, members, n_groups = run_round(
                study, task, plan.dists, ask, epochs=stage_epochs[stage],
                stage=stage if c2f else None, trial_attrs=trial_attrs, heartbeat=beat,
                admit=lambda asked, s=stage, c=cap: _admit(study, liveness, asked, s, c, c2f))
            trained += members
            if on_round is not None and members:
                ranked = study_trials(study, fixed=task.fixed)
                best = next((t for t in ranked if _usable(t)), None)
                on_round(Round(number, len(ranked), total, best, alive, members, n_groups,
                               time.perf_counter() - t0))
            elif not members:
                number -= 1  # every trial asked went to other processes: no round
    ranked = study_trials(study, fixed=task.fixed)
    stages = ([Stage(_stage_space(study, task, s), e, [t for t in ranked if t.stage == s])
               for s, e in enumerate(stage_epochs)] if c2f else
              [Stage(dict(task.space), stage_epochs[0], ranked)])
    return StudyResult(ranked, next((t for t in ranked if _usable(t)), None), study, trained,
                       stages)


def check_study(task: SearchTask, settings: SearchSettings | None = None, *,
                storage: str | optuna.storages.BaseStorage | None = None,
                study_name: str = "jaxnn-search") -> bool:
    """Refuse, before anything is written, what :func:`optimize` would refuse: settings it cannot
    run (``cmaes`` without its package, an unknown pruner), a storage it cannot open
    (:class:`StorageError`), and a study of that name holding a different search
    (``ValueError``). Creates no study (opening an empty database creates Optuna's tables).
    Returns whether the study exists."""
    settings = SearchSettings() if settings is None else settings
    plan = _plan(task, settings)
    storage = open_storage(storage)
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return False
    old = storage.get_study_user_attrs(study_id).get("jaxnn_search")
    if old is not None:
        _compare(study_name, old, _jsonable(plan.metadata))
    return True


def coarse_to_fine(task: SearchTask, *, stages: int = 2, trials: int = 16,
                   population: int | None = None, coarse_epochs: int | None = None,
                   top_k: int | None = None) -> StudyResult:
    """Search in ``stages`` stages of ``trials`` random trials each (one population per stage by
    default): the first over the whole space for few epochs (:func:`coarse_epochs` of the
    task's, or ``coarse_epochs``), each next one over the space :func:`narrow`-ed around the
    previous stage's best ``top_k`` trials; the last stage trains the task's epochs. A study in
    memory: ``optimize(task, SearchSettings(method="coarse-to-fine", ...))`` with ``storage``
    keeps it. ``result.stages[s].space`` is the space stage ``s`` sampled."""
    settings = SearchSettings(method="coarse-to-fine", stages=stages, trials=trials,
                              population=trials if population is None else population,
                              coarse_epochs=coarse_epochs, top_k=top_k, pruner="none")
    return optimize(task, settings)


class _Plan(NamedTuple):
    pruner: Any
    dists: dict
    stage_epochs: list[int]
    c2f: bool
    total: int
    grid: dict | None
    metadata: dict
    narrowed: dict  # coarse-to-fine: the current stage's distributions (the sampler reads it)


def _plan(task: SearchTask, settings: SearchSettings) -> _Plan:
    """What a search of ``task`` with ``settings`` does, checked before anything is written."""
    if settings.method == "cmaes":
        try:
            import cmaes  # noqa: F401  (Optuna's CMA-ES sampler runs on it)
        except ImportError:
            raise ValueError("method 'cmaes' needs the cmaes package: pip install cmaes (or "
                             "jaxnn[cmaes])") from None
    pruner = _pruner(settings.pruner)
    free = task.free
    stage_epochs = settings.stage_epochs(task.epochs)
    total = settings.trials * len(stage_epochs)
    grid = None
    if settings.method == "grid":
        grid = grid_values(free, settings.grid_points) if free else {}
        total = min(settings.trials, math.prod(len(v) for v in grid.values()))
    metadata = {**dict(task.metadata or {}), "method": settings.method,
                "space": {k: to_json(s) for k, s in task.space.items()}, "epochs": stage_epochs}
    return _Plan(pruner, {k: _distribution(s) for k, s in free.items()}, stage_epochs,
                 settings.method == "coarse-to-fine", total, grid, metadata, {})


def _admit(study, liveness: Liveness, asked: list, stage: int, cap: int, c2f: bool) -> list:
    """The trials among ``asked`` (this process's, just asked) that fit: fewer than ``cap``
    finished or live trials (of ``stage``, for coarse-to-fine) have lower numbers. Trials are
    numbered in the order they were created (Optuna locks the study to number one), so of
    processes asking at the same moment the lower numbers win and no more than ``cap`` trials
    are ever kept."""
    mine = {t.number for t in asked}
    # One read of both states: read apart, a trial told between the reads would be in neither.
    trials = study.get_trials(deepcopy=False, states=FINISHED + _RUNNING)
    finished = [t for t in trials if t.state in FINISHED]
    others = [t for t in trials if t.state not in FINISHED and t.number not in mine]
    counted = [t for t in finished if not c2f or t.user_attrs.get("stage") == stage]
    counted += [t for t in liveness.live(others)
                if not c2f or t.user_attrs.get("stage", stage) == stage]
    numbers = sorted({t.number for t in counted} | mine)
    return [t for t in asked if bisect.bisect_left(numbers, t.number) < cap]


def _study(task, settings, storage, study_name, plan: _Plan):
    population = settings.population
    makers = {
        # TPE models the finished trials once a round of them is in: its first
        # min(10, population) trials are random (Optuna's default is 10, which with rounds of
        # fewer than 10 would leave whole rounds random).
        "tpe": lambda s: optuna.samplers.TPESampler(seed=s,
                                                    n_startup_trials=min(10, population)),
        "cmaes": lambda s: optuna.samplers.CmaEsSampler(
            seed=s, popsize=max(2, population), warn_independent_sampling=False),
        "random": lambda s: optuna.samplers.RandomSampler(seed=s),
        "coarse-to-fine": lambda s: _Within(plan.narrowed, s),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # One grid sampler: its shuffled grid order must be the same for every trial (its
        # first trials take grid point number = trial number, unique across processes).
        sampler = (_Grid(plan.grid, seed=task.key_seed) if plan.grid is not None else
                   _SeedPerTrial(makers[settings.method], task.key_seed))
        return optuna.create_study(storage=storage, study_name=study_name,
                                   direction="minimize", load_if_exists=True,
                                   pruner=plan.pruner, sampler=sampler)


# --------------------------------------------------------------------------- coarse to fine
def _stage(study, task: SearchTask, settings: SearchSettings, done):
    """The stage to work on (the first holding fewer than ``trials`` finished trials), how many
    it misses, and its space (:func:`_stage_space`). ``(stages, 0, {})`` when every stage is
    complete."""
    stages, trials = int(settings.stages), int(settings.trials)
    per_stage = [sum(1 for t in done if t.user_attrs.get("stage") == s) for s in range(stages)]
    stage = next((s for s, c in enumerate(per_stage) if c < trials), stages)
    if stage == stages:
        return stage, 0, {}
    if stage > 0 and study.user_attrs.get(_STAGE_ATTR.format(stage)) is None:
        prev = [_result_trial(ft, task.fixed) for ft in done
                if ft.user_attrs.get("stage") == stage - 1]
        space = narrow(task.free, [t for t in prev if t is not None], top_k=settings.top_k)
        # Recorded once: every process (and a resumed one) samples the same narrowed space.
        study.set_user_attr(_STAGE_ATTR.format(stage), to_json(space))
    return stage, trials - per_stage[stage], _stage_space(study, task, stage, free_only=True)


def _stage_space(study, task: SearchTask, stage: int, *, free_only: bool = False) -> dict:
    """The space stage ``stage`` samples: the task's for stage 0, else the narrowed space the
    study recorded when the stage began."""
    recorded = study.user_attrs.get(_STAGE_ATTR.format(stage)) if stage > 0 else None
    free = task.free if recorded is None else spec_from_json(recorded)
    return free if free_only else {**task.space, **free}


# --------------------------------------------------------------------------- samplers
class _SeedPerTrial(optuna.samplers.BaseSampler):
    """A sampler re-created for every trial with the seed ``hash(seed, trial number)``.

    Trial numbers are unique in a study's storage, so several processes sharing a study (or a
    search continued after a kill) never draw the same random numbers, and a search run by one
    process is reproducible. ``make(seed)`` builds the inner sampler (TPE and CMA-ES keep their
    state in the study, so a fresh one per trial loses nothing)."""

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int):
        self._make, self._seed, self._inner = make, int(seed), {}
        self._snapshot = None

    @contextlib.contextmanager
    def frozen(self, study) -> Iterator[None]:
        """Within the block the inner samplers see ``study``'s trials as read once at its start
        (:class:`_Snapshot`): a round asks all its trials against the same finished ones, and
        a study in a database is read once per round instead of twice per trial (each read
        loads every running trial again: 7.8 s of a 256-trial SQLite search went there). The
        round's own trials, running and without results, are not in the snapshot; trials
        other processes finish meanwhile are seen from the next round on."""
        self._snapshot = _Snapshot(study)
        try:
            yield
        finally:
            self._snapshot = None

    def _for(self, trial) -> optuna.samplers.BaseSampler:
        inner = self._inner.get(trial.number)
        if inner is None:
            seed = zlib.crc32(f"{self._seed}:{trial.number}".encode())
            inner = self._inner[trial.number] = self._make(seed)
        return inner

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(self._snapshot or study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(self._snapshot or study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(self._snapshot or study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self._for(trial).after_trial(study, trial, state, values)
        self._inner.pop(trial.number, None)


class _Snapshot:
    """``study`` with its trials read once: ``_get_trials``/``get_trials``/``trials`` answer from
    that list; everything else (storage writes included) goes to the study itself."""

    def __init__(self, study):
        self._study = study
        self._trials = study._get_trials(deepcopy=False, use_cache=True)

    def __getattr__(self, name):
        return getattr(self._study, name)

    def _get_trials(self, deepcopy=True, states=None, use_cache=False):
        del use_cache
        trials = [t for t in self._trials if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def get_trials(self, deepcopy=True, states=None):
        return self._get_trials(deepcopy, states)

    @property
    def trials(self):
        return self.get_trials()


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


# --------------------------------------------------------------------------- reading trials
def _result_trial(ft, fixed: Mapping[str, Any]) -> Trial | None:
    """A finished Optuna trial as a :class:`Trial` (``None`` if not made by :func:`optimize`)."""
    attrs = ft.user_attrs
    if "status" not in attrs:
        return None
    value = ft.value if ft.state == optuna.trial.TrialState.COMPLETE else attrs.get("val_loss")
    return Trial(params={**fixed, **ft.params}, val_acc=attrs.get("val_acc"),
                 val_loss=None if value is None else num(value),
                 train_loss=attrs.get("train_loss"), status=Status(attrs["status"]),
                 number=ft.number, epochs=attrs.get("epochs"), key_seed=attrs.get("key_seed"),
                 stage=attrs.get("stage"))


def study_trials(study, *, fixed: Mapping[str, Any] | None = None) -> list[Trial]:
    """Every finished trial that :func:`optimize` recorded in ``study``, sorted best first.
    ``fixed`` adds the space's fixed values (not Optuna parameters) to every trial's params."""
    out = [_result_trial(ft, dict(fixed or {}))
           for ft in study.get_trials(deepcopy=False, states=FINISHED)]
    return sort_trials([t for t in out if t is not None])


def _jsonable(metadata: dict) -> dict:
    return json.loads(json.dumps(to_json(metadata)))


def _check_metadata(study, metadata: dict) -> None:
    """Record what the search is (model, data, epochs, space) in a new study; refuse to continue
    a study that another search made."""
    metadata = _jsonable(metadata)
    old = study.user_attrs.get("jaxnn_search")
    if old is None:
        study.set_user_attr("jaxnn_search", metadata)
        return
    _compare(study.study_name, old, metadata)


def _compare(study_name: str, old: dict, metadata: dict) -> None:
    diff = sorted(k for k in set(old) | set(metadata) if old.get(k) != metadata.get(k))
    if diff:
        k = diff[0]
        raise ValueError(f"study {study_name!r} holds a different search: {k} is "
                         f"{old.get(k)!r} there and {metadata.get(k)!r} here; choose another "
                         "study name (or storage) or the same settings")
