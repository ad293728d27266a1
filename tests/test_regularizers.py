"""Tests for jaxnn.regularizers: weight selection, penalties, full_loss under jit/vmap/grad."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import regularizers as R

RNG = np.random.default_rng(0)
U32 = 2.0**-24  # float32 unit roundoff


def sum_bound(terms):
    """Float32 error bound of a sum of rounded terms (each a square or abs, rounded once):
    (m + 1) U32 sum |t| for m terms, whatever order XLA adds them in."""
    terms = np.asarray(terms, np.float64).ravel()
    return (terms.size + 1) * U32 * np.abs(terms).sum()


def jgrad(f):
    """jax.grad, jitted: one compilation instead of several eager ones (keeps the tests fast)."""
    return jax.jit(jax.grad(f))


class Affine(NamedTuple):
    w: jax.Array
    b: jax.Array


def make_params():
    """A parameter tree shaped like our layers' (plus a few unnamed/foreign leaves)."""
    f = lambda *s: jnp.asarray(RNG.standard_normal(s), jnp.float32)
    return {
        "dense0": {"w": f(4, 3), "b": f(3)},
        "bn0": {"gamma": f(3), "beta": f(3), "mean": f(3), "var": f(3)},
        "prelu": {"alpha": f(3)},
        "conv": {"kernel": f(2, 2, 3, 5), "bias": f(5)},
        "ln": {"scale": f(5, 1)},  # a named non-weight, even at ndim 2
        "odd": {"w": f(5)},  # named "w": a weight even at ndim 1
        "custom": {"proj": f(5, 2), "offset": f(2)},  # unknown names: by ndim
        "stack": [f(2, 2), f(2)],  # unnamed leaves: by ndim
        "affine": Affine(w=f(2, 6), b=f(6)),  # attribute names count like dict keys
        "step": jnp.array(3),  # integer leaf: never a weight
    }


EXPECTED_WEIGHTS = [
    ("affine", "w"),
    ("conv", "kernel"),
    ("custom", "proj"),
    ("dense0", "w"),
    ("odd", "w"),
    ("stack", 0),
]


def _expected_leaves(params):
    out = []
    for a, b in EXPECTED_WEIGHTS:
        node = params[a]
        out.append(getattr(node, b) if isinstance(b, str) and hasattr(node, "_fields") else node[b])
    return out


def test_weights_selects_weight_matrices_only():
    params = make_params()
    got = R.weights(params)
    expected = _expected_leaves(params)  # dict keys flatten in sorted order, as listed
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g is e


def test_weight_mask_matches_weights():
    params = make_params()
    mask = R.weight_mask(params)
    assert jax.tree_util.tree_structure(mask) == jax.tree_util.tree_structure(params)
    assert mask["dense0"] == {"w": True, "b": False}
    assert not any(mask["bn0"].values()) and mask["prelu"] == {"alpha": False}
    assert mask["ln"]["scale"] is False and mask["odd"]["w"] is True
    assert mask["stack"] == [True, False] and mask["step"] is False
    selected = [
        x
        for x, m in zip(
            jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(mask), strict=True
        )
        if m
    ]
    assert len(selected) == len(R.weights(params))


def test_penalties_match_numpy():
    params = make_params()
    w = R.weights(params)
    flat = np.concatenate([np.asarray(x, np.float64).ravel() for x in _expected_leaves(params)])
    np.testing.assert_allclose(R.l2_penalty(w), np.sum(flat**2), rtol=0, atol=sum_bound(flat**2))
    np.testing.assert_allclose(R.l1_penalty(w), np.sum(np.abs(flat)), rtol=0, atol=sum_bound(flat))
    # "Every leaf given": biases count when passed explicitly.
    allf = np.concatenate(
        [np.asarray(x, np.float64).ravel() for x in jax.tree_util.tree_leaves(params)]
    )
    np.testing.assert_allclose(
        R.l2_penalty(params), np.sum(allf**2), rtol=0, atol=sum_bound(allf**2)
    )
    assert float(R.l2_penalty({})) == 0.0 and float(R.l1_penalty([])) == 0.0


def test_penalties_propagate_nan():
    w = [jnp.array([1.0, jnp.nan]), jnp.ones((2, 2))]
    assert np.isnan(float(R.l2_penalty(w))) and np.isnan(float(R.l1_penalty(w)))
    assert np.isnan(float(R.full_loss(jnp.float32(1.0), {"w": w[0][None]}, l2=0.1)))


def test_penalties_accumulate_low_precision_in_float32():
    ones = jnp.ones((4096,), jnp.bfloat16)  # a bfloat16 running sum of 1s stalls at 256
    assert R.l2_penalty([ones]).dtype == jnp.float32
    assert float(R.l2_penalty([ones])) == 4096.0
    assert float(R.l1_penalty([ones, -ones.astype(jnp.float16)])) == 8192.0


