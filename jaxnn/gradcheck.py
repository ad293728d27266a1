r"""Gradient checking: compare analytic gradients (``jax.grad``) with centered differences.

JAX's autodiff does not need checking, but hand-written derivatives (``custom_jvp`` /
``custom_vjp``, numerically "stabilised" rewrites, kinks) do. The recipe:

1. :func:`numerical_grad` -- centered differences
   :math:`\frac{f(\theta + h e_i) - f(\theta - h e_i)}{2h}` for every entry of every leaf;
2. :func:`relative_error` -- :math:`\frac{|a - b|}{\max(|a|, |b|)}` per entry, with an absolute
   floor on the denominator so entries where both gradients are ~0 do not blow up;
3. :func:`check_grads` -- the max relative error per leaf against a dtype-dependent tolerance.

Read the numbers like this (in float64): relative error :math:`< 10^{-7}` is good,
:math:`10^{-7}`-:math:`10^{-4}` is suspect unless the function has kinks (ReLU, hinge) near the
evaluated point, :math:`> 10^{-2}` means the gradient is wrong. Check in float64 when you can
(``with jax.enable_x64(True):``, passing float64 params): float32 round-off alone gives
:math:`\sim 10^{-4}`-:math:`10^{-3}`. Check away from kinks, with few examples, and without
regularization first (so it cannot hide a data-loss gradient bug).

Example:

>>> import jax.numpy as jnp
>>> from jaxnn import gradcheck
>>> report = gradcheck.check_grads(lambda p: jnp.sum(jnp.sin(p["w"])), {"w": jnp.ones(3)})
>>> report.passed
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.flatten_util import ravel_pytree
from jax.typing import ArrayLike

__all__ = [
    "GradCheckReport",
    "DEFAULT_EPS",
    "DEFAULT_TOL",
    "numerical_grad",
    "relative_error",
    "check_grads",
]

#: Default finite-difference step per dtype: about the cube root of the machine epsilon, which
#: balances the truncation error :math:`O(h^2)` against the round-off error :math:`O(\epsilon/h)`.
DEFAULT_EPS: dict[str, float] = {
    "float64": 1e-5,
    "float32": 1e-3,
    "float16": 3e-2,
    "bfloat16": 1e-1,
}

#: Default pass/fail tolerance on the max relative error per dtype. float64 follows the
#: curriculum's "< 1e-7 good, > 1e-2 wrong" with headroom for mildly ill-conditioned functions;
#: float32 allows for its round-off (a wrong gradient is typically off by O(1)); 16-bit checks
#: can only catch gross errors.
DEFAULT_TOL: dict[str, float] = {
    "float64": 1e-6,
    "float32": 1e-2,
    "float16": 1e-1,
    "bfloat16": 1e-1,
}


# Round-off in f(theta +- h) is taken as this many ulps of max(|f|, 1) (sums of many terms
# accumulate error beyond one ulp of the result).
_NOISE_FACTOR = 30.0
# Perturbations evaluated at once (vmapped); larger parameter vectors loop in chunks of this size
# (smaller for big parameter vectors, so a chunk holds at most _MAX_ROW_ELEMENTS entries).
_VMAP_MAX = 256
_MAX_ROW_ELEMENTS = 2**22


class GradCheckReport(NamedTuple):
    """Result of :func:`check_grads`.

    Attributes:
      errors: max relative error per leaf, keyed by the leaf's path string
        (``jax.tree_util.keystr``, e.g. ``"['layer0']['w']"``; ``""`` for a bare array).
      max_error: the max over all leaves (0.0 if there are none; NaN if any error is NaN).
      tol: the tolerance used.
      passed: ``max_error <= tol`` (False for NaN).
    """

    errors: dict[str, float]
    max_error: float
    tol: float
    passed: bool


def _dtype_name(dtype) -> str:
    return jnp.dtype(dtype).name


def _check_scalar_out(f: Callable[..., Any], params: Any):
    out = jax.eval_shape(f, params)
    if not hasattr(out, "shape") or out.shape != () or not jnp.issubdtype(out.dtype, jnp.inexact):
        raise ValueError(
            f"gradcheck: `f` must return a float scalar; got {getattr(out, 'shape', out)} of "
            f"dtype {getattr(out, 'dtype', type(out))}."
        )
    return out


def _check_float_leaves(params: Any) -> list:
    with_path = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in with_path:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"gradcheck: every leaf of `params` must be a real float array; leaf "
                f"{jax.tree_util.keystr(path)!r} has dtype {dtype}."
            )
    return with_path


def _check_setting(name: str, value: float, *, positive: bool) -> float:
    """A finite number, > 0 (``positive``) or >= 0: else ``ValueError`` naming it."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"gradcheck: `{name}` must be a number, got {value!r}.") from None
    if not (np.isfinite(v) and (v > 0 if positive else v >= 0)):
        raise ValueError(
            f"gradcheck: `{name}` must be finite and {'> 0' if positive else '>= 0'}, "
            f"got {value!r}."
        )
    return v


