r"""Loss functions. Every loss returns **per-example** values of shape ``[batch]``; you reduce.

Axis 0 is the batch axis. Regression losses and :func:`sigmoid_binary_cross_entropy` reduce over
all other axes; the classification losses take logits/scores ``[batch, ..., classes]`` and reduce
over the class axis (and sum any axes between batch and classes). A single unbatched example
(``pred`` of shape ``[]``, or logits ``[C]`` with a scalar label) gives a scalar, so the losses
also work one example at a time under ``jax.vmap``.

Rules shared by all losses:

* **Shapes are checked statically** -- predictions and targets are never broadcast against each
  other; a mismatch raises ``ValueError`` naming the argument and the expected shape.
* **Bad values are never a plausible number.** Where values are concrete (eager calls, numpy
  inputs) they are checked before anything is computed and a ``ValueError`` names the argument:
  integer labels outside ``[0, num_classes)`` (checked in the caller's dtype, so numpy int64
  labels ``>= 2**31`` do not wrap to a valid class), binary labels outside ``[0, 1]``, negative or
  non-finite soft targets, a negative or non-finite ``margin``. Under ``jit`` or ``vmap`` the
  values are not known at trace time: such an input makes **that example's loss NaN** (JAX's
  gather would otherwise clamp or wrap a label). Integer labels must have an integer dtype (else
  ``TypeError``).
* **NaN in, NaN out**: a NaN prediction/logit/score gives a NaN loss for its example, in every
  loss (a diverged model never reports a finite loss).
* **Stable numerics**: cross-entropy is computed from logits with :func:`jax.nn.log_softmax`
  (max subtracted under ``stop_gradient``) and is finite with finite gradients for logits of
  magnitude ``1e4`` and for ``-inf`` logits of non-target classes.
* The output keeps the input's float dtype; 16-bit inputs are computed in float32 and cast back.

**Integer labels wider than int32.** Wherever a loss sees the caller's array -- an eager call, or
a numpy / Python array used inside a jitted, vmapped or differentiated function (closed over, not
passed as the transformation's argument) -- the range is checked in the array's own dtype before
any conversion: a numpy int64 label ``2**32 + 2`` is a ``ValueError`` naming ``labels`` (at trace
time under ``jit``), never class 2. A *traced* label is checked under ``jit``/``vmap`` in its
traced dtype: with x64 enabled an int64 label beyond the classes gives NaN; with x64 disabled
(JAX's default) traced labels are int32, and JAX itself converts a numpy int64 array passed as an
*argument* of ``jax.jit`` or ``jax.vmap`` to int32 at that boundary, before any code of the loss
runs -- ``2**32 + 2`` arrives as the valid class 2 and cannot be told from it. So check such labels
where they are still numpy (call the loss once eagerly, or compare them with the number of
classes), pass them as int32, or enable x64; out-of-range int32 values (negative, ``>= C``) are
NaN as for every traced bad label.

**Gradients with respect to targets** (soft targets, label smoothing, distillation) are the
derivative of the formula, as in optax: ``-log softmax(x)_k`` for
:func:`softmax_cross_entropy_onehot` and ``-x`` for :func:`sigmoid_binary_cross_entropy`, also
at targets exactly 0 or 1. The one exception is a term of weight 0 whose log-probability is
infinite (a ``-inf`` logit of a class with target 0): the term is dropped, so its value is 0
(optax: NaN) and its target gradient 0 (optax: infinite).

Example:

>>> import jax.numpy as jnp
>>> from jaxnn import losses
>>> losses.softmax_cross_entropy(jnp.array([[0.0, 0.0]]), jnp.array([1]))
Array([0.6931472], dtype=float32)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

from jaxnn import registry as _registry

__all__ = [
    "l1_loss",
    "l2_loss",
    "mse",
    "sigmoid_binary_cross_entropy",
    "softmax_cross_entropy",
    "softmax_cross_entropy_onehot",
    "multiclass_hinge_loss",
    "multiclass_squared_hinge_loss",
    "get",
    "names",
    "entry",
    "for_labels",
    "LossEntry",
    "REGISTRY",
]


# --------------------------------------------------------------------------------------------
# helpers


def _float_dtype(*xs: Array):
    """(output dtype, compute dtype): the inputs' float dtype, and at least float32 for sums."""
    dtype = jnp.result_type(*xs)
    if not jnp.issubdtype(dtype, jnp.inexact):
        dtype = jnp.dtype(jnp.float32)
    return dtype, jnp.promote_types(dtype, jnp.float32)


