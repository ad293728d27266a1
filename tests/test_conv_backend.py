"""Conv2D's algorithm and fit's loop follow the backend (issue 18).

``Conv2D(algorithm="auto")`` lowers to im2col + matmul for a CPU and to a convolution for GPU
and TPU (``jax.jit(...).trace(...).lower(lowering_platforms=...)``: no device of that kind
needed); inside ``_conv.cpu_algorithm("lax")`` (the step loop ``benchmarks/fit_loops.py``
measures) it is a convolution everywhere. ``fit`` runs every model on every backend as an epoch
in one ``lax.scan`` (measured faster); the step loop computes the same steps on the same
batches.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import _conv, data, datasets, layers, models, optim, train


def _hlo(fn, *args, platforms):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=platforms).as_text()


def _conv_layer_fwd_bwd(algorithm="auto"):
    layer = layers.Conv2D(4, 3, algorithm=algorithm)
    _, params, _ = layer.init(jax.random.key(0), (6, 5, 3))
    x = jnp.ones((2, 6, 5, 3))
    fn = jax.grad(lambda p, x: jnp.sum(layer.apply(p, {}, x)[0] ** 2))
    return fn, params, x


@pytest.mark.parametrize("platform", ["cuda", "rocm", "tpu"])
def test_accelerators_keep_lax_conv(platform):
    fn, params, x = _conv_layer_fwd_bwd()
    hlo = _hlo(fn, params, x, platforms=(platform,))
    assert "stablehlo.convolution" in hlo


def test_cpu_lowers_auto_to_im2col_and_cpu_algorithm_lax_to_a_convolution():
    fn, params, x = _conv_layer_fwd_bwd()
    hlo = _hlo(fn, params, x, platforms=("cpu",))
    assert "convolution" not in hlo and "dot_general" in hlo

    def in_lax_context(p, x):
        with _conv.cpu_algorithm("lax"):
            return fn(p, x)

    assert "stablehlo.convolution" in _hlo(in_lax_context, params, x, platforms=("cpu",))
    # an explicit algorithm is never overridden
    fn_im2col, params, x = _conv_layer_fwd_bwd("im2col")

    def im2col_in_context(p, x):
        with _conv.cpu_algorithm("lax"):
            return fn_im2col(p, x)

    assert "convolution" not in _hlo(im2col_in_context, params, x, platforms=("cpu",))
    with pytest.raises(ValueError, match="im2col"):
        with _conv.cpu_algorithm("fft"):
            pass


def test_forward_mode_through_the_lax_context():
    layer = layers.Conv2D(3, 3)
    _, params, _ = layer.init(jax.random.key(0), (5, 5, 2))
    x = jax.random.normal(jax.random.key(1), (2, 5, 5, 2))

    def f(x):
        with _conv.cpu_algorithm("lax"):
            return layer.apply(params, {}, x)[0]

    _, t = jax.jvp(f, (x,), (jnp.ones_like(x),))
    _, t_ref = jax.jvp(lambda x: layer.apply(params, {}, x)[0], (x,), (jnp.ones_like(x),))
    np.testing.assert_allclose(t, t_ref, rtol=1e-5, atol=1e-5)


def test_fit_loop_is_the_scan_on_every_backend(monkeypatch):
    """The measured rule (train._fit_loop): the epoch in one lax.scan for every model on every
    backend; inside it Conv2D follows the backend (the lowering tests above)."""
    conv = models.convnet((8, 8, 1), 10, "conv:4,pool,fc:8")
    mlp = models.mlp([64, 8, 10])
    for backend in ("cpu", "gpu", "tpu"):
        monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
        assert train._fit_loop(conv, (100, 8, 8, 1), batch_size=32) == "scan"
        assert train._fit_loop(mlp, (100, 64), batch_size=32) == "scan"


def _digits_images(n=160):
    ds = data.load("digits")
    return (jnp.asarray(ds.x_train[:n]).reshape(-1, 8, 8, 1), jnp.asarray(ds.y_train[:n]))


@pytest.mark.slow
@pytest.mark.parametrize("arch,augment", [("fc:16", None), ("conv:4,pool,fc:16", "crop:1,flip")])
def test_step_loop_computes_the_scan_epoch(arch, augment):
    """The same data order, batches (ragged last one masked), augmentation keys and steps."""
    x, y = _digits_images(150)  # 150 = 4 full batches of 32 + 22
    model = models.convnet((8, 8, 1), 10, arch)
    opt = optim.momentum(0.05)
    out = {}
    for loop in train.FIT_LOOPS:
        run, got = train._fit_epoch(model, "softmax_cross_entropy", opt, batch_size=32, l2=1e-3,
                                    mesh=None, augment=augment, x_shape=x.shape, loop=loop)
        assert got == loop
        st = train.init_train_state(model, opt, key=jax.random.key(3))
        for e in (1, 2):
            st, m = run(st, x, y, jnp.int32(e))
        out[loop] = (st, m)
    (s1, m1), (s2, m2) = out["scan"], out["step"]
    assert m1.loss.shape == m2.loss.shape == (5,)
    np.testing.assert_array_equal(m1.count, m2.count)
    np.testing.assert_allclose(m1.loss, m2.loss, rtol=1e-4)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert int(s2.step) == 10


def test_fit_runs_a_convnet_with_the_scan(monkeypatch):
    x, y = _digits_images(128)
    ds = datasets.Dataset(x[:96], y[:96], x[96:], y[96:], x[96:], y[96:], 10)
    model = models.convnet((8, 8, 1), 10, "conv:4,pool,fc:16")
    loops = []
    real = train._fit_epoch

    def spy(*a, **kw):
        fn, loop = real(*a, **kw)
        loops.append(loop)
        return fn, loop

    monkeypatch.setattr(train, "_fit_epoch", spy)
    h = train.fit(model, ds, optimizer=optim.momentum(0.05), epochs=2, batch_size=32,
                  key=jax.random.key(0))
    assert loops == ["scan"] and len(h.records) == 2
    assert np.isfinite(h["train_loss"]).all()
