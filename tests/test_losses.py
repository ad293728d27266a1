"""Tests for jaxnn.losses: numpy references, optax agreement, extremes, shapes, labels, dtypes."""

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxnn import gradcheck
from jaxnn import losses as L

# ---------------------------------------------------------------------------------------------
# Independent numpy references (float64, loops where that is clearest).


def jgrad(f):
    """jax.grad, jitted: one compilation instead of several eager ones (keeps the tests fast)."""
    return jax.jit(jax.grad(f))


def np_logsumexp(x):
    m = np.max(x, axis=-1, keepdims=True)
    return (m + np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True)))[..., 0]


def np_l1(p, t):
    return np.abs(t - p).reshape(len(p), -1).sum(1)


def np_l2(p, t):
    return ((t - p) ** 2).reshape(len(p), -1).sum(1)


def np_mse(p, t):
    return ((t - p) ** 2).reshape(len(p), -1).mean(1)


def np_bce(x, y):
    # -[y log s + (1-y) log(1-s)], with log s = -log(1 + e^-x) written stably.
    log_s = -np.logaddexp(0.0, -x)
    log_1ms = -np.logaddexp(0.0, x)
    return -(y * log_s + (1 - y) * log_1ms).reshape(len(x), -1).sum(1)


def np_ce(logits, labels):
    return np.array([np_logsumexp(z) - z[y] for z, y in zip(logits, labels, strict=True)])


def np_ce_onehot(logits, targets):
    log_p = logits - np_logsumexp(logits)[:, None]
    return -(targets * log_p).sum(1)


def np_ww_hinge(scores, labels, margin=1.0):
    out = []
    for s, y in zip(scores, labels, strict=True):
        out.append(sum(max(0.0, s[k] - s[y] + margin) for k in range(len(s)) if k != y))
    return np.array(out)


RNG = np.random.default_rng(0)
B, C = 6, 5
PRED = RNG.standard_normal((B, 3, 2))
TARGET = RNG.standard_normal((B, 3, 2))
LOGITS = 3.0 * RNG.standard_normal((B, C))
LABELS = RNG.integers(0, C, B)
PROBS = RNG.dirichlet(np.ones(C), B)
BIN_LOGITS = 3.0 * RNG.standard_normal((B, 4))
BIN_LABELS = RNG.integers(0, 2, (B, 4)).astype(np.float64)


# (id, jaxnn loss, args (float64 numpy), numpy reference)
CASES = [
    ("l1_loss", L.l1_loss, (PRED, TARGET), np_l1),
    ("l2_loss", L.l2_loss, (PRED, TARGET), np_l2),
    ("mse", L.mse, (PRED, TARGET), np_mse),
    (
        "sigmoid_binary_cross_entropy",
        L.sigmoid_binary_cross_entropy,
        (BIN_LOGITS, BIN_LABELS),
        np_bce,
    ),
    (
        "sigmoid_binary_cross_entropy_soft",
        L.sigmoid_binary_cross_entropy,
        (BIN_LOGITS, RNG.uniform(size=(B, 4))),
        np_bce,
    ),
    ("softmax_cross_entropy", L.softmax_cross_entropy, (LOGITS, LABELS), np_ce),
    (
        "softmax_cross_entropy_onehot",
        L.softmax_cross_entropy_onehot,
        (LOGITS, np.eye(C)[LABELS]),
        np_ce_onehot,
    ),
    ("softmax_cross_entropy_soft", L.softmax_cross_entropy_onehot, (LOGITS, PROBS), np_ce_onehot),
    ("multiclass_hinge_loss", L.multiclass_hinge_loss, (LOGITS, LABELS), np_ww_hinge),
]
IDS = [c[0] for c in CASES]


def _cast(args, dtype):
    """Float arrays to ``dtype``; integer labels stay integer."""
    return tuple(
        jnp.asarray(a, dtype) if np.issubdtype(np.asarray(a).dtype, np.floating) else jnp.asarray(a)
        for a in args
    )


def test_every_registered_loss_has_a_reference_case():
    covered = {c[1] for c in CASES}
    assert {L.get(name) for name in L.names()} <= covered


@pytest.mark.parametrize("name,fn,args,ref", CASES, ids=IDS)
def test_matches_numpy_reference(name, fn, args, ref):
    out = fn(*_cast(args, jnp.float32))
    assert out.shape == (B,) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref(*args), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,fn,args,ref", CASES, ids=IDS)
