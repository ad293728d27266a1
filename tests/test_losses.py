"""Tests for jaxnn.losses: numpy references, optax agreement, extremes, shapes, labels, dtypes.

Registry-driven: every name in ``losses.names()`` (aliases included) goes through the NaN,
shape, extreme-input, bad-value and hyperparameter tests; a loss registered without an entry in
the tables below fails ``test_every_registered_loss_is_covered``.

Tolerances are float32 error bounds, not constants. Each loss is a sum of ``terms`` rounded
quantities whose magnitudes add up to a condition scale ``S`` (``error_scale``); XLA's float32
``exp``/``log``/``log1p`` are accurate to a few ulps, for which we allow ``FN_ULPS`` (in units
of the unit roundoff ``U32``) per call, two nested calls at most. So the float32 loss is within
``(terms + 2 * FN_ULPS + 4) * U32 * S`` of the exact loss at the same (rounded) inputs: every
reference is computed in float64 from the float32-rounded inputs.
"""

import inspect

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

U32 = 2.0**-24  # float32 unit roundoff
FN_ULPS = 8  # 4 ulps = 8 U32 per transcendental function call

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


def np_bce_terms(x, y):
    """-y log s and -(1-y) log(1-s) with log s = -log(1 + e^-x), a zero weight giving 0."""
    with np.errstate(invalid="ignore"):
        pos = np.where(y != 0, y * np.logaddexp(0.0, -x), 0.0)
        neg = np.where(y != 1, (1 - y) * np.logaddexp(0.0, x), 0.0)
    return pos, neg


def np_bce(x, y):
    pos, neg = np_bce_terms(x, y)
    return (pos + neg).reshape(len(x), -1).sum(1)


def np_ce(logits, labels):
    return np.array([np_logsumexp(z) - z[y] for z, y in zip(logits, labels, strict=True)])


def np_ce_onehot(logits, targets):
    log_p = logits - np_logsumexp(logits)[:, None]
    with np.errstate(invalid="ignore"):
        return -np.where(targets != 0, targets * log_p, 0.0).sum(1)


def np_ww_hinge(scores, labels, margin=1.0):
    out = []
    for s, y in zip(scores, labels, strict=True):
        out.append(sum(max(0.0, s[k] - s[y] + margin) for k in range(len(s)) if k != y))
    return np.array(out)


def np_ww_squared_hinge(scores, labels, margin=1.0):
    out = []
    for s, y in zip(scores, labels, strict=True):
        out.append(sum(max(0.0, s[k] - s[y] + margin) ** 2 for k in range(len(s)) if k != y))
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
    ("multiclass_squared_hinge_loss", L.multiclass_squared_hinge_loss, (LOGITS, LABELS),
     np_ww_squared_hinge),
]
IDS = [c[0] for c in CASES]
FIRST_CASE = {}  # loss function -> (args, reference) of its first case
for _, _fn, _args, _ref in CASES:
    FIRST_CASE.setdefault(_fn, (_args, _ref))

# Second-argument values each loss must refuse (eagerly) or turn into NaN (under jit), with the
# dtype they come in. Regression targets can be any real number.
BAD_TARGETS = {
    L.l1_loss: [],
    L.l2_loss: [],
    L.mse: [],
    L.sigmoid_binary_cross_entropy: [(2.0, np.float32), (-0.5, np.float32), (np.nan, np.float32)],
    L.softmax_cross_entropy: [(-1, np.int32), (C, np.int32)],
    L.softmax_cross_entropy_onehot: [
        (-0.5, np.float32),
        (np.inf, np.float32),
        (np.nan, np.float32),
    ],
    L.multiclass_hinge_loss: [(-1, np.int32), (C, np.int32)],
    L.multiclass_squared_hinge_loss: [(-1, np.int32), (C, np.int32)],
}
#: The losses of integer class labels, by their registry entries (aliases included).
INT_LABEL_LOSSES = [n for n in L.names() if L.entry(n).targets == "labels"]
LABEL_FNS_SET = {L.get(n) for n in INT_LABEL_LOSSES}


def non_target_mask(fn, args):
    """Entries of the first argument that may be -inf with a finite loss (the classes an example
    is not), or None for the regression losses, whose loss is then +inf."""
    first, second = (np.asarray(a) for a in args[:2])
    if fn in LABEL_FNS_SET:
        return np.arange(first.shape[-1]) != second[..., None]
    if fn in (L.sigmoid_binary_cross_entropy, L.softmax_cross_entropy_onehot):
        return second == 0
    return None


