"""Tests for jaxnn.activations: numpy references, gradients, kinks, dtypes, extremes, registry.

Tolerances are error bounds, not constants: an activation evaluated in a float format with unit
roundoff ``u`` is within ``K * u * S`` of the exact value at the same (rounded) input, where
``K = 2 * FN_ULPS + 4`` allows a few ulps for each of two nested transcendental calls (XLA's
exp/log/tanh/erf are accurate to a few ulps) and ``S = |f(x)| + |x f'(x)|`` is the function's own
condition scale, plus the magnitude of intermediate terms that cancel in jax's formulas
(``FORMULA_TERMS``). XLA on CPU flushes subnormal results to zero, so results below the
smallest normal number may be off by that much.
"""

import math

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxnn import activations as A
from jaxnn import gradcheck

# ---------------------------------------------------------------------------------------------
# Independent numpy references (float64): value and derivative.

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
GELU_C = math.sqrt(2.0 / math.pi)


def jgrad(f):
    """jax.grad, jitted: one compilation instead of several eager ones (keeps the tests fast)."""
    return jax.jit(jax.grad(f))


def jvgrad(f):
    return jax.jit(jax.vmap(jax.grad(f)))


def np_sigmoid(x):
    # Two-branch form so the reference itself never overflows.
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


_erfc = np.vectorize(math.erfc)


def np_phi(x):  # standard normal cdf, via erfc: accurate in the lower tail too
    return 0.5 * _erfc(-x / math.sqrt(2.0))


def np_pdf(x):
    return np.exp(-0.5 * x**2) / math.sqrt(2.0 * math.pi)


def np_gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(GELU_C * (x + 0.044715 * x**3)))


def np_gelu_tanh_grad(x):
    t = np.tanh(GELU_C * (x + 0.044715 * x**3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t**2) * GELU_C * (1 + 3 * 0.044715 * x**2)


def np_swish(beta):
    return lambda x: x * np_sigmoid(beta * x)


def np_swish_grad(beta):
    def grad(x):
        s = np_sigmoid(beta * x)
        return s + beta * x * s * (1 - s)

    return grad


# (id, jaxnn callable of x, numpy value, numpy derivative)
CASES = [
    ("linear", A.linear, lambda x: x, lambda x: np.ones_like(x)),
    ("identity", A.identity, lambda x: x, lambda x: np.ones_like(x)),
    ("step", A.step, lambda x: (x >= 0).astype(x.dtype), lambda x: np.zeros_like(x)),
    ("sigmoid", A.sigmoid, np_sigmoid, lambda x: np_sigmoid(x) * (1 - np_sigmoid(x))),
    ("tanh", A.tanh, np.tanh, lambda x: 1 - np.tanh(x) ** 2),
    ("hard_tanh", A.hard_tanh, lambda x: np.clip(x, -1.0, 1.0),
     lambda x: (np.abs(x) <= 1).astype(x.dtype)),
    ("relu", A.relu, lambda x: np.where(x > 0, x, 0.0), lambda x: (x > 0).astype(x.dtype)),
    (
        "leaky_relu",
        A.leaky_relu,
        lambda x: np.where(x > 0, x, 0.01 * x),
        lambda x: np.where(x > 0, 1.0, 0.01),
    ),
    (
        "leaky_relu_0.2",
        lambda x: A.leaky_relu(x, negative_slope=0.2),
        lambda x: np.where(x > 0, x, 0.2 * x),
        lambda x: np.where(x > 0, 1.0, 0.2),
    ),
    (
        "prelu_0.25",
        lambda x: A.prelu(x, 0.25),
        lambda x: np.where(x > 0, x, 0.25 * x),
        lambda x: np.where(x > 0, 1.0, 0.25),
    ),
    (
        "elu",
        A.elu,
        lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
        lambda x: np.where(x > 0, 1.0, np.exp(np.minimum(x, 0))),
    ),
    (
        "elu_0.5",
        lambda x: A.elu(x, alpha=0.5),
        lambda x: np.where(x > 0, x, 0.5 * np.expm1(np.minimum(x, 0))),
        lambda x: np.where(x > 0, 1.0, 0.5 * np.exp(np.minimum(x, 0))),
    ),
    (
        "selu",
        A.selu,
        lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0))),
        lambda x: SELU_SCALE * np.where(x > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(x, 0))),
    ),
    ("swish", A.swish, np_swish(1.0), np_swish_grad(1.0)),
    ("swish_1.7", lambda x: A.swish(x, beta=1.7), np_swish(1.7), np_swish_grad(1.7)),
    ("silu", A.silu, np_swish(1.0), np_swish_grad(1.0)),
    ("gelu", A.gelu, lambda x: x * np_phi(x), lambda x: np_phi(x) + x * np_pdf(x)),
    ("gelu_approximate", lambda x: A.gelu(x, approximate=True), np_gelu_tanh, np_gelu_tanh_grad),
    ("softplus", A.softplus, lambda x: np.logaddexp(x, 0.0), np_sigmoid),
]
IDS = [c[0] for c in CASES]

