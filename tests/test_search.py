"""jaxnn.search: the space, grid and log-uniform random sampling, ranking, narrowing, and trials
run as one population."""

import itertools
import json
import math

import jax
import numpy as np
import pytest

from jaxnn import layers, optim, population, search


@pytest.fixture(scope="module")
def dataset(make_blobs):
    return make_blobs(n=160, classes=3, spread=2, n_train=100, n_val=30)


@pytest.fixture(scope="module")
def model():
    return layers.mlp([6, 12, 3])


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
def test_sort_trials_by_val_acc_diverged_last():
    trials = [_trial(0.1, 0, 0.80), _trial(0.2, 0, 0.99, status="diverged"),
              _trial(0.3, 0, 0.90, loss=0.4), _trial(0.4, 0, None), _trial(0.5, 0, 0.90, loss=0.3),
              _trial(0.6, 0, 0.95, status="stopped")]
    ranked = search.sort_trials(trials)
    order = [t.params["learning_rate"] for t in ranked]
    assert order[:4] == [0.6, 0.5, 0.3, 0.1]  # "stopped" is healthy; ties by val_loss
    assert set(order[4:]) == {0.2, 0.4}


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
    healthy = [t.val_acc for t in out if t.status == "ok"]
    assert len(healthy) == 3 and healthy == sorted(healthy, reverse=True)
    json.loads(json.dumps(search.to_json(out)))  # plain JSON, NaN as null
    assert set(search.to_json(out[0])) == {"params", "val_acc", "val_loss", "train_loss", "status"}


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


def test_public_names():
    assert set(search.__all__) == {
        "LOG_SCALE", "LogUniform", "Uniform", "Choice", "loguniform", "uniform", "choice",
        "normalize", "grid", "random", "Trial", "Stage", "SearchResult", "run_trials",
        "sort_trials", "narrow", "coarse_to_fine", "to_json"}
    assert all(hasattr(search, n) for n in search.__all__)