def _cast(args, dtype):
    """Float arrays to ``dtype``; integer labels stay integer."""
    return tuple(
        jnp.asarray(a, dtype) if np.issubdtype(np.asarray(a).dtype, np.floating) else jnp.asarray(a)
        for a in args
    )


def _f64(args):
    """The values the loss actually sees (rounded to their dtype), as float64 / integers."""
    return tuple(
        np.asarray(a, np.float64) if jnp.issubdtype(a.dtype, jnp.floating) else np.asarray(a)
        for a in args
    )


def error_scale(fn, args, margin=1.0):
    """(terms, S) per example: the float32 loss is within bound() = (terms + 2 FN_ULPS + 4) U32 S
    of the exact loss at ``args`` (float64 values of the inputs the loss saw)."""
    a, b = args[0], args[1]
    n = len(a)
    if fn in (L.l1_loss, L.l2_loss, L.mse):
        d = np.abs(b - a).reshape(n, -1)
        scale = {L.l1_loss: d.sum(1), L.l2_loss: (d**2).sum(1), L.mse: (d**2).mean(1)}[fn]
        return d.shape[1], scale
    if fn is L.sigmoid_binary_cross_entropy:
        pos, neg = np_bce_terms(a, b)
        return a[0].size, (np.abs(pos) + np.abs(neg)).reshape(n, -1).sum(1)
    shift = np.abs(a - a.max(-1, keepdims=True))  # |x_k - max|: rounded once each
    if fn is L.softmax_cross_entropy:
        return a.shape[-1], np.take_along_axis(shift, b[:, None], -1)[:, 0] + 1
    if fn is L.softmax_cross_entropy_onehot:
        with np.errstate(invalid="ignore"):
            return a.shape[-1], np.where(b != 0, b * (shift + np.log(a.shape[-1]) + 1), 0).sum(1)
    if fn in (L.multiclass_hinge_loss, L.multiclass_squared_hinge_loss):
        s_y = np.abs(np.take_along_axis(a, b[:, None], -1))
        with np.errstate(invalid="ignore"):
            m = np.where(np.isinf(a), 0, np.abs(a) + s_y + margin)
        if fn is L.multiclass_hinge_loss:
            return a.shape[-1], m.sum(1)
        return a.shape[-1], 3 * (m**2).sum(1)  # m^2 rounds once more and doubles m's error
    raise AssertionError(f"no error scale for {fn}")


def bound(fn, args, **kw):
    terms, scale = error_scale(fn, args, **kw)
    return (terms + 2 * FN_ULPS + 4) * U32 * scale


def assert_within(actual, desired, tol, what=""):
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    assert actual.shape == desired.shape, (what, actual.shape, desired.shape)
    err = np.abs(actual - desired)
    bad = ~((err <= tol) | (actual == desired))  # equal infinities are equal
    assert not bad.any(), (
        f"{what}: {actual[bad]} vs {desired[bad]} (bound {np.broadcast_to(tol, err.shape)[bad]})"
    )


# ---------------------------------------------------------------------------------------------
# References


def test_every_registered_loss_is_covered():
    for name in L.names():
        fn = L.get(name)
        assert fn in FIRST_CASE and fn in BAD_TARGETS, name


@pytest.mark.parametrize("name,fn,args,ref", CASES, ids=IDS)
def test_matches_numpy_reference(name, fn, args, ref):
    a = _cast(args, jnp.float32)
    out = fn(*a)
    assert out.shape == (B,) and out.dtype == jnp.float32
    a64 = _f64(a)
    assert_within(out, ref(*a64), bound(fn, a64), name)


@pytest.mark.parametrize("name,fn,args,ref", CASES, ids=IDS)
def test_jit_matches_eager(name, fn, args, ref):
    a = _cast(args, jnp.float32)
    # both within bound() of the exact value, whatever XLA fuses
    assert_within(jax.jit(fn)(*a), fn(*a), 2 * bound(fn, _f64(a)), name)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=str)
