"""Model ensembles: K members that differ only in their seed (initial weights, data order and
dropout masks), trained at once as one population, their predicted probabilities averaged.

.. math:: \\bar p(y \\mid x) = \\frac{1}{K} \\sum_{k=1}^{K} \\operatorname{softmax}(f_k(x))_y,
   \\qquad \\hat y = \\arg\\max_y \\bar p(y \\mid x)

Averaging probabilities (not logits, not votes) is the classic recipe: the members' errors are
partly independent, so the average is usually a point or two more accurate than a typical
member.

Example::

    res = ensemble(jaxnn.data.load("digits"), members=5, epochs=10, key=jax.random.key(0))
    res.member_test_acc, res.ensemble_test_acc
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxnn import distributed as _distributed
from jaxnn import models as _models
from jaxnn import population as _population
from jaxnn import train as _train

__all__ = [
    "EnsembleResult",
    "average_probabilities",
    "ensemble_accuracy",
    "ensemble",
]


class EnsembleResult(NamedTuple):
    """What :func:`ensemble` returns.

    ``member_test_acc``/``member_test_loss`` ``[K]`` are each member's own test accuracy and
    cross-entropy; ``ensemble_test_acc``/``ensemble_test_loss`` those of the averaged
    probabilities (over the members that did not diverge; NaN if all did); ``status[k]`` is the
    population's (:class:`jaxnn.train.Status`: ``"ok"`` or ``"diverged"``); ``population`` the full
    :class:`jaxnn.population.PopulationResult` (stacked params, history).
    """

    member_test_acc: np.ndarray
    member_test_loss: np.ndarray
    ensemble_test_acc: float
    ensemble_test_loss: float
    status: list[_train.Status]
    population: _population.PopulationResult


def _check_logits(logits) -> jax.Array:
    logits = jnp.asarray(logits)
    if logits.ndim != 3:
        raise ValueError(f"logits must have shape [members, batch, classes], got {logits.shape}")
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    return logits


def _check_labels(labels, num_classes: int, n: int) -> jax.Array:
    """Integer class ids ``[n]`` in ``[0, num_classes)``: dtype and shape are checked always
    (they are static), the values where they are known (eager calls, numpy inputs); a traced
    label outside the range is caught by :func:`ensemble_accuracy`'s NaN."""
    traced = isinstance(labels, jax.core.Tracer)
    values = None if traced else np.asarray(labels)
    dtype = jnp.result_type(labels) if traced else values.dtype
    if dtype == np.bool_ or not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"labels must be integer class ids in [0, {num_classes}), got dtype "
                         f"{dtype}")
    shape = np.shape(labels)
    if shape != (n,):
        raise ValueError(f"labels must have shape [{n}] to match logits with {n} examples, got "
                         f"{shape}")
    if values is not None and values.size:
        bad = values[(values < 0) | (values >= num_classes)]
        if bad.size:
            raise ValueError(f"labels must be class ids in [0, {num_classes}) for logits with "
                             f"{num_classes} classes, got {int(bad[0])}")
        return jnp.asarray(values)
    return jnp.asarray(labels)


def average_probabilities(logits: ArrayLike) -> jax.Array:
    """The members' softmax probabilities averaged: ``[K, n, C] -> [n, C]``.

    The softmax is taken in at least float32 (max-subtracted, as ``jax.nn.softmax`` does) and the
    result cast back to the input's dtype.

    >>> import jax.numpy as jnp
    >>> average_probabilities(jnp.array([[[0.0, 0.0]], [[0.0, jnp.log(3.0)]]]))
    Array([[0.375, 0.625]], dtype=float32)
    """
    logits = _check_logits(logits)
    compute = jnp.promote_types(logits.dtype, jnp.float32)
    probs = jax.nn.softmax(logits.astype(compute), axis=-1)
    return jnp.mean(probs, axis=0).astype(logits.dtype)


