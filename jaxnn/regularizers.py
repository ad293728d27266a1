r"""Weight penalties (L1, L2) and the regularized objective.

The data loss says how well the network fits; the regularization loss prefers small, diffuse
weights. Regularization applies to **weights** -- weight matrices and kernels -- not to biases, norm
scales/shifts or PReLU slopes; :func:`weights` makes that selection from a parameter pytree:

.. math:: L = L_\text{data} + \lambda_2 \sum_{W} \sum_{ij} W_{ij}^2
    + \lambda_1 \sum_{W} \sum_{ij} |W_{ij}|

Note the curriculum's :math:`\tfrac12 \lambda W^2` convention is *not* used: ``l2`` multiplies
:math:`\sum W^2` directly (the gradient is :math:`2 \lambda W`); pass ``l2 = lambda / 2`` to get it.

Example:

>>> import jax.numpy as jnp
>>> from jaxnn import regularizers
>>> params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
>>> regularizers.full_loss(jnp.float32(1.0), params, l2=0.1)
Array(1.4, dtype=float32)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

__all__ = [
    "WEIGHT_NAMES",
    "NON_WEIGHT_NAMES",
    "is_weight",
    "weights",
    "weight_mask",
    "l1_penalty",
    "l2_penalty",
    "full_loss",
]

#: Leaf names that are always weights.
WEIGHT_NAMES = frozenset({"w", "kernel"})
#: Leaf names that are never weights: biases, batch/layer-norm scale and shift, running
#: statistics, PReLU slopes.
NON_WEIGHT_NAMES = frozenset({"b", "bias", "gamma", "beta", "scale", "alpha", "mean", "var"})


def _leaf_name(path: tuple) -> str | None:
    """The name of a leaf: its last dict key or attribute name (None for list/tuple indices)."""
    if not path:
        return None
    last = path[-1]
    if isinstance(last, jax.tree_util.DictKey):
        return str(last.key)
    if isinstance(last, jax.tree_util.GetAttrKey):
        return last.name
    return None


def is_weight(path: tuple, leaf: Any) -> bool:
    """Whether the leaf at ``path`` (a ``jax.tree_util`` key path) is a weight.

    A floating leaf is a weight if its name (last dict key / attribute) is ``"w"`` or
    ``"kernel"``; else, if its name is not one of :data:`NON_WEIGHT_NAMES`, if it has
    ``ndim >= 2``. Non-floating leaves (counters, masks) are never weights.

    >>> is_weight((jax.tree_util.DictKey("b"),), jnp.ones((3, 3)))
    False
    """
    dtype = getattr(leaf, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
        return False
    name = _leaf_name(path)
    if name in WEIGHT_NAMES:
        return True
    if name in NON_WEIGHT_NAMES:
        return False
    return jnp.ndim(leaf) >= 2


def weights(params: Any) -> list[Array]:
    """The leaves of ``params`` that regularization applies to, in tree-flatten order.

    See :func:`is_weight` for the rule: ``"w"``/``"kernel"`` leaves, plus unnamed or unknown leaves
    with ``ndim >= 2``; never ``"b"``, ``"bias"``, ``"gamma"``, ``"beta"``, ``"scale"``,
    ``"alpha"``, ``"mean"``, ``"var"``.

    >>> [w.shape for w in weights({"layer0": {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}})]
    [(3, 2)]
    """
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return [leaf for path, leaf in leaves if is_weight(path, leaf)]


def weight_mask(params: Any) -> Any:
    """A pytree like ``params`` with ``True`` at weights and ``False`` elsewhere.

    Suitable as the ``mask`` of ``optax.add_decayed_weights`` / ``optax.adamw`` so decoupled weight
    decay follows the same selection as :func:`weights`.

    >>> weight_mask({"w": jnp.ones((3, 2)), "b": jnp.ones(2)})
    {'b': False, 'w': True}
    """
    return jax.tree_util.tree_map_with_path(is_weight, params)


def _acc_dtype(x: Array):
    return jnp.promote_types(jnp.result_type(x), jnp.float32)


def _sum_over_leaves(tree: Any, fn) -> Array:
    total = jnp.zeros((), jnp.float32)
    for leaf in jax.tree_util.tree_leaves(tree):
        leaf = jnp.asarray(leaf)
        total = total + jnp.sum(fn(leaf.astype(_acc_dtype(leaf))))
    return total


@jax.jit
def _l1(tree: Any) -> Array:
    return _sum_over_leaves(tree, jnp.abs)


@jax.jit
def _l2(tree: Any) -> Array:
    return _sum_over_leaves(tree, jnp.square)


def l1_penalty(tree: Any) -> Array:
    r"""Sum of absolute values over every leaf given (accumulated in at least float32).

    .. math:: R_1(W) = \sum_{\ell} \sum_{ij} |W^{(\ell)}_{ij}|

    Pass :func:`weights` of your params to exclude biases. **Kink:** the gradient at 0 is 0.

    >>> l1_penalty([jnp.array([1.0, -2.0]), jnp.array([[3.0]])])
    Array(6., dtype=float32)
    """
    return _l1(tree)


def l2_penalty(tree: Any) -> Array:
    r"""Sum of squares over every leaf given (accumulated in at least float32).

    .. math:: R_2(W) = \sum_{\ell} \sum_{ij} \left(W^{(\ell)}_{ij}\right)^2

    Pass :func:`weights` of your params to exclude biases.

    >>> l2_penalty([jnp.array([1.0, -2.0]), jnp.array([[3.0]])])
    Array(14., dtype=float32)
    """
    return _l2(tree)


def _is_static_zero(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == 0


def _strength(name: str, value: ArrayLike) -> ArrayLike:
    """A regularization strength: checked eagerly where concrete (finite, >= 0, else
    ``ValueError`` naming it); where traced, NaN if it is negative or non-finite."""
    if isinstance(value, jax.core.Tracer):
        return jnp.where(jnp.isfinite(value) & (value >= 0), value, jnp.nan)
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        return value
    values = np.asarray(value)
    if not (jnp.issubdtype(values.dtype, jnp.number) or values.dtype == bool):
        raise ValueError(f"full_loss: `{name}` must be a number >= 0; got {value!r}.")
    values = values.astype(np.float64)
    if not (np.isfinite(values) & (values >= 0)).all():
        raise ValueError(
            f"full_loss: `{name}` must be finite and >= 0 (a regularization strength); "
            f"got {value!r}."
        )
    return value


def full_loss(
    data_loss: ArrayLike, params: Any, *, l2: ArrayLike = 0.0, l1: ArrayLike = 0.0
) -> Array:
    r"""Data loss plus L2 and L1 penalties on the weights of ``params``.

    .. math:: L = L_\text{data} + \lambda_2 R_2(W) + \lambda_1 R_1(W)

    ``l2`` and ``l1`` may be traced arrays (a vmapped population passes one value per member); a
    penalty is skipped only when its strength is the Python number 0. The result has the dtype of
    ``data_loss`` promoted with the float32 penalty. A NaN data loss or weight gives NaN.

    Strengths must be finite and ``>= 0``: concrete values are checked eagerly (``ValueError``
    naming ``l2`` / ``l1``); a traced negative or non-finite strength makes the result NaN
    (never a plausible loss), e.g. for that member of a population.

    Args:
      data_loss: the (scalar or per-example) data loss.
      params: the parameter pytree; regularized leaves are chosen by :func:`weights`.
      l2: :math:`\lambda_2`, keyword-only.
      l1: :math:`\lambda_1`, keyword-only.

    Raises:
      ValueError: (eagerly) a negative or non-finite ``l2`` or ``l1``.

    >>> full_loss(jnp.float32(0.5), {"w": jnp.array([[1.0, -1.0]])}, l1=0.25)
    Array(1., dtype=float32)
    """
    total = jnp.asarray(data_loss)
    l2, l1 = _strength("l2", l2), _strength("l1", l1)
    if _is_static_zero(l2) and _is_static_zero(l1):
        return total
    w = weights(params)
    if not _is_static_zero(l2):
        total = total + l2 * l2_penalty(w)
    if not _is_static_zero(l1):
        total = total + l1 * l1_penalty(w)
    return total
