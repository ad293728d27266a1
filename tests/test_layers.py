"""jaxnn.layers: each layer pair against an independent reference (numpy loops and formulas,
jax.nn.initializers, lax.conv written out)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxnn import activations, layers

F32_EPS = float(np.finfo(np.float32).eps)


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _close(got, want, terms):
    """float32 results of sums of ``terms`` O(1) products: error ~ eps * terms (a generous
    constant for reordering and fused multiply-adds)."""
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=8 * terms * F32_EPS,
                               atol=8 * terms * F32_EPS)


# --------------------------------------------------------------------------- Dense
def test_dense_matches_numpy_and_draws_from_the_documented_key(key):
    layer = layers.Dense(5, bias_init=0.3)
    out_shape, params, state = layer.init(key, (4,))
    assert out_shape == (5,) and state == {}
    wkey, _ = jax.random.split(key)
    np.testing.assert_array_equal(params["w"],
                                  jax.nn.initializers.he_normal()(wkey, (4, 5), jnp.float32))
    np.testing.assert_array_equal(params["b"], np.full(5, 0.3, np.float32))
    x = _x((3, 4))
    y, _ = layer.apply(params, state, x)
    _close(y, x.astype(np.float64) @ np.asarray(params["w"], np.float64) + 0.3, 4)
    with pytest.raises(ValueError, match="4 features"):
        layer.apply(params, state, _x((3, 5)))


def test_dense_acts_on_the_last_axis_and_keeps_dtype(key):
    layer = layers.Dense(3, use_bias=False)
    out_shape, params, _ = layer.init(key, (2, 4))
    assert out_shape == (2, 3) and set(params) == {"w"}
    x = _x((5, 2, 4))
    y, _ = layer.apply(params, {}, x)
    _close(y, np.einsum("ntf,fo->nto", x.astype(np.float64), np.asarray(params["w"], np.float64)),
           4)
    assert layer.apply(params, {}, jnp.asarray(x, jnp.bfloat16))[0].dtype == jnp.bfloat16


def test_bad_layer_options():
    for make in (lambda: layers.Dense(0), lambda: layers.Conv2D(4, 0),
                 lambda: layers.Conv2D(4, strides=(1, 2, 3)), lambda: layers.Conv2D(4, padding="FULL"),
                 lambda: layers.Dense(3, init=[1]), lambda: layers.MaxPool(0),
                 lambda: layers.BatchNorm(momentum=1.0), lambda: layers.Dropout(1.0),
                 lambda: layers.Maxout(3, 0)):
        with pytest.raises(ValueError):
            make()
    with pytest.raises(ValueError, match="height, width, channels"):
        layers.Conv2D(4).init(jax.random.key(0), (16,))


# --------------------------------------------------------------------------- Conv2D
def _numpy_conv(x, w, stride, pads):
    """Cross-correlation of NHWC ``x`` with HWIO ``w`` by explicit loops (float64)."""
    (pt, pb), (pl, pr) = pads
    x = np.pad(np.asarray(x, np.float64), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    w = np.asarray(w, np.float64)
    kh, kw, _, co = w.shape
    n, h, wd, _ = x.shape
    oh, ow = (h - kh) // stride[0] + 1, (wd - kw) // stride[1] + 1
    y = np.zeros((n, oh, ow, co))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride[0]:i * stride[0] + kh, j * stride[1]:j * stride[1] + kw, :]
            y[:, i, j, :] = np.einsum("nuvc,uvco->no", patch, w)
    return y


@pytest.mark.parametrize("kernel,strides,padding,pads", [
    (3, 1, "SAME", ((1, 1), (1, 1))),
    (3, 2, "VALID", ((0, 0), (0, 0))),
    # SAME: output ceil(in / s), total padding (out - 1) * s + k - in, the smaller half first:
    # rows (3 - 1) * 2 + 2 - 5 = 1 -> (0, 1); columns (6 - 1) + 3 - 6 = 2 -> (1, 1).
    ((2, 3), (2, 1), "SAME", ((0, 1), (1, 1))),
    (3, 1, ((2, 0), (0, 1)), ((2, 0), (0, 1))),
])
def test_conv2d_matches_a_numpy_loop(key, kernel, strides, padding, pads):
    layer = layers.Conv2D(4, kernel, strides=strides, padding=padding, bias_init=0.1)
    out_shape, params, state = layer.init(key, (5, 6, 3))
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    assert params["w"].shape == (kh, kw, 3, 4)
    x = _x((2, 5, 6, 3))
    y, _ = layer.apply(params, state, x)
    s = (strides, strides) if isinstance(strides, int) else strides
    want = _numpy_conv(x, params["w"], s, pads) + 0.1
    assert y.shape == want.shape and out_shape == want.shape[1:]
    _close(y, want, kh * kw * 3)


@pytest.mark.parametrize("kernel,strides,padding,hw", [
    (3, 1, "SAME", (6, 5)), (3, 2, "SAME", (7, 6)), (3, 2, "VALID", (8, 7)),
    ((2, 3), (2, 1), "SAME", (5, 6)), (5, 3, "VALID", (12, 11)), (3, 1, ((2, 0), (0, 1)), (5, 5)),
])
def test_conv2d_gradients_equal_those_of_lax_conv(kernel, strides, padding, hw):
    """The layer's gradients (on CPU: jax's derivatives of the im2col form, see jaxnn._conv)
    against jax's transpose rules of lax.conv_general_dilated, in float64."""
    with jax.enable_x64(True):
        layer = layers.Conv2D(3, kernel, strides=strides, padding=padding, use_bias=False,
                              dtype=jnp.float64)
        _, params, _ = layer.init(jax.random.key(1), (*hw, 2))
        x = jnp.asarray(np.random.default_rng(1).normal(size=(2, *hw, 2)))
        s = (strides, strides) if isinstance(strides, int) else strides

        def reference(x, w):
            y = jax.lax.conv_general_dilated(x, w, s, padding,
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return jnp.sum(jnp.sin(y))

        ours = jax.grad(lambda x, w: jnp.sum(jnp.sin(layer.apply({"w": w}, {}, x)[0])),
                        (0, 1))(x, params["w"])
        want = jax.grad(reference, (0, 1))(x, params["w"])
        # float64 sums of at most 5*5*3 products: differences ~ 1e-16 x terms.
        for got, ref in zip(ours, want, strict=True):
            np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_conv2d_kernel_is_jax_initializer_with_conv_fans(key):
    _, params, _ = layers.Conv2D(8, 5, init="lecun_uniform").init(key, (7, 7, 6))
    wkey, _ = jax.random.split(key)
    np.testing.assert_array_equal(
        params["w"], jax.nn.initializers.lecun_uniform()(wkey, (5, 5, 6, 8), jnp.float32))
    bound = np.sqrt(3.0 / (5 * 5 * 6))  # fan_in = receptive field x input channels
    assert np.abs(np.asarray(params["w"])).max() <= bound
    assert np.abs(np.asarray(params["w"])).max() > 0.9 * bound


def test_conv2d_rejects_wrong_inputs(key):
    layer = layers.Conv2D(2)
    _, params, _ = layer.init(key, (4, 4, 3))
    with pytest.raises(ValueError, match="NHWC"):
        layer.apply(params, {}, _x((2, 4, 4, 2)))
    with pytest.raises(ValueError, match="NHWC"):
        layer.apply(params, {}, _x((2, 48)))


# --------------------------------------------------------------------------- pooling, flatten
def _numpy_pool(x, window, stride, op):
    n, h, w, c = x.shape
    oh, ow = (h - window) // stride + 1, (w - window) // stride + 1
    y = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            y[:, i, j] = op(x[:, i * stride:i * stride + window, j * stride:j * stride + window],
                            axis=(1, 2))
    return y


@pytest.mark.parametrize("window,strides", [(2, None), (3, 1), (3, 2)])
def test_pooling_matches_numpy(window, strides):
    x = _x((2, 7, 6, 3))
    stride = window if strides is None else strides
    for layer, op in ((layers.MaxPool(window, strides), np.max),
                      (layers.AvgPool(window, strides), np.mean)):
        out_shape, params, state = layer.init(None, (7, 6, 3))
        y, _ = layer.apply(params, state, x)
        want = _numpy_pool(x.astype(np.float64), window, stride, op)
        assert out_shape == want.shape[1:]
        _close(y, want, window * window)


def test_avgpool_same_averages_over_the_real_entries():
    x = _x((1, 3, 3, 1))
    y, _ = layers.AvgPool(2, padding="SAME").apply({}, {}, x)
    # SAME with window 2, stride 2 on 3: pad 1 after; windows rows {0,1}, {2}.
    want = [[x[0, :2, :2, 0].mean(), x[0, :2, 2, 0].mean()],
            [x[0, 2, :2, 0].mean(), x[0, 2, 2, 0]]]
    _close(y[0, :, :, 0], np.asarray(want, np.float64), 4)


def test_maxpool_gradient_goes_to_the_window_maximum():
    x = _x((2, 4, 4, 3), seed=3)  # continuous values: no ties
    g = jax.grad(lambda x: jnp.sum(layers.MaxPool().apply({}, {}, x)[0]))(jnp.asarray(x))
    blocks = x.reshape(2, 2, 2, 2, 2, 3)  # n, i, u, j, v, c
    want = (blocks == blocks.max(axis=(2, 4), keepdims=True)).astype(np.float32)
    np.testing.assert_array_equal(g, want.reshape(x.shape))


def _reduce_window_max(x, window, strides, padding="VALID"):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                                 (1, strides, strides, 1), padding)


