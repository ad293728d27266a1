"""Data preprocessing as fit/transform pairs of pure functions, like optax's init/update.

Each step is a factory returning a :class:`Preprocessor` of three pure functions:

* ``fit(x) -> state`` — statistics of the **training** data (a NamedTuple of arrays),
* ``transform(state, x) -> x'`` — apply them to any data (train, validation, test),
* ``inverse_transform(state, x') -> x`` — undo the transform (``None`` where no inverse exists).

Example::

    pre = whiten()
    st = pre.fit(x_train)                     # statistics of the training set only
    z_test = jax.jit(pre.transform)(st, x_test)

Conventions:

* ``x`` has shape ``[n, d]`` (``[n, ...]`` for :func:`center`, :func:`standardize`,
  :func:`mean_image` and :func:`per_channel_mean`). ``transform`` accepts any number of leading
  batch axes (``[..., d]``), e.g. the stacked ``[num_batches, batch_size, d]`` of
  :func:`jaxnn.data.epoch_batches`.
* **fit is a one-time host computation in float64.** Means, variances, the covariance and its
  eigendecomposition are computed with numpy in float64 on the host, each column first divided
  by a power of two near its largest magnitude (exact), and streamed over row chunks (no
  float64 copy of the whole data set). So the statistics do not depend on the data's scale:
  any finite float32 data — values near ``3e38`` or ``1e-30`` included — gives the same
  transformed result up to float32 rounding, and a power-of-two rescaling of ``x`` gives
  exactly rescaled statistics. The state is float32 (float64 if ``x`` is float64 and x64 is
  enabled); the variances of :func:`pca` overflow to ``inf`` in a float32 state when
  :math:`\\lambda > 3.4 \\times 10^{38}` (``|x| \\gtrsim 10^{19}``), which its ``transform`` does
  not use.
* ``fit`` checks its input eagerly: NaN or inf raises ``ValueError``. Under ``jax.jit`` (or
  ``vmap``) the same float64 host computation runs through :func:`jax.pure_callback`, so a
  jitted fit equals the eager one; non-finite traced input gives an all-NaN state. ``fit`` is
  not differentiable (its statistics are data, not parameters).
* ``transform`` and ``inverse_transform`` are plain ``jnp`` code: they run under ``jit``,
  ``vmap`` and ``grad`` on any device, in at least float32; outputs keep the input's float dtype
  (bfloat16 in, bfloat16 out; integer inputs give float32).
* Covariance-based steps (:func:`pca`, :func:`whiten`) use the unbiased covariance
  :math:`\\frac{1}{n-1} X_c^\\top X_c` (as ``np.cov`` and scikit-learn's PCA);
  :func:`standardize` uses the population variance :math:`\\frac1n\\sum (x-\\mu)^2` (as
  ``np.std`` and scikit-learn's ``StandardScaler``).
* Thresholds are relative, so that they too are independent of the data's units:
  :func:`standardize`'s ``eps`` is relative to each feature's magnitude, :func:`whiten`'s to the
  mean variance.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxnn import registry as _registry

__all__ = [
    "REGISTRY",
    "ChainState",
    "EmptyState",
    "MeanState",
    "PCAState",
    "Preprocessor",
    "StandardizeState",
    "WhitenState",
    "center",
    "chain",
    "entry",
    "get",
    "identity",
    "mean_image",
    "names",
    "pca",
    "PreprocessingEntry",
    "per_channel_mean",
    "standardize",
    "whiten",
]

Array = jax.Array

_HIGHEST = jax.lax.Precision.HIGHEST  # full float32 matmuls (TPUs default to bfloat16 passes)

# Host passes work on row chunks of at most this many float64 values (32 MiB).
_CHUNK_ELEMENTS = 2**22


class Preprocessor(NamedTuple):
    """A preprocessing step: ``fit(x) -> state``, ``transform(state, x)``, ``inverse_transform``.

    ``inverse_transform`` is ``None`` when the step has no inverse.
    """

    fit: Callable[[ArrayLike], Any]
    transform: Callable[[Any, ArrayLike], Array]
    inverse_transform: Callable[[Any, ArrayLike], Array] | None = None


class EmptyState(NamedTuple):
    """State of :func:`identity`: nothing."""


class MeanState(NamedTuple):
    """State of :func:`center`, :func:`mean_image` and :func:`per_channel_mean`."""

    mean: Array


class StandardizeState(NamedTuple):
    """State of :func:`standardize`: the feature mean and the scale it divides by."""

    mean: Array
    scale: Array


class PCAState(NamedTuple):
    """State of :func:`pca`.

    Attributes:
      mean: feature mean, ``[d]``.
      components: orthonormal principal directions as columns, ``[d, k]``, sorted by variance.
      variances: variance along each component (eigenvalues of the covariance), ``[k]``,
        descending.
    """

    mean: Array
    components: Array
    variances: Array


class WhitenState(NamedTuple):
    """State of :func:`whiten`: ``z = (x - mean) @ matrix``, ``x = z @ inverse + mean``."""

    mean: Array
    matrix: Array
    inverse: Array


class ChainState(NamedTuple):
    """State of :func:`chain`: one state per step, in order."""

    states: tuple


# --------------------------------------------------------------------------------------------
# fit: input checks and the float64 host computation
# --------------------------------------------------------------------------------------------


def _compute_dtype(dtype) -> jnp.dtype:
    """At least float32; float64 stays float64 (when x64 is enabled)."""
    if jnp.issubdtype(dtype, jnp.floating):
        return jax.dtypes.canonicalize_dtype(jnp.promote_types(dtype, jnp.float32))
    return jnp.dtype(jnp.float32)


def _out_dtype(x: Array) -> jnp.dtype:
    return x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.dtype(jnp.float32)


class _NonFinite(Exception):
    """Raised by the host computations when ``x`` holds NaN or inf."""


def _fit_input(x: ArrayLike, step: str, *, min_examples: int = 1, two_d: bool = False):
    """Static checks of the ``x`` given to ``fit``: a tracer, or a numpy array of real numbers."""
    if not isinstance(x, jax.core.Tracer):
        x = np.asarray(x)
    if jnp.iscomplexobj(x) or not (jnp.issubdtype(x.dtype, jnp.number) or x.dtype == bool):
        raise ValueError(f"{step}.fit: x must be real-valued, got dtype {x.dtype}.")
    if two_d and x.ndim != 2:
        raise ValueError(f"{step}.fit: x must have shape [n, d], got shape {x.shape}.")
    if x.ndim < 1:
        raise ValueError(f"{step}.fit: x must have shape [n, ...], got a scalar.")
    if x.shape[0] < min_examples:
        raise ValueError(
            f"{step}.fit: x needs at least {min_examples} example(s) along axis 0, "
            f"got shape {x.shape}."
        )
    return x


def _fit_on_host(step: str, x, host_fn, shapes: tuple[tuple[int, ...], ...]) -> tuple:
    """``host_fn(numpy x) -> float64 arrays``, cast to the state dtype.

    Concrete ``x``: called directly; NaN/inf raise ``ValueError``. Traced ``x`` (jit, vmap): the
    same function runs on the host through ``jax.pure_callback``; NaN/inf give NaN statistics.
    """
    dtype = _compute_dtype(x.dtype)

    def run(xv):
        out = host_fn(xv)
        with np.errstate(over="ignore"):  # pca variances beyond float32: inf, as documented
            return tuple(np.asarray(a, dtype).reshape(s) for a, s in zip(out, shapes, strict=True))

    if not isinstance(x, jax.core.Tracer):
        try:
            return tuple(jnp.asarray(a) for a in run(x))
        except _NonFinite:
            raise ValueError(f"{step}.fit: x contains NaN or inf.") from None

    def callback(xv):
        try:
            return run(np.asarray(xv))
        except _NonFinite:
            return tuple(np.full(s, np.nan, dtype) for s in shapes)

    structs = tuple(jax.ShapeDtypeStruct(s, dtype) for s in shapes)
    return jax.pure_callback(callback, structs, x, vmap_method="sequential")


def _row_chunks(n: int, f: int):
    step = max(1, _CHUNK_ELEMENTS // max(f, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _pow2(a: np.ndarray) -> np.ndarray:
    """A power of two near ``a`` (elementwise; 1 where ``a`` is 0): dividing by it is exact."""
    return np.where(a > 0, np.ldexp(1.0, np.frexp(a)[1]), 1.0)


def _abs_max(x2: np.ndarray) -> np.ndarray:
    """Per-column max |x| of a 2-D array (float64); raises :class:`_NonFinite` on NaN/inf."""
    out = np.zeros(x2.shape[1])
    for rows in _row_chunks(*x2.shape):
        out = np.maximum(out, np.abs(x2[rows].astype(np.float64)).max(axis=0))
    if not np.isfinite(out).all():
        raise _NonFinite
    return out


def _column_moments(x2: np.ndarray, scale: np.ndarray, *, second: bool):
    """Mean and population variance of the columns of ``x2 / scale``, in float64.

    Summed around the first row (a constant column has exactly its value as mean and exactly
    0 variance), then the two-pass variance :math:`\\frac1m \\sum (x - \\mu)^2`.
    """
    m = x2.shape[0]
    chunks = _row_chunks(*x2.shape)
    shift = x2[0].astype(np.float64) / scale
    total = np.zeros_like(shift)
    for rows in chunks:
        total += (x2[rows].astype(np.float64) / scale - shift).sum(axis=0)
    mean = shift + total / m
    if not second:
        return mean, None
    sq = np.zeros_like(mean)
    for rows in chunks:
        sq += np.square(x2[rows].astype(np.float64) / scale - mean).sum(axis=0)
    return mean, sq / m


def _host_mean(x2: np.ndarray) -> np.ndarray:
    """Per-column mean of a 2-D array, scale-independent (per-column power-of-two scaling)."""
    scale = _pow2(_abs_max(x2))
    return _column_moments(x2, scale, second=False)[0] * scale


def _host_eigh_cov(x2: np.ndarray):
    """Mean, covariance eigenvalues (descending, >= 0) and eigenvectors (columns) of ``[n, d]``.

    Returned in units of ``unit`` (a power of two near max |x|, returned too): the mean is
    ``mean * unit`` and the eigenvalues ``evals * unit**2`` in data units. Every eigenvector's
    largest-magnitude entry is positive (deterministic signs).
    """
    n, d = x2.shape
    unit = float(_pow2(np.max(_abs_max(x2), initial=0.0)))
    mean, _ = _column_moments(x2, np.full(d, unit), second=False)
    cov = np.zeros((d, d))
    for rows in _row_chunks(n, d):
        xc = x2[rows].astype(np.float64) / unit - mean
        cov += xc.T @ xc
    cov = (cov + cov.T) / (2 * (n - 1))  # exactly symmetric
    evals, evecs = np.linalg.eigh(cov)
    evals, evecs = np.maximum(evals[::-1], 0.0), evecs[:, ::-1]  # descending; clip -0 noise
    pivot = evecs[np.argmax(np.abs(evecs), axis=0), np.arange(d)]
    evecs = evecs * np.where(pivot < 0, -1.0, 1.0)
    return mean, evals, evecs, unit


# --------------------------------------------------------------------------------------------
# transform helpers
# --------------------------------------------------------------------------------------------


def _transform_input(x: ArrayLike, feature_shape: tuple[int, ...], step: str, stat: Array):
    """Check ``x``'s trailing shape against the fitted one; return (x in compute dtype, dtype)."""
    x = jnp.asarray(x)
    k = len(feature_shape)
    if x.ndim < k or tuple(x.shape[x.ndim - k :]) != tuple(feature_shape):
        raise ValueError(
            f"{step}: x must have shape [..., {', '.join(map(str, feature_shape))}] "
            f"(the shape fitted on), got shape {x.shape}."
        )
    out = _out_dtype(x)
    return x.astype(jnp.promote_types(_compute_dtype(x.dtype), stat.dtype)), out


