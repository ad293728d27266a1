r"""Pooling over non-overlapping windows as reshapes, behind :func:`jaxnn.layers.MaxPool` and
:func:`jaxnn.layers.AvgPool`.

When the strides equal the window and nothing is padded (``"VALID"``, or ``"SAME"`` on sizes the
window divides), every window is a block of a reshape ``[n, h/kh, kh, w/kw, kw, c]``:

.. math:: y_{n,i,j,c} = \max_{u<k_h,\,v<k_w} x_{n,\,k_h i+u,\,k_w j+v,\,c}

(or the mean), a reduction over axes 2 and 4. Its gradient is elementwise (a broadcast and a
select) instead of XLA's ``select_and_scatter`` / windowed pad of ``lax.reduce_window``, which
XLA:CPU runs far slower: a probe of the CIFAR-shaped convnet step of
``benchmarks/train_step.py`` took 246 ms against 276 ms with ``reduce_window`` (2-core AMD EPYC,
batch 128, inside ``lax.scan``, before the im2col chunking). ``"VALID"`` drops the
rows and columns that do not fill a window, as ``reduce_window`` does.

The max keeps ``reduce_window``'s gradient exactly: all of it goes to the *first* maximal entry
of each window in row-major order (PyTorch's ``max_pool2d`` convention too), where
``jnp.max``'s own rule would split it among ties (after a ReLU, all-zero windows are common).
That is a :func:`jax.custom_jvp`, so forward and reverse mode, ``vmap`` and higher derivatives
all go through it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

__all__: list[str] = []


def blocks_fit(x_shape, window, strides, pads) -> bool:
    """Whether pooling ``window`` with ``strides`` and ``pads`` (``"VALID"``, ``"SAME"`` or
    explicit ``((0, 0), (t, b), (l, r), (0, 0))``) is a block reshape: strides equal to the
    window and no padding."""
    wh, ww = window
    if tuple(strides) != (wh, ww):
        return False
    if pads == "VALID":
        return True
    _, h, w, _ = x_shape
    if pads == "SAME":
        return h % wh == 0 and w % ww == 0
    return all(p == (0, 0) for p in map(tuple, pads))


def _blocks(x, window):
    """``[n, h, w, c]`` -> ``[n, h//kh, kh, w//kw, kw, c]`` (the rows and columns that do not fill
    a window dropped)."""
    n, h, w, c = x.shape
    wh, ww = window
    x = x[:, :h - h % wh, :w - w % ww]
    return x.reshape(n, h // wh, wh, w // ww, ww, c)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def block_max(x, window):
    """Max over non-overlapping ``window`` blocks of NHWC ``x``; the derivative goes to each
    window's first maximal entry (row-major)."""
    return jnp.max(_blocks(x, window), axis=(2, 4))


@block_max.defjvp
def _block_max_jvp(window, primals, tangents):
    (x,), (t,) = primals, tangents
    xb = _blocks(x, window)
    y = jnp.max(xb, axis=(2, 4))
    wh, ww = window
    order = (lax.broadcasted_iota(jnp.int32, (1, 1, wh, 1, ww, 1), 2) * ww
             + lax.broadcasted_iota(jnp.int32, (1, 1, wh, 1, ww, 1), 4))
    hits = jnp.where(xb == y[:, :, None, :, None, :], order, wh * ww)
    first = order == jnp.min(hits, axis=(2, 4), keepdims=True)
    dt = jnp.sum(jnp.where(first, _blocks(t, window), jnp.zeros((), t.dtype)), axis=(2, 4))
    return y, dt


def block_mean(x, window):
    """Mean over non-overlapping ``window`` blocks of NHWC ``x``."""
    wh, ww = window
    return jnp.sum(_blocks(x, window), axis=(2, 4)) / jnp.array(wh * ww, x.dtype)
