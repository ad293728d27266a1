"""jaxnn.population: vmapping changes nothing, a diverging member disturbs no one."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnn import layers, losses, models, optim, population, train


@pytest.fixture(scope="module")
def dataset(make_blobs):
    return make_blobs(n=160, classes=3, spread=2, n_train=100, n_val=30)


@pytest.fixture(scope="module")
def model():
    return models.mlp([6, 12, 3])


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


def _fit(model, dataset, opt, key, *, epochs=3, l2=0.0, loss="softmax_cross_entropy"):
    return train.fit(model, dataset, optimizer=opt, epochs=epochs, batch_size=32, key=key,
                     l2=l2, loss=loss)


def test_momentum_and_keys_per_member_equal_fit(dataset, model):
    # Member i with momentum m[i] and its own key trains as fit() with those settings.
    keys = jnp.stack([jax.random.key(7), jax.random.key(9)])
    res = population.train_population(
        data=dataset, hparams={"learning_rate": np.array([0.05, 0.05]),
                               "momentum": np.array([0.5, 0.95])},
        epochs=3, batch_size=32, key=keys, model=model, optimizer=optim.momentum(1.0))
    for i, (k, m) in enumerate(((7, 0.5), (9, 0.95))):
        hist = _fit(model, dataset, optim.momentum(0.05, momentum=m), jax.random.key(k))
        # float32 rounding (vmapped vs plain matmuls) over 12 steps: far below 1e-5 relative.
        np.testing.assert_allclose(res.history["val_loss"][:, i], hist["val_loss"], rtol=1e-5)
    with pytest.raises(ValueError, match="injectable 'momentum'"):
        population.train_population(data=dataset, hparams={"learning_rate": [0.1],
                                                           "momentum": [0.5]},
                                    epochs=1, batch_size=32, key=jax.random.key(0), model=model,
                                    optimizer=optim.adam(0.1))
    with pytest.raises(ValueError, match="seed"):
        population.train_population(data=dataset, hparams={"learning_rate": [0.1, 0.2],
                                                           "seed": [0, 1]},
                                    epochs=1, batch_size=32, key=keys, model=model)


def test_schedule_gives_each_member_its_own_rate(dataset, model):
    # Under a cosine schedule member i follows lr[i] * cosine shape: the same run as optax's own
    # cosine_decay_schedule(lr[i]) (the reference, built with optax directly).
    steps = 3 * 4  # 3 epochs of ceil(100 / 32) batches
    shape = optim.get_schedule("cosine", 1.0, total_steps=steps)
    lrs = np.array([0.3, 0.03])
    res = population.train_population(
        data=dataset, hparams={"learning_rate": lrs, "seed": np.array([0, 0])}, epochs=3,
        batch_size=32, key=jax.random.key(2), model=model, optimizer=optim.sgd(1.0, schedule=shape))
    for i, lr in enumerate(lrs):
        ref = optax.inject_hyperparams(optax.sgd)(
            learning_rate=optax.cosine_decay_schedule(float(lr), steps))
        hist = _fit(model, dataset, ref, jax.random.fold_in(jax.random.key(2), 0))
        np.testing.assert_allclose(res.history["train_loss"][:, i], hist["train_loss"], rtol=1e-5)
        # The rate of the last step, by hand: lr (1 + cos(pi t / T)) / 2 at t = T - 1.
        expected = lr * 0.5 * (1 + np.cos(np.pi * (steps - 1) / steps))
        assert hist["lr"][-1] == pytest.approx(expected, rel=1e-5)
    # Had the schedule overridden the members' rates, the two members would be one run.
    assert not np.allclose(res.history["train_loss"][:, 0], res.history["train_loss"][:, 1])


def test_on_epoch_freezes_members_as_pruned(dataset, model, result):
    seen = []

    def on_epoch(epoch, metrics, trained):
        seen.append((epoch, trained.copy(), metrics["val_loss"].copy()))
        return np.array([False, epoch == 1, False])  # prune member 1 after its first epoch

    res = population.train_population(
        data=dataset, hparams=HP, epochs=3, batch_size=32, key=jax.random.key(1), model=model,
        optimizer=optim.momentum(1.0), on_epoch=on_epoch)
    assert res.status == ["ok", "pruned", "ok"]
    np.testing.assert_array_equal(res.epochs, [3, 1, 3])
    assert [list(t) for _, t, _ in seen] == [[True] * 3, [True, False, True], [True, False, True]]
    # The others train as without it; member 1 keeps its epoch-1 numbers and parameters.
    for i in (0, 2):
        np.testing.assert_allclose(res.history["val_loss"][:, i], result.history["val_loss"][:, i],
                                   rtol=2e-5)
    assert np.isnan(res.history["val_loss"][1:, 1]).all()
    assert res.final["val_loss"][1] == seen[0][2][1]
    one_epoch = _run(dataset, model, _pick(HP, [1]), epochs=1)
    np.testing.assert_allclose(np.asarray(res.params["layer_0"]["w"][1]),
                               np.asarray(one_epoch.params["layer_0"]["w"][0]), rtol=1e-5,
                               atol=1e-7)


def test_nan_model_with_finite_loss_is_diverged(dataset, model):
    # The hinge loss clips at 0: with lr 1e20 the weights turn NaN while the loss can look fine.
    res = population.train_population(
        data=dataset, hparams={"learning_rate": np.array([1e20, 0.05])}, epochs=2, batch_size=32,
        key=jax.random.key(0), model=model, loss=losses.multiclass_hinge_loss,
        optimizer=optim.momentum(1.0))
    assert res.status == ["diverged", "ok"]
    for leaf in jax.tree.leaves(res.params):
        assert np.all(np.isfinite(np.asarray(leaf)))  # the last good (initial) parameters
    assert res.epochs[0] == 0 and np.isnan(res.final["val_acc"][0])


def _dropout_mlp(rate):
    """6 -> 12 (relu, dropout rate) -> 3, with a dropout that takes a traced rate."""

    def drop_init(key, input_shape):
        return input_shape, {}, {}

    def drop_apply(params, state, x, *, train=False, key=None, mask=None):
        if not train:
            return x, state
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), 0.0), state

    return models.serial(layers.Dense(12), layers.Activation("relu"),
                         layers.Layer(drop_init, drop_apply, name="dropout"), layers.Dense(3),
                         input_shape=(6,))


@pytest.mark.slow  # several compiles: in the slow suite
def test_dropout_per_member_from_a_model_factory(dataset):
    rates = np.array([0.0, 0.5])
    res = population.train_population(
        data=dataset, hparams={"learning_rate": np.array([0.1, 0.1]), "dropout": rates,
                               "seed": np.array([0, 0])},
        epochs=2, batch_size=32, key=jax.random.key(4), model=_dropout_mlp,
        optimizer=optim.momentum(1.0))
    for i, r in enumerate(rates):
        hist = _fit(_dropout_mlp(float(r)), dataset, optim.momentum(0.1),
                    jax.random.fold_in(jax.random.key(4), 0), epochs=2)
        np.testing.assert_allclose(res.history["train_loss"][:, i], hist["train_loss"], rtol=1e-5)
    assert not np.allclose(res.history["train_loss"][:, 0], res.history["train_loss"][:, 1])
    with pytest.raises(ValueError, match="function rate -> Model"):
        population.train_population(data=dataset, hparams={"learning_rate": [0.1],
                                                           "dropout": [0.5]},
                                    epochs=1, batch_size=32, key=jax.random.key(0),
                                    model=models.mlp([6, 12, 3]))


_SPLIT = """
import json, os, sys
from jaxnn._hostdevices import cores, split_host_devices
n = split_host_devices()
import jax, numpy as np
from jaxnn import models, optim, population
sys.path.insert(0, {tests!r})
from conftest import _blobs
ds = _blobs(n=160, classes=3, spread=2, n_train=100, n_val=30)
hp = {{"learning_rate": np.array([0.02, 0.1, 0.05, 0.2])}}
kw = dict(data=ds, hparams=hp, epochs=2, batch_size=32, key=jax.random.key(1),
          model=models.mlp([6, 12, 3]), optimizer=optim.momentum(1.0))
