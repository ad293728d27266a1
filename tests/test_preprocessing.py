"""Tests for jaxnn.preprocessing, against independent float64 numpy computations.

Tolerances are forward-error bounds of the float32 transform, not constants: ``fit`` computes in
float64 and rounds its state once to float32 (relative error ``U32`` per entry), and
``transform`` computes ``z = (x - mean) @ M`` in float32, so

    |z - z_exact| <= (m + 4) * U32 * ((|x| + |mean|) @ |M|)   (+ underflow, see ``bound``)

with ``m`` the number of terms per dot product (1 for the elementwise steps): ``m`` roundings
in the dot product, one in the subtraction, one in each rounded state entry, one spare. The
float64 reference differs from the library's float64 statistics by ~1e-16 times the condition
number (~1e3 for the test data, whose covariance eigenvalues are well separated): eight orders
below these bounds.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxnn import preprocessing as pp

U32 = 2.0**-24  # float32 unit roundoff: round-to-nearest relative error
# The absolute error of an underflow: the smallest normal float32, not the smallest subnormal,
# because XLA:CPU may flush subnormal operands and results to zero (whether it does depends on
# the build and the CPU; a subnormal mean of [0, 2**-126] became 0 on one machine).
TINY32 = 2.0**-126
EPS64 = 2.0**-52


def correlated(n=300, d=5, seed=0):
    """Gaussian data with a non-zero mean, very different scales, and correlations (float32).

    Covariance eigenvalues ~1.16, 0.40, 0.14, 2.2e-3, 8.5e-4: well separated, condition ~1.4e3.
    """
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) * np.logspace(0, -1.5, d)[:, None]
    return (rng.normal(size=(n, d)) @ mix + rng.normal(size=d) * 3).astype(np.float32)


@pytest.fixture(scope="module")
def x():
    return correlated()


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits, [1797, 64] float32 pixels 0..16, three columns always 0."""
    from sklearn.datasets import load_digits

    return load_digits().data.astype(np.float32)


# every registry entry, with the options it needs
STEPS = {
    "none": {},
    "center": {},
    "standardize": {},
    "pca": {"k": 3},
    "whiten": {},
    "zca": {},
    "mean_image": {},
    "per_channel_mean": {},
}
WHITEN_EPS = 1e-5  # whiten()'s default
STANDARDIZE_EPS = 1e-8  # standardize()'s default


# ---------------------------------------------------------------------------------------------
# Independent float64 references and the error bound


def np_eig(x):
    """Eigenvalues (descending, >= 0) and eigenvectors of np.cov in float64, each eigenvector's
    largest-magnitude entry positive (the documented sign convention)."""
    lam, u = np.linalg.eigh(np.cov(np.asarray(x, np.float64), rowvar=False))
    lam, u = np.maximum(lam[::-1], 0.0), u[:, ::-1]
    u = u * np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])])
    return lam, u


def np_whiten_matrix(x, method="pca", eps=WHITEN_EPS):
    lam, u = np_eig(x)
    w = u / np.sqrt(lam + eps * lam.mean())  # eps relative to the mean variance
    return w @ u.T if method == "zca" else w


def reference(name, x):
    """(mean, M) with the exact transform ``(x - mean) @ M`` for 2-D ``x``, in float64."""
    x64 = np.asarray(x, np.float64)
    d = x64.shape[1]
    mean = x64.mean(0)
    if name == "none":
        return np.zeros(d), np.eye(d)
    if name in ("center", "mean_image", "per_channel_mean"):
        return mean, np.eye(d)
    if name == "standardize":
        std, amax = x64.std(0), np.abs(x64).max(0)
        fallback = np.abs(x64).max() or 1.0
        return mean, np.diag(1 / np.where(std <= STANDARDIZE_EPS * amax, fallback, std))
    if name == "pca":
        return mean, np_eig(x64)[1][:, : STEPS["pca"]["k"]]
    return mean, np_whiten_matrix(x64, "zca" if name == "zca" else "pca")