def _half_centered(x: Array, mean: Array) -> Array:
    """``(x - mean) / 2``, computed as ``x/2 - mean/2``: finite for any finite float32 ``x`` and
    ``mean`` (``x - mean`` alone overflows when they have opposite signs near the float max).
    Halving is exact, so elsewhere this rounds exactly like ``x - mean``."""
    return x * 0.5 - mean * 0.5


def _divide(a: Array, b: Array) -> Array:
    """``a / b`` exact to rounding for any finite float32 ``b``: ``b = m 2^e`` with
    ``m`` in [0.5, 1), and ``(a 2^-e) / m``. XLA divides by a broadcast divisor as a multiply by
    its reciprocal, and the reciprocal of ``b`` above about 8.5e37 is subnormal, which XLA:CPU
    flushes to zero (``x / 1e38`` would give 0)."""
    m, e = jnp.frexp(b)
    return jnp.ldexp(a, -e) / m


def _project(x: Array, mean: Array, matrix: Array) -> Array:
    """``(x - mean) @ matrix``, with the centring halved (and doubled back) against overflow."""
    return jnp.matmul(_half_centered(x, mean), matrix, precision=_HIGHEST) * 2


# --------------------------------------------------------------------------------------------
# steps
# --------------------------------------------------------------------------------------------


