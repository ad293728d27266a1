"""jaxnn.models: serial's grouping, keys and shapes; mlp and convnet against numpy forwards and
against each other; the arch mini-language; a convnet through gradcheck, fit and a population."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import data, gradcheck, initializers, layers, models, optim, population, train
from jaxnn.layers import (
    Activation,
    AvgPool,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    LayerNorm,
    MaxPool,
)

F32_EPS = float(np.finfo(np.float32).eps)


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _close(got, want, terms):
    """float32 against a float64 reference: error ~ eps * accumulated terms."""
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=8 * terms * F32_EPS,
                               atol=8 * terms * F32_EPS)


def _np(a):
    return np.asarray(a, np.float64)


def test_public_names_and_the_layers_reexports():
    for name in models.__all__:
        assert hasattr(models, name)
    for name in ("Model", "serial", "mlp", "convnet", "parse_arch", "ArchItem"):
        assert getattr(layers, name) is getattr(models, name)
    with pytest.raises(AttributeError):
        layers.no_such_thing  # noqa: B018


# --------------------------------------------------------------------------- mlp
def test_mlp_params_come_from_one_key_per_layer(key):
    """The documented recipe: k_0..k_{L-1} = split(key, L); layer i's weights are drawn with
    split(k_i)[0] (Dense's weight key)."""
    sizes = [5, 8, 7, 3]
    params, state = layers.mlp(sizes, bias_init=0.1).init(key)
    assert set(params) == set(state) == {"layer_0", "layer_1", "layer_2"}
    he = initializers.he_normal()
    for i, k in enumerate(jax.random.split(key, 3)):
        p = params[f"layer_{i}"]
        np.testing.assert_array_equal(p["w"], he(jax.random.split(k)[0], tuple(sizes[i:i + 2])))
        np.testing.assert_array_equal(p["b"], np.full(sizes[i + 1], 0.1, np.float32))


def _numpy_mlp(params, x, act):
    h = _np(x)
    for i in range(len(params)):
        h = h @ _np(params[f"layer_{i}"]["w"]) + _np(params[f"layer_{i}"]["b"])
        if i < len(params) - 1:
            h = act(h)
    return h


def test_mlp_forward_and_trace_match_numpy(key):
    model = layers.mlp([5, 8, 7, 3], activation="tanh", bias_init=0.1)
    params, state = model.init(key)
    assert (model.input_shape, model.output_shape) == ((5,), (3,))
    assert model.layer_names == ("layer_0", "layer_1", "layer_2")
    assert model.activations == ("tanh", "tanh", None)
    x = _x((4, 5))
    y, _ = model.apply(params, state, x)
    _close(y, _numpy_mlp(params, x, np.tanh), 8)
    out, _, acts = model.trace(params, state, x)
    np.testing.assert_array_equal(out, y)
    assert len(acts) == 2 and acts[0].pre.shape == (4, 8) and acts[1].post.shape == (4, 7)
    _close(acts[0].pre, _np(x) @ _np(params["layer_0"]["w"]) + 0.1, 5)
    np.testing.assert_allclose(acts[0].post, np.tanh(acts[0].pre), rtol=2 * F32_EPS, atol=1e-7)


def test_mlp_is_serial_and_convnet_of_fc_entries(key):
    model = layers.mlp([5, 8, 7, 3], activation="elu", bias_init=0.01, dropout=0.2)
    dense = lambda n: Dense(n, bias_init=0.01)
    by_hand = layers.serial(dense(8), Activation("elu"), Dropout(0.2), dense(7),
                            Activation("elu"), Dropout(0.2), dense(3), input_shape=(5,))
    by_arch = models.convnet((5,), 3, "fc:8,fc:7", activation="elu", bias_init=0.01,
                             dropout=0.2)
    x = _x((6, 5))
    ref_p, ref_s = model.init(key)
    ref_y, _ = model.apply(ref_p, ref_s, x, train=True, key=jax.random.key(5))
    for other in (by_hand, by_arch):
        p, s = other.init(key)
        assert jax.tree.structure(p) == jax.tree.structure(ref_p)
        jax.tree.map(np.testing.assert_array_equal, p, ref_p)
        np.testing.assert_array_equal(other.apply(p, s, x, train=True, key=jax.random.key(5))[0],
                                      ref_y)


def test_dropout_keys_follow_the_documented_recipe(key):
    """apply's key k: model layer i's layer at position j gets fold_in(split(k, L)[i], j)."""
    model = layers.mlp([4, 6, 2], dropout=0.5)  # layer_0: Dense (0), relu (1), Dropout (2)
    params, state = model.init(key)
    x, k = _x((3, 4)), jax.random.key(9)
    y, _ = model.apply(params, state, x, train=True, key=k)
    keep = np.asarray(jax.random.bernoulli(
        jax.random.fold_in(jax.random.split(k, 2)[0], 2), 0.5, (3, 6)))
    h = np.maximum(_np(x) @ _np(params["layer_0"]["w"]), 0) * keep / 0.5
    _close(y, h @ _np(params["layer_1"]["w"]), 10)
    with pytest.raises(ValueError, match="key"):
        model.apply(params, state, x, train=True)
    np.testing.assert_array_equal(model.apply(params, state, x)[0],
                                  model.apply(params, state, x, key=k)[0])  # eval: no dropout


def test_mlp_batch_norm_layout_and_state(key):
    model = layers.mlp([4, 6, 2], batch_norm=True)
    params, state = model.init(key)
    assert set(params["layer_0"]) == {"w", "bn"}  # beta replaces the bias
    assert set(state["layer_0"]) == {"bn"} and state["layer_1"] == {}
    x = _x((8, 4)) + 2.0
    _, s_train = model.apply(params, state, x, train=True)
    pre = _np(x) @ _np(params["layer_0"]["w"])
    _close(s_train["layer_0"]["bn"]["mean"], 0.1 * pre.mean(0), 8)
    _, s_eval = model.apply(params, state, x, train=False)
    np.testing.assert_array_equal(s_eval["layer_0"]["bn"]["mean"], state["layer_0"]["bn"]["mean"])


def test_mlp_maxout_and_prelu_match_numpy(key):
    x = _x((5, 3))
    model = layers.mlp([3, 4, 2], activation="maxout", num_pieces=3)
    params, state = model.init(key)
    assert params["layer_0"]["w"].shape == (3, 12) and model.activations[0] == "maxout"
    z = _np(x) @ _np(params["layer_0"]["w"]) + _np(params["layer_0"]["b"])
    h = z.reshape(5, 4, 3).max(-1)  # consecutive groups of 3
    _close(model.apply(params, state, x)[0], h @ _np(params["layer_1"]["w"]), 12)

    model = layers.mlp([3, 4, 2], activation="prelu", prelu_init=0.1)
    params, state = model.init(key)
    np.testing.assert_array_equal(params["layer_0"]["alpha"], np.full(4, 0.1, np.float32))
    z = _np(x) @ _np(params["layer_0"]["w"])
    h = np.where(z >= 0, z, 0.1 * z)
    _close(model.apply(params, state, x)[0], h @ _np(params["layer_1"]["w"]), 12)


def test_mlp_errors():
    with pytest.raises(ValueError, match="relu"):
        layers.mlp([5, 3], activation="nope")  # checked even without hidden layers
    with pytest.raises(ValueError, match="sizes"):
        layers.mlp([5])
    with pytest.raises(ValueError, match="dropout"):
        layers.mlp([5, 4, 3], dropout=1.0)
    model = layers.mlp([5, 3])
    params, state = model.init(jax.random.key(1))
    with pytest.raises(ValueError, match=r"\[batch, 5\]"):
        model.apply(params, state, np.zeros((2, 4), np.float32))


# --------------------------------------------------------------------------- serial
def test_serial_groups_layers_under_their_weighted_layer(key):
    model = layers.serial(
        BatchNorm(),                                       # before any weighted layer: "input"
        Conv2D(4), BatchNorm(), Activation("prelu"), MaxPool(),
        Conv2D(6, 1), Activation("relu"), LayerNorm(), LayerNorm(), AvgPool(),
        Flatten(), Dense(5),
        input_shape=(4, 4, 2))
    params, state = model.init(key)
    assert model.layer_names == ("layer_0", "layer_1", "layer_2")
    assert model.activations == ("prelu", "relu", None)
    assert model.output_shape == (5,)
    assert set(params) == {"input", "layer_0", "layer_1", "layer_2"}
    assert set(params["input"]) == {"bn"} and set(state["input"]) == {"bn"}
    assert set(params["layer_0"]) == {"w", "b", "bn", "alpha"}
    assert params["layer_0"]["alpha"].shape == (4,)
    assert set(params["layer_1"]) == {"w", "b", "ln", "ln_1"}  # names made unique
    assert set(state["layer_1"]) == set() and set(params["layer_2"]) == {"w", "b"}
    x = _x((3, 4, 4, 2))
    y, new_state = model.apply(params, state, x, train=True)
    assert y.shape == (3, 5)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    # The input batch norm normalized x per channel before the first convolution.
    _close(new_state["input"]["bn"]["mean"], 0.1 * _np(x).mean((0, 1, 2)), 48)


def test_trace_reports_the_first_nonlinearity_of_each_hidden_layer(key):
    model = layers.serial(Conv2D(3), Activation("tanh"), MaxPool(), Flatten(),
                          Dense(4), Dense(6), Activation("relu"), Dense(2), input_shape=(4, 4, 1))
    params, state = model.init(key)
    x = _x((2, 4, 4, 1))
    y, _, acts = model.trace(params, state, x)
    assert [a.pre.shape for a in acts] == [(2, 4, 4, 3), (2, 4), (2, 6)]
    np.testing.assert_array_equal(acts[0].post, jnp.tanh(acts[0].pre))
    # layer_1 (Dense(4), no nonlinearity) reports its output as both.
    np.testing.assert_array_equal(acts[1].pre, acts[1].post)
    h = np.asarray(acts[0].post).reshape(2, 2, 2, 2, 2, 3).max(axis=(2, 4)).reshape(2, 12)
    _close(acts[1].post, _np(h) @ _np(params["layer_1"]["w"]) + _np(params["layer_1"]["b"]), 12)
    np.testing.assert_array_equal(y, model.apply(params, state, x)[0])


def test_serial_checks_shapes_when_built():
    with pytest.raises(ValueError, match="height, width, channels"):
        layers.serial(Flatten(), Conv2D(3), input_shape=(4, 4, 1))
    with pytest.raises(ValueError, match="empty output"):
        layers.serial(MaxPool(), MaxPool(), Flatten(), Dense(2), input_shape=(3, 3, 1))
    with pytest.raises(ValueError, match="at least one layer"):
        layers.serial(input_shape=(3,))
    with pytest.raises(ValueError, match="Layer"):
        layers.serial(jnp.tanh, input_shape=(3,))
    with pytest.raises(ValueError, match="input_shape"):
        layers.serial(Dense(2), input_shape=(0,))


# --------------------------------------------------------------------------- arch
def test_parse_arch_grammar():
    items = models.parse_arch("conv:32, conv:16:5,pool,avgpool,fc:128,dropout:0.25")
    assert items == (models.ArchItem("conv", 32, 3), models.ArchItem("conv", 16, 5),
                     models.ArchItem("pool"), models.ArchItem("avgpool"),
                     models.ArchItem("fc", 128), models.ArchItem("dropout", 0.25))
    assert ",".join(map(str, items)) == "conv:32,conv:16:5,pool,avgpool,fc:128,dropout:0.25"
    assert models.parse_arch("") == ()
    assert models.parse_arch(["fc:3", models.ArchItem("pool")]) == (
        models.ArchItem("fc", 3), models.ArchItem("pool"))


@pytest.mark.parametrize("text", ["conv", "conv:0", "conv:3:x", "fc:1.5", "pool:2", "dropout:1",
                                  "dropout:-0.1", "fc:8,,fc:4", "dense:8", "fc:8:2"])
def test_parse_arch_errors_name_the_entry_and_the_grammar(text):
    with pytest.raises(ValueError, match="conv:C.*fc:N.*dropout:P") as info:
        models.parse_arch(text)
    assert "bad architecture entry" in str(info.value)


@pytest.mark.slow  # several compiles: in the slow suite
def test_convnet_default_stack(key):
    model = models.convnet((8, 8, 1), 10, batch_norm=True, dropout=0.5)
    params, state = model.init(key)
    assert model.output_shape == (10,) and len(model.layer_names) == 5
    shapes = [params[n]["w"].shape for n in model.layer_names]
    assert shapes == [(3, 3, 1, 32), (3, 3, 32, 32), (3, 3, 32, 64), (2 * 2 * 64, 128), (128, 10)]
    assert all(set(params[n]) == {"w", "bn"} for n in model.layer_names[:-1])
    x = _x((2, 8, 8, 1))
    _, _, acts = model.trace(params, state, x, train=True, key=key)
    assert [a.post.shape for a in acts] == [(2, 8, 8, 32), (2, 8, 8, 32), (2, 4, 4, 64), (2, 128)]


def test_convnet_errors():
    with pytest.raises(ValueError, match="needs images"):
        models.convnet((64,), 10, "conv:8")
    with pytest.raises(ValueError, match="after an fc"):
        models.convnet((8, 8, 1), 10, "fc:8,conv:8")
    with pytest.raises(ValueError, match="does not fit"):
        models.convnet((2, 2, 1), 10, "pool,pool")
    with pytest.raises(ValueError, match="bad architecture"):
        models.convnet((8, 8, 1), 10, "conv:8,pol")


# --------------------------------------------------------------------------- gradients, training
@pytest.mark.slow
def test_convnet_with_batch_norm_passes_gradcheck_in_float64():
    model = models.convnet((4, 4, 2), 3, "conv:3,pool,fc:4", activation="tanh", batch_norm=True,
                           bias_init=0.1)
    with jax.enable_x64(True):
        params, state = model.init(jax.random.key(3))
        params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
        state = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), state)
        x = jnp.asarray(_x((5, 4, 4, 2)), jnp.float64)
        mask = jnp.array([1.0, 1.0, 1.0, 1.0, 0.0])  # a padded row: ignored by batch norm
        f = lambda p: jnp.sum(jnp.sin(model.apply(p, state, x, train=True, mask=mask)[0][:4]))
        report = gradcheck.check_grads(f, params)
    assert report.passed, report


