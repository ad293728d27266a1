"""jaxnn.tensorboard: event files read back with TensorBoard's own EventAccumulator hold the
epoch records, per-layer statistics recomputed here with numpy, and the search trials' hparams."""

import math

import jax
import numpy as np
import pytest

pytest.importorskip("tensorboardX", reason="the jaxnn[tensorboard] extra is not installed")
ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                         reason="tensorboard (its reader) is not installed")

from jaxnn import layers, optim, regularizers, train  # noqa: E402
from jaxnn.tensorboard import SUBDIR, TensorBoardCallback, write_hparams  # noqa: E402


def _load(logdir):
    acc = ea.EventAccumulator(str(logdir), size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0,
                                                          ea.TENSORS: 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def logged(tmp_path_factory, make_blobs):
    """Three epochs of a tanh MLP on blobs with the callback, plus step 0 via on_start."""
    ds = make_blobs(n=160, classes=3, spread=3.0, n_train=96, n_val=48)
    model = layers.mlp([6, 12, 8, 3], activation="tanh")
    opt = optim.momentum(0.1)
    run = tmp_path_factory.mktemp("tb")
    x_probe, y_probe = ds.x_val[:32], ds.y_val[:32]
    states = {}
    tb = TensorBoardCallback(run, model, x_probe, y_probe, optimizer=opt, l2=1e-3)  # tanh: read
    # off model.activations for the saturated fraction

    def keep(rec, state):
        states[rec["epoch"]] = state
        tb(rec, state)

    def start(state, initial_loss):
        states[0] = state
        tb.on_start(state, initial_loss)

    with tb:
        history = train.fit(model, ds, optimizer=opt, epochs=3, batch_size=32, l2=1e-3,
                            key=jax.random.key(0), on_start=start, callback=keep)
    return _load(run / SUBDIR), history, states, model, (x_probe, y_probe), opt


def test_epoch_records_become_scalars(logged):
    acc, history, *_ = logged
    for key, tag in (("train_loss", "train/loss"), ("train_acc", "train/accuracy"),
                     ("val_loss", "val/loss"), ("val_acc", "val/accuracy"), ("lr", "lr")):
        events = [e for e in acc.Scalars(tag) if e.step > 0]
        assert [e.step for e in events] == [1, 2, 3]
        # event files store float32: one rounding of each recorded value
        np.testing.assert_allclose([e.value for e in events], history[key], rtol=2 ** -23)
    step0 = [e for e in acc.Scalars("train/loss") if e.step == 0]
    assert len(step0) == 1 and step0[0].value == pytest.approx(history.initial_loss, rel=2 ** -23)


def _traced(model, state, x):
    _, _, acts = model.trace(state.params, state.model_state, x, train=True,
                             key=jax.random.key(0))
    return [(np.asarray(a.pre, np.float64), np.asarray(a.post, np.float64)) for a in acts]


def test_layer_statistics_match_numpy(logged):
    acc, _, states, model, (x, y), opt = logged
    saturated_seen = []
    for epoch in (0, 3):
        hidden = _traced(model, states[epoch], x)
        assert len(hidden) == 2
        for i, (pre, post) in zip(model.layer_names[:2], hidden, strict=True):
            dead = np.mean(np.all(post == 0, axis=0))  # units zero for every probe example
            saturated = np.mean(np.abs(post) > 0.99)  # tanh's flat regime
            saturated_seen.append(saturated)
            got = {e.step: e.value for e in acc.Scalars(f"dead/{i}")}
            assert got[epoch] == pytest.approx(dead, abs=1e-7)
            got = {e.step: e.value for e in acc.Scalars(f"saturated/{i}")}
            assert got[epoch] == pytest.approx(saturated, abs=1e-6)
            for tag, values in ((f"activations/{i}", post), (f"preactivations/{i}", pre)):
                (h,) = [e.histogram_value for e in acc.Histograms(tag) if e.step == epoch]
                assert h.num == values.size
                # float32 activations summed in float64 by the writer: ~1e-7 relative per term
                assert h.min == pytest.approx(values.min(), rel=1e-6, abs=1e-6)
                assert h.max == pytest.approx(values.max(), rel=1e-6, abs=1e-6)
                assert h.sum == pytest.approx(values.sum(), rel=1e-5, abs=1e-4 * values.size)
    assert max(saturated_seen) > 0  # the check above compared something non-trivial


def test_gradients_and_update_ratio_match_an_optimizer_step(logged):
    """The gradient of the probe objective and one optimizer step, recomputed here with
    jax.grad and the optimizer directly, give the logged grad norms and update/weight ratios
    (per top-level entry of the params that holds weights)."""
    import jax.numpy as jnp

    from jaxnn import losses

    acc, _, states, model, (x, y), opt = logged
    state = states[2]

    def objective(p):
        logits, _ = model.apply(p, state.model_state, x, train=True, key=jax.random.key(0))
        return regularizers.full_loss(jnp.mean(losses.softmax_cross_entropy(logits, y)), p,
                                      l2=1e-3)

    grads = jax.grad(objective)(state.params)
    updates, _ = opt.update(grads, state.opt_state, state.params)
    norm = lambda leaves: np.sqrt(sum(np.sum(np.asarray(a, np.float64) ** 2) for a in leaves))
    names = [k for k in state.params if regularizers.weights(state.params[k])]
    assert len(names) == 3  # two hidden layers and the output layer
    for name in names:
        tag = name if isinstance(name, str) else f"layer_{name}"
        w, g, u = (regularizers.weights(t[name]) for t in (state.params, grads, updates))
        logged_norm = {e.step: e.value for e in acc.Scalars(f"grad_norm/{tag}")}[2]
        logged_ratio = {e.step: e.value for e in acc.Scalars(f"update_ratio/{tag}")}[2]
        # float32 sums of squares over <= 96 terms: relative error well under 1e-5
        assert logged_norm == pytest.approx(norm(g), rel=1e-5)
        assert logged_ratio == pytest.approx(norm(u) / norm(w), rel=1e-5)
        (h,) = [e.histogram_value for e in acc.Histograms(f"gradients/{tag}") if e.step == 2]
        assert h.num == sum(a.size for a in g)


def test_bad_probe_is_a_value_error(tmp_path):
    model = layers.mlp([6, 4, 3])
    with pytest.raises(ValueError, match="x_probe"):
        TensorBoardCallback(tmp_path, model, np.zeros((0, 6), np.float32))
    with pytest.raises(ValueError, match="y_probe"):
        TensorBoardCallback(tmp_path, model, np.zeros((4, 6), np.float32), np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="activation"):
        TensorBoardCallback(tmp_path, model, np.zeros((4, 6), np.float32), activation="nope")


def test_write_hparams_one_session_per_trial(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    trials = [
        {"params": {"learning_rate": 0.05, "l2": 1e-3, "optimizer": "adam"}, "val_acc": 0.93,
         "val_loss": 0.21, "train_loss": 0.1, "status": "ok"},
        {"params": {"learning_rate": 3.0, "l2": 1e-4, "optimizer": "sgd"}, "val_acc": None,
         "val_loss": math.nan, "train_loss": None, "status": "diverged"},
    ]
    logdir = write_hparams(tmp_path, trials)
    for i, t in enumerate(trials):
        acc = _load(f"{logdir}/trial-{i:03d}")
        content = acc.PluginTagToContent("hparams")
        starts = [plugin_data_pb2.HParamsPluginData.FromString(v) for v in content.values()]
        info = [s.session_start_info for s in starts if s.HasField("session_start_info")]
        assert len(info) == 1
        hp = info[0].hparams
        assert hp["learning_rate"].number_value == t["params"]["learning_rate"]
        assert hp["l2"].number_value == t["params"]["l2"]
        assert hp["optimizer"].string_value == t["params"]["optimizer"]
        assert hp["status"].string_value == t["status"]
        scalars = {tag: acc.Scalars(tag)[0].value for tag in acc.Tags()["scalars"]}
        expected = {f"hparam/{k}": t[k] for k in ("val_acc", "val_loss", "train_loss")
                    if t[k] is not None and math.isfinite(t[k])}
        assert scalars.keys() == expected.keys()
        for k, v in expected.items():
            assert scalars[k] == pytest.approx(v, rel=2 ** -23)
    with pytest.raises(ValueError, match="params"):
        write_hparams(tmp_path, [{"val_acc": 0.5}])


# --------------------------------------------------------------------------- nested blocks
def test_one_entry_per_weight_matrix_of_nested_blocks(tmp_path):
    """A model with a residual block (two matrices and a projection): scalars and histograms per
    weight matrix under its path name, the gradient norm and update ratio of that matrix alone
    (recomputed here with jax.grad and plain SGD)."""
    import types

    import jax.numpy as jnp

    from jaxnn import losses, models

    model = layers.serial(layers.Dense(4), layers.Activation("relu"),
                          layers.Residual(layers.serial(layers.Dense(5), layers.Activation("relu"),
                                                        layers.Dense(3))),
                          layers.Activation("relu"), layers.Dense(2), input_shape=(6,))
    names = ["layer_0", "layer_1/layer_0", "layer_1/layer_1", "layer_1/skip", "layer_2"]
    assert list(model.layer_names) == names
    params, model_state = model.init(jax.random.key(1))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 6)).astype(np.float32)
    y = rng.integers(0, 2, 8).astype(np.int32)
    lr = 0.1
    opt = optim.sgd(lr)
    state = types.SimpleNamespace(params=params, model_state=model_state,
                                  opt_state=opt.init(params))
    with TensorBoardCallback(tmp_path, model, x, y, optimizer=opt) as tb:
        tb.on_start(state)
    acc = _load(tmp_path / SUBDIR)

    def objective(p):
        logits, _ = model.apply(p, model_state, x, train=True, key=jax.random.key(0))
        return jnp.mean(losses.softmax_cross_entropy(logits, y))

    grads = jax.grad(objective)(params)
    for name in names:
        g = np.linalg.norm(np.asarray(models.param_at(grads, name)["w"], np.float64))
        w = models.param_at(params, name)["w"]
        assert acc.Scalars(f"grad_norm/{name}")[0].value == pytest.approx(g, rel=1e-5)
        assert acc.Scalars(f"update_ratio/{name}")[0].value == pytest.approx(
            lr * g / np.linalg.norm(np.asarray(w, np.float64)), rel=1e-5)
        (h,) = [e.histogram_value for e in acc.Histograms(f"weights/{name}")]
        assert h.num == w.size  # this matrix only, not the ones nested below it
    hidden = [t.split("/", 1)[1] for t in acc.Tags()["scalars"] if t.startswith("dead/")]
    assert sorted(hidden) == sorted(names[:-1])