FN_ULPS = 8  # 4 ulps = 8 unit roundoffs per transcendental call
K = 2 * FN_ULPS + 4


def _gelu_tanh_terms(x):
    """Magnitudes of the terms of the tanh GELU and of its derivative: (1 + tanh) and
    (1 - tanh^2) cancel for large |x|, leaving errors relative to 0.5 |x| and to the factor
    0.5 |x| sqrt(2/pi) (1 + 3 * 0.044715 x^2) they multiply."""
    return np.abs(x), 1 + np.abs(x) * GELU_C * (1 + 3 * 0.044715 * x**2)


# name -> (value terms, derivative terms): intermediate magnitudes where jax's formulas cancel:
# tanh' = 1 - y^2, the ELU derivative expm1(x) + 1 (times alpha), and the tanh GELU.
FORMULA_TERMS = {
    "tanh": lambda x: (0.0, 1.0),
    "elu": lambda x: (0.0, 1.0),
    "elu_0.5": lambda x: (0.0, 0.5),
    "selu": lambda x: (0.0, SELU_SCALE * SELU_ALPHA),
    "gelu_approximate": _gelu_tanh_terms,
}


def value_bound(name, ref, dref, x64, dtype):
    """Bound on |f(x) - f_exact(x)| in ``dtype`` (module docstring)."""
    u = float(jnp.finfo(dtype).eps) / 2
    extra = FORMULA_TERMS.get(name, lambda x: (0.0, 0.0))(x64)[0]
    scale = np.abs(ref(x64)) + np.abs(x64 * dref(x64)) + extra
    return K * u * scale + float(jnp.finfo(dtype).tiny)


def grad_bound(name, dref, x64):
    """Bound on the float64 derivative: condition scale |f'| + |x f''| (f'' by central
    differences of the reference derivative: a magnitude, not an expected value)."""
    h = 1e-4
    d2 = (dref(x64 + h) - dref(x64 - h)) / (2 * h)
    extra = FORMULA_TERMS.get(name, lambda x: (0.0, 0.0))(x64)[1]
    scale = np.abs(dref(x64)) + np.abs(x64 * d2) + extra
    return K * 2.0**-53 * scale + np.finfo(np.float64).tiny


def assert_within(actual, desired, tol, what=""):
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    assert actual.shape == desired.shape, (what, actual.shape, desired.shape)
    err = np.abs(actual - desired)
    bad = ~((err <= tol) | (actual == desired))
    assert not bad.any(), f"{what}: at {np.flatnonzero(bad)}: {actual[bad]} vs {desired[bad]}"


# Points away from every kink (0 is not on the grid), covering saturation regions.
X_SMOOTH = np.linspace(-4.9, 5.1, 16)
X_EXTREME = np.array([-1e4, -100.0, -20.0, -1.0, 0.0, 1.0, 20.0, 100.0, 1e4])
X_ALL = np.concatenate([X_SMOOTH, X_EXTREME])


def test_every_registered_activation_has_a_reference_case():
    covered = {c[0].split("_0")[0].split("_1")[0] for c in CASES} | {"maxout"}
    assert set(A.names()) <= covered, set(A.names()) - covered


# Every case on one input, values and gradients in one program: compiles once per dtype for all
# activations (compilation, not arithmetic, is what costs time in these tests).
def _values_and_grads(x):
    values = {name: fn(x) for name, fn, _, _ in CASES}
    grads = {name: jax.vmap(jax.grad(fn))(x) for name, fn, _, _ in CASES}
    return values, grads