def _tiny_images(n=160, classes=4, size=6, seed=0):
    """Images whose class is the quadrant holding a bright 3x3 patch, under unit noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n).astype(np.int32)
    x = rng.normal(size=(n, size, size, 1)).astype(np.float32)
    h = size // 2
    for c in range(classes):
        r, q = divmod(c, 2)
        x[y == c, r * h:(r + 1) * h, q * h:(q + 1) * h, :] += 2.0
    return data.Dataset(x[:96], y[:96], x[96:128], y[96:128], x[128:], y[128:], classes,
                        "quadrants")


@pytest.fixture(scope="module")
def images():
    return _tiny_images()


@pytest.fixture(scope="module")
def small_convnet():
    return models.convnet((6, 6, 1), 4, "conv:4,pool,fc:8", batch_norm=True)


@pytest.mark.slow
def test_convnet_learns_with_fit_and_as_a_population(images, small_convnet):
    hist = train.fit(small_convnet, images, optimizer=optim.momentum(0.05), epochs=5,
                     batch_size=16, key=jax.random.fold_in(jax.random.key(1), 7))
    losses = [r["train_loss"] for r in hist.records]
    assert losses[-1] < 0.5 * hist.initial_loss
    assert hist.records[-1]["val_acc"] >= 0.9  # the quadrant of a +2 patch under unit noise
    res = population.train_population(
        data=images, epochs=5, batch_size=16, key=jax.random.key(1), model=small_convnet,
        optimizer=optim.momentum(0.05),
        hparams={"learning_rate": np.array([0.05, 0.01]), "seed": np.array([7, 8])})
    assert res.status == ["ok", "ok"]
    assert res.params["layer_0"]["w"].shape == (2, 3, 3, 1, 4)
    # Member 0 is fit() with key fold_in(key, 7): the same computation, vmapped. Batched
    # convolutions may sum in another order: float32 rounding differences (eps 1.2e-7) over
    # ~100-term sums, not amplified by 30 small steps: well under 2e-5 (about 170 eps).
    np.testing.assert_allclose(res.history["train_loss"][:, 0], losses, rtol=2e-5)


# --------------------------------------------------------------------------- nesting
def test_flat_model_layouts_are_the_documented_ones(key):
    """Checkpoints of flat models keep loading: the params/state trees of mlp, a batch-norm
    mlp, a serial with an "input" layer and a convnet are exactly the documented layout, and the
    weights come from the documented key rule."""
    wb, bn = {"w": 0, "b": 0}, {"gamma": 0, "beta": 0}
    params, state = layers.mlp([5, 8, 7, 3]).init(key)
    assert jax.tree.structure(params) == jax.tree.structure(
        {"layer_0": wb, "layer_1": wb, "layer_2": wb})
    assert state == {"layer_0": {}, "layer_1": {}, "layer_2": {}}

    model = layers.mlp([4, 6, 2], batch_norm=True, activation="prelu")
    params, state = model.init(key)
    assert jax.tree.structure(params) == jax.tree.structure(
        {"layer_0": {"w": 0, "bn": bn, "alpha": 0}, "layer_1": wb})
    assert jax.tree.structure(state) == jax.tree.structure(
        {"layer_0": {"bn": {"mean": 0, "var": 0}}, "layer_1": {}})
    assert model.layer_names == ("layer_0", "layer_1")
    assert model.activations == ("prelu", None)
    he = initializers.he_normal()
    for i, (k, shape) in enumerate(zip(jax.random.split(key, 2), ((4, 6), (6, 2)), strict=True)):
        np.testing.assert_array_equal(params[f"layer_{i}"]["w"], he(jax.random.split(k)[0], shape))

    model = layers.serial(BatchNorm(), Dropout(0.5), Dense(3), input_shape=(4,))
    params, state = model.init(key)
    assert jax.tree.structure(params) == jax.tree.structure({"input": {"bn": bn}, "layer_0": wb})
    # One key per model layer plus one for the input layers: split(key, 2)[0] for layer_0.
    np.testing.assert_array_equal(params["layer_0"]["w"],
                                  he(jax.random.split(jax.random.split(key, 2)[0])[0], (4, 3)))

    params, _ = models.convnet((6, 6, 1), 4, "conv:4,pool,fc:8", batch_norm=True).init(key)
    assert jax.tree.structure(params) == jax.tree.structure(
        {"layer_0": {"w": 0, "bn": bn}, "layer_1": {"w": 0, "bn": bn}, "layer_2": wb})


def test_serial_layer_and_model_agree_and_a_model_nests(key):
    """serial(*layers) and serial(*layers, input_shape=...) are the same layer: the same params
    for the same key and the same outputs; the Model keeps its layer."""
    parts = (Dense(6), BatchNorm(), Activation("relu"), Dropout(0.5), Dense(3))
    model = layers.serial(*parts, input_shape=(4,))
    layer = layers.serial(*parts)
    out_shape, params, state = layer.init(key, (4,))
    assert out_shape == model.output_shape == (3,)
    p2, s2 = model.init(key)
    jax.tree.map(np.testing.assert_array_equal, (params, state), (p2, s2))
    x, k = _x((5, 4)), jax.random.key(2)
    y, new_state = layer.apply(params, state, x, train=True, key=k)
    y2, new_state2 = model.apply(params, state, x, train=True, key=k)
    np.testing.assert_array_equal(y, y2)
    jax.tree.map(np.testing.assert_array_equal, new_state, new_state2)
    assert model.layer is not None and model.layer.weighted

    # The model as the first layer of another: its params are model layer 0's.
    outer = layers.serial(model, Activation("tanh"), Dense(2), input_shape=(4,))
    assert outer.layer_names == ("layer_0/layer_0", "layer_0/layer_1", "layer_1")
    assert outer.activations == ("relu", "tanh", None)
    po, so = outer.init(key)
    jax.tree.map(np.testing.assert_array_equal, po["layer_0"],
                 model.init(jax.random.split(key, 2)[0])[0])
    yo, _ = outer.apply(po, so, x)
    h, _ = model.apply(po["layer_0"], so["layer_0"], x)
    _close(yo, np.tanh(_np(h)) @ _np(po["layer_1"]["w"]) + _np(po["layer_1"]["b"]), 8)


def test_nested_weightless_serial_sits_under_its_name(key):
    """A serial without weights is a plain layer of its model layer (params under "serial"),
    and its nonlinearity is that model layer's."""
    norm_act = layers.serial(BatchNorm(), Activation("tanh"))
    assert not norm_act.weighted and norm_act.activation == "tanh"
    model = layers.serial(Dense(4), norm_act, Dense(2), input_shape=(3,))
    assert model.activations == ("tanh", None)
    params, state = model.init(key)
    assert set(params["layer_0"]) == {"w", "b", "serial"}
    assert set(params["layer_0"]["serial"]) == {"input"}
    assert set(state["layer_0"]["serial"]["input"]) == {"bn"}
    x = _x((6, 3))
    _, _, (acts,) = model.trace(params, state, x, train=True)
    z = _np(x) @ _np(params["layer_0"]["w"]) + _np(params["layer_0"]["b"])
    zn = (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)
    _close(acts.pre, zn, 24)
    np.testing.assert_allclose(acts.post, np.tanh(acts.pre), rtol=2 * F32_EPS, atol=1e-7)


