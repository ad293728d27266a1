r"""TensorBoard event files: the babysitting view, live while a network trains.

:class:`TensorBoardCallback` is a ``callback(record, state)`` for :func:`jaxnn.train.fit`. After
every epoch it writes, into ``RUN_DIR/tensorboard``:

* **scalars**: ``train/loss``, ``train/accuracy``, ``val/loss``, ``val/accuracy``, ``lr`` (and any
  other number of the epoch's record, e.g. ``dead_fraction``); per layer on a fixed probe batch
  ``update_ratio/LAYER`` (:math:`\|\Delta W\| / \|W\|` of one optimizer step, healthy about
  :math:`10^{-3}`), ``grad_norm/LAYER``, and per hidden layer ``dead/LAYER`` (units zero for every
  probe example) and ``saturated/LAYER`` (tanh/sigmoid units in their flat regime);
* **histograms**: ``activations/LAYER`` and ``preactivations/LAYER`` of the hidden layers (the
  curriculum's activation histograms per layer, now over training), ``gradients/LAYER`` and
  ``weights/LAYER``.

``LAYER`` is the model's name for the weight matrix (:attr:`jaxnn.models.Model.layer_names`:
``layer_0``, ``layer_1``, ..., the keys of the params; inside a nested block such as a
:func:`~jaxnn.layers.Residual` its path, ``layer_2/layer_0``, ``layer_2/skip``): one
``update_ratio``, ``grad_norm``, ``gradients`` and ``weights`` entry per weight matrix.

The statistics use :mod:`jaxnn.diagnostics`' own definitions (:func:`~jaxnn.diagnostics.dead_fraction`,
:func:`~jaxnn.diagnostics.saturated_fraction`) and are computed by one jitted function built once.
``on_start(state, initial_loss)`` writes the same views at step 0 (the initialization).

:func:`write_hparams` writes each trial of a hyperparameter search with TensorBoard's HParams
plugin, so trials can be sorted and compared in its table and parallel-coordinates views.

Both need the optional extra ``jaxnn[tensorboard]`` (tensorboardX); without it they raise
``ModuleNotFoundError`` saying how to install it. Look at the files with
``tensorboard --logdir runs``.

Example::

    tb = TensorBoardCallback("runs/r1", model, data.x_val[:256], data.y_val[:256],
                             optimizer=opt, activation="relu")
    history = train.fit(model, data, optimizer=opt, epochs=10, key=key, callback=tb)
    tb.close()
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnn import activations as _activations
from jaxnn import diagnostics as _diag
from jaxnn import losses as _losses
from jaxnn import regularizers as _reg

__all__ = ["SUBDIR", "TensorBoardCallback", "write_hparams", "require_tensorboardx"]

#: Where the event files go inside a run directory.
SUBDIR = "tensorboard"

_INSTALL = "pip install 'jaxnn[tensorboard]' (or pip install tensorboardX)"

# Record fields and their scalar tags; other numbers of a record keep their own name.
_RECORD_TAGS = {
    "train_loss": "train/loss",
    "train_acc": "train/accuracy",
    "val_loss": "val/loss",
    "val_acc": "val/accuracy",
    "lr": "lr",
}


def require_tensorboardx():
    """The ``tensorboardX`` module, or ``ModuleNotFoundError`` saying how to install it."""
    try:
        import tensorboardX
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"TensorBoard logging needs tensorboardX, which is not installed: {_INSTALL}",
            name="tensorboardX") from None
    return tensorboardX


def _layer_names(params, names: Sequence[str] = ()) -> list:
    """The weight matrices of ``params``: the paths among ``names`` (a model's
    :attr:`~jaxnn.models.Model.layer_names`) where :func:`_layer_weights` finds a weight;
    without ``names``, the top-level entries that hold weights (dict keys or list indices)."""
    if names:
        return [n for n in names if _layer_weights(params, n, by_path=True)]
    keys = list(params) if isinstance(params, Mapping) else list(range(len(params)))
    return [k for k in keys if _reg.weights(params[k])]


def _layer_weights(tree, key, *, by_path: bool) -> list:
    """The weights of layer ``key`` of ``tree`` (params, gradients or updates). ``by_path``: the
    weight leaves of the dict at the path ``key`` (its ``w``; not the matrices of the blocks
    nested below it, which have paths of their own); else every weight under ``tree[key]``."""
    if not by_path:
        return _reg.weights(tree[key])
    from jaxnn.models import param_at

    try:
        node = param_at(tree, key)
    except KeyError:
        return []
    if not isinstance(node, Mapping):
        return _reg.weights(node)
    return [v for k, v in node.items() if not isinstance(v, Mapping)
            and _reg.is_weight((jax.tree_util.DictKey(k),), v)]


def _tag(key) -> str:
    return key if isinstance(key, str) else f"layer_{key}"


def _norm(leaves) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(a.astype(jnp.float32))) for a in leaves))


def _flat(leaves) -> jax.Array:
    return jnp.concatenate([jnp.ravel(a).astype(jnp.float32) for a in leaves])


class TensorBoardCallback:
    """Write TensorBoard scalars and histograms after every epoch of :func:`jaxnn.train.fit`.

    Args:
      run_dir: the run directory; event files go to ``run_dir/tensorboard``.
      model: the :class:`~jaxnn.layers.Model` being trained (its ``trace`` gives the hidden
        layers' pre-activations and activations).
      x_probe: a fixed batch the per-layer statistics are measured on (e.g. 256 validation
        examples), in training mode as :func:`jaxnn.diagnostics.layer_stats` does.
      y_probe: its labels; with them the gradients of the training objective are measured too.
      loss, l2: the training objective (as given to ``fit``).
      optimizer: the training optimizer; with it (and ``y_probe``) the update/weight ratio of one
        step from the current optimizer state is measured.
      activation: the hidden activation's name, for the saturated fraction (``None``: each
        layer's own, from ``model.activations`` where the model has it; else no saturating
        regime).
      histograms: write histograms (scalars only when ``False``).

    Call it as ``callback(record, state)`` (``fit``'s ``callback``); ``on_start(state,
    initial_loss)`` writes step 0. ``close()`` (or a ``with`` block) flushes and closes the file.
    """

    def __init__(self, run_dir: str | os.PathLike, model, x_probe, y_probe=None, *,
                 loss: str | Callable = "softmax_cross_entropy", l2: float = 0.0,
                 optimizer: optax.GradientTransformation | None = None,
                 activation: str | None = None, histograms: bool = True):
        tbx = require_tensorboardx()
        if activation is not None and activation not in _activations.names():
            raise ValueError(f"TensorBoardCallback: unknown activation {activation!r}")
        x = jnp.asarray(x_probe)
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError(f"TensorBoardCallback: x_probe must be a non-empty batch, got shape "
                             f"{x.shape}")
        y = None if y_probe is None else jnp.asarray(y_probe)
        if y is not None and y.shape[:1] != x.shape[:1]:
            raise ValueError(f"TensorBoardCallback: y_probe has {y.shape[0]} examples, x_probe "
                             f"{x.shape[0]}")
        self.logdir = os.path.join(os.fspath(run_dir), SUBDIR)
        self.writer = tbx.SummaryWriter(logdir=self.logdir, flush_secs=10)
        self.histograms = histograms
        # Hidden layers are named as the model names them (``Model.layer_names``, "layer_0",
        # ...); their nonlinearities come from ``activation`` or else ``Model.activations``.
        names = tuple(getattr(model, "layer_names", ()) or ())
        own = tuple(getattr(model, "activations", ()) or ())
        self._hidden_name = lambda i: names[i] if i < len(names) else f"hidden_{i + 1}"
        hidden_act = lambda i: activation if activation is not None else (
            own[i] if i < len(own) and own[i] in _activations.names() else None)
        self._probe = jax.jit(self._probe_fn(model, x, y, _losses.get(loss), float(l2),
                                             optimizer, hidden_act))

    @staticmethod
    def _probe_fn(model, x, y, loss_fn, l2, optimizer, hidden_act):
        key = jax.random.key(0)  # dropout's key on the probe batch: fixed, like layer_stats
        # One entry per weight matrix, by the model's path names (nested blocks included).
        model_names = tuple(getattr(model, "layer_names", ()) or ())

        def probe(params, model_state, opt_state):
            _, _, acts = model.trace(params, model_state, x, train=True, key=key)
            out = {"hidden": [{"pre": a.pre, "post": a.post,
                               "dead": _diag.dead_fraction(a.post),
                               "saturated": _diag.saturated_fraction(a.post, hidden_act(i))}
                              for i, a in enumerate(acts)]}
            names = _layer_names(params, model_names)
            weights = functools.partial(_layer_weights, by_path=bool(model_names))
            out["weights"] = {_tag(k): weights(params, k) for k in names}
            if y is None:
                return out

            def objective(p):
                logits, _ = model.apply(p, model_state, x, train=True, key=key)
                return _reg.full_loss(jnp.mean(loss_fn(logits, y).astype(jnp.float32)), p, l2=l2)

            grads = jax.grad(objective)(params)
            out["grads"] = {_tag(k): weights(grads, k) for k in names}
            out["grad_norm"] = {_tag(k): _norm(weights(grads, k)) for k in names}
            if optimizer is not None and opt_state is not None:
                updates, _ = optimizer.update(grads, opt_state, params)
                out["update_ratio"] = {
                    _tag(k): _norm(weights(updates, k))
                    / jnp.maximum(_norm(weights(params, k)), 1e-30) for k in names}
            return out

        return probe

    # ------------------------------------------------------------------ writing
    def __call__(self, record: Mapping[str, Any], state) -> None:
        """Write epoch ``record["epoch"]``: the record's numbers and the probe's statistics of
        ``state`` (a :class:`jaxnn.train.TrainState`)."""
        step = int(record["epoch"])
        for k, v in record.items():
            if k != "epoch" and isinstance(v, int | float | np.number) and not isinstance(v, bool):
                self.writer.add_scalar(_RECORD_TAGS.get(k, k), float(v), step)
        self._write_state(state, step)
        self.writer.flush()

    def on_start(self, state, initial_loss: float | None = None) -> None:
        """Write step 0 (the initialization): the probe's statistics and the initial loss."""
        if initial_loss is not None:
            self.writer.add_scalar("train/loss", float(initial_loss), 0)
        self._write_state(state, 0)
        self.writer.flush()

    def _write_state(self, state, step: int) -> None:
        out = jax.device_get(self._probe(state.params, state.model_state, state.opt_state))
        w = self.writer
        for i, h in enumerate(out["hidden"]):
            name = self._hidden_name(i)
            w.add_scalar(f"dead/{name}", float(h["dead"]), step)
            w.add_scalar(f"saturated/{name}", float(h["saturated"]), step)
            if self.histograms:
                w.add_histogram(f"activations/{name}", np.asarray(h["post"]), step)
                w.add_histogram(f"preactivations/{name}", np.asarray(h["pre"]), step)
        for name, ratio in out.get("update_ratio", {}).items():
            w.add_scalar(f"update_ratio/{name}", float(ratio), step)
        for name, norm in out.get("grad_norm", {}).items():
            w.add_scalar(f"grad_norm/{name}", float(norm), step)
        if self.histograms:
            for name, g in out.get("grads", {}).items():
                w.add_histogram(f"gradients/{name}", _concat(g), step)
        if self.histograms:
            for name, ws in out["weights"].items():
                w.add_histogram(f"weights/{name}", _concat(ws), step)

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()

    def __enter__(self) -> TensorBoardCallback:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _concat(leaves) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in leaves])


