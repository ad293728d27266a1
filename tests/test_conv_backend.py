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
from jax.test_util import check_grads

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


# --------------------------------------------------------------------------- im2col in chunks
_PADS = ((1, 1), (1, 1))


def _conv_pair(n, strides=(1, 1), c_in=3, c_out=5):
    kx, kw = jax.random.split(jax.random.key(7))
    x = jax.random.normal(kx, (n, 7, 6, c_in))
    w = jax.random.normal(kw, (3, 3, c_in, c_out)) / 3.0
    return x, w


def _patch_bytes(x, w, strides):
    """What one example's patches take (the unit of ``chunk_bytes``)."""
    y = _conv.conv_lax(x[:1], w, strides, _PADS)
    return int(np.prod(y.shape[1:3])) * int(np.prod(w.shape[:3])) * 4


@pytest.mark.parametrize("n,strides,per_chunk", [  # one case in the fast suite
    (13, (1, 1), 3), pytest.param(10, (2, 1), 2, marks=pytest.mark.slow),
    pytest.param(9, (1, 1), 1, marks=pytest.mark.slow)])
def test_chunked_im2col_computes_the_convolution_and_its_derivatives(n, strides, per_chunk):
    """Chunks of ``per_chunk`` examples (13: the last chunk padded) give lax.conv's values and
    gradients, forward-mode derivatives and a vmap, to float32 rounding of sums of 27-45
    terms of size ~1 (tolerance 1e-5 relative to the largest entry)."""
    x, w = _conv_pair(n, strides)
    chunk_bytes = per_chunk * _patch_bytes(x, w, strides)
    chunked = jax.jit(lambda x, w: _conv.conv_im2col(x, w, strides, _PADS,
                                                     chunk_bytes=chunk_bytes))
    whole = jax.jit(lambda x, w: _conv.conv_lax(x, w, strides, _PADS))
    jaxpr = str(jax.make_jaxpr(chunked)(x, w))
    assert "scan" in jaxpr and ("checkpoint" in jaxpr or "remat" in jaxpr)  # the chunked path
    y, want = chunked(x, w), whole(x, w)
    scale = float(jnp.abs(want).max())
    np.testing.assert_allclose(y, want, atol=1e-5 * scale)
    ct = jax.random.normal(jax.random.key(3), y.shape)
    for got, ref in zip(jax.vjp(chunked, x, w)[1](ct), jax.vjp(whole, x, w)[1](ct), strict=True):
        np.testing.assert_allclose(got, ref, atol=1e-5 * float(jnp.abs(ref).max()))
    tx, tw = jnp.cos(x), jnp.sin(w)
    got, ref = jax.jvp(chunked, (x, w), (tx, tw))[1], jax.jvp(whole, (x, w), (tx, tw))[1]
    np.testing.assert_allclose(got, ref, atol=1e-5 * float(jnp.abs(ref).max()))
    stacked = jax.vmap(chunked, in_axes=(None, 0))(x, jnp.stack([w, -w]))
    np.testing.assert_allclose(stacked[1], -y, atol=1e-6 * scale)


@pytest.mark.slow
def test_chunked_im2col_second_derivatives():
    x, w = _conv_pair(3, (2, 1), c_in=2, c_out=2)
    x = x[:, :4, :4]
    f = jax.jit(lambda x, w: jnp.sum(jnp.tanh(_conv.conv_im2col(
        x, w, (2, 1), _PADS, chunk_bytes=_patch_bytes(x, w, (2, 1))))))
    check_grads(f, (x, w), order=2, modes=("fwd", "rev"), eps=1e-2,
                              atol=5e-2, rtol=5e-2)


def test_chunk_size_divides_the_batch_when_it_can():
    assert _conv._chunk_size(128, 3) == 2  # 2 divides 128 and is >= 3 // 2
    assert _conv._chunk_size(128, 37) == 32
    assert _conv._chunk_size(97, 10) == 10  # prime: the last chunk is padded
    assert _conv._chunk_size(4, 10) == 4


def test_chunking_bounds_the_memory_of_the_patches():
    """XLA's own account of a training step's temporaries (``memory_analysis``): with the
    patches of a 3x3 convolution built a chunk at a time, what the step holds at once is a
    fraction of keeping the whole batch's patches (9x the activations) for the backward pass."""
    x, w = _conv_pair(64, c_in=16, c_out=16)
    x = jnp.tile(x, (1, 4, 4, 1))  # 28x24 images: the patches of the batch take 24 MB

    def temp_bytes(chunk_bytes):
        f = jax.grad(lambda w, x: jnp.sum(jnp.square(
            _conv.conv_im2col(x, w, (1, 1), _PADS, chunk_bytes=chunk_bytes))))
        return jax.jit(f).lower(w, x).compile().memory_analysis().temp_size_in_bytes

    per_example = _patch_bytes(x, w, (1, 1))
    whole, chunked = temp_bytes(64 * per_example), temp_bytes(4 * per_example)
    assert whole >= 64 * per_example  # the whole batch's patches
    assert chunked < whole / 3, (chunked, whole)


def test_a_symbolic_batch_exports_unchunked():
    """jax.export with a polymorphic batch: the patches of a symbolic batch cannot be chunked,
    so it runs whole, and the exported function equals the chunked one at a concrete size."""
    from jax import export

    x, w = _conv_pair(12)
    per_chunk = 3 * _patch_bytes(x, w, (1, 1))
    f = lambda x: _conv.conv_im2col(x, w, (1, 1), _PADS, chunk_bytes=per_chunk)
    (b,) = export.symbolic_shape("b")
    exp = export.export(jax.jit(f))(jax.ShapeDtypeStruct((b, *x.shape[1:]), x.dtype))
    np.testing.assert_allclose(exp.call(x), f(x), atol=1e-5 * float(jnp.abs(f(x)).max()))