def test_dtype_preserved(dtype):
    """16-bit inputs: computed in float32 and rounded once to the 16-bit output."""
    u16 = float(jnp.finfo(dtype).eps) / 2
    for name, fn, args, ref in CASES:
        a = _cast(args, dtype)
        out = fn(*a)
        assert out.dtype == dtype, name
        a64 = _f64(a)
        want = ref(*a64)
        assert_within(out, want, u16 * np.abs(want) + bound(fn, a64), name)


def test_gradients_float64():
    """jax.grad of every loss (w.r.t. its first argument) against jaxnn.gradcheck in float64,
    all cases in one function so it compiles once (the report still names the failing loss);
    the hinge and l1 points are away from their kinks with probability 1.

    Expected error: centered differences with h = 1e-5 have truncation h^2 |f'''| / 6 < 1e-10
    and round-off ~ u64 |f| / h ~ 2e-9 for |f| ~ 200; the report floors each denominator at
    4x the measured noise / tol (~9e-3), so an error within the noise counts at most tol / 4,
    and the check resolves far finer than the 10% it requires."""
    with jax.enable_x64(True):
        firsts = {name: jnp.asarray(args[0], jnp.float64) for name, _, args, _ in CASES}
        rests = {name: _cast(args[1:], jnp.float64) for name, _, args, _ in CASES}

        @jax.jit
        def total(p):
            return sum(jnp.sum(fn(p[name], *rests[name])) for name, fn, _, _ in CASES)

        report = gradcheck.check_grads(total, firsts)
    assert set(report.errors) == {f"['{name}']" for name in IDS}
    assert report.passed and report.verdict == "passed", report
    assert report.max_error < report.tol / 2 and report.resolution < 1e-6


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
    z = jnp.asarray(LOGITS, jnp.float32)
    g = jgrad(lambda v: jnp.sum(L.softmax_cross_entropy(v, jnp.asarray(LABELS))))(z)
    z64 = np.asarray(z, np.float64)
    p = np.exp(z64 - np_logsumexp(z64)[:, None])
    onehot = np.eye(C)[LABELS]
    # softmax: C-term sum, exp and a division: (C + FN_ULPS + 2) U32 relative; minus the one-hot
    assert_within(g, p - onehot, (C + FN_ULPS + 4) * U32 * (p + onehot))


# ---------------------------------------------------------------------------------------------
# Agreement with optax where it defines the same thing


def test_cross_entropy_equals_optax():
    z, y = jnp.asarray(LOGITS, jnp.float32), jnp.asarray(LABELS)
    a64 = _f64((z, y))
    # optax computes logsumexp(z) - z_y unshifted: within bound of the exact value with the
    # scale |logsumexp| + |z_y| + 1 instead of ours; the difference is within the sum
    lse = np_logsumexp(a64[0])
    theirs = (C + 2 * FN_ULPS + 4) * U32 * (np.abs(lse) + np.abs(a64[0][np.arange(B), LABELS]) + 1)
    assert_within(
        L.softmax_cross_entropy(z, y),
        optax.losses.softmax_cross_entropy_with_integer_labels(z, y),
        bound(L.softmax_cross_entropy, a64) + theirs,
    )
    t = jnp.asarray(PROBS, jnp.float32)
    a64 = _f64((z, t))
    theirs = (
        (C + 2 * FN_ULPS + 4) * U32 * (a64[1] * (np.abs(a64[0]) + np.abs(lse)[:, None] + 1)).sum(1)
    )
    assert_within(
        L.softmax_cross_entropy_onehot(z, t),
        optax.losses.softmax_cross_entropy(z, t),
        bound(L.softmax_cross_entropy_onehot, a64) + theirs,
    )


def test_sigmoid_bce_equals_optax_summed_over_non_batch_axes():
    x, y = jnp.asarray(BIN_LOGITS, jnp.float32), jnp.asarray(BIN_LABELS, jnp.float32)
    tol = bound(L.sigmoid_binary_cross_entropy, _f64((x, y)))
    theirs = optax.losses.sigmoid_binary_cross_entropy(x, y).sum(1)
    assert_within(L.sigmoid_binary_cross_entropy(x, y), theirs, 2 * tol)  # same formula


def test_l2_loss_is_twice_optax_l2_summed():
    p, t = jnp.asarray(PRED, jnp.float32), jnp.asarray(TARGET, jnp.float32)
    a64 = _f64((p, t))
    twice = 2 * optax.losses.l2_loss(p, t).reshape(B, -1).sum(1)  # x2 and x0.5 are exact
    assert_within(L.l2_loss(p, t), twice, 2 * bound(L.l2_loss, a64))
    mean = optax.losses.squared_error(p, t).reshape(B, -1).mean(1)
    assert_within(L.mse(p, t), mean, 2 * bound(L.mse, a64))