def bound(x, mean, m):
    """Forward-error bound of the float32 ``(x - mean) @ m`` against the exact value (module
    docstring), plus TINY32 for each result that may underflow to a subnormal: the halved input
    and the mean (times |m|), each product, each state entry of m (times |x - mean|), and a
    stored divisor s = 1/m (standardize), whose relative rounding is up to TINY32 * |m|."""
    terms = max(1, int(np.count_nonzero(m, axis=0).max()))
    a = np.abs(np.asarray(x, np.float64)) + np.abs(mean)
    am = np.abs(m)
    underflow = TINY32 * (terms + a.sum(-1, keepdims=True) + am.sum(0) + a @ am**2)
    return (terms + 4) * U32 * (a @ am) + underflow


def inverse_bound(z, m_inv, mean):
    """Bound of the float32 ``z @ m_inv + mean`` against the exact value (as :func:`bound`)."""
    terms = m_inv.shape[0]
    a = np.abs(np.asarray(z, np.float64)) @ np.abs(m_inv) + np.abs(mean)
    return (terms + 4) * U32 * a + TINY32 * (terms + 1)


def assert_within(actual, desired, tol, what=""):
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    if desired.ndim:  # a scalar is compared with every entry
        assert actual.shape == desired.shape, (actual.shape, desired.shape)
    err = np.abs(actual - desired)
    bad = ~(err <= tol)
    assert not bad.any(), (
        f"{what}: {bad.sum()} entries beyond the bound; worst excess "
        f"{np.max(np.where(bad, err - tol, 0)):.3g} (error {err[bad].max():.3g})"
    )


def cov_bound(z, e):
    """Bound on |np.cov(z) - cov(z_exact)| given |z - z_exact| <= e elementwise: centring at most
    doubles e, and (a + f)(b + g) - ab = ag + fb + fg summed over the rows."""
    zc = np.abs(z - z.mean(0))
    err = 2 * np.broadcast_to(e, z.shape)
    return (zc.T @ err + err.T @ zc + err.T @ err) / (len(z) - 1)


# ---------------------------------------------------------------------------------------------
# Every step against the float64 reference, at any scale


def test_public_names():
    assert set(pp.__all__) == {
        "ChainState", "EmptyState", "MeanState", "PCAState", "Preprocessor", "StandardizeState",
        "WhitenState", "center", "chain", "get", "identity", "mean_image", "names", "pca",
        "per_channel_mean", "standardize", "whiten", "entry", "REGISTRY", "PreprocessingEntry",
    }  # fmt: skip
    assert set(pp.names()) == set(STEPS)


@pytest.mark.parametrize("scale", [1.0, 1e30, 1e-30], ids=["x1", "x1e30", "x1e-30"])
@pytest.mark.parametrize("name", sorted(STEPS))
def test_matches_float64_reference_at_any_scale(name, scale, x):
    """fit + transform of the data times 1, 1e30, 1e-30 against the float64 reference on the
    same (rounded) float32 values: the same bound holds at every scale."""
    xs = (x.astype(np.float64) * scale).astype(np.float32)
    pre = pp.get(name, **STEPS[name])
    z = pre.transform(pre.fit(xs), xs)
    mean, m = reference(name, xs)
    assert z.dtype == jnp.float32
    assert_within(z, (xs - mean) @ m, bound(xs, mean, m), f"{name} x{scale}")


