"""Mini-batches on device: the order of an epoch, fixed-shape batches, and image augmentation.

* **Order** — the shuffled order of epoch ``e`` is a pure function of ``(key, e)``:
  ``jax.random.permutation(jax.random.fold_in(key, e), n)``, so a resumed run sees exactly the
  batches an uninterrupted run would have seen.
* **Batches** — every batch has the same shape: the ragged last batch is padded by wrapping around
  to the start of the epoch's permutation, and a float32 ``mask`` (1 = real example, 0 = padding)
  says which rows count. Because shapes are fixed, a training step compiles once and a whole
  epoch can run inside one ``jax.lax.scan``.
* **Augmentation** — :func:`augment` randomly crops (after zero padding) and horizontally flips a
  batch of ``[N, H, W, C]`` images on device; inside a jitted epoch its key is
  :func:`augment_key` ``(key, epoch, step)``, so augmentation too is a pure function of the run's
  key and position and a resumed run stays identical.

Example::

    batches = epoch_batches(ds.x_train, ds.y_train, 128, key=jax.random.key(0), epoch=3)
    # batches.x: [num_batches, 128, 64], batches.y / batches.mask: [num_batches, 128]
    state, metrics = jax.lax.scan(train_step, state, batches)
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "Augment",
    "Batch",
    "augment",
    "augment_key",
    "batch_indices",
    "check_augment",
    "epoch_batches",
    "gather_batch",
    "iterate_batches",
    "num_batches",
    "parse_augment",
]


class Batch(NamedTuple):
    """One mini-batch (or, stacked, a whole epoch of them).

    Attributes:
      x: inputs, ``[batch_size, ...features]`` (``[num_batches, batch_size, ...]`` when stacked).
      y: integer labels, ``[batch_size]`` (``[num_batches, batch_size]``).
      mask: float32, 1 for real examples and 0 for padding, same leading shape as ``y``. Reduce a
        per-example loss as ``sum(loss * mask) / max(sum(mask), 1)``.
    """

    x: jax.Array
    y: jax.Array
    mask: jax.Array


# --------------------------------------------------------------------------------------------
# Order and batches
# --------------------------------------------------------------------------------------------


def num_batches(n: int, batch_size: int, *, drop_last: bool = False) -> int:
    """Number of batches in an epoch of ``n`` examples: ``ceil(n / b)`` (``floor`` if drop_last).

    Example:
      >>> num_batches(10, 4), num_batches(10, 4, drop_last=True)
      (3, 2)
    """
    n, batch_size = int(n), int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
    if n < 1:
        raise ValueError(f"n (the number of examples) must be at least 1, got {n}.")
    count = n // batch_size if drop_last else -(-n // batch_size)
    if count == 0:
        raise ValueError(f"drop_last=True with n={n} < batch_size={batch_size} leaves no batches.")
    return count


def _as_key(key: Any) -> jax.Array | None:
    if key is None:
        return None
    if isinstance(key, int | np.integer):
        return jax.random.key(int(key))
    return key


@functools.partial(jax.jit, static_argnames=("n", "batch_size", "drop_last"))
def _batch_indices(key, epoch, *, n: int, batch_size: int, drop_last: bool):
    count = num_batches(n, batch_size, drop_last=drop_last)
    if key is None:
        order = jnp.arange(n, dtype=jnp.int32)
    else:
        order = jax.random.permutation(jax.random.fold_in(key, epoch), n).astype(jnp.int32)
    pos = jnp.arange(count * batch_size, dtype=jnp.int32)
    idx = order[pos % n]  # padding wraps around to the start of this epoch's order
    mask = (pos < n).astype(jnp.float32)
    return idx.reshape(count, batch_size), mask.reshape(count, batch_size)


def batch_indices(
    n: int,
    batch_size: int,
    *,
    key: ArrayLike | int | None = None,
    epoch: ArrayLike = 0,
    drop_last: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Example indices of every batch of one epoch, and the padding mask.

    The order is a pure function of ``(key, epoch)``:

    .. math::
        \\pi_e = \\operatorname{permutation}(\\operatorname{fold\\_in}(key, e), n)

    and batch ``i`` holds ``pi_e[i*b : (i+1)*b]``. The ragged last batch is filled up by wrapping
    around to the start of ``pi_e`` (so padding rows are real examples, e.g. harmless for batch
    norm statistics) and marked with ``mask = 0``; with ``drop_last=True`` it is dropped instead.
    ``key=None`` keeps the original order. Works under ``jit`` with ``key`` and ``epoch`` traced
    (``n``, ``batch_size``, ``drop_last`` must be static).

    Args:
      n: number of examples.
      batch_size: examples per batch.
      key: a ``jax.random`` key (or an int seed); ``None`` for no shuffling.
      epoch: epoch number folded into ``key`` (an int or an int32 scalar array).
      drop_last: drop the incomplete last batch instead of padding it.

    Returns:
      ``(indices, mask)``: int32 ``[num_batches, batch_size]`` and float32
      ``[num_batches, batch_size]``; ``mask.sum() == n`` (``num_batches * batch_size`` if
      drop_last).

    Example:
      >>> idx, mask = batch_indices(5, 2, key=jax.random.key(0), epoch=0)
      >>> idx.shape, mask.tolist()
      ((3, 2), [[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    """
    return _batch_indices(
        _as_key(key), epoch, n=int(n), batch_size=int(batch_size), drop_last=bool(drop_last)
    )