def identity() -> Preprocessor:
    """No preprocessing (registry name ``"none"``): ``x' = x``.

    Example:
      >>> pre = identity()
      >>> pre.transform(pre.fit(jnp.ones((2, 3))), jnp.ones((2, 3))).shape
      (2, 3)
    """

    def fit(x: ArrayLike) -> EmptyState:
        del x
        return EmptyState()

    def transform(state: EmptyState, x: ArrayLike) -> Array:
        del state
        return jnp.asarray(x)

    return Preprocessor(fit, transform, transform)


def center() -> Preprocessor:
    """Subtract the mean of every feature (mean subtraction).

    .. math::
        \\mu = \\frac1n \\sum_{i=1}^n x_i, \\qquad x' = x - \\mu, \\qquad x = x' + \\mu

    ``x`` is ``[n, d]`` (or ``[n, ...]``: the mean is taken over axis 0 only, like
    :func:`mean_image`). The mean is computed in float64 on the host (see the module notes).

    Example:
      >>> pre = center()
      >>> x = jnp.array([[1.0, 2.0], [3.0, 6.0]])
      >>> pre.transform(pre.fit(x), x).tolist()
      [[-1.0, -2.0], [1.0, 2.0]]
    """
    return _mean_subtraction("center")


def mean_image() -> Preprocessor:
    """Subtract the mean image over the training set (AlexNet style), keeping the image shape.

    .. math::
        \\bar{X} = \\frac1n \\sum_{i=1}^n X_i \\in \\mathbb{R}^{h \\times w \\times c},
        \\qquad X' = X - \\bar{X}

    Works for ``x`` of any shape ``[n, ...]`` (e.g. ``[n, h, w, c]``); the state's mean has shape
    ``x.shape[1:]``.

    Example:
      >>> pre = mean_image()
      >>> st = pre.fit(jnp.ones((4, 8, 8, 3)))
      >>> st.mean.shape
      (8, 8, 3)
    """
    return _mean_subtraction("mean_image")