def test_nested_dropout_keys_follow_the_rule(key):
    """apply's key reaches a nested serial as its model layer's key, split by the same rule."""
    inner = layers.serial(Dense(6), Activation("relu"), Dropout(0.5), Dense(3))
    model = layers.serial(Dense(4), inner, input_shape=(4,))
    params, state = model.init(key)
    x, k = _x((3, 4)), jax.random.key(9)
    y, _ = model.apply(params, state, x, train=True, key=k)
    k_inner = jax.random.split(k, 2)[1]  # model layer 1 of the outer serial
    keep = np.asarray(jax.random.bernoulli(
        jax.random.fold_in(jax.random.split(k_inner, 2)[0], 2), 0.5, (3, 6)))
    p = jax.tree.map(_np, params)
    h = _np(x) @ p["layer_0"]["w"] + p["layer_0"]["b"]
    h = np.maximum(h @ p["layer_1"]["layer_0"]["w"] + p["layer_1"]["layer_0"]["b"], 0)
    h = h * keep / 0.5
    _close(y, h @ p["layer_1"]["layer_1"]["w"] + p["layer_1"]["layer_1"]["b"], 12)


def test_nested_model_checkpoints_round_trip(tmp_path, key):
    from jaxnn.checkpoint import Checkpointer

    model = layers.serial(Dense(4), Activation("relu"),
                          layers.Residual(layers.serial(Dense(4), BatchNorm(),
                                                        Activation("relu"), Dense(5))),
                          Dense(2), input_shape=(3,))
    params, state = model.init(key)
    ckpt = Checkpointer(tmp_path / "ckpt")
    try:
        ckpt.save(1, {"params": params, "state": state})
        ckpt.wait()
        template = jax.tree.map(jnp.zeros_like, {"params": params, "state": state})
        restored, _ = ckpt.restore(template=template)
    finally:
        ckpt.close()
    assert jax.tree.structure(restored) == jax.tree.structure({"params": params, "state": state})
    jax.tree.map(np.testing.assert_array_equal, restored["params"], params)
    assert set(restored["params"]["layer_1"]) == {"layer_0", "layer_1", "skip"}