def _trial_dict(trial) -> dict:
    return dict(trial._asdict() if hasattr(trial, "_asdict") else trial)


def _hparam_value(v):
    if isinstance(v, bool | str):
        return v
    if isinstance(v, int | float | np.number):
        return float(v) if isinstance(v, float | np.floating) else int(v)
    return str(v)


def write_hparams(run_dir: str | os.PathLike, trials: Sequence[Any], *,
                  metrics: Sequence[str] = ("val_acc", "val_loss", "train_loss")) -> str:
    """Write every trial of a search with TensorBoard's HParams plugin.

    Each trial (a mapping or NamedTuple such as :class:`jaxnn.search.Trial`) has ``params``
    (its hyperparameters) and final metrics (``metrics``, e.g. ``val_acc``, written as
    ``hparam/val_acc``; missing or non-finite ones are left out) and optionally ``status``,
    recorded as a hyperparameter so that diverged trials can be filtered. One TensorBoard run per
    trial, ``RUN_DIR/tensorboard/trial-NNN``, in the order given.

    Returns:
      The directory written (``RUN_DIR/tensorboard``).
    """
    tbx = require_tensorboardx()
    logdir = os.path.join(os.fspath(run_dir), SUBDIR)
    sessions = []
    for i, trial in enumerate(trials):
        t = _trial_dict(trial)
        params = t.get("params")
        if not isinstance(params, Mapping):
            raise ValueError(f"write_hparams: trial {i} has no 'params' mapping")
        hparams = {str(k): _hparam_value(v) for k, v in params.items()}
        if "status" in t:
            hparams["status"] = str(t["status"])
        values = {}
        for m in metrics:
            v = t.get(m)
            if v is not None and math.isfinite(float(v)):
                values[f"hparam/{m}"] = float(v)
        sessions.append((hparams, values))
    with tbx.SummaryWriter(logdir=logdir) as w:
        for i, (hparams, values) in enumerate(sessions):
            w.add_hparams(hparams, values, name=f"trial-{i:03d}")
    return logdir
