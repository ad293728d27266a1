"""jaxnn.search: the space (grid and log-uniform random points, ranking, narrowing), the task
(groups from a RunConfig or from data), and the one Optuna engine every method runs on."""

import itertools
import json
import math
import time
import warnings

import jax
import numpy as np
import optuna
import pytest

from jaxnn import models, optim, population, search, train
from jaxnn.config import RunConfig


@pytest.fixture(scope="module")
def dataset(make_blobs):
    return make_blobs(n=160, classes=3, spread=2, n_train=100, n_val=30)


@pytest.fixture(scope="module")
def model():
    return models.mlp([6, 12, 3])


def _trial(lr, l2, acc, loss=0.5, status="ok"):
    return search.Trial({"learning_rate": lr, "l2": l2}, acc, loss, loss, status)


# --------------------------------------------------------------------------- the space
def test_normalize_forms():
    spec = search.normalize({
        "learning_rate": (1e-4, 1.0), "l2": search.uniform(0.0, 0.1), "momentum": (0.5, 0.99),
        "init_scale": search.loguniform(0.5, 2), "seed": [0, 1, 2], "weight_decay": 1e-4,
    })
    assert spec["learning_rate"] == search.LogUniform(1e-4, 1.0)  # log-scale name: log-uniform
    assert spec["l2"] == search.Uniform(0.0, 0.1)  # explicit spec wins
    assert spec["momentum"] == search.Uniform(0.5, 0.99)  # any other name: uniform
    assert spec["init_scale"] == search.LogUniform(0.5, 2.0)
    assert spec["seed"] == search.Choice((0, 1, 2))
    assert spec["weight_decay"] == search.Choice((1e-4,))  # a number is fixed


@pytest.mark.parametrize("space, match", [
    ({"learning_rate": (0.0, 1.0)}, "learning_rate"),  # log range must be positive
    ({"learning_rate": (1.0, 0.1)}, "learning_rate"),  # low > high
    ({"momentum": (1, 2, 3)}, "momentum"),
    ({"momentum": []}, "momentum"),
    ({"momentum": "fast"}, "momentum"),
    ({"learning_rate": search.LogUniform(-1.0, 1.0)}, "learning_rate"),  # built without checks
    ({}, "non-empty"),
])
def test_normalize_rejects(space, match):
    with pytest.raises(ValueError, match=match):
        search.normalize(space)


# --------------------------------------------------------------------------- grid
def test_grid_is_the_cartesian_product():
    space = {"learning_rate": [0.01, 0.1], "l2": [0.0, 1e-4, 1e-3], "seed": 7}
    g = search.grid(space)
    assert len(g) == 2 * 3 * 1
    expected = [{"learning_rate": a, "l2": b, "seed": 7}
                for a, b in itertools.product([0.01, 0.1], [0.0, 1e-4, 1e-3])]
    assert g == expected  # the last name varies fastest


def test_grid_places_points_on_ranges():
    g = search.grid({"learning_rate": (1e-3, 1e-1), "momentum": (0.0, 1.0)}, points=3)
    assert len(g) == 9
    lrs = sorted({t["learning_rate"] for t in g})
    np.testing.assert_allclose(lrs, [1e-3, 1e-2, 1e-1], rtol=1e-12)  # log spacing
    assert sorted({t["momentum"] for t in g}) == [0.0, 0.5, 1.0]  # linear spacing
    mid = search.grid({"learning_rate": (1e-3, 1e-1), "momentum": (0.0, 1.0)}, points=1)
    assert mid == [{"learning_rate": pytest.approx(1e-2), "momentum": 0.5}]
    with pytest.raises(ValueError, match="points"):
        search.grid({"learning_rate": (1e-3, 1e-1)})


# --------------------------------------------------------------------------- random
N = 4000


@pytest.fixture(scope="module")
def samples():
    space = {"learning_rate": (1e-4, 1.0), "l2": (1e-6, 1e-2), "momentum": (0.5, 0.9),
             "seed": [0, 1, 2]}
    return search.random(space, N, key=jax.random.key(3))


def _ks_uniform(u):
    """Kolmogorov-Smirnov distance of samples ``u`` from U(0, 1)."""
    u = np.sort(u)
    i = np.arange(1, len(u) + 1)
    return max(np.max(i / len(u) - u), np.max(u - (i - 1) / len(u)))


@pytest.mark.parametrize("name, lo, hi", [("learning_rate", -4, 0), ("l2", -6, -2)])
def test_random_is_log_uniform(samples, name, lo, hi):
    v = np.array([t[name] for t in samples])
    assert np.all((v >= 10.0**lo) & (v <= 10.0**hi))
    decades = np.floor(np.log10(v)).clip(lo, hi - 1)
    frac = np.bincount((decades - lo).astype(int), minlength=hi - lo) / N
    # Each decade gets the same share (binomial sd ~0.007); uniform sampling would put
    # ~90% of the mass in the top decade.
    np.testing.assert_allclose(frac, 1 / (hi - lo), atol=0.03)
    # KS on log10 values against U(lo, hi): 1.63/sqrt(N) is the 1% critical value.
    assert _ks_uniform((np.log10(v) - lo) / (hi - lo)) < 1.63 / math.sqrt(N)


def test_random_other_ranges_are_uniform_and_choices_covered(samples):
    m = np.array([t["momentum"] for t in samples])
    assert np.all((m >= 0.5) & (m <= 0.9))
    assert _ks_uniform((m - 0.5) / 0.4) < 1.63 / math.sqrt(N)
    seeds = np.array([t["seed"] for t in samples])
    np.testing.assert_allclose(np.bincount(seeds) / N, 1 / 3, atol=0.03)


def test_random_is_deterministic_per_key():
    space = {"learning_rate": (1e-4, 1.0), "l2": (1e-6, 1e-1)}
    a = search.random(space, 8, key=jax.random.key(0))
    assert a == search.random(space, 8, key=jax.random.key(0))
    assert a != search.random(space, 8, key=jax.random.key(1))
    # Each name has its own stream: adding a name leaves the others' values as they were.
    b = search.random({**space, "init_scale": (0.5, 2.0)}, 8, key=jax.random.key(0))
    assert [t["learning_rate"] for t in b] == [t["learning_rate"] for t in a]
    assert all(type(v) in (float, int) for t in a for v in t.values())  # plain Python numbers
    with pytest.raises(ValueError, match="n must be"):
        search.random(space, 0, key=jax.random.key(0))