@pytest.mark.parametrize("shape,padding", [((2, 4, 6, 3), "VALID"), ((2, 5, 7, 3), "VALID"),
                                           ((1, 4, 4, 2), "SAME")])
def test_maxpool_blocks_match_reduce_window_with_ties(shape, padding):
    """Non-overlapping windows run as a reshape (no reduce_window in the program); values and
    the gradient equal lax.reduce_window's exactly, ties included: all of a window's gradient
    goes to its first maximal entry (row-major), as with reduce_window and PyTorch."""
    x = jnp.round(jnp.asarray(_x(shape, seed=5)))  # integers: many ties in 2x2 windows
    x = jax.nn.relu(x)
    pool = jax.jit(lambda x: layers.MaxPool(2, padding=padding).apply({}, {}, x)[0])
    assert "reduce_window" not in str(jax.make_jaxpr(jax.grad(lambda x: pool(x).sum()))(x))
    ref = jax.jit(lambda x: _reduce_window_max(x, 2, 2, padding))
    np.testing.assert_array_equal(pool(x), ref(x))
    ct = jnp.asarray(_x(pool(x).shape, seed=6))
    np.testing.assert_array_equal(jax.vjp(pool, x)[1](ct)[0], jax.vjp(ref, x)[1](ct)[0])
    t = jnp.asarray(_x(shape, seed=7))
    np.testing.assert_array_equal(jax.jvp(pool, (x,), (t,))[1], jax.jvp(ref, (x,), (t,))[1])
    np.testing.assert_array_equal(jax.vmap(pool)(x[:, None])[:, 0], pool(x))
    if padding == "SAME":  # once: second derivatives through the custom_jvp
        check_grads(pool, (jnp.asarray(_x((1, 4, 4, 2), seed=8)),), order=2,
                    modes=("fwd", "rev"))


def test_avgpool_blocks_match_reduce_window():
    x = jnp.asarray(_x((2, 5, 6, 3), seed=9))
    pool = lambda x: layers.AvgPool(2).apply({}, {}, x)[0]
    ref = lambda x: jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1),
                                          "VALID") / 4
    assert "reduce_window" not in str(jax.make_jaxpr(pool)(x))
    # a sum of 4 in another order: within 2 float32 roundings of the mean
    np.testing.assert_allclose(pool(x), ref(x), atol=2 * 2 ** -23 * float(jnp.abs(x).max()))
    ct = jnp.asarray(_x(pool(x).shape, seed=6))
    np.testing.assert_allclose(jax.vjp(pool, x)[1](ct)[0], jax.vjp(ref, x)[1](ct)[0], rtol=1e-7)


def test_overlapping_pools_keep_reduce_window():
    x = jnp.asarray(_x((1, 7, 7, 2)))
    pool = lambda x: layers.MaxPool(3, 2).apply({}, {}, x)[0]
    assert "reduce_window" in str(jax.make_jaxpr(pool)(x))
    np.testing.assert_array_equal(pool(x), _reduce_window_max(x, 3, 2))


def test_flatten_is_row_major_reshape():
    x = _x((2, 3, 4, 5))
    layer = layers.Flatten()
    assert layer.init(None, (3, 4, 5))[0] == (60,)
    np.testing.assert_array_equal(layer.apply({}, {}, x)[0], x.reshape(2, 60))


# --------------------------------------------------------------------------- normalization
def _bn_reference(x, gamma, beta, eps):
    x = np.asarray(x, np.float64)
    mean, var = x.mean(0), x.var(0)
    return gamma * (x - mean) / np.sqrt(var + eps) + beta, mean, x.var(0, ddof=1)


def test_batchnorm_train_and_eval_match_numpy(key):
    bn = layers.BatchNorm(momentum=0.8, eps=1e-5)
    out_shape, params, state = bn.init(key, (4,))
    assert out_shape == (4,)
    params = {"gamma": jnp.array([1.0, 2.0, 0.5, 1.5]), "beta": jnp.array([0.0, 1.0, -1.0, 0.2])}
    x = _x((16, 4)) * 3 + 1
    y, new_state = bn.apply(params, state, x, train=True)
    ref, mean, var_unbiased = _bn_reference(x, np.asarray(params["gamma"]),
                                            np.asarray(params["beta"]), 1e-5)
    _close(y, ref, 16)
    _close(new_state["mean"], 0.2 * mean, 16)
    _close(new_state["var"], 0.8 + 0.2 * var_unbiased, 16)
    # Evaluation uses the running averages, not the batch.
    x2 = _x((5, 4), seed=1)
    y2, same = bn.apply(params, new_state, x2, train=False)
    rm, rv = np.asarray(new_state["mean"], np.float64), np.asarray(new_state["var"], np.float64)
    _close(y2, np.asarray(params["gamma"]) * (x2 - rm) / np.sqrt(rv + 1e-5)
           + np.asarray(params["beta"]), 4)
    assert same is new_state


