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
* ``fit`` computes in at least float32 and the state is float32 (float64 if the input is float64
  and x64 is enabled); outputs keep the input's float dtype (bfloat16 in, bfloat16 out; integer
  inputs give float32).
* ``transform`` and ``inverse_transform`` work under ``jax.jit``; so does ``fit`` (its value
  checks — NaN/inf — run only on concrete, non-traced input).
* Covariance-based steps (:func:`pca`, :func:`whiten`) use the unbiased covariance
  :math:`\\frac{1}{n-1} X_c^\\top X_c` (as ``np.cov`` and scikit-learn's PCA);
  :func:`standardize` uses the population variance :math:`\\frac1n\\sum (x-\\mu)^2` (as
  ``np.std`` and scikit-learn's ``StandardScaler``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = [
    "ChainState",
    "EmptyState",
    "MeanState",
    "PCAState",
    "Preprocessor",
    "StandardizeState",
    "WhitenState",
    "center",
    "chain",
    "get",
    "identity",
    "mean_image",
    "names",
    "pca",
    "per_channel_mean",
    "standardize",
    "whiten",
]

Array = jax.Array

_HIGHEST = jax.lax.Precision.HIGHEST  # full float32 matmuls (TPUs default to bfloat16 passes)


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
# helpers
# --------------------------------------------------------------------------------------------


def _compute_dtype(x: Array) -> jnp.dtype:
    """At least float32; float64 stays float64."""
    if jnp.issubdtype(x.dtype, jnp.floating):
        return jnp.promote_types(x.dtype, jnp.float32)
    return jnp.dtype(jnp.float32)


def _out_dtype(x: Array) -> jnp.dtype:
    return x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.dtype(jnp.float32)


def _fit_input(x: ArrayLike, step: str, *, min_examples: int = 1, two_d: bool = False) -> Array:
    """Validate the ``x`` given to ``fit`` and return it in the compute dtype."""
    x = jnp.asarray(x)
    if two_d and x.ndim != 2:
        raise ValueError(f"{step}.fit: x must have shape [n, d], got shape {x.shape}.")
    if x.ndim < 1:
        raise ValueError(f"{step}.fit: x must have shape [n, ...], got a scalar.")
    if x.shape[0] < min_examples:
        raise ValueError(
            f"{step}.fit: x needs at least {min_examples} example(s) along axis 0, "
            f"got shape {x.shape}."
        )
    if not (jnp.issubdtype(x.dtype, jnp.number) or x.dtype == jnp.bool_) or jnp.iscomplexobj(x):
        raise ValueError(f"{step}.fit: x must be real-valued, got dtype {x.dtype}.")
    x = x.astype(_compute_dtype(x))
    if not isinstance(x, jax.core.Tracer) and not bool(jnp.isfinite(x).all()):
        raise ValueError(f"{step}.fit: x contains NaN or inf.")
    return x


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
    return x.astype(jnp.promote_types(_compute_dtype(x), stat.dtype)), out


def _mean_var(x: Array, axis: int | tuple[int, ...] = 0) -> tuple[Array, Array]:
    """Mean and population variance along ``axis``, computed around the first example.

    Shifting by ``x[0]`` first makes a constant feature's mean exactly its value and its
    variance exactly 0 (no rounding residue), and improves accuracy when ``|mean| >> std``.
    """
    shift = jax.lax.stop_gradient(jnp.take(x, 0, axis=0))
    d = x - shift
    m = jnp.mean(d, axis=axis)
    var = jnp.mean(jnp.square(d - m), axis=axis)
    return shift + m, var


def _eigh_cov(x: Array) -> tuple[Array, Array, Array]:
    """Mean, covariance eigenvalues (descending, >= 0) and eigenvectors (columns) of ``x``."""
    n = x.shape[0]
    mean, _ = _mean_var(x)
    xc = x - mean
    cov = jnp.matmul(xc.T, xc, precision=_HIGHEST) / (n - 1)
    cov = 0.5 * (cov + cov.T)  # exactly symmetric before eigh
    evals, evecs = jnp.linalg.eigh(cov)
    evals, evecs = jnp.maximum(evals[::-1], 0.0), evecs[:, ::-1]  # descending; clip -0 noise
    # Deterministic signs: the largest-magnitude entry of every eigenvector is positive.
    pivot = jnp.take_along_axis(evecs, jnp.argmax(jnp.abs(evecs), axis=0)[None], axis=0)
    evecs = evecs * jnp.where(pivot < 0, -1.0, 1.0).astype(evecs.dtype)
    return mean, evals, evecs


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
    :func:`mean_image`).

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


