"""Layers and models as init/apply pairs of pure functions (no hidden state).

Every layer is a :class:`Layer` ``(init, apply)``::

    params, state = layer.init(key, in_features)
    y, state = layer.apply(params, state, x, train=True, key=key, mask=None)

``params`` are the trainable leaves (weights ``w``, biases ``b``, norm scales ``gamma``/``beta``,
PReLU slopes ``alpha``; :func:`jaxnn.regularizers.weights` picks ``w``), ``state`` the
non-trainable ones (batch-norm running averages). ``mask`` (``[batch]``, 1 for real rows, 0 for
padding) lets batch norm ignore the padded rows of a ragged last batch, so a training step compiles
once. :func:`mlp` strings layers into a multilayer perceptron and returns a :class:`Model`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxnn import activations as _act
from jaxnn import initializers as _init

__all__ = [
    "Layer",
    "Model",
    "LayerActivations",
    "Dense",
    "Maxout",
    "BatchNorm",
    "LayerNorm",
    "Dropout",
    "mlp",
]


class Layer(NamedTuple):
    """A layer: ``init(key, in_features) -> (params, state)`` and
    ``apply(params, state, x, *, train=False, key=None, mask=None) -> (y, state)``."""

    init: Callable[..., tuple[Any, Any]]
    apply: Callable[..., tuple[jax.Array, Any]]


class LayerActivations(NamedTuple):
    """What one hidden layer computed: ``pre`` (input of the nonlinearity) and ``post`` (its
    output), each ``[batch, units]``."""

    pre: jax.Array
    post: jax.Array


class Model(NamedTuple):
    """A model: ``init(key) -> (params, state)``;
    ``apply(params, state, x, *, train=False, key=None, mask=None) -> (outputs, state)``;
    ``trace(...)`` is ``apply`` that also returns one :class:`LayerActivations` per hidden layer
    (for diagnostics: dead units, saturation, activation statistics)."""

    init: Callable[..., tuple[Any, Any]]
    apply: Callable[..., tuple[jax.Array, Any]]
    trace: Callable[..., tuple[jax.Array, Any, list[LayerActivations]]]


def _initializer(init):
    """An initializer from a name, a number (constant) or an ``init(key, shape, dtype)``."""
    if isinstance(init, str):
        return _init.get(init)
    if isinstance(init, int | float):
        return _init.constant(float(init))
    if callable(init):
        return init
    raise ValueError(f"init must be a name, a number or an initializer, got {init!r}")


def _check_features(x, expected: int, what: str) -> None:
    if x.ndim < 1 or x.shape[-1] != expected:
        raise ValueError(f"{what}: x must have {expected} features on its last axis, got {x.shape}")


# --------------------------------------------------------------------------- Dense
def Dense(
    out_features: int,
    *,
    w_init: Any = "he_normal",
    b_init: Any = 0.0,
    use_bias: bool = True,
    dtype=jnp.float32,
) -> Layer:
    r"""Affine layer :math:`y = x W + b` with ``W: [in, out]``.

    ``w_init``/``b_init`` are initializer names, numbers or initializers (``b_init=0.01`` is the
    "slightly positive ReLU bias").
    """
    if out_features < 1:
        raise ValueError(f"out_features must be >= 1, got {out_features}")
    w_init, b_init = _initializer(w_init), _initializer(b_init)

    def init(key, in_features):
        wkey, bkey = jax.random.split(key)
        params = {"w": w_init(wkey, (in_features, out_features), dtype)}
        if use_bias:
            params["b"] = b_init(bkey, (out_features,), dtype)
        return params, {}

    def apply(params, state, x, *, train=False, key=None, mask=None):
        _check_features(x, params["w"].shape[0], "Dense")
        y = x @ params["w"].astype(x.dtype)
        if use_bias:
            y = y + params["b"].astype(x.dtype)
        return y, state

    return Layer(init, apply)


# --------------------------------------------------------------------------- Maxout
def Maxout(
    out_features: int, num_pieces: int = 2, *, w_init: Any = "glorot_normal", b_init: Any = 0.0
) -> Layer:
    r"""Maxout layer: :math:`y_j = \max_i (x W_i + b_i)_j` over ``num_pieces`` affine pieces.

    The pieces share one weight matrix ``w: [in, num_pieces * out]`` laid out piece-major
    (columns ``i*out:(i+1)*out`` are piece ``i``), so the forward pass is one matmul and a
    pairwise ``maximum`` of contiguous slices — faster forward and backward than a reduction over
    a reshaped axis. At ties the gradient goes to the lowest piece.
    """
    if num_pieces < 1:
        raise ValueError(f"num_pieces must be >= 1, got {num_pieces}")
    dense = Dense(out_features * num_pieces, w_init=w_init, b_init=b_init)

    def apply(params, state, x, *, train=False, key=None, mask=None):
        z, state = dense.apply(params, state, x)
        return _max_pieces(z, num_pieces, out_features), state

    return Layer(dense.init, apply)


def _max_pieces(z, num_pieces: int, width: int):
    y = z[..., :width]
    for i in range(1, num_pieces):
        y = jnp.maximum(y, z[..., i * width : (i + 1) * width])
    return y


# --------------------------------------------------------------------------- normalization
def _stat_dtype(x):
    """At least float32 for statistics (float64 stays float64)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def _masked_moments(x, mask):
    """Mean and (biased) variance over the batch axis in >= float32, counting only ``mask == 1``."""
    x32 = x.astype(_stat_dtype(x))
    if mask is None:
        mean = jnp.mean(x32, axis=0)
        var = jnp.mean(jnp.square(x32 - mean), axis=0)
        return mean, var
    m = mask.astype(x32.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    n = jnp.maximum(jnp.sum(m), 1.0)
    mean = jnp.sum(x32 * m, axis=0) / n
    var = jnp.sum(jnp.square(x32 - mean) * m, axis=0) / n
    return mean, var


def BatchNorm(*, momentum: float = 0.9, eps: float = 1e-5) -> Layer:
    r"""Batch normalization over the batch axis (features on the last axis).

    Training: :math:`\hat x = (x - \mu_B)/\sqrt{\sigma_B^2 + \epsilon}`,
    :math:`y = \gamma \hat x + \beta` with the batch mean/variance (biased), and the running
    averages updated as :math:`r \leftarrow m\,r + (1-m)\,\mu_B` (the variance with the unbiased
    batch estimate, as PyTorch does). Evaluation uses the running averages. ``gamma``/``beta``
    start at 1 and 0; statistics are computed in float32 and the output keeps ``x``'s dtype.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")

    def init(key, in_features):
        params = {"gamma": jnp.ones((in_features,)), "beta": jnp.zeros((in_features,))}
        state = {"mean": jnp.zeros((in_features,)), "var": jnp.ones((in_features,))}
        return params, state

    def apply(params, state, x, *, train=False, key=None, mask=None):
        _check_features(x, params["gamma"].shape[0], "BatchNorm")
        if train:
            mean, var = _masked_moments(x, mask)
            n = x.shape[0] if mask is None else jnp.sum(mask.astype(jnp.float32))
            unbiased = var * n / jnp.maximum(n - 1.0, 1.0)
            state = {
                "mean": momentum * state["mean"] + (1.0 - momentum) * mean,
                "var": momentum * state["var"] + (1.0 - momentum) * unbiased,
            }
        else:
            mean, var = state["mean"], state["var"]
        x_hat = (x.astype(_stat_dtype(x)) - mean) * jax.lax.rsqrt(var + eps)
        y = params["gamma"] * x_hat + params["beta"]
        return y.astype(x.dtype), state

    return Layer(init, apply)


def LayerNorm(*, eps: float = 1e-5) -> Layer:
    r"""Layer normalization over the feature axis, per example:
    :math:`y = \gamma (x - \mu)/\sqrt{\sigma^2 + \epsilon} + \beta` (same in training and eval)."""

    def init(key, in_features):
        return {"gamma": jnp.ones((in_features,)), "beta": jnp.zeros((in_features,))}, {}

    def apply(params, state, x, *, train=False, key=None, mask=None):
        _check_features(x, params["gamma"].shape[0], "LayerNorm")
        x32 = x.astype(_stat_dtype(x))
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = params["gamma"] * (x32 - mean) * jax.lax.rsqrt(var + eps) + params["beta"]
        return y.astype(x.dtype), state

    return Layer(init, apply)


def Dropout(rate: float) -> Layer:
    r"""Inverted dropout with **drop** probability ``rate``: in training each unit is kept with
    probability :math:`p = 1 - \text{rate}` and scaled by :math:`1/p`; identity in evaluation.
    Needs ``key`` when training with ``rate > 0``."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")

    def init(key, in_features):
        return {}, {}

    def apply(params, state, x, *, train=False, key=None, mask=None):
        if not train or rate == 0.0:
            return x, state
        if key is None:
            raise ValueError("Dropout: a PRNG key is needed in training (pass key=...)")
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype), state

    return Layer(init, apply)


