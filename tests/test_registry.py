"""The one registry type (:mod:`jaxnn.registry`) behind every table of names, the metadata the
names carry, the one divergence factor and the status enum.

Adding an activation is its module entry plus tests: a scratch entry with a learnable parameter
trains through :func:`jaxnn.layers.Activation` and :func:`jaxnn.models.mlp`, and a saturating
one is measured by :func:`jaxnn.diagnostics.saturated_fraction`, without touching either module.
"""

import ast
import dataclasses
import importlib
import inspect
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import (
    activations,
    diagnostics,
    initializers,
    layers,
    losses,
    models,
    optim,
    population,
    preprocessing,
    train,
)
from jaxnn.registry import Entry, Registry

# --------------------------------------------------------------------------- the six registries
#: (kind, names(), look-up of one name, the documented names: SPEC.md section 2)
REGISTRIES = {
    "activation": (activations.names, activations.get, activations.REGISTRY, {
        "linear", "identity", "step", "sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu",
        "selu", "swish", "silu", "gelu", "softplus", "maxout"}),
    "loss": (losses.names, losses.get, losses.REGISTRY, {
        "l1_loss", "l2_loss", "mse", "sigmoid_binary_cross_entropy", "softmax_cross_entropy",
        "softmax_cross_entropy_onehot", "multiclass_hinge_loss", "l1", "l2", "cross_entropy",
        "hinge"}),
    "initializer": (initializers.names, initializers.get, initializers.REGISTRY, {
        "zeros", "ones", "constant", "normal", "uniform", "variance_scaling", "lecun_normal",
        "lecun_uniform", "glorot_normal", "glorot_uniform", "xavier_normal", "xavier_uniform",
        "he_normal", "he_uniform", "kaiming_normal", "kaiming_uniform", "orthogonal"}),
    "optimizer": (optim.names, lambda n: optim.get(n, learning_rate=0.1), optim.REGISTRY, {
        "sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"}),
    "schedule": (optim.schedule_names, lambda n: optim.get_schedule(n, 1.0, total_steps=10),
                 optim.SCHEDULES, {"constant", "step_decay", "exponential_decay", "cosine",
                                   "warmup_cosine"}),
    "preprocessing": (preprocessing.names, preprocessing.get, preprocessing.REGISTRY, {
        "none", "center", "standardize", "pca", "whiten", "zca", "mean_image",
        "per_channel_mean"}),
}


@pytest.mark.parametrize("kind", REGISTRIES)
@pytest.mark.parametrize("bad", ["nope", "Relu ", "", 3, None])
def test_every_registry_has_the_one_unknown_name_error(kind, bad):
    names, get, registry, _ = REGISTRIES[kind]
    expected = f"unknown {kind} {bad!r}; valid: {', '.join(names())}"
    with pytest.raises(ValueError) as info:
        get(bad)
    assert str(info.value) == expected
    with pytest.raises(ValueError) as info:
        registry.entry(bad)
    assert str(info.value) == expected
    assert bad not in registry


@pytest.mark.parametrize("kind", REGISTRIES)
def test_names_are_complete_unique_and_the_registrys(kind):
    names, get, registry, documented = REGISTRIES[kind]
    got = names()
    assert isinstance(got, tuple) and len(set(got)) == len(got)
    assert documented <= set(got)  # the SPEC's names; a module may hold more (its own tests)
    assert got == registry.names() == tuple(registry)
    assert registry.kind == kind and len(registry) == len(got)
    for name in got:
        assert name in registry
        assert registry.entry(name).name == name
    for name in got:
        if kind == "preprocessing" and registry.entry(name).required:
            continue  # pca needs k
        if kind == "initializer" and registry.entry(name).required:
            continue  # constant(value), variance_scaling(scale, mode, distribution)
        assert get(name) is not None


@pytest.mark.parametrize("kind", ["activation", "loss"])
def test_lookups_return_the_modules_functions_and_aliases_share_their_entry(kind):
    names, get, registry, _ = REGISTRIES[kind]
    module = activations if kind == "activation" else losses
    for name in names():
        e = registry.entry(name)
        assert get(name) is e.obj is getattr(module, e.canonical)
        primary = registry.entry(e.canonical)
        assert primary.alias_of is None
        assert dataclasses.replace(e, name=primary.name, alias_of=None) == primary