def _subtract(step: str, mean_shape_check):
    """transform / inverse_transform of a mean-subtraction state."""

    def transform(state: MeanState, x: ArrayLike) -> Array:
        x, out = mean_shape_check(state, x, "transform")
        return (x - state.mean).astype(out)

    def inverse_transform(state: MeanState, x: ArrayLike) -> Array:
        x, out = mean_shape_check(state, x, "inverse_transform")
        return (x + state.mean).astype(out)

    return transform, inverse_transform


def _mean_subtraction(step: str) -> Preprocessor:
    def fit(x: ArrayLike) -> MeanState:
        x = _fit_input(x, step)
        feat = x.shape[1:]
        (mean,) = _fit_on_host(step, x, lambda v: (_host_mean(v.reshape(len(v), -1)),), (feat,))
        return MeanState(mean)

    def check(state: MeanState, x: ArrayLike, name: str):
        return _transform_input(x, state.mean.shape, f"{step}.{name}", state.mean)

    return Preprocessor(fit, *_subtract(step, check))


def per_channel_mean(*, axis: int = -1) -> Preprocessor:
    """Subtract one mean per channel (VGG style), pooled over examples and positions.

    .. math::
        \\mu_c = \\operatorname{mean}_{i, h, w} X_{i,h,w,c}, \\qquad
        X'_{\\cdot,c} = X_{\\cdot,c} - \\mu_c

    The state's mean has ``x.shape[1:]`` with every axis but the channel axis set to 1, so it
    broadcasts over images of any spatial size.

    Args:
      axis: channel axis of the ``fit`` input (``-1`` for NHWC, ``1`` for NCHW); not the batch
        axis 0.

    Example:
      >>> pre = per_channel_mean()
      >>> pre.fit(jnp.ones((4, 8, 8, 3))).mean.shape
      (1, 1, 3)
    """
    step = "per_channel_mean"

    def fit(x: ArrayLike) -> MeanState:
        x = _fit_input(x, step)
        if x.ndim < 2:
            raise ValueError(f"{step}.fit: x must have shape [n, ..., channels], got {x.shape}.")
        ax = axis % x.ndim if -x.ndim <= axis < x.ndim else None
        if ax is None or ax == 0:
            raise ValueError(
                f"{step}: axis={axis} must name a channel axis of x with shape {x.shape}, "
                "not the batch axis 0."
            )
        channels = x.shape[ax]
        shape = tuple(channels if a == ax else 1 for a in range(1, x.ndim))

        def host(v):
            return (_host_mean(np.moveaxis(v, ax, -1).reshape(-1, channels)),)

        (mean,) = _fit_on_host(step, x, host, (shape,))
        return MeanState(mean)

    def check(state: MeanState, x: ArrayLike, name: str):
        x = jnp.asarray(x)
        mean = state.mean
        ok = x.ndim >= mean.ndim and all(
            m == 1 or m == s for m, s in zip(mean.shape, x.shape[x.ndim - mean.ndim :], strict=True)
        )
        if not ok:
            raise ValueError(
                f"{step}.{name}: x with shape {x.shape} does not match the fitted channel layout "
                f"{mean.shape}."
            )
        return x.astype(jnp.promote_types(_compute_dtype(x.dtype), mean.dtype)), _out_dtype(x)

    return Preprocessor(fit, *_subtract(step, check))