# --------------------------------------------------------------------------- MLP
def mlp(
    sizes,
    activation: str = "relu",
    init: Any = "he_normal",
    bias_init: float = 0.0,
    batch_norm: bool = False,
    dropout: float = 0.0,
    *,
    num_pieces: int = 2,
    bn_momentum: float = 0.9,
    prelu_init: float = 0.25,
) -> Model:
    """A multilayer perceptron ``sizes = [in, hidden..., out]``.

    Each hidden layer is ``Dense -> [BatchNorm] -> activation -> [Dropout]`` (batch norm after the
    affine map and before the nonlinearity); the last layer is a plain ``Dense`` giving scores.
    ``activation="maxout"`` makes each hidden layer a :func:`Maxout` with ``num_pieces`` pieces;
    ``"prelu"`` gives each hidden layer a learnable per-unit slope ``alpha`` (initially
    ``prelu_init``). Params are ``{"layer_0": {"w", "b", ["bn"], ["alpha"]}, ...}``; with batch
    norm a hidden layer has no ``b`` (the norm's ``beta`` is its bias).

    Example::

        model = mlp([64, 128, 10])
        params, state = model.init(jax.random.key(0))
        logits, state = model.apply(params, state, x)
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must list at least an input and an output size >= 1, got {sizes}")
    if activation != "maxout":
        act_fn = _act.get(activation)  # raises ValueError listing the valid names
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a drop probability in [0, 1), got {dropout}")
    depth = len(sizes) - 1
    blocks = []
    for i in range(depth):
        hidden = i < depth - 1
        if hidden and activation == "maxout":
            lin = Maxout(sizes[i + 1], num_pieces, w_init=init, b_init=bias_init)
        else:
            # Batch norm's beta replaces the bias (a bias before it would get zero gradient).
            lin = Dense(sizes[i + 1], w_init=init, b_init=bias_init,
                        use_bias=not (hidden and batch_norm))
        bn = BatchNorm(momentum=bn_momentum) if (hidden and batch_norm) else None
        blocks.append((lin, bn))
    drop = Dropout(dropout)

    def init_fn(key):
        params, state = {}, {}
        keys = jax.random.split(key, depth)
        for i, (lin, bn) in enumerate(blocks):
            p, s = lin.init(keys[i], sizes[i])
            if bn is not None:
                p["bn"], s["bn"] = bn.init(keys[i], sizes[i + 1])
            if activation == "prelu" and i < depth - 1:
                p["alpha"] = jnp.full((sizes[i + 1],), prelu_init, jnp.float32)
            params[f"layer_{i}"], state[f"layer_{i}"] = p, s
        return params, state

    def _forward(params, state, x, train, key, mask):
        x = jnp.asarray(x)
        if x.ndim != 2 or x.shape[-1] != sizes[0]:
            raise ValueError(f"mlp: x must have shape [batch, {sizes[0]}], got {x.shape}")
        keys = [None] * depth
        if train and dropout > 0.0:
            if key is None:
                raise ValueError("mlp: a PRNG key is needed to train with dropout (pass key=...)")
            keys = list(jax.random.split(key, depth))
        new_state, acts = {}, []
        h = x
        for i, (lin, bn) in enumerate(blocks):
            name = f"layer_{i}"
            p, s = params[name], state[name]
            z, _ = lin.apply(p, {}, h)
            s_new = dict(s)
            if bn is not None:
                z, s_new["bn"] = bn.apply(p["bn"], s["bn"], z, train=train, mask=mask)
            new_state[name] = s_new
            if i == depth - 1:
                return z, new_state, acts
            if activation == "maxout":
                h = z
            elif activation == "prelu":
                h = act_fn(z, p["alpha"].astype(z.dtype))
            else:
                h = act_fn(z)
            acts.append(LayerActivations(pre=z, post=h))
            h, _ = drop.apply({}, {}, h, train=train, key=keys[i])

    def apply(params, state, x, *, train=False, key=None, mask=None):
        out, new_state, _ = _forward(params, state, x, train, key, mask)
        return out, new_state

    def trace(params, state, x, *, train=False, key=None, mask=None):
        return _forward(params, state, x, train, key, mask)

    return Model(init_fn, apply, trace)