def _mean_subtraction(step: str) -> Preprocessor:
    def fit(x: ArrayLike) -> MeanState:
        x = _fit_input(x, step)
        return MeanState(_mean_var(x)[0])

    def transform(state: MeanState, x: ArrayLike) -> Array:
        x, out = _transform_input(x, state.mean.shape, f"{step}.transform", state.mean)
        return (x - state.mean).astype(out)

    def inverse_transform(state: MeanState, x: ArrayLike) -> Array:
        x, out = _transform_input(x, state.mean.shape, f"{step}.inverse_transform", state.mean)
        return (x + state.mean).astype(out)

    return Preprocessor(fit, transform, inverse_transform)


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
        pooled = tuple(a for a in range(x.ndim) if a != ax)
        return MeanState(jnp.mean(x, axis=pooled, keepdims=True)[0])

    def _check(state: MeanState, x: ArrayLike, name: str):
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
        return x.astype(jnp.promote_types(_compute_dtype(x), mean.dtype)), _out_dtype(x)

    def transform(state: MeanState, x: ArrayLike) -> Array:
        x, out = _check(state, x, "transform")
        return (x - state.mean).astype(out)

    def inverse_transform(state: MeanState, x: ArrayLike) -> Array:
        x, out = _check(state, x, "inverse_transform")
        return (x + state.mean).astype(out)

    return Preprocessor(fit, transform, inverse_transform)


def standardize(*, eps: float = 1e-8) -> Preprocessor:
    """Zero mean and unit variance per feature (normalization).

    .. math::
        \\mu_j = \\frac1n \\sum_i x_{ij}, \\quad
        \\sigma_j^2 = \\frac1n \\sum_i (x_{ij} - \\mu_j)^2, \\quad
        s_j = \\begin{cases} \\sigma_j & \\sigma_j > \\varepsilon \\\\ 1 & \\text{otherwise}
        \\end{cases}, \\quad x'_{ij} = \\frac{x_{ij} - \\mu_j}{s_j}

    A constant feature (:math:`\\sigma_j \\le \\varepsilon`) is only centered: it becomes exactly 0
    on the training data, never NaN, and new data is not blown up by a tiny divisor (the
    scikit-learn ``StandardScaler`` rule). The inverse :math:`x = x' s + \\mu` is exact.

    Args:
      eps: standard deviations at or below ``eps`` count as constant features.

    Example:
      >>> pre = standardize()
      >>> x = jnp.array([[0.0, 5.0], [2.0, 5.0]])
      >>> pre.transform(pre.fit(x), x).tolist()
      [[-1.0, 0.0], [1.0, 0.0]]
    """
    if not eps >= 0:
        raise ValueError(f"standardize: eps must be >= 0, got {eps}.")
    step = "standardize"

    def fit(x: ArrayLike) -> StandardizeState:
        x = _fit_input(x, step)
        mean, var = _mean_var(x)
        std = jnp.sqrt(var)
        return StandardizeState(mean, jnp.where(std > eps, std, jnp.ones_like(std)))

    def transform(state: StandardizeState, x: ArrayLike) -> Array:
        x, out = _transform_input(x, state.mean.shape, f"{step}.transform", state.mean)
        return ((x - state.mean) / state.scale).astype(out)

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
    Each component's sign is fixed so that its largest-magnitude entry is positive.

    Args:
      k: number of components, ``1 <= k <= d``.

    Example:
      >>> pre = pca(1)
      >>> x = jnp.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
      >>> pre.transform(pre.fit(x), x).shape
      (3, 1)
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"pca: k must be a positive integer (number of components), got {k!r}.")
    step = "pca"

    def fit(x: ArrayLike) -> PCAState:
        x = _fit_input(x, step, min_examples=2, two_d=True)
        if k > x.shape[1]:
            raise ValueError(f"pca: k={k} exceeds the number of features d={x.shape[1]}.")
        mean, evals, evecs = _eigh_cov(x)
        return PCAState(mean, evecs[:, :k], evals[:k])

    def transform(state: PCAState, x: ArrayLike) -> Array:
        x, out = _transform_input(x, state.mean.shape, f"{step}.transform", state.mean)
        return jnp.matmul(x - state.mean, state.components, precision=_HIGHEST).astype(out)

    def inverse_transform(state: PCAState, z: ArrayLike) -> Array:
        z, out = _transform_input(z, state.variances.shape, f"{step}.inverse_transform", state.mean)
        return (jnp.matmul(z, state.components.T, precision=_HIGHEST) + state.mean).astype(out)

    return Preprocessor(fit, transform, inverse_transform)