def test_hinge_is_weston_watkins_sum_not_optax_crammer_singer():
    # Two classes (1 and 2) violate the margin of the correct class 0. Every value here is a
    # short binary fraction: all the arithmetic is exact.
    scores = jnp.array([[2.0, 2.5, 1.5, -3.0]])
    labels = jnp.array([0])
    ours = float(L.multiclass_hinge_loss(scores, labels)[0])
    assert ours == np_ww_hinge(np.asarray(scores), [0])[0] == (2.5 - 2 + 1) + (1.5 - 2 + 1)
    cs = float(optax.losses.multiclass_hinge_loss(scores, labels)[0])
    assert cs == 2.5 - 2 + 1  # optax: the max violator only
    # With at most one violator the two forms agree.
    one = jnp.array([[2.0, 2.5, -1.5, -3.0]])
    np.testing.assert_array_equal(
        L.multiclass_hinge_loss(one, labels), optax.losses.multiclass_hinge_loss(one, labels)
    )


def test_hinge_margin_keyword_and_kink():
    s = jnp.array([[1.0, 0.5, 0.0]])
    y = jnp.array([0])
    np.testing.assert_array_equal(  # exact binary fractions
        L.multiclass_hinge_loss(s, y, margin=2.0), np_ww_hinge(np.asarray(s), [0], margin=2.0)
    )
    with pytest.raises(TypeError):
        L.multiclass_hinge_loss(s, y, 2.0)  # margin is keyword-only
    # At exactly the margin (s_1 - s_0 + 0.5 = 0) the term's gradient is 0.
    g = jgrad(lambda v: L.multiclass_hinge_loss(v, y, margin=0.5)[0])(s)
    np.testing.assert_array_equal(g, [[0.0, 0.0, 0.0]])


# ---------------------------------------------------------------------------------------------
# Registry-driven: NaN, extremes, shapes, bad values, hyperparameters


@pytest.mark.parametrize("name", L.names())
def test_nan_prediction_gives_nan_for_that_example_only(name):
    fn = L.get(name)
    args, _ = FIRST_CASE[fn]
    a = _cast(args, jnp.float32)
    first = np.asarray(a[0]).copy()
    first.reshape(B, -1)[2, 1] = np.nan  # a view: one entry of example 2
    clean = fn(*a)
    for call in (fn, jax.jit(fn)):
        out = np.asarray(call(jnp.asarray(first), *a[1:]))
        assert np.isnan(out[2]), (name, out)
        rest = np.arange(B) != 2
        # the other examples are computed exactly as without the NaN (rows are independent)
        assert_within(out[rest], clean[rest], 2 * bound(fn, _f64(a))[rest], name)


@pytest.mark.parametrize("name", L.names())
def test_extreme_inputs_finite_with_finite_gradients(name):
    """Predictions/logits of magnitude 1e4 give the float64 reference's finite value; -inf at the
    classes an example is not gives a finite loss and gradient (+inf, the true value, for the
    regression losses)."""
    fn = L.get(name)
    args, ref = FIRST_CASE[fn]
    signs = np.where(RNG.random(np.shape(args[0])) < 0.5, 1.0, -1.0)
    for first in (1e4 * signs, np.where(signs > 0, 1e4, 0.0)):
        a = _cast((first, *args[1:]), jnp.float32)
        out = fn(*a)
        a64 = _f64(a)
        assert_within(out, ref(*a64), bound(fn, a64), f"{name} 1e4")
        g = jgrad(lambda v, a=a: jnp.sum(fn(v, *a[1:])))(a[0])
        assert bool(jnp.all(jnp.isfinite(g))), (name, g)
    mask = non_target_mask(fn, args)
    minus_inf = np.where(mask if mask is not None else True, -np.inf, args[0])
    a = _cast((minus_inf, *args[1:]), jnp.float32)
    out = np.asarray(fn(*a))
    if mask is None:
        np.testing.assert_array_equal(out, np.inf)
        return
    a64 = _f64(a)
    assert_within(out, ref(*a64), bound(fn, a64), f"{name} -inf")
    g = jgrad(lambda v: jnp.sum(fn(v, *a[1:])))(a[0])
    assert bool(jnp.all(jnp.isfinite(g))), (name, g)