def test_jit_matches_eager(name, fn, args, ref):
    a = _cast(args, jnp.float32)
    np.testing.assert_allclose(jax.jit(fn)(*a), fn(*a), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=str)
def test_dtype_preserved(dtype):
    for name, fn, args, ref in CASES:
        a = _cast(args, dtype)
        out = fn(*a)
        assert out.dtype == dtype, name
        # Reference on the rounded inputs; 16-bit output rounding only.
        expected = ref(*(np.asarray(v, np.float64 if v.dtype == dtype else v.dtype) for v in a))
        np.testing.assert_allclose(
            np.asarray(out, np.float64), expected, rtol=2e-2, atol=2e-2, err_msg=name
        )


def test_gradients_float64():
    """jax.grad of every loss (w.r.t. its first argument) against jaxnn.gradcheck in float64,
    all cases in one function so it compiles once (the report still names the failing loss);
    the hinge and l1 points are away from their kinks with probability 1."""
    with jax.enable_x64(True):
        firsts = {name: jnp.asarray(args[0], jnp.float64) for name, _, args, _ in CASES}
        rests = {name: _cast(args[1:], jnp.float64) for name, _, args, _ in CASES}

        @jax.jit
        def total(p):
            return sum(jnp.sum(fn(p[name], *rests[name])) for name, fn, _, _ in CASES)

        report = gradcheck.check_grads(total, firsts)
    assert set(report.errors) == {f"['{name}']" for name in IDS}
    assert report.passed, report
    assert report.max_error < 1e-7


def test_cross_entropy_jax_test_util_check_grads():
    with jax.enable_x64(True):
        z = jnp.asarray(LOGITS, jnp.float64)
        jax.test_util.check_grads(
            lambda v: L.softmax_cross_entropy(v, jnp.asarray(LABELS)),
            (z,),
            order=1,
            modes=("fwd", "rev"),
        )


