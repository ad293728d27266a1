"""jaxnn.layers against independent numpy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import gradcheck, layers


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_public_names():
    for name in layers.__all__:
        assert hasattr(layers, name)


def test_dense_matches_numpy(key):
    layer = layers.Dense(5, b_init=0.3)
    params, state = layer.init(key, 4)
    assert params["w"].shape == (4, 5) and params["b"].shape == (5,)
    np.testing.assert_allclose(params["b"], 0.3)
    x = _x((3, 4))
    y, _ = layer.apply(params, state, x)
    np.testing.assert_allclose(y, x @ np.asarray(params["w"]) + 0.3, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="4 features"):
        layer.apply(params, state, _x((3, 5)))


def test_dense_init_follows_initializer(key):
    params, _ = layers.Dense(300, w_init="he_normal").init(key, 400)
    assert np.var(np.asarray(params["w"])) == pytest.approx(2 / 400, rel=0.05)


def test_maxout_layer_matches_numpy(key):
    layer = layers.Maxout(3, num_pieces=4)
    params, state = layer.init(key, 5)
    x = _x((7, 5))
    y, _ = layer.apply(params, state, x)
    z = x @ np.asarray(params["w"]) + np.asarray(params["b"])
    expected = z.reshape(7, 4, 3).max(axis=1)  # piece-major layout
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def _bn_reference(x, gamma, beta, eps):
    mean, var = x.mean(0), x.var(0)
    return gamma * (x - mean) / np.sqrt(var + eps) + beta, mean, x.var(0, ddof=1)


def test_batchnorm_train_and_eval_match_numpy(key):
    bn = layers.BatchNorm(momentum=0.8, eps=1e-5)
    params, state = bn.init(key, 4)
    params = {"gamma": jnp.array([1.0, 2.0, 0.5, 1.5]), "beta": jnp.array([0.0, 1.0, -1.0, 0.2])}
    x = _x((16, 4)) * 3 + 1
    y, new_state = bn.apply(params, state, x, train=True)
    ref, mean, var_unbiased = _bn_reference(x, np.asarray(params["gamma"]),
                                            np.asarray(params["beta"]), 1e-5)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new_state["mean"], 0.2 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_state["var"], 0.8 + 0.2 * var_unbiased, rtol=1e-5)
    # Evaluation uses the running averages, not the batch.
    x2 = _x((5, 4), seed=1)
    y2, same = bn.apply(params, new_state, x2, train=False)
    rm, rv = np.asarray(new_state["mean"]), np.asarray(new_state["var"])
    expected = np.asarray(params["gamma"]) * (x2 - rm) / np.sqrt(rv + 1e-5) + np.asarray(
        params["beta"])
    np.testing.assert_allclose(y2, expected, rtol=1e-4, atol=1e-5)
    assert same is new_state


def test_batchnorm_mask_ignores_padding(key):
    bn = layers.BatchNorm()
    params, state = bn.init(key, 3)
    x = _x((6, 3))
    padded = np.concatenate([x, 100 * np.ones((2, 3), np.float32)])
    mask = np.array([1] * 6 + [0] * 2, np.float32)
    y_pad, s_pad = bn.apply(params, state, padded, train=True, mask=mask)
    y, s = bn.apply(params, state, x, train=True)
    np.testing.assert_allclose(y_pad[:6], y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s_pad["var"], s["var"], rtol=1e-5)


def test_batchnorm_keeps_dtype(key):
    bn = layers.BatchNorm()
    params, state = bn.init(key, 3)
    y, _ = bn.apply(params, state, jnp.ones((4, 3), jnp.bfloat16) * 2, train=True)
    assert y.dtype == jnp.bfloat16


def test_layernorm_matches_numpy(key):
    ln = layers.LayerNorm()
    params, state = ln.init(key, 6)
    x = _x((4, 6)) * 2 + 3
    y, _ = ln.apply(params, state, x)
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


def test_dropout_drop_probability_and_scaling(key):
    drop = layers.Dropout(0.3)
    x = jnp.ones((200, 500))
    y, _ = drop.apply({}, {}, x, train=True, key=key)
    y = np.asarray(y)
    assert np.mean(y == 0) == pytest.approx(0.3, abs=0.01)
    np.testing.assert_allclose(y[y != 0], 1 / 0.7, rtol=1e-6)
    assert np.mean(y) == pytest.approx(1.0, abs=0.02)  # expectation preserved
    y_eval, _ = drop.apply({}, {}, x, train=False)
    np.testing.assert_array_equal(y_eval, x)
    with pytest.raises(ValueError, match="key"):
        drop.apply({}, {}, x, train=True)
    with pytest.raises(ValueError, match="rate"):
        layers.Dropout(1.0)


def _numpy_mlp(params, x, act):
    h = x
    names = sorted(params, key=lambda n: int(n.split("_")[1]))
    for i, name in enumerate(names):
        h = h @ np.asarray(params[name]["w"]) + np.asarray(params[name]["b"])
        if i < len(names) - 1:
            h = act(h)
    return h


def test_mlp_forward_matches_numpy(key):
    model = layers.mlp([5, 8, 7, 3], activation="tanh", bias_init=0.1)
    params, state = model.init(key)
    assert set(params) == {"layer_0", "layer_1", "layer_2"}
    x = _x((4, 5))
    y, _ = model.apply(params, state, x)
    np.testing.assert_allclose(y, _numpy_mlp(params, x, np.tanh), rtol=1e-4, atol=1e-5)
    out, _, acts = model.trace(params, state, x)
    assert len(acts) == 2 and acts[0].pre.shape == (4, 8) and acts[1].post.shape == (4, 7)
    np.testing.assert_allclose(acts[0].post, np.tanh(acts[0].pre), rtol=1e-5, atol=1e-6)


def test_mlp_errors():
    with pytest.raises(ValueError):
        layers.mlp([5, 3], activation="nope")
    with pytest.raises(ValueError):
        layers.mlp([5])
    model = layers.mlp([5, 3])
    params, state = model.init(jax.random.key(1))
    with pytest.raises(ValueError, match=r"\[batch, 5\]"):
        model.apply(params, state, np.zeros((2, 4), np.float32))


def test_mlp_batchnorm_state_updates_only_in_training(key):
    model = layers.mlp([4, 6, 2], batch_norm=True)
    params, state = model.init(key)
    assert set(params["layer_0"]) == {"w", "bn"}  # beta replaces the bias
    x = _x((8, 4))
    _, s_train = model.apply(params, state, x, train=True)
    _, s_eval = model.apply(params, state, x, train=False)
    assert not np.allclose(s_train["layer_0"]["bn"]["mean"], 0.0)
    np.testing.assert_array_equal(s_eval["layer_0"]["bn"]["mean"], state["layer_0"]["bn"]["mean"])


def test_mlp_prelu_alpha_gets_gradient(key):
    model = layers.mlp([3, 4, 2], activation="prelu")
    params, state = model.init(key)
    x = -np.abs(_x((5, 3)))
    g = jax.grad(lambda p: jnp.sum(model.apply(p, state, x)[0] ** 2))(params)
    assert np.any(np.asarray(g["layer_0"]["alpha"]) != 0)


def test_mlp_maxout_shapes(key):
    model = layers.mlp([3, 4, 2], activation="maxout", num_pieces=3)
    params, state = model.init(key)
    assert params["layer_0"]["w"].shape == (3, 12)
    y, _ = model.apply(params, state, _x((5, 3)))
    assert y.shape == (5, 2)


def test_mlp_batchnorm_gradients_float64():
    with jax.enable_x64(True):
        model = layers.mlp([3, 5, 2], activation="tanh", batch_norm=True)
        params, state = model.init(jax.random.key(3))
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
        x = jnp.asarray(_x((6, 3)), jnp.float64)
        f = lambda p: jnp.sum(jnp.sin(model.apply(p, state, x, train=True)[0]))
        report = gradcheck.check_grads(f, params)
        assert report.passed, report
        assert report.max_error < 1e-6