split = population.train_population(**kw)  # default: over every host device that divides 4
one = population.train_population(**kw, devices=1)
print(json.dumps({{"split": n, "cores": cores(), "devices": jax.local_device_count(),
                  "default4": population.default_devices(4),
                  "default3": population.default_devices(3),
                  "same": bool(np.allclose(split.history["val_loss"], one.history["val_loss"],
                                           rtol=1e-5))}}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("env, expect_split", [({}, True), ({"JAXNN_ONE_CPU_DEVICE": "1"}, False),
                                               ({"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}, False)])
def test_host_split_into_one_device_per_core(env, expect_split):
    import json
    import os
    import pathlib
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items()
            if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES", "JAXNN_ONE_CPU_DEVICE")}
    code = _SPLIT.format(tests=str(pathlib.Path(__file__).parent))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**base, "JAX_PLATFORMS": "cpu", **env})
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    if expect_split and got["cores"] >= 2:
        assert got["split"] == got["devices"] == got["cores"]
    else:
        assert got["split"] is None
        assert got["devices"] == (4 if "XLA_FLAGS" in env else 1)
    d = got["devices"]
    assert got["default4"] == (max(k for k in range(1, d + 1) if 4 % k == 0) if d > 1 else None)
    assert got["default3"] in (None, 3)
    # Members split over devices train as on one device (float32 rounding only).
    assert got["same"]