_VALUES_AND_GRADS = jax.jit(_values_and_grads)


def _stacked(x):
    return jnp.stack([fn(x) for _, fn, _, _ in CASES])


@pytest.mark.parametrize("name,fn,ref,dref", CASES, ids=IDS)
def test_values_match_numpy(name, fn, ref, dref):
    x = jnp.asarray(X_ALL, jnp.float32)
    values, _ = _VALUES_AND_GRADS(x)  # jitted; test_jit_matches_eager covers eager calls
    out = values[name]
    assert out.dtype == jnp.float32 and out.shape == x.shape
    x64 = np.asarray(x, np.float64)
    assert_within(out, ref(x64), value_bound(name, ref, dref, x64, jnp.float32), name)


def test_jit_matches_eager():
    x = jnp.asarray(X_ALL, jnp.float32)
    x64 = np.asarray(x, np.float64)
    jitted, _ = _VALUES_AND_GRADS(x)
    for name, fn, ref, dref in CASES:
        assert fn(x).dtype == jnp.float32, name
        # Same function; XLA may fuse differently: both are within the bound of the exact value.
        tol = 2 * value_bound(name, ref, dref, x64, jnp.float32)
        assert_within(jitted[name], fn(x), tol, name)


def test_gradients_float64():
    """Derivatives vs the numpy formulas, jax.test_util.check_grads and jaxnn.gradcheck, in
    float64 at points away from the kinks."""
    with jax.enable_x64(True):
        x = jnp.asarray(X_SMOOTH, jnp.float64)
        _, grads = _VALUES_AND_GRADS(x)
        for name, _, _, dref in CASES:
            assert grads[name].dtype == jnp.float64, name
            assert_within(grads[name], dref(X_SMOOTH), grad_bound(name, dref, X_SMOOTH), name)
        # Reverse mode is linearize (the JVP rules) + transpose: it checks both.
        jax.test_util.check_grads(jax.jit(_stacked), (x,), order=1, modes=("rev",))
        report = gradcheck.check_grads(lambda v: jnp.sum(_stacked(v)), x)
    assert report.tol == 1e-6
    assert report.passed, report


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16], ids=str)
def test_dtype_preserved_and_extreme_inputs_finite(dtype):
    """Every activation keeps the dtype; values and gradients are finite for |x| up to 1e4 and
    match the float64 reference to the dtype's precision."""
    x = jnp.asarray(X_ALL, dtype)
    values, grads = _VALUES_AND_GRADS(x)
    x64 = np.asarray(x, np.float64)
    for name, _, ref, dref in CASES:
        out, g = values[name], grads[name]
        assert out.dtype == dtype and g.dtype == dtype, (name, out.dtype, g.dtype)
        assert bool(jnp.all(jnp.isfinite(out))), (name, out)
        assert bool(jnp.all(jnp.isfinite(g))), (name, g)
        # the bound in the dtype's own precision (16-bit inputs computed in float32 and rounded
        # once are well inside it)
        assert_within(out, ref(x64), value_bound(name, ref, dref, x64, dtype), name)


# ---------------------------------------------------------------------------------------------
# Kink conventions


def test_relu_gradient_at_zero_is_zero():
    assert float(jgrad(A.relu)(0.0)) == 0.0
    assert float(jgrad(A.relu)(-0.0)) == 0.0
    assert float(jgrad(A.relu)(1e-30)) == 1.0
    # The tempting jnp.maximum(x, 0) has 0.5 there: we are not that.
    assert float(jgrad(lambda x: jnp.maximum(x, 0.0))(0.0)) == 0.5


