r"""Weight initializers, with the :mod:`jax.nn.initializers` calling convention exactly.

An *initializer* is ``init(key, shape, dtype=jnp.float32) -> Array``. :func:`zeros` and :func:`ones`
are initializers; everything else is a *factory* returning one. The factories take jax's
arguments, in jax's order, down to the last one, ``dtype`` (the default dtype of the initializer
they return, e.g. ``he_normal(dtype=jnp.bfloat16)``), so jaxnn is a drop-in for
:mod:`jax.nn.initializers`. Every initializer delegates to jax, so **for the same key, shape and
dtype the values equal jax's** (the one difference: an unset ``dtype`` means float32, where jax's
follows the x64 flag).

Fans are computed as in jax: for a dense ``[fan_in, fan_out]`` matrix, ``fan_in = shape[-2]`` and
``fan_out = shape[-1]``; for a convolution kernel ``[h, w, c_in, c_out]`` each is multiplied by the
receptive field ``h * w``.

The curriculum's names, and what they are here:

- "small random numbers": ``normal(0.01)``, :math:`\operatorname{Var}(W) = 10^{-4}`;
- "big random numbers": ``normal(1.0)``, :math:`\operatorname{Var}(W) = 1`;
- "Xavier", ``randn(n_in, n_out) / sqrt(n_in)``: ``lecun_normal()``,
  :math:`\operatorname{Var}(W) = 1/n_\text{in}`;
- "Xavier/2" (He et al. 2015), ``randn(n_in, n_out) / sqrt(n_in / 2)``: ``he_normal()``
  (alias ``kaiming_normal``), :math:`\operatorname{Var}(W) = 2/n_\text{in}`;
- Glorot & Bengio 2010: ``glorot_normal()`` (alias ``xavier_normal``),
  :math:`\operatorname{Var}(W) = 2/(n_\text{in} + n_\text{out})`.

(``xavier_*`` follows jax, PyTorch and Keras: it is Glorot's fan-average rule, not the
curriculum's :math:`1/n`, which is ``lecun_*``.) The ``*_normal`` initializers sample a normal
truncated at two standard deviations, rescaled so the variance is exactly the one above.

Example:

>>> import jax
>>> from jaxnn import initializers
>>> w = initializers.he_normal()(jax.random.key(0), (784, 100))
>>> w.shape, w.dtype
((784, 100), dtype('float32'))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxnn import registry as _registry

__all__ = [
    "Initializer",
    "zeros",
    "ones",
    "constant",
    "normal",
    "uniform",
    "variance_scaling",
    "lecun_normal",
    "lecun_uniform",
    "glorot_normal",
    "glorot_uniform",
    "xavier_normal",
    "xavier_uniform",
    "he_normal",
    "he_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "orthogonal",
    "get",
    "names",
    "entry",
    "REGISTRY",
]

#: ``init(key, shape, dtype=jnp.float32) -> Array``
Initializer = Callable[..., Array]

_MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")
_DISTRIBUTIONS = ("truncated_normal", "normal", "uniform")


def _wrap(
    jax_init: Callable[..., Array], dtype: Any, doc: str, *, upcast_16bit: bool = False
) -> Initializer:
    """Give a jax initializer our default dtype (the factory's ``dtype``, float32 when ``None``)
    and a docstring. With ``upcast_16bit``, 16-bit dtypes are sampled in float32 and rounded (for
    QR, which has no 16-bit kernels)."""
    default = jnp.float32 if dtype is None else dtype

    def init(key: Array, shape: Sequence[int], dtype: Any = default, out_sharding=None):
        dtype = default if dtype is None else dtype
        if upcast_16bit and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
            return init(key, shape, jnp.float32, out_sharding).astype(dtype)
        return jax_init(key, shape, dtype, out_sharding=out_sharding)

    init.__doc__ = doc
    return init


def _check_scale(fn: str, arg: str, value: Any) -> None:
    """ValueError for a negative or non-finite (concrete) value; traced values (a vmapped
    population) pass."""
    if isinstance(value, jax.core.Tracer):
        return
    try:
        v = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: `{arg}` must be a non-negative number, got {value!r}.") from None
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{fn}: `{arg}` must be finite, got {value!r}.")
    if np.any(v < 0):
        raise ValueError(f"{fn}: `{arg}` must be non-negative, got {value!r}.")


def zeros(key: Array, shape: Sequence[int], dtype: Any = jnp.float32, out_sharding=None) -> Array:
    """All-zeros initializer (the usual bias init). ``key`` is ignored.

    >>> zeros(jax.random.key(0), (2,))
    Array([0., 0.], dtype=float32)
    """
    return jax.nn.initializers.zeros(key, shape, dtype, out_sharding=out_sharding)


def ones(key: Array, shape: Sequence[int], dtype: Any = jnp.float32, out_sharding=None) -> Array:
    """All-ones initializer (the usual batch-norm ``gamma`` init). ``key`` is ignored.

    >>> ones(jax.random.key(0), (2,))
    Array([1., 1.], dtype=float32)
    """
    return jax.nn.initializers.ones(key, shape, dtype, out_sharding=out_sharding)


def constant(value: Any, dtype: Any = None) -> Initializer:
    """Factory: every entry equals ``value`` (e.g. ``constant(0.01)``, the "slightly positive
    ReLU bias").

    >>> constant(0.5)(jax.random.key(0), (2,))
    Array([0.5, 0.5], dtype=float32)
    """
    return _wrap(jax.nn.initializers.constant(value), dtype, f"Constant initializer: all {value!r}.")


def normal(stddev: Any = 1e-2, dtype: Any = None) -> Initializer:
    r"""Factory: i.i.d. :math:`\mathcal N(0, \sigma^2)` with :math:`\sigma` = ``stddev``.

    .. math:: W_{ij} \sim \mathcal N(0, \sigma^2), \qquad \operatorname{Var}(W_{ij}) = \sigma^2

    ``normal(0.01)`` is the curriculum's "small random numbers" (activations shrink to 0 in deep
    tanh nets); ``normal(1.0)`` is "big random numbers" (tanh units saturate).

    Raises:
      ValueError: if ``stddev`` is negative or not finite.

    >>> normal(1.0)(jax.random.key(0), (1000,)).std() > 0.9
    Array(True, dtype=bool)
    """
    _check_scale("normal", "stddev", stddev)
    return _wrap(jax.nn.initializers.normal(stddev), dtype, f"N(0, {stddev!r}**2) initializer.")


def uniform(scale: Any = 1e-2, dtype: Any = None) -> Initializer:
    r"""Factory: i.i.d. uniform on :math:`[0, s)` with :math:`s` = ``scale`` (as in jax).

    .. math:: W_{ij} \sim U[0, s), \qquad \mathbb E = s/2, \quad \operatorname{Var} = s^2/12

    Note the interval is **not** symmetric around 0 (that is :func:`jax.nn.initializers.uniform`'s
    definition); for a zero-mean uniform use ``variance_scaling(..., distribution="uniform")``.

    Raises:
      ValueError: if ``scale`` is negative or not finite.

    >>> float(uniform(1.0)(jax.random.key(0), (1000,)).min()) >= 0.0
    True
    """
    _check_scale("uniform", "scale", scale)
    return _wrap(jax.nn.initializers.uniform(scale), dtype, f"U[0, {scale!r}) initializer.")


def variance_scaling(
    scale: Any,
    mode: str,
    distribution: str,
    in_axis: int | Sequence[int] = -2,
    out_axis: int | Sequence[int] = -1,
    batch_axis: int | Sequence[int] = (),
    dtype: Any = None,
) -> Initializer:
    r"""Factory: zero-mean weights whose variance is ``scale / n`` for a fan ``n``.

    .. math:: \operatorname{Var}(W_{ij}) = \frac{\text{scale}}{n}, \qquad
        n = \begin{cases} n_\text{in} & \text{mode = "fan\_in"} \\
        n_\text{out} & \text{"fan\_out"} \\ (n_\text{in} + n_\text{out})/2 & \text{"fan\_avg"} \\
        \sqrt{n_\text{in} n_\text{out}} & \text{"fan\_geo\_avg"} \end{cases}

    ``distribution`` is ``"truncated_normal"`` (truncated at 2 standard deviations, rescaled to
    the exact variance), ``"normal"``, or ``"uniform"`` (on :math:`\pm\sqrt{3\,\text{scale}/n}`).
    ``in_axis`` / ``out_axis`` / ``batch_axis`` say which axes are the fans, as in
    :func:`jax.nn.initializers.variance_scaling`.

    ``dtype`` is the returned initializer's default dtype (``None``: float32).

    Raises:
      ValueError: for a negative or non-finite ``scale`` or an unknown ``mode`` /
        ``distribution`` (checked here, when the factory is called, not at the first use).

    >>> init = variance_scaling(2.0, "fan_in", "normal")
    >>> abs(float(init(jax.random.key(0), (200, 300)).var()) * 200 - 2.0) < 0.1
    True
    """
    _check_scale("variance_scaling", "scale", scale)
    if mode not in _MODES:
        raise ValueError(
            f"variance_scaling: invalid `mode` {mode!r}; expected one of {', '.join(_MODES)}."
        )
    if distribution not in _DISTRIBUTIONS:
        raise ValueError(
            f"variance_scaling: invalid `distribution` {distribution!r}; expected one of "
            f"{', '.join(_DISTRIBUTIONS)}."
        )
    jax_init = jax.nn.initializers.variance_scaling(
        scale, mode, distribution, in_axis=in_axis, out_axis=out_axis, batch_axis=batch_axis
    )
    return _wrap(jax_init, dtype,
                 f"variance_scaling({scale!r}, {mode!r}, {distribution!r}) initializer.")


def lecun_normal(
    in_axis: int | Sequence[int] = -2,
    out_axis: int | Sequence[int] = -1,
    batch_axis: int | Sequence[int] = (),
    dtype: Any = None,
) -> Initializer:
    r"""Factory: LeCun normal, :math:`\operatorname{Var}(W) = 1/n_\text{in}` (truncated normal).

    The curriculum's "Xavier" initialization, ``w = randn(n_in, n_out) / sqrt(n_in)``: keeps the
    variance of ``tanh`` activations roughly constant with depth.
    ``= variance_scaling(1.0, "fan_in", "truncated_normal")``.

    >>> lecun_normal()(jax.random.key(0), (3, 2)).shape
    (3, 2)
    """
    return variance_scaling(1.0, "fan_in", "truncated_normal", in_axis, out_axis, batch_axis,
                            dtype)


def lecun_uniform(
    in_axis: int | Sequence[int] = -2,
    out_axis: int | Sequence[int] = -1,
    batch_axis: int | Sequence[int] = (),
    dtype: Any = None,
) -> Initializer:
    r"""Factory: LeCun uniform, :math:`\operatorname{Var}(W) = 1/n_\text{in}`, uniform on
    :math:`\pm\sqrt{3/n_\text{in}}`. ``= variance_scaling(1.0, "fan_in", "uniform")``.

    >>> lecun_uniform()(jax.random.key(0), (3, 2)).shape
    (3, 2)
    """
    return variance_scaling(1.0, "fan_in", "uniform", in_axis, out_axis, batch_axis,
                            dtype)


def glorot_normal(
    in_axis: int | Sequence[int] = -2,
    out_axis: int | Sequence[int] = -1,
    batch_axis: int | Sequence[int] = (),
    dtype: Any = None,
) -> Initializer:
    r"""Factory: Glorot/Xavier normal (Glorot & Bengio 2010),
    :math:`\operatorname{Var}(W) = 2/(n_\text{in} + n_\text{out})` (truncated normal).

    ``= variance_scaling(1.0, "fan_avg", "truncated_normal")``; alias :func:`xavier_normal`.

    >>> glorot_normal()(jax.random.key(0), (3, 2)).shape
    (3, 2)
    """
    return variance_scaling(1.0, "fan_avg", "truncated_normal", in_axis, out_axis, batch_axis,
                            dtype)


def glorot_uniform(
    in_axis: int | Sequence[int] = -2,
    out_axis: int | Sequence[int] = -1,
    batch_axis: int | Sequence[int] = (),
    dtype: Any = None,
) -> Initializer:
    r"""Factory: Glorot/Xavier uniform,
    :math:`\operatorname{Var}(W) = 2/(n_\text{in}+n_\text{out})`, uniform on
    :math:`\pm\sqrt{6/(n_\text{in}+n_\text{out})}`. Alias :func:`xavier_uniform`.

    >>> glorot_uniform()(jax.random.key(0), (3, 2)).shape
    (3, 2)
    """
    return variance_scaling(1.0, "fan_avg", "uniform", in_axis, out_axis, batch_axis,
                            dtype)


def he_normal(
    in_axis: int | Sequence[int] = -2,
    out_axis: int | Sequence[int] = -1,
    batch_axis: int | Sequence[int] = (),
    dtype: Any = None,
) -> Initializer:
    r"""Factory: He/Kaiming normal (He et al. 2015), :math:`\operatorname{Var}(W) = 2/n_\text{in}`
    (truncated normal).

    The curriculum's "Xavier/2", ``w = randn(n_in, n_out) / sqrt(n_in / 2)``: the right scale for
    ReLU, which zeroes half its inputs. ``= variance_scaling(2.0, "fan_in", "truncated_normal")``;
    alias :func:`kaiming_normal`.

    >>> he_normal()(jax.random.key(0), (3, 2)).shape
    (3, 2)
    """
    return variance_scaling(2.0, "fan_in", "truncated_normal", in_axis, out_axis, batch_axis,
                            dtype)


def he_uniform(
    in_axis: int | Sequence[int] = -2,
    out_axis: int | Sequence[int] = -1,
    batch_axis: int | Sequence[int] = (),
    dtype: Any = None,
) -> Initializer:
    r"""Factory: He/Kaiming uniform, :math:`\operatorname{Var}(W) = 2/n_\text{in}`, uniform on
    :math:`\pm\sqrt{6/n_\text{in}}`. Alias :func:`kaiming_uniform`.

    >>> he_uniform()(jax.random.key(0), (3, 2)).shape
    (3, 2)
    """
    return variance_scaling(2.0, "fan_in", "uniform", in_axis, out_axis, batch_axis,
                            dtype)


xavier_normal = glorot_normal
xavier_uniform = glorot_uniform
kaiming_normal = he_normal
kaiming_uniform = he_uniform


def orthogonal(scale: Any = 1.0, column_axis: int = -1, dtype: Any = None) -> Initializer:
    r"""Factory: a (scaled) uniformly random orthogonal matrix (Saxe et al. 2014).

    .. math:: W = s\,Q, \quad Q^\top Q = I \text{ (or } Q Q^\top = I \text{ if wide)}

    so every singular value equals ``scale``. Needs a shape of rank >= 2; the trailing
    ``column_axis`` holds the columns, the other axes are flattened into rows. For bfloat16 and
    float16 the matrix is computed in float32 and rounded (jax's own raises: no 16-bit QR).

    Raises:
      ValueError: if ``scale`` is negative or not finite.

    >>> q = orthogonal()(jax.random.key(0), (4, 4))
    >>> bool(jnp.allclose(q.T @ q, jnp.eye(4), atol=1e-5))
    True
    """
    _check_scale("orthogonal", "scale", scale)
    jax_init = jax.nn.initializers.orthogonal(scale, column_axis=column_axis)
    return _wrap(jax_init, dtype, f"orthogonal(scale={scale!r}) initializer.", upcast_16bit=True)


#: The initializers by name (:class:`jaxnn.registry.Registry`): ``zeros`` and ``ones`` are
#: initializers, every other entry a factory that :func:`get` calls with the options.
REGISTRY: _registry.Registry[_registry.Entry] = _registry.Registry("initializer", factory=True)
REGISTRY.register("zeros", zeros, factory=False)
REGISTRY.register("ones", ones, factory=False)
for _f in (constant, normal, uniform, variance_scaling, lecun_normal, lecun_uniform,
           glorot_normal, glorot_uniform):
    REGISTRY.register(_f.__name__, _f)
REGISTRY.alias("xavier_normal", "glorot_normal")
REGISTRY.alias("xavier_uniform", "glorot_uniform")
REGISTRY.register("he_normal", he_normal)
REGISTRY.register("he_uniform", he_uniform)
REGISTRY.alias("kaiming_normal", "he_normal")
REGISTRY.alias("kaiming_uniform", "he_uniform")
REGISTRY.register("orthogonal", orthogonal)
del _f


def names() -> tuple[str, ...]:
    """The names :func:`get` accepts (aliases included).

    >>> "he_normal" in names()
    True
    """
    return REGISTRY.names()


def get(name: str | Initializer, **kwargs: Any) -> Initializer:
    """An initializer by name: factories are called with ``**kwargs``.

    ``get("he_normal")`` is ``he_normal()``, ``get("normal", stddev=1.0)`` is ``normal(1.0)``,
    ``get("zeros")`` is :func:`zeros`. A callable is returned unchanged (it must be an initializer
    already, so ``kwargs`` must be empty).

    Raises:
      ValueError: for an unknown name (the message lists the valid ones) or bad options.

    >>> get("normal", stddev=1.0)(jax.random.key(0), (2, 2)).shape
    (2, 2)
    """
    return REGISTRY.get(name, **kwargs)


def entry(name: str) -> _registry.Entry:
    """The registry entry of ``name`` (:class:`jaxnn.registry.Entry`): the initializer or
    factory, and ``entry(name).required``, the options it cannot do without.

    >>> entry("constant").required, entry("he_normal").required
    (('value',), ())
    """
    return REGISTRY.entry(name)