# --------------------------------------------------------------------------- trust, round two
@pytest.mark.parametrize("shape", [(4.5,), 4.5, (4.0,), (True,), (4, 2.5), ("4",), "4", (4, None),
                                   (np.float64(4.0),), (-4,)])
def test_serial_input_shape_must_be_positive_integers(shape):
    # Cause: each size went through int(), so (4.5,) silently became (4,) (and True became 1).
    with pytest.raises(ValueError, match="serial: input_shape must be .*positive integer"):
        layers.serial(Dense(2), input_shape=shape)


@pytest.mark.parametrize("sizes", [[4.5, 8, 3], [4, 8.5, 3], [True, 8, 3], ["4", 3]])
def test_mlp_sizes_and_dense_features_must_be_integers(sizes):
    # The same cause in the builders: int() truncated mlp sizes and Dense features.
    with pytest.raises(ValueError, match="mlp: sizes must be integers"):
        models.mlp(sizes)
    with pytest.raises(ValueError, match="Dense: `features` must be an integer"):
        Dense(next(s for s in sizes if type(s) is not int))


def test_serial_input_shape_accepts_python_and_numpy_integers():
    for shape, want in [(4, (4,)), ((4,), (4,)), ((np.int64(2), np.int32(3)), (2, 3)),
                        (np.array([2, 3]), (2, 3)), ([3, 2], (3, 2))]:
        model = layers.serial(Flatten(), Dense(2), input_shape=shape)
        assert model.input_shape == want and all(type(d) is int for d in model.input_shape)


def test_mlp_on_integer_inputs_equals_the_float_inputs(key):
    # The example: mlp([4, 8, 3]) applied to int32 x returned zeros.
    model = models.mlp([4, 8, 3])
    params, state = model.init(key)
    x = np.array([[1, 2, 3, 4], [0, -1, 5, 2]])
    got, _ = model.apply(params, state, jnp.asarray(x, jnp.int32))
    want, _ = model.apply(params, state, jnp.asarray(x, jnp.float32))
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, want)
