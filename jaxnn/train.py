"""The core loop of mini-batch SGD: sample, forward, backprop, update.

One :func:`make_train_step` step does forward, backprop and update inside one ``jax.jit``;
:func:`make_epoch` runs a whole shuffled epoch inside one ``lax.scan`` so Python is out of the hot
loop; :func:`evaluate` measures loss and accuracy; :func:`fit` is the loop a user calls (epochs,
validation, progress bar, ``metrics.jsonl``, orbax checkpoints, divergence stop, resume).

Batches have a fixed shape: the ragged last batch is padded and a ``mask`` marks the real rows, so
the step compiles once. The data order of epoch ``e`` is a pure function of ``(state.key, e)`` and
dropout's key a pure function of ``(state.key, state.step)``, so a resumed run repeats an
uninterrupted one exactly.

Example::

    model = jaxnn.layers.mlp([64, 128, 10])
    opt = jaxnn.optim.momentum(0.1)
    state = init_train_state(model, opt, key=jax.random.key(0))
    step = make_train_step(model.apply, "softmax_cross_entropy", opt, l2=1e-4)
    state, metrics = step(state, batch)
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnn import _conv
from jaxnn import data as _data
from jaxnn import datasets as _datasets
from jaxnn import distributed as _dist
from jaxnn import losses as _losses
from jaxnn import optim as _optim
from jaxnn import regularizers as _reg

__all__ = [
    "TrainState",
    "StepMetrics",
    "EvalResult",
    "History",
    "Start",
    "DivergenceError",
    "init_train_state",
    "train_step_fn",
    "epoch_fn",
    "make_train_step",
    "make_epoch",
    "make_evaluate",
    "evaluate",
    "epoch_means",
    "summarize_epoch",
    "tree_all_finite",
    "DIVERGENCE_FACTOR",
    "Status",
    "diverged",
    "is_diverged",
    "EarlyStopping",
    "early_stopping_init",
    "early_stopping_update",
    "should_stop_early",
    "fit",
]

_DATA_STREAM, _DROPOUT_STREAM = 0, 1


class TrainState(NamedTuple):
    """Everything a training run carries from step to step (a pytree)."""

    params: Any
    model_state: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array


class StepMetrics(NamedTuple):
    """Per-step numbers: mean data ``loss`` and ``accuracy`` over the real examples of the batch,
    ``total_loss`` (with regularization), ``count`` of real examples, and the ``learning_rate``."""

    loss: jax.Array
    accuracy: jax.Array
    total_loss: jax.Array
    count: jax.Array
    learning_rate: jax.Array


class EvalResult(NamedTuple):
    """Mean loss and accuracy over a dataset."""

    loss: jax.Array
    accuracy: jax.Array


class DivergenceError(RuntimeError):
    """Raised by :func:`fit` with ``raise_on_divergence=True`` when the loss diverges."""


def _loss_fn(loss):
    return _losses.get(loss) if isinstance(loss, str) else loss


def init_train_state(
    model, optimizer: optax.GradientTransformation, *, key: jax.Array, init_scale=None
) -> TrainState:
    """Initialize params (optionally scaling every weight matrix by ``init_scale``), model state
    and optimizer state. ``key`` seeds the parameters, the data order and dropout."""
    init_key, run_key = jax.random.split(key)
    params, model_state = model.init(init_key)
    if init_scale is not None:
        params = _scale_weights(params, init_scale)
    return TrainState(params, model_state, optimizer.init(params), jnp.zeros((), jnp.int32), run_key)


def _scale_weights(params, scale):
    """Multiply the leaves :func:`jaxnn.regularizers.weights` selects by ``scale``."""
    flags = _reg.weight_mask(params)
    return jax.tree.map(lambda p, f: p * jnp.asarray(scale, p.dtype) if f else p, params, flags)


def _masked_sums(loss_fn, logits, batch):
    """Sum of per-example losses, number correct, and number of real rows (``mask == 1``)."""
    mask = batch.mask.astype(jnp.float32)
    loss_sum = jnp.sum(loss_fn(logits, batch.y).astype(jnp.float32) * mask)
    correct = jnp.sum((jnp.argmax(logits, -1) == batch.y) * mask)
    return loss_sum, correct, jnp.sum(mask)


def _forward_loss(apply, loss_fn, params, model_state, batch, key, l2):
    logits, new_model_state = apply(params, model_state, batch.x, train=True, key=key,
                                    mask=batch.mask)
    loss_sum, correct, count = _masked_sums(loss_fn, logits, batch)
    data_loss = loss_sum / jnp.maximum(count, 1.0)
    total = _reg.full_loss(data_loss, params, l2=l2)
    return total, (data_loss, correct, count, new_model_state)


def train_step_fn(apply, loss, optimizer: optax.GradientTransformation):
    """The un-jitted step ``step(state, batch, l2) -> (state, StepMetrics)``.

    Forward, backprop, update. ``l2`` is an argument (not a constant) so a vmapped population can
    give each member its own; :func:`make_train_step` jits it with ``l2`` fixed.
    """
    loss_fn = _loss_fn(loss)

    def step(state: TrainState, batch, l2):
        key = jax.random.fold_in(jax.random.fold_in(state.key, _DROPOUT_STREAM), state.step)
        grad_fn = jax.value_and_grad(
            functools.partial(_forward_loss, apply, loss_fn), has_aux=True
        )
        (total, (data_loss, correct, count, model_state)), grads = grad_fn(
            state.params, state.model_state, batch, key, l2
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = StepMetrics(
            loss=data_loss,
            accuracy=correct / jnp.maximum(count, 1.0),
            total_loss=total,
            count=count,
            learning_rate=jnp.asarray(_optim.learning_rate(opt_state), jnp.float32),
        )
        return TrainState(params, model_state, opt_state, state.step + 1, state.key), metrics

    return step


def make_train_step(
    apply,
    loss,
    optimizer: optax.GradientTransformation,
    *,
    l2: float = 0.0,
    donate: bool = True,
    mesh: jax.sharding.Mesh | None = None,
):
    """A jitted ``step(state, batch) -> (state, StepMetrics)`` (forward, backprop, update).

    ``batch`` is a :class:`jaxnn.data.Batch` ``(x, y, mask)`` of fixed shape. The state is donated
    (its buffers reused for the new state) unless ``donate=False``.

    With a ``mesh`` (:func:`jaxnn.distributed.data_mesh`) the step is data-parallel: the batch is
    split over the ``"data"`` axis (place it with :func:`jaxnn.distributed.shard_batch` or
    :func:`~jaxnn.distributed.global_batch`), the state is replicated (place it with
    :func:`jaxnn.distributed.replicate`), and the compiler all-reduces the gradient of the
    global-batch mean loss. The batch size must divide by the number of devices.
    """
    raw = train_step_fn(apply, loss, optimizer)

    def step(state, batch):
        return raw(state, _dist.constrain_batch(batch, mesh), l2)

    return _jit(step, mesh, donate)


def _jit(fn, mesh, donate: bool):
    """``jax.jit`` of ``fn`` donating argument 0; with a mesh, every output is replicated."""
    donate_argnums = (0,) if donate else ()
    if mesh is None:
        return jax.jit(fn, donate_argnums=donate_argnums)
    return jax.jit(fn, donate_argnums=donate_argnums, out_shardings=_dist.replicated(mesh))


def epoch_fn(
    apply,
    loss,
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    mesh: jax.sharding.Mesh | None = None,
    augment: _data.Augment | None = None,
):
    """The un-jitted epoch ``epoch(state, x, y, epoch, l2) -> (state, StepMetrics[steps])``:
    shuffle by ``(state.key, epoch)``, cut fixed-shape batches, and scan the step over them.

    With a ``mesh`` each gathered batch is constrained to ``P("data")`` (each device computes
    its ``batch_size / D`` rows; ``x``, ``y`` and the state are expected replicated), which
    leaves the numbers those of one device up to float summation order.

    With ``augment`` (a :class:`jaxnn.data.Augment`, e.g. ``parse_augment("crop:4,flip")``) each
    gathered batch of images ``x [n, H, W, C]`` is randomly cropped and flipped on device by
    :func:`jaxnn.data.augment`, with the key ``augment_key(fold_in(state.key, 2), epoch, i)`` for
    step ``i`` of the epoch: a pure function of (key, epoch, step), so a resumed run is identical.
    """
    step = train_step_fn(apply, loss, optimizer)
    if mesh is not None:
        _dist.check_batch_size(batch_size, mesh)
    augment = _data.parse_augment(augment)

    def run(state: TrainState, x, y, epoch, l2):
        data_key = jax.random.fold_in(state.key, _DATA_STREAM)
        idx, mask = _data.batch_indices(x.shape[0], batch_size, key=data_key, epoch=epoch)
        if augment is not None:
            _data.check_augment(augment, x.shape)
            aug_key = jax.random.fold_in(state.key, 2)  # stream 2 (0: data order, 1: dropout)

        def body(s, ims):
            # Gather each batch inside the scan: no permuted copy of the whole data set.
            i, im = ims
            batch = _dist.constrain_batch(_data.gather_batch(x, y, im[0], im[1]), mesh)
            if augment is not None:
                k = _data.augment_key(aug_key, epoch, i)
                batch = batch._replace(x=_data.augment(batch.x, key=k, crop=augment.crop,
                                                       flip=augment.flip))
            return step(s, batch, l2)

        return jax.lax.scan(body, state, (jnp.arange(idx.shape[0]), (idx, mask)))

    return run


def make_epoch(
    apply,
    loss,
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    l2: float = 0.0,
    donate: bool = True,
    mesh: jax.sharding.Mesh | None = None,
    augment: _data.Augment | None = None,
):
    """A jitted ``epoch(state, x, y, epoch) -> (state, StepMetrics)`` running a whole shuffled epoch
    inside one ``lax.scan`` (metrics stacked per step). Compiles once per data shape.

    With a ``mesh`` the epoch is data-parallel (see :func:`epoch_fn`); place ``state``, ``x`` and
    ``y`` with :func:`jaxnn.distributed.replicate`. Every output is replicated. ``augment``: crop
    and flip image batches on device (see :func:`epoch_fn`).
    """
    run = epoch_fn(apply, loss, optimizer, batch_size=batch_size, mesh=mesh, augment=augment)
    epoch = lambda state, x, y, e: run(state, x, y, e, l2)
    return _jit(epoch, mesh, donate)


def make_evaluate(apply, loss, *, batch_size: int = 1024):
    """A jitted ``evaluate(params, model_state, x, y) -> EvalResult`` in evaluation mode
    (batch-norm running averages, no dropout), scanning fixed-size batches."""
    loss_fn = _loss_fn(loss)

    def run(params, model_state, x, y):
        n = x.shape[0]
        # The same fixed-shape, masked batches as training (in order, last one padded).
        idx, mask = _data.batch_indices(n, min(batch_size, n))

        def body(carry, im):
            b = _data.gather_batch(x, y, im[0], im[1])
            logits, _ = apply(params, model_state, b.x, train=False)
            loss_sum, correct, _ = _masked_sums(loss_fn, logits, b)
            return (carry[0] + loss_sum, carry[1] + correct), None

        (tot, cor), _ = jax.lax.scan(body, (jnp.zeros(()), jnp.zeros(())), (idx, mask))
        return EvalResult(tot / n, cor / n)

    return jax.jit(run)


@functools.lru_cache(maxsize=32)
def _cached_evaluate(apply, loss, batch_size):
    return make_evaluate(apply, loss, batch_size=batch_size)


def evaluate(apply, params, model_state, x, y, *, loss="softmax_cross_entropy",
             batch_size: int = 1024) -> EvalResult:
    """Mean loss and accuracy of the model on ``(x, y)`` in evaluation mode."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.shape[0] == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(f"evaluate: x and y need the same non-zero length, got {x.shape[0]} "
                         f"and {y.shape[0]}")
    return _cached_evaluate(apply, loss, batch_size)(params, model_state, x, y)