def test_batchnorm_per_channel_on_images_with_a_mask(key):
    bn = layers.BatchNorm(momentum=0.5)
    out_shape, params, state = bn.init(key, (3, 4, 2))
    assert params["gamma"].shape == (2,) and out_shape == (3, 4, 2)
    x = _x((5, 3, 4, 2)) * 2 + np.array([1.0, -3.0], np.float32)
    padded = np.concatenate([x, 100 * np.ones((3, 3, 4, 2), np.float32)])
    mask = np.array([1] * 5 + [0] * 3, np.float32)
    y, s = bn.apply(params, state, padded, train=True, mask=mask)
    real = x.astype(np.float64).transpose(3, 0, 1, 2).reshape(2, -1)  # channel x (N*H*W)
    mean, var = real.mean(1), real.var(1)
    want = (x - mean) / np.sqrt(var + 1e-5)
    _close(y[:5], want, real.shape[1])
    _close(s["mean"], 0.5 * mean, real.shape[1])
    _close(s["var"], 0.5 + 0.5 * real.var(1, ddof=1), real.shape[1])  # n = 5*3*4 entries


def test_batchnorm_mask_ignores_padding_rows(key):
    bn = layers.BatchNorm()
    _, params, state = bn.init(key, (3,))
    x = _x((6, 3))
    padded = np.concatenate([x, 100 * np.ones((2, 3), np.float32)])
    mask = np.array([1] * 6 + [0] * 2, np.float32)
    y_pad, s_pad = bn.apply(params, state, padded, train=True, mask=mask)
    y, s = bn.apply(params, state, x, train=True)
    _close(y_pad[:6], np.asarray(y, np.float64), 6)
    _close(s_pad["var"], np.asarray(s["var"], np.float64), 6)


def test_norms_keep_dtype(key):
    for layer in (layers.BatchNorm(), layers.LayerNorm()):
        _, params, state = layer.init(key, (3,))
        y, _ = layer.apply(params, state, jnp.arange(12.0, dtype=jnp.bfloat16).reshape(4, 3),
                           train=True)
        assert y.dtype == jnp.bfloat16


def test_layernorm_matches_numpy(key):
    ln = layers.LayerNorm()
    _, params, state = ln.init(key, (6,))
    x = _x((4, 6)) * 2 + 3
    y, _ = ln.apply(params, state, x)
    x64 = x.astype(np.float64)
    _close(y, (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5),
           6)


def test_dropout_drop_probability_and_scaling(key):
    drop = layers.Dropout(0.3)
    x = jnp.ones((200, 500))
    y, _ = drop.apply({}, {}, x, train=True, key=key)
    y = np.asarray(y)
    # 100,000 Bernoulli(0.3) draws: std of the fraction is 0.0014; 0.01 is 7 sigma.
    assert np.mean(y == 0) == pytest.approx(0.3, abs=0.01)
    np.testing.assert_allclose(y[y != 0], 1 / 0.7, rtol=F32_EPS)
    y_eval, _ = drop.apply({}, {}, x, train=False)
    np.testing.assert_array_equal(y_eval, x)
    with pytest.raises(ValueError, match="key"):
        drop.apply({}, {}, x, train=True)


# --------------------------------------------------------------------------- nonlinearities
def test_activation_layer_applies_the_named_function_with_options():
    x = _x((3, 5))
    layer = layers.Activation("leaky_relu", negative_slope=0.2)
    out_shape, params, state = layer.init(None, (5,))
    assert out_shape == (5,) and layer.activation == "leaky_relu"
    y, _ = layer.apply(params, state, x)
    np.testing.assert_allclose(y, np.where(x > 0, x, 0.2 * x), rtol=F32_EPS)
    y2, _, acts = layer.trace(params, state, x)
    np.testing.assert_array_equal(acts.pre, x)
    np.testing.assert_array_equal(acts.post, y2)


def test_activation_maxout_groups_channels():
    layer = layers.Activation("maxout", num_pieces=3)
    assert layer.init(None, (2, 2, 6))[0] == (2, 2, 2)
    x = _x((4, 2, 2, 6))
    np.testing.assert_array_equal(layer.apply({}, {}, x)[0], x.reshape(4, 2, 2, 2, 3).max(-1))
    with pytest.raises(ValueError, match="divisible"):
        layer.init(None, (5,))


def test_activation_errors():
    with pytest.raises(ValueError, match="relu"):
        layers.Activation("nope")
    with pytest.raises(ValueError, match="bad options"):
        layers.Activation("relu", slope=0.1)


def test_prelu_alpha_is_a_learnable_per_channel_parameter():
    layer = layers.Activation("prelu", alpha=0.1)
    out_shape, alpha, _ = layer.init(None, (4, 4, 3))
    assert layer.name == "alpha" and out_shape == (4, 4, 3)
    np.testing.assert_array_equal(alpha, np.full(3, 0.1, np.float32))
    alpha = jnp.array([0.1, 0.2, 0.3])
    x = _x((2, 4, 4, 3))
    y, _ = layer.apply(alpha, {}, x)
    np.testing.assert_allclose(y, np.where(x >= 0, x, np.asarray(alpha) * x), rtol=F32_EPS)
    # d/d alpha_c sum(y) = sum over the negative entries of channel c.
    g = jax.grad(lambda a: jnp.sum(layer.apply(a, {}, x)[0]))(alpha)
    _close(g, np.minimum(x, 0).astype(np.float64).sum(axis=(0, 1, 2)), 32)


def test_maxout_layer_is_activations_maxout_of_its_own_preactivations(key):
    layer = layers.Maxout(3, num_pieces=4, bias_init=0.05)
    out_shape, params, state = layer.init(key, (5,))
    assert out_shape == (3,) and params["w"].shape == (5, 12)
    x = _x((7, 5))
    y, _, acts = layer.trace(params, state, x)
    z = x.astype(np.float64) @ np.asarray(params["w"], np.float64) + 0.05
    _close(acts.pre, z, 5)
    np.testing.assert_array_equal(y, activations.maxout(acts.pre, 4))
    # Unit j is the max of the consecutive columns j*4 .. j*4+3.
    _close(y, z.reshape(7, 3, 4).max(-1), 5)
    np.testing.assert_array_equal(layer.apply(params, state, x)[0], y)