def _sum_non_batch(x: Array) -> Array:
    """Sum over every axis but the first (batch) one."""
    return jnp.sum(x, axis=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def _check_same_shape(fn: str, a: Array, b: Array, a_name: str, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{fn}: shape mismatch: `{b_name}` must have the shape of `{a_name}`, {a.shape}; "
            f"got {b.shape}. (No broadcasting between predictions and targets.)"
        )


def _host_values(x) -> np.ndarray | None:
    """The values of a concrete input as numpy (in its own dtype), or None when traced (or not
    addressable from this process): value checks run only where values are known."""
    if isinstance(x, jax.core.Tracer):
        return None
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return None
    return np.asarray(x)


def _check_int_labels(fn: str, logits: Array, labels: ArrayLike, arg: str) -> Array:
    """Static dtype/shape checks for integer class labels, and an eager range check.

    The range is checked on the caller's values in their own dtype, before any conversion: with
    x64 disabled, JAX would turn an int64 label ``2**32 + 2`` into the valid class 2.
    """
    values = _host_values(labels)
    dtype = values.dtype if values is not None else jnp.result_type(labels)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(
            f"{fn}: `labels` must be integer class ids, got dtype {dtype}. "
            "For one-hot or soft targets use softmax_cross_entropy_onehot."
        )
    if logits.ndim < 1:
        raise ValueError(f"{fn}: `{arg}` must have a class axis, shape [batch, classes]; got [].")
    shape = np.shape(values) if values is not None else np.shape(labels)
    if shape != logits.shape[:-1]:
        raise ValueError(
            f"{fn}: shape mismatch: `labels` must have shape {logits.shape[:-1]} "
            f"(`{arg}`.shape[:-1] for `{arg}` of shape {logits.shape}); got {shape}."
        )
    num_classes = logits.shape[-1]
    if num_classes < 1:
        raise ValueError(f"{fn}: `{arg}` has no classes (shape {logits.shape}).")
    if values is not None and values.size:
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{fn}: `labels` must lie in [0, {num_classes}) for {num_classes} classes; "
                f"got {bad}."
            )
        return jnp.asarray(values)
    return jnp.asarray(labels)


def _check_values(fn: str, name: str, values: np.ndarray | None, ok, expected: str) -> None:
    """Eager value check: ``ValueError`` naming ``name`` unless ``ok(values)`` holds everywhere."""
    if values is None or not values.size:
        return
    values = values.astype(np.float64) if values.dtype != np.float64 else values
    good = ok(values)
    if not good.all():
        raise ValueError(f"{fn}: `{name}` must be {expected}; got {values[~good].flat[0]}.")


def _in_unit_interval(v):
    return (v >= 0) & (v <= 1)


def _finite_non_negative(v):
    return np.isfinite(v) & (v >= 0)


def _label_mask(labels: Array, num_classes: int) -> Array:
    """Boolean one-hot ``[..., C]``; all-False rows for out-of-range labels."""
    return labels[..., None] == jnp.arange(num_classes, dtype=labels.dtype)


def _weighted(w: Array, log_term: Array) -> Array:
    """``w * log_term`` elementwise, where ``log_term >= 0`` may be ``+inf`` where ``w == 0``.

    A zero-weighted ``+inf`` term (the log-probability of a ``-inf`` logit) gives 0, not
    ``0 * inf = nan``, and sends no NaN gradient to the logits. Only an *infinite* term is
    replaced (and only where its weight is 0), so every finite term keeps its derivative with
    respect to the weight: ``d/dw = log_term`` also at ``w = 0`` (a "double where" on
    ``w != 0`` would drop it). NaN terms are kept: NaN in, NaN out.
    """
    # Double where on the infinite terms only: the product never sees 0 * inf.
    keep = (w != 0) | (log_term != jnp.inf)
    return w * jnp.where(keep, log_term, 0)


def _nan_if_invalid(loss: Array, labels: Array, num_classes: int) -> Array:
    """NaN where a label is outside [0, C): a traced bad label must not look like a loss."""
    valid = (labels >= 0) & (labels < num_classes)
    return jnp.where(valid, loss, jnp.nan)


