"""jaxnn.config: RunConfig (typed fields, validation naming the key, load/save/replace, older
configs) and build (data, model, optimizer and loss from a config, by small builders)."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import activations, data, initializers, losses, optim
from jaxnn.config import (
    ConfigError,
    RunConfig,
    build,
    build_data,
    build_loss,
    build_model,
    build_optimizer,
)

SMALL = dict(hidden="6", epochs=1, preprocess="none")


# --------------------------------------------------------------------------- RunConfig
def test_defaults_are_the_documented_run():
    cfg = RunConfig()
    assert (cfg.dataset, cfg.hidden, cfg.arch, cfg.activation, cfg.init) == (
        "digits", "128,64", None, "relu", "he_normal")
    assert (cfg.optimizer, cfg.lr, cfg.l2, cfg.batch_size, cfg.epochs) == (
        "momentum", 0.05, 1e-3, 64, 30)


def test_save_load_round_trip_is_exact(tmp_path):
    cfg = RunConfig(arch="conv:4,res(conv:4,conv:4),pool,fc:8", lr=0.1234567891234,
                    batch_norm=True, patience=3, momentum=0.8, augment="crop:2,flip")
    path = tmp_path / "config.json"
    cfg.save(path)
    assert RunConfig.load(path) == cfg
    on_disk = json.loads(path.read_text())
    assert list(on_disk) == list(RunConfig.fields())
    assert on_disk["lr"] == 0.1234567891234


def test_replace_gives_a_new_validated_config():
    cfg = RunConfig()
    new = cfg.replace(lr=0.5, activation="tanh")
    assert (new.lr, new.activation, cfg.lr) == (0.5, "tanh", 0.05)
    with pytest.raises(ConfigError, match="^lr: must be positive"):
        cfg.replace(lr=0.0)
    with pytest.raises(ConfigError, match="^nope: unknown key"):
        cfg.replace(nope=1)
    with pytest.raises(dataclasses_frozen_error()):
        cfg.lr = 1.0


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize("changes, key, words", [
    (dict(lr=-1.0), "lr", "must be positive"),
    (dict(lr=float("nan")), "lr", "finite"),
    (dict(l2=float("inf")), "l2", "finite"),
    (dict(l2=-1e-3), "l2", ">= 0"),
    (dict(epochs=0), "epochs", ">= 1"),
    (dict(epochs=4.5), "epochs", "expected an integer, got 4.5"),
    (dict(batch_size=True), "batch_size", "expected an integer"),
    (dict(batch_norm=1), "batch_norm", "true or false"),
    (dict(hidden=[8]), "hidden", "expected a string"),
    (dict(hidden="16,x"), "hidden", "comma-separated integers"),
    (dict(hidden="128,,64"), "hidden", "comma-separated integers"),
    (dict(seed=2**64), "seed", "a 32-bit seed"),
    (dict(seed=2**32), "seed", "a 32-bit seed"),
    (dict(seed=-1), "seed", "a 32-bit seed"),
    (dict(lr=1e308), "lr", "the float32 range"),
    (dict(dropout=1.0), "dropout", "[0, 1)"),
    (dict(activation="nope"), "activation", "unknown 'nope'; valid: "),
    (dict(loss="nope"), "loss", "unknown 'nope'"),
    (dict(optimizer="lbfgs"), "optimizer", "unknown 'lbfgs'"),
    (dict(schedule="nope"), "schedule", "unknown 'nope'"),
    (dict(init="constant"), "init", "needs arguments"),
    (dict(arch="conv:4,foo:2"), "arch", "unknown kind 'foo'; valid: conv, pool"),
    (dict(arch="res(conv:4"), "arch", "unbalanced"),
    (dict(arch="fc:8", hidden="16"), "arch", "both give the hidden layers"),
    (dict(momentum=0.5, optimizer="adam"), "momentum", "only for optimizer momentum"),
    (dict(weight_decay=0.1), "weight_decay", "only for optimizer adamw"),
    (dict(momentum=1.0), "momentum", "must be a number in [0, 1), got 1.0"),
    (dict(optimizer="adamw", weight_decay=-1.0), "weight_decay", "finite number >= 0"),
    (dict(augment="crop:2"), "augment", "need images"),
    (dict(preprocess="pca:x"), "preprocess", "pca:K"),
    (dict(init_scale=0.0), "init_scale", "positive"),
    (dict(keep_checkpoints=0), "keep_checkpoints", ">= 1"),
    (dict(patience=0), "patience", ">= 1"),
])
def test_a_bad_value_is_one_line_naming_the_key(changes, key, words):
    with pytest.raises(ConfigError) as e:
        RunConfig(**changes)
    msg = str(e.value)
    assert e.value.key == key and msg.startswith(f"{key}: ") and words in msg
    assert "\n" not in msg


def test_a_file_error_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "config.json"
    d = RunConfig().to_dict()
    path.write_text(json.dumps({**d, "epochs": "30"}))
    with pytest.raises(ConfigError, match=r"config.json: key 'epochs': expected an integer"):
        RunConfig.load(path)
    path.write_text(json.dumps({**d, "foo": 1}))
    with pytest.raises(ConfigError, match=r"config.json: key 'foo': unknown key"):
        RunConfig.load(path)
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        RunConfig.load(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        RunConfig.load(path)


def test_configs_of_older_versions_load_with_the_newer_keys_defaulted(tmp_path):
    """A 0.1 config.json held only these keys (no arch, augment, data_url, init_scale,
    momentum, weight_decay, keep_checkpoints, ...); a 0.2 one had keep_checkpoints, patience,
    devices and tensorboard too."""
    v01 = {"dataset": "digits", "data_dir": None, "hidden": "16", "activation": "tanh",
           "init": "lecun_normal", "bias_init": 0.0, "batch_norm": False, "dropout": 0.0,
           "loss": "softmax_cross_entropy", "optimizer": "sgd", "lr": 0.1,
           "schedule": "constant", "l2": 0.0, "batch_size": 32, "epochs": 5,
           "preprocess": "standardize", "seed": 3}
    v02 = {**v01, "arch": None, "data_url": None, "augment": None, "init_scale": 1.0,
           "momentum": None, "weight_decay": None, "keep_checkpoints": 2, "patience": None,
           "devices": 1, "tensorboard": False}
    for d in (v01, v02):
        path = tmp_path / "config.json"
        path.write_text(json.dumps(d))
        cfg = RunConfig.load(path)
        assert {k: getattr(cfg, k) for k in d} == d
        assert cfg.arch is None and cfg.init_scale == 1.0
    path.write_text(json.dumps({k: v for k, v in v01.items() if k != "lr"}))
    with pytest.raises(ConfigError, match="key 'lr': missing"):
        RunConfig.load(path)


def test_importing_config_does_not_import_the_cli():
    code = ("import sys, jaxnn.config; "
            "assert not [m for m in sys.modules if m.startswith('jaxnn.cli')], "
            "[m for m in sys.modules if m.startswith('jaxnn.cli')]")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------- build
@pytest.fixture(scope="module")
def digits_raw():
    return data.load("digits", seed=0)


def test_build_data_fits_the_preprocessing_on_the_training_split_only(digits_raw):
    ds, pre, state = build_data(RunConfig(**{**SMALL, "preprocess": "standardize"}))
    x = np.asarray(digits_raw.x_train, np.float64)
    mean, std = x.mean(0), x.std(0)
    keep = std > 1e-6
    expect_val = (np.asarray(digits_raw.x_val, np.float64) - mean) / np.where(keep, std, 1.0)
    assert np.allclose(np.asarray(ds.x_val)[:, keep], expect_val[:, keep], atol=1e-4)
    assert pre is not None and state is not None
    assert np.allclose(np.asarray(ds.x_train).mean(0), 0.0, atol=1e-4)


def test_build_keeps_images_for_conv_archs_and_flattens_for_mlps():
    conv = build(RunConfig(arch="conv:2,pool,fc:4", **{k: v for k, v in SMALL.items()
                                                       if k != "hidden"}))
    assert conv.data.x_train.shape[1:] == (8, 8, 1) == conv.model.input_shape
    mlp = build(RunConfig(**SMALL))
    assert mlp.data.x_train.shape[1:] == (64,) == mlp.model.input_shape
    assert conv.model.output_shape == mlp.model.output_shape == (10,)


def test_a_residual_arch_builds_the_residual_formula():
    """res(fc:6) on 6 features: y = x + relu(x W + b), then the output layer."""
    cfg = RunConfig(arch="fc:6,res(fc:6)", preprocess="none", epochs=1)
    model = build_model(cfg, (5,), 3)
    params, state = model.init(jax.random.key(0))
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    out, _ = model.apply(params, state, x)
    w = [np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(params)
         if jax.tree_util.keystr(path).endswith("['w']")]
    b = [np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(params)
         if jax.tree_util.keystr(path).endswith("['b']")]
    assert [a.shape for a in w] == [(5, 6), (6, 6), (6, 3)]
    h = np.maximum(x @ w[0] + b[0], 0)
    h = h + np.maximum(h @ w[1] + b[1], 0)
    np.testing.assert_allclose(np.asarray(out), h @ w[2] + b[2], rtol=1e-5, atol=1e-5)


def test_build_model_refuses_convolutions_on_flat_inputs():
    with pytest.raises(ConfigError, match="^arch: .*needs images"):
        build_model(RunConfig(arch="fc:4,conv:2"), (8, 8, 1), 3)


def test_init_scale_multiplies_every_weight_matrix_only():
    cfg = RunConfig(**SMALL, batch_norm=True)
    p1, _ = build_model(cfg, (5,), 3).init(jax.random.key(1))
    p3, _ = build_model(cfg.replace(init_scale=3.0), (5,), 3).init(jax.random.key(1))
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(p1), jax.tree.leaves(p3),
                            strict=True):
        factor = 3.0 if jax.tree_util.keystr(path).endswith("['w']") else 1.0
        np.testing.assert_allclose(np.asarray(b), factor * np.asarray(a), rtol=1e-6)


def test_build_needs_a_run_config():
    with pytest.raises(TypeError, match="RunConfig.from_dict"):
        build({"lr": 0.1})


# --------------------------------------------------------------------------- every registry name
def test_every_registered_loss_trains_toward_the_label():
    """Every loss name resolves to a loss of (scores, class ids) that is lower when the scores
    favour the label than when they favour another class."""
    rng = np.random.default_rng(0)
    labels = jnp.asarray(rng.integers(0, 4, 6), jnp.int32)
    other = (labels + 1) % 4
    right = 3.0 * (np.arange(4) == np.asarray(labels)[:, None])
    wrong = 3.0 * (np.arange(4) == np.asarray(other)[:, None])
    for name in losses.names():
        resolved = build_loss(RunConfig(loss=name))
        fn = losses.get(resolved) if isinstance(resolved, str) else resolved
        good, bad = fn(jnp.asarray(right), labels), fn(jnp.asarray(wrong), labels)
        assert good.shape == (6,) and bool(jnp.all(jnp.isfinite(good))), name
        assert bool(jnp.all(good < bad)), name


@pytest.mark.parametrize("name", activations.names())
def test_every_registered_activation_builds_a_model(name):
    model = build_model(RunConfig(**SMALL, activation=name), (5,), 3)
    params, state = model.init(jax.random.key(0))
    x = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    scores, _ = model.apply(params, state, x)
    assert scores.shape == (3, 3) and np.all(np.isfinite(scores))


def test_every_registered_initializer_builds_or_is_named_as_needing_arguments():
    for name in initializers.names():
        try:
            initializers.get(name)
            usable = True
        except (ValueError, TypeError):
            usable = False
        if usable:
            params, _ = build_model(RunConfig(**SMALL, init=name), (5,), 3).init(
                jax.random.key(0))
            assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params)), name
        else:
            with pytest.raises(ConfigError, match=f"^init: '{name}' needs arguments"):
                RunConfig(init=name)


def test_every_registered_optimizer_and_schedule_gives_finite_nonzero_updates():
    """A warm-up schedule starts at learning rate 0, so the second step's updates are read."""
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros((2,))}
    grads = jax.tree.map(lambda p: p * 0 + 0.1, params)
    for key, names in (("optimizer", optim.names()), ("schedule", optim.schedule_names())):
        for name in names:
            opt = build_optimizer(RunConfig(**{key: name}), steps_per_epoch=4)
            state = opt.init(params)
            for _ in range(2):
                updates, state = opt.update(grads, state, params)
            leaves = [np.asarray(u) for u in jax.tree.leaves(updates)]
            assert all(np.all(np.isfinite(u)) for u in leaves), (key, name)
            assert any(np.any(u != 0) for u in leaves), (key, name)


# --------------------------------------------------------------------------- what cannot fit
def test_parameter_count_is_the_sum_of_the_layers():
    """64-128-64-10: (64*128 + 128) + (128*64 + 64) + (64*10 + 10) weights and biases."""
    from jaxnn.models import parameter_count

    model = build_model(RunConfig(), (64,), 10)
    assert parameter_count(model) == 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10


@pytest.mark.parametrize("cfg", [RunConfig(hidden="1000000000"),
                                 RunConfig(arch="conv:100000,conv:100000")])
def test_a_model_that_cannot_fit_in_memory_is_refused_before_allocating(cfg):
    with pytest.raises(ConfigError, match="the model has .* parameters: .* GiB .* more than the"):
        build_model(cfg, (8, 8, 1) if cfg.arch else (64,), 10)