def test_options_errors_are_value_errors_naming_the_name():
    with pytest.raises(ValueError, match=r"^initializer 'zeros' takes no options; got \['value'\]$"):
        initializers.get("zeros", value=1.0)
    with pytest.raises(ValueError, match=r"^optimizer 'sgd': bad options .*momentum"):
        optim.get("sgd", learning_rate=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"^preprocessing 'center': bad options"):
        preprocessing.get("center", eps=1.0)
    with pytest.raises(ValueError, match=r"^preprocessing 'pca' needs k"):
        preprocessing.get("pca")
    assert optim.entry("momentum").options == ("learning_rate", "momentum", "schedule")
    assert "weight_decay" in optim.entry("adamw").options
    assert [n for n in optim.names() if "momentum" in optim.entry(n).options] == [
        "momentum", "nesterov"]
    assert initializers.entry("constant").required == ("value",)
    assert initializers.entry("he_normal").required == ()
    assert preprocessing.entry("pca").required == ("k",)


# --------------------------------------------------------------------------- the Registry type
def test_registry_register_decorator_alias_copy_unregister():
    reg = Registry("widget")

    @reg.register("a")
    def a(x):
        return x + 1

    reg.register("b", lambda x: x * 2)
    reg.alias("b2", "b")
    assert reg.names() == ("a", "b", "b2") and reg.get("a") is a
    assert reg.entry("b2").alias_of == "b" and reg.entry("b2").canonical == "b"
    assert reg.get("b2") is reg.get("b")
    assert reg.get(a) is a  # a callable is the thing already
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", a)
    with pytest.raises(ValueError, match="already registered"):
        reg.alias("a", "b")
    with pytest.raises(ValueError, match=r"^unknown widget 'c'; valid: a, b, b2$"):
        reg.alias("c2", "c")
    with pytest.raises(ValueError, match="takes no options"):
        reg.get("a", 1)
    with pytest.raises(ValueError, match="given with a widget object"):
        reg.get(a, x=1)
    with pytest.raises(TypeError):  # not a field of the entry type
        reg.register("z", a, colour="red")
    scratch = reg.copy()
    scratch.unregister("b2")  # removes b and its aliases
    assert scratch.names() == ("a",) and reg.names() == ("a", "b", "b2")
    assert "a" in reg and ["unhashable"] not in reg
    assert repr(reg) == "Registry('widget', 3 names)"


def test_registry_factories_bind_options_before_calling():
    calls = []

    def make(size, *, scale=1.0):
        calls.append((size, scale))
        return [scale] * size

    reg = Registry("thing", factory=True)
    reg.register("make", make)
    reg.register("fixed", (1, 2), factory=False)
    assert reg.get("make", 2, scale=3.0) == [3.0, 3.0]
    assert reg.get("fixed") == (1, 2)
    with pytest.raises(ValueError, match=r"^thing 'make': bad options \{'size': 1, 'shape': 2\}"):
        reg.get("make", size=1, shape=2)
    assert calls == [(2, 3.0)]  # a bad option never reaches the factory
    assert reg.entry("make").required == ("size",)
    assert reg.entry("make").options == ("size", "scale")


def test_registry_is_a_bottom_module_importing_only_the_standard_library():
    source = pathlib.Path(importlib.util.find_spec("jaxnn.registry").origin).read_text()
    top = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            top.add(node.module.split(".")[0])
    assert top <= set(sys.stdlib_module_names) | {"__future__"}, top


# --------------------------------------------------------------------------- activation metadata
def test_activation_entries_say_what_layers_and_diagnostics_need():
    prelu, maxout = activations.entry("prelu"), activations.entry("maxout")
    assert prelu.params == {"alpha": 0.25} and prelu.pieces_option is None
    assert maxout.pieces_option == "num_pieces" and maxout.default_pieces == 2
    assert not maxout.params
    assert activations.entry("tanh").saturates == (-1.0, 1.0)
    assert activations.entry("sigmoid").saturates == (0.0, 1.0)
    saturating = {n for n in activations.names() if activations.entry(n).saturates}
    assert {"tanh", "sigmoid"} <= saturating
    for name in saturating:  # the range's ends are where the function is flat
        lo, hi = activations.entry(name).saturates
        fn = activations.get(name)
        assert float(fn(jnp.float32(-1e4))) == lo and float(fn(jnp.float32(1e4))) == hi, name
        assert float(jax.grad(fn)(jnp.float32(1e4))) == 0.0, name
    assert {n for n in activations.names() if not activations.entry(n).elementwise} == {
        "prelu", "maxout"}
    assert isinstance(prelu, activations.ActivationEntry) and isinstance(prelu, Entry)