@pytest.mark.parametrize("scale", [1.0, 1e30, 1e-30], ids=["x1", "x1e30", "x1e-30"])
@pytest.mark.parametrize("name", ["center", "standardize", "mean_image", "per_channel_mean"])
def test_digits_at_any_scale(name, scale, digits):
    """The digits data (three constant columns) times 1e30 used to standardize to zeros."""
    xs = (digits.astype(np.float64) * scale).astype(np.float32)
    pre = pp.get(name)
    z = np.asarray(pre.transform(pre.fit(xs), xs))
    mean, m = reference(name, xs)
    assert_within(z, (xs - mean) @ m, bound(xs, mean, m), f"{name} x{scale}")
    if name == "standardize":  # unit variance wherever the feature is not constant
        # |std(z) - std(z_exact)| <= std(z - z_exact) <= max |z - z_exact|; std(z_exact) = 1 up to
        # float64 rounding
        varying = digits.std(0) > 0
        tol = bound(xs, mean, m).max(0)[varying] + 1e-12
        assert_within(z[:, varying].std(0), 1.0, tol, "std")


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(sorted(STEPS)), e=st.integers(-100, 100))
def test_power_of_two_rescaling_is_exact(name, e):
    """Multiplying x by 2**e (exact in float32) multiplies every statistic by the matching power
    of two exactly (fit normalizes by a power of two), so the output is the unscaled output
    times 2**e (mean-subtraction, pca) or unchanged (standardize, whiten) -- up to the rounding
    of results that underflow to float32 subnormals (TINY32 each, see ``bound``)."""
    x = correlated(n=40)
    c = np.float32(2.0**e)
    pre = pp.get(name, **STEPS[name])
    z1 = np.asarray(pre.transform(pre.fit(x), x), np.float64)
    zc = np.asarray(pre.transform(pre.fit(x * c), x * c), np.float64)
    degree = 0 if name in ("standardize", "whiten", "zca") else 1
    mean, m = reference(name, x * c)
    tol = TINY32 * (x.shape[1] + np.abs(x * c).sum(-1, keepdims=True) + np.abs(m).sum(0))
    assert_within(zc / float(c) ** degree, z1, tol / float(c) ** degree, f"{name} 2**{e}")


def test_a_feature_spread_near_the_float32_max():
    """The case that found the reciprocal flush: std 8.5e37 (its reciprocal is subnormal)."""
    from jaxnn.preprocessing import standardize

    x = np.array([[1.701412e38], [0.0]], np.float32)
    pre = standardize()
    z = np.asarray(jax.jit(pre.transform)(pre.fit(x), x))
    np.testing.assert_allclose(z, [[1.0], [-1.0]], rtol=4 * np.finfo(np.float32).eps)


@settings(max_examples=40, deadline=None)
@given(
    xs=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 6), st.integers(1, 3)),
        elements=st.floats(allow_nan=False, allow_infinity=False, width=32),
    ),
    name=st.sampled_from(["center", "standardize"]),
)
def test_any_finite_float32_data(xs, name):
    """Values anywhere in the float32 range, subnormals included: within the bound of the
    float64 result; a centred value beyond the float32 range (by more than the bound) is inf of
    the right sign, and one within the bound of that edge may be either."""
    pre = pp.get(name)
    z = np.asarray(pre.transform(pre.fit(xs), xs), np.float64)
    mean, m = reference(name, xs)
    want = (xs.astype(np.float64) - mean) @ m
    tol = bound(xs, mean, m)
    edge = float(np.finfo(np.float32).max) * (1 + U32)  # the rounding threshold to inf
    over = np.abs(want) - tol > edge
    inside = np.abs(want) + tol < edge
    np.testing.assert_array_equal(z[over], np.sign(want[over]) * np.inf)
    assert_within(z[inside], want[inside], tol[inside], name)
    assert not np.isnan(z).any()


# ---------------------------------------------------------------------------------------------
# Statistics


def test_statistics_are_float64_rounded_once(x):
    """Means, scales, eigenvalues and eigenvectors are the float64 values rounded to float32:
    relative error <= U32 (eigenvector entries: absolute, U32 of the largest entry, since a
    float64 difference of ~1e-16 can fall on either side of a rounding boundary)."""
    x64 = x.astype(np.float64)
    st_c = pp.center().fit(x)
    assert_within(st_c.mean, x64.mean(0), U32 * np.abs(x64.mean(0)), "mean")
    st_s = pp.standardize().fit(x)
    assert_within(st_s.scale, x64.std(0), U32 * x64.std(0), "scale")
    lam, u = np_eig(x)
    st_p = pp.pca(5).fit(x)
    assert_within(st_p.variances, lam, U32 * lam, "variances")
    assert_within(st_p.components, u, 2 * U32, "components")


