"""Tests for jaxnn.preprocessing, against independent numpy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import preprocessing as pp


def correlated(n=300, d=5, seed=0):
    """Gaussian data with a non-zero mean, very different scales, and correlations (float32)."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) * np.logspace(0, -1.5, d)[:, None]
    return (rng.normal(size=(n, d)) @ mix + rng.normal(size=d) * 3).astype(np.float32)


@pytest.fixture(scope="module")
def x():
    return correlated()


def np_eig(x):
    """Reference: eigenvalues (descending) and eigenvectors of np.cov in float64."""
    lam, u = np.linalg.eigh(np.cov(np.asarray(x, np.float64), rowvar=False))
    return lam[::-1], u[:, ::-1]


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


def test_public_names():
    assert set(pp.__all__) == {
        "ChainState", "EmptyState", "MeanState", "PCAState", "Preprocessor", "StandardizeState",
        "WhitenState", "center", "chain", "get", "identity", "mean_image", "names", "pca",
        "per_channel_mean", "standardize", "whiten",
    }  # fmt: skip
    assert set(pp.names()) == set(STEPS)


def test_center(x):
    pre = pp.center()
    st = pre.fit(x)
    np.testing.assert_allclose(st.mean, x.astype(np.float64).mean(0), rtol=1e-5, atol=1e-5)
    z = np.asarray(pre.transform(st, x), np.float64)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z, x - x.astype(np.float64).mean(0), atol=1e-5)


def test_standardize(x):
    pre = pp.standardize()
    st = pre.fit(x)
    z = np.asarray(pre.transform(st, x), np.float64)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.var(0), 1, rtol=1e-4)
    np.testing.assert_allclose(st.scale, x.astype(np.float64).std(0), rtol=1e-5)


def test_standardize_constant_columns():
    x = np.array([[1.0, 0.1, 3.0], [2.0, 0.1, 3.0], [4.0, 0.1, 3.0]], np.float32)
    pre = pp.standardize()
    st = pre.fit(x)
    z = np.asarray(pre.transform(st, x))
    assert np.all(np.isfinite(z))
    np.testing.assert_array_equal(z[:, 1:], 0.0)  # constant columns become exactly 0
    # unseen values in a constant column are only centered, not blown up
    new = np.asarray(pre.transform(st, np.array([[0.0, 0.6, 3.0]], np.float32)))
    np.testing.assert_allclose(new[0, 1:], [0.5, 0.0], rtol=1e-6)
    np.testing.assert_allclose(pre.inverse_transform(st, z), x, rtol=1e-6)


def test_pca_components(x):
    k = 3
    st = pp.pca(k).fit(x)
    lam, u = np_eig(x)
    comp = np.asarray(st.components, np.float64)
    assert comp.shape == (5, k) and st.variances.shape == (k,)
    np.testing.assert_allclose(comp.T @ comp, np.eye(k), atol=1e-5)  # orthonormal
    assert np.all(np.diff(np.asarray(st.variances)) <= 0)  # sorted by variance
    np.testing.assert_allclose(st.variances, lam[:k], rtol=1e-4)
    # same subspace as numpy (projection matrices are sign-invariant)
    np.testing.assert_allclose(comp @ comp.T, u[:, :k] @ u[:, :k].T, atol=1e-4)
    # transformed training data is decorrelated with those variances
    z = np.asarray(pp.pca(k).transform(st, x), np.float64)
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.diag(lam[:k]), atol=1e-4 * lam[0])


def test_pca_inverse(x):
    full = pp.pca(5)
    st = full.fit(x)
    np.testing.assert_allclose(full.inverse_transform(st, full.transform(st, x)), x, atol=1e-4)
    # k < d: the reconstruction is the projection onto the top-k subspace (computed by numpy)
    k = 2
    pre = pp.pca(k)
    st = pre.fit(x)
    _, u = np_eig(x)
    mu = x.astype(np.float64).mean(0)
    want = (x - mu) @ u[:, :k] @ u[:, :k].T + mu
    np.testing.assert_allclose(pre.inverse_transform(st, pre.transform(st, x)), want, atol=1e-4)


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "3"])
def test_pca_bad_k(k):
    with pytest.raises(ValueError, match="k must be a positive integer"):
        pp.pca(k)


def test_pca_k_too_big(x):
    with pytest.raises(ValueError, match="k=6 exceeds.*d=5"):
        pp.pca(6).fit(x)