@pytest.mark.parametrize("name", L.names())
def test_shape_mismatch_raises_naming_the_argument(name):
    fn = L.get(name)
    args, _ = FIRST_CASE[fn]
    second = list(inspect.signature(fn).parameters)[1]
    a = _cast(args, jnp.float32)
    for bad in (a[1][:-1], a[1][..., None]):  # fewer examples; an extra axis
        with pytest.raises(ValueError, match=f"`{second}`"):
            fn(a[0], bad)


@pytest.mark.parametrize("name", L.names())
def test_bad_targets_eager_error_jit_nan(name):
    """Labels/targets that make the loss meaningless: eagerly a ValueError naming the argument;
    under jit (values unknown at trace time) NaN for that example, the others unchanged."""
    fn = L.get(name)
    args, _ = FIRST_CASE[fn]
    a = _cast(args, jnp.float32)
    second = list(inspect.signature(fn).parameters)[1]
    clean = np.asarray(fn(*a))
    for value, dtype in BAD_TARGETS[fn]:
        bad = np.asarray(a[1]).astype(dtype)
        bad.reshape(B, -1)[1, 0] = value  # a view: the first entry of example 1
        for arg in (bad, jnp.asarray(bad)):
            with pytest.raises(ValueError, match=f"`{second}` must"):
                fn(a[0], arg)
        out = np.asarray(jax.jit(fn)(a[0], jnp.asarray(bad)))
        assert np.isnan(out[1]), (name, value, out)
        rest = np.arange(B) != 1
        assert_within(out[rest], clean[rest], 2 * bound(fn, _f64(a))[rest], f"{name} {value}")


@pytest.mark.parametrize("name", INT_LABEL_LOSSES)
def test_labels_beyond_int32_do_not_wrap(name):
    """numpy int64 2**32 + 2 would become the valid class 2 in int32; uint64 2**63 would become
    a negative int32: both are caught in the caller's dtype and named."""
    fn = L.get(name)
    z = jnp.asarray(LOGITS[:3], jnp.float32)
    for bad in (np.array([0, 2**32 + 2, 1], np.int64), np.array([0, 2**63, 1], np.uint64)):
        with pytest.raises(ValueError, match=rf"`labels` must lie in \[0, {C}\).*got {bad[1]}"):
            fn(z, bad)
    with pytest.raises(TypeError, match="integer"):
        fn(z, jnp.array([0.0, 1.0, 2.0]))
    # in range, int64 labels are fine (and equal to int32 ones)
    good = np.array([0, 4, 1], np.int64)
    np.testing.assert_array_equal(fn(z, good), fn(z, good.astype(np.int32)))


HYPERPARAMETERS = [
    (name, p)
    for name in L.names()
    for p, spec in inspect.signature(L.get(name)).parameters.items()
    if spec.kind is inspect.Parameter.KEYWORD_ONLY
]


@pytest.mark.parametrize("name,param", HYPERPARAMETERS)
def test_bad_hyperparameter_eager_error_jit_nan(name, param):
    """Every keyword-only hyperparameter of every registered loss: NaN, inf or a negative value
    is a ValueError naming it eagerly, and NaN for every example under jit."""
    fn = L.get(name)
    args, _ = FIRST_CASE[fn]
    a = _cast(args, jnp.float32)
    for value in (np.nan, np.inf, -1.0):
        with pytest.raises(ValueError, match=f"`{param}` must"):
            fn(*a, **{param: value})
        out = jax.jit(lambda v: fn(*a, **{param: v}))(value)
        assert bool(jnp.all(jnp.isnan(out))), (name, param, value, out)
    assert len(HYPERPARAMETERS) >= 2  # the hinge margin, by name and by alias


def test_hinge_nan_scores_are_not_zero():
    """A diverged model (all scores NaN) used to get loss 0 from where(margins > 0, ...)."""
    out = L.multiclass_hinge_loss(jnp.full((2, 3), jnp.nan), jnp.array([0, 2]))
    assert bool(jnp.all(jnp.isnan(out)))


# ---------------------------------------------------------------------------------------------
# Worked extreme values