def test_standardize_constant_columns():
    """Constant columns (exactly, or within eps relative to their magnitude) become exactly 0 and
    are divided by the largest magnitude of the data (here 100.001), not by their ~0 spread."""
    x = np.array([[1.0, 0.1, 3.0, 100.0], [2.0, 0.1, 3.0, 100.001], [4.0, 0.1, 3.0, 100.0]])
    x = x.astype(np.float32)
    pre = pp.standardize(eps=1e-4)  # the last column's std/max ~ 5e-6 counts as constant
    st = pre.fit(x)
    np.testing.assert_array_equal(st.scale[1:], np.float32(100.001))
    z = np.asarray(pre.transform(st, x))
    np.testing.assert_array_equal(z[:, 1:3], 0.0)  # exactly 0: the mean of a constant is exact
    mean = x.astype(np.float64).mean(0)
    new = np.array([[0.0, 0.6, 3.0, 100.0]], np.float32)
    want = (new.astype(np.float64) - mean) / np.asarray(st.scale, np.float64)
    # the elementwise bound: 5 roundings of (|x| + |mean|) / s
    assert_within(pre.transform(st, new), want, 5 * U32 * (np.abs(new) + mean) / st.scale, "new")
    # the inverse z * s + mean: the forward bound times s, plus 3 roundings of |x| + |mean|
    assert_within(pre.inverse_transform(st, z), x, 8 * U32 * (np.abs(x) + mean), "inverse")
    # all-zero data: scale 1, output 0, never NaN
    zero = np.zeros((3, 2), np.float32)
    np.testing.assert_array_equal(pp.standardize().transform(pp.standardize().fit(zero), zero), 0)


def test_pca_decorrelates_with_the_eigenvalues(x):
    k = 3
    pre = pp.pca(k)
    st = pre.fit(x)
    lam, _ = np_eig(x)
    comp = np.asarray(st.components, np.float64)
    # float32-rounded orthonormal columns: |C^T C - I| <= 2 U32 sum |c_i||c_j| <= 2 U32
    assert_within(comp.T @ comp, np.eye(k), 2 * U32 + 16 * EPS64, "orthonormal")
    z = np.asarray(pre.transform(st, x), np.float64)
    mean, m = reference("pca", x)
    tol = cov_bound(z, bound(x, mean, m)) + 1e-12  # + float64 evaluation of the reference
    assert_within(np.cov(z, rowvar=False), np.diag(lam[:k]), tol, "cov")


def test_pca_inverse(x):
    for k in (5, 2):  # k = d: exact; k < d: the projection onto the top-k subspace
        pre = pp.pca(k)
        st = pre.fit(x)
        z = pre.transform(st, x)
        mean, u = reference("pca", x)[0], np_eig(x)[1][:, :k]
        want = (x - mean) @ u @ u.T + mean
        tol = inverse_bound(z, u.T, mean) + bound(x, mean, u) @ np.abs(u.T)
        assert_within(pre.inverse_transform(st, z), want, tol, f"k={k}")


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "3"])
def test_pca_bad_k(k):
    with pytest.raises(ValueError, match="k must be a positive integer"):
        pp.pca(k)


def test_pca_k_too_big(x):
    with pytest.raises(ValueError, match="k=6 exceeds.*d=5"):
        pp.pca(6).fit(x)


