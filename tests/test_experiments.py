"""jaxnn.experiments: the init-depth behaviours against a numpy forward pass, the activation and
loss comparisons on small data."""

import math

import jax
import numpy as np
import pytest

from jaxnn import experiments, optim

DEPTH, WIDTH, EXAMPLES = 8, 100, 300  # reduced from 10 x 500 x 1000 for speed
CONFIGS = {c.label: c for c in experiments.INIT_DEPTH_CONFIGS}
NP_ACT = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0.0)}


def _numpy_depth(cfg, key):
    """The documented recipe: k_x, k_1..k_depth = split(key, depth + 1); x ~ N(0, 1); layer l
    has weights init(k_l, (width, width)); then a float64 numpy forward pass."""
    k_x, *k_layers = jax.random.split(key, DEPTH + 1)
    h = np.asarray(jax.random.normal(k_x, (EXAMPLES, WIDTH)), np.float64)
    out = []
    for k in k_layers:
        pre = h @ np.asarray(cfg.init(k, (WIDTH, WIDTH)), np.float64)
        h = NP_ACT[cfg.activation](pre)
        sat = np.mean(np.abs(h) > 0.99) if cfg.activation == "tanh" else 0.0
        out.append({"pre_mean": pre.mean(), "pre_std": pre.std(), "mean": h.mean(),
                    "std": h.std(), "saturated": sat, "dead": np.mean(np.all(h == 0, axis=0))})
    return out


@pytest.fixture(scope="module", params=list(CONFIGS))
def depth_run(request):
    cfg = CONFIGS[request.param]
    key = jax.random.key(7)
    stats = experiments.init_depth(cfg.activation, cfg.init, key=key, depth=DEPTH, width=WIDTH,
                                   num_examples=EXAMPLES)
    return cfg, stats, _numpy_depth(cfg, key)


def test_public_names():
    assert sorted(experiments.__all__) == sorted([
        "DepthConfig", "INIT_DEPTH_CONFIGS", "ACTIVATIONS", "ComparisonRow", "ScoreSweep",
        "LossRow", "LossComparison", "init_depth", "activation_comparison", "score_sweep",
        "loss_comparison"])
    assert set(experiments.ACTIVATIONS) >= {"relu", "leaky_relu", "elu", "tanh", "sigmoid",
                                             "swish", "maxout"}


def test_the_five_configurations():
    assert [(c.activation, c.init_name) for c in experiments.INIT_DEPTH_CONFIGS] == [
        ("tanh", "normal(0.01)"), ("tanh", "normal(1.0)"), ("tanh", "lecun_normal"),
        ("relu", "lecun_normal"), ("relu", "he_normal")]
    w = {c.label: np.asarray(c.init(jax.random.key(0), (400, 400)))
         for c in experiments.INIT_DEPTH_CONFIGS}
    stds = [float(v.std()) for v in w.values()]
    np.testing.assert_allclose(stds, [0.01, 1.0, 1 / 20, 1 / 20, math.sqrt(2) / 20], rtol=0.02)


def test_init_depth_matches_numpy(depth_run):
    cfg, stats, ref = depth_run
    assert [s.name for s in stats] == [f"layer_{i}" for i in range(1, DEPTH + 1)]
    for s, r in zip(stats, ref, strict=True):
        scale = r["std"] + 1e-30
        assert s.std == pytest.approx(r["std"], rel=1e-3)
        assert s.pre_std == pytest.approx(r["pre_std"], rel=1e-3)
        assert abs(s.mean - r["mean"]) <= 1e-3 * scale
        assert abs(s.pre_mean - r["pre_mean"]) <= 1e-3 * r["pre_std"]
        assert s.saturated == pytest.approx(r["saturated"], abs=3 / (EXAMPLES * WIDTH))
        assert s.dead == pytest.approx(r["dead"])
        assert s.activations.shape == (EXAMPLES, WIDTH)
        assert math.isnan(s.grad_norm) and math.isnan(s.update_ratio)


def test_init_depth_behaviours(depth_run):
    """The curriculum's pictures, as numbers (checked on the numpy forward and on jaxnn's)."""
    cfg, stats, ref = depth_run
    for std, sat in ([r["std"] for r in ref], [r["saturated"] for r in ref]), \
                    ([s.std for s in stats], [s.saturated for s in stats]):
        std, sat = np.asarray(std), np.asarray(sat)
        ratio = std[1:] / std[:-1]
        if cfg.label == "tanh + N(0, 0.01)":  # collapses to 0: x0.1 per layer at width 100
            assert np.all(ratio < 0.2) and std[-1] < 1e-6
        elif cfg.label == "tanh + N(0, 1)":  # saturates at +-1
            assert np.all(sat > 0.6) and np.all(std > 0.9)
        elif cfg.label == "tanh + Xavier 1/n":  # healthy: neither collapsed nor saturated
            assert np.all((std > 0.15) & (std < 0.8)) and np.all(sat < 0.05)
        elif cfg.label == "relu + Xavier 1/n":  # the variance halves at every layer
            assert np.all(ratio < 1.0) and std[-1] / std[0] < 0.2
        elif cfg.label == "relu + He 2/n":  # stays put
            assert 0.5 < std[-1] / std[0] < 2.0 and np.all(std > 0.4)