def numerical_grad(f: Callable[[Any], ArrayLike], params: Any, *, eps: float = 1e-5) -> Any:
    r"""Gradient of a scalar function by centered differences, for any pytree of float arrays.

    .. math:: \frac{\partial f}{\partial \theta_i} \approx
        \frac{f(\theta + h e_i) - f(\theta - h e_i)}{(\theta_i + h) - (\theta_i - h)}

    The denominator is the step actually taken after rounding to the leaf's dtype (not the
    nominal :math:`2h`). Error: :math:`O(h^2)` truncation plus
    :math:`O(\epsilon_\text{mach} |f| / h)` round-off.

    ``f`` must be traceable by JAX (it is evaluated for all perturbations in one jitted
    ``lax.map``; two evaluations per entry, so keep ``params`` small).

    Args:
      f: ``params -> scalar``.
      params: pytree of float arrays.
      eps: the step :math:`h` (keyword-only, finite and > 0); ``1e-5`` suits float64, use
        ~``1e-3`` in float32.

    Returns:
      A pytree like ``params`` (same dtypes) of numerical partial derivatives.

    Raises:
      ValueError: if ``f`` does not return a float scalar, a leaf is not a real float array, or
        ``eps`` is not finite and > 0.

    >>> numerical_grad(lambda x: jnp.sum(x ** 2), jnp.array([1.0, -2.0]), eps=0.25)  # exact here
    Array([ 2., -4.], dtype=float32)
    """
    eps = _check_setting("eps", eps, positive=True)
    _check_float_leaves(params)
    _check_scalar_out(f, params)
    flat, unravel = ravel_pytree(params)
    if flat.size == 0:
        return params
    return unravel(_numerical_grad_flat(f, unravel, flat, eps))