@pytest.mark.parametrize("method", ["pca", "zca"])
def test_whiten_covariance_and_inverse(x, method):
    lam, u = np_eig(x)
    # eps = 0: identity covariance; eps > 0 (relative to the mean variance): Lambda / (Lambda +
    # eps * mean(Lambda)) in the eigenbasis; this eps halves the smallest direction's variance.
    for eps in (0.0, lam[-1] / lam.mean()):
        pre = pp.whiten(method=method, eps=eps)
        st = pre.fit(x)
        z = np.asarray(pre.transform(st, x), np.float64)
        w = np_whiten_matrix(x, method, eps)
        mean = x.astype(np.float64).mean(0)
        e = bound(x, mean, w)
        want = np.diag(lam / (lam + eps * lam.mean()))
        if method == "zca":
            want = u @ want @ u.T
        assert_within(np.cov(z, rowvar=False), want, cov_bound(z, e) + 1e-12, f"cov eps={eps}")
        w_inv = np.linalg.inv(w)
        tol = inverse_bound(z, w_inv, mean) + e @ np.abs(w_inv)
        assert_within(pre.inverse_transform(st, z), x, tol, f"inverse eps={eps}")


def test_zca_matrix_and_closest(x):
    st = pp.whiten(method="zca").fit(x)
    w = np.asarray(st.matrix, np.float64)
    # symmetric float64 matrix rounded to float32: w_ij and w_ji round to within 2 U32 |w|
    assert_within(w, w.T, 2 * U32 * np.abs(w), "symmetric")
    # rounded once to float32; float64 differences (~1e-16 * condition 1e3) stay far below U32
    assert_within(w, np_whiten_matrix(x, "zca"), U32 * np.abs(w) + 1e-12 * np.abs(w).max(), "W")
    # ZCA output is the whitened data closest to the (centered) input: any other whitening is
    # an orthogonal rotation of it, and every such rotation moves farther away.
    xc = x - x.astype(np.float64).mean(0)
    zca = np.asarray(pp.whiten(method="zca").transform(st, x), np.float64)
    pca_st = pp.whiten(method="pca").fit(x)
    pca_w = np.asarray(pp.whiten(method="pca").transform(pca_st, x), np.float64)
    best = np.linalg.norm(zca - xc)
    assert best < np.linalg.norm(pca_w - xc)
    rng = np.random.default_rng(1)
    for _ in range(5):
        q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
        assert best < np.linalg.norm(zca @ q - xc)


@pytest.mark.parametrize("method,eps", [("svd", 1e-5), ("pca", -1.0), ("zca", float("nan"))])
def test_whiten_bad_options(method, eps):
    with pytest.raises(ValueError, match="method must be|eps must be finite"):
        pp.whiten(method=method, eps=eps)


@pytest.mark.parametrize("eps", [-1e-8, float("inf"), float("nan")])
def test_standardize_bad_eps(eps):
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        pp.standardize(eps=eps)


def test_mean_image():
    rng = np.random.default_rng(0)
    imgs = rng.uniform(size=(6, 4, 5, 3)).astype(np.float32)
    pre = pp.mean_image()
    st = pre.fit(imgs)
    mean = imgs.astype(np.float64).mean(0)
    assert st.mean.shape == (4, 5, 3)
    assert_within(st.mean, mean, U32 * mean, "mean")
    z = np.asarray(pre.transform(st, imgs))
    # one rounded state entry and one subtraction
    assert_within(z, imgs - mean, 2 * U32 * (imgs + mean), "transform")
    assert_within(pre.inverse_transform(st, z), imgs, 4 * U32 * (imgs + mean), "inverse")


@pytest.mark.parametrize("axis, shape", [(-1, (6, 4, 5, 3)), (1, (6, 3, 4, 5)), (3, (6, 4, 5, 3))])
def test_per_channel_mean(axis, shape):
    imgs = np.random.default_rng(0).uniform(size=shape).astype(np.float32)
    c_pos = axis % 4
    imgs += np.arange(shape[c_pos]).reshape([-1 if a == c_pos else 1 for a in range(4)])
    pre = pp.per_channel_mean(axis=axis)
    st = pre.fit(imgs)
    pooled = tuple(a for a in range(4) if a != c_pos)
    want = imgs.astype(np.float64).mean(axis=pooled, keepdims=True)
    assert_within(st.mean, want[0], U32 * want[0], "mean")
    z = np.asarray(pre.transform(st, imgs))
    assert z.shape == imgs.shape
    assert_within(z, imgs - want, 2 * U32 * (imgs + want), "transform")


