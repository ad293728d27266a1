r"""Loss functions. Every loss returns **per-example** values of shape ``[batch]``; you reduce.

Axis 0 is the batch axis. Regression losses and :func:`sigmoid_binary_cross_entropy` reduce over
all other axes; the classification losses take logits/scores ``[batch, ..., classes]`` and reduce
over the class axis (and sum any axes between batch and classes). A single unbatched example
(``pred`` of shape ``[]``, or logits ``[C]`` with a scalar label) gives a scalar, so the losses
also work one example at a time under ``jax.vmap``.

Rules shared by all losses:

* **Shapes are checked statically** -- predictions and targets are never broadcast against each
  other; a mismatch raises ``ValueError`` naming the argument and the expected shape.
* **Integer labels** must have an integer dtype (else ``TypeError``) and lie in
  ``[0, num_classes)``. Eager calls check the range and raise ``ValueError``. Under ``jit`` (or
  ``vmap``) values are not known at trace time, so an out-of-range label makes **that example's
  loss NaN** -- never a plausible wrong number (JAX's gather would otherwise clamp or wrap it).
* **Stable numerics**: cross-entropy is computed from logits with ``logsumexp`` (max subtracted
  under ``stop_gradient``) and is finite with finite gradients for logits of magnitude ``1e4`` and
  for ``-inf`` logits of non-target classes.
* The output keeps the input's float dtype; 16-bit inputs are computed in float32 and cast back.

Example:

>>> import jax.numpy as jnp
>>> from jaxnn import losses
>>> losses.softmax_cross_entropy(jnp.array([[0.0, 0.0]]), jnp.array([1]))
Array([0.6931472], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.typing import ArrayLike

from jaxnn import _registry

__all__ = [
    "l1_loss",
    "l2_loss",
    "mse",
    "sigmoid_binary_cross_entropy",
    "softmax_cross_entropy",
    "softmax_cross_entropy_onehot",
    "multiclass_hinge_loss",
    "get",
    "names",
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


def _check_int_labels(fn: str, logits: Array, labels: ArrayLike, arg: str) -> Array:
    """Static dtype/shape checks for integer class labels, and an eager range check."""
    concrete = not isinstance(labels, jax.core.Tracer)
    labels_arr = jnp.asarray(labels)
    if not jnp.issubdtype(labels_arr.dtype, jnp.integer):
        raise TypeError(
            f"{fn}: `labels` must be integer class ids, got dtype {labels_arr.dtype}. "
            "For one-hot or soft targets use softmax_cross_entropy_onehot."
        )
    if logits.ndim < 1:
        raise ValueError(f"{fn}: `{arg}` must have a class axis, shape [batch, classes]; got [].")
    if labels_arr.shape != logits.shape[:-1]:
        raise ValueError(
            f"{fn}: shape mismatch: `labels` must have shape {logits.shape[:-1]} "
            f"(`{arg}`.shape[:-1] for `{arg}` of shape {logits.shape}); got {labels_arr.shape}."
        )
    num_classes = logits.shape[-1]
    if num_classes < 1:
        raise ValueError(f"{fn}: `{arg}` has no classes (shape {logits.shape}).")
    if concrete and labels_arr.size and getattr(labels_arr, "is_fully_addressable", True):
        values = np.asarray(labels_arr)
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{fn}: `labels` must lie in [0, {num_classes}) for {num_classes} classes; "
                f"got {bad}."
            )
    return labels_arr


def _shifted_logits(logits: Array, dtype) -> tuple[Array, Array]:
    """``logits - max`` (max under stop_gradient, 0 if non-finite) and ``logsumexp`` of it."""
    x = logits.astype(dtype)
    # Max-subtraction trick: exp never overflows; stop_gradient because the result is invariant.
    m = lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0)
    shifted = x - m
    lse = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1))
    return shifted, lse


def _label_mask(labels: Array, num_classes: int) -> Array:
    """Boolean one-hot ``[..., C]``; all-False rows for out-of-range labels."""
    return labels[..., None] == jnp.arange(num_classes, dtype=labels.dtype)


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
    per-example. Stable log-sigmoid form: finite for logits of any magnitude; a term whose weight
    is 0 is dropped, so ``logits = -inf`` with ``label = 0`` gives 0, not ``0 * inf = nan``.

    Args:
      logits: ``[batch, ...]`` real-valued logits.
      labels: same shape; 0/1 labels or probabilities in ``[0, 1]``.

    >>> sigmoid_binary_cross_entropy(jnp.array([0.0]), jnp.array([1.0]))
    Array([0.6931472], dtype=float32)
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _check_same_shape("sigmoid_binary_cross_entropy", logits, labels, "logits", "labels")
    return _sigmoid_bce(logits, labels)


@jax.jit
def _sigmoid_bce(logits: Array, labels: Array) -> Array:
    dtype, acc = _float_dtype(logits)
    x, y = logits.astype(acc), labels.astype(acc)
    # Double where: a zero-weighted infinite log term contributes 0 (and no NaN gradient).
    pos = y * jnp.where(y != 0, jax.nn.log_sigmoid(x), 0)
    neg = (1 - y) * jnp.where(y != 1, jax.nn.log_sigmoid(-x), 0)
    return _sum_non_batch(-(pos + neg)).astype(dtype)


def softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike) -> Array:
    r"""Per-example softmax cross-entropy with integer class labels.

    .. math:: \ell_i = -\log \operatorname{softmax}(x_i)_{y_i}
        = \log \sum_k e^{x_{ik}} - x_{i y_i}, \qquad
        \frac{\partial \ell_i}{\partial x_{ik}} = \operatorname{softmax}(x_i)_k - [k = y_i]

    Equals :func:`optax.losses.softmax_cross_entropy_with_integer_labels`. ``logsumexp`` with the
    max subtracted (under ``stop_gradient``): finite for logits of magnitude ``1e4`` and for
    ``-inf`` non-target logits, with finite gradients.

    Args:
      logits: ``[batch, classes]`` (or ``[batch, ..., classes]``: extra axes are summed).
      labels: integer class ids of shape ``logits.shape[:-1]``.

    Returns:
      ``[batch]`` losses. Under ``jit``, an example whose label is outside ``[0, classes)`` gets
      **NaN**; eager calls raise ``ValueError`` instead.

    Raises:
      TypeError: if ``labels`` is not an integer array.
      ValueError: on a shape mismatch, or (eagerly) a label out of range.

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
    shifted, lse = _shifted_logits(logits, acc)
    # Select the target logit with a mask, not a gather: -inf non-target logits are dropped.
    target = jnp.sum(jnp.where(_label_mask(labels, num_classes), shifted, 0), axis=-1)
    loss = _nan_if_invalid(lse - target, labels, num_classes)
    return _sum_non_batch(loss).astype(dtype)


