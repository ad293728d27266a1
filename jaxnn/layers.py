r"""Layers as init/apply pairs of pure functions (stax's idea, with state).

Every layer is a :class:`Layer` ``(init, apply)``::

    output_shape, params, state = layer.init(key, input_shape)
    y, state = layer.apply(params, state, x, train=True, key=key, mask=None)

``input_shape`` excludes the batch axis (``(features,)`` for vectors, ``(height, width,
channels)`` for NHWC images), so :func:`jaxnn.models.serial` can fold any layers: each ``init``
says what shape comes out. ``params`` are the trainable leaves (weights ``w``, biases ``b``, norm
scales ``gamma``/``beta``, PReLU slopes ``alpha``; :func:`jaxnn.regularizers.weights` picks
``w``), ``state`` the non-trainable ones (batch-norm running averages). ``mask`` (``[batch]``, 1
for real rows, 0 for padding) lets batch norm ignore the padded rows of a ragged last batch, so a
training step compiles once.

Layers: :func:`Dense`, :func:`Conv2D` (NHWC inputs, HWIO kernels), :func:`MaxPool`,
:func:`AvgPool`, :func:`Flatten`, :func:`BatchNorm`, :func:`LayerNorm`, :func:`Dropout`,
:func:`Activation` (any :mod:`jaxnn.activations` name; ``prelu`` with a learnable slope) and
:func:`Maxout`. Combinators make new layers from layers, so blocks nest (stax's contract):
``serial(*layers)`` applies them in turn, :func:`Residual` adds :math:`y = x + f(x)` (or
:math:`x W_p + f(x)` with a 1x1 projection when ``f`` changes the shape), and a block holding
weights is one model layer of the serial around it, its params a nested dict. The builders
(``serial``, ``mlp``, ``convnet``, ``Model``) live in :mod:`jaxnn.models` and are re-exported
here; ``serial(*layers, input_shape=...)`` is a :class:`~jaxnn.models.Model`.

Example::

    from jaxnn.layers import Conv2D, Activation, MaxPool, Flatten, Dense, Residual, serial
    model = serial(Conv2D(32), Activation("relu"), MaxPool(), Flatten(), Dense(10),
                   input_shape=(28, 28, 1))
    params, state = model.init(jax.random.key(0))
    logits, state = model.apply(params, state, x)            # x: [batch, 28, 28, 1]

    block = Residual(serial(Conv2D(32), Activation("relu"), Conv2D(32)))    # a layer
    model = serial(Conv2D(32), Activation("relu"), block, Activation("relu"), Flatten(),
                   Dense(10), input_shape=(28, 28, 1))
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnn import _conv, _pool
from jaxnn import activations as _act
from jaxnn import initializers as _init

__all__ = [
    "Layer",
    "LayerActivations",
    "Dense",
    "Conv2D",
    "MaxPool",
    "AvgPool",
    "Flatten",
    "GlobalAvgPool",
    "BatchNorm",
    "LayerNorm",
    "Dropout",
    "Activation",
    "Maxout",
    "Residual",
    "Traced",
    # builders, defined in jaxnn.models (resolved on first use by __getattr__ below)
    "Model",  # noqa: F822
    "serial",  # noqa: F822
    "mlp",  # noqa: F822
    "convnet",  # noqa: F822
    "parse_arch",  # noqa: F822
    "ArchItem",  # noqa: F822
]

Shape = tuple[int, ...]


class LayerActivations(NamedTuple):
    """What one nonlinearity computed: ``pre`` (its input) and ``post`` (its output), each
    ``[batch, ..., units]`` (``[batch, height, width, channels]`` after a convolution)."""

    pre: jax.Array
    post: jax.Array


class Layer(NamedTuple):
    """A layer: a pair of pure functions and what :func:`jaxnn.models.serial` needs to know.

    Attributes:
      init: ``init(key, input_shape) -> (output_shape, params, state)``; shapes exclude the
        batch axis.
      apply: ``apply(params, state, x, *, train=False, key=None, mask=None) -> (y, state)``.
      name: the key of the layer's params and state inside its model layer (``"bn"``,
        ``"alpha"``, ...); unused for weighted layers, whose params are the model layer's own.
      weighted: the layer holds a weight matrix or kernel (``Dense``, ``Conv2D``, ``Maxout``);
        in a model each weighted layer starts a new model layer ``"layer_<i>"``.
      trace: for nonlinearities: ``apply`` that also returns the :class:`LayerActivations`
        (``trace(...) -> (y, state, LayerActivations)``); ``None`` for other layers.
      activation: the nonlinearity's :mod:`jaxnn.activations` name (for diagnostics), if any.
      report: for blocks holding weights (:func:`serial` layers, :func:`Residual`): ``apply``
        that also returns one :class:`Traced` per weight matrix inside, input to output
        (``report(...) -> (y, state, [Traced, ...])``); ``None`` for other layers. A block is a
        weighted layer of its enclosing serial (one model layer, its params a nested dict).
    """

    init: Callable[..., tuple[Shape, Any, Any]]
    apply: Callable[..., tuple[jax.Array, Any]]
    name: str = "layer"
    weighted: bool = False
    trace: Callable[..., tuple[jax.Array, Any, LayerActivations]] | None = None
    activation: str | None = None
    report: Callable[..., tuple[jax.Array, Any, list[Traced]]] | None = None


class Traced(NamedTuple):
    r"""What one weight matrix inside a block reports when the block is traced
    (:attr:`Layer.report`).

    Attributes:
      path: where its params sit inside the block's params, ``"/"``-separated dict keys
        (``"layer_0"``, ``"layer_1/skip"``; ``""``: the block's own dict).
      activation: the name of the nonlinearity ``acts`` come from (``None``: no nonlinearity).
      acts: the pre-activations and activations it reports (both the output of its model layer
        when it has no nonlinearity).
      open: it ends the block without a nonlinearity of its own, so the enclosing model layer's
        first nonlinearity after the block reports for it instead (ResNet's
        :math:`\operatorname{relu}(x + f(x))` for a residual block's last convolution).
    """

    path: str
    activation: str | None
    acts: LayerActivations
    open: bool = False


# --------------------------------------------------------------------------- helpers
def _initializer(init: Any, arg: str) -> Callable[..., jax.Array]:
    """An initializer from a name, a number (constant) or an ``init(key, shape, dtype)``."""
    if isinstance(init, str):
        return _init.get(init)
    if isinstance(init, int | float) and not isinstance(init, bool):
        return _init.constant(float(init))
    if callable(init):
        return init
    raise ValueError(f"`{arg}` must be an initializer name, a number or an initializer, "
                     f"got {init!r}")


def _size(d: Any) -> int | None:
    """``d`` as an int when it is a Python/numpy integer (not a bool), else None."""
    if isinstance(d, bool | np.bool_) or not isinstance(d, int | np.integer):
        return None
    return int(d)


def _shape(input_shape: Any, layer: str, *, rank: int | None = None) -> Shape:
    """``input_shape`` as a tuple of positive ints (an int ``n`` means ``(n,)``).

    Sizes must be Python or numpy integers: ``4.5``, ``4.0`` and ``True`` are refused (numpy
    refuses float sizes too), never truncated to a different shape.
    """
    if _size(input_shape) is not None:
        input_shape = (input_shape,)
    try:
        shape = tuple(_size(d) for d in input_shape)
    except TypeError:
        shape = ()
    if isinstance(input_shape, str) or not shape or any(d is None or d < 1 for d in shape):
        raise ValueError(f"{layer}: input_shape must be a non-empty tuple of positive integer "
                         f"sizes (without the batch axis), got {input_shape!r}")
    if rank is not None and len(shape) != rank:
        what = "(height, width, channels)" if rank == 3 else f"rank {rank}"
        raise ValueError(f"{layer}: needs inputs of shape {what} (without the batch axis), got "
                         f"{shape}; images are NHWC")
    return shape  # type: ignore[return-value]


def _pair(v: Any, arg: str) -> tuple[int, int]:
    """An int or a pair of ints, each >= 1."""
    pair = (v, v) if isinstance(v, int) else tuple(v)
    if len(pair) != 2 or not all(isinstance(p, int) and p >= 1 for p in pair):
        raise ValueError(f"`{arg}` must be a positive int or a pair of them, got {v!r}")
    return pair  # type: ignore[return-value]


def _padding(padding: Any) -> str | tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"`padding` must be 'SAME', 'VALID' or ((top, bottom), (left, "
                             f"right)), got {padding!r}")
        return padding.upper()
    try:
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    except (TypeError, ValueError):
        pads = ()
    if len(pads) != 2:
        raise ValueError(f"`padding` must be 'SAME', 'VALID' or ((top, bottom), (left, right)), "
                         f"got {padding!r}")
    return pads


def _check_input(x, shape: Shape, layer: str) -> None:
    """x is ``[batch, *shape]`` (eager and traced: shapes are static)."""
    if tuple(x.shape[1:]) != tuple(shape):
        dims = ", ".join(str(d) for d in shape)
        raise ValueError(f"{layer}: x must have shape [batch, {dims}], got {tuple(x.shape)}")


def _out_shape(fn: Callable, shape: Shape, dtype=jnp.float32) -> Shape:
    """The shape (without batch axis) ``fn`` gives for a ``[1, *shape]`` input (no compute)."""
    return tuple(jax.eval_shape(fn, jax.ShapeDtypeStruct((1, *shape), dtype)).shape[1:])


# --------------------------------------------------------------------------- Dense
def _float_input(x: jax.Array, param_dtype: Any) -> jax.Array:
    """``x`` to compute with: a float ``x`` as is (the output keeps its dtype), an integer or
    bool ``x`` promoted to the parameters' float dtype (float32 if they are not float), so the
    parameters are never cast to an integer dtype."""
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return x
    dtype = param_dtype if jnp.issubdtype(param_dtype, jnp.floating) else jnp.float32
    return x.astype(dtype)


def Dense(
    features: int,
    *,
    init: Any = "he_normal",
    bias_init: Any = 0.0,
    use_bias: bool = True,
    dtype: Any = jnp.float32,
) -> Layer:
    r"""Affine layer :math:`y = x W + b` with ``W: [in, features]`` on the last axis.

    ``init`` / ``bias_init`` are initializer names, numbers (constants) or initializers
    (``bias_init=0.01`` is the "slightly positive ReLU bias"). ``W`` is drawn with the first half
    of ``jax.random.split(key)``, ``b`` with the second. Inputs ``[batch, ..., in]`` work: the
    map applies to the last axis. A float ``x`` keeps its dtype (the weights are cast to it);
    an integer or bool ``x`` is promoted to the weights' float dtype (never the weights cast to
    int).
    """
    if _size(features) is None or features < 1:
        raise ValueError(f"Dense: `features` must be an integer >= 1, got {features!r}")
    features = int(features)
    w_init, b_init = _initializer(init, "init"), _initializer(bias_init, "bias_init")

    def init_fn(key, input_shape):
        shape = _shape(input_shape, "Dense")
        wkey, bkey = jax.random.split(key)
        params = {"w": w_init(wkey, (shape[-1], features), dtype)}
        if use_bias:
            params["b"] = b_init(bkey, (features,), dtype)
        return (*shape[:-1], features), params, {}

    def apply(params, state, x, *, train=False, key=None, mask=None):
        x = jnp.asarray(x)
        n_in = params["w"].shape[0]
        if x.ndim < 2 or x.shape[-1] != n_in:
            raise ValueError(f"Dense: x must have {n_in} features on its last axis, got "
                             f"{tuple(x.shape)}")
        x = _float_input(x, params["w"].dtype)
        y = x @ params["w"].astype(x.dtype)
        if use_bias:
            y = y + params["b"].astype(x.dtype)
        return y, state

    return Layer(init_fn, apply, name="dense", weighted=True)


# --------------------------------------------------------------------------- Conv2D
# The convolution itself (im2col + one matmul on CPU, lax.conv_general_dilated elsewhere) lives in
# jaxnn._conv; both are plain jax ops, so every transformation goes through with jax's own rules.


def Conv2D(
    features: int,
    kernel_size: int | Sequence[int] = 3,
    *,
    strides: int | Sequence[int] = 1,
    padding: Any = "SAME",
    init: Any = "he_normal",
    bias_init: Any = 0.0,
    use_bias: bool = True,
    dtype: Any = jnp.float32,
    algorithm: str = "auto",
) -> Layer:
    r"""2-D convolution of NHWC images with an HWIO kernel (the flax/lax convention).

    .. math:: y_{n,i,j,o} = b_o + \sum_{u,v,c} x_{n,\,s_h i + u - p_h,\,s_w j + v - p_w,\,c}
        \, W_{u,v,c,o}

    (cross-correlation, as every deep-learning library computes it). ``padding`` is ``"SAME"``
    (output :math:`\lceil H/s \rceil`, as :func:`jax.lax.conv_general_dilated`), ``"VALID"``
    (:math:`\lfloor (H-k)/s \rfloor + 1`) or explicit ``((top, bottom), (left, right))``. The
    kernel ``[kh, kw, c_in, features]`` is drawn by ``init`` with jax's fans for conv kernels:
    ``fan_in = kh * kw * c_in``, ``fan_out = kh * kw * features`` (He:
    :math:`\operatorname{Var}(W) = 2 / (k_h k_w c_{in})`). The output keeps ``x``'s dtype.

    How it is computed (``algorithm``; the numbers agree up to float rounding):

    * ``"auto"`` (default): ``"im2col"`` when the computation is compiled for a CPU, ``"lax"``
      on other platforms. The platform is the one XLA compiles for (where the arrays live), not
      the process's default backend: both forms are traced and
      :func:`jax.lax.platform_dependent` keeps one when lowering.
    * ``"im2col"``: pad, concatenate the ``kh * kw`` shifted (strided) views of the input on the
      channel axis and multiply by the kernel reshaped to ``[kh * kw * c_in, features]``, in one
      matmul. On XLA:CPU it keeps the training step as fast inside :func:`jax.lax.scan` (an
      epoch in one scan, :func:`jaxnn.train.make_epoch`) as outside, where the gradients of
      ``lax.conv_general_dilated`` run tens of times slower. Memory: the patches are ``kh * kw``
      times the layer's input activations (9x for a 3x3 kernel); when a batch's patches are
      large they are built for a chunk of the batch at a time (about 4 MB, the backward pass
      rebuilding them: ``jax.checkpoint`` inside a ``lax.map``), which also keeps them in the
      cache.
    * ``"lax"``: :func:`jax.lax.conv_general_dilated`.

    Both are ordinary jax operations differentiated by jax's own rules, so ``jax.grad``,
    ``jax.jvp``, ``jax.jacfwd``, ``jax.hessian`` and ``jax.vmap`` work through the layer.
    """
    if int(features) < 1:
        raise ValueError(f"Conv2D: `features` must be >= 1, got {features}")
    if algorithm not in _conv.ALGORITHMS:
        raise ValueError(f"Conv2D: `algorithm` must be one of {_conv.ALGORITHMS}, got "
                         f"{algorithm!r}")
    kh, kw = _pair(kernel_size, "kernel_size")
    window_strides = _pair(strides, "strides")
    pad = _padding(padding)
    w_init, b_init = _initializer(init, "init"), _initializer(bias_init, "bias_init")

    def conv(x, w):
        pads = _conv.resolve_pads(pad, x.shape[1:3], (kh, kw), window_strides)
        return _conv.conv2d(x, w.astype(x.dtype), window_strides, pads, algorithm)

    def init_fn(key, input_shape):
        shape = _shape(input_shape, "Conv2D", rank=3)
        wkey, bkey = jax.random.split(key)
        params = {"w": w_init(wkey, (kh, kw, shape[-1], features), dtype)}
        if use_bias:
            params["b"] = b_init(bkey, (features,), dtype)
        out = _out_shape(lambda x: conv(x, jnp.zeros((kh, kw, shape[-1], features))), shape)
        return out, params, {}

    def apply(params, state, x, *, train=False, key=None, mask=None):
        x = _float_input(jnp.asarray(x), params["w"].dtype)
        c_in = params["w"].shape[2]
        if x.ndim != 4 or x.shape[-1] != c_in:
            raise ValueError(f"Conv2D: x must have shape [batch, height, width, {c_in}] (NHWC), "
                             f"got {tuple(x.shape)}")
        y = conv(x, params["w"])
        if use_bias:
            y = y + params["b"].astype(x.dtype)
        return y, state

    return Layer(init_fn, apply, name="conv", weighted=True)


# --------------------------------------------------------------------------- pooling
def _pool_layer(kind: str, window, strides, padding) -> Layer:
    wh, ww = _pair(window, "window")
    sh, sw = _pair(window if strides is None else strides, "strides")
    pad = _padding(padding)
    dims, steps = (1, wh, ww, 1), (1, sh, sw, 1)
    layer = "MaxPool" if kind == "max" else "AvgPool"
    pads = pad if isinstance(pad, str) else ((0, 0), *pad, (0, 0))

    def pool(x):
        if _pool.blocks_fit(x.shape, (wh, ww), (sh, sw), pads):  # a reshape (see jaxnn._pool)
            return (_pool.block_max if kind == "max" else _pool.block_mean)(x, (wh, ww))
        # Python-scalar identities: lax then uses its max/sum window primitives, which have
        # gradients (a traced init value would not).
        if kind == "max":
            return lax.reduce_window(x, -jnp.inf, lax.max, dims, steps, pads)
        total = lax.reduce_window(x, 0.0, lax.add, dims, steps, pads)
        if pads == "VALID":
            return total / jnp.array(wh * ww, x.dtype)
        # Padded windows average over their real entries only.
        ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
        return total / lax.reduce_window(ones, 0.0, lax.add, dims, steps, pads)

    def init_fn(key, input_shape):
        shape = _shape(input_shape, layer, rank=3)
        return _out_shape(pool, shape), {}, {}

    def apply(params, state, x, *, train=False, key=None, mask=None):
        x = jnp.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"{layer}: x must be [batch, height, width, channels] (NHWC), got "
                             f"{tuple(x.shape)}")
        return pool(x), state

    return Layer(init_fn, apply, name="pool")


def MaxPool(window: int | Sequence[int] = 2, strides: int | Sequence[int] | None = None, *,
            padding: Any = "VALID") -> Layer:
    r"""Max pooling over ``window`` (``kh x kw``) on NHWC images, per channel:
    :math:`y_{n,i,j,c} = \max_{u<k_h, v<k_w} x_{n, s_h i + u, s_w j + v, c}`.

    ``strides`` defaults to ``window`` (non-overlapping windows). The gradient goes to the
    maximal entry of each window (the first in row-major order when several tie, as
    :func:`jax.lax.reduce_window` and PyTorch give it). Non-overlapping, unpadded windows run
    as a reshape and a reduction, whose gradient is elementwise (faster on a CPU than
    ``reduce_window``'s ``select_and_scatter``).
    """
    return _pool_layer("max", window, strides, padding)


def AvgPool(window: int | Sequence[int] = 2, strides: int | Sequence[int] | None = None, *,
            padding: Any = "VALID") -> Layer:
    r"""Average pooling over ``window`` on NHWC images, per channel:
    :math:`y_{n,i,j,c} = \frac{1}{k_h k_w} \sum_{u<k_h, v<k_w} x_{n, s_h i + u, s_w j + v, c}`.

    ``strides`` defaults to ``window``. With ``padding="SAME"`` a window that overlaps the
    border averages over its real entries only.
    """
    return _pool_layer("avg", window, strides, padding)


def Flatten() -> Layer:
    """Flatten every axis but the batch axis: ``[batch, h, w, c] -> [batch, h * w * c]``
    (row-major, as ``reshape``)."""

    def init_fn(key, input_shape):
        return (math.prod(_shape(input_shape, "Flatten")),), {}, {}

    def apply(params, state, x, *, train=False, key=None, mask=None):
        x = jnp.asarray(x)
        return x.reshape(x.shape[0], -1), state

    return Layer(init_fn, apply, name="flatten")


def GlobalAvgPool() -> Layer:
    r"""Global average pooling of NHWC images: one mean per channel over every position,
    :math:`y_{n,c} = \frac{1}{HW} \sum_{i<H, j<W} x_{n,i,j,c}` (``[batch, h, w, c] ->
    [batch, c]``), the usual last step of a residual network before its classifier. The sum is
    taken in at least float32; the output keeps ``x``'s dtype."""

    def init_fn(key, input_shape):
        shape = _shape(input_shape, "GlobalAvgPool", rank=3)
        return (shape[-1],), {}, {}

    def apply(params, state, x, *, train=False, key=None, mask=None):
        x = jnp.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"GlobalAvgPool: x must be [batch, height, width, channels] (NHWC), "
                             f"got {tuple(x.shape)}")
        return jnp.mean(x.astype(_stat_dtype(x)), axis=(1, 2)).astype(x.dtype), state

    return Layer(init_fn, apply, name="gap")


# --------------------------------------------------------------------------- normalization
def _stat_dtype(x):
    """At least float32 for statistics (float64 stays float64)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def _number(layer: str, arg: str, value: Any, ok: Callable[[float], bool], expected: str
            ) -> float:
    """``value`` as a float if it is a real number (not a bool) for which ``ok`` holds, else a
    ``ValueError`` naming ``arg`` and ``expected``."""
    v = None
    if not isinstance(value, bool | np.bool_) and isinstance(value, int | float | np.number):
        v = float(value)
    if v is None or v != v or not ok(v):
        raise ValueError(f"{layer}: `{arg}` must be {expected}, got {value!r}")
    return v


def _masked_moments(x, mask):
    """Per channel (last axis): mean, biased variance and the number of entries averaged, over
    every other axis in >= float32, counting only the rows with ``mask == 1``."""
    x32 = x.astype(_stat_dtype(x))
    axes = tuple(range(x.ndim - 1))
    per_row = math.prod(x.shape[1:-1])  # positions per example (1 for [N, F])
    if mask is None:
        mean = jnp.mean(x32, axis=axes)
        var = jnp.mean(jnp.square(x32 - mean), axis=axes)
        return mean, var, jnp.asarray(x.shape[0] * per_row, x32.dtype)
    m = mask.astype(x32.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    n = jnp.sum(m) * per_row
    denom = jnp.maximum(n, 1.0)
    mean = jnp.sum(x32 * m, axis=axes) / denom
    var = jnp.sum(jnp.square(x32 - mean) * m, axis=axes) / denom
    return mean, var, n


def BatchNorm(*, momentum: float = 0.9, eps: float = 1e-5) -> Layer:
    r"""Batch normalization per feature (the last axis), over every other axis.

    On ``[N, F]`` the statistics are over the batch; on NHWC images ``[N, H, W, C]`` they are per
    channel over ``N, H, W`` (every position of every example), as for a convolution. Training:
    :math:`\hat x = (x - \mu_B)/\sqrt{\sigma_B^2 + \epsilon}`, :math:`y = \gamma \hat x + \beta`
    with the batch mean/variance (biased) of the rows with ``mask == 1``, and the running
    averages updated as :math:`r \leftarrow m\,r + (1-m)\,\mu_B` (the variance with the unbiased
    batch estimate, :math:`\sigma_B^2\, n/(n-1)`, as PyTorch does). Evaluation uses the running
    averages. ``gamma``/``beta`` start at 1 and 0; statistics are computed in at least float32 and
    the output keeps ``x``'s dtype. Place it after the affine/conv layer and before the
    nonlinearity.

    A batch without real rows (``mask`` all 0, ``n = 0``) leaves the running averages as they
    are; the running variance moves only when at least two entries are averaged (``n >= 2``:
    one value has no variance to estimate). ``momentum`` must be a number in ``[0, 1)`` and
    ``eps`` a finite number ``> 0`` (an infinite ``eps`` would make every output ``beta``).
    """
    momentum = _number("BatchNorm", "momentum", momentum, lambda v: 0.0 <= v < 1.0,
                       "a number in [0, 1)")
    eps = _number("BatchNorm", "eps", eps, lambda v: 0.0 < v < math.inf, "a finite number > 0")

    def init_fn(key, input_shape):
        shape = _shape(input_shape, "BatchNorm")
        c = shape[-1]
        params = {"gamma": jnp.ones((c,)), "beta": jnp.zeros((c,))}
        return shape, params, {"mean": jnp.zeros((c,)), "var": jnp.ones((c,))}

    def apply(params, state, x, *, train=False, key=None, mask=None):
        x = _float_input(jnp.asarray(x), params["gamma"].dtype)
        c = params["gamma"].shape[0]
        if x.ndim < 2 or x.shape[-1] != c:
            raise ValueError(f"BatchNorm: x must have {c} features on its last axis, got "
                             f"{tuple(x.shape)}")
        if train:
            mean, var, n = _masked_moments(x, mask)
            unbiased = var * n / jnp.maximum(n - 1.0, 1.0)
            # No real entry: nothing to average in (an all-padding batch must not pull the
            # running averages toward 0); one entry: a mean but no variance.
            state = {
                "mean": jnp.where(n > 0, momentum * state["mean"] + (1.0 - momentum) * mean,
                                  state["mean"]),
                "var": jnp.where(n > 1, momentum * state["var"] + (1.0 - momentum) * unbiased,
                                 state["var"]),
            }
        else:
            mean, var = state["mean"], state["var"]
        x_hat = (x.astype(_stat_dtype(x)) - mean) * lax.rsqrt(var + eps)
        y = params["gamma"] * x_hat + params["beta"]
        return y.astype(x.dtype), state

    return Layer(init_fn, apply, name="bn")


def LayerNorm(*, eps: float = 1e-5) -> Layer:
    r"""Layer normalization over the last axis, per example (and per position):
    :math:`y = \gamma (x - \mu)/\sqrt{\sigma^2 + \epsilon} + \beta` (same in training and
    evaluation; statistics in at least float32). ``eps`` must be a finite number ``> 0``."""
    eps = _number("LayerNorm", "eps", eps, lambda v: 0.0 < v < math.inf, "a finite number > 0")

    def init_fn(key, input_shape):
        shape = _shape(input_shape, "LayerNorm")
        return shape, {"gamma": jnp.ones((shape[-1],)), "beta": jnp.zeros((shape[-1],))}, {}

    def apply(params, state, x, *, train=False, key=None, mask=None):
        x = _float_input(jnp.asarray(x), params["gamma"].dtype)
        c = params["gamma"].shape[0]
        if x.ndim < 2 or x.shape[-1] != c:
            raise ValueError(f"LayerNorm: x must have {c} features on its last axis, got "
                             f"{tuple(x.shape)}")
        x32 = x.astype(_stat_dtype(x))
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = params["gamma"] * (x32 - mean) * lax.rsqrt(var + eps) + params["beta"]
        return y.astype(x.dtype), state

    return Layer(init_fn, apply, name="ln")


def Dropout(rate: float) -> Layer:
    r"""Inverted dropout with **drop** probability ``rate``: in training each unit is kept with
    probability :math:`p = 1 - \text{rate}` and scaled by :math:`1/p`; identity in evaluation.
    Needs ``key`` when training with ``rate > 0``."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"Dropout: `rate` is a drop probability in [0, 1), got {rate}")

    def init_fn(key, input_shape):
        return _shape(input_shape, "Dropout"), {}, {}

    def apply(params, state, x, *, train=False, key=None, mask=None):
        if not train or rate == 0.0:
            return x, state
        if key is None:
            raise ValueError("Dropout: a PRNG key is needed in training (pass key=...)")
        x = jnp.asarray(x)
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype), state

    return Layer(init_fn, apply, name="dropout")