def standardize(*, eps: float = 1e-8) -> Preprocessor:
    """Zero mean and unit variance per feature (normalization).

    .. math::
        \\mu_j = \\frac1n \\sum_i x_{ij}, \\quad
        \\sigma_j^2 = \\frac1n \\sum_i (x_{ij} - \\mu_j)^2, \\quad
        s_j = \\begin{cases} \\sigma_j & \\sigma_j > \\varepsilon \\max_i |x_{ij}| \\\\
        \\max_{i,k} |x_{ik}| & \\text{otherwise} \\end{cases}, \\quad
        x'_{ij} = \\frac{x_{ij} - \\mu_j}{s_j}

    A feature whose spread is at most ``eps`` times its own magnitude is *constant*: it becomes
    exactly 0 on the training data, never NaN, and new data is not blown up by a tiny divisor —
    it is divided by the largest magnitude in the training data instead (1 if that is all
    zeros). Both thresholds are relative, so the result does not depend on the data's units
    (multiplying ``x`` by any factor gives the same ``x'`` up to rounding). The statistics are
    computed in float64 on the host; the inverse :math:`x = x' s + \\mu` is exact up to
    rounding.

    Args:
      eps: relative threshold for constant features (``>= 0``, finite).

    Example:
      >>> pre = standardize()
      >>> x = jnp.array([[0.0, 5.0], [2.0, 5.0]])
      >>> pre.transform(pre.fit(x), x).tolist()
      [[-1.0, 0.0], [1.0, 0.0]]
    """
    if not (np.isfinite(eps) and eps >= 0):
        raise ValueError(f"standardize: eps must be finite and >= 0, got {eps}.")
    step = "standardize"

    def host(v):
        x2 = v.reshape(len(v), -1)
        amax = _abs_max(x2)
        scale = _pow2(amax)
        mean, var = _column_moments(x2, scale, second=True)
        std = np.sqrt(var)  # in units of `scale`
        fallback = float(np.max(amax, initial=0.0)) or 1.0
        constant = std <= eps * (amax / scale)
        return mean * scale, np.where(constant, fallback, std * scale)

    def fit(x: ArrayLike) -> StandardizeState:
        x = _fit_input(x, step)
        feat = x.shape[1:]
        mean, scale = _fit_on_host(step, x, host, (feat, feat))
        return StandardizeState(mean, scale)

    def transform(state: StandardizeState, x: ArrayLike) -> Array:
        x, out = _transform_input(x, state.mean.shape, f"{step}.transform", state.mean)
        return (_divide(_half_centered(x, state.mean), state.scale) * 2).astype(out)

    def inverse_transform(state: StandardizeState, x: ArrayLike) -> Array:
        x, out = _transform_input(x, state.mean.shape, f"{step}.inverse_transform", state.mean)
        return (x * state.scale + state.mean).astype(out)

    return Preprocessor(fit, transform, inverse_transform)


