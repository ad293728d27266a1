r"""Babysitting the learning process: is training healthy, and if not, why not?

Every function here is pure and returns numbers (NamedTuples of Python floats, or jax scalars for
the ones meant to run under ``jit``); only the CLI (``jaxnn diagnose``) prints.

The checks, in the order the curriculum runs them:

1. :func:`initial_loss_check` -- with small weights and no regularization the scores are ~0, so
   softmax cross-entropy must start at :math:`\log C` and the multiclass hinge loss at
   :math:`C - 1`; adding L2 must raise the loss. Anything else is a bug in the loss or the data.
2. :func:`overfit_check` -- a network must be able to fit ~20 examples perfectly (loss ~0, 100%
   training accuracy) without regularization; if it cannot, the pipeline has a bug (or the
   learning rate is far off).
3. :func:`layer_stats` -- per layer: mean/std of pre-activations and activations, the fraction of
   saturated units (:func:`saturated_fraction`) and of dead ones (:func:`dead_fraction`), the
   gradient norm, and the update/weight ratio :math:`\|\Delta W\| / \|W\|` of one optimizer step
   (healthy is about :math:`10^{-3}`).
4. :func:`diagnose` -- plain-words verdicts from the loss/accuracy history: loss not going down:
   "learning rate too low"; loss exploding or NaN: "learning rate too high"; a large train/val gap:
   overfitting; both accuracies poor: underfitting; many dead ReLUs when the history tracks them
   (:func:`dead_fraction_callback` for :func:`jaxnn.train.fit`, :func:`dead_fraction_probe` for
   :func:`jaxnn.population.train_population`).

Example::

    model = jaxnn.layers.mlp([64, 128, 10])
    check = initial_loss_check(model, data, key=jax.random.key(0))
    check.expected, check.measured, check.ok      # 2.3026, 2.3026, True
    history = jaxnn.train.fit(model, data, optimizer=opt, epochs=5, key=key,
                              callback=dead_fraction_callback(model, data.x_val[:256]))
    diagnose(history).verdicts                     # [] when healthy
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array
from jax.typing import ArrayLike

from jaxnn import activations as _activations
from jaxnn import losses as _losses
from jaxnn import regularizers as _reg
from jaxnn import train as _train

__all__ = [
    "LR_TOO_LOW",
    "LR_TOO_HIGH",
    "OVERFITTING",
    "UNDERFITTING",
    "DEAD_UNITS",
    "InitialLossCheck",
    "OverfitCheck",
    "LayerStats",
    "Diagnosis",
    "initial_loss_check",
    "overfit_check",
    "dead_fraction",
    "saturated_fraction",
    "layer_stats",
    "dead_fraction_probe",
    "dead_fraction_callback",
    "diagnose",
]

#: The verdicts of :func:`diagnose`, word for word.
LR_TOO_LOW = "learning rate too low"
LR_TOO_HIGH = "learning rate too high"
OVERFITTING = "overfitting: use more regularization (L2, dropout) or more data"
UNDERFITTING = "underfitting: use a bigger model or less regularization"
DEAD_UNITS = "many dead ReLUs: lower the learning rate, or use leaky ReLU or a small positive bias"


# --------------------------------------------------------------------------- result types
class InitialLossCheck(NamedTuple):
    """What :func:`initial_loss_check` found.

    Attributes:
      expected: the loss that small weights must give (:math:`\\log C` for softmax cross-entropy,
        :math:`C - 1` for the multiclass hinge loss with margin 1).
      measured: the mean data loss (no regularization) of the model with its weights scaled down
        by ``init_scale``.
      ok: ``measured`` within ``rtol`` of ``expected`` and ``with_l2 > measured``.
      with_l2: ``measured`` plus ``l2`` times the L2 penalty of the same (small) weights, as
        training computes it (:func:`jaxnn.regularizers.full_loss`).
      l2: the regularization strength used for ``with_l2``.
      as_initialized: the mean data loss of the model exactly as initialized (informational: far
        above ``expected`` means large initial scores).
      init_scale: the factor the weight matrices were multiplied by for ``measured``.
    """

    expected: float
    measured: float
    ok: bool
    with_l2: float
    l2: float
    as_initialized: float
    init_scale: float


class OverfitCheck(NamedTuple):
    """What :func:`overfit_check` found: the loss and accuracy (evaluation mode) on the tiny
    training subset after training, whether that is a perfect fit (``ok``), the loss before
    training, the subset size, the epochs run, why training stopped (in words) and how
    (``status``, a :class:`jaxnn.train.Status`)."""

    final_loss: float
    train_acc: float
    ok: bool
    initial_loss: float
    num_examples: int
    epochs: int
    stopped_reason: str
    status: str = "ok"


class LayerStats(NamedTuple):
    """Statistics of one layer.

    Attributes:
      name: the layer's key in the params (``"layer_0"``, ...).
      pre_mean, pre_std: mean and std of the pre-activations (input of the nonlinearity).
      mean, std: mean and std of the activations (its output; the scores for the output layer).
      saturated: fraction of activations in the saturated regime (:func:`saturated_fraction`).
      dead: fraction of units that are zero for every example (:func:`dead_fraction`).
      grad_norm: Frobenius norm of the loss gradient with respect to the layer's weights
        (NaN where not computed).
      update_ratio: :math:`\\|\\Delta W\\| / \\|W\\|` for one optimizer step (healthy ~1e-3; NaN
        where not computed).
      activations: the activations themselves (a numpy array) when asked for, else ``None``.
    """

    name: str
    pre_mean: float
    pre_std: float
    mean: float
    std: float
    saturated: float
    dead: float
    grad_norm: float = math.nan
    update_ratio: float = math.nan
    activations: np.ndarray | None = None


class Diagnosis(NamedTuple):
    """What :func:`diagnose` concluded.

    Attributes:
      verdicts: plain-words verdicts (the module constants :data:`LR_TOO_LOW`,
        :data:`LR_TOO_HIGH`, :data:`OVERFITTING`, :data:`UNDERFITTING`, :data:`DEAD_UNITS`);
        empty when nothing is wrong.
      reasons: one sentence with the numbers behind each verdict (same order).
      ok: ``not verdicts``.
      initial_loss, final_train_loss, final_val_loss, final_train_acc, final_val_acc: the numbers
        the verdicts were drawn from (NaN where the history lacks them).
      gap: ``final_train_acc - final_val_acc``.
      dead_fraction: the last tracked dead-unit fraction (NaN if not tracked).
      overfit_epoch: the epoch from which the validation loss rises while the training loss
        falls (``None``: it does not).
    """

    verdicts: list[str]
    reasons: list[str]
    ok: bool
    initial_loss: float
    final_train_loss: float
    final_val_loss: float
    final_train_acc: float
    final_val_acc: float
    gap: float
    dead_fraction: float
    overfit_epoch: int | None = None


# --------------------------------------------------------------------------- unit statistics
def _dead_units(h: Array) -> Array:
    """Per unit (the last axis; channels for a convolution): zero for every example and
    position."""
    return jnp.all(h == 0, axis=tuple(range(h.ndim - 1)))


def dead_fraction(h: ArrayLike) -> Array:
    """Fraction of units that are exactly zero for **every** example: a dead ReLU never fires,
    so it gets no gradient and never recovers.

    Args:
      h: activations ``[batch, units]``, or ``[batch, ..., units]``: every leading axis counts as
        examples, so for a convolution's ``[batch, height, width, channels]`` a channel is dead
        when it is zero at every position of every example.

    Returns:
      A float32 scalar in ``[0, 1]`` (works under ``jit``).

    >>> dead_fraction(jnp.array([[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]]))
    Array(0.33333334, dtype=float32)
    """
    h = jnp.asarray(h)
    if h.ndim < 2:
        raise ValueError(f"dead_fraction: h must be [batch, units], got shape {h.shape}")
    return jnp.mean(_dead_units(h).astype(jnp.float32))


def saturated_fraction(h: ArrayLike, activation: str | None, *, threshold: float = 0.99) -> Array:
    """Fraction of activations in the saturated regime, where the local gradient is ~0.

    An activation whose registry entry has a saturating output range ``(lo, hi)``
    (:attr:`jaxnn.activations.ActivationEntry.saturates`) is saturated within
    :math:`1 - t` (``t`` = ``threshold``) of either end: :math:`h < lo + (1 - t)` or
    :math:`h > hi - (1 - t)`. So ``tanh`` (range :math:`(-1, 1)`): :math:`|h| > t`; ``sigmoid``
    (range :math:`(0, 1)`): :math:`h < 1 - t` or :math:`h > t`. Other activations (and ``None``)
    have no saturating regime: 0. A ReLU's flat side is measured by :func:`dead_fraction`
    instead.

    Raises:
      ValueError: for an activation name jaxnn does not know.

    >>> saturated_fraction(jnp.array([[0.999, 0.5], [-1.0, 0.0]]), "tanh")
    Array(0.5, dtype=float32)
    """
    h = jnp.asarray(h)
    if activation is None:
        return jnp.zeros((), jnp.float32)
    try:
        saturates = _activations.entry(activation).saturates
    except ValueError as e:  # the registry's one message, naming the valid activations
        raise ValueError(f"saturated_fraction: {e}") from None
    if saturates is None:
        return jnp.zeros((), jnp.float32)
    lo, hi = saturates
    margin = 1.0 - threshold
    sat = (h < lo + margin) | (h > hi - margin)
    return jnp.mean(sat.astype(jnp.float32))


def _hidden_dead_flags(model, params, model_state, x) -> Array:
    """Per hidden unit (what ``model.trace`` reports for every hidden weight matrix, nested
    blocks included, concatenated; conv layers per channel): dead on ``x`` in evaluation
    mode."""
    _, _, acts = model.trace(params, model_state, x, train=False)
    if not acts:
        return jnp.zeros((0,), bool)
    return jnp.concatenate([_dead_units(a.post) for a in acts])


def dead_fraction_probe(model, x: ArrayLike) -> Callable[[Any, Any], dict[str, Array]]:
    """A ``probe(params, model_state) -> {"dead_fraction": scalar}``: the fraction of all hidden
    units of ``model`` that are dead on the fixed batch ``x`` (evaluation mode): the activations
    ``model.trace`` reports for each hidden weight matrix (:attr:`jaxnn.models.Model.layer_names`
    but the last), inside nested blocks too.

    Pure and jittable: pass it as ``probe=`` to :func:`jaxnn.population.train_population` to get
    ``history["dead_fraction"]`` per epoch and member.
    """
    x = jnp.asarray(x)

    def probe(params, model_state):
        flags = _hidden_dead_flags(model, params, model_state, x)
        frac = jnp.mean(flags.astype(jnp.float32)) if flags.size else jnp.zeros((), jnp.float32)
        return {"dead_fraction": frac}

    return probe


def dead_fraction_callback(model, x: ArrayLike) -> Callable[[dict, Any], None]:
    """A ``callback(record, state)`` for :func:`jaxnn.train.fit` that adds ``"dead_fraction"``
    (see :func:`dead_fraction_probe`) to each epoch's record, so ``fit``'s :class:`History`
    tracks dead ReLUs over training and :func:`diagnose` can judge them."""
    probe = jax.jit(dead_fraction_probe(model, x))

    def callback(record: dict, state) -> None:
        record["dead_fraction"] = float(probe(state.params, state.model_state)["dead_fraction"])

    return callback


# --------------------------------------------------------------------------- initial loss
def _expected_initial_loss(loss, num_classes: int) -> float:
    """The loss at all-zero scores (what small weights give): log C for softmax cross-entropy
    (every class equally likely), C - 1 for the multiclass hinge loss (C - 1 terms of
    max(0, 0 - 0 + 1)); losses of score-shaped targets are taken of one-hot labels."""
    fn = _losses.for_labels(loss) if isinstance(loss, str) else loss
    fn = _losses.get(fn) if isinstance(fn, str) else fn
    zeros = jnp.zeros((1, num_classes), jnp.float32)
    return float(fn(zeros, jnp.zeros((1,), jnp.int32))[0])


def _subset(x, y, n: int | None):
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.shape[0] == 0:
        raise ValueError("the training split is empty")
    return (x, y) if n is None else (x[:n], y[:n])


def initial_loss_check(
    model,
    data,
    *,
    key: jax.Array,
    loss: str | Callable = "softmax_cross_entropy",
    num_classes: int | None = None,
    l2: float = 1.0,
    init_scale: float = 1e-2,
    rtol: float = 0.05,
    num_examples: int | None = 1000,
) -> InitialLossCheck:
    r"""Check the loss at initialization against its known value.

    With small weights every score is ~0, so every class is equally likely: softmax
    cross-entropy is :math:`\log C` (2.303 for 10 classes) and the multiclass hinge loss (margin
    1) is :math:`C - 1`. "Small weights" means the model's own initialization with every weight
    matrix multiplied by ``init_scale`` (as :func:`jaxnn.train.init_train_state` does), so any
    architecture can be checked. Then the L2 penalty (strength ``l2``) is added the way training
    adds it: the loss must go up.

    Args:
      model: a :class:`jaxnn.layers.Model`.
      data: a :class:`jaxnn.data.Dataset` (its training split is used).
      key: initializes the parameters.
      loss: a loss name or function (integer labels). Losses other than softmax cross-entropy
        and the hinge loss are expected to give their value at all-zero scores.
      num_classes: default ``data.num_classes``.
      l2: regularization strength for the second half of the check (large enough to see).
      init_scale: factor applied to the weight matrices for "small weights".
      rtol: relative tolerance on ``measured`` vs ``expected``.
      num_examples: the first this many training examples are used (``None``: all).

    Returns:
      An :class:`InitialLossCheck`.
    """
    if num_classes is None:
        num_classes = int(data.num_classes)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not init_scale > 0:
        raise ValueError(f"init_scale must be positive, got {init_scale}")
    x, y = _subset(data.x_train, data.y_train, num_examples)
    state = _train.init_train_state(model, optax.identity(), key=key)
    small = _train.init_train_state(model, optax.identity(), key=key, init_scale=init_scale)
    ev = lambda s: float(_train.evaluate(model.apply, s.params, s.model_state, x, y,
                                         loss=loss).loss)
    as_initialized, measured = ev(state), ev(small)
    with_l2 = float(_reg.full_loss(jnp.float32(measured), small.params, l2=l2))
    expected = _expected_initial_loss(loss, num_classes)
    close = abs(measured - expected) <= rtol * abs(expected)
    raises = l2 == 0 or with_l2 > measured
    return InitialLossCheck(
        expected=expected, measured=measured, ok=bool(close and raises), with_l2=with_l2,
        l2=float(l2), as_initialized=as_initialized, init_scale=float(init_scale),
    )


# --------------------------------------------------------------------------- overfit
def overfit_check(
    model,
    data,
    *,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    loss: str | Callable = "softmax_cross_entropy",
    num_examples: int = 20,
    epochs: int = 200,
    batch_size: int | None = None,
    max_loss: float = 0.1,
) -> OverfitCheck:
    """Train on a tiny subset without regularization: a working pipeline fits it perfectly.

    The first ``num_examples`` training examples are trained on with :func:`jaxnn.train.fit`
    (``l2=0``, full batches by default) for ``epochs`` epochs, then evaluated on themselves in
    evaluation mode. ``ok`` means 100% accuracy and a loss below ``max_loss``; failing means a bug
    in the model, loss or data, or a learning rate far off (a diverged run says so in
    ``stopped_reason``).
    """
    x, y = _subset(data.x_train, data.y_train, num_examples)
    n = int(x.shape[0])
    tiny = data._replace(x_train=x, y_train=y, x_val=x, y_val=y)
    history = _train.fit(model, tiny, optimizer=optimizer, epochs=epochs, key=key, loss=loss,
                         batch_size=batch_size or n, l2=0.0)
    st = history.state
    ev = _train.evaluate(model.apply, st.params, st.model_state, x, y, loss=loss)
    final_loss, acc = float(ev.loss), float(ev.accuracy)
    ok = acc >= 1.0 and final_loss < max_loss and not history.diverged
    return OverfitCheck(
        final_loss=final_loss, train_acc=acc, ok=bool(ok), initial_loss=history.initial_loss,
        num_examples=n, epochs=len(history.records), stopped_reason=history.stopped_reason,
        status=history.status,
    )


# --------------------------------------------------------------------------- layer statistics
def _norm(a) -> Array:
    return jnp.sqrt(jnp.sum(jnp.square(a.astype(jnp.float32))))


def layer_stats(
    model,
    params,
    model_state,
    x: ArrayLike,
    y: ArrayLike,
    *,
    loss: str | Callable = "softmax_cross_entropy",
    activation: str | None = None,
    optimizer: optax.GradientTransformation | None = None,
    opt_state=None,
    updates=None,
    l2: float = 0.0,
    key: jax.Array | None = None,
    keep_activations: bool = False,
) -> list[LayerStats]:
    r"""Per-layer statistics of ``model`` on the batch ``(x, y)``, in training mode.

    One entry per weight matrix or kernel, named by its path in the params
    (:attr:`jaxnn.models.Model.layer_names`: ``"layer_0"``, ... for a flat model, each a weight
    layer with its batch norm, nonlinearity, pooling, ...; ``"layer_2/layer_0"``,
    ``"layer_2/skip"``, ... for the matrices inside a nested block such as a
    :func:`~jaxnn.layers.Residual`; :func:`jaxnn.models.param_at` fetches them). Hidden ones
    report their pre-activations and activations (what ``model.trace`` reports); the output
    layer reports its scores (no nonlinearity: ``saturated`` and
    ``dead`` describe the scores as they are). Convolutional layers report over every example
    and position, and count dead units per channel (:func:`dead_fraction`). The gradient is
    that of the training objective (mean loss plus ``l2`` times the L2 penalty); the update is
    one step of ``optimizer`` from ``opt_state`` (default: a fresh ``optimizer.init(params)``),
    or ``updates`` when given (e.g. the difference of the params before and after a step).
    ``grad_norm`` and ``update_ratio`` are per weight matrix (its ``w`` only, not the biases or
    the matrices of blocks nested below it); ``update_ratio`` is
    :math:`\|\Delta W\| / \|W\|` of each weight matrix or kernel ``w``:
    about :math:`10^{-3}` is healthy, much higher means the learning rate is too high, much
    lower that it is too low.

    Args:
      model: a :class:`jaxnn.layers.Model` (its ``trace`` gives the hidden activations).
      params, model_state: the model's parameters and state.
      x, y: a batch of inputs and integer labels.
      loss: the training loss.
      activation: the hidden activation's name, for :func:`saturated_fraction` (``None``: each
        layer's own, :attr:`jaxnn.models.Model.activations`, where the model records them).
      optimizer, opt_state, updates: how to get one step's update (see above); with none of
        them ``update_ratio`` is NaN.
      l2: the L2 strength of the training objective.
      key: for dropout (default ``jax.random.key(0)``).
      keep_activations: also return each layer's activations as a numpy array.

    Returns:
      One :class:`LayerStats` per weight matrix, input to output.
    """
    from jaxnn.models import param_at

    def own_w(tree, name):
        """The ``w`` of the weight matrix ``name`` (``None``: none there)."""
        try:
            node = param_at(tree, name)
        except KeyError:
            return None
        return node.get("w") if isinstance(node, Mapping) else None

    loss_fn = _losses.get(loss)
    x, y = jnp.asarray(x), jnp.asarray(y)
    if key is None:
        key = jax.random.key(0)
    if updates is None and optimizer is not None and opt_state is None:
        opt_state = optimizer.init(params)
    names = list(getattr(model, "layer_names", ()) or
                 sorted(params, key=lambda s: int(s.rsplit("_", 1)[-1])))
    own = tuple(getattr(model, "activations", ())) or (None,) * len(names)
    acts_of = [activation if activation is not None else a for a in own[:-1]] + [None]

    @jax.jit
    def run(params, model_state, opt_state, updates):
        logits, _, acts = model.trace(params, model_state, x, train=True, key=key)

        def objective(p):
            out, _ = model.apply(p, model_state, x, train=True, key=key)
            return _reg.full_loss(jnp.mean(loss_fn(out, y).astype(jnp.float32)), p, l2=l2)

        grads = jax.grad(objective)(params)
        if updates is None and optimizer is not None:
            updates, _ = optimizer.update(grads, opt_state, params)
        layers = [(a.pre, a.post) for a in acts] + [(logits, logits)]
        out = []
        for name, (pre, post), act in zip(names, layers, acts_of, strict=True):
            w = own_w(params, name)
            if w is None:  # a layer without a weight matrix: no gradient numbers
                grads_w = ratio = jnp.float32(jnp.nan)
            else:
                grads_w = _norm(own_w(grads, name))
                ratio = (_norm(own_w(updates, name)) / jnp.maximum(_norm(w), 1e-30)
                         if updates is not None else jnp.float32(jnp.nan))
            out.append({
                "pre_mean": jnp.mean(pre), "pre_std": jnp.std(pre),
                "mean": jnp.mean(post), "std": jnp.std(post),
                "saturated": saturated_fraction(post, act), "dead": dead_fraction(post),
                "grad_norm": grads_w, "update_ratio": ratio,
                "activations": post if keep_activations else None,
            })
        return out

    out = jax.device_get(run(params, model_state, opt_state, updates))
    result = []
    for name, d in zip(names, out, strict=True):
        h = d.pop("activations")
        result.append(LayerStats(name=name, **{k: float(v) for k, v in d.items()},
                                 activations=None if h is None else np.asarray(h)))
    return result


# --------------------------------------------------------------------------- diagnose
def _columns(history) -> tuple[dict[str, np.ndarray], str, float | None]:
    """(metric name -> values per epoch, stopped_reason, initial loss) from any history form."""
    stopped, initial = "", None
    if isinstance(history, _train.History):
        stopped, initial, history = history.stopped_reason, history.initial_loss, history.records
    if isinstance(history, Mapping):
        cols = {}
        for k, v in history.items():
            v = np.asarray(v, np.float64)
            if v.ndim == 2 and v.shape[1] == 1:
                v = v[:, 0]
            if v.ndim != 1:
                raise ValueError(f"diagnose: history[{k!r}] must be one value per epoch, got "
                                 f"shape {v.shape} (pass one population member's column)")
            cols[k] = v
    elif isinstance(history, Sequence):
        keys = {k for r in history for k, v in r.items() if isinstance(v, int | float)}
        cols = {k: np.asarray([r.get(k, math.nan) for r in history], np.float64) for k in keys}
    else:
        raise TypeError("diagnose: history must be a jaxnn.train.History, a list of per-epoch "
                        f"records (dicts) or a dict of per-epoch arrays, got {type(history)}")
    return cols, stopped, initial


def _last(cols, name) -> float:
    v = cols.get(name)
    return float(v[-1]) if v is not None and v.size else math.nan

def _overfitting_onset(history, *, val_rise: float = 0.1, min_epochs: int = 2) -> int | None:
    r"""The epoch from which the validation loss rises while the training loss falls: the
    curriculum's picture of overfitting (and the epoch early stopping would keep), or ``None``.

    With :math:`m` the epoch of the lowest validation loss :math:`V_m`, it is :math:`m` when at
    least ``min_epochs`` epochs follow it, the last validation loss is above
    :math:`(1 + \text{val\_rise}) V_m` and the last training loss is below the training loss of
    epoch :math:`m`. ``history`` as for :func:`diagnose` (needs ``train_loss`` and
    ``val_loss``); epochs are the records' ``epoch`` numbers where they carry them, else 1, 2, ...

    >>> _overfitting_onset({"train_loss": [1.0, 0.5, 0.3, 0.2, 0.1],
    ...                    "val_loss": [1.1, 0.6, 0.7, 0.8, 0.9]})
    2
    """
    cols, _, _ = _columns(history)
    train, val = cols.get("train_loss"), cols.get("val_loss")
    if train is None or val is None or not val.size or train.shape != val.shape:
        return None
    if not (np.all(np.isfinite(train)) and np.all(np.isfinite(val))):
        return None
    m = int(np.argmin(val))
    if (len(val) - 1 - m < min_epochs or not val[-1] > (1 + val_rise) * val[m]
            or not train[-1] < train[m]):
        return None
    epochs = cols.get("epoch")
    return int(epochs[m]) if epochs is not None and np.isfinite(epochs[m]) else m + 1


def diagnose(
    history,
    *,
    initial_loss: float | None = None,
    dead_fraction: Sequence[float] | None = None,
    divergence_factor: float = _train.DIVERGENCE_FACTOR,
    rise: float = 0.5,
    min_decrease: float = 0.1,
    max_gap: float = 0.1,
    poor_acc: float = 0.8,
    max_dead: float = 0.3,
    val_rise: float = 0.1,
) -> Diagnosis:
    r"""Plain-words verdicts on a training run.

    Rules, with :math:`L_0` the initial loss and :math:`L_t` the training loss of epoch ``t``:

    - **"learning rate too high"** (:data:`LR_TOO_HIGH`): the run diverged (``History`` says
      so, or a loss is NaN/inf, or :math:`L_t > \text{divergence\_factor} \cdot L_0`), or the
      loss rose by more than ``rise`` :math:`\cdot L_0` above its best so far (it exploded and
      fell back), or it ended above :math:`L_0`.
    - **"learning rate too low"** (:data:`LR_TOO_LOW`): otherwise, the loss went down by less
      than ``min_decrease`` :math:`\cdot L_0` over the whole run.
    - **overfitting** (:data:`OVERFITTING`): final training accuracy exceeds validation accuracy
      by more than ``max_gap``, or the validation loss rises while the training loss falls
      (see ``_overfitting_onset``, with ``val_rise``; the reason names the epoch it starts, also
      in :attr:`Diagnosis.overfit_epoch`).
    - **underfitting** (:data:`UNDERFITTING`): with a sound learning rate, final training and
      validation accuracy both below ``poor_acc``.
    - **dead ReLUs** (:data:`DEAD_UNITS`): the last tracked dead-unit fraction (``dead_fraction``
      argument or a ``"dead_fraction"`` entry of the history) exceeds ``max_dead``.

    Args:
      history: a :class:`jaxnn.train.History`, a list of per-epoch records (dicts with
        ``train_loss`` and, for the accuracy verdicts, ``train_acc``/``val_acc``), or a dict of
        per-epoch arrays (one population member's ``history``).
      initial_loss: :math:`L_0` (default: ``History.initial_loss``, else the first epoch's
        training loss).
      dead_fraction: dead-unit fraction per epoch, if tracked outside the history.

    Returns:
      A :class:`Diagnosis`.
    """
    cols, stopped, hist_initial = _columns(history)
    status = history.status if isinstance(history, _train.History) else None
    if dead_fraction is not None:
        cols["dead_fraction"] = np.asarray(dead_fraction, np.float64).reshape(-1)
    loss = cols.get("train_loss", np.zeros(0))
    if initial_loss is None:
        initial_loss = hist_initial if hist_initial is not None else (
            float(loss[0]) if loss.size else math.nan)
    l0 = float(initial_loss)
    verdicts, reasons = [], []

    def say(verdict, reason):
        verdicts.append(verdict)
        reasons.append(reason)

    # -- the learning rate: exploding, then flat
    finite = loss[np.isfinite(loss)]
    best = np.minimum.accumulate(np.concatenate([[l0], loss])) if loss.size else np.array([l0])
    bad = np.asarray(_train.diverged(loss, l0, factor=divergence_factor)) if loss.size else []
    if status is _train.Status.DIVERGED:
        say(LR_TOO_HIGH, f"the run {stopped.split(';')[0]}")
    elif finite.size < loss.size:
        say(LR_TOO_HIGH, "the training loss became NaN/inf")
    elif np.any(bad):  # the one divergence rule of jaxnn.train
        say(LR_TOO_HIGH, f"the training loss reached {loss.max():.4g}, over "
                         f"{divergence_factor:g}x the initial {l0:.4g}")
    elif loss.size and np.max(loss - best[:-1]) > rise * l0:
        t = int(np.argmax(loss - best[:-1]))
        say(LR_TOO_HIGH, f"the training loss jumped to {loss[t]:.4g} at epoch {t + 1} from a "
                         f"best of {best[t]:.4g}")
    elif loss.size and loss[-1] > l0:
        say(LR_TOO_HIGH, f"the training loss ended at {loss[-1]:.4g}, above the initial {l0:.4g}")
    elif loss.size and l0 - loss[-1] < min_decrease * l0:
        say(LR_TOO_LOW, f"the training loss went from {l0:.4g} to only {loss[-1]:.4g} "
                        f"({100 * (l0 - loss[-1]) / l0:.2g}% lower)")
    lr_ok = not verdicts

    # -- generalization
    train_acc, val_acc = _last(cols, "train_acc"), _last(cols, "val_acc")
    gap = train_acc - val_acc
    onset = _overfitting_onset(cols, val_rise=val_rise)
    rising = ""
    if onset is not None:
        val = cols["val_loss"]
        rising = (f"validation loss rising while training loss falls from epoch {onset} "
                  f"({np.min(val):.4g} then, {val[-1]:.4g} at the end)")
    if gap > max_gap:
        say(OVERFITTING, f"training accuracy {train_acc:.3f} is {gap:.3f} above validation "
                         f"accuracy {val_acc:.3f}" + (f"; {rising}" if rising else ""))
    elif rising:
        say(OVERFITTING, rising)
    if lr_ok and train_acc < poor_acc and val_acc < poor_acc:
        say(UNDERFITTING, f"training accuracy {train_acc:.3f} and validation accuracy "
                          f"{val_acc:.3f} are both below {poor_acc:g}")

    # -- dead units
    dead = _last(cols, "dead_fraction")
    if dead > max_dead:
        say(DEAD_UNITS, f"{100 * dead:.0f}% of the hidden units never fire on the probe batch")

    return Diagnosis(
        verdicts=verdicts, reasons=reasons, ok=not verdicts, initial_loss=l0,
        final_train_loss=_last(cols, "train_loss"), final_val_loss=_last(cols, "val_loss"),
        final_train_acc=train_acc, final_val_acc=val_acc, gap=gap, dead_fraction=dead,
        overfit_epoch=onset,
    )