def ensemble_accuracy(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
    """Accuracy of the ensemble's prediction ``argmax_y mean_k softmax(logits[k])_y`` against the
    integer ``labels`` ``[n]``; ``logits`` is ``[K, n, C]``.

    Labels must be integer class ids in ``[0, C)``: a float or bool dtype is a ``ValueError``
    always, a label outside the range a ``ValueError`` when the values are known (eager) and a
    NaN accuracy under ``jit`` (never a plausible number).
    """
    logits = _check_logits(logits)
    num_classes = logits.shape[2]
    labels = _check_labels(labels, num_classes, logits.shape[1])
    pred = jnp.argmax(average_probabilities(logits), axis=-1)
    acc = jnp.mean((pred == labels).astype(jnp.float32))
    valid = jnp.all((labels >= 0) & (labels < num_classes))
    return jnp.where(valid, acc, jnp.nan)


def _nll(probs: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean negative log-likelihood of the labels (probabilities floored at the float32 tiny)."""
    p = jnp.take_along_axis(probs, labels[:, None], axis=-1)[:, 0]
    return -jnp.mean(jnp.log(jnp.maximum(p, jnp.finfo(jnp.float32).tiny)))


def ensemble(
    data,
    *,
    members: int = 5,
    epochs: int,
    key: jax.Array,
    model=None,
    loss: str | Callable = "softmax_cross_entropy",
    optimizer=None,
    batch_size: int = 64,
    learning_rate: float = 0.05,
    l2: float = 1e-4,
    init_scale: float = 1.0,
    devices: int | None = None,
    on_epoch: Callable | None = None,
) -> EnsembleResult:
    """Train ``members`` models with seeds ``0..K-1`` as one population
    (:func:`jaxnn.population.train_population`, same hyperparameters for all) and evaluate each
    member and the average of their probabilities on the test split.

    A member that diverges (:func:`jaxnn.train.diverged`: loss NaN/inf or above 3x its initial
    loss, or NaN/inf parameters) is frozen by the population at its last good parameters and left
    out of the average; with every member diverged the ensemble's numbers are NaN. The
    probabilities are the softmax of the model's outputs (for a model trained with the hinge
    loss, of its scores). ``on_epoch`` is :func:`jaxnn.population.train_population`'s hook (e.g.
    for progress).
    """
    members = int(members)
    if members < 1:
        raise ValueError(f"members must be >= 1, got {members}")
    x, y = np.asarray(data.x_test), np.asarray(data.y_test)
    if x.shape[0] == 0:
        raise ValueError("ensemble: the test split is empty")
    if model is None:  # the population's default, built here because its outputs are read below
        model = _models.mlp([int(np.prod(x.shape[1:])), 64, 64, int(data.num_classes)])
    # K members hold K copies of everything: refuse what cannot fit before allocating any.
    _distributed.check_fits(_models.parameter_count(model), copies=members,
                            what="the ensemble's model")
    hparams = {
        "learning_rate": np.full(members, learning_rate, np.float32),
        "l2": np.full(members, l2, np.float32),
        "init_scale": np.full(members, init_scale, np.float32),
        "seed": np.arange(members),
    }
    out = getattr(model, "output_shape", ())
    num_classes = int(out[-1]) if out else int(data.num_classes)
    try:  # before training: a bad test label would otherwise be gathered at a clamped index
        _check_labels(y, num_classes, x.shape[0])
    except ValueError as e:
        raise ValueError(f"data.y_test: {e}") from None
    res = _population.train_population(
        data=data, hparams=hparams, epochs=epochs, batch_size=batch_size, key=key, model=model,
        loss=loss, optimizer=optimizer, devices=devices, on_epoch=on_epoch,
    )
    logits = _population.population_logits(model, res.params, res.model_state, x)
    labels = jnp.asarray(y)
    probs = jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), -1)
    member_acc = jnp.mean(jnp.argmax(logits, -1) == labels[None], axis=-1)
    member_loss = jax.vmap(_nll, in_axes=(0, None))(probs, labels)
    healthy = np.array([s != _train.Status.DIVERGED for s in res.status])
    if healthy.any():
        avg = average_probabilities(logits[np.flatnonzero(healthy)])
        ens_acc = float(jnp.mean(jnp.argmax(avg, -1) == labels))
        ens_loss = float(_nll(avg, labels))
    else:
        ens_acc = ens_loss = float("nan")
    return EnsembleResult(
        member_test_acc=np.asarray(member_acc, np.float64),
        member_test_loss=np.asarray(member_loss, np.float64),
        ensemble_test_acc=ens_acc,
        ensemble_test_loss=ens_loss,
        status=list(res.status),
        population=res,
    )