def test_maxout_tie_gradient_goes_to_the_lowest_piece(key):
    layer = layers.Maxout(1, num_pieces=3, bias_init=0.0)
    _, params, _ = layer.init(key, (2,))
    # Pieces 1 and 2 equal (and above piece 0): the whole gradient goes to piece 1.
    params = {"w": jnp.array([[0.0, 1.0, 1.0], [0.0, 2.0, 2.0]]), "b": jnp.zeros(3)}
    x = jnp.ones((1, 2))
    g = jax.grad(lambda p: jnp.sum(layer.apply(p, {}, x)[0]))(params)
    np.testing.assert_array_equal(g["b"], [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(g["w"], [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])


# =========================================================================== nesting: serial as
# a layer and Residual (layers nest, stax's contract). Every reference below is numpy written
# from the params, or the same layers flattened into one serial.
from jaxnn import models  # noqa: E402


def _np64(a):
    return np.asarray(a, np.float64)


def _np_conv(x, w, b=None, *, stride=1, pads=((0, 0), (0, 0))):
    """Cross-correlation of NHWC x with HWIO w (explicit pads, one stride), by loops."""
    x, w = _np64(x), _np64(w)
    xp = np.pad(x, ((0, 0), *pads, (0, 0)))
    kh, kw = w.shape[:2]
    oh, ow = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, w.shape[-1]))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw]
            out[:, i, j] = np.einsum("nuvc,uvco->no", patch, w)
    return out if b is None else out + _np64(b)


def test_serial_without_input_shape_is_a_layer_that_nests(key):
    """serial(...) is a Layer; serial in serial computes what the flattened layers compute with
    the same params (mapped to the flat layout), and both equal numpy."""
    inner = layers.serial(layers.Dense(4, bias_init=0.1), layers.Activation("tanh"),
                          layers.Dense(3, bias_init=-0.2))
    assert isinstance(inner, layers.Layer) and inner.weighted
    outer = layers.serial(layers.Dense(5, bias_init=0.3), layers.Activation("relu"), inner,
                          layers.Activation("tanh"), layers.Dense(2))
    assert isinstance(outer, layers.Layer)
    out_shape, params, state = outer.init(key, (6,))
    assert out_shape == (2,)
    wb = {"w": 0, "b": 0}
    assert jax.tree.structure(params) == jax.tree.structure(
        {"layer_0": wb, "layer_1": {"layer_0": wb, "layer_1": wb}, "layer_2": wb})
    assert state == {"layer_0": {}, "layer_1": {"layer_0": {}, "layer_1": {}}, "layer_2": {}}

    flat = layers.serial(layers.Dense(5), layers.Activation("relu"), layers.Dense(4),
                         layers.Activation("tanh"), layers.Dense(3), layers.Activation("tanh"),
                         layers.Dense(2), input_shape=(6,))
    mapped = {"layer_0": params["layer_0"], "layer_1": params["layer_1"]["layer_0"],
              "layer_2": params["layer_1"]["layer_1"], "layer_3": params["layer_2"]}
    x = _x((3, 6))
    y, new_state = outer.apply(params, state, x)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    y_flat, _ = flat.apply(mapped, flat.init(key)[1], x)
    np.testing.assert_allclose(y, y_flat, rtol=1e-6, atol=1e-6)
    p = {k: {n: _np64(v) for n, v in d.items()} for k, d in mapped.items()}
    h = np.maximum(_np64(x) @ p["layer_0"]["w"] + p["layer_0"]["b"], 0)
    h = np.tanh(h @ p["layer_1"]["w"] + p["layer_1"]["b"])
    h = np.tanh(h @ p["layer_2"]["w"] + p["layer_2"]["b"])
    _close(y, h @ p["layer_3"]["w"] + p["layer_3"]["b"], 8)


def test_nested_serial_params_follow_the_key_rule(key):
    """The nested block is model layer 1 of the outer serial: it is initialized with
    split(key, 3)[1], by its own rule (its Dense i drawn with split(split(k, 2)[i])[0])."""
    inner = layers.serial(layers.Dense(4), layers.Activation("relu"), layers.Dense(3))
    outer = layers.serial(layers.Dense(5), layers.Activation("relu"), inner, layers.Dense(2))
    _, params, _ = outer.init(key, (6,))
    k0, k1, k2 = jax.random.split(key, 3)
    he = jax.nn.initializers.he_normal()
    np.testing.assert_array_equal(params["layer_0"]["w"], he(jax.random.split(k0)[0], (6, 5)))
    np.testing.assert_array_equal(params["layer_2"]["w"], he(jax.random.split(k2)[0], (3, 2)))
    for i, (k, shape) in enumerate(zip(jax.random.split(k1, 2), ((5, 4), (4, 3)), strict=True)):
        np.testing.assert_array_equal(params["layer_1"][f"layer_{i}"]["w"],
                                      he(jax.random.split(k)[0], shape))


def test_residual_without_projection_is_x_plus_f_of_x(key):
    f = layers.serial(layers.Dense(4, bias_init=0.1), layers.Activation("relu"),
                      layers.Dense(4, bias_init=0.2))
    block = layers.Residual(f)
    out_shape, params, state = block.init(key, (4,))
    assert out_shape == (4,) and "skip" not in params
    # The branch holds exactly f's params for the same key.
    jax.tree.map(np.testing.assert_array_equal, params, f.init(key, (4,))[1])
    x = _x((5, 4))
    y, _ = block.apply(params, state, x)
    p = jax.tree.map(_np64, params)
    h = np.maximum(_np64(x) @ p["layer_0"]["w"] + p["layer_0"]["b"], 0)
    _close(y, _np64(x) + h @ p["layer_1"]["w"] + p["layer_1"]["b"], 8)
    # A plain layer as the branch: y = x + (x W + b).
    dense = layers.Residual(layers.Dense(4, bias_init=0.5))
    _, pd, sd = dense.init(key, (4,))
    _close(dense.apply(pd, sd, x)[0], _np64(x) + _np64(x) @ _np64(pd["w"]) + 0.5, 8)


def test_residual_dense_projection_is_x_wp_plus_f_of_x(key):
    f = layers.serial(layers.Dense(5, bias_init=0.1), layers.Activation("tanh"),
                      layers.Dense(3))
    block = layers.Residual(f)
    out_shape, params, state = block.init(key, (4,))
    assert out_shape == (3,) and set(params) == {"layer_0", "layer_1", "skip"}
    assert set(params["skip"]) == {"w"}  # no bias: y = x W_p + f(x)
    # The projection is drawn with fold_in(key, 1), by Dense's rule (its first split).
    np.testing.assert_array_equal(params["skip"]["w"], jax.nn.initializers.he_normal()(
        jax.random.split(jax.random.fold_in(key, 1))[0], (4, 3), jnp.float32))
    x = _x((5, 4))
    y, _ = block.apply(params, state, x)
    p = jax.tree.map(_np64, params)
    fx = np.tanh(_np64(x) @ p["layer_0"]["w"] + p["layer_0"]["b"]) @ p["layer_1"]["w"] \
        + p["layer_1"]["b"]
    _close(y, _np64(x) @ p["skip"]["w"] + fx, 8)
    # projection=True projects even when the shapes agree; False refuses a shape change.
    _, p_same, _ = layers.Residual(layers.Dense(4), projection=True).init(key, (4,))
    assert p_same["skip"]["w"].shape == (4, 4)
    with pytest.raises(ValueError, match=r"\(4,\).*\(3,\)"):
        layers.Residual(f, projection=False).init(key, (4,))