def _numerical_grad_flat(f, unravel, flat: Array, eps: float) -> Array:
    """Centered differences over every entry of ``flat`` (all leaves raveled), in one jit."""
    n = flat.size

    @jax.jit
    def run(flat):
        # The perturbed values as the leaves will hold them (rounded to each leaf's dtype).
        plus = ravel_pytree(unravel(flat + eps))[0]
        minus = ravel_pytree(unravel(flat - eps))[0]
        positions = jnp.arange(n)

        def f_diffs(idx):
            # Rows perturbed at entries idx (+ then -), built with a select, evaluated by one
            # vmapped f: f appears once in the compiled program.
            at = idx[:, None] == positions[None, :]
            rows = jnp.concatenate([jnp.where(at, plus, flat), jnp.where(at, minus, flat)])
            values = jax.vmap(lambda row: f(unravel(row)))(rows)
            return values[: idx.size] - values[idx.size :]

        # Chunk size: at most _VMAP_MAX perturbations and ~_MAX_ROW_ELEMENTS perturbed entries.
        batch = max(1, min(_VMAP_MAX, _MAX_ROW_ELEMENTS // n))
        if n <= batch:
            diffs = f_diffs(positions)
        else:
            chunks = -(-n // batch)
            idx = jnp.minimum(jnp.arange(chunks * batch), n - 1).reshape(chunks, batch)
            diffs = lax.map(f_diffs, idx).reshape(-1)[:n]
        acc = jnp.promote_types(diffs.dtype, flat.dtype)
        # Divide by the step actually taken after rounding, not the nominal 2 * eps.
        steps = plus.astype(acc) - minus.astype(acc)
        return (diffs.astype(acc) / steps).astype(flat.dtype)

    return run(flat)


def relative_error(a: ArrayLike, b: ArrayLike, *, floor: ArrayLike | None = None) -> Array:
    r"""Elementwise relative error, with an absolute floor on the denominator.

    .. math:: r = \frac{|a - b|}{\max(|a|, |b|, \text{floor})}

    Where both values are tiny the floor takes over and ``r`` becomes ``|a - b| / floor`` (an
    absolute error), so two ~0 gradients compare as equal instead of blowing up. The default floor
    is the smallest normal number of the dtype (which only avoids ``0 / 0``); :func:`check_grads`
    passes a floor scaled to the finite-difference noise.

    >>> relative_error(jnp.array([2.0, 0.0]), jnp.array([2.5, 0.0]))
    Array([0.2, 0. ], dtype=float32)
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    dtype = jnp.result_type(a, b)
    if not jnp.issubdtype(dtype, jnp.inexact):
        dtype = jnp.dtype(jnp.float32)
    a, b = a.astype(dtype), b.astype(dtype)
    if floor is None:
        floor = jnp.finfo(dtype).tiny
    denom = jnp.maximum(jnp.maximum(jnp.abs(a), jnp.abs(b)), jnp.asarray(floor, dtype))
    return jnp.abs(a - b) / denom


def check_grads(
    f: Callable[[Any], ArrayLike],
    params: Any,
    *,
    eps: float | None = None,
    tol: float | None = None,
    floor: float | None = None,
) -> GradCheckReport:
    r"""Compare ``jax.grad(f)`` with :func:`numerical_grad` and report per-leaf max errors.

    The precision is the lowest among the float leaves of ``params`` and the output of ``f``;
    the defaults for that precision come from :data:`DEFAULT_EPS` and :data:`DEFAULT_TOL`:

    ========  =======  ======
    dtype     eps      tol
    ========  =======  ======
    float64   1e-5     1e-6
    float32   1e-3     1e-2
    float16   3e-2     1e-1
    bfloat16  1e-1     1e-1
    ========  =======  ======

    The relative error's denominator is floored at the size of the finite-difference round-off,
    :math:`30\,\epsilon_\text{mach} \max(|f(\theta)|, 1) / (h \cdot \text{tol})`, so an entry whose
    gradient is ~0 passes when the numerical one is within round-off of 0 (and still fails if
    the analytic gradient is off by more than ``tol * floor``).

    Args:
      f: ``params -> scalar``; must be traceable by JAX.
      params: pytree of real float arrays (check at a point away from kinks).
      eps: finite-difference step (default by dtype, above).
      tol: max allowed relative error (default by dtype, above).
      floor: denominator floor for :func:`relative_error` (default: the round-off scale above).

    Returns:
      A :class:`GradCheckReport`.

    Raises:
      ValueError: if ``f`` does not return a float scalar, a leaf is not a real float array, or
        ``eps`` / ``floor`` is not finite and > 0, or ``tol`` not finite and >= 0.

    >>> check_grads(lambda x: jnp.sum(jnp.tanh(x)), jnp.array([0.5, -1.0])).passed
    True
    """
    with_path = _check_float_leaves(params)
    out = _check_scalar_out(f, params)
    dtypes = [jnp.result_type(leaf) for _, leaf in with_path] + [out.dtype]
    lowest = max(dtypes, key=lambda d: float(jnp.finfo(d).eps))  # the least precise
    name = _dtype_name(lowest)
    eps = DEFAULT_EPS.get(name, 1e-3) if eps is None else _check_setting("eps", eps, positive=True)
    tol = DEFAULT_TOL.get(name, 1e-2) if tol is None else _check_setting("tol", tol, positive=False)
    if floor is not None:
        floor = _check_setting("floor", floor, positive=True)

    noise = _NOISE_FACTOR * float(jnp.finfo(lowest).eps) / (eps * tol)

    @jax.jit
    def run(params):
        # One compilation for the value, both gradients and the per-leaf errors.
        value, analytic = jax.value_and_grad(f)(params)
        numeric = numerical_grad(f, params, eps=eps)
        if floor is None:
            scale = jnp.where(jnp.isfinite(value), jnp.abs(value), 1.0)
            fl = noise * jnp.maximum(scale, 1.0)
        else:
            fl = floor
        leaf_errors = []
        a_leaves = jax.tree_util.tree_leaves(analytic)
        n_leaves = jax.tree_util.tree_leaves(numeric)
        for a, n in zip(a_leaves, n_leaves, strict=True):
            acc = jnp.promote_types(a.dtype, jnp.float32)  # compare 16-bit grads in float32
            err = relative_error(a.astype(acc), n.astype(acc), floor=fl)
            leaf_errors.append(jnp.max(err) if err.size else jnp.zeros((), err.dtype))
        return leaf_errors

    leaf_errors = jax.device_get(run(params))
    errors = {
        jax.tree_util.keystr(path): float(e)
        for (path, _), e in zip(with_path, leaf_errors, strict=True)
    }
    values = list(errors.values())
    max_error = float(np.max(values)) if values else 0.0
    passed = bool(max_error <= tol)
    return GradCheckReport(errors=errors, max_error=max_error, tol=float(tol), passed=passed)