def test_leaky_and_prelu_kinks_take_the_left_slope():
    # the gradient is the slope itself, as float32
    assert float(jgrad(A.leaky_relu)(0.0)) == float(np.float32(0.01))
    assert float(jgrad(lambda x: A.leaky_relu(x, negative_slope=0.3))(0.0)) == float(np.float32(0.3))
    assert float(jgrad(lambda x: A.prelu(x, 0.3))(0.0)) == float(np.float32(0.3))
    # leaky_relu with slope 0 is relu, gradient at the kink included.
    x = jnp.array([-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(jvgrad(lambda v: A.leaky_relu(v, negative_slope=0.0))(x), jvgrad(A.relu)(x))


def test_step_gradient_is_zero_everywhere():
    x = jnp.array([-3.0, -1e-7, 0.0, 1e-7, 3.0])
    np.testing.assert_array_equal(jvgrad(A.step)(x), np.zeros(5))
    np.testing.assert_array_equal(A.step(x), [0.0, 0.0, 1.0, 1.0, 1.0])


def test_elu_kink_and_large_positive_gradient():
    # alpha * (expm1(0) + 1): exact
    assert float(jgrad(A.elu)(0.0)) == 1.0
    assert float(jgrad(lambda x: A.elu(x, alpha=0.5))(0.0)) == 0.5
    assert float(jgrad(A.elu)(1e4)) == 1.0


# Positional arguments beyond x that an activation needs (the registry's functions take x alone
# otherwise); maxout groups 2 pieces, so its first group holds the NaN.
EXTRA_ARGS = {"prelu": (0.25,), "maxout": (2,)}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16], ids=str)
@pytest.mark.parametrize("name", A.names())
def test_nan_in_nan_out(name, dtype):
    """Every registered activation: NaN in gives NaN out (eager and jitted), and the NaN stays
    in its own unit."""
    fn, extra = A.get(name), EXTRA_ARGS.get(name, ())
    x = jnp.array([jnp.nan, 1.0, -1.0, 0.0], dtype)
    for call in (lambda v: fn(v, *extra), jax.jit(lambda v: fn(v, *extra))):
        out = np.asarray(call(x), np.float64)
        assert np.isnan(out[0]), (name, out)
        assert not np.isnan(out[1:]).any(), (name, out)


def test_gelu_default_is_exact_not_jax_default():
    x = jnp.array([1.5])
    np.testing.assert_array_equal(A.gelu(x), jax.nn.gelu(x, approximate=False))  # the same call
    # the two forms differ by 2e-4 at 1.5, beyond the float32 bound (4e-6): not rounding
    x64 = np.asarray(x, np.float64)
    gelu_ref = next(c for c in CASES if c[0] == "gelu")
    tol = value_bound("gelu", gelu_ref[2], gelu_ref[3], x64, jnp.float32)
    assert abs(float(jax.nn.gelu(x)[0]) - float(gelu_ref[2](x64)[0])) > tol[0]


# ---------------------------------------------------------------------------------------------
# prelu: gradient to alpha


def test_prelu_gradient_flows_to_per_channel_alpha():
    x = jnp.array([[-1.0, 2.0, -3.0], [-0.5, -2.0, 4.0]])
    alpha = jnp.array([0.1, 0.2, 0.3])
    out = A.prelu(x, alpha)
    # the same float32 products; sums of a few short binary fractions: exact
    np.testing.assert_array_equal(out, np.where(x > 0, x, np.asarray(alpha) * np.asarray(x)))
    g_alpha = jgrad(lambda a: jnp.sum(A.prelu(x, a)))(alpha)
    # d/dalpha_c sum = sum over rows of x where x <= 0, per channel.
    np.testing.assert_array_equal(g_alpha, np.where(np.asarray(x) > 0, 0.0, x).sum(0))
    g_scalar = jgrad(lambda a: jnp.sum(A.prelu(x, a)))(0.2)
    np.testing.assert_array_equal(g_scalar, np.where(np.asarray(x) > 0, 0.0, x).sum())


def test_prelu_keeps_low_precision_dtype_with_float32_alpha():
    x = jnp.array([-1.0, 2.0], jnp.bfloat16)
    assert A.prelu(x, jnp.array([0.1, 0.2], jnp.float32)).dtype == jnp.bfloat16
    assert A.leaky_relu(x, negative_slope=jnp.float32(0.1)).dtype == jnp.bfloat16


def test_swish_with_traced_beta_is_differentiable():
    x = jnp.array([-1.0, 0.5, 2.0])
    g = jgrad(lambda b: jnp.sum(A.swish(x, beta=b)))(1.0)
    xn = np.asarray(x, np.float64)
    s = np_sigmoid(xn)
    # d/dbeta = x^2 s (1 - s): 3 terms, each a sigmoid (and 1 - s, which cancels to terms ~x^2 s)
    tol = (3 + K) * 2.0**-24 * np.sum(xn * xn * s)
    np.testing.assert_allclose(g, np.sum(xn * xn * s * (1 - s)), rtol=0, atol=tol)