def test_prelu_layer_takes_its_parameter_from_the_entry(monkeypatch):
    _, alpha, _ = layers.Activation("prelu").init(None, (5,))
    np.testing.assert_array_equal(alpha, np.full(5, 0.25, np.float32))
    # The entry, not layers.py, holds the default.
    scratch = activations.REGISTRY.copy()
    scratch.unregister("prelu")
    scratch.register("prelu", activations.prelu, params={"alpha": 0.5})
    monkeypatch.setattr(activations, "REGISTRY", scratch)
    layer = layers.Activation("prelu")
    _, alpha, _ = layer.init(None, (3,))
    assert layer.name == "alpha"
    np.testing.assert_array_equal(alpha, np.full(3, 0.5, np.float32))


def scaled_tanh(x, gain):
    """``gain * tanh(x)``, a learnable gain per channel (a scratch activation)."""
    return gain * jnp.tanh(x)


def gated(x, gain, shift):
    """``gain * tanh(x - shift)`` (a scratch activation with two learnable parameters)."""
    return gain * jnp.tanh(x - shift)


@pytest.fixture
def scratch_activations(monkeypatch):
    """The activations registry plus two learnable entries, for this test only."""
    scratch = activations.REGISTRY.copy()
    scratch.register("scaled_tanh", scaled_tanh, params={"gain": 1.5}, saturates=(-1.5, 1.5))
    scratch.register("gated", gated, params={"gain": 1.0, "shift": 0.0})
    monkeypatch.setattr(activations, "REGISTRY", scratch)
    return scratch


def test_a_new_learnable_activation_is_one_registry_entry(scratch_activations):
    layer = layers.Activation("scaled_tanh")
    out_shape, gain, state = layer.init(None, (2, 4))
    assert out_shape == (2, 4) and layer.name == "gain" and state == {}
    np.testing.assert_array_equal(gain, np.full(4, 1.5, np.float32))
    x = jax.random.normal(jax.random.key(0), (3, 2, 4))
    gain = jnp.array([0.5, 1.0, 2.0, -1.0])
    y, _ = layer.apply(gain, {}, x)
    np.testing.assert_allclose(y, np.asarray(gain) * np.tanh(np.asarray(x)), rtol=1e-6)
    g = jax.grad(lambda a: jnp.sum(layer.apply(a, {}, x)[0]))(gain)
    np.testing.assert_allclose(g, np.tanh(np.asarray(x)).sum(axis=(0, 1)), rtol=1e-5)
    assert layers.Activation("scaled_tanh", gain=0.1).init(None, (2,))[1].tolist() == [
        pytest.approx(0.1)] * 2
    with pytest.raises(ValueError, match="bad options"):
        layers.Activation("scaled_tanh", beta=1.0)

    # Through the model builder: each hidden layer learns its own gain, and it trains.
    model = models.mlp([3, 4, 2], activation="scaled_tanh")
    params, mstate = model.init(jax.random.key(0))
    np.testing.assert_array_equal(params["layer_0"]["gain"], np.full(4, 1.5, np.float32))
    assert model.activations[0] == "scaled_tanh"
    xb = jax.random.normal(jax.random.key(1), (8, 3))
    yb = jnp.arange(8) % 2

    def loss(p):
        return jnp.mean(losses.softmax_cross_entropy(model.apply(p, mstate, xb)[0], yb))

    grads = jax.grad(loss)(params)
    assert np.all(np.asarray(grads["layer_0"]["gain"]) != 0)


def test_several_learnable_parameters_are_a_dict(scratch_activations):
    layer = layers.Activation("gated", shift=0.25)
    _, params, _ = layer.init(None, (3,))
    assert layer.name == "gated" and set(params) == {"gain", "shift"}
    np.testing.assert_array_equal(params["shift"], np.full(3, 0.25, np.float32))
    x = jnp.linspace(-2.0, 2.0, 6).reshape(2, 3)
    y, _ = layer.apply(params, {}, x)
    np.testing.assert_allclose(y, np.tanh(np.asarray(x) - 0.25), rtol=1e-6)
    g = jax.grad(lambda p: jnp.sum(layer.apply(p, {}, x)[0]))(params)
    assert set(g) == {"gain", "shift"}


def test_a_new_saturating_activation_is_measured_by_its_range(scratch_activations):
    h = np.array([[-1.495, -1.2, 0.0], [1.0, 1.4999, 1.48]], np.float32)
    got = float(diagnostics.saturated_fraction(h, "scaled_tanh"))
    assert got == pytest.approx(np.mean((h < -1.49) | (h > 1.49)))


def test_maxout_options_come_from_the_entry():
    model = models.mlp([3, 4, 2], activation="maxout", num_pieces=3)
    params, _ = model.init(jax.random.key(0))
    assert params["layer_0"]["w"].shape == (3, 12)  # 4 units x 3 pieces
    from jaxnn.arch import activation_options

    assert activation_options("prelu", num_pieces=3, prelu_init=0.1) == {"alpha": 0.1}
    assert activation_options("maxout", num_pieces=3, prelu_init=0.1) == {"num_pieces": 3}
    assert activation_options("relu", num_pieces=3, prelu_init=0.1) == {}