# --------------------------------------------------------------------------- nonlinearities
def _learnable(name: Any) -> dict[str, float]:
    """The learnable parameters of the activation ``name`` (its registry entry's ``params``:
    keyword -> default initial value); none for a function given in place of a name."""
    return dict(_act.entry(name).params) if isinstance(name, str) else {}


def Activation(name: str, **kw: Any) -> Layer:
    r"""The nonlinearity ``jaxnn.activations.get(name)`` as a layer, with options ``kw``
    (``name`` may also be a function ``f(x, **kw)``).

    ``Activation("leaky_relu", negative_slope=0.2)``; ``Activation("maxout", num_pieces=2)``
    takes the max over groups of consecutive channels (the last axis shrinks by
    ``num_pieces``). An activation whose registry entry lists learnable parameters
    (:attr:`jaxnn.activations.ActivationEntry.params`) carries one value of each per channel
    (the last axis), initially ``kw.get(param, default)``, passed to the function by keyword:
    ``Activation("prelu")`` learns its slope ``alpha`` (initially 0.25). The layer's params are
    that array (``name`` is the parameter's: ``"alpha"``), or a dict of arrays for several. The
    layer's ``trace`` reports its input and output (:class:`LayerActivations`) for diagnostics.

    Raises:
      ValueError: for an unknown name (listing the valid ones) or options the activation does
        not take.
    """
    fn = _act.get(name)  # ValueError listing the valid names
    kw = dict(kw)
    learnable = _learnable(name)
    init_values = {p: float(kw.pop(p, v)) for p, v in learnable.items()}
    try:
        inspect.signature(fn).bind(0.0, **dict.fromkeys(learnable, 0.0), **kw)
    except TypeError as e:
        raise ValueError(f"Activation({name!r}): bad options {sorted(kw)}: {e}") from None
    f = functools.partial(fn, **kw)
    single = next(iter(learnable)) if len(learnable) == 1 else None

    def learned(params, dtype) -> dict:
        """The learnable parameters as the function's keyword arguments."""
        if not learnable:
            return {}
        if single is not None:
            return {single: params.astype(dtype)}
        return {p: params[p].astype(dtype) for p in learnable}

    def init_fn(key, input_shape):
        shape = _shape(input_shape, f"Activation({name!r})")
        values = {p: jnp.full((shape[-1],), v, jnp.float32) for p, v in init_values.items()}
        params = {} if not learnable else values[single] if single is not None else values
        try:
            out = _out_shape(lambda x: f(x, **learned(params, x.dtype)), shape)
        except ValueError as e:
            raise ValueError(f"Activation({name!r}) on inputs of shape {shape}: {e}") from None
        return out, params, {}

    def trace(params, state, x, *, train=False, key=None, mask=None):
        x = jnp.asarray(x)
        y = f(x, **learned(params, x.dtype))
        return y, state, LayerActivations(x, y)

    def apply(params, state, x, *, train=False, key=None, mask=None):
        y, state, _ = trace(params, state, x)
        return y, state

    layer_name = single or (name if learnable else "act")
    return Layer(init_fn, apply, name=layer_name, trace=trace,
                 activation=name if isinstance(name, str) else None)