# --------------------------------------------------------------------------------------------
# regression
#
# Each public loss checks its arguments in Python (shapes and dtypes are static; label values
# only when concrete), then calls a jitted kernel: one dispatch when called eagerly.


def l1_loss(pred: ArrayLike, target: ArrayLike) -> Array:
    r"""Per-example L1 (absolute) error, summed over non-batch axes.

    .. math:: \ell_i = \sum_j |t_{ij} - p_{ij}|

    **Kink:** the gradient at ``p = t`` is 0 (``d|x|/dx`` at 0, as in ``jnp.abs``).

    Args:
      pred: predictions ``[batch, ...]``.
      target: targets, same shape as ``pred``.

    Returns:
      ``[batch]`` losses (a scalar for scalar inputs).

    >>> l1_loss(jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 4.0]]))
    Array([3.], dtype=float32)
    """
    pred, target = jnp.asarray(pred), jnp.asarray(target)
    _check_same_shape("l1_loss", pred, target, "pred", "target")
    return _l1(pred, target)


@jax.jit
def _l1(pred: Array, target: Array) -> Array:
    dtype, acc = _float_dtype(pred, target)
    return _sum_non_batch(jnp.abs(target.astype(acc) - pred.astype(acc))).astype(dtype)


def l2_loss(pred: ArrayLike, target: ArrayLike) -> Array:
    r"""Per-example sum of squared differences over non-batch axes.

    .. math:: \ell_i = \sum_j (t_{ij} - p_{ij})^2

    Note: ``optax.l2_loss`` is the elementwise ``0.5 * (t - p)**2``; this is twice that, summed.

    >>> l2_loss(jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 4.0]]))
    Array([5.], dtype=float32)
    """
    pred, target = jnp.asarray(pred), jnp.asarray(target)
    _check_same_shape("l2_loss", pred, target, "pred", "target")
    return _l2(pred, target)


@jax.jit
def _l2(pred: Array, target: Array) -> Array:
    dtype, acc = _float_dtype(pred, target)
    return _sum_non_batch(jnp.square(target.astype(acc) - pred.astype(acc))).astype(dtype)


def mse(pred: ArrayLike, target: ArrayLike) -> Array:
    r"""Per-example mean squared error over non-batch axes.

    .. math:: \ell_i = \frac{1}{d} \sum_{j=1}^{d} (t_{ij} - p_{ij})^2

    >>> mse(jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 4.0]]))
    Array([2.5], dtype=float32)
    """
    pred, target = jnp.asarray(pred), jnp.asarray(target)
    _check_same_shape("mse", pred, target, "pred", "target")
    return _mse(pred, target)


@jax.jit
def _mse(pred: Array, target: Array) -> Array:
    dtype, acc = _float_dtype(pred, target)
    sq = jnp.square(target.astype(acc) - pred.astype(acc))
    out = jnp.mean(sq, axis=tuple(range(1, sq.ndim))) if sq.ndim > 1 else sq
    return out.astype(dtype)


# --------------------------------------------------------------------------------------------
# classification


def sigmoid_binary_cross_entropy(logits: ArrayLike, labels: ArrayLike) -> Array:
    r"""Per-example binary cross-entropy from logits, summed over non-batch axes.

    .. math::
        \ell_i = -\sum_j \left[ y_{ij} \log \sigma(x_{ij})
            + (1 - y_{ij}) \log(1 - \sigma(x_{ij})) \right],
        \qquad \log \sigma(x) = -\operatorname{softplus}(-x)

    Elementwise it equals :func:`optax.losses.sigmoid_binary_cross_entropy`; the sum over
    non-batch axes (independent binary labels, e.g. multi-label ``[batch, labels]``) makes it
    per-example. Stable log-sigmoid form: finite for logits of any magnitude; an infinite term
    whose weight is 0 is dropped, so ``logits = -inf`` with ``label = 0`` gives 0, not
    ``0 * inf = nan``. Gradients: :math:`\sigma(x) - y` with respect to the logits and
    :math:`\partial \ell / \partial y = -x` with respect to the labels (as optax's), also at
    labels exactly 0 and 1 (0 instead of infinite at an infinite logit).

    Args:
      logits: ``[batch, ...]`` real-valued logits.
      labels: same shape; 0/1 labels or probabilities in ``[0, 1]``.

    Returns:
      ``[batch]`` losses; NaN for an example with a NaN logit. Under ``jit`` an example with a
      label outside ``[0, 1]`` (or NaN) gets **NaN** (outside ``[0, 1]`` the formula can go
      negative); eager calls raise ``ValueError`` instead.

    Raises:
      ValueError: on a shape mismatch, or (eagerly) a label outside ``[0, 1]``.

    >>> sigmoid_binary_cross_entropy(jnp.array([0.0]), jnp.array([1.0]))
    Array([0.6931472], dtype=float32)
    """
    fn = "sigmoid_binary_cross_entropy"
    values = _host_values(labels)
    _check_values(
        fn, "labels", values, _in_unit_interval, "in [0, 1] (0/1 labels or probabilities)"
    )
    logits = jnp.asarray(logits)
    labels = jnp.asarray(values if values is not None else labels)
    _check_same_shape(fn, logits, labels, "logits", "labels")
    return _sigmoid_bce(logits, labels)