def pca(k: int) -> Preprocessor:
    """Principal component analysis: decorrelate and keep the ``k`` directions of most variance.

    With the covariance eigendecomposition :math:`\\Sigma = \\frac{1}{n-1} X_c^\\top X_c = U
    \\Lambda U^\\top` (:math:`\\lambda_1 \\ge \\dots \\ge \\lambda_d`, :math:`X_c = X - \\mu`):

    .. math::
        z = (x - \\mu)\\, U_k, \\qquad \\hat{x} = z\\, U_k^\\top + \\mu

    where :math:`U_k` holds the first ``k`` eigenvectors as orthonormal columns. ``z`` is
    decorrelated with variances :math:`\\lambda_1 \\dots \\lambda_k` on the training data.
    ``inverse_transform`` is the least-squares reconstruction from ``k`` components: exact for
    ``k = d``, an approximation (the projection onto the top-``k`` subspace) for ``k < d``.
    Each component's sign is fixed so that its largest-magnitude entry is positive. The
    covariance and its eigendecomposition are computed in float64 on the host.

    Args:
      k: number of components, ``1 <= k <= d``.

    Example:
      >>> pre = pca(1)
      >>> x = jnp.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
      >>> pre.transform(pre.fit(x), x).shape
      (3, 1)
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"pca: k must be a positive integer (number of components), got {k!r}.")
    k = int(k)
    step = "pca"

    def host(v):
        mean, evals, evecs, unit = _host_eigh_cov(v)
        return mean * unit, evecs[:, :k], evals[:k] * unit**2

    def fit(x: ArrayLike) -> PCAState:
        x = _fit_input(x, step, min_examples=2, two_d=True)
        d = x.shape[1]
        if k > d:
            raise ValueError(f"pca: k={k} exceeds the number of features d={d}.")
        return PCAState(*_fit_on_host(step, x, host, ((d,), (d, k), (k,))))

    def transform(state: PCAState, x: ArrayLike) -> Array:
        x, out = _transform_input(x, state.mean.shape, f"{step}.transform", state.mean)
        return _project(x, state.mean, state.components).astype(out)

    def inverse_transform(state: PCAState, z: ArrayLike) -> Array:
        z, out = _transform_input(z, state.variances.shape, f"{step}.inverse_transform", state.mean)
        return (jnp.matmul(z, state.components.T, precision=_HIGHEST) + state.mean).astype(out)

    return Preprocessor(fit, transform, inverse_transform)


def whiten(*, method: str = "pca", eps: float = 1e-5) -> Preprocessor:
    """Whitening: decorrelate and scale every direction to unit variance.

    With :math:`\\Sigma = \\frac{1}{n-1} X_c^\\top X_c = U \\Lambda U^\\top` and the mean variance
    :math:`\\bar\\lambda = \\operatorname{tr}\\Sigma / d`:

    .. math::
        W_\\text{pca} = U (\\Lambda + \\varepsilon \\bar\\lambda I)^{-1/2}, \\qquad
        W_\\text{zca} = U (\\Lambda + \\varepsilon \\bar\\lambda I)^{-1/2} U^\\top, \\qquad
        z = (x - \\mu)\\, W

    so the training data's covariance becomes :math:`\\Lambda (\\Lambda + \\varepsilon
    \\bar\\lambda I)^{-1} \\approx I`. PCA whitening expresses the result in the eigenbasis; ZCA
    rotates back to the original axes (:math:`W` symmetric), which makes ``z`` the whitened data
    closest to ``x`` (images still look like images). ``eps`` keeps directions of (near-)zero
    variance from being blown up; it is **relative to the mean variance** :math:`\\bar\\lambda`
    (for standardized data, :math:`\\bar\\lambda = 1`: the usual absolute ``eps``), so whitening
    does not depend on the units of ``x``. ``inverse_transform`` multiplies by :math:`W^{-1}`
    (exact up to rounding). ``eps = 0`` needs a full-rank covariance (else ``inf``/NaN). The
    covariance and its eigendecomposition are computed in float64 on the host.

    Args:
      method: ``"pca"`` or ``"zca"``.
      eps: added to every eigenvalue, in units of the mean variance, before the inverse square
        root (finite, ``>= 0``).

    Example:
      >>> pre = whiten(method="zca")
      >>> x = jax.random.normal(jax.random.key(0), (100, 3))
      >>> st = pre.fit(x)
      >>> st.matrix.shape
      (3, 3)
    """
    if method not in ("pca", "zca"):
        raise ValueError(f"whiten: method must be 'pca' or 'zca', got {method!r}.")
    if not (np.isfinite(eps) and eps >= 0):
        raise ValueError(f"whiten: eps must be finite and >= 0, got {eps}.")
    step = "whiten"

    def host(v):
        mean, evals, u, unit = _host_eigh_cov(v)
        ref = float(np.mean(evals)) or 1.0  # mean variance (in units of unit**2)
        root = np.sqrt(evals + eps * ref) * unit  # in data units
        with np.errstate(divide="ignore", invalid="ignore"):  # eps = 0, singular: inf, as said
            matrix, inverse = u / root, (u * root).T  # U diag(1/root), diag(root) U^T
        if method == "zca":
            matrix, inverse = matrix @ u.T, u @ inverse
        return mean * unit, matrix, inverse

    def fit(x: ArrayLike) -> WhitenState:
        x = _fit_input(x, step, min_examples=2, two_d=True)
        d = x.shape[1]
        return WhitenState(*_fit_on_host(step, x, host, ((d,), (d, d), (d, d))))

    def transform(state: WhitenState, x: ArrayLike) -> Array:
        x, out = _transform_input(x, state.mean.shape, f"{step}.transform", state.mean)
        return _project(x, state.mean, state.matrix).astype(out)

    def inverse_transform(state: WhitenState, z: ArrayLike) -> Array:
        z, out = _transform_input(z, state.mean.shape, f"{step}.inverse_transform", state.mean)
        return (jnp.matmul(z, state.inverse, precision=_HIGHEST) + state.mean).astype(out)

    return Preprocessor(fit, transform, inverse_transform)


def chain(*steps: Preprocessor) -> Preprocessor:
    """Compose steps: each is fitted on the output of the previous ones.

    .. math::
        T = T_m \\circ \\dots \\circ T_1, \\qquad T^{-1} = T_1^{-1} \\circ \\dots \\circ T_m^{-1}

    ``inverse_transform`` is ``None`` if any step has none.

    Example:
      >>> pre = chain(center(), pca(2))
      >>> st = pre.fit(jax.random.normal(jax.random.key(0), (10, 4)))
      >>> len(st.states)
      2
    """
    for i, s in enumerate(steps):
        if not isinstance(s, Preprocessor):
            raise ValueError(f"chain: step {i} must be a Preprocessor, got {type(s).__name__}.")

    def fit(x: ArrayLike) -> ChainState:
        states = []
        for s in steps:
            st = s.fit(x)
            x = s.transform(st, x)
            states.append(st)
        return ChainState(tuple(states))

    def transform(state: ChainState, x: ArrayLike) -> Array:
        x = jnp.asarray(x)
        for s, st in zip(steps, state.states, strict=True):
            x = s.transform(st, x)
        return x

    def inverse_transform(state: ChainState, x: ArrayLike) -> Array:
        x = jnp.asarray(x)
        for s, st in zip(reversed(steps), reversed(state.states), strict=True):
            x = s.inverse_transform(st, x)
        return x

    invertible = all(s.inverse_transform is not None for s in steps)
    return Preprocessor(fit, transform, inverse_transform if invertible else None)


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class PreprocessingEntry(_registry.Entry):
    """A preprocessing step's registry entry: the factory and, for a step that cannot be built
    without options, ``usage``, how to give them (shown when they are missing)."""

    usage: str | None = None


#: The steps by name (:class:`jaxnn.registry.Registry` of factories returning a
#: :class:`Preprocessor`).
REGISTRY: _registry.Registry[PreprocessingEntry] = _registry.Registry(
    "preprocessing", entry_type=PreprocessingEntry, factory=True)
REGISTRY.register("none", identity)
REGISTRY.register("center", center)
REGISTRY.register("standardize", standardize)
REGISTRY.register("pca", pca, usage="k, the number of components: get('pca', k=32)")
REGISTRY.register("whiten", whiten)
REGISTRY.register("zca", functools.partial(whiten, method="zca"))
REGISTRY.register("mean_image", mean_image)
REGISTRY.register("per_channel_mean", per_channel_mean)


def names() -> tuple[str, ...]:
    """Names accepted by :func:`get`."""
    return REGISTRY.names()


def entry(name: str) -> PreprocessingEntry:
    """The registry entry of ``name`` (:class:`PreprocessingEntry`): the factory, the options
    it takes (``.options``) and needs (``.required``)."""
    return REGISTRY.entry(name)


def get(name: str, **kwargs: Any) -> Preprocessor:
    """Build a preprocessing step by name: ``get("standardize")``, ``get("pca", k=32)``.

    ``"whiten"`` is PCA whitening and ``"zca"`` is ``whiten(method="zca")``; keyword arguments go
    to the factory (``eps``, ``axis``, ``k``).

    Raises:
      ValueError: unknown name (the message lists :func:`names`), a missing ``k`` for ``"pca"``,
        or an option the step does not take.

    Example:
      >>> pre = get("pca", k=2)
      >>> isinstance(pre, Preprocessor)
      True
    """
    e = REGISTRY.entry(name)
    missing = [k for k in e.required if k not in kwargs]
    if missing:
        raise ValueError(f"preprocessing {name!r} needs {e.usage or ', '.join(missing)}.")
    return REGISTRY.get(name, **kwargs)