def Maxout(
    features: int,
    num_pieces: int = 2,
    *,
    init: Any = "glorot_normal",
    bias_init: Any = 0.0,
    use_bias: bool = True,
    dtype: Any = jnp.float32,
) -> Layer:
    r"""Maxout layer (Goodfellow et al. 2013): ``features`` units, each the max of
    ``num_pieces`` affine pieces.

    .. math:: z = x W + b, \qquad y_j = \max_{0 \le i < k} z_{jk + i}

    **Layout:** ``W: [in, features * k]``, and the pieces of unit ``j`` are the ``k``
    consecutive columns ``j*k .. j*k + k - 1``, so ``y = jaxnn.activations.maxout(z, k)`` of the
    layer's own pre-activations ``z`` (what :func:`Dense` ``(features * k)`` followed by
    ``Activation("maxout", num_pieces=k)`` computes, in one layer). The max is the pairwise
    chain of selects over strided slices of :func:`jaxnn.activations.maxout` (one matmul, no
    reshape). **Gradient:** to the maximal piece of each unit; at a tie, all of it to the
    lowest-numbered maximal piece (``i`` smallest), none to the others.
    """
    k = int(num_pieces)
    if k < 1:
        raise ValueError(f"Maxout: `num_pieces` must be >= 1, got {num_pieces}")
    dense = Dense(int(features) * k, init=init, bias_init=bias_init, use_bias=use_bias,
                  dtype=dtype)

    def init_fn(key, input_shape):
        shape, params, state = dense.init(key, input_shape)
        return (*shape[:-1], int(features)), params, state

    def trace(params, state, x, *, train=False, key=None, mask=None):
        z, state = dense.apply(params, state, x)
        y = _act.maxout(z, k)
        return y, state, LayerActivations(z, y)

    def apply(params, state, x, *, train=False, key=None, mask=None):
        y, state, _ = trace(params, state, x)
        return y, state

    return Layer(init_fn, apply, name="maxout", weighted=True, trace=trace, activation="maxout")


