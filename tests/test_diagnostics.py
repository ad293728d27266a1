"""jaxnn.diagnostics on constructed cases with known answers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import diagnostics, initializers, layers, optim, train


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def blobs(make_blobs):
    return make_blobs(n=200, classes=5, spread=3, n_train=120, n_val=40)


def _np_forward(params, x, act):
    """Numpy float64 forward of a plain MLP: [(pre, post)] per hidden layer, and the logits."""
    h, out = np.asarray(x, np.float64), []
    names = sorted(params, key=lambda s: int(s.split("_")[1]))
    for name in names[:-1]:
        pre = h @ np.asarray(params[name]["w"], np.float64) + np.asarray(params[name]["b"])
        h = act(pre)
        out.append((pre, h))
    last = params[names[-1]]
    return out, h @ np.asarray(last["w"], np.float64) + np.asarray(last["b"])


def test_public_names():
    assert sorted(diagnostics.__all__) == sorted([
        "LR_TOO_LOW", "LR_TOO_HIGH", "OVERFITTING", "UNDERFITTING", "DEAD_UNITS",
        "InitialLossCheck", "OverfitCheck", "LayerStats", "Diagnosis", "initial_loss_check",
        "overfit_check", "dead_fraction", "saturated_fraction", "layer_stats",
        "dead_fraction_probe", "dead_fraction_callback", "diagnose"])
    assert diagnostics.LR_TOO_LOW == "learning rate too low"
    assert diagnostics.LR_TOO_HIGH == "learning rate too high"
    assert "more regularization" in diagnostics.OVERFITTING
    assert diagnostics.UNDERFITTING.startswith("underfitting")


# --------------------------------------------------------------------------- unit statistics
def test_dead_fraction_counts_units_zero_for_every_example():
    h = np.array([[0.0, 1.0, 0.0, 0.0],
                  [0.0, 0.0, 2.0, 0.0],
                  [0.0, 0.0, 0.0, 0.0]], np.float32)
    # Units 0 and 3 never fire; unit 1 and 2 fire once each.
    assert float(diagnostics.dead_fraction(h)) == pytest.approx(0.5)
    assert float(jax.jit(diagnostics.dead_fraction)(h)) == pytest.approx(0.5)
    # Extra leading axes all count as examples.
    assert float(diagnostics.dead_fraction(h.reshape(3, 1, 4))) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="batch, units"):
        diagnostics.dead_fraction(jnp.zeros(4))


def test_saturated_fraction_against_numpy():
    rng = np.random.default_rng(1)
    pre = rng.normal(size=(50, 20)) * 4
    t, s = np.tanh(pre), 1 / (1 + np.exp(-pre))
    assert float(diagnostics.saturated_fraction(t, "tanh")) == pytest.approx(
        np.mean(np.abs(t) > 0.99), abs=1e-6)
    assert float(diagnostics.saturated_fraction(s, "sigmoid")) == pytest.approx(
        np.mean((s < 0.01) | (s > 0.99)), abs=1e-6)
    assert float(diagnostics.saturated_fraction(t, "tanh", threshold=0.5)) == pytest.approx(
        np.mean(np.abs(t) > 0.5), abs=1e-6)
    assert float(diagnostics.saturated_fraction(np.maximum(pre, 0), "relu")) == 0.0
    assert float(diagnostics.saturated_fraction(t, None)) == 0.0
    with pytest.raises(ValueError, match="unknown activation"):
        diagnostics.saturated_fraction(t, "nope")


# --------------------------------------------------------------------------- layer_stats
@pytest.fixture(scope="module")
def half_dead(blobs):
    """A [6, 8, 5] ReLU MLP whose hidden units 0-3 are dead on purpose (bias -1000)."""
    model = layers.mlp([6, 8, 5])
    params, state = model.init(jax.random.key(3))
    params["layer_0"]["b"] = params["layer_0"]["b"].at[:4].set(-1000.0)
    return model, params, state


def test_layer_stats_match_numpy_on_a_layer_made_half_dead(blobs, half_dead):
    model, params, state = half_dead
    x, y = blobs.x_train[:64], blobs.y_train[:64]
    stats = diagnostics.layer_stats(model, params, state, x, y, activation="relu",
                                    keep_activations=True)
    assert [s.name for s in stats] == ["layer_0", "layer_1"]
    hidden_np, logits = _np_forward(params, x, lambda z: np.maximum(z, 0))
    (pre, post), = hidden_np
    hidden, out = stats
    assert hidden.dead == pytest.approx(0.5)  # exactly the 4 units made dead
    assert np.all(hidden.activations[:, :4] == 0)
    for got, want in ((hidden.pre_mean, pre.mean()), (hidden.pre_std, pre.std()),
                      (hidden.mean, post.mean()), (hidden.std, post.std())):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-4)
    assert out.mean == pytest.approx(logits.mean(), rel=1e-4, abs=1e-5)
    assert out.std == pytest.approx(logits.std(), rel=1e-4)
    assert out.dead == 0.0 and hidden.saturated == 0.0
    assert math.isnan(hidden.update_ratio)  # no optimizer, no updates: not computed


def _np_grads(params, x, y, num_classes):
    """Backprop of mean softmax cross-entropy through relu(x W0 + b0) W1 + b1, in numpy."""
    (pre, h), = _np_forward(params, x, lambda z: np.maximum(z, 0))[0]
    logits = _np_forward(params, x, lambda z: np.maximum(z, 0))[1]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d_logits = (p - np.eye(num_classes)[y]) / x.shape[0]
    d_w1 = h.T @ d_logits
    d_pre = (d_logits @ np.asarray(params["layer_1"]["w"], np.float64).T) * (pre > 0)
    d_w0 = np.asarray(x, np.float64).T @ d_pre
    return d_w0, d_w1


def test_layer_stats_gradient_norm_and_update_ratio(blobs, half_dead):
    model, params, state = half_dead
    x, y = blobs.x_train[:64], blobs.y_train[:64]
    lr = 0.1
    stats = diagnostics.layer_stats(model, params, state, x, y, optimizer=optim.sgd(lr))
    d_w0, d_w1 = _np_grads(params, x, y, 5)
    assert np.all(d_w0[:, :4] == 0)  # dead units learn nothing
    for s, g, name in zip(stats, (d_w0, d_w1), ("layer_0", "layer_1"), strict=True):
        assert s.grad_norm == pytest.approx(np.linalg.norm(g), rel=1e-4)
        w = np.asarray(params[name]["w"], np.float64)
        # Plain SGD: the update is -lr * grad, so the ratio is lr * |grad| / |w|.
        assert s.update_ratio == pytest.approx(lr * np.linalg.norm(g) / np.linalg.norm(w),
                                               rel=1e-4)
    # Given updates directly: the ratio is |update| / |w| of those.
    ups = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
    stats = diagnostics.layer_stats(model, params, state, x, y, updates=ups)
    w0 = np.asarray(params["layer_0"]["w"], np.float64)
    assert stats[0].update_ratio == pytest.approx(1e-3 * math.sqrt(w0.size) / np.linalg.norm(w0),
                                                  rel=1e-5)


def test_layer_stats_sees_saturated_tanh(blobs):
    model = layers.mlp([6, 16, 5], activation="tanh", init="normal")  # N(0, 0.01): tiny
    params, state = model.init(jax.random.key(0))
    x, y = blobs.x_train[:64], blobs.y_train[:64]
    small = diagnostics.layer_stats(model, params, state, x, y, activation="tanh")[0]
    params["layer_0"]["w"] = params["layer_0"]["w"] * 1000.0  # N(0, 10): saturating
    big = diagnostics.layer_stats(model, params, state, x, y, activation="tanh")[0]
    (pre, post), = _np_forward(params, x, np.tanh)[0]
    assert small.saturated == 0.0
    assert big.saturated == pytest.approx(np.mean(np.abs(post) > 0.99), abs=2 / post.size)
    assert big.saturated > 0.8


# --------------------------------------------------------------------------- conv layers
def _np_conv_same(x, w, b):
    """3x3 stride-1 SAME cross-correlation of NHWC x with HWIO w, plus b, by loops."""
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros(x.shape[:3] + (w.shape[-1],))
    for i in range(x.shape[1]):
        for j in range(x.shape[2]):
            out[:, i, j] = np.einsum("nuvc,uvco->no", xp[:, i:i + 3, j:j + 3],
                                     np.asarray(w, np.float64))
    return out + np.asarray(b, np.float64)


@pytest.fixture(scope="module")
def conv_case():
    """Conv(4) relu -> 2x2 max pool -> Dense(6) relu -> Dense(3) on 6x6x1 images, with conv
    channels 0 and 1 dead on purpose (bias -1000)."""
    model = layers.serial(layers.Conv2D(4), layers.Activation("relu"), layers.MaxPool(),
                          layers.Flatten(), layers.Dense(6), layers.Activation("relu"),
                          layers.Dense(3), input_shape=(6, 6, 1))
    params, state = model.init(jax.random.key(4))
    params["layer_0"]["b"] = params["layer_0"]["b"].at[:2].set(-1000.0)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 6, 6, 1)).astype(np.float32)
    y = rng.integers(0, 3, 10).astype(np.int32)
    return model, params, state, x, y


def _np_conv_forward(params, x):
    pre0 = _np_conv_same(x, params["layer_0"]["w"], params["layer_0"]["b"])
    h0 = np.maximum(pre0, 0)
    pooled = h0.reshape(10, 3, 2, 3, 2, 4).max(axis=(2, 4)).reshape(10, -1)
    pre1 = pooled @ np.asarray(params["layer_1"]["w"], np.float64) + np.asarray(
        params["layer_1"]["b"], np.float64)
    h1 = np.maximum(pre1, 0)
    return (pre0, h0), (pre1, h1)


def test_layer_stats_on_a_conv_layer_count_dead_channels(conv_case):
    model, params, state, x, y = conv_case
    lr = 0.1
    stats = diagnostics.layer_stats(model, params, state, x, y, optimizer=optim.sgd(lr))
    assert [s.name for s in stats] == ["layer_0", "layer_1", "layer_2"]
    (pre0, h0), (pre1, h1) = _np_conv_forward(params, x)
    conv = stats[0]
    assert conv.dead == 0.5  # channels 0 and 1: zero at every position of every example
    assert conv.pre_std == pytest.approx(pre0.std(), rel=1e-4)
    assert conv.mean == pytest.approx(h0.mean(), rel=1e-4)
    assert stats[1].dead == pytest.approx(np.mean(np.all(h1 == 0, axis=0)))
    assert stats[1].pre_mean == pytest.approx(pre1.mean(), rel=1e-4, abs=1e-5)

    # Gradients against the objective written out with lax directly (not through the layers).
    def objective(p):
        z = jax.lax.conv_general_dilated(x, p["layer_0"]["w"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = jax.nn.relu(z + p["layer_0"]["b"])
        h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        h = jax.nn.relu(h.reshape(10, -1) @ p["layer_1"]["w"] + p["layer_1"]["b"])
        logits = h @ p["layer_2"]["w"] + p["layer_2"]["b"]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(10), y])

    grads = jax.grad(objective)(params)
    assert np.all(np.asarray(grads["layer_0"]["w"])[..., :2] == 0)  # dead channels learn nothing
    for s, name in zip(stats, ("layer_0", "layer_1", "layer_2"), strict=True):
        g = np.linalg.norm(np.asarray(grads[name]["w"], np.float64))
        w = np.linalg.norm(np.asarray(params[name]["w"], np.float64))
        assert s.grad_norm == pytest.approx(g, rel=1e-4)
        assert s.update_ratio == pytest.approx(lr * g / w, rel=1e-4)  # plain SGD: -lr * grad


def test_dead_fraction_probe_counts_conv_channels_and_dense_units(conv_case):
    model, params, state, x, _ = conv_case
    (_, h0), (_, h1) = _np_conv_forward(params, x)
    dead = np.all(h0 == 0, axis=(0, 1, 2)).sum() + np.all(h1 == 0, axis=0).sum()
    got = diagnostics.dead_fraction_probe(model, x)(params, state)["dead_fraction"]
    assert float(got) == pytest.approx(dead / (4 + 6))


def test_layer_stats_uses_each_layers_own_activation_for_saturation():
    model = layers.serial(layers.Conv2D(3, init=initializers.normal(3.0)),
                          layers.Activation("tanh"), layers.Flatten(), layers.Dense(4),
                          layers.Activation("relu"), layers.Dense(2), input_shape=(4, 4, 2))
    params, state = model.init(jax.random.key(0))
    x = np.random.default_rng(0).normal(size=(8, 4, 4, 2)).astype(np.float32)
    stats = diagnostics.layer_stats(model, params, state, x, np.zeros(8, np.int32),
                                    keep_activations=True)
    t = stats[0].activations
    assert stats[0].saturated == pytest.approx(np.mean(np.abs(t) > 0.99), abs=1 / t.size)
    assert stats[0].saturated > 0.5  # N(0, 9) weights over 18 inputs: |pre| ~ 13
    assert stats[1].saturated == 0.0  # relu: no saturating regime


# --------------------------------------------------------------------------- initial loss
def test_initial_loss_is_log_c_and_l2_raises_it(blobs):
    model = layers.mlp([6, 32, 5])
    check = diagnostics.initial_loss_check(model, blobs, key=jax.random.key(0))
    assert check.expected == pytest.approx(math.log(5))
    assert check.measured == pytest.approx(math.log(5), abs=1e-3)
    assert check.ok
    assert check.with_l2 > check.measured
    assert check.as_initialized != pytest.approx(check.measured, abs=1e-3)  # real init: larger


def test_initial_hinge_loss_is_c_minus_1(blobs):
    model = layers.mlp([6, 32, 5], activation="tanh", batch_norm=True)
    check = diagnostics.initial_loss_check(model, blobs, key=jax.random.key(0),
                                           loss="multiclass_hinge_loss")
    assert check.expected == 4.0
    assert check.measured == pytest.approx(4.0, abs=0.05)
    assert check.ok


def test_initial_loss_check_catches_a_wrong_number_of_classes(blobs):
    model = layers.mlp([6, 32, 7])  # 7 outputs for 5 classes: starts at log 7, not log 5
    check = diagnostics.initial_loss_check(model, blobs, key=jax.random.key(0))
    assert check.measured == pytest.approx(math.log(7), abs=1e-3)
    assert not check.ok


# --------------------------------------------------------------------------- overfit
def test_overfit_check_fits_20_examples(blobs):
    model = layers.mlp([6, 32, 5])
    res = diagnostics.overfit_check(model, blobs, optimizer=optim.momentum(0.1),
                                    key=jax.random.key(0), epochs=100)
    assert res.num_examples == 20 and res.epochs == 100
    assert res.train_acc == 1.0 and res.final_loss < 0.1 and res.ok


def test_overfit_check_fails_when_nothing_is_learned(blobs):
    model = layers.mlp([6, 32, 5])
    res = diagnostics.overfit_check(model, blobs, optimizer=optim.sgd(1e-7),
                                    key=jax.random.key(0), epochs=20)
    assert not res.ok
    assert res.final_loss == pytest.approx(res.initial_loss, rel=1e-3)


# --------------------------------------------------------------------------- diagnose
def _records(train_loss, train_acc=None, val_acc=None, **extra):
    n = len(train_loss)
    train_acc = train_acc or [0.99] * n
    val_acc = val_acc or [0.97] * n
    recs = [{"epoch": i + 1, "train_loss": l, "train_acc": a, "val_loss": l, "val_acc": v}
            for i, (l, a, v) in enumerate(zip(train_loss, train_acc, val_acc, strict=True))]
    for k, vals in extra.items():
        for r, v in zip(recs, vals, strict=True):
            r[k] = v
    return recs


def test_healthy_history_has_no_verdict():
    d = diagnostics.diagnose(_records([1.2, 0.4, 0.2, 0.1]), initial_loss=2.3)
    assert d.verdicts == [] and d.ok
    assert d.gap == pytest.approx(0.02)


@pytest.mark.parametrize("losses", [
    [2.0, 5.0, 50.0, float("nan")],  # exploding to NaN
    [2.0, 8.0, 7.5],                  # above 3x the initial loss
    [2.0, 6.0, 2.2],                  # a jump, then back down
    [2.2, 2.4, 2.6],                  # ends above where it started
])
def test_exploding_history_means_learning_rate_too_high(losses):
    d = diagnostics.diagnose(_records(losses), initial_loss=2.3)
    assert d.verdicts[0] == "learning rate too high"
    assert "learning rate too low" not in d.verdicts


def test_diverged_fit_history_means_learning_rate_too_high():
    hist = train.History(records=[], stopped_reason="diverged at epoch 1: train loss nan",
                         initial_loss=2.3)
    assert diagnostics.diagnose(hist).verdicts == ["learning rate too high"]


def test_flat_history_means_learning_rate_too_low():
    d = diagnostics.diagnose(_records([2.3020, 2.3015, 2.3011], [0.1] * 3, [0.1] * 3),
                             initial_loss=2.3026)
    assert d.verdicts == ["learning rate too low"]  # and not also "underfitting"


def test_gap_means_overfitting():
    d = diagnostics.diagnose(_records([1.0, 0.3, 0.05], [0.8, 0.95, 1.0], [0.7, 0.72, 0.71]),
                             initial_loss=2.3)
    assert d.verdicts == [diagnostics.OVERFITTING]
    assert d.gap == pytest.approx(0.29)


def test_both_poor_means_underfitting():
    d = diagnostics.diagnose(_records([2.0, 1.7, 1.5], [0.4, 0.45, 0.5], [0.4, 0.44, 0.48]),
                             initial_loss=2.3)
    assert d.verdicts == [diagnostics.UNDERFITTING]


def test_dead_units_tracked_in_the_history_or_given():
    recs = _records([1.0, 0.5, 0.3], dead_fraction=[0.1, 0.4, 0.6])
    assert diagnostics.diagnose(recs, initial_loss=2.3).verdicts == [diagnostics.DEAD_UNITS]
    recs = _records([1.0, 0.5, 0.3])
    assert diagnostics.diagnose(recs, initial_loss=2.3, dead_fraction=[0.1, 0.2]).ok
    assert not diagnostics.diagnose(recs, initial_loss=2.3, dead_fraction=[0.5, 0.9]).ok


def test_diagnose_takes_a_dict_of_arrays():
    hist = {"train_loss": np.array([[2.0], [2.1], [9.0]]), "val_acc": np.array([0.1, 0.1, 0.1])}
    assert diagnostics.diagnose(hist, initial_loss=2.3).verdicts == ["learning rate too high"]
    with pytest.raises(ValueError, match="one population member"):
        diagnostics.diagnose({"train_loss": np.ones((3, 2))})


def test_dead_fraction_callback_tracks_fit(blobs):
    model = layers.mlp([6, 16, 5], bias_init=-3.0)  # a negative bias: some units never fire
    x_probe = blobs.x_val[:32]
    hist = train.fit(model, blobs, optimizer=optim.sgd(0.01), epochs=2, key=jax.random.key(0),
                     callback=diagnostics.dead_fraction_callback(model, x_probe))
    assert [("dead_fraction" in r) for r in hist.records] == [True, True]
    (_, post), = _np_forward(hist.state.params, x_probe, lambda z: np.maximum(z, 0))[0]
    expected = np.mean(np.all(post == 0, 0))
    assert 0 < expected < 1
    assert hist.records[-1]["dead_fraction"] == pytest.approx(expected)


# --------------------------------------------------------------------------- nested blocks
@pytest.fixture(scope="module")
def residual_case():
    """Conv(3) relu, two residual blocks of two 3x3 convs (the second widening 3 -> 4
    channels: a 1x1 projection), each followed by relu, then Dense(3), on 4x4x1 images; channel
    0 of the first block's first conv dead on purpose (bias -1000)."""
    block = lambda c: layers.Residual(layers.serial(
        layers.Conv2D(c), layers.Activation("relu"), layers.Conv2D(c)))
    model = layers.serial(layers.Conv2D(3), layers.Activation("relu"),
                          block(3), layers.Activation("relu"),
                          block(4), layers.Activation("relu"),
                          layers.Flatten(), layers.Dense(3), input_shape=(4, 4, 1))
    params, state = model.init(jax.random.key(5))
    params["layer_1"]["layer_0"]["b"] = params["layer_1"]["layer_0"]["b"].at[0].set(-1000.0)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, 3, 6).astype(np.int32)
    return model, params, state, x, y