def test_residual_conv_projection_with_stride(key):
    """A branch halving a 5x5 image (3x3 SAME, stride 2: 3x3 out) and changing channels 2 -> 5:
    the skip path is a 1x1 convolution with stride 2 (every second position, no bias)."""
    f = layers.serial(layers.Conv2D(4, 3, strides=2, bias_init=0.1), layers.Activation("relu"),
                      layers.Conv2D(5, 1, bias_init=-0.1))
    block = layers.Residual(f)
    out_shape, params, state = block.init(key, (5, 5, 2))
    assert out_shape == (3, 3, 5) and params["skip"]["w"].shape == (1, 1, 2, 5)
    x = _x((2, 5, 5, 2))
    y, _ = block.apply(params, state, x)
    p = jax.tree.map(_np64, params)
    # SAME, stride 2 on 5 rows: (3 - 1) * 2 + 3 - 5 = 2 rows of padding, one on each side.
    h = np.maximum(_np_conv(x, p["layer_0"]["w"], p["layer_0"]["b"], stride=2,
                            pads=((1, 1), (1, 1))), 0)
    fx = _np_conv(h, p["layer_1"]["w"], p["layer_1"]["b"])
    skip = np.einsum("nijc,co->nijo", _np64(x)[:, ::2, ::2], p["skip"]["w"][0, 0])
    _close(y, skip + fx, 24)


def test_residual_shapes_no_projection_can_undo_are_errors(key):
    # 6x6 -> 4x4 (3x3 VALID): no stride s has ceil(6 / s) == 4.
    with pytest.raises(ValueError, match=r"\(6, 6, 2\).*\(4, 4, 3\)"):
        layers.Residual(layers.Conv2D(3, padding="VALID")).init(key, (6, 6, 2))
    with pytest.raises(ValueError, match=r"\(2, 2, 1\).*\(3,\)"):
        layers.Residual(layers.serial(layers.Flatten(), layers.Dense(3))).init(key, (2, 2, 1))
    # A weightless branch changing the shape gets a projection only when asked for.
    with pytest.raises(ValueError, match="projection=True"):
        layers.Residual(layers.MaxPool()).init(key, (4, 4, 2))
    pooled = layers.Residual(layers.MaxPool(), projection=True)
    assert pooled.weighted
    out, params, state = pooled.init(key, (4, 4, 2))
    x = _x((1, 4, 4, 2))
    want = _np64(x).reshape(1, 2, 2, 2, 2, 2).max(axis=(2, 4)) + np.einsum(
        "nijc,co->nijo", _np64(x)[:, ::2, ::2], _np64(params["skip"]["w"][0, 0]))
    assert out == (2, 2, 2)
    _close(pooled.apply(params, state, x)[0], want, 4)
    with pytest.raises(ValueError, match="Layer"):
        layers.Residual(jnp.tanh)
    with pytest.raises(ValueError, match="projection"):
        layers.Residual(layers.Dense(2), projection="auto")


def test_residual_blocks_inside_a_model(key):
    """Two residual blocks in a model: params nested per block, one name per weight matrix,
    outputs equal to numpy, the post-addition relu reported for each block's last matrix."""
    block = lambda c: layers.Residual(layers.serial(
        layers.Conv2D(c, 1, bias_init=0.1), layers.Activation("relu"), layers.Conv2D(c, 1)))
    model = layers.serial(layers.Conv2D(3, 1), layers.Activation("relu"),
                          block(3), layers.Activation("relu"),
                          block(4), layers.Activation("relu"),
                          layers.Flatten(), layers.Dense(2), input_shape=(2, 2, 2))
    assert model.layer_names == ("layer_0", "layer_1/layer_0", "layer_1/layer_1",
                                 "layer_2/layer_0", "layer_2/layer_1", "layer_2/skip", "layer_3")
    assert model.activations == ("relu",) * 5 + (None, None)
    params, state = model.init(key)
    n_w = sum(1 for path, _ in jax.tree_util.tree_leaves_with_path(params)
              if path[-1] == jax.tree_util.DictKey("w"))
    assert n_w == len(model.layer_names) == 7
    for name in model.layer_names:
        assert models.param_at(params, name)["w"].ndim == 4 or name == "layer_3"
    x = _x((3, 2, 2, 2))
    y, _, acts = model.trace(params, state, x)
    assert len(acts) == 6  # every weight matrix but the output's

    p = jax.tree.map(_np64, params)
    mm = lambda h, d: np.einsum("nijc,co->nijo", h, d["w"][0, 0]) + d.get("b", 0.0)
    relu = lambda h: np.maximum(h, 0)
    h0 = relu(mm(_np64(x), p["layer_0"]))
    a10 = relu(mm(h0, p["layer_1"]["layer_0"]))
    pre1 = h0 + mm(a10, p["layer_1"]["layer_1"])
    h1 = relu(pre1)
    a20 = relu(mm(h1, p["layer_2"]["layer_0"]))
    skip = mm(h1, p["layer_2"]["skip"])
    pre2 = skip + mm(a20, p["layer_2"]["layer_1"])
    h2 = relu(pre2)
    _close(y, h2.reshape(3, -1) @ p["layer_3"]["w"] + p["layer_3"]["b"], 24)
    want = [(mm(_np64(x), p["layer_0"]), h0), (mm(h0, p["layer_1"]["layer_0"]), a10),
            (pre1, h1), (mm(h1, p["layer_2"]["layer_0"]), a20), (pre2, h2), (skip, skip)]
    for a, (pre, post) in zip(acts, want, strict=True):
        _close(a.pre, pre, 16)
        _close(a.post, post, 16)


def test_a_model_goes_inside_a_serial(key):
    inner = layers.mlp([4, 5, 3])
    assert isinstance(inner.layer, layers.Layer)
    model = layers.serial(inner, layers.Activation("relu"), layers.Dense(2), input_shape=(4,))
    assert model.layer_names == ("layer_0/layer_0", "layer_0/layer_1", "layer_1")
    params, state = model.init(key)
    x = _x((3, 4))
    h, _ = inner.apply(params["layer_0"], state["layer_0"], x)
    p = jax.tree.map(_np64, params)
    want = np.maximum(_np64(h), 0) @ p["layer_1"]["w"] + p["layer_1"]["b"]
    _close(model.apply(params, state, x)[0], want, 8)