# --------------------------------------------------------------------------- ranking, narrowing
def test_sort_trials_by_val_loss_diverged_last():
    trials = [_trial(0.1, 0, 0.80, loss=0.9), _trial(0.2, 0, 0.99, loss=0.01, status="diverged"),
              _trial(0.3, 0, 0.90, loss=0.4), _trial(0.4, 0, None, loss=None),
              _trial(0.5, 0, 0.95, loss=0.4), _trial(0.6, 0, 0.85, loss=0.2, status="stopped"),
              _trial(0.7, 0, 0.70, loss=0.3, status="pruned")]
    ranked = search.sort_trials(trials)
    order = [t.params["learning_rate"] for t in ranked]
    # "stopped" and "pruned" are usable; equal losses rank by val_acc.
    assert order[:5] == [0.6, 0.7, 0.5, 0.3, 0.1]
    assert set(order[5:]) == {0.2, 0.4}
    assert [search.usable(t) for t in ranked] == [True] * 5 + [False] * 2


def test_narrow_lies_inside_and_contains_the_best():
    space = {"learning_rate": (1e-4, 1.0), "l2": (1e-6, 1e-1), "momentum": (0.0, 1.0),
             "seed": [0, 1, 2]}
    rng = np.random.default_rng(0)
    trials = [search.Trial({"learning_rate": float(10 ** rng.uniform(-4, 0)),
                            "l2": float(10 ** rng.uniform(-6, -1)),
                            "momentum": float(rng.uniform()), "seed": int(rng.integers(3))},
                           float(rng.uniform()), 1.0, 1.0, "ok") for _ in range(16)]
    old = search.normalize(space)
    new = search.narrow(space, trials, top_k=4)
    best = search.sort_trials(trials)[0]
    top = search.sort_trials(trials)[:4]
    for name in ("learning_rate", "l2", "momentum"):
        assert old[name].low <= new[name].low <= best.params[name] <= new[name].high
        assert new[name].high <= old[name].high
        assert all(new[name].low <= t.params[name] <= new[name].high for t in top)
        assert type(new[name]) is type(old[name])
    assert set(new["seed"].values) == {t.params["seed"] for t in top}
    # With no padding the range is exactly the top trials' span.
    tight = search.narrow(space, trials, top_k=4, widen=0.0, min_width=0.0)
    lrs = [t.params["learning_rate"] for t in top]
    np.testing.assert_allclose([tight["learning_rate"].low, tight["learning_rate"].high],
                               [min(lrs), max(lrs)], rtol=1e-12)


def test_narrow_pads_in_log_space_and_keeps_a_minimum_width():
    trials = [_trial(1e-2, 1e-3, 0.9), _trial(1e-1, 1e-3, 0.8), _trial(1.0, 1e-3, 0.1)]
    new = search.narrow({"learning_rate": (1e-4, 1.0), "l2": (1e-6, 1e-1)}, trials, top_k=2)
    # Top-2 span one decade [1e-2, 1e-1]; widen 0.25 pads a quarter decade each side.
    np.testing.assert_allclose(np.log10([new["learning_rate"].low, new["learning_rate"].high]),
                               [-2.25, -0.75], atol=1e-9)
    # Both top trials share l2 = 1e-3: the range keeps 20% of the five old decades around it.
    np.testing.assert_allclose(np.log10([new["l2"].low, new["l2"].high]), [-3.5, -2.5],
                               atol=1e-9)


def test_narrow_ignores_diverged_and_keeps_space_without_healthy_trials():
    space = {"learning_rate": (1e-4, 1.0)}
    trials = [_trial(0.9, 0, 0.99, status="diverged"), _trial(1e-3, 0, 0.5),
              _trial(2e-3, 0, 0.4)]
    new = search.narrow(space, trials, top_k=2)
    assert new["learning_rate"].high < 0.9
    everything_diverged = [t._replace(status="diverged") for t in trials]
    assert search.narrow(space, everything_diverged) == search.normalize(space)


# --------------------------------------------------------------------------- Optuna studies
@pytest.fixture(scope="module")
def tiny():
    return models.mlp([6, 8, 3])


@pytest.fixture(scope="module")
def sgd_opt():
    return optim.momentum(1.0)  # one object, so every study reuses its compiled epoch


SPACE = {"learning_rate": (1e-2, 1.0), "l2": (1e-6, 1e-2)}


_TASK_KEYS = ("epochs", "loss", "build", "key_seed")


def _optimize(dataset, tiny, sgd_opt, space=SPACE, storage=None, study_name="jaxnn-search",
              **kw):
    kw = {"trials": 4, "population": 4, "pruner": "none", "epochs": 2, **kw}
    task = search.SearchTask.from_data(dataset, space, batch_size=32, model=tiny,
                                       optimizer=sgd_opt,
                                       **{k: kw.pop(k) for k in _TASK_KEYS if k in kw})
    return search.optimize(task, search.SearchSettings(**kw), storage=storage,
                           study_name=study_name)


def _fit_val_loss(tiny, dataset, params, *, epochs=2, key_seed=0, loss="softmax_cross_entropy"):
    hist = train.fit(tiny, dataset, optimizer=optim.momentum(params["learning_rate"]),
                     epochs=epochs, batch_size=32, key=jax.random.key(key_seed),
                     l2=params.get("l2", 0.0), loss=loss)
    return hist["val_loss"]


@pytest.mark.slow
def test_tpe_study_is_read_by_optuna_and_a_rerun_continues_it(tmp_path, dataset, tiny, sgd_opt):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = _optimize(dataset, tiny, sgd_opt, storage=url, study_name="s")
    assert first.trained == 4 and len(first.trials) == 4
    study = optuna.load_study(study_name="s", storage=url)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    for t in first.trials:
        ft = study.trials[t.number]
        assert ft.params == t.params and ft.value == t.val_loss
        assert sorted(ft.intermediate_values) == [1, 2]  # every epoch's validation loss
        assert ft.intermediate_values[2] == t.val_loss
        assert ft.user_attrs["status"] == "ok" and ft.user_attrs["key_seed"] == 0
    # The told value is what fit() reaches with the trial's settings and jax.random.key(0)
    # (float32 rounding over 8 steps, vmapped or not: far below 1e-4 relative).
    best = first.best
    np.testing.assert_allclose(best.val_loss, _fit_val_loss(tiny, dataset, best.params)[-1],
                               rtol=1e-4)
    # The same call with more trials continues the study; its first trials are untouched.
    second = _optimize(dataset, tiny, sgd_opt, storage=url, study_name="s", trials=7)
    assert second.trained == 3
    assert sorted(t.number for t in second.trials) == list(range(7))
    by_number = {t.number: t for t in second.trials}
    assert all(by_number[t.number] == t for t in first.trials)
    assert _optimize(dataset, tiny, sgd_opt, storage=url, study_name="s", trials=7).trained == 0
    # A different search may not continue it.
    with pytest.raises(ValueError, match="holds a different search"):
        _optimize(dataset, tiny, sgd_opt, storage=url, study_name="s", trials=8, method="random")


