r"""Gradient checking: compare analytic gradients (``jax.grad``) with centered differences.

JAX's autodiff does not need checking, but hand-written derivatives (``custom_jvp`` /
``custom_vjp``, numerically "stabilised" rewrites, kinks) do. The recipe:

1. :func:`numerical_grad` -- centered differences
   :math:`\frac{f(\theta + h e_i) - f(\theta - h e_i)}{2h}` for every entry of every leaf;
2. :func:`relative_error` -- :math:`\frac{|a - b|}{\max(|a|, |b|)}` per entry, with an absolute
   floor on the denominator so entries where both gradients are ~0 do not blow up;
3. :func:`check_grads` -- the max relative error per leaf against a dtype-dependent tolerance,
   after allowing for the finite differences' own error, which it *measures* (two step sizes
   and the rounding of ``f`` at its magnitude), and a verdict: ``"passed"``, ``"failed"`` or
   ``"inconclusive"`` (the finite differences are too noisy, at this precision, to tell a right
   gradient from a wrong one).

Read the numbers like this (in float64): relative error :math:`< 10^{-7}` is good,
:math:`10^{-7}`-:math:`10^{-4}` is suspect unless the function has kinks (ReLU, hinge) near the
evaluated point, :math:`> 10^{-2}` means the gradient is wrong. Check in float64 when you can
(``with jax.enable_x64(True):``, passing float64 params): float32 round-off alone gives
:math:`\sim 10^{-4}`-:math:`10^{-3}`, and a float32 ``f`` of large magnitude (a sum over many
terms, a large constant) rounds away the differences altogether -- that is the
``"inconclusive"`` verdict. Check away from kinks, with few examples, and without
regularization first (so it cannot hide a data-loss gradient bug).

Example:

>>> import jax.numpy as jnp
>>> from jaxnn import gradcheck
>>> report = gradcheck.check_grads(lambda p: jnp.sum(jnp.sin(p["w"])), {"w": jnp.ones(3)})
>>> report.passed, report.verdict
(True, 'passed')
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
    "NOISE_MARGIN",
    "RESOLUTION",
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


#: An error counts as a wrong gradient only beyond this many times the estimated
#: finite-difference error of its entry (the estimate is a typical size, not a bound).
NOISE_MARGIN = 4.0
#: The check is conclusive when an error of this fraction of the gradient's largest entry
#: would stand out of the finite-difference noise (else the verdict is "inconclusive").
RESOLUTION = 0.1
# Perturbations evaluated at once (vmapped); larger parameter vectors loop in chunks of this size
# (smaller for big parameter vectors, so a chunk holds at most _MAX_ROW_ELEMENTS entries).
_VMAP_MAX = 256
_MAX_ROW_ELEMENTS = 2**22


class GradCheckReport(NamedTuple):
    """Result of :func:`check_grads`.

    Attributes:
      errors: max relative error per leaf, keyed by the leaf's path string
        (``jax.tree_util.keystr``, e.g. ``"['layer0']['w']"``; ``""`` for a bare array). An
        entry's denominator is floored at ``NOISE_MARGIN * noise / tol``, so an error within the
        margin of the finite differences' own error counts at most ``tol``.
      max_error: the max over all leaves (0.0 if there are none; NaN if any error is NaN).
      tol: the tolerance used.
      passed: ``verdict == "passed"``: no error beyond ``tol``, and the check could see one.
      verdict: ``"failed"`` -- some entry's error exceeds ``tol`` (relative) and the
        finite-difference noise (by ``NOISE_MARGIN``): the gradient is wrong there (or a kink is
        within the step); ``"inconclusive"`` -- no such error, but the noise is too large to see
        an error of ``RESOLUTION`` times the gradient's largest entry (typically float32 with a
        large ``|f|``): check again in float64 (``with jax.enable_x64(True):``, float64 params);
        ``"passed"`` -- neither.
      resolution: the smallest error the check could see, relative to the gradient's largest
        entry: ``NOISE_MARGIN`` times the typical finite-difference error over the largest
        ``|grad|`` of either gradient (0.0 when both are exactly 0 everywhere: exact agreement).
    """

    errors: dict[str, float]
    max_error: float
    tol: float
    passed: bool
    verdict: str
    resolution: float


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
    return _differences(f, unravel, flat, (eps,))[0]


def _differences(f, unravel, flat: Array, steps: tuple[float, ...]) -> Array:
    """``[len(steps), n]``: centered differences with each step, for every entry of ``flat``,
    in one jit with ``f`` once in the program (all perturbed rows go through one vmapped f)."""
    n = flat.size
    k = len(steps)

    @jax.jit
    def run(flat):
        # The perturbed values as the leaves will hold them (rounded to each leaf's dtype).
        plus = [ravel_pytree(unravel(flat + h))[0] for h in steps]
        minus = [ravel_pytree(unravel(flat - h))[0] for h in steps]
        positions = jnp.arange(n)

        def f_diffs(idx):
            # Rows perturbed at entries idx (+h then -h, for each step), built with a select.
            at = idx[:, None] == positions[None, :]
            rows = jnp.concatenate(
                [jnp.where(at, p, flat) for pm in zip(plus, minus, strict=True) for p in pm])
            values = jax.vmap(lambda row: f(unravel(row)))(rows).reshape(k, 2, idx.size)
            return values[:, 0] - values[:, 1]

        # Chunk size: at most _VMAP_MAX perturbations and ~_MAX_ROW_ELEMENTS perturbed entries.
        batch = max(1, min(_VMAP_MAX // k, _MAX_ROW_ELEMENTS // (n * k)))
        if n <= batch:
            diffs = f_diffs(positions)
        else:
            chunks = -(-n // batch)
            idx = jnp.minimum(jnp.arange(chunks * batch), n - 1).reshape(chunks, batch)
            diffs = jnp.moveaxis(lax.map(f_diffs, idx), 0, 1).reshape(k, -1)[:, :n]
        acc = jnp.promote_types(diffs.dtype, flat.dtype)
        # Divide by the step actually taken after rounding, not the nominal 2 * eps.
        taken = jnp.stack([p.astype(acc) - m.astype(acc) for p, m in zip(plus, minus,
                                                                          strict=True)])
        return (diffs.astype(acc) / taken).astype(flat.dtype)

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
    r"""Compare ``jax.grad(f)`` with :func:`numerical_grad`: per-leaf max errors and a verdict.

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

    **The finite differences' own error is measured, not assumed.** Each entry is differenced
    with the step :math:`h` and with :math:`h/2`; their disagreement :math:`d_i` estimates that
    entry's error (truncation shrinks 4x with the step, round-off doubles). The rounding of
    ``f`` itself bounds it from below: :math:`u\,|f(\theta)| / h` (:math:`u` the unit
    round-off), the most a centered difference can resolve at that magnitude. An entry's noise
    is :math:`\nu_i = \max(d_i, \operatorname{median}_j d_j, u |f| / h)`, and its error

    .. math:: r_i = \frac{|g_i - \hat g_i|}{\max(|g_i|, |\hat g_i|, m \nu_i / \text{tol})},
        \qquad m = \text{NOISE\_MARGIN} = 4

    is at most ``tol`` when the gradients agree to ``tol`` (relative) *or* to within ``m``
    times the noise (absolute). The verdict (``report.verdict``):

    * ``"failed"``: some :math:`r_i > \text{tol}` -- an error the noise cannot explain;
    * ``"inconclusive"``: none, but :math:`m \cdot \text{typical noise} > \text{RESOLUTION}
      \cdot \max_i \max(|g_i|, |\hat g_i|)` (``RESOLUTION = 0.1``): a gradient wrong by 10%
      could have passed.
      Typical in float32 for ``f`` of large magnitude (``1e6 + sum(sin(x))``: every difference
      rounds to 0 or a multiple of ``ulp(1e6) / 2h``); check again in float64
      (``with jax.enable_x64(True):`` and float64 params);
    * ``"passed"``: neither (``report.passed`` is ``verdict == "passed"``).

    Args:
      f: ``params -> scalar``; must be traceable by JAX.
      params: pytree of real float arrays (check at a point away from kinks: within ``h`` of a
        kink the differences are not a derivative, and the check fails or is inconclusive).
      eps: finite-difference step :math:`h` (default by dtype, above).
      tol: max allowed relative error (default by dtype, above).
      floor: a fixed denominator floor for :func:`relative_error` instead of
        :math:`m \nu_i / \text{tol}` (the verdict's resolution still uses the measured noise).

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
    unit_roundoff = float(jnp.finfo(lowest).eps) / 2

    @jax.jit
    def run(params):
        # One compilation for the value, both gradients, the noise and the per-leaf errors.
        value, analytic = jax.value_and_grad(f)(params)
        flat, unravel = ravel_pytree(params)
        a_flat = ravel_pytree(analytic)[0]
        acc = jnp.promote_types(jnp.result_type(flat, a_flat), jnp.float32)  # 16-bit in f32
        a_flat = a_flat.astype(acc)
        if flat.size == 0:
            zero = jnp.zeros((), acc)
            return [], zero, zero
        num = _differences(f, unravel, flat, (eps, eps / 2)).astype(acc)
        n_flat = num[0]
        # Noise: the two steps' disagreement, at least its median over the entries and the
        # rounding of f at its magnitude (u |f| / h: what a centered difference can resolve).
        d = jnp.abs(num[0] - num[1])
        d = jnp.where(jnp.isfinite(d), d, jnp.inf)
        size = jnp.where(jnp.isfinite(value), jnp.abs(value), 0.0).astype(acc)
        typical = jnp.maximum(jnp.median(d), unit_roundoff * size / eps)
        threshold = NOISE_MARGIN * jnp.maximum(d, typical)
        if floor is not None:
            fl = jnp.asarray(floor, acc)
        elif tol > 0:
            fl = threshold / tol
        else:  # tol = 0: plain relative errors, only exact agreement passes
            fl = jnp.finfo(acc).tiny
        err = relative_error(a_flat, n_flat, floor=fl)
        # Per leaf: split the raveled errors back along the leaves.
        leaf_errors, start = [], 0
        for leaf in jax.tree_util.tree_leaves(params):
            size_i = int(np.prod(jnp.shape(leaf)))
            part = err[start:start + size_i]
            leaf_errors.append(jnp.max(part) if size_i else jnp.zeros((), acc))
            start += size_i
        # The gradient's scale; both exactly 0 everywhere (a step function) is exact agreement.
        scale = jnp.maximum(jnp.max(jnp.abs(a_flat)), jnp.max(jnp.abs(n_flat)))
        scale = jnp.where(jnp.isfinite(scale), scale, 0.0)
        resolution = jnp.where(scale > 0, NOISE_MARGIN * typical / scale, 0.0)
        return leaf_errors, resolution, typical

    leaf_errors, resolution, _ = jax.device_get(run(params))
    errors = {
        jax.tree_util.keystr(path): float(e)
        for (path, _), e in zip(with_path, leaf_errors, strict=True)
    }
    values = list(errors.values())
    max_error = float(np.max(values)) if values else 0.0
    resolution = float(resolution)
    if not max_error <= tol:  # NaN too
        verdict = "failed"
    elif not resolution <= RESOLUTION:
        verdict = "inconclusive"
    else:
        verdict = "passed"
    return GradCheckReport(errors=errors, max_error=max_error, tol=float(tol),
                           passed=verdict == "passed", verdict=verdict, resolution=resolution)