def test_cross_entropy_worked_extremes():
    """Rows whose arithmetic is exact (shifted logits 0 and -1e4/-2e4, exp underflows to exactly
    0), except log 2, which is within FN_ULPS of the truth."""
    z = jnp.array([[1e4, -1e4, 0.0], [-jnp.inf, 3.0, -jnp.inf], [1e4, 1e4, -jnp.inf]])
    y = jnp.array([1, 1, 0])
    expected = np.array([2e4, 0.0, np.log(2.0)])
    for loss, target in (
        (L.softmax_cross_entropy, y),
        (L.softmax_cross_entropy_onehot, jax.nn.one_hot(y, 3)),
    ):
        out = loss(z, target)
        assert_within(out, expected, FN_ULPS * U32 * expected)
        g = jgrad(lambda v, loss=loss, target=target: jnp.sum(loss(v, target)))(z)
        np.testing.assert_array_equal(g, [[1, -1, 0], [0, 0, 0], [-0.5, 0.5, 0]])


def test_hinge_and_bce_worked_extremes():
    s = jnp.array([[1e4, -1e4, -jnp.inf], [-1e4, 1e4, 0.0]])
    y = jnp.array([0, 0])
    # integers below 2**24: exact in float32
    np.testing.assert_array_equal(L.multiclass_hinge_loss(s, y), [0.0, 2e4 + 1 + 1e4 + 1])
    g = jgrad(lambda v: jnp.sum(L.multiclass_hinge_loss(v, y)))(s)
    np.testing.assert_array_equal(g, [[0, 0, 0], [-2, 1, 1]])
    x = jnp.array([[1e4, -1e4, -jnp.inf, jnp.inf, 0.0]])
    lab = jnp.array([[1.0, 0.0, 0.0, 1.0, 1.0]])
    # every term but the last is exactly 0 (log1p(exp(-1e4)) = log1p(0)); the last is log 2
    out = L.sigmoid_binary_cross_entropy(x, lab)
    assert_within(out, [np.log(2.0)], 2 * FN_ULPS * U32 * np.log(2.0))
    gb = jgrad(lambda v: jnp.sum(L.sigmoid_binary_cross_entropy(v, lab)))(x)
    np.testing.assert_array_equal(gb, [[0.0, 0.0, 0.0, 0.0, -0.5]])
    wrong = L.sigmoid_binary_cross_entropy(jnp.array([[1e4]]), jnp.array([[0.0]]))
    np.testing.assert_array_equal(wrong, [1e4])


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
    a64 = (z.astype(np.float64), np.array([label]))
    assert_within(out, np_ce(*a64), bound(L.softmax_cross_entropy, a64))


# ---------------------------------------------------------------------------------------------
# Shapes and labels


def test_per_example_shapes():
    assert L.mse(jnp.ones((4, 2, 3)), jnp.zeros((4, 2, 3))).shape == (4,)
    assert L.mse(jnp.ones(4), jnp.zeros(4)).shape == (4,)
    assert L.l2_loss(jnp.ones(()), jnp.zeros(())).shape == ()
    # [batch, time, classes] logits: per-example sums over time.
    z = jnp.asarray(RNG.standard_normal((2, 3, 4)), jnp.float32)
    y = jnp.array([[0, 1, 2], [3, 0, 1]])
    out = L.softmax_cross_entropy(z, y)
    assert out.shape == (2,)
    flat = (np.asarray(z, np.float64).reshape(6, 4), np.asarray(y).ravel())
    per_step_bound = bound(L.softmax_cross_entropy, flat).reshape(2, 3).sum(1)
    want = np_ce(*flat).reshape(2, 3)
    assert_within(out, want.sum(1), per_step_bound + 3 * U32 * want.sum(1))  # + the sum of 3
    # One example at a time under vmap.
    zl = jnp.asarray(LOGITS, jnp.float32)
    per = jax.vmap(L.softmax_cross_entropy)(zl, jnp.asarray(LABELS))
    a64 = _f64((zl, jnp.asarray(LABELS)))
    assert_within(per, np_ce(*a64), bound(L.softmax_cross_entropy, a64))