# --------------------------------------------------------------------------- blocks
def _join(*parts: str) -> str:
    """``"/"``-join the non-empty parts of a path."""
    return "/".join(p for p in parts if p)


def _report(layer: Layer, params, state, x, *, train=False, key=None, mask=None):
    """``layer.apply`` plus one :class:`Traced` per weight matrix the layer holds: a block's own
    report; for a plain weighted layer one entry at path ``""`` (its nonlinearity's if it has one,
    as :func:`Maxout`; else its output, open); none for a layer without weights."""
    if layer.report is not None:
        y, state, entries = layer.report(params, state, x, train=train, key=key, mask=mask)
        return y, state, list(entries)
    if not layer.weighted:
        y, state = layer.apply(params, state, x, train=train, key=key, mask=mask)
        return y, state, []
    if layer.trace is not None:
        y, state, acts = layer.trace(params, state, x, train=train, key=key, mask=mask)
        return y, state, [Traced("", layer.activation, acts)]
    y, state = layer.apply(params, state, x, train=train, key=key, mask=mask)
    return y, state, [Traced("", None, LayerActivations(y, y), open=True)]


#: Where :func:`Residual` keeps its projection's params, next to the inner layer's.
SKIP = "skip"


def _stride(n: int, m: int) -> int | None:
    r"""The stride ``s`` with which a 1x1 window maps ``n`` positions onto ``m``
    (:math:`\lceil n/s \rceil = m`), or ``None`` if there is none."""
    s = -(-n // m)
    return s if s >= 1 and -(-n // s) == m else None


def _projection(in_shape: Shape, out_shape: Shape) -> Layer:
    """The 1x1 projection from ``in_shape`` to ``out_shape``: a 1x1 :func:`Conv2D` (with the
    strides the spatial shrink needs) for NHWC images, else a :func:`Dense` on the last axis."""
    where = f"the inner layer maps inputs of shape {in_shape} to outputs of shape {out_shape}"
    if len(in_shape) == 3 and len(out_shape) == 3:
        strides = (_stride(in_shape[0], out_shape[0]), _stride(in_shape[1], out_shape[1]))
        if None in strides:
            raise ValueError(f"Residual: {where}; no strided 1x1 convolution maps one onto the "
                             f"other (each spatial size must be ceil(size / stride) of the "
                             f"input's)")
        return Conv2D(out_shape[-1], 1, strides=strides, padding="VALID", use_bias=False)
    if len(in_shape) == len(out_shape) and in_shape[:-1] == out_shape[:-1]:
        return Dense(out_shape[-1], use_bias=False)
    raise ValueError(f"Residual: {where}; a projection can only change the last axis (or, for "
                     f"NHWC images, shrink height and width by strides)")


def Residual(layer: Layer, *, projection: bool | None = None) -> Layer:
    r"""A residual block: the input added to what ``layer`` makes of it,

    .. math:: y = x + f(x), \qquad\text{or, with a projection,}\qquad y = x W_p + f(x),

    ``f`` being ``layer`` (any layer; usually a :func:`serial` of several, which nests). The
    projection :math:`W_p` (no bias) maps the skip path to ``f``'s output shape: a
    :func:`Dense` on the last axis for vectors, a 1x1 :func:`Conv2D` for NHWC images, with
    strides ``(s_h, s_w)`` when ``f`` shrinks height and width (``ceil(H / s_h)`` output rows:
    ``Conv2D(..., strides=2)`` inside ``f`` halves the image and the projection samples every
    second position).

    Args:
      layer: the residual branch ``f``.
      projection: ``None`` (default): project when ``f`` changes the shape; ``True``: always
        project (a learned 1x1 map even when shapes agree); ``False``: never (shapes must
        agree). Without ``projection=True`` a branch holding no weights does not get one.

    Params and state are ``layer``'s own, unchanged (so ``Residual(f)`` holds exactly ``f``'s
    params for the same key), plus, with a projection, ``{"skip": {"w"}}`` next to them (which
    needs ``f``'s params to be a dict without a ``"skip"`` entry: wrap a ``Residual`` holding a
    projection in :func:`serial` before wrapping it again). ``f`` is initialized with ``key``
    itself, the projection with ``jax.random.fold_in(key, 1)``; ``apply``'s ``key`` (dropout)
    goes to ``f``. Inside a serial model the block is one model layer and its weight matrices
    are named by path (``"layer_2/layer_0"``, ..., ``"layer_2/skip"``; see
    :mod:`jaxnn.models`).

    Raises:
      ValueError: (at ``init``, i.e. when the model is built) when ``f``'s output shape differs
        from its input shape and no projection is allowed, or no 1x1 projection maps one onto
        the other (the message names both shapes).

    Example::

        block = Residual(serial(Conv2D(16), BatchNorm(), Activation("relu"),
                                Conv2D(16), BatchNorm()))
        model = serial(Conv2D(16), Activation("relu"), block, Activation("relu"),
                       Flatten(), Dense(10), input_shape=(8, 8, 3))
    """
    if not isinstance(layer, Layer):
        raise ValueError(f"Residual: `layer` must be a jaxnn.layers.Layer, got {layer!r}")
    if projection not in (None, True, False):
        raise ValueError(f"Residual: `projection` must be None (automatic), True or False, got "
                         f"{projection!r}")
    weighted = layer.weighted or projection is True

    def init_fn(key, input_shape):
        shape = _shape(input_shape, "Residual")
        out, params, state = layer.init(key, shape)
        out = tuple(int(d) for d in out)
        if out == shape and projection is not True:
            return out, params, state
        if projection is False:
            raise ValueError(f"Residual: the inner layer maps inputs of shape {shape} to outputs "
                             f"of shape {out}; without a projection (projection=False) they "
                             f"must be equal")
        if not weighted:
            raise ValueError(f"Residual: the inner layer maps inputs of shape {shape} to outputs "
                             f"of shape {out} and holds no weights; pass projection=True for a "
                             f"learned 1x1 projection of the skip path")
        proj = _projection(shape, out)
        if not isinstance(params, dict) or SKIP in params:
            raise ValueError(f"Residual: a projection keeps its params under {SKIP!r} next to "
                             f"the inner layer's, which must then be a dict without that entry; "
                             f"wrap the inner layer in serial(...)")
        _, skip, _ = proj.init(jax.random.fold_in(key, 1), shape)
        return out, {**params, SKIP: skip}, state

    def run(params, state, x, train, key, mask, record):
        x = jnp.asarray(x)
        projected = isinstance(params, dict) and SKIP in params
        inner = {k: v for k, v in params.items() if k != SKIP} if projected else params
        if record:
            f, state, entries = _report(layer, inner, state, x, train=train, key=key, mask=mask)
        else:
            (f, state), entries = layer.apply(inner, state, x, train=train, key=key,
                                              mask=mask), []
        if projected:
            proj = _projection(tuple(x.shape[1:]), tuple(f.shape[1:]))
            skip, _ = proj.apply(params[SKIP], {}, x)
            entries.append(Traced(SKIP, None, LayerActivations(skip, skip)))
        else:
            if tuple(f.shape) != tuple(x.shape):
                raise ValueError(f"Residual: the inner layer maps x of shape {tuple(x.shape)} to "
                                 f"{tuple(f.shape)}; without a projection they must be equal")
            skip = x
        return (skip + f).astype(f.dtype), state, entries

    def apply(params, state, x, *, train=False, key=None, mask=None):
        y, state, _ = run(params, state, x, train, key, mask, record=False)
        return y, state

    def report(params, state, x, *, train=False, key=None, mask=None):
        return run(params, state, x, train, key, mask, record=True)

    trace = None
    if not weighted and layer.trace is not None:  # a weightless branch: its own nonlinearity
        def trace(params, state, x, *, train=False, key=None, mask=None):
            f, state, acts = layer.trace(params, state, x, train=train, key=key, mask=mask)
            return (jnp.asarray(x) + f).astype(f.dtype), state, acts

    return Layer(init_fn, apply, name="residual", weighted=weighted, trace=trace,
                 activation=layer.activation if trace is not None else None,
                 report=report if weighted else None)


# The builders live in jaxnn.models (one layer up); ``jaxnn.layers.mlp``, ``jaxnn.layers.Model``
# and the others resolve to them on first use, so either module can be imported first.
_BUILDERS = frozenset({"Model", "serial", "mlp", "convnet", "parse_arch", "ArchItem"})


def __getattr__(name: str):
    if name in _BUILDERS:
        from jaxnn import models

        return getattr(models, name)
    raise AttributeError(f"module 'jaxnn.layers' has no attribute {name!r}")
