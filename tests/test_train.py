"""jaxnn.train: the step against a hand computation, compile-once, scan == loop, fit, divergence,
resume."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import data, layers, optim, train


def _blobs(n=90, d=6, c=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d)) * 3
    y = rng.integers(0, c, size=n).astype(np.int32)
    x = (centers[y] + rng.normal(size=(n, d))).astype(np.float32)
    return x, y


@pytest.fixture(scope="module")
def dataset():
    x, y = _blobs(150)
    return data.Dataset(x[:90], y[:90], x[90:120], y[90:120], x[120:], y[120:], 3, "blobs")


@pytest.fixture(scope="module")
def model():
    return layers.mlp([6, 16, 3])


def test_step_equals_hand_computation(model):
    x, y = _blobs(8)
    opt = optim.sgd(0.1)
    state = train.init_train_state(model, opt, key=jax.random.key(0))
    batch = data.Batch(jnp.asarray(x), jnp.asarray(y), jnp.ones(8))
    l2 = 0.01

    def ref_loss(p):
        logits, _ = model.apply(p, state.model_state, x)
        logp = jax.nn.log_softmax(logits)
        ce = -jnp.mean(logp[jnp.arange(8), y])
        reg = sum(jnp.sum(p[k]["w"] ** 2) for k in p)
        return ce + l2 * reg

    expected = jax.tree.map(lambda p, g: p - 0.1 * g, state.params, jax.grad(ref_loss)(state.params))
    step = train.make_train_step(model.apply, "softmax_cross_entropy", opt, l2=l2, donate=False)
    new, metrics = step(state, batch)
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(new.step) == 1
    assert float(metrics.total_loss) == pytest.approx(float(ref_loss(state.params)), rel=1e-5)
    assert float(metrics.count) == 8


def test_mask_excludes_padding_from_loss_and_gradient(model):
    x, y = _blobs(8)
    opt = optim.sgd(0.1)
    state = train.init_train_state(model, opt, key=jax.random.key(0))
    step = train.make_train_step(model.apply, "softmax_cross_entropy", opt, donate=False)
    full, m_full = step(state, data.Batch(jnp.asarray(x[:5]), jnp.asarray(y[:5]), jnp.ones(5)))
    junk_x = np.concatenate([x[:5], 50 * np.ones((3, 6), np.float32)])
    padded, m_pad = step(state, data.Batch(jnp.asarray(junk_x), jnp.asarray(y), jnp.asarray(
        [1.0] * 5 + [0.0] * 3)))
    assert float(m_pad.loss) == pytest.approx(float(m_full.loss), rel=1e-6)
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(padded.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_step_compiles_once(model):
    traces = []

    def counting_apply(*args, **kwargs):
        traces.append(1)
        return model.apply(*args, **kwargs)

    opt = optim.momentum(0.1)
    state = train.init_train_state(model, opt, key=jax.random.key(1))
    step = train.make_train_step(counting_apply, "softmax_cross_entropy", opt)
    x, y = _blobs(50)
    for epoch in range(2):
        for b in data.iterate_batches(x, y, 16, key=jax.random.key(2), epoch=epoch):  # ragged last
            state, _ = step(state, b)
        # A changing learning rate is a value in the state, not a new trace.
        state = state._replace(opt_state=optim.set_hyperparam(
            state.opt_state, "learning_rate", 0.05 / (epoch + 1)))
    assert len(traces) == 1


def test_epoch_in_scan_equals_python_loop(model, dataset):
    opt = optim.momentum(0.05)
    s0 = train.init_train_state(model, opt, key=jax.random.key(4))
    epoch = train.make_epoch(model.apply, "softmax_cross_entropy", opt, batch_size=32, l2=1e-3,
                             donate=False)
    s_scan, metrics = epoch(s0, dataset.x_train, dataset.y_train, jnp.int32(1))
    step = train.make_train_step(model.apply, "softmax_cross_entropy", opt, l2=1e-3, donate=False)
    s_loop, losses = s0, []
    data_key = jax.random.fold_in(s0.key, 0)
    for b in data.iterate_batches(dataset.x_train, dataset.y_train, 32, key=data_key, epoch=1):
        s_loop, m = step(s_loop, b)
        losses.append(float(m.loss))
    assert metrics.loss.shape == (3,)
    np.testing.assert_allclose(metrics.loss, losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s_scan.params), jax.tree.leaves(s_loop.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_evaluate_matches_numpy(model, dataset):
    params, state = model.init(jax.random.key(5))
    res = train.evaluate(model.apply, params, state, dataset.x_val, dataset.y_val, batch_size=7)
    logits = np.asarray(model.apply(params, state, dataset.x_val)[0], np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1,
                                                                           keepdims=True)) \
        - logits.max(1, keepdims=True)
    ce = -logp[np.arange(len(dataset.y_val)), dataset.y_val].mean()
    acc = np.mean(logits.argmax(1) == dataset.y_val)
    assert float(res.loss) == pytest.approx(ce, rel=1e-5)
    assert float(res.accuracy) == pytest.approx(acc)


def test_fit_learns_a_tiny_problem_to_zero_loss(model, dataset):
    small = dataset._replace(x_train=dataset.x_train[:20], y_train=dataset.y_train[:20])
    hist = train.fit(model, small, optimizer=optim.adam(0.01), epochs=150, batch_size=20,
                     key=jax.random.key(0))
    assert hist.records[-1]["train_loss"] < 0.01
    assert hist.records[-1]["train_acc"] == 1.0
    assert hist.stopped_reason == "completed"
    assert hist["train_loss"].shape == (150,)


def test_a_second_fit_with_the_same_settings_reuses_the_compiled_epoch(model, dataset,
                                                                     monkeypatch):
    """fit builds (traces, compiles) its epoch once for the same model, loss, optimizer and
    settings; the second run is the first run again, bit for bit. Other settings, or an
    optimizer that cannot be hashed, build their own."""
    import optax

    train._fit_epoch_lru.cache_clear()
    built = []
    real = train._fit_epoch
    monkeypatch.setattr(train, "_fit_epoch", lambda *a, **k: built.append(k["l2"]) or real(*a, **k))
    opt = optim.momentum(0.05)
    run = lambda **kw: train.fit(model, dataset, optimizer=opt, epochs=3, batch_size=16,
                                 key=jax.random.key(1), **kw)
    first, second = run(), run()
    assert built == [0.0]
    assert [r["train_loss"] for r in first.records] == [r["train_loss"] for r in second.records]
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first.state.params),
                                                    jax.tree.leaves(second.state.params),
                                                    strict=True))
    run(l2=1e-3)
    assert built == [0.0, 1e-3]

    class Unhashable(optax.GradientTransformation):
        __hash__ = None

    opt = Unhashable(*optim.momentum(0.05))
    run(), run()
    assert built == [0.0, 1e-3, 0.0, 0.0]  # built every time, and still trains
    assert np.isfinite(run().records[-1]["train_loss"])


def test_fit_stops_on_divergence_and_returns_the_last_good_state(model, dataset):
    # An absurd learning rate: the loss explodes within a few epochs.
    hist = train.fit(model, dataset, optimizer=optim.sgd(1e4), epochs=20, batch_size=30,
                     key=jax.random.key(0))
    assert hist.diverged and "learning rate" in hist.stopped_reason
    assert len(hist.records) < 20 and hist.epochs_done == len(hist.records)
    for leaf in jax.tree.leaves(hist.state.params):
        assert np.all(np.isfinite(leaf))
    with pytest.raises(train.DivergenceError):
        train.fit(model, dataset, optimizer=optim.sgd(1e4), epochs=20, batch_size=30,
                  key=jax.random.key(0), raise_on_divergence=True)


def test_nan_parameters_with_a_finite_loss_are_divergence(model, dataset):
    """A loss clipped at 0 can stay finite while the weights are NaN: the parameters count."""
    hist = train.fit(model, dataset, optimizer=optim.sgd(1e20), epochs=3, batch_size=30,
                     key=jax.random.key(0), loss="multiclass_hinge_loss")
    assert hist.diverged and hist.epochs_done == 0
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(hist.state.params))


def test_divergence_rule_on_scalars_and_populations():
    loss = jnp.array([1.0, 7.0, jnp.nan, jnp.inf, 2.0])
    finite = jnp.array([True, True, True, True, False])
    got = train.diverged(loss, jnp.full(5, 2.0), factor=3.0, params_finite=finite)
    np.testing.assert_array_equal(got, [False, True, True, True, True])
    assert train.is_diverged(6.0, 2.0) is False and train.is_diverged(6.01, 2.0) is True
    assert not bool(train.tree_all_finite({"a": jnp.ones(3), "b": jnp.array([0.0, jnp.nan])}))
    assert bool(train.tree_all_finite({"a": jnp.ones(3), "k": jnp.arange(3)}))


def test_early_stopping_rule_on_scalars_and_populations():
    vals = [3.0, 2.0, 2.5, 2.1, 2.2, 1.0]
    es = train.early_stopping_init()
    since = []
    for v in vals:
        es = train.early_stopping_update(es, v)
        since.append(int(es.since_best))
    assert since == [0, 0, 1, 2, 3, 0]
    es = train.early_stopping_init((2,))
    for v in vals:  # member 1 is frozen (inactive): its count never grows
        es = train.early_stopping_update(es, [v, v], active=[True, False])
    np.testing.assert_array_equal(es.since_best, [0, 0])
    assert list(train.should_stop_early(train.EarlyStopping(np.array([1.0, 1.0]),
                                                            np.array([2, 3])), 3)) == [False, True]
    assert not train.should_stop_early(es, None).any()


def test_fit_refuses_a_non_finite_initial_loss(model, dataset):
    huge = dataset._replace(x_train=np.full_like(dataset.x_train, 3e38))
    with pytest.raises(ValueError, match="initial loss"):
        train.fit(model, huge, optimizer=optim.sgd(0.1), epochs=1, key=jax.random.key(0))


def test_fit_rejects_bad_input(model, dataset):
    with pytest.raises(ValueError, match="epochs"):
        train.fit(model, dataset, optimizer=optim.sgd(0.1), epochs=0, key=jax.random.key(0))
    empty = dataset._replace(x_train=dataset.x_train[:0], y_train=dataset.y_train[:0])
    with pytest.raises(ValueError, match="empty"):
        train.fit(model, empty, optimizer=optim.sgd(0.1), epochs=1, key=jax.random.key(0))
    for bad in (0, -1):
        with pytest.raises(ValueError, match="patience"):
            train.fit(model, dataset, optimizer=optim.sgd(0.1), epochs=1,
                      key=jax.random.key(0), patience=bad)


def test_population_style_vmap_of_the_raw_step(model):
    """The un-jitted step vmaps over states and l2 (what jaxnn.population builds on)."""
    opt = optim.sgd(0.1)
    raw = train.train_step_fn(model.apply, "softmax_cross_entropy", opt)
    keys = jax.random.split(jax.random.key(0), 3)
    states = jax.vmap(lambda k: train.init_train_state(model, opt, key=k))(keys)
    x, y = _blobs(8)
    batch = data.Batch(jnp.asarray(x), jnp.asarray(y), jnp.ones(8))
    l2s = jnp.array([0.0, 0.01, 0.1])
    new, metrics = jax.jit(jax.vmap(raw, in_axes=(0, None, 0)))(states, batch, l2s)
    for i in range(3):
        s_i = jax.tree.map(lambda a, i=i: a[i], states)
        ref, m = raw(s_i, batch, l2s[i])
        np.testing.assert_allclose(metrics.total_loss[i], m.total_loss, rtol=1e-5)
        np.testing.assert_allclose(new.params["layer_0"]["w"][i], ref.params["layer_0"]["w"],
                                   rtol=1e-5, atol=1e-6)


def test_patience_stops_after_epochs_without_a_better_val_loss(model, dataset):
    # 10 training examples and a large step: validation loss stops improving quickly.
    small = dataset._replace(x_train=dataset.x_train[:10], y_train=dataset.y_train[:10])
    hist = train.fit(model, small, optimizer=optim.adam(0.05), epochs=200, batch_size=10,
                     key=jax.random.key(0), patience=3)
    assert hist.stopped_reason.startswith("early stop")
    val = hist["val_loss"]
    assert len(val) < 200
    best = int(np.argmin(val))
    assert best == len(val) - 1 - 3  # exactly `patience` epochs after the best one


def test_convnet_epoch_in_scan_equals_the_jitted_steps():
    """The generic step names no layer: a convnet's Conv2D chooses its own computation, and an
    epoch in one lax.scan makes the same updates as make_train_step's steps one by one."""
    model = layers.convnet((8, 8, 1), 3, "conv:4,pool,fc:8")
    rng = np.random.default_rng(7)
    x = rng.normal(size=(24, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 3, size=24).astype(np.int32)
    opt = optim.momentum(0.05)
    s0 = train.init_train_state(model, opt, key=jax.random.key(4))
    epoch = train.make_epoch(model.apply, "softmax_cross_entropy", opt, batch_size=8,
                             donate=False)
    s_scan, metrics = epoch(s0, x, y, jnp.int32(1))
    step = train.make_train_step(model.apply, "softmax_cross_entropy", opt, donate=False)
    s_loop, losses = s0, []
    for b in data.iterate_batches(x, y, 8, key=jax.random.fold_in(s0.key, 0), epoch=1):
        s_loop, m = step(s_loop, b)
        losses.append(float(m.loss))
    # Each logit and gradient entry is a float32 sum of at most n = 8 images x 8x8 positions
    # x 9 taps products: two summation orders differ by <= 2 n eps of its magnitude. So do the
    # losses (O(1), Lipschitz 1 in the logits), and the parameters by at most that fraction of
    # how far they moved (plus the rounding of the parameters themselves).
    n, eps = 8 * 8 * 8 * 9, float(np.finfo(np.float32).eps)
    np.testing.assert_allclose(metrics.loss, losses, rtol=2 * n * eps)
    for a, b, p0 in zip(jax.tree.leaves(s_scan.params), jax.tree.leaves(s_loop.params),
                        jax.tree.leaves(s0.params), strict=True):
        moved = float(np.abs(np.asarray(b) - np.asarray(p0)).max())
        np.testing.assert_allclose(a, b, rtol=2 * eps, atol=2 * n * eps * moved)


# --------------------------------------------------------------------------- trust, round two
def test_fit_refuses_one_training_class_and_warns_about_unseen_validation_classes(model,
                                                                                 dataset):
    # Cause: fit trained whatever labels it got; with one class the loss goes to 0 and the
    # accuracy to 1 on data of that class, which looks like success.
    fit = lambda ds: train.fit(model, ds, optimizer=optim.sgd(0.1), epochs=1,  # noqa: E731
                               key=jax.random.key(0))
    for c in (0, 2):
        one = dataset._replace(y_train=np.full_like(dataset.y_train, c))
        with pytest.raises(ValueError, match=rf"train.fit: the training labels hold only class "
                                             rf"{c}; a classifier needs at least 2 classes"):
            fit(one)
    no_two = dataset._replace(x_train=dataset.x_train[dataset.y_train != 2],
                              y_train=dataset.y_train[dataset.y_train != 2])
    with pytest.warns(UserWarning, match="train.fit: the validation labels hold class 2 that "
                                         "the training labels lack") as record:
        fit(no_two)
    assert [r.filename for r in record] == [__file__]  # one line, at the caller of fit


def test_fit_checks_the_augmentation_against_the_images_before_anything_runs():
    # The crop check runs with fit's data checks: nothing is traced, no hook is called.
    x = np.random.default_rng(0).normal(size=(12, 4, 4, 1)).astype(np.float32)
    y = (np.arange(12) % 2).astype(np.int32)
    ds = data.Dataset(x[:8], y[:8], x[8:], y[8:], x[8:], y[8:], 2, "tiny")
    model = layers.serial(layers.Flatten(), layers.Dense(2), input_shape=(4, 4, 1))
    started = []
    with pytest.raises(ValueError, match=r"crop:4 pads by more than the 4x4 images"):
        train.fit(model, ds, optimizer=optim.sgd(0.1), epochs=1, key=jax.random.key(0),
                  augment="crop:4", on_start=lambda *a: started.append(a))
    assert not started