def test_he_is_xavier_times_sqrt2_per_layer_for_relu():
    # Same key, He = sqrt(2) x LeCun weights, and relu is positively homogeneous: layer l's
    # activations are exactly 2^(l/2) times larger, the dead units the same.
    key = jax.random.key(1)
    lecun = experiments.init_depth("relu", "lecun_normal", key=key, depth=6, width=64,
                                   num_examples=100, keep_activations=False)
    he = experiments.init_depth("relu", "he_normal", key=key, depth=6, width=64,
                                num_examples=100, keep_activations=False)
    for l, (a, b) in enumerate(zip(lecun, he, strict=True), start=1):
        assert b.std / a.std == pytest.approx(2 ** (l / 2), rel=1e-4)
        assert b.dead == a.dead
        assert a.activations is None


def _numpy_conv_same(h, w):
    """3x3 (or kxk) stride-1 SAME cross-correlation of NHWC h with HWIO w, by loops."""
    k = w.shape[0]
    p = (k - 1) // 2
    hp = np.pad(h, ((0, 0), (p, k - 1 - p), (p, k - 1 - p), (0, 0)))
    out = np.zeros(h.shape[:3] + (w.shape[-1],))
    for i in range(h.shape[1]):
        for j in range(h.shape[2]):
            out[:, i, j] = np.einsum("nuvc,uvco->no", hp[:, i:i + k, j:j + k], w)
    return out


@pytest.mark.parametrize("activation,init", [("relu", "he_normal"), ("tanh", "lecun_normal")])
def test_init_depth_with_convolutions_matches_numpy(activation, init):
    """The documented recipe with kernel_size: NHWC unit-Gaussian images, HWIO kernels
    init(k_l, (k, k, width, width)), SAME convolutions; dead units per channel."""
    depth, width, n, size = 3, 4, 6, 5
    key = jax.random.key(2)
    stats = experiments.init_depth(activation, init, key=key, depth=depth, width=width,
                                   num_examples=n, kernel_size=3, image_size=size)
    k_x, *k_layers = jax.random.split(key, depth + 1)
    h = np.asarray(jax.random.normal(k_x, (n, size, size, width)), np.float64)
    fn = NP_ACT[activation]
    for s, k in zip(stats, k_layers, strict=True):
        w = np.asarray(getattr(jax.nn.initializers, init)()(k, (3, 3, width, width)), np.float64)
        pre = _numpy_conv_same(h, w)
        h = fn(pre)
        assert s.activations.shape == (n, size, size, width)
        # float32 sums of 3*3*width = 36 terms of O(1) products.
        np.testing.assert_allclose(s.activations, h, atol=36 * 8 * 1.2e-7 * np.abs(h).max())
        assert s.pre_std == pytest.approx(pre.std(), rel=1e-4)
        assert s.std == pytest.approx(h.std(), rel=1e-4)
        assert s.dead == pytest.approx(np.mean(np.all(h == 0, axis=(0, 1, 2))))


def test_init_depth_full_size_collapse():
    stats = experiments.init_depth("tanh", experiments.INIT_DEPTH_CONFIGS[0].init,
                                   key=jax.random.key(0), keep_activations=False)
    assert len(stats) == 10
    assert stats[0].std > 0.1 and stats[-1].std < 1e-5


def test_init_depth_rejects_bad_sizes():
    with pytest.raises(ValueError, match="depth"):
        experiments.init_depth("tanh", "lecun_normal", key=jax.random.key(0), depth=0)
    with pytest.raises(ValueError, match="kernel_size"):
        experiments.init_depth("tanh", "lecun_normal", key=jax.random.key(0), kernel_size=0)
    with pytest.raises(ValueError, match="elementwise"):
        experiments.init_depth("maxout", "lecun_normal", key=jax.random.key(0))


# --------------------------------------------------------------------------- comparisons
@pytest.fixture(scope="module")
def blobs(make_blobs):
    return make_blobs(n=200, classes=3, spread=3, n_train=120, n_val=40)


