"""Tests for jaxnn.gradcheck: numerical gradients, relative error, and the check report."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxnn import gradcheck as G


@jax.custom_jvp
def sin_wrong(x):
    """sin with a deliberately wrong derivative (5% too large): what check_grads must catch."""
    return jnp.sin(x)


sin_wrong.defjvps(lambda g, ans, x: 1.05 * g * jnp.cos(x))


@jax.custom_jvp
def softplus_custom(x):
    """A correct hand-written derivative: what check_grads must pass."""
    return jnp.logaddexp(x, 0.0)


softplus_custom.defjvps(lambda g, ans, x: g * jax.nn.sigmoid(x))


def make_params(dtype):
    rng = np.random.default_rng(0)
    return {
        "layer": {
            "w": jnp.asarray(rng.standard_normal((3, 4)), dtype),
            "b": jnp.asarray(rng.standard_normal(4), dtype),
        },
        "extra": [jnp.asarray(rng.standard_normal(2), dtype)],
    }


def model_loss(p, op=jnp.tanh):
    x = jnp.linspace(-1.0, 1.0, 6, dtype=p["layer"]["w"].dtype).reshape(2, 3)
    h = op(x @ p["layer"]["w"] + p["layer"]["b"])
    return jnp.sum(h**2) + jnp.sum(p["extra"][0] ** 3)


# ---------------------------------------------------------------------------------------------
# numerical_grad


def test_numerical_grad_is_exact_for_quadratics_and_keeps_the_tree():
    params = {"a": jnp.array([1.0, -2.0]), "b": (jnp.array([[0.5]]), jnp.array(3.0))}
    f = lambda p: jnp.sum(p["a"] ** 2) + 3.0 * p["b"][0][0, 0] ** 2 - p["b"][1] ** 2
    g = G.numerical_grad(f, params, eps=0.25)  # centered differences are exact on quadratics
    assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure(params)
    np.testing.assert_array_equal(g["a"], [2.0, -4.0])
    np.testing.assert_array_equal(g["b"][0], [[3.0]])
    assert float(g["b"][1]) == -6.0 and g["b"][1].dtype == jnp.float32


def test_numerical_grad_chunks_large_parameter_vectors():
    """300 entries (more than one vmapped chunk), in float64: the error is the truncation
    h^2/6 |sin^(3)(x)| <= 1.7e-9 plus round-off ~2 eps64 * 300 / (2h) ~ 7e-10 (|f| <= 300)."""
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(1).standard_normal(300), jnp.float64)
        h = 1e-4
        g = G.numerical_grad(lambda v: jnp.sum(jnp.sin(v)), x, eps=h)
        tol = h**2 / 6 + 2 * 2.0**-52 * 300 / (2 * h)
        np.testing.assert_allclose(g, np.cos(np.asarray(x)), rtol=0, atol=tol)


def test_numerical_grad_mixed_dtypes_uses_the_step_actually_taken():
    params = {"lo": jnp.array([1.0, 3.0], jnp.bfloat16), "hi": jnp.array([2.0], jnp.float32)}
    f = lambda p: jnp.sum(p["lo"].astype(jnp.float32) ** 2) + jnp.sum(p["hi"] ** 2)
    g = G.numerical_grad(f, params, eps=0.01)
    # 3 +- 0.01 round to 3.015625 / 2.984375 in bfloat16: the nominal step 0.02 is 36% short.
    # For x^2 the quotient over the steps taken is exactly a + b = 2x + (offsets of a and b from
    # x +- h), each offset at most half a bfloat16 spacing (2^-7 near 1, 2^-6 near 3), then
    # rounded to bfloat16 (relative 2^-9).
    x = np.array([1.0, 3.0])
    spacing = np.array([2.0**-7, 2.0**-6])
    err = np.abs(np.asarray(g["lo"], np.float64) - 2 * x)
    assert np.all(err <= spacing + 2.0**-9 * 2 * x), g["lo"]
    # float32: f ~ 14 rounded in f(x+h) and f(x-h) (2 U32 |f| / (2h)), a + b within 2 U32 of 2x
    u32 = 2.0**-24
    np.testing.assert_allclose(g["hi"], [4.0], rtol=0, atol=2 * u32 * 14 / 0.02 + 4 * u32 * 4)
    assert g["lo"].dtype == jnp.bfloat16


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="scalar"):
        G.numerical_grad(lambda x: x * 2, jnp.ones(3))
    with pytest.raises(ValueError, match=r"\['n'\].*int"):
        G.check_grads(lambda p: jnp.sum(p["x"]), {"x": jnp.ones(2), "n": jnp.arange(2)})


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"eps": 0.0}, "`eps` must be finite and > 0"),
        ({"eps": -1e-3}, "`eps` must be finite and > 0"),
        ({"eps": float("nan")}, "`eps` must be finite and > 0"),
        ({"tol": float("nan")}, "`tol` must be finite and >= 0"),
        ({"tol": float("inf")}, "`tol` must be finite and >= 0"),
        ({"floor": 0.0}, "`floor` must be finite and > 0"),
        ({"eps": "big"}, "`eps` must be a number"),
    ],
)
def test_bad_settings_raise(kw, match):
    """A NaN tolerance would fail every check and an infinite one pass every check; a zero or
    NaN step divides by zero: refused up front, naming the setting."""
    f = lambda v: jnp.sum(v**2)
    with pytest.raises(ValueError, match=match):
        G.check_grads(f, jnp.ones(2), **kw)
    if "eps" in kw:
        with pytest.raises(ValueError, match=match):
            G.numerical_grad(f, jnp.ones(2), **kw)


# ---------------------------------------------------------------------------------------------
# relative_error


def test_relative_error_formula():
    a = jnp.array([1.0, -2.0, 0.0, 1e-30, 3.0])
    b = jnp.array([1.1, -2.0, 0.0, 0.0, -3.0])
    # reference from the float32 inputs: |a - b| is exact here (Sterbenz, or an exact doubling)
    # and the division rounds once: 2 U32 relative
    b1 = float(b[0])
    want = [(b1 - 1.0) / b1, 0.0, 0.0, 1.0, 2.0]
    np.testing.assert_allclose(G.relative_error(a, b), want, rtol=2 * 2.0**-24, atol=0)
    # With a floor, tiny values compare by absolute error / floor instead of blowing up.
    tiny, floor = float(jnp.float32(1e-9)), float(jnp.float32(1e-3))
    np.testing.assert_allclose(
        G.relative_error(jnp.array([1e-9]), jnp.array([-1e-9]), floor=1e-3),
        [2 * tiny / floor],
        rtol=2 * 2.0**-24,
        atol=0,
    )


@settings(max_examples=30, deadline=None)
@given(
    a=st.floats(-1e6, 1e6, allow_subnormal=False),
    b=st.floats(-1e6, 1e6, allow_subnormal=False),
)
def test_relative_error_properties(a, b):
    r = float(G.relative_error(jnp.float32(a), jnp.float32(b)))
    assert r == float(G.relative_error(jnp.float32(b), jnp.float32(a)))  # symmetric
    assert 0.0 <= r <= 2.0 and np.isfinite(r)  # bounded, never inf/nan (floor > 0)
    if np.float32(a) == np.float32(b):
        assert r == 0.0


# ---------------------------------------------------------------------------------------------
# check_grads


@pytest.mark.parametrize(
    "dtype,tol", [(jnp.float64, 1e-6), (jnp.float32, 1e-2)], ids=["float64", "float32"]
)
def test_check_grads_passes_correct_gradients(dtype, tol):
    with jax.enable_x64(True):
        params = make_params(dtype)
        report = G.check_grads(lambda p: model_loss(p, softplus_custom), params)
    assert isinstance(report, G.GradCheckReport) and report._fields == (
        "errors",
        "max_error",
        "tol",
        "passed",
        "verdict",
        "resolution",
    )
    assert report.tol == tol and report.passed and report.verdict == "passed"
    assert report.resolution <= G.RESOLUTION
    assert set(report.errors) == {"['extra'][0]", "['layer']['b']", "['layer']['w']"}
    assert report.max_error == max(report.errors.values()) < tol
    if dtype == jnp.float64:
        # numerical_grad agrees with jax.grad to the curriculum's "good" level in float64:
        # |f| ~ 10, so round-off 2 eps64 |f| / (2h) ~ 2e-10 against a floor of
        # 30 eps64 |f| / (h tol) ~ 7e-3, and truncation h^2 |f^(3)| / 6 ~ 1e-10: ~3e-8 < 1e-7.
        assert report.max_error < 1e-7


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32], ids=["float64", "float32"])
def test_check_grads_catches_a_wrong_gradient_and_names_the_leaf(dtype):
    with jax.enable_x64(True):
        params = make_params(dtype)
        report = G.check_grads(lambda p: model_loss(p, sin_wrong), params)
    assert not report.passed and report.verdict == "failed"
    # The error is attributed to the leaves the wrong derivative touches, not to "extra". A
    # derivative 5% too large is off by 0.05 / 1.05 relative (4.8%) wherever |g| exceeds the
    # floor: far above tol (1e-2 in float32, round-off ~2e-4) -- deterministic arithmetic, not
    # rounding.
    assert report.errors["['layer']['w']"] > 1e-2 and report.errors["['layer']['b']"] > 1e-2
    assert report.errors["['extra'][0]"] < report.tol


def test_check_grads_zero_gradients_do_not_blow_up():
    # d/dx of x**3 at x = 0 is 0; numerically it is round-off noise ~1e-9: relative error
    # without a floor would be O(1). The large constant makes the round-off visible.
    with jax.enable_x64(True):
        x = jnp.array([0.0, 0.0, 1.0], jnp.float64)
        report = G.check_grads(lambda v: jnp.sum(v**3) + 1e3, x)
    assert report.passed, report
    with jax.enable_x64(True):
        bare = G.relative_error(jnp.float64(0.0), jnp.float64(1e-12))
    assert float(bare) == 1.0  # ... which is what the floor prevents


def test_check_grads_tolerance_override_and_kinks():
    # relu at a kink: jax says 0, centered differences say 0.5 -- reported, not hidden.
    report = G.check_grads(lambda v: jnp.sum(jax.nn.relu(v)), jnp.array([0.0, 1.0]))
    assert not report.passed and report.errors[""] == pytest.approx(1.0)
    assert report.verdict == "failed"  # both steps see the kink: no noise can explain it
    loose = G.check_grads(lambda v: jnp.sum(jax.nn.relu(v)), jnp.array([0.0, 1.0]), tol=2.0)
    assert loose.passed and loose.tol == 2.0


@jax.custom_jvp
def square_10pct_wrong(x):
    """x**2 with a derivative 10% too large."""
    return x**2


square_10pct_wrong.defjvps(lambda g, ans, x: 1.1 * 2 * x * g)


@jax.custom_jvp
def sin_10pct_wrong(x):
    return jnp.sin(x)


sin_10pct_wrong.defjvps(lambda g, ans, x: 1.1 * jnp.cos(x) * g)

# 200 entries with sum(x**2) ~ 296: the reproduction.
X200 = np.random.default_rng(3).standard_normal(200) * 1.2


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["float32", "float64"])
def test_a_10_percent_wrong_gradient_fails_when_f_is_large(dtype):
    """f = sum(x**2) over 200 entries, |f| ~ 300: the old floor (30 eps32 |f| / h ~ 1.06 of
    absolute error) let a 10%-wrong gradient pass in float32 with max_error 3.9e-3. Measured
    noise is u32 |f| / h ~ 0.018 per entry, while the gradient is off by 0.2 |x| (up to ~0.7):
    the error is the full 0.1 / 1.1 where the noise is small. The correct one passes."""
    with jax.enable_x64(True):
        x = jnp.asarray(X200, dtype)
        assert 250 < float(jnp.sum(x**2)) < 350
        wrong = G.check_grads(lambda v: jnp.sum(square_10pct_wrong(v)), x)
        right = G.check_grads(lambda v: jnp.sum(v**2), x)
    assert wrong.verdict == "failed" and not wrong.passed, wrong
    assert wrong.max_error == pytest.approx(0.1 / 1.1, rel=0.05)
    assert right.verdict == "passed" and right.passed, right
    assert right.max_error < right.tol / 2


def test_float32_cannot_resolve_a_large_constant_inconclusive_not_passed():
    """f = 1e6 + sum(sin x) in float32: ulp(1e6) = 0.0625, so every centered difference is a
    multiple of 0.0625 / 2h = 31.25 -- mostly exactly 0 -- against derivatives |cos x| <= 1. No
    error can be seen (a 10%-wrong gradient looks the same): "inconclusive", never "passed". In
    float64 the same check resolves both: the right gradient passes, the wrong one fails."""
    f = lambda v: 1e6 + jnp.sum(jnp.sin(v))
    f_wrong = lambda v: 1e6 + jnp.sum(sin_10pct_wrong(v))
    x32 = jnp.asarray(X200, jnp.float32)
    for fn in (f, f_wrong):
        report = G.check_grads(fn, x32)
        assert report.verdict == "inconclusive" and not report.passed, report
        assert report.resolution > 10 * G.RESOLUTION  # u32 1e6 / h ~ 60 against |cos x| <= 1
    with jax.enable_x64(True):
        x64 = jnp.asarray(X200, jnp.float64)
        assert G.check_grads(f, x64).verdict == "passed"
        assert G.check_grads(f_wrong, x64).verdict == "failed"


def test_zero_gradients_everywhere_pass():
    """A step function: both gradients exactly 0 away from the jump -- exact agreement."""
    x = jnp.array([-1.5, -0.5, 0.5, 2.0])
    report = G.check_grads(lambda v: jnp.sum(jnp.where(v >= 0, 1.0, 0.0) * v.size), x)
    assert report.verdict == "passed" and report.resolution == 0.0 and report.max_error == 0.0


def test_public_names_resolve():
    assert G.__all__ and len(set(G.__all__)) == len(G.__all__)
    for name in G.__all__:
        assert getattr(G, name) is not None
    assert G.NOISE_MARGIN > 1 and 0 < G.RESOLUTION < 1
    assert set(G.DEFAULT_TOL) == set(G.DEFAULT_EPS) == {"float64", "float32", "float16", "bfloat16"}