@pytest.mark.parametrize("name", INT_LABEL_LOSSES)
def test_out_of_range_labels_under_vmap_give_nan_for_that_example(name):
    fn = L.get(name)
    z = jnp.asarray(LOGITS[:4], jnp.float32)
    good = jnp.asarray(LABELS[:4])
    bad = good.at[1].set(C).at[2].set(-1)
    ref = fn(z, good)
    out = jax.vmap(fn)(z, bad)
    assert bool(jnp.isnan(out[1])) and bool(jnp.isnan(out[2]))
    keep = jnp.array([0, 3])
    a64 = _f64((z, good))
    assert_within(out[keep], ref[keep], 2 * bound(fn, a64)[np.asarray(keep)])


# ---------------------------------------------------------------------------------------------
# Registry and public names


def test_get_and_names():
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


# ---------------------------------------------------------------------------------------------
# Gradients with respect to the targets (soft targets, distillation): optax's, also at 0 and 1


def _targets_with_exact_zeros_and_ones(shape, rng):
    """Random targets in [0, 1] where about a third of the entries are exactly 0 and a third
    exactly 1 (the points a "double where" on the weight used to get wrong)."""
    t = rng.uniform(size=shape)
    pick = rng.integers(0, 3, shape)
    return np.where(pick == 0, 0.0, np.where(pick == 1, 1.0, t))


TARGET_GRAD_CASES = [
    ("softmax_cross_entropy_onehot", L.softmax_cross_entropy_onehot,
     optax.losses.softmax_cross_entropy),
    ("sigmoid_binary_cross_entropy", L.sigmoid_binary_cross_entropy,
     optax.losses.sigmoid_binary_cross_entropy),
]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16], ids=str)
@pytest.mark.parametrize("name,fn,theirs", TARGET_GRAD_CASES, ids=[c[0] for c in TARGET_GRAD_CASES])
def test_target_gradients_equal_optax(name, fn, theirs, dtype):
    """d(sum of losses)/d(targets) = optax's (-log_softmax(x), resp. -x), also at targets exactly
    0 and 1. The reference is optax in float64 on the same dtype-rounded inputs; ours computes in
    float32: -log p_k = lse - x_k is within (C + 2 FN_ULPS + 4) U32 (|x_k - max| + log C + 1) of
    the truth (the error_scale rule), the binary -x = softplus(-x) - softplus(x) within
    (2 FN_ULPS + 4) U32 (|x| + 2 log 2); a 16-bit gradient is then rounded once (half its eps)."""
    rng = np.random.default_rng(7)
    x = jnp.asarray(3.0 * rng.standard_normal((B, C)), dtype)
    t = jnp.asarray(_targets_with_exact_zeros_and_ones((B, C), rng), dtype)
    t = t.at[0].set(jax.nn.one_hot(2, C, dtype=dtype))  # a one-hot row too
    ours = jgrad(lambda tt: jnp.sum(fn(x, tt)))(t)
    assert ours.dtype == dtype
    with jax.enable_x64(True):
        x64 = jnp.asarray(np.asarray(x, np.float64))
        t64 = jnp.asarray(np.asarray(t, np.float64))
        want = np.asarray(jax.grad(lambda tt: jnp.sum(theirs(x64, tt)))(t64))
    xs = np.asarray(x64)
    if fn is L.softmax_cross_entropy_onehot:
        scale = np.abs(xs - xs.max(-1, keepdims=True)) + np.log(C) + 1
        tol = (C + 2 * FN_ULPS + 4) * U32 * scale
        np.testing.assert_allclose(want, -(xs - np_logsumexp(xs)[:, None]), rtol=1e-12)
    else:
        tol = (2 * FN_ULPS + 4) * U32 * (np.abs(xs) + 2 * np.log(2))
        np.testing.assert_allclose(want, -xs, rtol=1e-12, atol=1e-12)
    tol = tol + float(jnp.finfo(dtype).eps) / 2 * np.abs(want)
    assert_within(ours, want, tol, f"{name} {jnp.dtype(dtype).name}")
    assert np.any(np.asarray(t) == 0) and np.any(np.asarray(t) == 1)


def test_target_gradients_at_zero_and_one_worked_example():
    """The issue's reproduction: [0, 1, 0] targets used to get [0, 0.464, 0]."""
    z = jnp.array([[1.0, 2.0, 0.5]])
    g = jgrad(lambda t: jnp.sum(L.softmax_cross_entropy_onehot(z, t)))(jnp.array([[0.0, 1.0, 0.0]]))
    lse = np_logsumexp(np.array([1.0, 2.0, 0.5]))
    assert_within(g, [[lse - 1.0, lse - 2.0, lse - 0.5]], 16 * U32 * 2)
    x = jnp.array([1.5, -0.7])
    gb = jgrad(lambda y: jnp.sum(L.sigmoid_binary_cross_entropy(x, y)))(jnp.array([0.0, 1.0]))
    assert_within(gb, [-1.5, 0.7], (2 * FN_ULPS + 4) * U32 * 4)