@pytest.mark.parametrize("method", ["pca", "zca"])
def test_whiten_identity_covariance(x, method):
    pre = pp.whiten(method=method, eps=0.0)
    st = pre.fit(x)
    z = np.asarray(pre.transform(st, x), np.float64)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(5), atol=1e-3)
    np.testing.assert_allclose(pre.inverse_transform(st, z), x, atol=1e-4)
    # with eps > 0 the covariance is Lambda / (Lambda + eps) (in the eigenbasis for pca)
    eps = 1e-4
    pre = pp.whiten(method=method, eps=eps)
    st = pre.fit(x)
    z = np.asarray(pre.transform(st, x), np.float64)
    lam, u = np_eig(x)
    want = np.diag(lam / (lam + eps))
    if method == "zca":
        want = u @ want @ u.T
    np.testing.assert_allclose(np.cov(z, rowvar=False), want, atol=1e-3)
    assert np.diag(want).min() < 0.95  # the smallest direction is visibly damped
    np.testing.assert_allclose(pre.inverse_transform(st, z), x, atol=1e-4)


def test_zca_matrix_and_closest(x):
    eps = 1e-5
    st = pp.whiten(method="zca", eps=eps).fit(x)
    w = np.asarray(st.matrix, np.float64)
    np.testing.assert_allclose(w, w.T, atol=1e-4 * np.abs(w).max())  # symmetric
    lam, u = np_eig(x)
    np.testing.assert_allclose(w, u @ np.diag(1 / np.sqrt(lam + eps)) @ u.T, rtol=1e-3, atol=1e-3)
    # ZCA output is the whitened data closest to the (centered) input: any other whitening is
    # an orthogonal rotation of it, and every such rotation moves farther away.
    xc = x - x.astype(np.float64).mean(0)
    zca = np.asarray(pp.whiten(method="zca", eps=eps).transform(st, x), np.float64)
    pca_st = pp.whiten(method="pca", eps=eps).fit(x)
    pca_w = np.asarray(pp.whiten(method="pca", eps=eps).transform(pca_st, x), np.float64)
    best = np.linalg.norm(zca - xc)
    assert best < np.linalg.norm(pca_w - xc)
    rng = np.random.default_rng(1)
    for _ in range(5):
        q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
        assert best < np.linalg.norm(zca @ q - xc)


def test_whiten_bad_method():
    with pytest.raises(ValueError, match="'pca' or 'zca'"):
        pp.whiten(method="svd")


def test_mean_image():
    rng = np.random.default_rng(0)
    imgs = rng.uniform(size=(6, 4, 5, 3)).astype(np.float32)
    pre = pp.mean_image()
    st = pre.fit(imgs)
    assert st.mean.shape == (4, 5, 3)
    z = np.asarray(pre.transform(st, imgs))
    assert z.shape == imgs.shape
    np.testing.assert_allclose(z, imgs - imgs.mean(0), atol=1e-6)
    np.testing.assert_allclose(pre.inverse_transform(st, z), imgs, atol=1e-6)


@pytest.mark.parametrize("axis, shape", [(-1, (6, 4, 5, 3)), (1, (6, 3, 4, 5)), (3, (6, 4, 5, 3))])
def test_per_channel_mean(axis, shape):
    imgs = np.random.default_rng(0).uniform(size=shape).astype(np.float32)
    c_pos = axis % 4
    imgs += np.arange(shape[c_pos]).reshape([-1 if a == c_pos else 1 for a in range(4)])
    pre = pp.per_channel_mean(axis=axis)
    st = pre.fit(imgs)
    pooled = tuple(a for a in range(4) if a != c_pos)
    want = imgs.astype(np.float64).mean(axis=pooled, keepdims=True)
    np.testing.assert_allclose(st.mean, want[0], rtol=1e-5)
    np.testing.assert_allclose(pre.transform(st, imgs), imgs - want, atol=1e-5)
    z = np.asarray(pre.transform(st, imgs))
    np.testing.assert_allclose(z.mean(axis=pooled), 0, atol=1e-5)
    assert z.shape[c_pos] == shape[c_pos]