def softmax_cross_entropy_onehot(logits: ArrayLike, targets: ArrayLike) -> Array:
    r"""Per-example softmax cross-entropy with one-hot or soft (probability) targets.

    .. math:: \ell_i = -\sum_k t_{ik} \log \operatorname{softmax}(x_i)_k

    Equals :func:`optax.losses.softmax_cross_entropy`. Classes with ``t_k = 0`` are dropped with a
    ``where`` (not multiplied by 0), so ``-inf`` logits of non-target classes give a finite loss
    and finite gradients instead of ``0 * -inf = nan``.

    Args:
      logits: ``[batch, classes]`` (or ``[batch, ..., classes]``: extra axes are summed).
      targets: same shape as ``logits``; each row a distribution over classes.

    >>> softmax_cross_entropy_onehot(jnp.array([[0.0, 0.0]]), jnp.array([[0.0, 1.0]]))
    Array([0.6931472], dtype=float32)
    """
    fn = "softmax_cross_entropy_onehot"
    logits, targets = jnp.asarray(logits), jnp.asarray(targets)
    if logits.ndim < 1:
        raise ValueError(f"{fn}: `logits` must have a class axis, shape [batch, classes]; got [].")
    _check_same_shape(fn, logits, targets, "logits", "targets")
    return _softmax_ce_onehot(logits, targets)