def test_target_and_logit_gradients_together_at_minus_inf_logits():
    """Both gradients at once with -inf logits of zero-target classes: the loss is finite, the
    logit gradient finite, and the target gradient of the dropped (infinite) term 0 -- the
    documented convention (optax: NaN loss, infinite target gradient); finite terms keep theirs."""
    z = jnp.array([[-jnp.inf, 2.0, 0.5]])
    t = jnp.array([[0.0, 1.0, 0.0]])
    gz, gt = jax.jit(jax.grad(lambda a, b: jnp.sum(L.softmax_cross_entropy_onehot(a, b)),
                              argnums=(0, 1)))(z, t)
    assert bool(jnp.all(jnp.isfinite(gz))) and float(gt[0, 0]) == 0.0
    lse = np_logsumexp(np.array([2.0, 0.5]))
    assert_within(gt[0, 1:], [lse - 2.0, lse - 0.5], 16 * U32 * 2)
    x = jnp.array([[-jnp.inf, jnp.inf, 0.5]])
    y = jnp.array([[0.0, 1.0, 0.0]])
    gx, gy = jax.jit(jax.grad(lambda a, b: jnp.sum(L.sigmoid_binary_cross_entropy(a, b)),
                              argnums=(0, 1)))(x, y)
    np.testing.assert_array_equal(gy[0, :2], [0.0, 0.0])
    assert_within(gy[0, 2:], [-0.5], 16 * U32)
    assert bool(jnp.all(jnp.isfinite(gx)))


# ---------------------------------------------------------------------------------------------
# Integer labels beyond int32 under jit / vmap


LABEL_FNS = [(n, L.get(n)) for n in INT_LABEL_LOSSES] + [
    (f"for_labels({n})", L.for_labels(n)) for n in ("mse", "sigmoid_binary_cross_entropy")]


@pytest.mark.parametrize("name,fn", LABEL_FNS, ids=[n for n, _ in LABEL_FNS])
def test_int64_labels_beyond_int32_inside_transformations(name, fn):
    """A numpy int64 label 2**32 + 2 (class 2 once wrapped to int32) is never a loss: seen as
    numpy inside jit / grad (closed over) it is the eager ValueError, at trace time; traced as
    int64 (x64 enabled) under jit and vmap it makes that example NaN; the other examples keep
    their values."""
    z = jnp.asarray(LOGITS[:3], jnp.float32)
    bad = np.array([0, 2**32 + 2, 1], np.int64)
    for transformed in (jax.jit(lambda v: fn(v, bad)), jax.grad(lambda v: jnp.sum(fn(v, bad)))):
        with pytest.raises(ValueError, match=rf"`labels` must lie in \[0, {C}\).*got {bad[1]}"):
            transformed(z)
    clean = np.asarray(fn(z, np.array([0, 2, 1], np.int32)))
    with jax.enable_x64(True):
        for call in (jax.jit(fn), jax.vmap(fn)):
            out = np.asarray(call(z, bad))
            assert np.isnan(out[1]), (name, out)
            assert_within(out[[0, 2]], clean[[0, 2]], 1e-6 * (1 + np.abs(clean[[0, 2]])), name)


@pytest.mark.parametrize("name", ["mse", "sigmoid_binary_cross_entropy"])
def test_for_labels_one_example_at_a_time_under_vmap(name):
    """scores [C] with a scalar label is one example: a scalar loss, as for the labels losses."""
    fn = L.for_labels(name)
    z = jnp.asarray(LOGITS[:4], jnp.float32)
    y = jnp.asarray(LABELS[:4])
    per = jax.vmap(fn)(z, y)
    assert per.shape == (4,)
    assert_within(per, fn(z, y), 1e-6 * (1 + np.abs(np.asarray(fn(z, y)))), name)
    out = jax.vmap(fn)(z, y.at[1].set(C))
    assert np.isnan(np.asarray(out)[1]) and not np.isnan(np.asarray(out)[[0, 2, 3]]).any()