def test_a_killed_process_running_trial_is_neither_counted_nor_waited_for(dataset, tiny,
                                                                          sgd_opt):
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="k")
    study.ask()  # left RUNNING, as by a process killed in the middle of its round
    res = _optimize(dataset, tiny, sgd_opt, storage=storage, study_name="k", trials=3)
    states = [t.state for t in optuna.load_study(study_name="k", storage=storage).trials]
    assert res.trained == 3 and len(res.trials) == 3
    assert states.count(optuna.trial.TrialState.RUNNING) == 1
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3


def test_a_failed_round_leaves_no_trial_running(dataset, tiny, sgd_opt, monkeypatch):
    def broken(**kw):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(population, "train_population", broken)
    storage = optuna.storages.InMemoryStorage()
    with pytest.raises(RuntimeError, match="out of memory"):
        _optimize(dataset, tiny, sgd_opt, storage=storage, study_name="f")
    states = {t.state for t in optuna.load_study(study_name="f", storage=storage).trials}
    assert states == {optuna.trial.TrialState.FAIL}


@pytest.mark.slow  # the fast suite's time budget; CI runs it with the slow suite
def test_categorical_values_train_as_one_population_each(dataset, sgd_opt, monkeypatch):
    nets = {a: models.mlp([6, 8, 3], activation=a) for a in ("relu", "tanh")}
    built, calls = [], []
    real = population.train_population

    def spy(**kw):
        calls.append((kw["model"], [float(v) for v in kw["hparams"]["learning_rate"]]))
        return real(**kw)

    def build(values):
        built.append(dict(values))
        return {"model": nets[values["activation"]]}

    monkeypatch.setattr(population, "train_population", spy)
    task = search.SearchTask.from_data(
        dataset, {"learning_rate": (1e-2, 1.0), "activation": ["relu", "tanh"]}, epochs=1,
        batch_size=32, optimizer=sgd_opt, build=build)
    res = search.optimize(task, search.SearchSettings(trials=8, population=8, method="random",
                                                      pruner="none"))
    acts = {t.params["activation"] for t in res.trials}
    assert acts == {"relu", "tanh"}  # 8 random draws: both, with probability 1 - 2^-7
    assert len(calls) == len(acts) and sorted(map(str, built)) == sorted(
        str({"activation": a}) for a in acts)  # one build and one population per value
    for t in res.trials:
        model, lrs = next(c for c in calls if c[0] is nets[t.params["activation"]])
        assert t.params["learning_rate"] in lrs


