r"""The 2-D convolution behind :func:`jaxnn.layers.Conv2D`: NHWC inputs, HWIO kernels.

Two ways to compute the same cross-correlation

.. math:: y_{n,i,j,o} = \sum_{u,v,c} \tilde x_{n,\,s_h i + u,\,s_w j + v,\,c} \, W_{u,v,c,o}

(:math:`\tilde x` the padded input), both built from ordinary jax primitives, so ``jax.grad``,
``jax.jvp``, ``jax.jacfwd``, ``jax.hessian`` and ``jax.vmap`` go through either with jax's own
rules (no custom VJP):

``"lax"``
    :func:`jax.lax.conv_general_dilated`. The choice on accelerators.
``"im2col"``
    pad, take the :math:`k_h k_w` strided shifted views of the padded input, concatenate them on
    the channel axis (patches ``[n, oh, ow, kh*kw*c_in]``, ordered ``(u, v, c)``) and multiply by
    the kernel reshaped to ``[kh*kw*c_in, c_out]`` in one matmul. Its derivatives are slices,
    pads and matmuls, which XLA:CPU runs as fast inside ``lax.scan`` (an epoch in one scan) as in
    a step jitted alone; the transposes of ``conv_general_dilated`` it runs tens of times slower
    inside a scan (measured: 66 s against 1.4 s per step of two 3x3 32->32 convolutions, batch
    128). The patches are built for a chunk of the batch at a time (:func:`conv_im2col`,
    :data:`CHUNK_BYTES`) and flattened to one 2-D matmul: on a 2-core AMD EPYC the CIFAR-shaped
    convnet step of ``benchmarks/train_step.py`` then takes 181 ms in ``fit``'s scan against
    308 ms for a hand-written step with ``lax.conv`` (and 241 ms unchunked), and XLA's
    temporaries drop from 418 MB to 144 MB: the ``kh * kw`` copies of the activations are only
    ever held for one chunk.

``"auto"`` (the default) picks ``"im2col"`` when the computation runs on a CPU and ``"lax"``
elsewhere. The choice is made with :func:`jax.lax.platform_dependent`: both forms are traced and
the platform the computation is *compiled for* keeps one of them (in lowering; XLA never sees the
other). So it follows where the arrays actually live (a function jitted for a GPU device on a
machine whose default backend is the CPU gets ``lax``), and the conditional is transparent to
every transformation (jvp, vmap and transposition of ``lax.switch`` with an unbatched index).

In a step jitted alone (called once per batch from Python, never inside ``lax.scan``) the
chunked im2col is also ahead of ``lax`` on a CPU (231 ms against 308 ms for that step). Code
that traces such a step can still ask for ``lax`` with ``with cpu_algorithm("lax"):`` around the
traced body: inside it ``"auto"`` is ``lax`` on every platform (``jaxnn.train._step_epoch``,
measured against fit's scan by ``benchmarks/fit_loops.py``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

ALGORITHMS = ("auto", "im2col", "lax")
DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")

Pads = tuple[tuple[int, int], tuple[int, int]]

#: What ``"auto"`` computes on a CPU while tracing: ``"im2col"`` (default) or ``"lax"``.
_CPU_AUTO: contextvars.ContextVar[str] = contextvars.ContextVar("jaxnn_conv_cpu_auto",
                                                                default="im2col")


@contextlib.contextmanager
def cpu_algorithm(name: str) -> Iterator[None]:
    """Within the block, ``algorithm="auto"`` convolutions traced for a CPU use ``name``
    (``"im2col"`` or ``"lax"``; other platforms keep ``lax``). Put it *inside* the function that
    is jitted, around the traced code, so that every trace of that function sees the same
    choice."""
    if name not in ("im2col", "lax"):
        raise ValueError(f"cpu_algorithm: expected 'im2col' or 'lax', got {name!r}")
    token = _CPU_AUTO.set(name)
    try:
        yield
    finally:
        _CPU_AUTO.reset(token)


def resolve_pads(padding: Any, hw: Sequence[int], kernel: Sequence[int],
                 strides: Sequence[int]) -> Pads:
    """``"SAME"`` / ``"VALID"`` / explicit ``((top, bottom), (left, right))`` as explicit pads
    (``lax``'s convention: SAME puts the smaller half first)."""
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(tuple(hw), tuple(kernel), tuple(strides), padding)
    (t, b), (l, r) = padding
    return (int(t), int(b)), (int(l), int(r))


def conv_lax(x, w, strides: Sequence[int], pads: Pads):
    """``lax.conv_general_dilated`` of NHWC ``x`` and HWIO ``w`` with explicit ``pads``."""
    return lax.conv_general_dilated(x, w, tuple(strides), pads,
                                    dimension_numbers=DIMENSION_NUMBERS)


#: The im2col patches are built for one chunk of the batch at a time, of about this many bytes
#: (:func:`conv_im2col`). On a 2-core AMD EPYC (2 MiB L2 per core, 32 MiB L3), the CIFAR-shaped
#: convnet step of ``benchmarks/train_step.py`` inside ``fit``'s scan: 181 ms with 4 MB chunks
#: (the benchmark) against 241 ms unchunked, and XLA's temporaries 144 MB against 418 MB (probes
#: of that step: 5 MB and 8 MB chunks took 212 and 233 ms).
CHUNK_BYTES = 4 << 20


def _patches_matmul(x, w, strides: tuple[int, int], oh: int, ow: int):
    """Patches ``[n, oh, ow, kh*kw*c_in]`` of the already padded ``x`` times the kernel as
    ``[kh*kw*c_in, c_out]``: one matmul."""
    n, _, _, c_in = x.shape
    kh, kw, _, c_out = w.shape
    sh, sw = strides
    if kh == kw == 1 and sh == sw == 1 and x.shape[1:3] == (oh, ow):
        patches = x  # a 1x1 convolution is a matmul already
    else:
        views = [lax.slice(x, (0, u, v, 0), (n, u + (oh - 1) * sh + 1, v + (ow - 1) * sw + 1,
                                              c_in), (1, sh, sw, 1))
                 for u in range(kh) for v in range(kw)]
        patches = views[0] if len(views) == 1 else lax.concatenate(views, 3)
    # [n*oh*ow, kh*kw*c_in] x [kh*kw*c_in, c_out]; the (u, v, c) order of the patches' last
    # axis is the row-major order of the HWIO kernel's first three axes. Flattened to 2-D first:
    # the kernel's gradient is then a matmul contracting one axis, not three (XLA:CPU runs the
    # latter 1.2x slower in a CIFAR-shaped convnet step).
    k = kh * kw * c_in
    y = lax.dot_general(patches.reshape(n * oh * ow, k), w.reshape(k, c_out),
                        (((1,), (0,)), ((), ())))
    return y.reshape(n, oh, ow, c_out)


def _chunk_size(n: int, most: int) -> int:
    """Examples per chunk: the largest divisor of ``n`` that is at most ``most`` when one is at
    least ``most / 2`` (no padding), else ``most`` (the last chunk padded)."""
    most = min(most, n)
    for c in range(most, max(most // 2, 1) - 1, -1):
        if n % c == 0:
            return c
    return most


def conv_im2col(x, w, strides: Sequence[int], pads: Pads, *, chunk_bytes: int = CHUNK_BYTES):
    """The same convolution as explicit im2col + one matmul (see the module docstring).

    Handles any kernel size, strides, and explicit pads (negative ones crop, as in ``lax``);
    the output has ``x``'s dtype (``w`` is expected in it already).

    When the patches of the whole batch would take more than ``2 * chunk_bytes``, the batch is
    cut into chunks whose patches take about ``chunk_bytes`` (the last one padded with zeros and
    the padding dropped from the output) and the chunks run one after the other in a
    :func:`jax.lax.map` whose body is :func:`jax.checkpoint`-ed: the backward pass rebuilds one
    chunk's patches from the padded input instead of keeping every chunk's, so the memory of the
    patches is about ``2 * chunk_bytes`` rather than ``kh * kw`` times the activations, and a
    chunk stays in the cache while its matmul runs (faster too; :data:`CHUNK_BYTES`). The
    arithmetic of each output element is the same either way.
    """
    n, h, wd, c_in = x.shape
    kh, kw, _, c_out = w.shape
    sh, sw = strides
    (t, b), (l, r) = pads
    oh = (h + t + b - kh) // sh + 1
    ow = (wd + l + r - kw) // sw + 1
    if oh < 1 or ow < 1:  # kernel larger than the padded input: an empty output, as lax gives
        return jnp.zeros((n, max(oh, 0), max(ow, 0), c_out), x.dtype)
    if (t, b, l, r) != (0, 0, 0, 0):
        x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (t, b, 0), (l, r, 0), (0, 0, 0)))
    per_example = oh * ow * kh * kw * c_in * jnp.dtype(x.dtype).itemsize
    one_by_one = kh == kw == 1 and sh == sw == 1 and x.shape[1:3] == (oh, ow)
    # A symbolic batch size (jax.export's shape polymorphism) cannot be cut into chunks.
    if one_by_one or not isinstance(n, int):
        return _patches_matmul(x, w, (sh, sw), oh, ow)
    chunk = _chunk_size(n, max(1, int(chunk_bytes) // max(per_example, 1)))
    if n <= 2 * chunk:
        return _patches_matmul(x, w, (sh, sw), oh, ow)
    m = -(-n // chunk)
    if m * chunk != n:
        x = lax.pad(x, jnp.zeros((), x.dtype), ((0, m * chunk - n, 0), *[(0, 0, 0)] * 3))
    body = jax.checkpoint(lambda xc: _patches_matmul(xc, w, (sh, sw), oh, ow),
                          prevent_cse=False)  # inside lax.map: no CSE to prevent
    y = lax.map(body, x.reshape(m, chunk, *x.shape[1:]))
    return y.reshape(m * chunk, oh, ow, c_out)[:n]


def conv2d(x, w, strides: Sequence[int], pads: Pads, algorithm: str = "auto"):
    """NHWC ``x`` (x) HWIO ``w`` by ``algorithm`` (``"auto"``: im2col on CPU, lax elsewhere;
    lax everywhere inside :func:`cpu_algorithm` ``("lax")``)."""
    strides, pads = tuple(strides), tuple(map(tuple, pads))
    if algorithm == "im2col":
        return conv_im2col(x, w, strides, pads)
    if algorithm == "lax":
        return conv_lax(x, w, strides, pads)
    if algorithm != "auto":
        raise ValueError(f"`algorithm` must be one of {ALGORITHMS}, got {algorithm!r}")
    if _CPU_AUTO.get() == "lax":
        return conv_lax(x, w, strides, pads)
    return lax.platform_dependent(
        x, w, cpu=lambda x, w: conv_im2col(x, w, strides, pads),
        default=lambda x, w: conv_lax(x, w, strides, pads))