def _check_xy(x: ArrayLike, y: ArrayLike) -> tuple[jax.Array, jax.Array]:
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must have the same leading (example) dimension; got x {x.shape} "
            f"and y {y.shape}."
        )
    return x, y


def gather_batch(x: ArrayLike, y: ArrayLike, indices: ArrayLike, mask: ArrayLike) -> Batch:
    """Gather examples ``indices`` (any shape) from ``x`` and ``y`` with ``jnp.take``.

    Inside a ``lax.scan`` over ``batch_indices(...)`` this builds each batch on device without
    materializing a permuted copy of the whole dataset (use it instead of :func:`epoch_batches`
    when the dataset is large).

    Example:
      >>> idx, mask = batch_indices(4, 2)
      >>> gather_batch(jnp.arange(8.0).reshape(4, 2), jnp.arange(4), idx[1], mask[1]).y.tolist()
      [2, 3]
    """
    indices = jnp.asarray(indices)
    return Batch(
        jnp.take(jnp.asarray(x), indices, axis=0),
        jnp.take(jnp.asarray(y), indices, axis=0),
        jnp.asarray(mask, dtype=jnp.float32),
    )


def epoch_batches(
    x: ArrayLike,
    y: ArrayLike,
    batch_size: int,
    *,
    key: ArrayLike | int | None = None,
    epoch: ArrayLike = 0,
    drop_last: bool = False,
) -> Batch:
    """All batches of one epoch, stacked: ready for ``jax.lax.scan``.

    Same order and padding as :func:`batch_indices`; the gather runs in jax (on device).

    Args:
      x: inputs ``[n, ...features]`` (numpy or jax).
      y: labels ``[n]``.
      batch_size: examples per batch.
      key: a ``jax.random`` key (or an int seed); ``None`` for no shuffling.
      epoch: epoch number folded into ``key``.
      drop_last: drop the incomplete last batch instead of padding it.

    Returns:
      ``Batch(x=[num_batches, batch_size, ...features], y=[num_batches, batch_size],
      mask=[num_batches, batch_size])``; unpacks as ``xb, yb, mask``.

    Example:
      >>> b = epoch_batches(np.zeros((10, 3)), np.arange(10), 4, key=jax.random.key(0), epoch=1)
      >>> b.x.shape, b.y.shape, float(b.mask.sum())
      ((3, 4, 3), (3, 4), 10.0)
    """
    x, y = _check_xy(x, y)
    idx, mask = batch_indices(x.shape[0], batch_size, key=key, epoch=epoch, drop_last=drop_last)
    return gather_batch(x, y, idx, mask)


def iterate_batches(
    x: ArrayLike,
    y: ArrayLike,
    batch_size: int,
    *,
    key: ArrayLike | int | None = None,
    epoch: ArrayLike = 0,
    drop_last: bool = False,
) -> Iterator[Batch]:
    """Yield the batches of one epoch one at a time, each ``Batch`` of fixed shape.

    The same batches, in the same order, as :func:`epoch_batches` (the last one padded and
    masked), for a plain Python loop around a jitted step.

    Example:
      >>> [int(b.mask.sum()) for b in iterate_batches(np.zeros((5, 2)), np.zeros(5, int), 2)]
      [2, 2, 1]
    """
    x, y = _check_xy(x, y)
    idx, mask = batch_indices(x.shape[0], batch_size, key=key, epoch=epoch, drop_last=drop_last)
    for i in range(idx.shape[0]):
        yield gather_batch(x, y, idx[i], mask[i])


# --------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------


class Augment(NamedTuple):
    """What :func:`augment` does to each image: a random crop after zero padding by ``crop``
    pixels on every side (0: no crop) and, with ``flip``, a horizontal flip with probability 1/2.

    ``parse_augment("crop:4,flip") == Augment(crop=4, flip=True)``.
    """

    crop: int = 0
    flip: bool = False


_AUGMENT_FORMAT = "comma-separated crop:P (pad by P >= 1 pixels, then crop back) and/or flip"