@pytest.mark.slow
def test_gradients_through_nested_blocks_pass_gradcheck():
    from jaxnn import gradcheck

    model = layers.serial(
        layers.Dense(4, bias_init=0.1), layers.Activation("tanh"),
        layers.Residual(layers.serial(layers.Dense(3, bias_init=0.1), layers.LayerNorm(),
                                      layers.Activation("tanh"), layers.Dense(5))),
        layers.Activation("tanh"),
        layers.Residual(layers.serial(layers.Dense(5), layers.Activation("tanh"))),
        layers.Dense(2), input_shape=(3,))
    with jax.enable_x64(True):
        params, state = model.init(jax.random.key(3))
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x = jnp.asarray(_x((4, 3)), jnp.float64)
        f = lambda p: jnp.sum(jnp.sin(model.apply(p, state, x)[0]))
        report = gradcheck.check_grads(f, params)
    assert report.passed, report


def test_regularizers_select_every_weight_matrix_of_nested_blocks(key):
    from jaxnn import regularizers

    model = layers.serial(layers.Dense(4), layers.Activation("relu"),
                          layers.Residual(layers.serial(layers.Dense(4), layers.BatchNorm(),
                                                        layers.Activation("relu"),
                                                        layers.Dense(6))),
                          layers.Dense(2), input_shape=(3,))
    params, _ = model.init(key)
    ws = [models.param_at(params, n)["w"] for n in model.layer_names]
    assert len(ws) == 5  # layer_0, layer_1/layer_0, layer_1/layer_1, layer_1/skip, layer_2
    got = regularizers.weights(params)
    assert sorted(a.size for a in got) == sorted(a.size for a in ws)
    want = sum(np.sum(_np64(w) ** 2) for w in ws)
    np.testing.assert_allclose(float(regularizers.l2_penalty(got)), want, rtol=1e-6)
    mask = regularizers.weight_mask(params)
    assert models.param_at(mask, "layer_1/skip")["w"] is True
    assert models.param_at(mask, "layer_1/layer_0")["w"] is True
    assert models.param_at(mask, "layer_1/layer_0")["bn"]["gamma"] is False


def test_param_at_fetches_a_path():
    tree = {"layer_1": {"layer_0": {"w": 1}, "skip": {"w": 2}}}
    assert models.param_at(tree, "layer_1/skip") == {"w": 2}
    assert models.param_at(tree, "") is tree
    with pytest.raises(KeyError, match="nope"):
        models.param_at(tree, "layer_1/nope")


def test_layers_exports_the_combinators():
    for name in ("serial", "Residual", "Traced", "Layer"):
        assert name in layers.__all__
    assert layers.serial is models.serial


# =========================================================================== Conv2D algorithms
# and jax transformations through every layer. im2col == lax.conv == a numpy loop; jax.jvp,
# jax.jacfwd, jax.jacrev, jax.hessian and jax.vmap of every layer kind and of a small convnet
# against each other and a python loop; the convolution's gradient inside lax.scan.
from jax import lax  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from jaxnn import _conv  # noqa: E402

F64_EPS = float(np.finfo(np.float64).eps)