@jax.jit
def _softmax_ce_onehot(logits: Array, targets: Array) -> Array:
    dtype, acc = _float_dtype(logits)
    shifted, lse = _shifted_logits(logits, acc)
    t = targets.astype(acc)
    # Double where: log-probabilities of zero-target classes (possibly -inf) never meet a 0.
    log_probs = jnp.where(t != 0, shifted - lse[..., None], 0)
    loss = -jnp.sum(t * log_probs, axis=-1)
    return _sum_non_batch(loss).astype(dtype)


def multiclass_hinge_loss(
    scores: ArrayLike, labels: ArrayLike, *, margin: ArrayLike = 1.0
) -> Array:
    r"""Per-example multiclass SVM (hinge) loss, the **Weston-Watkins sum** form.

    .. math:: \ell_i = \sum_{k \ne y_i} \max(0,\; s_{ik} - s_{i y_i} + \Delta)

    with margin :math:`\Delta` (``margin``). Every class that comes within the margin of the
    correct one contributes. **Not** :func:`optax.losses.multiclass_hinge_loss`, which is the
    Crammer-Singer form :math:`\max(0, \max_{k \ne y} s_k - s_y + \Delta)` (only the worst
    violator counts); the two agree when at most one class violates the margin.
    **Kink:** the gradient of a term at exactly ``s_k - s_y + margin = 0`` is 0.

    Args:
      scores: ``[batch, classes]`` class scores (or ``[batch, ..., classes]``).
      labels: integer class ids of shape ``scores.shape[:-1]``.
      margin: the margin :math:`\Delta` (keyword-only; may be an array).

    Returns:
      ``[batch]`` losses; under ``jit`` NaN for an example whose label is out of range (eager
      calls raise ``ValueError``).

    >>> multiclass_hinge_loss(jnp.array([[3.0, 5.0, -2.0]]), jnp.array([0]))
    Array([3.], dtype=float32)
    """
    fn = "multiclass_hinge_loss"
    scores = jnp.asarray(scores)
    labels = _check_int_labels(fn, scores, labels, "scores")
    return _hinge(scores, labels, margin)


@jax.jit
def _hinge(scores: Array, labels: Array, margin: ArrayLike) -> Array:
    dtype, acc = _float_dtype(scores)
    num_classes = scores.shape[-1]
    s = scores.astype(acc)
    mask = _label_mask(labels, num_classes)
    correct = jnp.sum(jnp.where(mask, s, 0), axis=-1, keepdims=True)
    margins = s - correct + margin
    # relu with gradient 0 at the kink; the correct class is excluded from the sum.
    terms = jnp.where((margins > 0) & ~mask, margins, 0)
    loss = _nan_if_invalid(jnp.sum(terms, axis=-1), labels, num_classes)
    return _sum_non_batch(loss).astype(dtype)


# --------------------------------------------------------------------------------------------
# registry

_REGISTRY: dict[str, Callable[..., Array]] = {
    "l1_loss": l1_loss,
    "l2_loss": l2_loss,
    "mse": mse,
    "sigmoid_binary_cross_entropy": sigmoid_binary_cross_entropy,
    "softmax_cross_entropy": softmax_cross_entropy,
    "softmax_cross_entropy_onehot": softmax_cross_entropy_onehot,
    "multiclass_hinge_loss": multiclass_hinge_loss,
    # short aliases
    "l1": l1_loss,
    "l2": l2_loss,
    "cross_entropy": softmax_cross_entropy,
    "hinge": multiclass_hinge_loss,
}


def names() -> tuple[str, ...]:
    """The names :func:`get` accepts (aliases included).

    >>> "hinge" in names()
    True
    """
    return tuple(_REGISTRY)


def get(name: str | Callable[..., Array]) -> Callable[..., Array]:
    """Look a loss up by name (a callable is returned unchanged).

    Raises:
      ValueError: for an unknown name; the message lists the valid names.

    >>> get("cross_entropy") is softmax_cross_entropy
    True
    """
    if callable(name):
        return name
    return _registry.lookup(_REGISTRY, name, "loss")