def epoch_means(metrics: StepMetrics) -> tuple[jax.Array, jax.Array]:
    r"""Example-weighted means over the step axis (the last) of stacked :class:`StepMetrics`:
    ``(loss, accuracy)``, :math:`\bar\ell = \sum_s n_s \ell_s / \sum_s n_s`. Works under jit and on
    a population's ``[N, steps]`` metrics."""
    w = metrics.count
    total = jnp.maximum(jnp.sum(w, axis=-1), 1.0)
    return jnp.sum(metrics.loss * w, -1) / total, jnp.sum(metrics.accuracy * w, -1) / total


def summarize_epoch(metrics: StepMetrics) -> dict:
    """:func:`epoch_means` of one epoch as host numbers, with the last step's learning rate."""
    loss, acc = epoch_means(metrics)
    return {"train_loss": float(loss), "train_acc": float(acc),
            "lr": float(metrics.learning_rate[-1])}


def tree_all_finite(tree) -> jax.Array:
    """``True`` when every element of every leaf of ``tree`` is finite (a scalar bool array).

    Under ``vmap`` over a population's member axis it gives one flag per member."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


#: The divergence rule's factor: a loss above this many times the initial loss has diverged
#: (:func:`diverged`). The default of every ``divergence_factor`` in jaxnn.
DIVERGENCE_FACTOR = 3.0


class Status(enum.StrEnum):
    """How a run (:attr:`History.status`) or a population member
    (:attr:`jaxnn.population.PopulationResult.status`) ended, or stands.

    A ``str`` enum: a status is equal to its value (``Status.DIVERGED == "diverged"``),
    formats as it (``f"{s}"``, ``str(s)``) and is written to JSON as it.
    """

    #: Trained every epoch asked for (a population member: still training or done).
    OK = "ok"
    #: Stopped early: no better validation loss in ``patience`` epochs.
    STOPPED = "stopped"
    #: The divergence rule (:func:`diverged`) fired; the last good state is kept.
    DIVERGED = "diverged"
    #: Stopped from outside (a pruner, via ``on_epoch``).
    PRUNED = "pruned"

    @classmethod
    def from_reason(cls, reason: str) -> Status:
        """The status a :attr:`History.stopped_reason` text stands for (for a history built
        from that text alone, e.g. a stored ``summary.json``)."""
        for status, prefix in ((cls.DIVERGED, "diverged"), (cls.STOPPED, "early stop"),
                               (cls.PRUNED, "pruned")):
            if str(reason).startswith(prefix):
                return status
        return cls.OK


def diverged(loss, initial_loss, *, factor: float = DIVERGENCE_FACTOR,
             params_finite=True) -> jax.Array:
    r"""The one divergence rule, elementwise (a scalar run or a population's ``[N]`` array):

    .. math:: \text{diverged} = \lnot\text{finite}(L) \lor L > f \cdot L_0
              \lor \lnot\text{finite}(\theta)

    A NaN/inf loss, a loss above ``factor`` times the initial loss, or non-finite parameters
    (``params_finite``, e.g. :func:`tree_all_finite` of the new parameters: a loss can stay finite
    while the weights are NaN, e.g. a hinge loss clipped at 0).
    """
    loss = jnp.asarray(loss)
    return (~jnp.isfinite(loss)) | (loss > factor * jnp.asarray(initial_loss)) | ~jnp.asarray(
        params_finite, bool)


def is_diverged(loss: float, initial_loss: float, *, factor: float = DIVERGENCE_FACTOR,
                params_finite: bool = True) -> bool:
    """:func:`diverged` of one run as a Python bool."""
    return bool(diverged(loss, initial_loss, factor=factor, params_finite=params_finite))


class EarlyStopping(NamedTuple):
    """The early-stopping state: the ``best`` validation loss so far and the epochs
    ``since_best`` (scalars for one run, ``[N]`` arrays for a population)."""

    best: Any
    since_best: Any


def early_stopping_init(shape=()) -> EarlyStopping:
    """No epoch seen yet: ``best = inf``, ``since_best = 0``."""
    return EarlyStopping(np.full(shape, np.inf), np.zeros(shape, np.int64))


def early_stopping_update(es: EarlyStopping, val_loss, *, active=True) -> EarlyStopping:
    r"""The one early-stopping rule after an epoch: where ``active`` (the run or member trained
    this epoch), a validation loss below ``best`` resets the count, otherwise it grows by one.
    Works on scalars and on a population's arrays (numpy, host side)."""
    val_loss, active = np.asarray(val_loss, np.float64), np.asarray(active, bool)
    better = active & (val_loss < es.best)
    return EarlyStopping(np.where(better, val_loss, es.best),
                         np.where(better, 0, es.since_best + active))


def should_stop_early(es: EarlyStopping, patience: int | None):
    """``since_best >= patience`` (``False`` everywhere without a patience)."""
    if patience is None:
        return np.zeros(np.shape(es.since_best), bool)
    return np.asarray(es.since_best) >= patience


# --------------------------------------------------------------------------- fit
@dataclasses.dataclass
class History:
    """What :func:`fit` returns: one record per epoch (``epoch``, ``train_loss``, ``train_acc``,
    ``val_loss``, ``val_acc``, ``lr``, ``seconds``), why it stopped, the initial loss and the final
    :class:`TrainState` (the last good one when the run diverged). ``history["val_acc"]`` gives
    one metric as a numpy array.

    ``status`` says how the run ended (:class:`Status`: ``OK``, ``STOPPED`` or ``DIVERGED``);
    ``stopped_reason`` says it in words (``"completed"``, ``"early stop at epoch 7: ..."``,
    ``"diverged at epoch 3: ..."``). Without a ``status`` it is read from ``stopped_reason``.
    """

    records: list[dict]
    stopped_reason: str
    initial_loss: float
    state: TrainState | None = None
    status: Status | None = None

    def __post_init__(self):
        self.status = (Status.from_reason(self.stopped_reason) if self.status is None
                       else Status(self.status))

    def __getitem__(self, name: str) -> np.ndarray:
        return np.asarray([r[name] for r in self.records], dtype=np.float64)

    @property
    def diverged(self) -> bool:
        """The run stopped on the divergence rule (``status`` is :attr:`Status.DIVERGED`)."""
        return self.status is Status.DIVERGED

    @property
    def epochs_done(self) -> int:
        """The last epoch whose state :attr:`state` is (0 before any healthy epoch)."""
        return int(self.records[-1]["epoch"]) if self.records else 0


class Start(NamedTuple):
    """Where :func:`fit` continues a run: the ``state`` after ``epoch`` epochs, the run's
    ``initial_loss`` and the ``records`` of epochs ``1..epoch``."""

    state: TrainState
    epoch: int
    initial_loss: float
    records: list[dict]


def _check_data(x, y, name):
    if x.shape[0] == 0:
        raise ValueError(f"{name}: the data set is empty")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: x has {x.shape[0]} examples but y has {y.shape[0]}")


def _check_classes(y_train, y_val) -> None:
    """Class-id labels (integer ``[n]``): at least 2 classes to train on (a one-class model
    reports accuracy 1 and loss 0 on data of that class), and a one-line warning for validation
    classes the training split lacks. Other targets (one-hot, regression) are not class ids."""
    if y_train.ndim != 1 or not jnp.issubdtype(y_train.dtype, jnp.integer):
        return
    _datasets._check_classes("train.fit", np.asarray(y_train), stacklevel=3,
                             validation=np.asarray(y_val))


_all_finite = jax.jit(tree_all_finite)


def _divergence_reason(epoch, train_loss, initial_loss, params_finite) -> str:
    what = (f"train loss {train_loss:.4g} (initial {initial_loss:.4g})" if params_finite
            else "the parameters became NaN/inf")
    return f"diverged at epoch {epoch}: {what}; the learning rate is probably too high"


def _early_stop_reason(epoch, patience) -> str:
    return (f"early stop at epoch {epoch}: no better val loss in {patience} "
            f"epoch{'s' if patience != 1 else ''}")


#: The two loops :func:`fit` can run an epoch with (see :func:`_fit_loop`).
FIT_LOOPS = ("scan", "step")


def _fit_platform(mesh) -> str:
    return mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()


def _fit_loop(model, x_shape, *, batch_size: int, mesh=None) -> str:
    """The loop :func:`fit` runs each epoch with: ``"scan"``, the epoch in one ``lax.scan``
    (:func:`make_epoch`), for every model on every backend; ``"step"`` (a Python loop over a
    step jitted alone, ``Conv2D`` as ``lax.conv``: :func:`_step_epoch`) is measured next to it
    by ``benchmarks/fit_loops.py``, and this is the place to pick it if it ever wins.

    Measured side by side (interleaved, medians of per-round ratios; 2-core AMD EPYC,
    2026-12-05; benchmarks/README.md, "How fit trains a convnet on a CPU"): on a CPU, where
    ``Conv2D`` inside a scan is im2col + matmul in batch chunks (XLA:CPU runs ``lax.conv``'s
    gradients tens of times slower there: 0.04x), the step loop ran 0.69x the scan with
    ``lax.conv`` and 0.78x with im2col for a CIFAR-shaped convnet, 0.83x and 0.86x for the
    digits convnet, and 0.50x for a digits MLP. On GPU and TPU ``Conv2D`` is ``lax.conv`` and
    the scan saves the per-step dispatch.
    """
    del model, x_shape, batch_size, mesh  # the same rule for every model and backend (above)
    return "scan"


def _step_epoch(apply, loss, optimizer, *, batch_size: int, l2: float = 0.0, mesh=None,
                augment=None, cpu_algorithm: str = "lax"):
    """``epoch(state, x, y, epoch) -> (state, StepMetrics[steps])`` computing what
    :func:`make_epoch`'s scan computes (same data order, batches, augmentation keys, steps), but
    as a Python loop over a step jitted alone, with ``Conv2D``'s ``"auto"`` convolutions as
    ``lax.conv`` (:func:`jaxnn._conv.cpu_algorithm`; ``cpu_algorithm="im2col"`` keeps im2col,
    for benchmarks). Nothing is donated (like :func:`fit`'s scan:
    the state an epoch starts from stays alive)."""
    step = train_step_fn(apply, loss, optimizer)
    if mesh is not None:
        _dist.check_batch_size(batch_size, mesh)
    augment = _data.parse_augment(augment)

    def order(state, n_like, epoch):
        data_key = jax.random.fold_in(state.key, _DATA_STREAM)
        return _data.batch_indices(n_like.shape[0], batch_size, key=data_key, epoch=epoch)

    def one(state, x, y, i, idx, mask, epoch):
        with _conv.cpu_algorithm(cpu_algorithm):
            batch = _dist.constrain_batch(_data.gather_batch(x, y, idx[i], mask[i]), mesh)
            if augment is not None:
                k = _data.augment_key(jax.random.fold_in(state.key, 2), epoch, i)
                batch = batch._replace(x=_data.augment(batch.x, key=k, crop=augment.crop,
                                                       flip=augment.flip))
            return step(state, batch, l2)

    order_j = jax.jit(order)
    one_j = _jit(one, mesh, donate=False)
    stack = jax.jit(lambda ms: jax.tree.map(lambda *a: jnp.stack(a), *ms))

    def run(state, x, y, epoch):
        if augment is not None:
            _data.check_augment(augment, x.shape)
        idx, mask = order_j(state, y, epoch)
        metrics = []
        for i in range(idx.shape[0]):
            state, m = one_j(state, x, y, i, idx, mask, epoch)
            metrics.append(m)
        return state, stack(metrics)

    return run


def _fit_epoch(model, loss, optimizer, *, batch_size: int, l2: float, mesh, augment, x_shape,
               loop: str | None = None):
    """What :func:`fit` runs per epoch: ``(epoch(state, x, y, epoch) -> (state, metrics),
    loop)``, ``loop`` as :func:`_fit_loop` chooses it unless given."""
    loop = loop or _fit_loop(model, x_shape, batch_size=batch_size, mesh=mesh)
    if loop not in FIT_LOOPS:
        raise ValueError(f"loop must be one of {FIT_LOOPS}, got {loop!r}")
    if loop == "step":
        return _step_epoch(model.apply, loss, optimizer, batch_size=batch_size, l2=l2,
                           mesh=mesh, augment=augment), loop
    # No donation: on divergence the last good state must still be alive to return.
    return make_epoch(model.apply, loss, optimizer, batch_size=batch_size, l2=l2, donate=False,
                      mesh=mesh, augment=augment), loop


@functools.lru_cache(maxsize=8)
def _fit_epoch_lru(model, loss, optimizer, batch_size, l2, mesh, augment, x_shape, *context):
    del context  # part of the key only: what tracing depends on besides the arguments
    return _fit_epoch(model, loss, optimizer, batch_size=batch_size, l2=l2, mesh=mesh,
                      augment=augment, x_shape=x_shape)[0]


def _fit_epoch_cached(model, loss, optimizer, *, batch_size: int, l2: float, mesh, augment,
                      x_shape):
    """:func:`_fit_epoch`'s epoch, the same jitted function for the same model, loss, optimizer
    and settings: a second :func:`fit` with them (a notebook re-run, runs in a loop) neither
    traces nor compiles again (1.5 s of a 2.4 s digits-convnet ``fit``). The last 8 are kept;
    settings that cannot be hashed (an optimizer holding arrays) build the epoch every time."""
    args = (model, loss, optimizer, int(batch_size), float(l2), mesh, augment, tuple(x_shape))
    try:
        hash(args)
    except TypeError:
        return _fit_epoch(model, loss, optimizer, batch_size=batch_size, l2=l2, mesh=mesh,
                          augment=augment, x_shape=x_shape)[0]
    # The backend and the CPU convolution choice decide what a trace computes (_fit_loop, Conv2D).
    return _fit_epoch_lru(*args, jax.default_backend(), _conv._CPU_AUTO.get())


def fit(
    model,
    data,
    *,
    optimizer: optax.GradientTransformation,
    epochs: int,
    key: jax.Array,
    loss: str | Callable = "softmax_cross_entropy",
    batch_size: int = 64,
    l2: float = 0.0,
    divergence_factor: float = DIVERGENCE_FACTOR,
    patience: int | None = None,
    start: Start | None = None,
    on_start: Callable[[TrainState, float], None] | None = None,
    callback: Callable[[dict, TrainState], None] | None = None,
    raise_on_divergence: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    augment: _data.Augment | str | None = None,
) -> History:
    """Train ``model`` on ``data`` (a :class:`jaxnn.data.Dataset`) with mini-batch SGD: a plain
    loop over epochs, each one jitted ``lax.scan`` (:func:`make_epoch`) followed by an evaluation
    on the validation split.

    Every model on every backend trains with the epoch in one ``lax.scan`` (measured faster than
    a loop of steps jitted alone, convnets on a CPU included: see :func:`_fit_loop`). Inside it
    ``Conv2D`` follows the backend: im2col + matmul on a CPU, ``lax.conv`` on GPU and TPU. A
    second ``fit`` with the same ``model``, ``loss``, ``optimizer`` object and settings reuses the
    compiled epoch (the last 8 are kept): it neither traces nor compiles again.

    Stopping: the one divergence rule (:func:`diverged`: NaN/inf loss or parameters, or a loss
    above ``divergence_factor`` times the initial loss) stops the run and returns the last good
    state (``status`` :attr:`Status.DIVERGED`, ``stopped_reason`` saying why;
    :class:`DivergenceError` with
    ``raise_on_divergence``); the one early-stopping rule (:func:`early_stopping_update`) stops
    after ``patience`` epochs without a better validation loss. A non-finite *initial* loss is a
    ``ValueError``: the data or the settings are wrong, not the learning rate.

    Hooks: ``on_start(state, initial_loss)`` once before the first epoch; ``callback(record,
    state)`` after every healthy epoch — :func:`jaxnn.rundir.fit` uses them for checkpoints and
    ``metrics.jsonl``, the CLI for its progress display. ``start`` (a :class:`Start`) continues a run; since the data
    order of epoch ``e`` is a pure function of ``(key, e)`` the continued run repeats an
    uninterrupted one exactly.

    ``mesh`` (:func:`jaxnn.distributed.data_mesh`) trains data-parallel: every batch split over
    the mesh's ``"data"`` axis, parameters, optimizer state and the data set replicated; the
    losses equal a one-device run's up to float summation order. The batch size must divide by
    the number of devices. ``augment`` (e.g. ``"crop:4,flip"``) augments every training batch on
    the device (:func:`make_epoch`).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be >= 1 (or None), got {patience}")
    if not (math.isfinite(divergence_factor) and divergence_factor > 0):
        raise ValueError(f"divergence_factor must be a positive number, got {divergence_factor}")
    x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    x_val, y_val = jnp.asarray(data.x_val), jnp.asarray(data.y_val)
    _check_data(x_train, y_train, "training split")
    _check_data(x_val, y_val, "validation split")
    _check_classes(y_train, y_val)
    augment = _data.parse_augment(augment)
    if augment is not None:  # before anything runs (a traced check would come after on_start)
        _data.check_augment(augment, x_train.shape)
    batch_size = min(batch_size, x_train.shape[0])
    if mesh is not None:
        _dist.check_batch_size(batch_size, mesh)

    state = init_train_state(model, optimizer, key=key) if start is None else start.state
    if mesh is not None:
        state, x_train, y_train, x_val, y_val = _dist.replicate(
            (state, x_train, y_train, x_val, y_val), mesh)
    # The epoch in one lax.scan (the rule and its measurements: _fit_loop).
    epoch_step = _fit_epoch_cached(model, loss, optimizer, batch_size=batch_size, l2=l2,
                                   mesh=mesh, augment=augment, x_shape=tuple(x_train.shape))
    evaluate_fn = _cached_evaluate(model.apply, loss, 1024)
    if start is None:
        initial_loss = float(evaluate_fn(state.params, state.model_state, x_train, y_train).loss)
        if not math.isfinite(initial_loss):
            raise ValueError(
                f"the initial loss (before any training) is {initial_loss}: the data or the "
                "settings give a non-finite loss; check the inputs for NaN/inf or huge values, "
                "the labels, the initializer, the bias init and the L2 strength")
        records, first = [], 1
    else:
        initial_loss, records, first = start.initial_loss, list(start.records), start.epoch + 1
    history = History(records, "completed", initial_loss, state, Status.OK)
    es = early_stopping_init()
    for r in records:
        es = early_stopping_update(es, r["val_loss"])
    if on_start is not None:
        on_start(state, initial_loss)
    if patience is not None and records and should_stop_early(es, patience):
        history.status = Status.STOPPED
        history.stopped_reason = _early_stop_reason(records[-1]["epoch"], patience)
        return history
    for epoch in range(first, epochs + 1):
        t0 = time.perf_counter()
        new_state, step_metrics = epoch_step(state, x_train, y_train, jnp.int32(epoch))
        rec = {"epoch": epoch, **summarize_epoch(step_metrics)}
        finite = bool(_all_finite(new_state.params))
        if is_diverged(rec["train_loss"], initial_loss, factor=divergence_factor,
                       params_finite=finite):
            history.status = Status.DIVERGED
            history.stopped_reason = _divergence_reason(epoch, rec["train_loss"], initial_loss,
                                                        finite)
            if raise_on_divergence:
                raise DivergenceError(history.stopped_reason)
            break
        state = history.state = new_state
        ev = evaluate_fn(state.params, state.model_state, x_val, y_val)
        rec["val_loss"], rec["val_acc"] = float(ev.loss), float(ev.accuracy)
        rec["seconds"] = time.perf_counter() - t0
        records.append(rec)
        if callback is not None:
            callback(rec, state)
        es = early_stopping_update(es, rec["val_loss"])
        if should_stop_early(es, patience):
            history.status = Status.STOPPED
            history.stopped_reason = _early_stop_reason(epoch, patience)
            break
    return history