def test_per_channel_mean_other_image_size():
    pre = pp.per_channel_mean()
    st = pre.fit(np.ones((2, 4, 4, 3), np.float32) * np.array([1.0, 2.0, 3.0], np.float32))
    out = pre.transform(st, np.zeros((1, 7, 9, 3), np.float32))
    assert out.shape == (1, 7, 9, 3)
    np.testing.assert_array_equal(out[0, 0, 0], [-1.0, -2.0, -3.0])  # exact: means of constants
    with pytest.raises(ValueError, match="channel"):
        pre.transform(st, np.zeros((1, 7, 9, 4), np.float32))
    with pytest.raises(ValueError, match="batch axis 0"):
        pp.per_channel_mean(axis=0).fit(np.ones((2, 3)))


def test_chain_is_the_composition(x):
    """chain runs the same computations as composing the steps by hand: equal results."""
    pre = pp.chain(pp.center(), pp.standardize(), pp.pca(4))
    st = pre.fit(x)
    assert isinstance(st, pp.ChainState) and len(st.states) == 3
    c, s, p = pp.center(), pp.standardize(), pp.pca(4)
    s1 = c.fit(x)
    x1 = c.transform(s1, x)
    s2 = s.fit(x1)
    x2 = s.transform(s2, x1)
    s3 = p.fit(x2)
    np.testing.assert_array_equal(pre.transform(st, x), p.transform(s3, x2))
    back = p.inverse_transform(s3, p.transform(s3, x2))
    want = c.inverse_transform(s1, s.inverse_transform(s2, back))
    np.testing.assert_array_equal(pre.inverse_transform(st, pre.transform(st, x)), want)
    assert pp.chain().transform(pp.chain().fit(x), x).shape == x.shape
    assert pp.chain(pp.center(), pp.Preprocessor(c.fit, c.transform)).inverse_transform is None


# ---------------------------------------------------------------------------------------------
# jit, vmap, grad, dtypes


@pytest.mark.parametrize("name", sorted(STEPS))
def test_registry_round_trip_and_jit(name, x):
    """transform under jit within the bound of the eager one (XLA may fuse or reorder the sums:
    both are within ``bound`` of the exact value); fit under jit runs the same float64 host
    computation, so its state equals the eager state."""
    pre = pp.get(name, **STEPS[name])
    st = pre.fit(x)
    mean, m = reference(name, x)
    tol = bound(x, mean, m)
    eager = pre.transform(st, x)
    assert_within(jax.jit(pre.transform)(st, x), eager, 2 * tol, "jit transform")
    jit_state = jax.jit(pre.fit)(x)
    for a, b in zip(jax.tree.leaves(jit_state), jax.tree.leaves(st), strict=True):
        # one float32 rounding apart at most (were the float64 results to differ by an ulp)
        assert_within(a, b, 2 * U32 * np.abs(b) + 1e-15 * np.abs(b).max(), f"{name} jit fit")
    if name != "pca":  # pca(k<d) loses information; its inverse is tested above
        m_inv = np.linalg.inv(m)
        back_tol = inverse_bound(eager, m_inv, mean) + tol @ np.abs(m_inv)
        assert_within(pre.inverse_transform(st, eager), x, back_tol, "inverse")
    # any leading batch axes, e.g. stacked epoch batches
    stacked = pre.transform(st, x[:12].reshape(3, 4, 5))
    assert_within(np.asarray(stacked).reshape(12, -1), eager[:12], 2 * tol[:12], "stacked")