@pytest.mark.parametrize("threshold", [0.99, 0.9, 0.5])
def test_saturated_fraction_against_numpy(threshold):
    rng = np.random.default_rng(0)
    pre = rng.standard_normal((64, 32)).astype(np.float32) * 4
    t, s = np.tanh(pre), 1 / (1 + np.exp(-pre))
    assert float(diagnostics.saturated_fraction(t, "tanh", threshold=threshold)) == pytest.approx(
        np.mean(np.abs(t) > threshold), abs=1e-6)
    assert float(diagnostics.saturated_fraction(s, "sigmoid", threshold=threshold)) == (
        pytest.approx(np.mean((s < 1 - threshold) | (s > threshold)), abs=1e-6))
    for name in ("relu", "elu", "identity"):
        assert float(diagnostics.saturated_fraction(pre, name, threshold=threshold)) == 0.0
    jitted = jax.jit(lambda h: diagnostics.saturated_fraction(h, "tanh", threshold=threshold))
    assert float(jitted(t)) == pytest.approx(np.mean(np.abs(t) > threshold), abs=1e-6)
    with pytest.raises(ValueError, match=r"^saturated_fraction: unknown activation 'nope'; valid"):
        diagnostics.saturated_fraction(t, "nope")


# --------------------------------------------------------------------------- loss metadata
def test_loss_entries_say_which_targets_they_take():
    labels = {n for n in losses.names() if losses.entry(n).targets == "labels"}
    assert {"softmax_cross_entropy", "multiclass_hinge_loss", "cross_entropy", "hinge"} <= labels
    assert losses.entry("sigmoid_binary_cross_entropy").target_range == (0.0, 1.0)
    assert losses.entry("softmax_cross_entropy_onehot").target_range == (0.0, None)
    assert losses.entry("mse").target_range == (None, None)
    scores = jax.random.normal(jax.random.key(0), (4, 3))
    y = jnp.array([0, 2, 1, 2])
    for name in losses.names():
        fn = losses.get(name)
        if name in labels:  # integer labels, no float targets
            assert fn(scores, y).shape == (4,)
            with pytest.raises(TypeError):
                fn(scores, jax.nn.one_hot(y, 3))
        else:  # targets shaped like the scores, one-hot labels among them
            assert fn(scores, jax.nn.one_hot(y, 3)).shape == (4,)
    with pytest.raises(ValueError, match="targets must be 'labels' or 'scores'"):
        losses.LossEntry(name="x", obj=losses.mse, targets="ids")


@pytest.mark.parametrize("name", losses.names())
def test_for_labels_gives_a_loss_of_scores_and_integer_labels(name):
    fn = losses.for_labels(name)
    assert fn is losses.for_labels(name) is losses.for_labels(losses.entry(name).canonical)
    scores = jax.random.normal(jax.random.key(0), (5, 4)) * 2
    y = jnp.array([0, 3, 1, 2, 3])
    if losses.entry(name).targets == "labels":
        assert fn is losses.get(name)
        return
    expected = losses.get(name)(scores, jax.nn.one_hot(y, 4))
    np.testing.assert_allclose(fn(scores, y), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(fn)(scores, y), expected, rtol=1e-6)
    g = jax.grad(lambda s: jnp.sum(fn(s, y)))(scores)
    g_ref = jax.grad(lambda s: jnp.sum(losses.get(name)(s, jax.nn.one_hot(y, 4))))(scores)
    np.testing.assert_allclose(g, g_ref, rtol=1e-5)
    # A label out of range is never the loss of an all-zero target.
    with pytest.raises(ValueError, match=r"labels.*\[0, 4\)"):
        fn(scores, jnp.array([0, 4, 1, 2, 3]))
    out = jax.jit(fn)(scores, jnp.array([0, 4, 1, -1, 3]))
    assert np.isnan(out[1]) and np.isnan(out[3]) and np.all(np.isfinite(np.asarray(out)[[0, 2, 4]]))
    with pytest.raises(TypeError, match="integer"):
        fn(scores, jax.nn.one_hot(y, 4))
    # bfloat16 scores keep their dtype.
    assert fn(scores.astype(jnp.bfloat16), y).dtype == jnp.bfloat16


def test_for_labels_unknown_names_and_callables():
    with pytest.raises(ValueError, match=r"^unknown loss 'nope'; valid: l1_loss"):
        losses.for_labels("nope")
    assert losses.for_labels(losses.mse) is losses.mse