def test_activation_comparison_rows_and_dead_relus(blobs):
    # A bias of -100 kills every ReLU from the start (and they never come back); leaky ReLU
    # units are never exactly zero.
    rows = experiments.activation_comparison(
        blobs, key=jax.random.key(0), activations=("relu", "leaky_relu"), epochs=2, seeds=2,
        hidden=(16,), bias_init=-100.0)
    assert [(r.activation, r.init) for r in rows] == [("relu", "he_normal"),
                                                      ("leaky_relu", "he_normal")]
    relu, leaky = rows
    assert relu.dead_fraction_curve == [1.0, 1.0] and leaky.dead_fraction_curve == [0.0, 0.0]
    for r in rows:
        assert len(r.val_acc) == len(r.train_loss) == 2
        assert r.status == ["ok", "ok"] and len(r.val_acc_per_seed) == 2
        assert r.val_acc_mean == pytest.approx(np.mean(r.val_acc_per_seed))
        assert r.val_acc_std == pytest.approx(np.std(r.val_acc_per_seed))


@pytest.mark.slow
def test_activation_comparison_covers_maxout_and_validates(blobs):
    rows = experiments.activation_comparison(
        blobs, key=jax.random.key(0), activations=("maxout",), inits=("lecun_normal",),
        epochs=5, seeds=1, hidden=(8,), learning_rate=0.1)
    assert rows[0].activation == "maxout" and rows[0].val_acc_mean > 0.6  # chance is 1/3
    with pytest.raises(ValueError, match="unknown activation"):
        experiments.activation_comparison(blobs, key=jax.random.key(0), activations=("nope",))
    with pytest.raises(ValueError, match="seeds"):
        experiments.activation_comparison(blobs, key=jax.random.key(0), seeds=0)


def test_score_sweep_against_numpy():
    s = np.array([-2.5, -0.5, 0.5, 1.5, 2.5, 5.0])
    others = (1.0, -1.0)
    sw = experiments.score_sweep(s, other_scores=others)
    o = np.asarray(others)
    terms = o[None, :] - s[:, None] + 1.0
    np.testing.assert_allclose(sw.hinge, np.maximum(terms, 0).sum(1), rtol=1e-6)
    np.testing.assert_allclose(sw.hinge_grad, -(terms > 0).sum(1), rtol=1e-6)
    scores = np.concatenate([s[:, None], np.broadcast_to(o, (s.size, 2))], axis=1)
    lse = np.log(np.exp(scores).sum(1))
    np.testing.assert_allclose(sw.cross_entropy, lse - s, rtol=1e-5)
    np.testing.assert_allclose(sw.cross_entropy_grad, np.exp(s - lse) - 1.0, rtol=1e-5)
    # The point: once the margins are met, hinge is exactly 0 and so is its gradient;
    # cross-entropy is never 0 and always pushes s_y up.
    met = s > o.max() + 1
    assert np.all(sw.hinge[met] == 0) and np.all(sw.hinge_grad[met] == 0)
    assert np.all(sw.cross_entropy > 0) and np.all(sw.cross_entropy_grad < 0)


@pytest.mark.slow
def test_loss_comparison_hinge_stops_cross_entropy_keeps_pushing(blobs):
    # Plain SGD, no regularization, the probe is the whole training set: once every margin is
    # met the hinge gradient is exactly 0 and the weights stop moving; cross-entropy never stops.
    seen = []  # on_epoch: after every epoch of each loss (the CLI's progress lines)
    res = experiments.loss_comparison(
        blobs, key=jax.random.key(0), epochs=15, seeds=1, hidden=(16,), learning_rate=0.1,
        optimizer=optim.sgd(0.1), batch_size=32, probe_examples=1000,
        on_epoch=lambda loss, epoch, m: seen.append((loss, epoch, float(m["val_acc"][0]))))
    assert [r.loss for r in res.rows] == ["multiclass_hinge_loss", "softmax_cross_entropy"]
    assert [s[:2] for s in seen] == [(r.loss, e) for r in res.rows for e in range(1, 16)]
    assert [s[2] for s in seen] == pytest.approx([a for r in res.rows for a in r.val_acc])
    hinge, ce = res.rows
    met = hinge.satisfied_curve.index(1.0)  # the epoch every training example's margins are met
    assert met < 12
    assert hinge.margin_curve[met:] == [hinge.margin_curve[met]] * (15 - met)
    assert hinge.hinge_curve[-1] == 0.0 and hinge.train_loss[-1] == 0.0
    assert np.all(np.diff(ce.margin_curve[met:]) > 0)
    assert ce.cross_entropy_curve[-1] > 0
    assert res.sweep.hinge.shape == res.sweep.correct_score.shape