def _pair2(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _np_conv_any_pads(x, w, strides, pads):
    """Cross-correlation by loops in float64; a negative pad crops (as lax's)."""
    x = np.asarray(x, np.float64)
    (t, b), (l, r) = pads
    x = np.pad(x, ((0, 0), (max(t, 0), max(b, 0)), (max(l, 0), max(r, 0)), (0, 0)))
    x = x[:, max(-t, 0):x.shape[1] - max(-b, 0), max(-l, 0):x.shape[2] - max(-r, 0)]
    w = np.asarray(w, np.float64)
    kh, kw, _, co = w.shape
    oh = max((x.shape[1] - kh) // strides[0] + 1, 0)
    ow = max((x.shape[2] - kw) // strides[1] + 1, 0)
    y = np.zeros((x.shape[0], oh, ow, co))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * strides[0]:i * strides[0] + kh, j * strides[1]:j * strides[1] + kw]
            y[:, i, j] = np.einsum("nuvc,uvco->no", patch, w)
    return y


_conv_im2col = jax.jit(_conv.conv_im2col, static_argnums=(2, 3))
_conv_lax = jax.jit(_conv.conv_lax, static_argnums=(2, 3))


@pytest.mark.parametrize("kernel,strides,padding,hwc", [
    (1, 1, "SAME", (5, 3, 2)),
    (1, 2, "VALID", (6, 5, 3)),
    (3, 1, "SAME", (6, 4, 3)),
    (3, 2, "SAME", (7, 6, 2)),
    (3, 2, "VALID", (8, 5, 3)),
    ((3, 5), (1, 2), "SAME", (6, 9, 2)),
    (5, 1, "VALID", (9, 7, 2)),
    (5, 2, ((2, 1), (0, 3)), (7, 6, 3)),
    (3, 1, ((-1, 2), (1, 0)), (6, 5, 2)),  # a negative pad crops, as in lax
    (5, 1, "VALID", (3, 6, 2)),  # kernel taller than the input: an empty output, as lax gives
])
def test_im2col_equals_lax_conv_and_a_numpy_loop(kernel, strides, padding, hwc):
    kh, kw = _pair2(kernel)
    s = _pair2(strides)
    x, w = _x((2, *hwc), seed=5), _x((kh, kw, hwc[2], 4), seed=6)
    pads = _conv.resolve_pads(padding, hwc[:2], (kh, kw), s)
    got = _conv_im2col(jnp.asarray(x), jnp.asarray(w), s, pads)
    ref = _conv_lax(jnp.asarray(x), jnp.asarray(w), s, pads)
    exact = _np_conv_any_pads(x, w, s, pads)
    assert got.shape == ref.shape == exact.shape and got.dtype == jnp.float32
    # Each output is a float32 sum of n = kh*kw*c_in rounded products: whatever the order of
    # summation it is within (n + 1) * eps * sum|terms| of the exact value (Higham's gamma_n
    # bound, eps = 2u), so two orders are within twice that of each other.
    n = kh * kw * hwc[2]
    bound = (n + 1) * F32_EPS * _np_conv_any_pads(np.abs(x), np.abs(w), s, pads)
    for y in (got, ref):
        assert np.all(np.abs(np.asarray(y, np.float64) - exact) <= bound)
    assert np.all(np.abs(np.asarray(got, np.float64) - np.asarray(ref, np.float64)) <= 2 * bound)


def test_conv2d_algorithms_agree_keep_dtype_and_auto_is_im2col_on_cpu(key):
    x = _x((2, 6, 5, 3), seed=2)
    outs = {}
    for algorithm in ("auto", "im2col", "lax"):
        layer = layers.Conv2D(4, 3, strides=2, bias_init=0.1, algorithm=algorithm)
        out_shape, params, state = layer.init(key, (6, 5, 3))  # the same init for every path
        outs[algorithm] = layer.apply(params, state, x)[0]
        assert outs[algorithm].shape == (2, *out_shape)
        assert layer.apply(params, state, jnp.asarray(x, jnp.bfloat16))[0].dtype == jnp.bfloat16
    bound = 2 * (27 + 1) * F32_EPS * _numpy_conv(np.abs(x), np.abs(params["w"]), (2, 2),
                                                 ((0, 1), (1, 1)))
    for algorithm in ("auto", "im2col"):
        assert np.all(np.abs(np.asarray(outs[algorithm]) - np.asarray(outs["lax"])) <= bound)
    with pytest.raises(ValueError, match="algorithm"):
        layers.Conv2D(4, algorithm="fft")
    if jax.default_backend() != "cpu":
        return

    def compiled(algorithm):
        layer = layers.Conv2D(4, 3, algorithm=algorithm)
        _, params, _ = layer.init(key, (6, 5, 3))
        fn = jax.jit(jax.grad(lambda p: jnp.sum(layer.apply(p, {}, x)[0] ** 2)))
        return fn.lower(params).compile().as_text()

    # On a CPU "auto" compiles to im2col: no convolution anywhere, forward or backward.
    assert "convolution(" not in compiled("auto") and "convolution(" not in compiled("im2col")
    assert "convolution(" in compiled("lax")


def _warm_bn_state(layer, params, state, shape):
    """BatchNorm running averages after one training batch (so evaluation is not identity)."""
    x = jnp.asarray(_x((6, *shape), seed=9) * 2 + 1, jnp.float64)
    return layer.apply(params, state, x, train=True)[1]


# name: (layer factory, input shape, apply options). Small shapes: each case compiles twice.
_TRANSFORM_CASES = {
    "dense": (lambda: layers.Dense(3, bias_init=0.1), (4,), {}),
    "conv_auto": (lambda: layers.Conv2D(2, 3, strides=2), (5, 4, 2), {}),
    "conv_im2col_valid": (lambda: layers.Conv2D(2, (3, 2), padding="VALID",
                                                algorithm="im2col"), (5, 4, 2), {}),
    "conv_lax": (lambda: layers.Conv2D(2, 3, strides=2, algorithm="lax"), (5, 4, 2), {}),
    "maxpool": (lambda: layers.MaxPool(2), (4, 4, 2), {}),
    "avgpool": (lambda: layers.AvgPool(3, 2, padding="SAME"), (5, 4, 2), {}),
    "flatten": (lambda: layers.Flatten(), (2, 3, 2), {}),
    "batchnorm_train": (lambda: layers.BatchNorm(), (3,), {"train": True}),
    "batchnorm_train_images": (lambda: layers.BatchNorm(), (2, 2, 2), {"train": True}),
    "batchnorm_eval": (lambda: layers.BatchNorm(), (3,), {"warm": True}),
    "layernorm": (lambda: layers.LayerNorm(), (4,), {}),
    "dropout_eval": (lambda: layers.Dropout(0.5), (4,), {}),
    "dropout_train": (lambda: layers.Dropout(0.5), (4,), {"train": True, "key": 3}),
    "relu": (lambda: layers.Activation("relu"), (4,), {}),
    "tanh": (lambda: layers.Activation("tanh"), (4,), {}),
    "prelu": (lambda: layers.Activation("prelu", alpha=0.2), (2, 2, 2), {}),
    "activation_maxout": (lambda: layers.Activation("maxout", num_pieces=2), (4,), {}),
    "maxout": (lambda: layers.Maxout(2, num_pieces=3), (3,), {}),
}


def _flat_fn(apply, params, state, x, *, train=False, key=None):
    """``f(z)`` with ``z`` the flat (params, x): the layer's output and new state, flattened."""
    z, unravel = ravel_pytree((params, x))

    def f(z):
        p, xx = unravel(z)
        y, new_state = apply(p, state, xx, train=train, key=key)
        return jnp.concatenate([jnp.ravel(y)] + [jnp.ravel(s) for s in jax.tree.leaves(new_state)])

    return f, z


def _all_transforms(f, rev_rev):
    """One jitted function computing every transformation of ``f`` (one compile per case; the
    platform-dependent Conv2D is then a conditional inside the traced program)."""

    def run(z, v, u, zs):
        loss = lambda z: jnp.sum(jnp.sin(f(z)))  # noqa: E731 - smooth, with curvature
        out = {
            "jvp": jax.jvp(f, (z,), (v,))[1] @ u,
            "vjp": jax.grad(lambda z: f(z) @ u)(z) @ v,
            "jacfwd": jax.jacfwd(f)(z),
            "jacrev": jax.jacrev(f)(z),
            "hessian": jax.hessian(loss)(z),
            "vmap": jax.vmap(f)(zs),
        }
        if rev_rev:
            out["rev_rev"] = jax.jacrev(jax.grad(loss))(z)
        return out

    return jax.jit(run)


def _agree(got, want, terms):
    """float64 results of sums of at most ``terms`` products, computed in different orders:
    they differ by ~ eps64 * terms * their scale (a generous constant for the order)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=0, atol=64 * terms * F64_EPS * scale)


def _check_transforms(f, z, seed=0, rev_rev=True):
    rng = np.random.default_rng(seed)
    y = np.asarray(jax.jit(f)(z))
    v, u = rng.normal(size=z.shape), rng.normal(size=y.shape)
    zs = z + 0.1 * rng.normal(size=(3, z.size))
    out = _all_transforms(f, rev_rev)(z, v, u, zs)
    terms = z.size + y.size
    assert np.all(np.isfinite(out["hessian"]))
    # Forward and reverse mode: <u, J v> both ways; the whole Jacobian both ways.
    _agree(out["jvp"], out["vjp"], terms)
    assert out["jacfwd"].shape == (y.size, z.size)
    _agree(out["jacfwd"], out["jacrev"], terms)
    # Forward-over-reverse Hessian: symmetric, equal to reverse-over-reverse.
    _agree(out["hessian"], out["hessian"].T, terms)
    if rev_rev:
        _agree(out["hessian"], out["rev_rev"], terms)
    # vmap over a leading axis (params and inputs together, a population) = a python loop.
    loop = np.stack([np.asarray(jax.jit(f)(zi)) for zi in zs])
    _agree(out["vmap"], loop, terms)


@pytest.mark.parametrize("case", list(_TRANSFORM_CASES))
def test_jvp_jacfwd_hessian_vmap_through_every_layer_kind(case):
    make, shape, opts = _TRANSFORM_CASES[case]
    with jax.enable_x64(True):
        layer = make()
        _, params, state = layer.init(jax.random.key(1), shape)
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        state = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state)
        if opts.get("warm"):
            state = _warm_bn_state(layer, params, state, shape)
        x = jnp.asarray(np.random.default_rng(3).normal(size=(3, *shape)))
        key = jax.random.key(opts["key"]) if "key" in opts else None
        f, z = _flat_fn(layer.apply, params, state, x, train=opts.get("train", False), key=key)
        _check_transforms(f, z)


@pytest.mark.slow  # the fast suite's time budget; CI runs it with the slow suite
def test_jvp_jacfwd_hessian_vmap_through_a_convnet():
    with jax.enable_x64(True):
        model = models.convnet((8, 8, 1), 3, "conv:4,pool,fc:8")
        params, state = model.init(jax.random.key(2))
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 8, 8, 1)))
        f, z = _flat_fn(model.apply, params, state, x)
        # (reverse-over-reverse left to the per-layer cases: it doubles this compile)
        _check_transforms(f, z, seed=1, rev_rev=False)


def test_conv_gradient_inside_lax_scan_equals_outside():
    """An epoch is a lax.scan of steps: the conv layer's gradients there are those of a step
    jitted alone, and those of lax.conv_general_dilated's own rules (float64)."""
    with jax.enable_x64(True):
        conv = layers.Conv2D(3, 3, strides=2, dtype=jnp.float64)
        _, params, state = conv.init(jax.random.key(0), (7, 6, 2))
        xs = jnp.asarray(np.random.default_rng(6).normal(size=(3, 2, 7, 6, 2)))

        def loss(p, x, apply=conv.apply):
            return jnp.sum(jnp.sin(apply(p, state, x)[0]))

        grad = jax.grad(loss)

        def scanned(p, xs):
            return lax.scan(lambda p, x: (p, grad(p, x)), p, xs)[1]

        in_scan = jax.jit(scanned)(params, xs)
        lax_layer = layers.Conv2D(3, 3, strides=2, dtype=jnp.float64, algorithm="lax")
        for i in range(xs.shape[0]):
            alone = jax.jit(grad)(params, xs[i])
            ref = jax.grad(lambda p, x: loss(p, x, lax_layer.apply))(params, xs[i])
            for a, b, c in zip([t[i] for t in jax.tree.leaves(in_scan)],
                               jax.tree.leaves(alone), jax.tree.leaves(ref), strict=True):
                # float64 sums of at most 27 products (input gradient: 3x3 taps x 3 features;
                # kernel gradient: 2 images x 4x3 outputs = 24).
                _agree(a, b, 27)
                _agree(b, c, 27)


# --------------------------------------------------------------------------- GlobalAvgPool
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_global_avg_pool_is_the_mean_per_channel(dtype):
    layer = layers.GlobalAvgPool()
    shape, params, state = layer.init(jax.random.key(0), (3, 5, 4))
    assert shape == (4,) and params == {} and state == {}
    x = np.random.default_rng(1).normal(size=(2, 3, 5, 4)).astype(np.float32)
    y, _ = layer.apply(params, state, jnp.asarray(x, dtype))
    assert y.dtype == dtype and y.shape == (2, 4)
    want = np.asarray(jnp.asarray(x, dtype), np.float64).mean(axis=(1, 2))
    tol = 1e-6 if dtype == jnp.float32 else 2 ** -8  # the output rounding of the dtype
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="GlobalAvgPool: needs inputs of shape"):
        layer.init(jax.random.key(0), (16,))


# --------------------------------------------------------------------------- trust, round two
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.int8, jnp.uint8, jnp.bool_])
def test_integer_inputs_compute_in_the_params_float_dtype(key, dtype):
    # Cause: the weights were cast to x's dtype, so an int x met int weights (He-normal weights
    # of size < 1 become 0): Dense on [[1, 2, 3, 4]] gave [-4, 0, 3]. Integer and bool inputs
    # are promoted to the params' float dtype; the reference is numpy in float64.
    x = np.array([[1, 0, 3, 4], [0, 1, 1, 0]]).astype(dtype)
    dense = layers.Dense(3, bias_init=0.25)
    _, params, _ = dense.init(key, (4,))
    y, _ = dense.apply(params, {}, x)
    assert y.dtype == jnp.float32
    _close(y, x.astype(np.float64) @ np.asarray(params["w"], np.float64) + 0.25, 4)
    # The normalization layers follow the same rule (their output was cast back to int).
    for layer in (layers.BatchNorm(), layers.LayerNorm()):
        _, p, s = layer.init(key, (4,))
        out, _ = layer.apply(p, s, x, train=True)
        assert out.dtype == jnp.float32 and np.all(np.isfinite(out))
        assert float(jnp.max(jnp.abs(out))) > 0.5  # not truncated to 0
    # Float inputs keep their dtype.
    assert dense.apply(params, {}, jnp.asarray(x, jnp.float16))[0].dtype == jnp.float16