def test_pruned_members_are_frozen_and_the_others_unaffected(dataset, tiny, sgd_opt):
    class PruneFastOnes(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return trial.params["learning_rate"] > 0.3 and trial.last_step == 1

    res = _optimize(dataset, tiny, sgd_opt, space={"learning_rate": [0.05, 0.5]}, epochs=3,
                    method="grid", pruner=PruneFastOnes())
    slow, fast = sorted(res.trials, key=lambda t: t.params["learning_rate"])
    assert (slow.status, slow.epochs) == ("ok", 3) and (fast.status, fast.epochs) == ("pruned", 1)
    ft = res.study.trials[fast.number]
    assert ft.state == optuna.trial.TrialState.PRUNED and sorted(ft.intermediate_values) == [1]
    # The pruned trial keeps its epoch-1 numbers; its neighbour trains as it would alone.
    np.testing.assert_allclose(fast.val_loss, _fit_val_loss(tiny, dataset, fast.params,
                                                            epochs=1)[-1], rtol=1e-4)
    np.testing.assert_allclose(slow.val_loss, _fit_val_loss(tiny, dataset, slow.params,
                                                            epochs=3)[-1], rtol=1e-4)


@pytest.mark.slow
def test_nan_models_are_diverged_and_never_best(dataset, tiny, sgd_opt):
    kw = {"method": "grid", "loss": "multiclass_hinge_loss"}
    res = _optimize(dataset, tiny, sgd_opt, space={"learning_rate": [1e20, 0.05]}, **kw)
    wild = next(t for t in res.trials if t.params["learning_rate"] == 1e20)
    assert wild.status == "diverged" and not search.usable(wild)
    assert res.study.trials[wild.number].state == optuna.trial.TrialState.PRUNED
    assert res.best.params["learning_rate"] == 0.05 and res.trials[0] == res.best
    all_bad = _optimize(dataset, tiny, sgd_opt, space={"learning_rate": [1e20]}, **kw)
    assert all_bad.best is None and [t.status for t in all_bad.trials] == ["diverged"]


@pytest.mark.slow
def test_grid_trains_every_point_once_over_rounds(dataset, tiny, sgd_opt):
    space = {"learning_rate": [0.05, 0.2], "l2": [0.0, 1e-3], "seed": [3]}
    res = _optimize(dataset, tiny, sgd_opt, space=space, trials=10, population=3,
                    method="grid")
    got = sorted((t.params["learning_rate"], t.params["l2"]) for t in res.trials)
    assert got == sorted(itertools.product([0.05, 0.2], [0.0, 1e-3]))  # 4 points, 2 rounds
    assert {t.key_seed for t in res.trials} == {3}  # a fixed seed is every trial's key


def test_coarse_to_fine_study_narrows_its_second_stage(dataset, tiny, sgd_opt):
    space = {"learning_rate": (1e-3, 3.0), "l2": (1e-6, 1e-1)}
    res = _optimize(dataset, tiny, sgd_opt, space=space, trials=4, method="coarse-to-fine",
                    stages=2, top_k=2, epochs=3)
    s0 = [t for t in res.trials if t.stage == 0]
    s1 = [t for t in res.trials if t.stage == 1]
    assert len(s0) == len(s1) == 4
    # The first stage trains the coarse epochs (ceil(3 / 3)), the last the task's.
    assert [st.epochs for st in res.stages] == [1, 3] == search.SearchSettings(
        method="coarse-to-fine").stage_epochs(3)
    assert {t.epochs for t in s0} <= {1} and {t.epochs for t in s1} <= {3}
    first, second = res.stages
    assert first.space == search.normalize(space)
    assert sorted(t.number for t in first.trials) == sorted(t.number for t in s0)
    best = search.sort_trials(s0)[:2]  # top_k=2: the narrowed ranges span these
    assert second.space == {**search.normalize(space),
                            **search.narrow(space, s0, top_k=2)}
    for name in space:
        old, new = first.space[name], second.space[name]
        assert old.low <= new.low and new.high <= old.high  # inside stage 1's range
        assert math.log(new.high / new.low) < math.log(old.high / old.low)  # narrower
        assert all(new.low <= t.params[name] <= new.high for t in best)  # around its best
        assert all(new.low <= t.params[name] <= new.high for t in s1)  # sampled inside
    j = json.loads(json.dumps(search.to_json(res.stages)))
    assert j[1]["space"]["learning_rate"]["loguniform"][0] == second.space["learning_rate"].low


def test_coarse_to_fine_front_end_is_the_engine_in_memory(dataset, tiny, sgd_opt):
    task = search.SearchTask.from_data(dataset, {"learning_rate": (1e-2, 1.0)}, epochs=2,
                                       batch_size=32, model=tiny, optimizer=sgd_opt)
    res = search.coarse_to_fine(task, stages=2, trials=2, top_k=1)
    assert [len(st.trials) for st in res.stages] == [2, 2] and res.trained == 4
    assert [st.epochs for st in res.stages] == [1, 2]
    assert res.study.user_attrs["jaxnn_search"]["method"] == "coarse-to-fine"


class _Killed(Exception):
    pass


def test_a_resumed_coarse_to_fine_study_reaches_its_trials_in_the_same_space(
        tmp_path, dataset, tiny, sgd_opt):
    url = f"sqlite:///{tmp_path / 'c2f.db'}"
    task = search.SearchTask.from_data(dataset, {"learning_rate": (1e-3, 3.0)}, epochs=2,
                                       batch_size=32, model=tiny, optimizer=sgd_opt)
    settings = search.SearchSettings(method="coarse-to-fine", trials=4, population=2, top_k=2,
                                     pruner="none")

    def kill_after_round_3(r):
        if r.number == 3:  # stage 1 done (rounds 1, 2), half of stage 2 told
            raise _Killed

    with pytest.raises(_Killed):
        search.optimize(task, settings, storage=url, study_name="c",
                        on_round=kill_after_round_3)
    study = optuna.load_study(study_name="c", storage=url)
    narrowed = study.user_attrs["jaxnn_stage_1"]
    assert len(study.trials) == 6
    res = search.optimize(task, settings, storage=url, study_name="c")
    assert res.trained == 2  # only what stage 2 missed
    assert [len(st.trials) for st in res.stages] == [4, 4]
    assert search.to_json(res.stages[1].space)["learning_rate"] == narrowed["learning_rate"]
    lo, hi = narrowed["learning_rate"]["loguniform"]
    assert all(lo <= t.params["learning_rate"] <= hi for t in res.stages[1].trials)


@pytest.mark.parametrize("method, kw", [
    ("tpe", {}), ("random", {}), ("grid", {"grid_points": 2}),
    ("coarse-to-fine", {"stages": 2}),
])
def test_every_method_trains_through_the_one_engine(dataset, tiny, sgd_opt, monkeypatch,
                                                     method, kw):
    calls = []
    real = population.train_population

    def counted(**k):
        calls.append(len(k["hparams"]["learning_rate"]))
        return real(**k)

    monkeypatch.setattr(population, "train_population", counted)
    res = _optimize(dataset, tiny, sgd_opt, method=method, trials=4, population=2, epochs=1,
                    **kw)
    stages = 2 if method == "coarse-to-fine" else 1
    assert len(res.trials) == 4 * stages == res.trained
    assert calls == [2] * (2 * stages)  # one population per round of 2 (no categorical names)
    # (cmaes: test_cmaes_study_samples_inside_the_space, through the same _optimize)


def test_the_coarse_epochs_rule():
    assert [search.coarse_epochs(e) for e in (1, 2, 3, 4, 10)] == [1, 1, 1, 2, 4]
    s = search.SearchSettings(method="coarse-to-fine", stages=3)
    assert s.stage_epochs(10) == [4, 4, 10]
    assert s.__class__(method="coarse-to-fine", stages=3, coarse_epochs=2).stage_epochs(10) == [
        2, 2, 10]
    assert search.SearchSettings(method="tpe", stages=3).stage_epochs(10) == [10]


# --------------------------------------------------------------------------- tasks
def test_a_config_task_builds_each_group_from_its_config():
    cfg = RunConfig(hidden="8", epochs=1, batch_size=128)
    task = search.SearchTask.from_config(cfg, {"learning_rate": (1e-3, 1.0),
                                               "arch": ["fc:16", "conv:4,pool,fc:16"]})
    assert task.categorical == ("arch",) and task.fixed == {"l2": cfg.l2}
    assert (task.epochs, task.batch_size, task.key_seed) == (1, 128, 0)
    mlp, conv = task.group({"arch": "fc:16"}), task.group({"arch": "conv:4,pool,fc:16"})
    assert mlp.data.x_train.ndim == 2 and conv.data.x_train.shape[1:] == (8, 8, 1)
    assert conv.model.input_shape == (8, 8, 1) and conv.config.arch == "conv:4,pool,fc:16"
    assert task.group({"arch": "fc:16"}) is mlp  # built once
    # The trial's own config: an arch replaces --hidden, lr is the trial's learning rate.
    tc = task.trial_config({"arch": "fc:16", "learning_rate": 0.3, "l2": 1e-4})
    assert (tc.arch, tc.hidden, tc.lr, tc.l2, tc.epochs) == ("fc:16", "128,64", 0.3, 1e-4, 1)


def test_a_config_task_asks_momentum_only_where_the_optimizer_takes_it():
    cfg = RunConfig(epochs=1)
    task = search.SearchTask.from_config(cfg, {"learning_rate": 0.1, "momentum": (0.5, 0.9),
                                               "optimizer": ["momentum", "adam"],
                                               "init_scale": (0.5, 2.0)})
    assert task.categorical == ("optimizer",)
    tc = task.trial_config({"optimizer": "adam", "learning_rate": 0.1, "momentum": 0.7,
                            "init_scale": 1.5, "seed": 2.0})
    assert (tc.optimizer, tc.momentum, tc.init_scale, tc.seed) == ("adam", None, 1.5, 2)
    tc = task.trial_config({"optimizer": "momentum", "learning_rate": 0.1, "momentum": 0.7})
    assert tc.momentum == 0.7
    assert task.config_for({}).init_scale == 1.0  # a searched scale is each member's
    with pytest.raises(ValueError, match="epochs"):
        search.SearchTask.from_config(cfg, {"learning_rate": 0.1, "epochs": [1, 2]})
    with pytest.raises(ValueError, match="activation"):
        search.SearchTask.from_config(cfg, {"activation": ["relu", "swoosh"]}).group(
            {"activation": "swoosh"})


@pytest.mark.parametrize("kw, match", [
    ({"method": "bayes"}, "method"),
    ({"trials": 0}, "trials"),
    ({"pruner": "hyperband"}, "pruner"),
])
def test_optimize_rejects(dataset, tiny, sgd_opt, kw, match):
    with pytest.raises(ValueError, match=match):
        _optimize(dataset, tiny, sgd_opt, **kw)
    with pytest.raises(ValueError, match="build="):
        _optimize(dataset, tiny, sgd_opt, space={**SPACE, "activation": ["relu", "tanh"]})
    with pytest.raises(ValueError, match="learning_rate"):
        _optimize(dataset, tiny, sgd_opt, space={"l2": (1e-6, 1e-2)})


def test_cmaes_study_samples_inside_the_space(dataset, tiny, sgd_opt):
    pytest.importorskip("cmaes")
    res = _optimize(dataset, tiny, sgd_opt, trials=8, method="cmaes", epochs=1)
    assert len(res.trials) == 8 and len({t.number for t in res.trials}) == 8
    for t in res.trials:
        assert 1e-2 <= t.params["learning_rate"] <= 1.0 and 1e-6 <= t.params["l2"] <= 1e-2
    gens = {res.study.trials[t.number].system_attrs.get("cma:generation") for t in res.trials}
    assert len(gens - {None}) >= 1  # the second round was sampled by CMA-ES itself


# --------------------------------------------------------------------------- TPE after a round
def test_tpe_models_the_first_round_from_the_second_on(dataset, tiny, sgd_opt):
    """TPE's first min(10, population) trials are random, so with rounds of 4 the second round
    is TPE's own (Optuna's default of 10 random trials would make --trials 8 a random search)."""
    by_method = {}
    for method in ("tpe", "random"):
        res = _optimize(dataset, tiny, sgd_opt, trials=8, population=4, epochs=1, method=method)
        by_method[method] = {t.number: t.params for t in res.trials}
    tpe, rnd = by_method["tpe"], by_method["random"]
    assert sorted(tpe) == sorted(rnd) == list(range(8))
    # Round 1: TPE's start-up trials are its random sampler's, with the same per-trial seeds.
    assert all(tpe[n] == rnd[n] for n in range(4))
    # Round 2: modelled on round 1, not the random sampler's draws.
    assert all(tpe[n] != rnd[n] for n in range(4, 8))


# --------------------------------------------------------------------------- ranges
@pytest.mark.parametrize("name", sorted(search.DOMAINS))
def test_ranges_are_checked_against_what_the_population_takes(name):
    """check_domain refuses exactly the values train_population refuses (its own checks are the
    reference), at a range's bounds and at every listed value."""
    from jaxnn.search._space import check_domain

    for v in (-1.0, -1e-9, 0.0, 1e-9, 0.5, 1.0 - 1e-9, 1.0, 2.0):
        hp = {"learning_rate": [v] if name == "learning_rate" else [0.1]}
        hp[name] = [v]
        try:
            population._check_hparams(hp)
            ok = True
        except ValueError:
            ok = False
        refused = []
        for spec in (search.choice([v]), search.uniform(min(v, 0.5), max(v, 0.5))):
            try:
                check_domain(name, spec)
            except ValueError as e:
                refused.append(str(e))
        assert len(refused) == (0 if ok else 2), (name, v)  # as a value and as a bound
        assert all(r.startswith(f"space[{name!r}]: {name} must be ") for r in refused)


def test_a_task_refuses_a_range_the_optimizer_refuses(dataset, tiny, sgd_opt):
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got uniform\(1.5, 2.5"):
        search.SearchTask.from_data(dataset, {"learning_rate": 0.1, "momentum": (1.5, 2.5)},
                                    epochs=1, model=tiny, optimizer=sgd_opt)
    with pytest.raises(ValueError, match="seeds are integers"):
        search.SearchTask.from_data(dataset, {"learning_rate": 0.1, "seed": [1, 2.5]},
                                    epochs=1, model=tiny, optimizer=sgd_opt)
    with pytest.raises(ValueError, match="l2 must be >= 0"):
        search.SearchTask.from_data(dataset, {"learning_rate": 0.1, "l2": [0.0, -1.0]},
                                    epochs=1, model=tiny, optimizer=sgd_opt)


# --------------------------------------------------------------------------- storages
@pytest.mark.parametrize("url, masked", [
    ("postgresql://u:secret@db.example:5432/s", "postgresql://u:***@db.example:5432/s"),
    ("postgresql+psycopg://u:p%40ss%2Fw@h/s", "postgresql+psycopg://u:***@h/s"),
    ("postgresql://u:p@ss@h/s", "postgresql://u:***@h/s"),  # an unescaped @ in the password
    ("postgresql://h/s?sslmode=require&password=pw", "postgresql://h/s?sslmode=require&password=***"),
    ("postgresql://u@h/s", "postgresql://u@h/s"),
    ("sqlite:////tmp/study.db", "sqlite:////tmp/study.db"),
    ("not a url", "not a url"),
])
def test_mask_url(url, masked):
    from jaxnn.search._storage import scrub

    assert search.mask_url(url) == masked
    said = scrub(f"cannot open {url}: password 'secret' / p@ss/w / pw refused", url)
    for pw in ("secret", "p@ss/w", "p%40ss%2Fw"):
        if pw in url:
            assert pw not in said
    assert masked in said


def test_a_postgresql_url_gets_an_installed_driver_or_names_the_extra(monkeypatch):
    import importlib.util

    from jaxnn.search import _storage

    installed = set()
    monkeypatch.setattr(_storage.importlib.util, "find_spec",
                        lambda name: object() if name in installed else None)
    url = "postgresql://u:secret@h/db"
    with pytest.raises(search.StorageError) as e:
        search.open_storage(url)
    assert str(e.value) == ("postgresql://u:***@h/db: a PostgreSQL storage needs the psycopg "
                            "driver: pip install 'jaxnn[postgres]'")
    with pytest.raises(search.StorageError, match=r"jaxnn\[postgres\]"):
        search.open_storage("postgresql+psycopg2://u:secret@h/db")
    installed.add("psycopg2")
    assert _storage.storage_url(url) == "postgresql+psycopg2://u:secret@h/db"
    installed.add("psycopg")
    assert _storage.storage_url(url) == "postgresql+psycopg://u:secret@h/db"
    assert _storage.storage_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert _storage.storage_url("sqlite:///x.db") == "sqlite:///x.db"
    assert importlib.util.find_spec is _storage.importlib.util.find_spec


def _heartbeat_at(storage, trial_id: int, when: str) -> None:
    import sqlalchemy as sa

    storage.record_heartbeat(trial_id)
    with storage.engine.begin() as conn:
        conn.execute(sa.text("UPDATE trial_heartbeats SET heartbeat = :t WHERE trial_id = :i"),
                     {"t": when, "i": trial_id})


@pytest.mark.slow
def test_live_running_trials_are_waited_for_and_stale_ones_replaced(tmp_path, dataset, tiny,
                                                                   sgd_opt):
    """Trials RUNNING in other processes: one whose heartbeat is older than the grace period
    (its process was killed) is replaced at once; a live one is waited for — and replaced once
    its heartbeat, no longer recorded, goes stale. Neither is ever counted as finished."""
    storage = search.open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(storage=storage, study_name="h")
    from jaxnn.search._storage import Heartbeat

    dead, alive = study.ask(), study.ask()
    _heartbeat_at(storage, dead._trial_id, "2000-01-01 00:00:00")
    other = Heartbeat(storage, interval=0.2)  # the live process, until this one waits for it
    other.__enter__()
    other.add(alive._trial_id)
    waits, waited = [], []

    def on_wait(n):
        waits.append(n)
        other.__exit__()  # now it dies
        waited.append(time.monotonic())

    task = search.SearchTask.from_data(dataset, SPACE, epochs=1, batch_size=32, model=tiny,
                                       optimizer=sgd_opt)
    settings = search.SearchSettings(trials=3, population=4, pruner="none", grace_period=2)
    try:
        res = search.optimize(task, settings, storage=storage, study_name="h", on_wait=on_wait)
    finally:
        other.__exit__()
    states = {t.number: t.state for t in study.trials}
    R = optuna.trial.TrialState.RUNNING
    assert states[dead.number] == states[alive.number] == R  # stay RUNNING, never counted
    assert len(res.trials) == 3 and dead.number not in {t.number for t in res.trials}
    # First round: 3 missing, 1 live elsewhere -> 2 asked; then it waits for the live one until
    # its heartbeat is 2 s old, and asks the last trial.
    assert res.trained == 3 and waits == [1] and time.monotonic() - waited[0] >= 1.0
    assert [s for s in states.values() if s != R] == [optuna.trial.TrialState.COMPLETE] * 3


def test_of_processes_asking_at_once_the_lower_trial_numbers_win(tmp_path):
    """The admission rule (a trial is kept if fewer than `trials` finished-or-live trials have
    lower numbers) never keeps more than `trials`, whoever asks first."""
    from jaxnn.search._storage import Liveness
    from jaxnn.search._study import _admit

    storage = search.open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(storage=storage, study_name="a")
    for _ in range(2):
        study.tell(study.ask(), 1.0)
    other = study.ask()  # trial 2: another process's, live
    storage.record_heartbeat(other._trial_id)
    mine = [study.ask(), study.ask()]  # trials 3, 4
    for t in mine:
        storage.record_heartbeat(t._trial_id)
    live = Liveness(storage, grace=60)
    assert [t.number for t in _admit(study, live, mine, 0, 4, False)] == [3]
    assert [t.number for t in _admit(study, live, mine, 0, 3, False)] == []
    assert [t.number for t in _admit(study, live, mine, 0, 5, False)] == [3, 4]
    _heartbeat_at(storage, other._trial_id, "2000-01-01 00:00:00")  # its process died
    assert [t.number for t in _admit(study, live, mine, 0, 3, False)] == [3]
    assert [t.number for t in _admit(study, live, mine, 0, 4, False)] == [3, 4]


def test_a_round_samples_against_one_read_of_the_study(dataset, tiny, sgd_opt, monkeypatch):
    """TPE's samplers see the study through a snapshot read once per round (not twice per
    trial, which with a database storage re-reads every running trial each time); a search
    stays reproducible, and the snapshot can be turned off."""
    from jaxnn.search import _study

    seen, reads = [], []
    real_sample, real_init = optuna.samplers.TPESampler.sample_relative, _study._Snapshot.__init__

    def sample_relative(self, study, trial, search_space):
        seen.append(type(study).__name__)
        return real_sample(self, study, trial, search_space)

    def snapshot_init(self, study):
        reads.append(len(study.trials))
        real_init(self, study)

    monkeypatch.setattr(optuna.samplers.TPESampler, "sample_relative", sample_relative)
    monkeypatch.setattr(_study._Snapshot, "__init__", snapshot_init)
    kw = {"trials": 9, "population": 3, "method": "tpe"}
    by_number = lambda res: [t.params for t in sorted(res.trials, key=lambda t: t.number)]
    first = by_number(_optimize(dataset, tiny, sgd_opt, **kw))
    assert seen == ["_Snapshot"] * 9 and reads == [0, 3, 6]  # one read per round of 3
    assert by_number(_optimize(dataset, tiny, sgd_opt, **kw)) == first
    assert len({p["learning_rate"] for p in first}) == 9
    monkeypatch.setattr(_study._SeedPerTrial, "frozen", None)
    seen.clear()
    _optimize(dataset, tiny, sgd_opt, **kw)
    assert seen == ["Study"] * 9


def test_opening_a_new_database_retries_the_create_tables_race(monkeypatch):
    """Processes opening one new database at once race to create its tables; the losers see
    "already exists" (PostgreSQL: a ProgrammingError, 'relation "studies" already exists') and
    open it again once the tables exist. Any other error is final at once."""
    import sqlalchemy

    from jaxnn.search import _storage

    calls = []

    def rdb(url, engine_kwargs):
        calls.append(url)
        if len(calls) == 1:
            raise sqlalchemy.exc.ProgrammingError("CREATE TABLE studies", {},
                                                  Exception('relation "studies" already exists'))
        return "opened"

    monkeypatch.setattr(optuna.storages, "RDBStorage", rdb)
    monkeypatch.setattr(_storage.time, "sleep", lambda s: None)
    assert _storage._rdb("postgresql://u@h/db", {}) == "opened" and len(calls) == 2

    def denied(url, engine_kwargs):
        calls.append(url)
        raise sqlalchemy.exc.ProgrammingError("CREATE TABLE", {}, Exception("permission denied"))

    calls.clear()
    monkeypatch.setattr(optuna.storages, "RDBStorage", denied)
    with pytest.raises(sqlalchemy.exc.ProgrammingError, match="permission denied"):
        _storage._rdb("postgresql://u@h/db", {})
    assert len(calls) == 1


# --------------------------------------------------------------------------- batched writes
def _write_trials(storage, fast: bool, monkeypatch, *, forbid_optuna: bool = True):
    """Three RUNNING trials given reports (NaN, ±inf and a repeated step among them) and user
    attributes, through :mod:`jaxnn.search._writes` (``fast``; with ``forbid_optuna`` it may not
    fall back to Optuna's per-value calls) or Optuna's own calls."""
    from jaxnn.search import _writes

    study = optuna.create_study(storage=storage, study_name="w", load_if_exists=True)
    trials = [study.ask() for _ in range(3)]
    trials[0].set_user_attr("stage", 0)  # an attribute that exists is updated
    values = [(0, [0.5, float("nan"), 2.0]), (1, [float("inf"), 0.25, -float("inf")]),
              (0, [9.0, 9.0, 9.0])]  # step 0 again: ignored, as report ignores it
    attrs = [(trials[0], {"stage": 1, "status": "ok", "curve": [1, 2]}), (trials[1], {}),
             (trials[2], {"val_acc": None, "name": "é"})]
    with monkeypatch.context() as m:
        if fast and forbid_optuna:
            m.setattr(optuna.trial.Trial, "report", None)
            m.setattr(optuna.trial.Trial, "set_user_attr", None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna warns of the repeated step
            for step, vs in values:
                if fast:
                    _writes.report_all(study, step, zip(trials, vs, strict=True))
                else:
                    for t, v in zip(trials, vs, strict=True):
                        t.report(v, step)
            if fast:
                _writes.set_user_attrs(study, attrs)
            else:
                for t, a in attrs:
                    for k, v in a.items():
                        t.set_user_attr(k, v)
    cached = [(t._cached_frozen_trial.intermediate_values, t._cached_frozen_trial.user_attrs)
              for t in trials]
    stored = [(ft.intermediate_values, ft.user_attrs) for ft in
              optuna.load_study(study_name="w", storage=storage).get_trials(deepcopy=False)]
    return cached, stored


def _tell_trials(storage, fast: bool, monkeypatch):
    """Six RUNNING trials told: a value, +inf, NaN (FAIL), pruned after a report (keeps it as
    its value), pruned after a NaN report and pruned unreported (no value); the sampler's
    ``after_trial`` calls seen and the trials read back."""
    from jaxnn.search import _writes

    study = optuna.create_study(storage=storage, study_name="t", load_if_exists=True)
    trials = [study.ask() for _ in range(6)]
    for t, v in [(trials[3], 0.75), (trials[4], float("nan"))]:
        t.report(v, 2)
    results = list(zip(trials, [0.5, float("inf"), float("nan"), None, None, None], strict=True))
    seen = []
    with monkeypatch.context() as m:
        m.setattr(study.sampler, "after_trial",
                  lambda st, ft, state, values: seen.append((ft.number, ft.state, state, values)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna warns of the NaN value
            if fast:
                m.setattr(optuna.Study, "tell", None)  # the batch must not fall back to tell
                _writes.tell_all(study, results)
            else:
                for t, v in results:
                    if v is None:
                        study.tell(t, state=optuna.trial.TrialState.PRUNED)
                    else:
                        study.tell(t, v)
    back = optuna.load_study(study_name="t", storage=storage).get_trials(deepcopy=False)
    return seen, [(ft.number, ft.state, ft.values, ft.datetime_complete is not None)
                  for ft in back]


def _same(a, b):
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN == NaN here


def test_batched_writes_store_what_optunas_own_calls_store(tmp_path, monkeypatch):
    """A round's reports and attributes go to SQLite in one statement each; the trials read
    back, and each trial's own copy (what its pruner sees), equal Optuna's per-value calls."""
    ref_cached, ref_stored = _write_trials(f"sqlite:///{tmp_path / 'ref.db'}", False, monkeypatch)
    cached, stored = _write_trials(search.open_storage(f"sqlite:///{tmp_path / 'b.db'}"), True,
                                   monkeypatch)
    assert _same(stored, ref_stored) and _same(cached, ref_cached)
    assert math.isnan(stored[1][0][0]) and stored[1][0][1] == 0.25
    assert stored[2][0] == {0: 2.0, 1: float("-inf")}
    assert stored[0][1] == {"stage": 1, "status": "ok", "curve": [1, 2]}
    assert [sorted(iv) for iv, _ in stored] == [[0, 1]] * 3 and stored[0][0][0] == 0.5
    # In memory (no tables) the same functions take Optuna's calls.
    mem_cached, mem_stored = _write_trials(optuna.storages.InMemoryStorage(), True, monkeypatch,
                                           forbid_optuna=False)
    assert _same(mem_stored, ref_stored) and _same(mem_cached, ref_cached)
    with pytest.raises(TypeError):  # ... and only them: forbidden, they are called
        _write_trials(optuna.storages.InMemoryStorage(), True, monkeypatch)


def test_telling_a_round_at_once_stores_what_optunas_tell_stores(tmp_path, monkeypatch):
    """A round's trials are told in one transaction with tell's rules (NaN: FAIL; pruned: its
    last reported number as value), the sampler seeing each first as tell shows it."""
    ref = _tell_trials(f"sqlite:///{tmp_path / 'ref.db'}", False, monkeypatch)
    got = _tell_trials(search.open_storage(f"sqlite:///{tmp_path / 'b.db'}"), True, monkeypatch)
    assert _same(got, ref)
    State = optuna.trial.TrialState
    assert [(s, v) for _, s, v, _ in got[1]] == [
        (State.COMPLETE, [0.5]), (State.COMPLETE, [float("inf")]), (State.FAIL, None),
        (State.PRUNED, [0.75]), (State.PRUNED, None), (State.PRUNED, None)]
    assert all(done for *_, done in got[1]) and [n for n, *_ in got[0]] == list(range(6))


def test_a_round_told_at_once_with_a_trial_finished_elsewhere_is_told_by_optuna(tmp_path):
    """If another process finished one of the trials, the transaction is rolled back (nothing
    of it stays) and Optuna's tell, which refuses a finished trial, takes over."""
    from jaxnn.search import _writes

    storage = search.open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage)
    a, b = study.ask(), study.ask()
    optuna.load_study(study_name=study.study_name, storage=storage).tell(b.number, 1.0)
    with pytest.raises(ValueError, match="Cannot tell a COMPLETE trial"):
        _writes.tell_all(study, [(b, 2.0), (a, 3.0)])
    back = optuna.load_study(study_name=study.study_name, storage=storage).get_trials()
    assert [(t.state, t.values) for t in back] == [
        (optuna.trial.TrialState.RUNNING, None), (optuna.trial.TrialState.COMPLETE, [1.0])]


def test_batched_writes_to_a_trial_no_longer_running_take_optunas_calls(tmp_path):
    """A trial another process finished is not written behind Optuna's back: the batch falls
    back to Optuna's calls, which refuse it."""
    from jaxnn.search import _writes

    storage = search.open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage)
    a, b = study.ask(), study.ask()
    other = optuna.load_study(study_name=study.study_name, storage=storage)
    other.tell(b.number, 1.0)  # finished elsewhere
    with pytest.raises(RuntimeError, match="finished"):  # Optuna's UpdateFinishedTrialError
        _writes.set_user_attrs(study, [(b, {"x": 1}), (a, {"x": 1})])
    fresh = optuna.load_study(study_name=study.study_name, storage=storage)
    assert [t.user_attrs for t in fresh.get_trials()] == [{}, {}]


def test_a_pruner_sees_the_batched_reports(tmp_path, dataset, tiny, sgd_opt):
    """With the study in SQLite, a search stores every epoch's report, and a pruner reads the
    reports written in one statement: a threshold below every loss prunes each trial."""
    res = search.optimize(
        search.SearchTask.from_data(dataset, {"learning_rate": (1e-3, 0.1)}, epochs=4,
                                    model=tiny, optimizer=sgd_opt),
        search.SearchSettings(method="random", trials=3, population=3, pruner="none"),
        storage=f"sqlite:///{tmp_path / 'p.db'}", study_name="p")
    assert all(len(t.intermediate_values) == 4 for t in
               optuna.load_study(study_name="p", storage=f"sqlite:///{tmp_path / 'p.db'}").trials)
    assert len(res.trials) == 3
    study = optuna.create_study(storage=search.open_storage(f"sqlite:///{tmp_path / 't.db'}"),
                                pruner=optuna.pruners.ThresholdPruner(upper=1e-9))
    from jaxnn.search import _writes

    trials = [study.ask() for _ in range(2)]
    _writes.report_all(study, 0, zip(trials, [0.5, 0.7], strict=True))
    assert [t.should_prune() for t in trials] == [True, True]


def test_a_round_asks_optunas_way_only_when_trials_are_enqueued(tmp_path, dataset, tiny,
                                                                 sgd_opt, monkeypatch):
    """Rounds make their trials without ``Study.ask``'s scan for enqueued (WAITING) trials;
    a study holding one claims it through ``ask``, and it is trained with its values."""
    asks = []
    real_ask = optuna.Study.ask
    monkeypatch.setattr(optuna.Study, "ask", lambda self, *a: asks.append(1) or real_ask(self, *a))
    url = f"sqlite:///{tmp_path / 'q.db'}"
    task = search.SearchTask.from_data(dataset, {"learning_rate": (1e-3, 0.1)}, epochs=1,
                                       model=tiny, optimizer=sgd_opt)
    settings = search.SearchSettings(method="random", trials=4, population=2, pruner="none")
    search.optimize(task, settings, storage=url, study_name="q")
    assert asks == []
    study = optuna.load_study(study_name="q", storage=url)
    study.enqueue_trial({"learning_rate": 0.0123})
    settings = search.SearchSettings(method="random", trials=6, population=2, pruner="none")
    res = search.optimize(task, settings, storage=url, study_name="q")
    assert len(asks) == 2  # the round that found the enqueued trial asked Optuna's way
    assert any(t.params["learning_rate"] == 0.0123 for t in res.trials)


def test_a_tpe_search_in_sqlite_is_the_same_search_as_in_memory(tmp_path, dataset, tiny,
                                                                 sgd_opt):
    """The batched writes change where a study is written, not what its sampler sees: a study
    in SQLite draws, trains and tells trial for trial what the same study in memory does
    (rounds after the first are TPE's model of the ones before)."""
    task = search.SearchTask.from_data(dataset, {"learning_rate": (1e-3, 0.5), "l2": (1e-6, 0.1)},
                                       epochs=2, model=tiny, optimizer=sgd_opt)
    settings = search.SearchSettings(method="tpe", trials=9, population=3, pruner="none")
    runs = [search.optimize(task, settings, storage=s, study_name="same")
            for s in (None, f"sqlite:///{tmp_path / 'same.db'}")]
    rows = [[(t.number, t.params, t.status, t.val_loss) for t in
             sorted(r.trials, key=lambda t: t.number)] for r in runs]
    assert len(rows[0]) == 9 and rows[0] == rows[1]


def test_a_rounds_heartbeats_are_one_statement_read_as_optunas(tmp_path, monkeypatch):
    """``Heartbeat.add`` records every trial's heartbeat in one statement, with the database's
    clock as Optuna's ``record_heartbeat`` does: read back the same way, all fresh and live."""
    from jaxnn.search import _storage

    storage = search.open_storage(f"sqlite:///{tmp_path / 'h.db'}")
    study = optuna.create_study(storage=storage)
    a, b, c = (study.ask()._trial_id for _ in range(3))
    rdb = _storage._rdb_of(study._storage)
    rdb.record_heartbeat(c)  # Optuna's own
    calls = []
    monkeypatch.setattr(type(rdb), "record_heartbeat", lambda self, i: calls.append(i))
    with _storage.Heartbeat(study._storage, interval=60) as beat:
        beat.add(a, b)
        beat.add(c)  # one that exists is updated
    assert calls == []  # not Optuna's per-trial call
    liveness = _storage.Liveness(study._storage, grace=30)
    beats, now = liveness._heartbeats([a, b, c])
    assert sorted(beats) == [a, b, c]
    assert all(0 <= (now - t).total_seconds() <= 5 for t in beats.values())
    assert len(liveness.live(study.get_trials(deepcopy=False))) == 3
    # Where the batch cannot write (no tables known here), Optuna's call writes each.
    monkeypatch.setattr("jaxnn.search._writes._tables_of", lambda rdb: None)
    with _storage.Heartbeat(study._storage, interval=60) as beat:
        beat.add(a, b)
    assert calls == [a, b]