@jax.jit
def _sigmoid_bce(logits: Array, labels: Array) -> Array:
    dtype, acc = _float_dtype(logits)
    x, y = logits.astype(acc), labels.astype(acc)
    # -log sigmoid(x) = softplus(-x) >= 0; a zero-weighted infinite term contributes 0 (and no
    # NaN gradient), a finite one keeps its derivative with respect to the label.
    pos = _weighted(y, -jax.nn.log_sigmoid(x))
    neg = _weighted(1 - y, -jax.nn.log_sigmoid(-x))
    loss = _sum_non_batch(pos + neg)
    valid = _sum_non_batch(~((y >= 0) & (y <= 1))) == 0  # every label of the example in [0, 1]
    return jnp.where(valid, loss, jnp.nan).astype(dtype)


def softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike) -> Array:
    r"""Per-example softmax cross-entropy with integer class labels.

    .. math:: \ell_i = -\log \operatorname{softmax}(x_i)_{y_i}
        = \log \sum_k e^{x_{ik}} - x_{i y_i}, \qquad
        \frac{\partial \ell_i}{\partial x_{ik}} = \operatorname{softmax}(x_i)_k - [k = y_i]

    Equals :func:`optax.losses.softmax_cross_entropy_with_integer_labels`. Computed as
    ``-log_softmax(x)[y]`` with :func:`jax.nn.log_softmax` (the max subtracted under
    ``stop_gradient``, and the target picked from the shifted values, which keeps the loss
    accurate when all logits are large): finite for logits of magnitude ``1e4`` and for ``-inf``
    non-target logits, with finite gradients. A NaN logit anywhere in the row gives NaN.

    Args:
      logits: ``[batch, classes]`` (or ``[batch, ..., classes]``: extra axes are summed).
      labels: integer class ids of shape ``logits.shape[:-1]``.

    Returns:
      ``[batch]`` losses. Under ``jit``, an example whose label is outside ``[0, classes)`` gets
      **NaN**; eager calls raise ``ValueError`` instead.

    Raises:
      TypeError: if ``labels`` is not an integer array.
      ValueError: on a shape mismatch, or (eagerly) a label out of range (checked before any
        conversion, so int64 labels beyond int32 are caught, not wrapped).

    >>> softmax_cross_entropy(jnp.array([[1e4, -jnp.inf, 0.0]]), jnp.array([0]))
    Array([0.], dtype=float32)
    """
    fn = "softmax_cross_entropy"
    logits = jnp.asarray(logits)
    labels = _check_int_labels(fn, logits, labels, "logits")
    return _softmax_ce(logits, labels)


@jax.jit
def _softmax_ce(logits: Array, labels: Array) -> Array:
    dtype, acc = _float_dtype(logits)
    num_classes = logits.shape[-1]
    log_p = jax.nn.log_softmax(logits.astype(acc), axis=-1)
    # Select the target with a mask, not a gather: -inf non-target entries are dropped.
    loss = jnp.sum(jnp.where(_label_mask(labels, num_classes), -log_p, 0), axis=-1)
    loss = _nan_if_invalid(loss, labels, num_classes)
    return _sum_non_batch(loss).astype(dtype)


