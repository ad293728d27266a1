r"""Activation functions: elementwise nonlinearities (and maxout) as plain functions.

Every activation takes an array and returns an array of the **same dtype** (float32, bfloat16,
float16, float64). They are simple ``jnp`` expressions -- or :mod:`jax.nn` itself where it defines
exactly the same function with the right convention at the kink -- so that, jitted, each one runs as
one fused elementwise kernel, never slower than its :mod:`jax.nn` equivalent.

Conventions
-----------
* **Kinks.** Where a function is not differentiable, the gradient is the *left* derivative at the
  kink: ``relu'(0) = 0``, ``leaky_relu'(0) = prelu'(0) = negative slope`` (as in PyTorch), so that
  ``leaky_relu(x, negative_slope=0.0)`` is ``relu`` including its gradient. ``step`` has gradient
  0 everywhere.
* **Options are keyword-only** (``leaky_relu(x, negative_slope=0.1)``, ``gelu(x,
  approximate=True)``, ``maxout(z, 2, axis=1)``); only a required argument is positional:
  prelu's learned ``alpha`` and maxout's ``num_pieces``.
* **Range.** Values and gradients are finite for ``|x|`` up to ``1e4`` in every float dtype
  (sigmoid/softplus/elu use overflow-free forms; the tanh form of GELU is evaluated in float32 for
  16-bit inputs so ``x**3`` cannot overflow).
* **NaN** propagates (``relu(nan) = nan``, ``maxout`` of a group containing NaN is NaN).

Example:

>>> import jax.numpy as jnp
>>> from jaxnn import activations
>>> activations.relu(jnp.array([-1.0, 0.0, 2.0]))
Array([0., 0., 2.], dtype=float32)
>>> activations.get("leaky_relu") is activations.leaky_relu
True
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.typing import ArrayLike

from jaxnn import registry as _registry

__all__ = [
    "linear",
    "identity",
    "step",
    "sigmoid",
    "tanh",
    "hard_tanh",
    "relu",
    "leaky_relu",
    "prelu",
    "elu",
    "selu",
    "swish",
    "silu",
    "gelu",
    "softplus",
    "maxout",
    "get",
    "names",
    "entry",
    "ActivationEntry",
    "REGISTRY",
]


def _via_float32(fn):
    """Evaluate ``fn`` in float32 for bfloat16/float16 inputs and cast back.

    XLA on CPU computes 16-bit transcendentals 1.4-2.9x slower than float32 (measured by
    ``benchmarks/activations.py``); elsewhere the converts fuse into the same kernel. Rounding
    once at the end is also more accurate.
    """

    @functools.wraps(fn)
    def wrapped(x, *args, **kwargs):
        x = jnp.asarray(x)
        if x.dtype in (jnp.bfloat16, jnp.float16):
            return fn(x.astype(jnp.float32), *args, **kwargs).astype(x.dtype)
        return fn(x, *args, **kwargs)

    return wrapped


def _cast_like(y: Array, x: Array) -> Array:
    """Cast ``y`` back to ``x``'s dtype when ``x`` is floating (a float32 slope times a bfloat16
    input must not promote the output to float32)."""
    if jnp.issubdtype(x.dtype, jnp.inexact) and y.dtype != x.dtype:
        return y.astype(x.dtype)
    return y


def linear(x: ArrayLike) -> Array:
    r"""Linear (identity) activation.

    .. math:: f(x) = x, \qquad f'(x) = 1

    >>> linear(jnp.array([-2.0, 3.0]))
    Array([-2.,  3.], dtype=float32)
    """
    return jnp.asarray(x)


identity = linear


@jax.jit
def step(x: ArrayLike) -> Array:
    r"""Heaviside step (the perceptron's threshold unit).

    .. math:: f(x) = \begin{cases} 1 & x \ge 0 \\ 0 & x < 0 \end{cases}

    The gradient is **0 everywhere**, including at ``x = 0`` (it is computed under
    ``stop_gradient``), so nothing trains through a step unit. ``step(nan)`` is ``nan``.

    >>> step(jnp.array([-1.0, 0.0, 2.0]))
    Array([0., 1., 1.], dtype=float32)
    """
    x = jnp.asarray(x)
    # heaviside(x, 1): 1 at x = 0, NaN propagates; stop_gradient makes the gradient exactly 0.
    return jnp.heaviside(lax.stop_gradient(x), jnp.ones((), x.dtype))


@_via_float32
def sigmoid(x: ArrayLike) -> Array:
    r"""Logistic sigmoid (:func:`jax.nn.sigmoid`, ``lax.logistic``).

    .. math:: \sigma(x) = \frac{1}{1 + e^{-x}}, \qquad \sigma'(x) = \sigma(x)(1 - \sigma(x))

    Stable for any magnitude: ``sigmoid(-1e4) = 0`` and ``sigmoid(1e4) = 1`` with gradient 0, no
    overflow warnings or NaN. Saturates (gradient ~0) for ``|x| > ~10``.

    >>> sigmoid(jnp.array([0.0]))
    Array([0.5], dtype=float32)
    """
    return jax.nn.sigmoid(x)


# Not via float32: XLA's native 16-bit tanh is faster forward (measured: 0.78x otherwise).
def tanh(x: ArrayLike) -> Array:
    r"""Hyperbolic tangent: a zero-centred sigmoid, ``tanh(x) = 2 sigmoid(2x) - 1``.

    .. math:: f(x) = \tanh x, \qquad f'(x) = 1 - \tanh^2 x

    >>> tanh(jnp.array([0.0]))
    Array([0.], dtype=float32)
    """
    return jnp.tanh(x)


def relu(x: ArrayLike) -> Array:
    r"""Rectified linear unit (:func:`jax.nn.relu`).

    .. math:: f(x) = \max(0, x), \qquad
        f'(x) = \begin{cases} 1 & x > 0 \\ 0 & x \le 0 \end{cases}

    **Kink:** the gradient at exactly ``x = 0`` is **0** (``jax.nn.relu`` defines it with a
    ``custom_jvp``; a bare ``jnp.maximum(x, 0)`` would give 0.5). ``relu(nan) = nan``.

    >>> jax.grad(relu)(0.0)
    Array(0., dtype=float32, weak_type=True)
    """
    return jax.nn.relu(x)


def hard_tanh(x: ArrayLike) -> Array:
    r"""Hard tanh: tanh's piecewise-linear stand-in, cheap and saturating
    (:func:`jax.nn.hard_tanh`).

    .. math:: f(x) = \max(-1, \min(1, x)), \qquad
        f'(x) = \begin{cases} 1 & |x| \le 1 \\ 0 & |x| > 1 \end{cases}

    **Kinks:** at exactly ``x = +-1`` the gradient is 1 (the linear piece); beyond them 0, so
    units pushed past +-1 stop learning like saturated tanh units. ``hard_tanh(nan) = nan``.

    >>> hard_tanh(jnp.array([-3.0, 0.5, 2.0]))
    Array([-1. ,  0.5,  1. ], dtype=float32)
    """
    return jax.nn.hard_tanh(x)


@jax.jit
def leaky_relu(x: ArrayLike, *, negative_slope: ArrayLike = 0.01) -> Array:
    r"""Leaky ReLU: a small slope ``a`` instead of 0 for negative inputs.

    .. math:: f(x) = \begin{cases} x & x > 0 \\ a x & x \le 0 \end{cases}
        \;=\; \max(a x, x) \text{ for } 0 \le a \le 1

    **Kink:** ``f'(0) = a`` (the left derivative, as in PyTorch), so
    ``leaky_relu(x, negative_slope=0.0)`` equals :func:`relu` including the gradient at 0.
    (:func:`jax.nn.leaky_relu` takes 1 there.) ``negative_slope`` is keyword-only.

    Args:
      x: input array.
      negative_slope: the slope ``a`` for ``x <= 0``; a scalar or an array broadcastable to ``x``.

    >>> leaky_relu(jnp.array([-2.0, 3.0]), negative_slope=0.1)
    Array([-0.2,  3. ], dtype=float32)
    """
    x = jnp.asarray(x)
    return _cast_like(jnp.where(x > 0, x, negative_slope * x), x)


@jax.jit
def prelu(x: ArrayLike, alpha: ArrayLike) -> Array:
    r"""Parametric ReLU: a leaky ReLU whose negative slope ``alpha`` is learned.

    .. math:: f(x) = \begin{cases} x & x > 0 \\ \alpha x & x \le 0 \end{cases}, \qquad
        \frac{\partial f}{\partial \alpha} = \begin{cases} 0 & x > 0 \\ x & x \le 0 \end{cases}

    ``alpha`` is a scalar or per-channel array broadcast against ``x`` (shape ``[C]`` for a
    channels-last ``x`` of shape ``[..., C]``); gradients flow to both ``x`` and ``alpha``.
    **Kink:** ``df/dx`` at 0 is ``alpha``. The output has ``x``'s dtype.

    >>> prelu(jnp.array([[-1.0, -1.0]]), jnp.array([0.1, 0.2]))
    Array([[-0.1, -0.2]], dtype=float32)
    """
    x = jnp.asarray(x)
    return _cast_like(jnp.where(x > 0, x, alpha * x), x)


@_via_float32
def elu(x: ArrayLike, *, alpha: ArrayLike = 1.0) -> Array:
    r"""Exponential linear unit (:func:`jax.nn.elu`).

    .. math:: f(x) = \begin{cases} x & x > 0 \\ \alpha (e^x - 1) & x \le 0 \end{cases}

    Uses the double-``where`` trick (``expm1`` is evaluated on ``min(x, 0)``), so large positive
    ``x`` gives gradient 1, never ``inf * 0 = nan``. **Kink:** ``f'(0) = alpha``.

    >>> elu(jnp.array([1e4, 0.0]))
    Array([10000.,     0.], dtype=float32)
    """
    return jax.nn.elu(x, alpha)


@_via_float32
def selu(x: ArrayLike) -> Array:
    r"""Scaled ELU (self-normalizing networks, Klambauer et al. 2017), :func:`jax.nn.selu`.

    .. math:: f(x) = \lambda \begin{cases} x & x > 0 \\ \alpha (e^x - 1) & x \le 0 \end{cases},
        \quad \lambda \approx 1.0507, \; \alpha \approx 1.6733

    >>> selu(jnp.array([0.0]))
    Array([0.], dtype=float32)
    """
    return jax.nn.selu(x)


@_via_float32
def swish(x: ArrayLike, *, beta: ArrayLike = 1.0) -> Array:
    r"""Swish: :math:`f(x) = x \, \sigma(\beta x)`; with ``beta = 1`` this is SiLU.

    .. math:: f'(x) = \sigma(\beta x) + \beta x\,\sigma(\beta x)(1 - \sigma(\beta x))

    ``beta`` may be a traced/learned array. With the default ``beta = 1.0`` this is
    :func:`jax.nn.silu` exactly.

    >>> swish(jnp.array([0.0, 1.0]))
    Array([0.       , 0.7310586], dtype=float32)
    """
    if isinstance(beta, (int, float)) and beta == 1:
        return jax.nn.silu(x)
    x = jnp.asarray(x)
    return _cast_like(x * jax.nn.sigmoid(beta * x), x)


@_via_float32
def silu(x: ArrayLike) -> Array:
    r"""SiLU, ``x * sigmoid(x)`` (:func:`jax.nn.silu`; :func:`swish` with ``beta = 1``).

    .. math:: f(x) = \frac{x}{1 + e^{-x}}

    >>> silu(jnp.array([0.0]))
    Array([0.], dtype=float32)
    """
    return jax.nn.silu(x)


@_via_float32
def gelu(x: ArrayLike, *, approximate: bool = False) -> Array:
    r"""Gaussian error linear unit (Hendrycks & Gimpel 2016), :func:`jax.nn.gelu`.

    .. math::
        f(x) = x\,\Phi(x) = \tfrac{x}{2}\left(1 + \operatorname{erf}(x/\sqrt 2)\right)

    With ``approximate=True`` the tanh form
    :math:`\tfrac{x}{2}\left(1 + \tanh\left(\sqrt{2/\pi}\,(x + 0.044715 x^3)\right)\right)`.
    Note the default is the **exact** form (``jax.nn.gelu`` defaults to the approximation).
    For 16-bit inputs the tanh form is evaluated in float32 (``x**3`` overflows float16 at
    ``|x| > 40``) and cast back.

    >>> gelu(jnp.array([0.0]))
    Array([0.], dtype=float32)
    """
    x = jnp.asarray(x)
    if approximate and x.dtype in (jnp.float16, jnp.bfloat16):
        # Overflow guard: x**3 in float16 is inf for |x| > 40 and tanh(inf) is computed as nan.
        return jax.nn.gelu(x.astype(jnp.float32), approximate=True).astype(x.dtype)
    return jax.nn.gelu(x, approximate=approximate)


@_via_float32
def softplus(x: ArrayLike) -> Array:
    r"""Softplus, a smooth ReLU (:func:`jax.nn.softplus`).

    .. math:: f(x) = \log(1 + e^x), \qquad f'(x) = \sigma(x)

    Computed as ``logaddexp(x, 0)``, which never overflows: ``softplus(1e4) = 1e4``,
    ``softplus(-1e4) = 0``, gradients finite.

    >>> softplus(jnp.array([0.0]))
    Array([0.6931472], dtype=float32)
    """
    return jax.nn.softplus(x)


@partial(jax.jit, static_argnames=("num_pieces", "axis"))
def maxout(z: ArrayLike, num_pieces: int, *, axis: int = -1) -> Array:
    r"""Maxout (Goodfellow et al. 2013): the max over groups of ``k`` consecutive pieces.

    .. math:: f(z)_j = \max_{0 \le i < k} z_{jk + i}, \qquad j = 0, \dots, n/k - 1

    along ``axis`` (size ``n``), with ``k = num_pieces``. The layer form
    ``max(w_1 . x + b_1, ..., w_k . x + b_k)`` is :func:`jaxnn.layers.Maxout`: its weight
    columns ``j*k .. j*k + k - 1`` are unit ``j``'s pieces, so the layer is exactly this function
    of its own pre-activations ``z = x W + b``.

    **Gradient:** flows to the maximal piece of each group; **at ties it goes to one piece** (the
    first maximal one, lowest ``i``), not split between them. NaN in a group gives NaN.

    Implementation: a chain of ``k - 1`` elementwise selects over the strided slices
    ``z[i::k]`` -- benchmarked faster forward+backward than ``reshape`` + ``max`` (whose backward
    materialises a tie-counting mask) and than a chain of ``jnp.maximum`` (which also splits ties).

    Args:
      z: pre-activations; ``z.shape[axis]`` must be divisible by ``num_pieces``.
      num_pieces: ``k >= 1``, pieces per output unit (static).
      axis: the axis holding the ``n = units * k`` pieces (static).

    Returns:
      An array like ``z`` with ``z.shape[axis] // num_pieces`` along ``axis``.

    Raises:
      ValueError: if ``num_pieces < 1`` or ``z.shape[axis]`` is not divisible by it.

    >>> maxout(jnp.array([1.0, 5.0, 3.0, 2.0]), num_pieces=2)
    Array([5., 3.], dtype=float32)
    """
    z = jnp.asarray(z)
    k = num_pieces
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"maxout: `num_pieces` must be a positive int, got {num_pieces!r}.")
    if z.ndim == 0:
        raise ValueError("maxout: `z` must have at least one axis, got a scalar.")
    ax = axis % z.ndim if -z.ndim <= axis < z.ndim else None
    if ax is None:
        raise ValueError(f"maxout: `axis`={axis} is out of range for `z` of shape {z.shape}.")
    n = z.shape[ax]
    if n % k:
        raise ValueError(
            f"maxout: `z.shape[{axis}]` = {n} (z shape {z.shape}) is not divisible by "
            f"`num_pieces` = {k}; expected a multiple of {k}."
        )
    out = lax.slice_in_dim(z, 0, n, k, axis=ax)
    for i in range(1, k):
        piece = lax.slice_in_dim(z, i, n, k, axis=ax)
        # Keep the earlier piece at ties (gradient to one piece); keep NaN once it appears.
        out = jnp.where((out >= piece) | jnp.isnan(out), out, piece)
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class ActivationEntry(_registry.Entry):
    """An activation's registry entry: the function and what it needs from a layer.

    Attributes:
      params: learnable parameters, name -> default initial value (``prelu``:
        ``{"alpha": 0.25}``). The function takes each as a keyword argument
        (``fn(x, alpha=a)``); :func:`jaxnn.layers.Activation` holds one value per channel (the
        last axis) and trains it.
      pieces_option: the option that shrinks the last axis by its value (``maxout``:
        ``"num_pieces"``, ``n`` inputs give ``n / num_pieces`` outputs); ``None`` for an
        elementwise function. ``default_pieces`` is its usual value.
      saturates: the output range ``(lo, hi)`` whose ends are the flat, gradient-free regime
        (``tanh``: ``(-1, 1)``, ``sigmoid``: ``(0, 1)``); ``None`` if the function does not
        saturate (:func:`jaxnn.diagnostics.saturated_fraction`).
    """

    params: Mapping[str, float] = dataclasses.field(default_factory=dict)
    pieces_option: str | None = None
    default_pieces: int = 2
    saturates: tuple[float, float] | None = None

    @property
    def elementwise(self) -> bool:
        """The function maps each element on its own, with no parameters of its own: no
        learnable parameter and no change of width."""
        return not self.params and self.pieces_option is None


#: The activations by name (:class:`jaxnn.registry.Registry` of :class:`ActivationEntry`).
REGISTRY: _registry.Registry[ActivationEntry] = _registry.Registry(
    "activation", entry_type=ActivationEntry)
REGISTRY.register("linear", linear)
REGISTRY.alias("identity", "linear")
REGISTRY.register("step", step)
REGISTRY.register("sigmoid", sigmoid, saturates=(0.0, 1.0))
REGISTRY.register("tanh", tanh, saturates=(-1.0, 1.0))
REGISTRY.register("hard_tanh", hard_tanh, saturates=(-1.0, 1.0))
REGISTRY.register("relu", relu)
REGISTRY.register("leaky_relu", leaky_relu)
REGISTRY.register("prelu", prelu, params={"alpha": 0.25})
REGISTRY.register("elu", elu)
REGISTRY.register("selu", selu)
REGISTRY.register("swish", swish)
REGISTRY.register("silu", silu)
REGISTRY.register("gelu", gelu)
REGISTRY.register("softplus", softplus)
REGISTRY.register("maxout", maxout, pieces_option="num_pieces")


def names() -> tuple[str, ...]:
    """The names :func:`get` accepts (aliases included), in registry order.

    >>> "relu" in names()
    True
    """
    return REGISTRY.names()


def get(name: str | Callable[..., Array]) -> Callable[..., Array]:
    """Look an activation up by name (a callable is returned unchanged).

    Raises:
      ValueError: for an unknown name; the message lists the valid names.

    >>> get("relu") is relu
    True
    """
    return REGISTRY.get(name)


def entry(name: str) -> ActivationEntry:
    """The registry entry of ``name``: the function and its metadata (:class:`ActivationEntry`).

    Raises:
      ValueError: for an unknown name; the message lists the valid names.

    >>> entry("prelu").params
    {'alpha': 0.25}
    >>> entry("tanh").saturates
    (-1.0, 1.0)
    """
    return REGISTRY.entry(name)