def test_fit_under_vmap_and_not_under_grad(x):
    """vmap fits each data set on its own (sequential host calls); fit is not differentiable."""
    pre = pp.standardize()
    both = jax.vmap(pre.fit)(jnp.stack([x, 2 * x + 1]))
    for i, xi in enumerate([x, 2 * x + 1]):
        ref = pre.fit(xi)
        np.testing.assert_array_equal(both.mean[i], ref.mean)  # the same host computation
        np.testing.assert_array_equal(both.scale[i], ref.scale)
    with pytest.raises(Exception, match="(?i)jvp|differentiat"):
        jax.grad(lambda v: jnp.sum(pre.fit(v).mean))(jnp.asarray(x))


@pytest.mark.parametrize("name", sorted(STEPS))
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=str)
def test_dtype_preserved(name, dtype, x):
    """A 16-bit input is fitted exactly like the float32 copy of its values (same float64 host
    computation) and transformed in float32, rounded once to 16 bits at the end."""
    pre = pp.get(name, **STEPS[name])
    xd = jnp.asarray(x, dtype)
    x32 = xd.astype(jnp.float32)
    st, st32 = pre.fit(xd), pre.fit(x32)
    for leaf, leaf32 in zip(jax.tree.leaves(st), jax.tree.leaves(st32), strict=True):
        assert leaf.dtype == jnp.float32  # statistics in float32
        np.testing.assert_array_equal(leaf, leaf32)
    z = pre.transform(st, xd)
    assert z.dtype == dtype
    assert pre.inverse_transform(st, z).dtype == dtype
    ref = np.asarray(pre.transform(st32, x32), np.float64)
    u16 = float(jnp.finfo(dtype).eps) / 2  # unit roundoff of the output dtype
    tiny16 = float(jnp.finfo(dtype).smallest_subnormal)
    assert_within(z, ref, u16 * np.abs(ref) + tiny16, f"{name} {dtype.__name__}")


def test_integer_input_gives_float32():
    xi = np.arange(12).reshape(4, 3)
    pre = pp.center()
    z = pre.transform(pre.fit(xi), xi)
    assert z.dtype == jnp.float32
    np.testing.assert_array_equal(z, xi - xi.mean(0))  # small integers and halves: exact


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("name", ["pca", "whiten", "zca"])
def test_bad_input_covariance_steps(name):
    pre = pp.get(name, **STEPS[name])
    with pytest.raises(ValueError, match=r"x needs at least 2 example"):
        pre.fit(np.ones((1, 5), np.float32))
    with pytest.raises(ValueError, match=r"x must have shape \[n, d\]"):
        pre.fit(np.ones((4, 5, 2), np.float32))


@pytest.mark.parametrize("name", sorted(set(STEPS) - {"none"}))
def test_bad_input_nan_complex_and_shape(name, x):
    pre = pp.get(name, **STEPS[name])
    for bad_value in (np.nan, np.inf):
        bad = x.copy()
        bad[3, 2] = bad_value
        with pytest.raises(ValueError, match="x contains NaN or inf"):
            pre.fit(bad)
        # under jit the values are not known when tracing: the state is NaN, never a number
        for leaf in jax.tree.leaves(jax.jit(pre.fit)(bad)):
            assert bool(jnp.all(jnp.isnan(leaf))), name
    with pytest.raises(ValueError, match="real-valued"):
        pre.fit(x.astype(np.complex64))
    st = pre.fit(x)
    with pytest.raises(ValueError, match="x"):
        pre.transform(st, x[:, :4])


def test_get_errors():
    with pytest.raises(ValueError, match="unknown preprocessing 'pcaa'.*standardize.*zca"):
        pp.get("pcaa")
    with pytest.raises(ValueError, match=r"needs k.*get\('pca', k=32\)"):
        pp.get("pca")
    with pytest.raises(ValueError, match="bad options"):
        pp.get("center", eps=1.0)
    assert pp.get("zca", eps=1e-3).fit(np.eye(3, dtype=np.float32)).matrix.shape == (3, 3)