def softmax_cross_entropy_onehot(logits: ArrayLike, targets: ArrayLike) -> Array:
    r"""Per-example softmax cross-entropy with one-hot or soft (probability) targets.

    .. math:: \ell_i = -\sum_k t_{ik} \log \operatorname{softmax}(x_i)_k

    Equals :func:`optax.losses.softmax_cross_entropy`. An infinite ``-log p_k`` of a class with
    ``t_k = 0`` (a ``-inf`` logit) is dropped with a ``where`` (not multiplied by 0), so ``-inf``
    logits of non-target classes give a finite loss and finite gradients instead of
    ``0 * -inf = nan``. Targets must be finite and non-negative (then :math:`\ell_i \ge 0`);
    they are not required to sum to 1. The gradient with respect to the targets is
    :math:`-\log \operatorname{softmax}(x_i)_k`, as optax's, also where :math:`t_{ik} = 0`
    (0 instead of ``+inf`` at a ``-inf`` logit).

    Args:
      logits: ``[batch, classes]`` (or ``[batch, ..., classes]``: extra axes are summed).
      targets: same shape as ``logits``; each row a distribution over classes.

    Returns:
      ``[batch]`` losses; NaN for an example with a NaN logit. Under ``jit`` an example with a
      negative or non-finite target gets **NaN**; eager calls raise ``ValueError`` instead.

    Raises:
      ValueError: on a shape mismatch, or (eagerly) a negative or non-finite target.

    >>> softmax_cross_entropy_onehot(jnp.array([[0.0, 0.0]]), jnp.array([[0.0, 1.0]]))
    Array([0.6931472], dtype=float32)
    """
    fn = "softmax_cross_entropy_onehot"
    values = _host_values(targets)
    _check_values(fn, "targets", values, _finite_non_negative, "finite and >= 0")
    logits = jnp.asarray(logits)
    targets = jnp.asarray(values if values is not None else targets)
    if logits.ndim < 1:
        raise ValueError(f"{fn}: `logits` must have a class axis, shape [batch, classes]; got [].")
    _check_same_shape(fn, logits, targets, "logits", "targets")
    return _softmax_ce_onehot(logits, targets)


@jax.jit
def _softmax_ce_onehot(logits: Array, targets: Array) -> Array:
    dtype, acc = _float_dtype(logits)
    log_p = jax.nn.log_softmax(logits.astype(acc), axis=-1)
    t = targets.astype(acc)
    # -log p of a zero-target class may be +inf (a -inf logit): it never meets the 0.
    loss = jnp.sum(_weighted(t, -log_p), axis=-1)
    valid = jnp.all(jnp.isfinite(t) & (t >= 0), axis=-1)
    return _sum_non_batch(jnp.where(valid, loss, jnp.nan)).astype(dtype)


def multiclass_hinge_loss(
    scores: ArrayLike, labels: ArrayLike, *, margin: ArrayLike = 1.0
) -> Array:
    r"""Per-example multiclass SVM (hinge) loss, the **Weston-Watkins sum** form.

    .. math:: \ell_i = \sum_{k \ne y_i} \max(0,\; s_{ik} - s_{i y_i} + \Delta)

    with margin :math:`\Delta` (``margin``). Every class that comes within the margin of the
    correct one contributes. **Not** :func:`optax.losses.multiclass_hinge_loss`, which is the
    Crammer-Singer form :math:`\max(0, \max_{k \ne y} s_k - s_y + \Delta)` (only the worst
    violator counts); the two agree when at most one class violates the margin.
    **Kink:** the gradient of a term at exactly ``s_k - s_y + margin = 0`` is 0 (it is
    :func:`jax.nn.relu`, which also keeps a NaN score NaN: ``where(m > 0, m, 0)`` would turn a
    diverged model's NaN scores into a loss of 0).

    Args:
      scores: ``[batch, classes]`` class scores (or ``[batch, ..., classes]``).
      labels: integer class ids of shape ``scores.shape[:-1]``.
      margin: the margin :math:`\Delta` (keyword-only; may be an array broadcastable to
        ``scores``), finite and ``>= 0``.

    Returns:
      ``[batch]`` losses; NaN for an example with a NaN score. Under ``jit``, NaN for an example
      whose label is out of range or whose margin is negative or non-finite (eager calls raise
      ``ValueError`` instead).

    Raises:
      TypeError: if ``labels`` is not an integer array.
      ValueError: on a shape mismatch, or (eagerly) a label out of range or a bad ``margin``.

    >>> multiclass_hinge_loss(jnp.array([[3.0, 5.0, -2.0]]), jnp.array([0]))
    Array([3.], dtype=float32)
    """
    return _checked_hinge("multiclass_hinge_loss", scores, labels, margin, power=1)