def _residual_forward(p, x):
    """The residual_case network written out with lax: its logits and, per hidden weight
    matrix, the activations it reports (each block's last conv: the relu after the addition)."""
    conv = lambda h, d: jax.lax.conv_general_dilated(
        h, d["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + d.get("b", 0.0)
    relu = jax.nn.relu
    h0 = relu(conv(x, p["layer_0"]))
    a10 = relu(conv(h0, p["layer_1"]["layer_0"]))
    h1 = relu(h0 + conv(a10, p["layer_1"]["layer_1"]))
    a20 = relu(conv(h1, p["layer_2"]["layer_0"]))
    skip = conv(h1, p["layer_2"]["skip"])
    h2 = relu(skip + conv(a20, p["layer_2"]["layer_1"]))
    logits = h2.reshape(x.shape[0], -1) @ p["layer_3"]["w"] + p["layer_3"]["b"]
    return logits, [h0, a10, h1, a20, h2, skip]


def test_layer_stats_one_row_per_weight_matrix_of_nested_blocks(residual_case):
    from jaxnn import models

    model, params, state, x, y = residual_case
    lr = 0.1
    stats = diagnostics.layer_stats(model, params, state, x, y, optimizer=optim.sgd(lr))
    w_leaves = [path for path, _ in jax.tree_util.tree_leaves_with_path(params)
                if path[-1] == jax.tree_util.DictKey("w")]
    assert len(stats) == len(w_leaves) == 7
    assert [s.name for s in stats] == ["layer_0", "layer_1/layer_0", "layer_1/layer_1",
                                       "layer_2/layer_0", "layer_2/layer_1", "layer_2/skip",
                                       "layer_3"]

    def objective(p):
        logits, _ = _residual_forward(p, x)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(6), y])

    grads = jax.grad(objective)(params)
    _, hidden = _residual_forward(params, x)
    for s, h in zip(stats, hidden, strict=False):
        h = np.asarray(h, np.float64)
        assert s.mean == pytest.approx(h.mean(), rel=1e-4, abs=1e-6)
        assert s.dead == pytest.approx(np.mean(np.all(h == 0, axis=(0, 1, 2))))
    assert stats[1].dead == pytest.approx(1 / 3)  # the channel killed on purpose
    for s in stats:  # gradient and update per matrix (its own w only)
        g = np.linalg.norm(np.asarray(models.param_at(grads, s.name)["w"], np.float64))
        w = np.linalg.norm(np.asarray(models.param_at(params, s.name)["w"], np.float64))
        assert s.grad_norm == pytest.approx(g, rel=1e-4)
        assert s.update_ratio == pytest.approx(lr * g / w, rel=1e-4)  # plain SGD: -lr * grad


def test_dead_fraction_probe_counts_units_inside_nested_blocks(residual_case):
    model, params, state, x, _ = residual_case
    _, hidden = _residual_forward(params, x)
    dead = sum(int(np.all(np.asarray(h) == 0, axis=(0, 1, 2)).sum()) for h in hidden)
    units = sum(h.shape[-1] for h in hidden)
    assert units == 3 + 3 + 3 + 4 + 4 + 4
    got = diagnostics.dead_fraction_probe(model, x)(params, state)["dead_fraction"]
    assert float(got) == pytest.approx(dead / units)