def test_cross_entropy_gradient_is_softmax_minus_onehot():
    g = jgrad(lambda z: jnp.sum(L.softmax_cross_entropy(z, jnp.asarray(LABELS))))(
        jnp.asarray(LOGITS, jnp.float32)
    )
    p = np.exp(LOGITS - np_logsumexp(LOGITS)[:, None])
    np.testing.assert_allclose(g, p - np.eye(C)[LABELS], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Agreement with optax where it defines the same thing


def test_cross_entropy_equals_optax():
    z, y = jnp.asarray(LOGITS, jnp.float32), jnp.asarray(LABELS)
    np.testing.assert_allclose(
        L.softmax_cross_entropy(z, y),
        optax.losses.softmax_cross_entropy_with_integer_labels(z, y),
        rtol=1e-6,
        atol=1e-6,
    )
    t = jnp.asarray(PROBS, jnp.float32)
    np.testing.assert_allclose(
        L.softmax_cross_entropy_onehot(z, t),
        optax.losses.softmax_cross_entropy(z, t),
        rtol=1e-6,
        atol=1e-6,
    )


def test_sigmoid_bce_equals_optax_summed_over_non_batch_axes():
    x, y = jnp.asarray(BIN_LOGITS, jnp.float32), jnp.asarray(BIN_LABELS, jnp.float32)
    np.testing.assert_allclose(
        L.sigmoid_binary_cross_entropy(x, y),
        optax.losses.sigmoid_binary_cross_entropy(x, y).sum(1),
        rtol=1e-6,
        atol=1e-6,
    )


def test_l2_loss_is_twice_optax_l2_summed():
    p, t = jnp.asarray(PRED, jnp.float32), jnp.asarray(TARGET, jnp.float32)
    np.testing.assert_allclose(
        L.l2_loss(p, t), 2 * optax.losses.l2_loss(p, t).reshape(B, -1).sum(1), rtol=1e-6
    )
    np.testing.assert_allclose(
        L.mse(p, t), optax.losses.squared_error(p, t).reshape(B, -1).mean(1), rtol=1e-6
    )


def test_hinge_is_weston_watkins_sum_not_optax_crammer_singer():
    # Two classes (1 and 2) violate the margin of the correct class 0.
    scores = jnp.array([[2.0, 2.5, 1.5, -3.0]])
    labels = jnp.array([0])
    ours = float(L.multiclass_hinge_loss(scores, labels)[0])
    ww = float(np_ww_hinge(np.asarray(scores), [0])[0])
    assert ours == pytest.approx(ww) == pytest.approx((2.5 - 2 + 1) + (1.5 - 2 + 1))
    cs = float(optax.losses.multiclass_hinge_loss(scores, labels)[0])
    assert cs == pytest.approx(2.5 - 2 + 1)  # optax: the max violator only
    assert ours != pytest.approx(cs)
    # With at most one violator the two forms agree.
    one = jnp.array([[2.0, 2.5, -1.5, -3.0]])
    np.testing.assert_allclose(
        L.multiclass_hinge_loss(one, labels), optax.losses.multiclass_hinge_loss(one, labels)
    )


def test_hinge_margin_keyword_and_kink():
    s = jnp.array([[1.0, 0.5, 0.0]])
    y = jnp.array([0])
    np.testing.assert_allclose(
        L.multiclass_hinge_loss(s, y, margin=2.0), np_ww_hinge(np.asarray(s), [0], margin=2.0)
    )
    with pytest.raises(TypeError):
        L.multiclass_hinge_loss(s, y, 2.0)  # margin is keyword-only
    # At exactly the margin (s_1 - s_0 + 0.5 = 0) the term's gradient is 0.
    g = jgrad(lambda v: L.multiclass_hinge_loss(v, y, margin=0.5)[0])(s)
    np.testing.assert_array_equal(g, [[0.0, 0.0, 0.0]])


# ---------------------------------------------------------------------------------------------
# Extreme inputs


def test_cross_entropy_finite_for_huge_and_minus_inf_logits():
    z = jnp.array([[1e4, -1e4, 0.0], [-jnp.inf, 3.0, -jnp.inf], [1e4, 1e4, -jnp.inf]])
    y = jnp.array([1, 1, 0])
    expected = [2e4, 0.0, np.log(2.0)]
    for loss, target in (
        (L.softmax_cross_entropy, y),
        (L.softmax_cross_entropy_onehot, jax.nn.one_hot(y, 3)),
    ):
        out = loss(z, target)
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
        g = jgrad(lambda v, loss=loss, target=target: jnp.sum(loss(v, target)))(z)
        assert bool(jnp.all(jnp.isfinite(g))), g
        np.testing.assert_allclose(g, [[1, -1, 0], [0, 0, 0], [-0.5, 0.5, 0]], atol=1e-6)


def test_hinge_and_bce_finite_for_extremes():
    s = jnp.array([[1e4, -1e4, -jnp.inf], [-1e4, 1e4, 0.0]])
    y = jnp.array([0, 0])
    np.testing.assert_allclose(L.multiclass_hinge_loss(s, y), [0.0, 2e4 + 1 + 1e4 + 1])
    g = jgrad(lambda v: jnp.sum(L.multiclass_hinge_loss(v, y)))(s)
    assert bool(jnp.all(jnp.isfinite(g)))
    x = jnp.array([[1e4, -1e4, -jnp.inf, jnp.inf, 0.0]])
    lab = jnp.array([[1.0, 0.0, 0.0, 1.0, 1.0]])
    out = L.sigmoid_binary_cross_entropy(x, lab)
    np.testing.assert_allclose(out, [np.log(2.0)], rtol=1e-6)
    gb = jgrad(lambda v: jnp.sum(L.sigmoid_binary_cross_entropy(v, lab)))(x)
    np.testing.assert_allclose(gb, [[0.0, 0.0, 0.0, 0.0, -0.5]])
    wrong = L.sigmoid_binary_cross_entropy(jnp.array([[1e4]]), jnp.array([[0.0]]))
    np.testing.assert_allclose(wrong, [1e4])


@settings(max_examples=20, deadline=None)
@given(
    logits=st.lists(st.floats(-1e4, 1e4, width=32), min_size=2, max_size=6),
    data=st.data(),
)
def test_cross_entropy_hypothesis(logits, data):
    label = data.draw(st.integers(0, len(logits) - 1))
    z = np.array([logits], np.float32)
    out = L.softmax_cross_entropy(jnp.asarray(z), jnp.array([label]))
    assert bool(jnp.all(jnp.isfinite(out))) and float(out[0]) >= 0.0
    np.testing.assert_allclose(out, np_ce(z.astype(np.float64), [label]), rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Shapes, labels, errors


def test_per_example_shapes():
    assert L.mse(jnp.ones((4, 2, 3)), jnp.zeros((4, 2, 3))).shape == (4,)
    assert L.mse(jnp.ones(4), jnp.zeros(4)).shape == (4,)
    assert L.l2_loss(jnp.ones(()), jnp.zeros(())).shape == ()
    # [batch, time, classes] logits: per-example sums over time.
    z = jnp.asarray(RNG.standard_normal((2, 3, 4)), jnp.float32)
    y = jnp.array([[0, 1, 2], [3, 0, 1]])
    out = L.softmax_cross_entropy(z, y)
    assert out.shape == (2,)
    np.testing.assert_allclose(
        out, np_ce(np.asarray(z).reshape(6, 4), y.ravel()).reshape(2, 3).sum(1), rtol=1e-5
    )
    # One example at a time under vmap.
    per = jax.vmap(L.softmax_cross_entropy)(jnp.asarray(LOGITS), jnp.asarray(LABELS))
    np.testing.assert_allclose(per, np_ce(LOGITS, LABELS), rtol=1e-5)


@pytest.mark.parametrize(
    "fn,args,match",
    [
        (L.mse, (jnp.ones((4, 3)), jnp.ones((4, 1))), r"`target` must have the shape.*\(4, 3\)"),
        (L.l1_loss, (jnp.ones((4,)), jnp.ones((1, 4))), "`target`"),
        (L.l2_loss, (jnp.ones((4, 3)), jnp.ones((3,))), "`target`"),
        (L.sigmoid_binary_cross_entropy, (jnp.ones((4, 2)), jnp.ones((4,))), "`labels`"),
        (
            L.softmax_cross_entropy,
            (jnp.ones((4, 3)), jnp.zeros((4, 1), int)),
            r"`labels` must have shape \(4,\)",
        ),
        (L.softmax_cross_entropy_onehot, (jnp.ones((4, 3)), jnp.ones((4, 2))), "`targets`"),
        (L.multiclass_hinge_loss, (jnp.ones((4, 3)), jnp.zeros((3,), int)), "`labels`"),
    ],
)
def test_shape_mismatch_raises(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)


@pytest.mark.parametrize("fn", [L.softmax_cross_entropy, L.multiclass_hinge_loss])
def test_integer_label_errors(fn):
    z = jnp.zeros((3, 4))
    with pytest.raises(TypeError, match="integer"):
        fn(z, jnp.array([0.0, 1.0, 2.0]))
    for bad in ([0, 4, 1], [0, -1, 1]):
        with pytest.raises(ValueError, match=r"\[0, 4\)"):
            fn(z, jnp.array(bad))
        with pytest.raises(ValueError, match=r"\[0, 4\)"):
            fn(z, np.array(bad))


@pytest.mark.parametrize("fn", [L.softmax_cross_entropy, L.multiclass_hinge_loss])
def test_out_of_range_labels_under_jit_give_nan_for_that_example(fn):
    z = jnp.asarray(LOGITS[:4], jnp.float32)
    good = jnp.asarray(LABELS[:4])
    bad = good.at[1].set(C).at[2].set(-1)
    ref = fn(z, good)
    for transform in (jax.jit(fn), jax.vmap(fn)):
        out = transform(z, bad)
        assert bool(jnp.isnan(out[1])) and bool(jnp.isnan(out[2]))
        np.testing.assert_allclose(out[jnp.array([0, 3])], ref[jnp.array([0, 3])], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Registry and public names


def test_get_and_names():
    for name in L.names():
        assert callable(L.get(name))
    assert L.get("hinge") is L.multiclass_hinge_loss
    assert L.get("cross_entropy") is L.softmax_cross_entropy
    assert L.get(L.mse) is L.mse
    with pytest.raises(ValueError, match="softmax_cross_entropy") as info:
        L.get("crossentropy")
    assert "crossentropy" in str(info.value)


def test_public_names_resolve():
    assert L.__all__ and len(set(L.__all__)) == len(L.__all__)
    for name in L.__all__:
        assert getattr(L, name).__doc__, name
    for name in L.names():
        assert L.get(name).__name__ in L.__all__