def parse_augment(spec: str | Augment | None) -> Augment | None:
    """Parse the augmentation mini-language ``"crop:P,flip"`` (either item alone, in any order).

    ``None``, ``""`` and ``"none"`` mean no augmentation and give ``None``; an :class:`Augment` is
    returned as is (after checking it).

    Example:
      >>> parse_augment("crop:4,flip"), parse_augment("flip"), parse_augment("none")
      (Augment(crop=4, flip=True), Augment(crop=0, flip=True), None)
    """
    if spec is None or isinstance(spec, Augment):
        return None if spec is None else _checked(spec)
    text = str(spec).strip()
    if text.lower() in ("", "none"):
        return None
    crop, flip = 0, False
    for item in (s.strip() for s in text.split(",")):
        name, _, arg = item.partition(":")
        if name == "flip" and not arg and not flip:
            flip = True
        elif name == "crop" and not crop:
            try:
                crop = int(arg)
            except ValueError:
                crop = -1
            if crop < 1:
                raise ValueError(f"augment {text!r}: crop:P needs a whole number of pixels P >= 1, "
                                 f"got {item!r}; expected {_AUGMENT_FORMAT}.")
        else:
            raise ValueError(f"augment {text!r}: unexpected {item!r}; expected {_AUGMENT_FORMAT}.")
    return Augment(crop, flip)


def _checked(spec: Augment) -> Augment:
    crop = spec.crop
    if isinstance(crop, bool) or not isinstance(crop, int | np.integer) or crop < 0:
        raise ValueError(f"augment: crop must be a whole number of pixels >= 0, got {crop!r}.")
    return Augment(int(crop), bool(spec.flip))


def check_augment(spec: Augment | None, x_shape: tuple[int, ...]) -> None:
    """Raise ``ValueError`` unless ``spec`` can augment data of shape ``x_shape``.

    Crop and flip act on images: ``x_shape`` must be ``[n, height, width, channels]`` (rank 4),
    and a crop pads by fewer pixels than the image's smaller side (``P < min(H, W)``, so every
    crop keeps part of the image; a huge ``P`` would also ask for a padded batch beyond any
    memory). Call it before training starts; :func:`augment` checks the same when traced.
    """
    if spec is None:
        return
    spec = _checked(spec)
    if len(x_shape) != 4:
        raise ValueError(
            f"augment (--augment): crop and flip need images [n, height, width, channels], got x "
            f"of shape {tuple(x_shape)}; keep the image shape (load(..., flatten=False), a conv "
            "architecture) or drop the augmentation."
        )
    h, w = int(x_shape[1]), int(x_shape[2])
    if spec.crop >= min(h, w):
        raise ValueError(
            f"augment (--augment): crop:{spec.crop} pads by more than the {h}x{w} images allow; "
            f"crop:P needs P < {min(h, w)} (the smaller image side) so every crop keeps part of "
            "the image."
        )


def augment_key(key: jax.Array, epoch: ArrayLike, step: ArrayLike) -> jax.Array:
    """The augmentation key of step ``step`` (counted from 0 within the epoch) of epoch ``epoch``:
    ``fold_in(fold_in(key, epoch), step)``. Works with traced ``epoch`` and ``step``."""
    return jax.random.fold_in(jax.random.fold_in(key, epoch), step)


def augment(
    x: ArrayLike, *, key: jax.Array, crop: int = 0, flip: bool = False
) -> jax.Array:
    """Randomly crop and horizontally flip each image of a batch ``[N, H, W, C]``, on device.

    Crop: the image is zero-padded by ``P = crop`` pixels on each side and an ``H x W`` window is
    cut at a random offset, independently per image:

    .. math::
        y_i[h, w] = \\operatorname{pad}_P(x_i)[h + a_i, w + b_i], \\qquad
        a_i, b_i \\sim \\mathcal{U}\\{0, \\dots, 2P\\}

    so the content moves by up to ``P`` pixels in each direction (``a_i = b_i = P`` is the
    original). Flip: with probability 1/2 per image, ``y_i[h, w] = y_i[h, W - 1 - w]`` (left and
    right swap). The two use independent halves of ``key``. Shapes and dtype are kept; works
    under ``jit`` and ``vmap`` (``crop`` and ``flip`` must be static).

    Args:
      x: images ``[N, H, W, C]`` (NHWC).
      key: a ``jax.random`` key; the same key gives the same crops and flips.
      crop: padding ``P >= 0`` in pixels (0: no crop).
      flip: flip left-right with probability 1/2.

    Returns:
      The augmented batch, same shape and dtype as ``x``.

    Example:
      >>> x = jnp.arange(2 * 4 * 4 * 1.0).reshape(2, 4, 4, 1)
      >>> augment(x, key=jax.random.key(0), crop=1, flip=True).shape
      (2, 4, 4, 1)
    """
    x = jnp.asarray(x)
    spec = _checked(Augment(crop, flip))
    check_augment(spec, x.shape)
    n, h, w, c = x.shape
    crop_key, flip_key = jax.random.split(key)
    if spec.crop:
        p = spec.crop
        padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * p + 1)
        cut = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
        x = jax.vmap(cut)(padded, offsets)
    if spec.flip:
        mirror = jax.random.bernoulli(flip_key, 0.5, (n,))
        x = jnp.where(mirror[:, None, None, None], x[:, :, ::-1, :], x)
    return x