@pytest.mark.parametrize("make, arg", [
    (lambda: layers.BatchNorm(eps=float("inf")), "eps"),
    (lambda: layers.BatchNorm(eps=0.0), "eps"),
    (lambda: layers.BatchNorm(eps=float("nan")), "eps"),
    (lambda: layers.BatchNorm(eps="1e-5"), "eps"),
    (lambda: layers.BatchNorm(momentum=float("nan")), "momentum"),
    (lambda: layers.BatchNorm(momentum=-0.1), "momentum"),
    (lambda: layers.BatchNorm(momentum=float("inf")), "momentum"),
    (lambda: layers.BatchNorm(momentum=True), "momentum"),
    (lambda: layers.LayerNorm(eps=float("inf")), "eps"),
    (lambda: layers.LayerNorm(eps=-1e-5), "eps"),
])
def test_norm_hyperparameters_must_be_finite_and_in_range(make, arg):
    # Cause: only `eps > 0` was checked, so eps=inf normalized every output to beta (zeros).
    with pytest.raises(ValueError, match=f"`{arg}` must be"):
        make()


def test_batchnorm_running_averages_do_not_move_without_real_rows(key):
    # Cause: a fully masked batch (n = 0) still blended its mean 0 and variance 0 into the
    # running averages, shrinking the variance used in evaluation.
    bn = layers.BatchNorm(momentum=0.5)
    _, params, _ = bn.init(key, (3,))
    state = {"mean": jnp.array([1.0, 2.0, 3.0]), "var": jnp.array([4.0, 5.0, 6.0])}
    x = _x((4, 3)) * 10
    _, s = bn.apply(params, state, x, train=True, mask=np.zeros(4, np.float32))
    np.testing.assert_array_equal(s["mean"], state["mean"])
    np.testing.assert_array_equal(s["var"], state["var"])
    _, s = jax.jit(lambda st, m: bn.apply(params, st, x, train=True, mask=m))(
        state, jnp.zeros(4))
    np.testing.assert_array_equal(s["var"], state["var"])
    # One real row: the mean moves (half-way, momentum 0.5); one value has no variance.
    _, s = bn.apply(params, state, x, train=True, mask=np.array([0, 1, 0, 0], np.float32))
    _close(s["mean"], 0.5 * np.array([1.0, 2.0, 3.0]) + 0.5 * x[1], 1)
    np.testing.assert_array_equal(s["var"], state["var"])


def test_conv2d_on_integer_images_equals_the_float_images():
    layer = layers.Conv2D(3)
    _, params, state = layer.init(jax.random.key(0), (4, 4, 2))
    x = np.random.default_rng(0).integers(0, 5, (2, 4, 4, 2))
    got, _ = layer.apply(params, state, jnp.asarray(x, jnp.int32))
    want, _ = layer.apply(params, state, jnp.asarray(x, jnp.float32))
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