def whiten(*, method: str = "pca", eps: float = 1e-5) -> Preprocessor:
    """Whitening: decorrelate and scale every direction to unit variance.

    With :math:`\\Sigma = \\frac{1}{n-1} X_c^\\top X_c = U \\Lambda U^\\top`:

    .. math::
        W_\\text{pca} = U (\\Lambda + \\varepsilon I)^{-1/2}, \\qquad
        W_\\text{zca} = U (\\Lambda + \\varepsilon I)^{-1/2} U^\\top, \\qquad
        z = (x - \\mu)\\, W

    so the training data's covariance becomes :math:`\\Lambda (\\Lambda + \\varepsilon I)^{-1}
    \\approx I`. PCA whitening expresses the result in the eigenbasis; ZCA rotates back to the
    original axes (:math:`W` symmetric), which makes ``z`` the whitened data closest to ``x``
    (images still look like images). ``eps`` keeps directions of (near-)zero variance from
    being blown up. ``inverse_transform`` multiplies by :math:`W^{-1}` (exact).

    Args:
      method: ``"pca"`` or ``"zca"``.
      eps: added to every eigenvalue before the inverse square root.

    Example:
      >>> pre = whiten(method="zca")
      >>> x = jax.random.normal(jax.random.key(0), (100, 3))
      >>> st = pre.fit(x)
      >>> st.matrix.shape
      (3, 3)
    """
    if method not in ("pca", "zca"):
        raise ValueError(f"whiten: method must be 'pca' or 'zca', got {method!r}.")
    if not eps >= 0:
        raise ValueError(f"whiten: eps must be >= 0, got {eps}.")
    step = "whiten"

    def fit(x: ArrayLike) -> WhitenState:
        x = _fit_input(x, step, min_examples=2, two_d=True)
        mean, evals, u = _eigh_cov(x)
        root = jnp.sqrt(evals + eps)
        matrix, inverse = u / root, (u * root).T  # U diag(1/root), diag(root) U^T
        if method == "zca":
            matrix, inverse = (
                jnp.matmul(matrix, u.T, precision=_HIGHEST),
                jnp.matmul(u, inverse, precision=_HIGHEST),
            )
        return WhitenState(mean, matrix, inverse)

    def transform(state: WhitenState, x: ArrayLike) -> Array:
        x, out = _transform_input(x, state.mean.shape, f"{step}.transform", state.mean)
        return jnp.matmul(x - state.mean, state.matrix, precision=_HIGHEST).astype(out)

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

_REGISTRY: dict[str, Callable[..., Preprocessor]] = {
    "none": identity,
    "center": center,
    "standardize": standardize,
    "pca": pca,
    "whiten": whiten,
    "zca": functools.partial(whiten, method="zca"),
    "mean_image": mean_image,
    "per_channel_mean": per_channel_mean,
}


def names() -> tuple[str, ...]:
    """Names accepted by :func:`get`."""
    return tuple(_REGISTRY)


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
    if name not in _REGISTRY:
        raise ValueError(f"unknown preprocessing {name!r}; valid names: {', '.join(_REGISTRY)}.")
    if name == "pca" and "k" not in kwargs:
        raise ValueError("preprocessing 'pca' needs k, the number of components: get('pca', k=32).")
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"preprocessing {name!r}: bad options {kwargs} ({e}).") from None