# ---------------------------------------------------------------------------------------------
# maxout


def np_maxout(z, k, axis):
    z = np.moveaxis(z, axis, -1)
    out = z.reshape(z.shape[:-1] + (z.shape[-1] // k, k)).max(-1)
    return np.moveaxis(out, -1, axis)


@settings(max_examples=12, deadline=None)
@given(
    k=st.integers(1, 4),
    units=st.integers(1, 3),
    lead=st.integers(1, 3),
    axis=st.sampled_from([0, 1, -1]),
    seed=st.integers(0, 2**16),
)
def test_maxout_matches_numpy(k, units, lead, axis, seed):
    shape = [lead, 2, 2]
    shape[axis] = units * k
    z = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    out = A.maxout(jnp.asarray(z), k, axis=axis)
    np.testing.assert_array_equal(out, np_maxout(z, k, axis))


def test_maxout_groups_are_consecutive():
    z = jnp.array([1.0, 9.0, 2.0, 3.0, 8.0, 0.0])
    np.testing.assert_array_equal(A.maxout(z, 2), [9.0, 3.0, 8.0])
    np.testing.assert_array_equal(A.maxout(z, 3), [9.0, 8.0])


def test_maxout_gradient_goes_to_the_max_and_to_one_piece_at_ties():
    z = jnp.array([[1.0, 5.0, 2.0, 2.0, 7.0, 7.0, 7.0, 0.0]])
    g = jgrad(lambda v: jnp.sum(A.maxout(v, 2)))(z)
    np.testing.assert_array_equal(g, [[0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]])
    g4 = jgrad(lambda v: jnp.sum(A.maxout(v, 4)))(z)
    np.testing.assert_array_equal(g4, [[0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]])


def test_maxout_gradient_float64_and_jit():
    z = np.random.default_rng(0).standard_normal((3, 12))
    with jax.enable_x64(True):
        zj = jnp.asarray(z)
        jax.test_util.check_grads(lambda v: A.maxout(v, 3), (zj,), order=1, modes=("rev",))
        assert gradcheck.check_grads(lambda v: jnp.sum(A.maxout(v, 4) ** 2), zj).passed
    z32 = jnp.asarray(z, jnp.float32)
    np.testing.assert_array_equal(jax.jit(A.maxout, static_argnums=1)(z32, 3), A.maxout(z32, 3))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16], ids=str)
def test_maxout_dtype_and_nan(dtype):
    z = jnp.array([1.0, jnp.nan, 3.0, 2.0, jnp.nan, 0.0], dtype)
    out = A.maxout(z, 2)
    assert out.dtype == dtype
    assert bool(jnp.isnan(out[0])) and float(out[1]) == 3.0 and bool(jnp.isnan(out[2]))


def test_maxout_bad_sizes_raise():
    with pytest.raises(ValueError, match="not divisible"):
        A.maxout(jnp.ones((2, 5)), 2)
    with pytest.raises(ValueError, match="num_pieces"):
        A.maxout(jnp.ones((2, 4)), 0)
    with pytest.raises(ValueError, match="axis"):
        A.maxout(jnp.ones((2, 4)), 2, axis=2)


# ---------------------------------------------------------------------------------------------
# Registry and public names


def test_get_every_name_and_unknown():
    for name in A.names():
        fn = A.get(name)
        assert callable(fn) and fn is getattr(A, name)
    assert A.get(A.relu) is A.relu
    with pytest.raises(ValueError, match="relu") as info:
        A.get("rleu")
    assert "rleu" in str(info.value) and "softplus" in str(info.value)


def test_public_names_resolve():
    assert A.__all__ and len(set(A.__all__)) == len(A.__all__)
    for name in A.__all__:
        assert getattr(A, name) is not None
        assert getattr(A, name).__doc__, name
    assert set(A.names()) <= set(A.__all__)
    assert A.identity is A.linear


def test_hard_tanh_kinks_take_the_linear_piece():
    assert float(jgrad(A.hard_tanh)(1.0)) == 1.0 and float(jgrad(A.hard_tanh)(-1.0)) == 1.0
    assert float(jgrad(A.hard_tanh)(1.0001)) == 0.0
    assert np.isnan(float(A.hard_tanh(jnp.nan)))