# --------------------------------------------------------------------------- divergence, status
def test_the_divergence_factor_is_one_constant_and_every_default():
    assert train.DIVERGENCE_FACTOR == 3.0
    for fn, arg in ((train.diverged, "factor"), (train.is_diverged, "factor"),
                    (train.fit, "divergence_factor"),
                    (population.train_population, "divergence_factor"),
                    (diagnostics.diagnose, "divergence_factor")):
        default = inspect.signature(fn).parameters[arg].default
        assert default == train.DIVERGENCE_FACTOR, fn
    assert bool(train.diverged(3.01, 1.0)) and not bool(train.diverged(2.99, 1.0))


def test_statuses_are_a_str_enum_that_round_trips_through_json():
    S = train.Status
    assert [s.value for s in S] == ["ok", "stopped", "diverged", "pruned"]
    for s in S:
        assert s == s.value and str(s) == s.value and f"{s}" == s.value
        assert json.loads(json.dumps({"status": s})) == {"status": s.value}
        assert S(json.loads(json.dumps(s))) is s
    statuses = np.array([S.OK, S.DIVERGED, S.OK], dtype=object)
    assert list(statuses == "ok") == [True, False, True]
    assert list(statuses == S.DIVERGED) == [False, True, False]
    assert json.dumps(list(statuses)) == '["ok", "diverged", "ok"]'


def test_history_status_is_the_enum_and_the_reason_stays_words():
    S = train.Status
    h = train.History(records=[], stopped_reason="diverged at epoch 1: train loss nan",
                      initial_loss=1.0)
    assert h.status is S.DIVERGED and h.diverged
    assert train.History([], "completed", 1.0).status is S.OK
    h = train.History([], "early stop at epoch 4: no better val loss in 2 epochs", 1.0)
    assert h.status is S.STOPPED and not h.diverged
    # An explicit status wins over the words (the words are for people).
    h = train.History([], "the loss blew up", 1.0, status="diverged")
    assert h.status is S.DIVERGED and h.diverged
    assert diagnostics.LR_TOO_HIGH in diagnostics.diagnose(h).verdicts


@pytest.mark.slow
def test_fit_and_population_report_enum_statuses(blobs_data):
    S = train.Status
    model = models.mlp([2, 8, 2])
    hist = train.fit(model, blobs_data, optimizer=optim.sgd(0.05), epochs=2,
                     key=jax.random.key(0), batch_size=16)
    assert hist.status is S.OK and hist.stopped_reason == "completed"
    hist = train.fit(model, blobs_data, optimizer=optim.sgd(1e4), epochs=3,
                     key=jax.random.key(0), batch_size=16)
    assert hist.status is S.DIVERGED and hist.stopped_reason.startswith("diverged at epoch")
    res = population.train_population(
        data=blobs_data, model=model, epochs=2, batch_size=16, key=jax.random.key(0),
        hparams={"learning_rate": np.array([0.05, 1e4])})
    assert res.status == [S.OK, S.DIVERGED] and res.status == ["ok", "diverged"]
    assert all(isinstance(s, S) for s in res.status)


@pytest.fixture(scope="module")
def blobs_data():
    from jaxnn.data import Dataset

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 96)
    x = (rng.standard_normal((96, 2)) + 3 * y[:, None]).astype(np.float32)
    y = y.astype(np.int32)
    return Dataset(x[:64], y[:64], x[64:80], y[64:80], x[80:], y[80:], 2)


# --------------------------------------------------------------------------- no name literals
def _literal_names_compared(path: pathlib.Path, literals: set[str]) -> list[str]:
    """``name == "tanh"``, ``name in ("maxout", "prelu")`` ...: comparisons with literal names."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        for side in (node.left, *node.comparators):
            elts = side.elts if isinstance(side, ast.Tuple | ast.List | ast.Set) else [side]
            found += [f"{path.name}:{node.lineno}: {e.value!r}" for e in elts
                      if isinstance(e, ast.Constant) and e.value in literals]
    return found


def test_no_module_outside_the_registries_compares_against_an_activation_or_loss_name():
    root = pathlib.Path(activations.__file__).parent
    # "l1"/"l2" also name the regularization strengths (hyperparameters), not only losses;
    # "step" also names an optimizer step (train.fit's per-step loop), not only the activation.
    literals = (set(activations.names()) | set(losses.names())) - {"l1", "l2", "step"}
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.name not in ("activations.py", "losses.py", "registry.py"):
            found += _literal_names_compared(path, literals)
    assert not found, found