def multiclass_squared_hinge_loss(
    scores: ArrayLike, labels: ArrayLike, *, margin: ArrayLike = 1.0
) -> Array:
    r"""Per-example squared multiclass hinge loss (the L2-SVM), Weston-Watkins sum form.

    .. math:: \ell_i = \sum_{k \ne y_i} \max(0,\; s_{ik} - s_{i y_i} + \Delta)^2

    Like :func:`multiclass_hinge_loss`, but a violation costs its square: small violations
    cost less, large ones more, and the loss is differentiable everywhere (the gradient of a
    term is :math:`2 \max(0, s_k - s_y + \Delta)`, 0 at the kink). Arguments, NaN rules and
    errors are :func:`multiclass_hinge_loss`'s.

    >>> multiclass_squared_hinge_loss(jnp.array([[3.0, 5.0, -2.0]]), jnp.array([0]))
    Array([9.], dtype=float32)
    """
    return _checked_hinge("multiclass_squared_hinge_loss", scores, labels, margin, power=2)


def _checked_hinge(fn: str, scores, labels, margin, *, power: int) -> Array:
    """The hinge losses' argument checks (eager: ``margin`` finite >= 0, integer labels in
    range), then :func:`_hinge`."""
    _check_values(fn, "margin", _host_values(margin), _finite_non_negative, "finite and >= 0")
    scores = jnp.asarray(scores)
    labels = _check_int_labels(fn, scores, labels, "scores")
    return _hinge(scores, labels, margin, power=power)


@functools.partial(jax.jit, static_argnames="power")
def _hinge(scores: Array, labels: Array, margin: ArrayLike, *, power: int) -> Array:
    dtype, acc = _float_dtype(scores)
    num_classes = scores.shape[-1]
    s = scores.astype(acc)
    mask = _label_mask(labels, num_classes)
    correct = jnp.sum(jnp.where(mask, s, 0), axis=-1, keepdims=True)
    margin = jnp.where(jnp.isfinite(margin) & (margin >= 0), margin, jnp.nan)  # traced check
    # relu: gradient 0 at the kink, NaN stays NaN; the correct class is excluded from the sum.
    terms = jnp.where(mask, 0, jax.nn.relu(s - correct + margin) ** power)
    loss = _nan_if_invalid(jnp.sum(terms, axis=-1), labels, num_classes)
    return _sum_non_batch(loss).astype(dtype)


# --------------------------------------------------------------------------------------------
# registry

@dataclasses.dataclass(frozen=True, kw_only=True)
class LossEntry(_registry.Entry):
    """A loss's registry entry: the function and the kind of target it takes.

    Attributes:
      targets: ``"labels"`` -- integer class ids ``scores.shape[:-1]``
        (:func:`softmax_cross_entropy`, :func:`multiclass_hinge_loss`); ``"scores"`` -- targets
        shaped like the scores (regression losses, :func:`sigmoid_binary_cross_entropy`,
        :func:`softmax_cross_entropy_onehot`), which train a classifier on one-hot labels
        (:func:`for_labels`).
      target_range: for ``"scores"`` losses, the closed interval ``(lo, hi)`` the target values
        must lie in (``None``: unbounded on that side): ``(0, 1)`` for binary cross-entropy,
        ``(0, None)`` for soft-target cross-entropy, ``(None, None)`` for regression.
    """

    targets: str = "scores"
    target_range: tuple[float | None, float | None] = (None, None)

    def __post_init__(self):
        if self.targets not in ("labels", "scores"):
            raise ValueError(f"loss {self.name!r}: targets must be 'labels' or 'scores', got "
                             f"{self.targets!r}")


#: The losses by name (:class:`jaxnn.registry.Registry` of :class:`LossEntry`).
REGISTRY: _registry.Registry[LossEntry] = _registry.Registry("loss", entry_type=LossEntry)
REGISTRY.register("l1_loss", l1_loss)
REGISTRY.register("l2_loss", l2_loss)
REGISTRY.register("mse", mse)
REGISTRY.register("sigmoid_binary_cross_entropy", sigmoid_binary_cross_entropy,
                  target_range=(0.0, 1.0))
