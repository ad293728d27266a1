"""jaxnn.search: the space, grid and log-uniform random sampling, ranking, narrowing, and trials
run as one population."""

import itertools
import json
import math

import jax
import numpy as np
import optuna
import pytest

from jaxnn import models, optim, population, search, train


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


# --------------------------------------------------------------------------- running trials
@pytest.fixture(scope="module")
def ran(dataset, model):
    trials = [{"learning_rate": 0.05, "l2": 1e-4}, {"learning_rate": 1e4, "l2": 0.0},
              {"learning_rate": 0.5, "l2": 1e-3}, {"learning_rate": 1e-3, "l2": 1e-2}]
    return trials, search.run_trials(trials, data=dataset, epochs=3, batch_size=32,
                                     key=jax.random.key(1), model=model,
                                     optimizer=optim.momentum(1.0))


def test_run_trials_sorted_with_divergence_stopped(ran):
    trials, out = ran
    assert len(out) == 4
    assert sorted(map(str, (t.params for t in out))) == sorted(map(str, trials))
    assert out[-1].params["learning_rate"] == 1e4 and out[-1].status == "diverged"
    healthy = [t.val_loss for t in out if t.status == "ok"]
    assert len(healthy) == 3 and healthy == sorted(healthy)
    json.loads(json.dumps(search.to_json(out)))  # plain JSON, NaN as null
    assert set(search.to_json(out[0])) == {"params", "val_acc", "val_loss", "train_loss", "status",
                                           "number", "epochs", "key_seed", "stage"}


def test_run_trials_keeps_each_trial_with_its_own_numbers(dataset, model, ran):
    # A trial's metrics are those of a population of one with its hyperparameters (seed 0).
    _, out = ran
    pick = next(t for t in out if t.params["learning_rate"] == 0.5)
    solo = population.train_population(
        data=dataset, hparams={"learning_rate": [0.5], "l2": [1e-3], "seed": [0]}, epochs=3,
        batch_size=32, key=jax.random.key(1), model=model, optimizer=optim.momentum(1.0))
    np.testing.assert_allclose(pick.val_loss, solo.final["val_loss"][0], rtol=2e-5)
    assert pick.val_acc == pytest.approx(solo.final["val_acc"][0])


@pytest.mark.parametrize("trials, match", [
    ([], "no trials"),
    ([{"l2": 0.1}], "learning_rate"),
    ([{"learning_rate": 0.1, "dropout": 0.5}], "dropout"),
    ([{"learning_rate": 0.1}, {"learning_rate": 0.1, "l2": 0.0}], "same names"),
])
def test_run_trials_rejects(dataset, trials, match):
    with pytest.raises(ValueError, match=match):
        search.run_trials(trials, data=dataset, epochs=1, key=jax.random.key(0))


@pytest.mark.slow
def test_coarse_to_fine_narrows_around_stage_one(dataset, model):
    space = {"learning_rate": (1e-3, 3.0), "l2": (1e-6, 1e-1)}
    res = search.coarse_to_fine(space, stages=2, trials=8, epochs=[1, 2], data=dataset,
                                key=jax.random.key(0), batch_size=32, model=model,
                                optimizer=optim.momentum(1.0), top_k=2)
    s1, s2 = res.stages
    assert (s1.epochs, s2.epochs) == (1, 2) and len(s1.trials) == len(s2.trials) == 8
    assert s1.space == search.normalize(space)
    best1 = s1.trials[0]
    for name in space:
        assert s1.space[name].low <= s2.space[name].low <= best1.params[name]
        assert best1.params[name] <= s2.space[name].high <= s1.space[name].high
        width = lambda s: math.log(s.high / s.low)
        assert width(s2.space[name]) < width(s1.space[name])
        assert all(s2.space[name].low <= t.params[name] <= s2.space[name].high
                   for t in s2.trials)  # stage 2 sampled its narrowed space
    assert res.trials == s2.trials and res.best == s2.trials[0]
    j = json.loads(json.dumps(search.to_json(res)))
    assert j["stages"][1]["space"]["learning_rate"]["loguniform"][0] == s2.space[
        "learning_rate"].low


