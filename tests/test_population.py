"""jaxnn.population: vmapping changes nothing, a diverging member disturbs no one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import layers, optim, population, train


@pytest.fixture(scope="module")
def dataset(make_blobs):
    return make_blobs(n=160, classes=3, spread=2, n_train=100, n_val=30)


@pytest.fixture(scope="module")
def model():
    return layers.mlp([6, 12, 3])


HP = {
    "learning_rate": np.array([0.02, 0.1, 0.05]),
    "l2": np.array([0.0, 1e-3, 1e-2]),
    "init_scale": np.array([1.0, 0.5, 2.0]),
    "seed": np.array([3, 4, 5]),
}


def _pick(hp, idx):
    return {k: np.asarray(v)[idx] for k, v in hp.items()}


def _run(dataset, model, hp, epochs=3):
    return population.train_population(
        data=dataset, hparams=hp, epochs=epochs, batch_size=32, key=jax.random.key(1),
        model=model, optimizer=optim.momentum(1.0))


@pytest.fixture(scope="module")
def result(dataset, model):
    return _run(dataset, model, HP)


def test_shapes_and_status(result):
    assert result.history["train_loss"].shape == (3, 3)
    assert result.status == ["ok", "ok", "ok"]
    assert result.params["layer_0"]["w"].shape == (3, 6, 12)
    assert np.all(np.isfinite(result.final["val_acc"]))


@pytest.mark.parametrize("i", [0, 2])
def test_member_equals_population_of_one(dataset, model, result, i):
    solo = _run(dataset, model, _pick(HP, [i]))
    for k in ("train_loss", "val_loss", "val_acc"):
        np.testing.assert_allclose(solo.history[k][:, 0], result.history[k][:, i], rtol=2e-5,
                                   atol=1e-6)


def test_member_equals_fit_with_the_same_settings(dataset, model, result):
    # Member 0 (seed 3, l2 0, scale 1) is fit() with key fold_in(key, 3).
    hist = train.fit(model, dataset, optimizer=optim.momentum(0.02), epochs=3, batch_size=32,
                     key=jax.random.fold_in(jax.random.key(1), 3))
    np.testing.assert_allclose(hist["train_loss"], result.history["train_loss"][:, 0], rtol=2e-5)


def test_diverging_member_is_frozen_and_isolated(dataset, model, result):
    hp = {k: np.concatenate([v, v[:1]]) for k, v in HP.items()}
    hp["learning_rate"][3] = 1e4  # far too high: diverges at once
    res = _run(dataset, model, hp)
    assert res.status[:3] == ["ok", "ok", "ok"] and res.status[3] == "diverged"
    np.testing.assert_allclose(res.history["train_loss"][:, :3], result.history["train_loss"],
                               rtol=2e-5, atol=1e-6)
    for leaf in jax.tree.leaves(res.params):
        assert np.all(np.isfinite(np.asarray(leaf)[3]))  # its last good parameters are kept
    assert np.isnan(res.history["val_acc"][-1, 3])


def test_stops_when_every_member_is_done(dataset, model):
    hp = {"learning_rate": np.array([1e4, 2e4])}
    res = _run(dataset, model, hp, epochs=10)
    assert res.status == ["diverged", "diverged"]
    assert res.history["train_loss"].shape[0] < 10


def test_init_scale_scales_the_weights(dataset, model):
    res = population.train_population(
        data=dataset, hparams={"learning_rate": np.array([1e-12, 1e-12]),
                               "init_scale": np.array([1.0, 3.0]), "seed": np.array([0, 0])},
        epochs=1, batch_size=32, key=jax.random.key(0), model=model, optimizer=optim.sgd(1.0))
    w = np.asarray(res.params["layer_0"]["w"])
    np.testing.assert_allclose(w[1], 3 * w[0], rtol=1e-4, atol=1e-6)


def test_logits_and_member(dataset, model, result):
    logits = population.population_logits(model, result.params, result.model_state,
                                          dataset.x_test)
    assert logits.shape == (3, 30, 3)
    p1, s1 = population.member(result, 1)
    direct, _ = model.apply(p1, s1, jnp.asarray(dataset.x_test))
    np.testing.assert_allclose(logits[1], direct, rtol=1e-5, atol=1e-5)


def test_bad_hparams(dataset, model):
    with pytest.raises(ValueError, match="learning_rate"):
        _run(dataset, model, {"l2": np.array([0.1])})
    with pytest.raises(ValueError, match="same shape"):
        _run(dataset, model, {"learning_rate": np.array([0.1, 0.2]), "l2": np.array([0.1])})
    with pytest.raises(ValueError, match="unknown"):
        _run(dataset, model, {"learning_rate": np.array([0.1]), "beta": np.array([0.9])})


def test_probe_adds_a_history_entry(dataset, model):
    x_probe = jnp.asarray(dataset.x_val[:8])
    probe = lambda p, s: {"mean_logit": jnp.mean(model.apply(p, s, x_probe)[0])}
    res = population.train_population(
        data=dataset, hparams={"learning_rate": np.array([0.01, 0.05])}, epochs=2, batch_size=32,
        key=jax.random.key(0), model=model, probe=probe)
    assert res.history["mean_logit"].shape == (2, 2)
    p1, s1 = population.member(res, 1)
    expected = float(jnp.mean(model.apply(p1, s1, x_probe)[0]))
    assert res.history["mean_logit"][-1, 1] == pytest.approx(expected, rel=1e-5)