REGISTRY.register("softmax_cross_entropy", softmax_cross_entropy, targets="labels")
REGISTRY.register("softmax_cross_entropy_onehot", softmax_cross_entropy_onehot,
                  target_range=(0.0, None))
REGISTRY.register("multiclass_hinge_loss", multiclass_hinge_loss, targets="labels")
REGISTRY.register("multiclass_squared_hinge_loss", multiclass_squared_hinge_loss,
                  targets="labels")
# short aliases
REGISTRY.alias("l1", "l1_loss")
REGISTRY.alias("l2", "l2_loss")
REGISTRY.alias("cross_entropy", "softmax_cross_entropy")
REGISTRY.alias("hinge", "multiclass_hinge_loss")


def names() -> tuple[str, ...]:
    """The names :func:`get` accepts (aliases included).

    >>> "hinge" in names()
    True
    """
    return REGISTRY.names()


def get(name: str | Callable[..., Array]) -> Callable[..., Array]:
    """Look a loss up by name (a callable is returned unchanged).

    Raises:
      ValueError: for an unknown name; the message lists the valid names.

    >>> get("cross_entropy") is softmax_cross_entropy
    True
    """
    return REGISTRY.get(name)


def entry(name: str) -> LossEntry:
    """The registry entry of ``name``: the loss and its kind of target (:class:`LossEntry`).

    Raises:
      ValueError: for an unknown name; the message lists the valid names.

    >>> entry("hinge").targets, entry("mse").targets
    ('labels', 'scores')
    """
    return REGISTRY.entry(name)


def for_labels(name: str | Callable[..., Array]) -> Callable[[Array, Array], Array]:
    r"""The loss ``name`` as a function of ``(scores [batch, ..., C], integer labels)``.

    A ``"labels"`` loss is returned as it is; a ``"scores"`` loss (``mse``, ``l2``,
    ``sigmoid_binary_cross_entropy``, ...) is wrapped to compare the scores with the one-hot
    encoding of the labels:

    .. math:: \ell_i = \text{loss}(s_i, \operatorname{onehot}(y_i))

    The wrapper checks the labels like :func:`softmax_cross_entropy` does (integer dtype, shape
    ``scores.shape[:-1]``; eagerly a ``ValueError`` for a label outside ``[0, C)``, under ``jit``
    a NaN loss for that example -- never the loss of an all-zero target). The same name gives the
    same function object, so jitted steps built on it are cached. A callable is returned
    unchanged (it is taken to accept labels already).

    Raises:
      ValueError: for an unknown name (the message lists the valid names).

    >>> for_labels("cross_entropy") is softmax_cross_entropy
    True
    >>> for_labels("mse")(jnp.array([[1.0, 0.0]]), jnp.array([0]))
    Array([0.], dtype=float32)
    """
    if callable(name) and not isinstance(name, str):
        return name
    return _for_labels(REGISTRY.entry(name).canonical)


@functools.cache
def _for_labels(name: str) -> Callable[[Array, Array], Array]:
    e = REGISTRY.entry(name)
    if e.targets == "labels":
        return e.obj
    fn = e.obj

    def on_labels(scores: ArrayLike, labels: ArrayLike) -> Array:
        scores = jnp.asarray(scores)
        labels = _check_int_labels(f"{name} on labels", scores, labels, "scores")
        num_classes = scores.shape[-1]
        dtype = scores.dtype if jnp.issubdtype(scores.dtype, jnp.inexact) else jnp.float32
        if scores.ndim == 1:  # one example (e.g. under vmap): a batch of one, then a scalar
            return on_labels(scores[None], labels[None])[0]
        loss = fn(scores, jax.nn.one_hot(labels, num_classes, dtype=dtype))
        valid = (labels >= 0) & (labels < num_classes)
        if valid.ndim > 1:
            valid = jnp.all(valid, axis=tuple(range(1, valid.ndim)))
        return jnp.where(valid, loss, jnp.nan).astype(loss.dtype)

    on_labels.__name__ = on_labels.__qualname__ = f"{name}_on_labels"
    on_labels.__doc__ = f":func:`{name}` of the scores and the one-hot encoding of ``labels``."
    return on_labels