def test_coarse_to_fine_epochs_default_and_checks():
    with pytest.raises(ValueError, match="2 epoch counts for 3 stages"):
        search.coarse_to_fine({"learning_rate": (1e-3, 1.0)}, stages=3, epochs=[1, 2],
                              data=None, key=jax.random.key(0))
    with pytest.raises(ValueError, match="stages and trials"):
        search.coarse_to_fine({"learning_rate": (1e-3, 1.0)}, stages=0, data=None,
                              key=jax.random.key(0))


# --------------------------------------------------------------------------- Optuna studies
@pytest.fixture(scope="module")
def tiny():
    return models.mlp([6, 8, 3])


@pytest.fixture(scope="module")
def sgd_opt():
    return optim.momentum(1.0)  # one object, so every study reuses its compiled epoch


SPACE = {"learning_rate": (1e-2, 1.0), "l2": (1e-6, 1e-2)}


def _optimize(dataset, tiny, sgd_opt, space=SPACE, **kw):
    kw = {"trials": 4, "population": 4, "pruner": "none", "epochs": 2, **kw}
    return search.optimize(space, data=dataset, batch_size=32, model=tiny, optimizer=sgd_opt,
                           **kw)


def _fit_val_loss(tiny, dataset, params, *, epochs=2, key_seed=0, loss="softmax_cross_entropy"):
    hist = train.fit(tiny, dataset, optimizer=optim.momentum(params["learning_rate"]),
                     epochs=epochs, batch_size=32, key=jax.random.key(key_seed),
                     l2=params.get("l2", 0.0), loss=loss)
    return hist["val_loss"]


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
    res = search.optimize({"learning_rate": (1e-2, 1.0), "activation": ["relu", "tanh"]},
                          data=dataset, epochs=1, batch_size=32, trials=8, population=8,
                          method="random", pruner="none", optimizer=sgd_opt, build=build)
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


def test_nan_models_are_diverged_and_never_best(dataset, tiny, sgd_opt):
    kw = {"method": "grid", "loss": "multiclass_hinge_loss"}
    res = _optimize(dataset, tiny, sgd_opt, space={"learning_rate": [1e20, 0.05]}, **kw)
    wild = next(t for t in res.trials if t.params["learning_rate"] == 1e20)
    assert wild.status == "diverged" and not search.usable(wild)
    assert res.study.trials[wild.number].state == optuna.trial.TrialState.PRUNED
    assert res.best.params["learning_rate"] == 0.05 and res.trials[0] == res.best
    all_bad = _optimize(dataset, tiny, sgd_opt, space={"learning_rate": [1e20]}, **kw)
    assert all_bad.best is None and [t.status for t in all_bad.trials] == ["diverged"]


def test_grid_trains_every_point_once_over_rounds(dataset, tiny, sgd_opt):
    space = {"learning_rate": [0.05, 0.2], "l2": [0.0, 1e-3], "seed": [3]}
    res = _optimize(dataset, tiny, sgd_opt, space=space, trials=10, population=3,
                    method="grid")
    got = sorted((t.params["learning_rate"], t.params["l2"]) for t in res.trials)
    assert got == sorted(itertools.product([0.05, 0.2], [0.0, 1e-3]))  # 4 points, 2 rounds
    assert {t.key_seed for t in res.trials} == {3}  # a fixed seed is every trial's key


def test_coarse_to_fine_study_narrows_its_second_stage(dataset, tiny, sgd_opt):
    res = _optimize(dataset, tiny, sgd_opt, space={"learning_rate": (1e-3, 3.0)}, trials=4,
                    method="coarse-to-fine", stages=2, top_k=2)
    s0 = [t for t in res.trials if t.stage == 0]
    s1 = [t for t in res.trials if t.stage == 1]
    assert len(s0) == len(s1) == 4
    assert {t.epochs for t in s0} <= {1} and {t.epochs for t in s1} <= {2}  # coarse: ceil(2/3)
    rng = search.narrow({"learning_rate": (1e-3, 3.0)}, s0, top_k=2)["learning_rate"]
    assert rng.high / rng.low < 3.0 / 1e-3
    assert all(rng.low <= t.params["learning_rate"] <= rng.high for t in s1)


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
