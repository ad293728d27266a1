"""One round of a search: ask the study for trials, train those sharing their categorical values
as one population (:func:`jaxnn.population.train_population`), report every epoch's validation
loss (so the pruner can freeze members), and tell the study each trial's result. The one place
where a search trains."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optuna

from jaxnn import population as _population
from jaxnn.search import _writes
from jaxnn.search._space import scalar
from jaxnn.search._task import Group, SearchTask
from jaxnn.search._trials import Trial, num
from jaxnn.train import Status


def run_round(study, task: SearchTask, dists: Mapping[str, Any], ask: int, *, epochs: int,
              stage: int | None,
              trial_attrs: Callable[[Trial], Mapping[str, Any]] | None,
              heartbeat=None,
              admit: Callable[[list], list] | None = None) -> tuple[int, int, int]:
    """Ask ``ask`` trials, train them (one population per categorical combination) for
    ``epochs``, tell the study. Returns (members alive at the end, members trained,
    populations).

    The asked trials' heartbeats are recorded once all are asked and kept up while the round runs
    (``heartbeat``, :class:`jaxnn.search._storage.Heartbeat`). Once all are asked, ``admit``
    returns those that fit in the study; the others are told ``FAIL`` untrained (user attribute
    ``jaxnn_surplus``). A round that fails tells its untold trials ``FAIL`` (never left
    ``RUNNING``)."""
    asked, told = [], set()
    try:
        rows = []
        categorical = {k: d for k, d in dists.items() if k in task.categorical}
        fixed = task.fixed
        frozen = getattr(study.sampler, "frozen", None)  # one read of the study per round
        # Enqueued (WAITING) trials are looked for once a round; only then does ask scan again.
        waiting = bool(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
        with frozen(study) if frozen is not None else contextlib.nullcontext():
            for _ in range(ask):
                trial = study.ask(categorical) if waiting else _new_trial(study, categorical)
                asked.append(trial)
                if stage is not None:
                    trial.set_user_attr("stage", stage)
                values = {**fixed, **trial.params}
                group = task.group({k: values[k] for k in task.categorical})
                for name in task.trial_names(group):  # asked only where the optimizer takes it
                    if name in dists:
                        values[name] = _suggest(trial, name, dists[name])
                rows.append((trial, group, values))
        if heartbeat is not None:  # one statement for the round's trials (live until then)
            heartbeat.add(*(t._trial_id for t in asked))
        kept = {t.number for t in (asked if admit is None else admit(asked))}
        by_group: dict[int, tuple[Group, list]] = {}
        for trial, group, values in rows:
            if trial.number in kept:
                by_group.setdefault(id(group), (group, []))[1].append((trial, values))
            else:  # other processes filled the study meanwhile: not trained, not counted
                trial.set_user_attr("jaxnn_surplus", True)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                told.add(trial.number)
        alive = 0
        for group, members in by_group.values():
            alive += _train_group(study, task, group, members, epochs=epochs, stage=stage,
                                  told=told, trial_attrs=trial_attrs)
        return alive, len(kept), len(by_group)
    except BaseException:
        for trial in asked:  # never leave a trial of ours RUNNING when we can say it failed
            if trial.number not in told:
                try:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL,
                               skip_if_finished=True)
                except Exception:  # the storage itself failed: the trial stays RUNNING
                    pass
        raise
    finally:
        if heartbeat is not None:
            for trial in asked:
                heartbeat.discard(trial._trial_id)


def _new_trial(study, fixed: Mapping[str, Any]) -> optuna.Trial:
    """``study.ask(fixed)`` for a study with no enqueued trials: a new trial, ``fixed`` suggested
    at once. ``ask`` first scans the study for WAITING trials to claim, reading every unfinished
    trial from storage each time: a round of P trials in a database read up to P running trials
    P times (2.9 s of a 256-trial SQLite search, one third of its storage time).
    :func:`run_round` looks for WAITING trials once and asks the usual way when there are some."""
    study._thread_local.cached_all_trials = None  # as ask: the study's read of its trials is stale
    trial = optuna.Trial(study, study._storage.create_new_trial(study._study_id))
    for name, dist in fixed.items():
        _suggest(trial, name, dist)
    return trial


def _suggest(trial, name: str, dist):
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)


def bucket(m: int, devices: int | None) -> int:
    """Members trained for a group of ``m``: the next power of two (few distinct shapes, so few
    compilations), a multiple of ``devices``."""
    size = 1 << (m - 1).bit_length()
    d = devices or 1
    return -(-size // d) * d


def _train_group(study, task: SearchTask, group: Group, members: list, *, epochs: int,
                 stage: int | None, told: set,
                 trial_attrs: Callable[[Trial], Mapping[str, Any]] | None) -> int:
    """Train one group's trials as one population (padded to :func:`bucket` members with copies
    of the first); report, prune and tell. Returns the members that ended alive."""
    m = len(members)
    size = bucket(m, task.devices)
    rows = [v for _, v in members] + [members[0][1]] * (size - m)
    names = [n for n in task.trial_names(group) if n in rows[0] and n != "seed"]
    hparams = {n: np.asarray([r[n] for r in rows], np.float64) for n in names}
    seeds = [int(r.get("seed", task.key_seed)) for r in rows]
    keys = jnp.stack([jax.random.key(s) for s in seeds])
    trials = [t for t, _ in members]
    prune = not isinstance(study.pruner, optuna.pruners.NopPruner)

    def on_epoch(epoch, metrics, trained):
        stop = np.zeros(size, bool)
        _writes.report_all(study, epoch, [(trial, metrics["val_loss"][j])
                                          for j, trial in enumerate(trials) if trained[j]])
        if prune:
            for j, trial in enumerate(trials):
                stop[j] = trained[j] and trial.should_prune()
        return stop

    res = _population.train_population(
        data=group.data, hparams=hparams, epochs=epochs, batch_size=task.batch_size, key=keys,
        model=group.model, loss=group.loss, optimizer=group.optimizer, devices=task.devices,
        divergence_factor=task.divergence_factor, on_epoch=on_epoch)
    results = []
    for j, (trial, values) in enumerate(members):
        status = Status(res.status[j])
        f = {k: num(res.final[k][j]) for k in ("val_acc", "val_loss", "train_loss")}
        record = Trial(params={k: scalar(v) for k, v in values.items()}, status=status,
                       number=trial.number, epochs=int(res.epochs[j]), key_seed=seeds[j],
                       stage=stage, **f)
        attrs = {"status": str(status), "val_acc": f["val_acc"], "val_loss": f["val_loss"],
                 "train_loss": f["train_loss"], "epochs": record.epochs, "key_seed": seeds[j]}
        if trial_attrs is not None:
            attrs.update(trial_attrs(record))
        results.append((trial, attrs, status, f["val_loss"]))
    _writes.set_user_attrs(study, [(trial, attrs) for trial, attrs, *_ in results])
    ok = [status in (Status.OK, Status.STOPPED) and val_loss is not None
          for _, _, status, val_loss in results]
    _writes.tell_all(study, [(trial, val_loss if k else None)  # None: PRUNED
                             for (trial, _, _, val_loss), k in zip(results, ok, strict=True)])
    told.update(trial.number for trial, *_ in results)
    return sum(ok)