def test_full_loss_formula_and_zero_shortcut():
    params = make_params()
    data = jnp.float32(1.25)
    flat = np.concatenate([np.asarray(x, np.float64).ravel() for x in _expected_leaves(params)])
    got = R.full_loss(data, params, l2=0.1, l1=0.01)
    terms = np.concatenate([[1.25], 0.1 * flat**2, 0.01 * np.abs(flat)])
    # two penalty sums, each scaled (one rounding, plus the float32 strength), and two additions
    np.testing.assert_allclose(
        got, terms.sum(), rtol=0, atol=sum_bound(terms) + 4 * U32 * terms.sum()
    )
    assert float(R.full_loss(data, params)) == 1.25
    terms = np.concatenate([[1.25], 0.1 * flat**2])
    got = R.full_loss(data, params, l2=0.1)
    np.testing.assert_allclose(
        got, terms.sum(), rtol=0, atol=sum_bound(terms) + 4 * U32 * terms.sum()
    )
    with pytest.raises(TypeError):
        R.full_loss(data, params, 0.1)  # strengths are keyword-only


@pytest.mark.parametrize("name", ["l2", "l1"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.1, np.array([0.1, -1.0])])
def test_full_loss_bad_strength_eager_error_jit_nan(name, value):
    params = make_params()
    with pytest.raises(ValueError, match=f"`{name}` must be finite and >= 0"):
        R.full_loss(jnp.float32(1.0), params, **{name: value})
    with pytest.raises(ValueError, match=f"`{name}` must be finite and >= 0"):
        R.full_loss(jnp.float32(1.0), params, **{name: jnp.asarray(value, jnp.float32)})
    out = jax.jit(lambda v: R.full_loss(jnp.float32(1.0), params, **{name: v}))(value)
    assert np.isnan(np.asarray(out)).any(), out  # never a plausible loss
    good = jax.jit(lambda v: R.full_loss(jnp.float32(1.0), params, **{name: v}))(0.0)
    assert float(good) == 1.0


def test_full_loss_with_traced_strengths_under_jit_and_vmap():
    params = make_params()
    flat = np.concatenate([np.asarray(x, np.float64).ravel() for x in _expected_leaves(params)])
    lams = jnp.array([0.0, 0.1, 1.0])
    got = jax.vmap(lambda lam: R.full_loss(jnp.float32(0.5), params, l2=lam))(lams)
    for g, lam in zip(np.asarray(got), np.asarray(lams, np.float64), strict=True):
        terms = np.concatenate([[0.5], lam * flat**2])
        np.testing.assert_allclose(
            g, terms.sum(), rtol=0, atol=sum_bound(terms) + 3 * U32 * terms.sum()
        )
    jitted = jax.jit(lambda lam1: R.full_loss(jnp.float32(0.5), params, l1=lam1))
    terms = np.concatenate([[0.5], np.float32(0.2) * np.abs(flat)])
    np.testing.assert_allclose(
        jitted(0.2), terms.sum(), rtol=0, atol=sum_bound(terms) + 3 * U32 * terms.sum()
    )
    # A traced zero is not skipped (no Python branch on it) and adds exactly 0.
    assert float(jitted(0.0)) == 0.5


def test_full_loss_gradient_is_2_lambda_w_on_weights_and_zero_elsewhere():
    params = make_params()
    del params["step"]  # jax.grad needs float leaves
    g = jgrad(lambda p: R.full_loss(jnp.float32(0.0), p, l2=0.3))(params)
    # 0.3 rounded to float32, times 2w (exact), rounded: 2 roundings of |0.6 w|
    for got, w in (
        (g["dense0"]["w"], params["dense0"]["w"]),
        (g["conv"]["kernel"], params["conv"]["kernel"]),
    ):
        want = 0.6 * np.asarray(w, np.float64)
        np.testing.assert_allclose(got, want, rtol=3 * U32, atol=0)
    for leaf in (g["dense0"]["b"], g["bn0"]["gamma"], g["prelu"]["alpha"], g["conv"]["bias"]):
        np.testing.assert_array_equal(leaf, np.zeros_like(leaf))
    g1 = jgrad(lambda p: R.full_loss(jnp.float32(0.0), p, l1=0.5))(params)
    np.testing.assert_allclose(g1["dense0"]["w"], 0.5 * np.sign(params["dense0"]["w"]))


def test_public_names_resolve():
    assert R.__all__ and len(set(R.__all__)) == len(R.__all__)
    for name in R.__all__:
        assert getattr(R, name) is not None
    for name in ("l1_penalty", "l2_penalty", "weights", "full_loss"):
        assert getattr(R, name).__doc__