def test_per_channel_mean_other_image_size():
    pre = pp.per_channel_mean()
    st = pre.fit(np.ones((2, 4, 4, 3), np.float32) * np.array([1.0, 2.0, 3.0], np.float32))
    out = pre.transform(st, np.zeros((1, 7, 9, 3), np.float32))
    assert out.shape == (1, 7, 9, 3)
    np.testing.assert_allclose(out[0, 0, 0], [-1.0, -2.0, -3.0])
    with pytest.raises(ValueError, match="channel"):
        pre.transform(st, np.zeros((1, 7, 9, 4), np.float32))
    with pytest.raises(ValueError, match="batch axis 0"):
        pp.per_channel_mean(axis=0).fit(np.ones((2, 3)))


def test_chain(x):
    pre = pp.chain(pp.center(), pp.standardize(), pp.pca(4))
    st = pre.fit(x)
    assert isinstance(st, pp.ChainState) and len(st.states) == 3
    # manual composition, each step fitted on the previous step's output
    c, s, p = pp.center(), pp.standardize(), pp.pca(4)
    s1 = c.fit(x)
    x1 = c.transform(s1, x)
    s2 = s.fit(x1)
    x2 = s.transform(s2, x1)
    want = p.transform(p.fit(x2), x2)
    np.testing.assert_allclose(pre.transform(st, x), want, atol=1e-5)
    round_trip = pp.chain(pp.standardize(), pp.whiten(method="zca"))
    rst = round_trip.fit(x)
    np.testing.assert_allclose(
        round_trip.inverse_transform(rst, round_trip.transform(rst, x)), x, atol=1e-4
    )
    assert pp.chain().transform(pp.chain().fit(x), x).shape == x.shape
    assert pp.chain(pp.center(), pp.Preprocessor(c.fit, c.transform)).inverse_transform is None


@pytest.mark.parametrize("name", sorted(STEPS))
def test_registry_round_trip_and_jit(name, x):
    pre = pp.get(name, **STEPS[name])
    assert isinstance(pre, pp.Preprocessor)
    st = pre.fit(x)
    eager = pre.transform(st, x)
    jitted = jax.jit(pre.transform)(st, x)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)
    # the state is a NamedTuple of arrays, so the fit itself also runs under jit
    np.testing.assert_allclose(pre.transform(jax.jit(pre.fit)(x), x), eager, rtol=1e-4, atol=1e-4)
    if name != "pca":  # pca(k<d) loses information; its inverse is tested above
        np.testing.assert_allclose(pre.inverse_transform(st, eager), x, atol=1e-4)
    # any leading batch axes, e.g. stacked epoch batches
    stacked = pre.transform(st, x[:12].reshape(3, 4, 5))
    np.testing.assert_allclose(stacked.reshape(12, -1), eager[:12], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(STEPS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_dtype_preserved(name, dtype, x):
    pre = pp.get(name, **STEPS[name])
    xd = jnp.asarray(x, dtype)
    st = pre.fit(xd)
    for leaf in jax.tree.leaves(st):
        assert leaf.dtype == jnp.float32  # statistics in float32
    z = pre.transform(st, xd)
    assert z.dtype == dtype
    assert pre.inverse_transform(st, z).dtype == dtype
    assert bool(jnp.all(jnp.isfinite(z.astype(jnp.float32))))
    # low-precision fit agrees with the float32 fit of the same (rounded) values
    ref = pre.transform(pre.fit(xd.astype(jnp.float32)), xd.astype(jnp.float32))
    np.testing.assert_allclose(
        np.asarray(z, np.float32), ref, rtol=2e-2, atol=2e-2 * float(jnp.abs(ref).max())
    )


def test_integer_input_gives_float32():
    xi = np.arange(12).reshape(4, 3)
    pre = pp.center()
    z = pre.transform(pre.fit(xi), xi)
    assert z.dtype == jnp.float32
    np.testing.assert_allclose(z, xi - xi.mean(0))


@pytest.mark.parametrize("name", ["pca", "whiten", "zca"])
def test_bad_input_covariance_steps(name):
    pre = pp.get(name, **STEPS[name])
    with pytest.raises(ValueError, match=r"x needs at least 2 example"):
        pre.fit(np.ones((1, 5), np.float32))
    with pytest.raises(ValueError, match=r"x must have shape \[n, d\]"):
        pre.fit(np.ones((4, 5, 2), np.float32))


@pytest.mark.parametrize("name", sorted(STEPS))
def test_bad_input_nan_and_shape(name, x):
    pre = pp.get(name, **STEPS[name])
    bad = x.copy()
    bad[3, 2] = np.nan
    if name != "none":
        with pytest.raises(ValueError, match="x contains NaN"):
            pre.fit(bad)
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
    assert pp.get("zca", eps=1e-3) is not None
