"""Using a trained run: :func:`load_run` gives a :class:`TrainedModel` that predicts, evaluates
and exports.

A ``jaxnn train`` run directory holds everything inference needs: ``config.json`` (the model),
``checkpoints/`` (the parameters) and ``preprocess.npz`` (the preprocessing fitted on the
training split at training time, with the example shape and the number of classes), so loading
never touches the data::

    run = jaxnn.load_run("runs/exp1")          # the newest good checkpoint
    probs = run.predict(x)                     # [n, C]; x raw, as jaxnn.data.load gives it
    run.evaluate(x, y)                         # {"loss": ..., "acc": ..., "n": ...}
    run.export("model.jaxexport")              # jax.export, batch-polymorphic, loads without jaxnn

Loading is **read-only**: it takes no lock and moves nothing. It falls back over damaged
checkpoints the way ``jaxnn resume`` does (newest first; resume's checks: intact metadata,
finite parameters) but leaves them where they are, and it works while a training process
still writes into the run (it reads the newest *finished* checkpoint; orbax renames a
checkpoint into place only when it is complete) or in a read-only directory. What it had to do
on the way is listed in :attr:`TrainedModel.notes`, one line each: checkpoints skipped, a run
still training or not finished, and, for runs trained before ``preprocess.npz`` existed, that
the preprocessing was refitted on the training split (``config.build_data``: the same split
and the same float64 fit, so the same statistics; this one also warns).
"""

from __future__ import annotations

import errno
import fcntl
import functools
import math
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn import config as _config
from jaxnn import rundir as _rundir

__all__ = ["PREPROCESS_FILE", "PLATFORMS", "TrainedModel", "load_run", "save_preprocessing",
           "preprocessing_arrays"]

#: The file of a run directory holding the fitted preprocessing.
PREPROCESS_FILE = "preprocess.npz"
_FORMAT = "jaxnn-preprocess/1"
#: Platforms :meth:`TrainedModel.export` can lower for (``jax.export``'s names).
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
#: Examples per batch in :meth:`TrainedModel.predict` and :meth:`TrainedModel.evaluate`.
BATCH_SIZE = 1024


# --------------------------------------------------------------------------- preprocess.npz
def _raw_shape(pre, state, model_input_shape) -> tuple[int, ...]:
    """The example shape the preprocessing takes, given the one it gives the model: the same
    for every step but ``pca:K``, whose input is the shape of its mean."""
    model_input_shape = tuple(int(d) for d in model_input_shape)
    if pre is None:
        return model_input_shape
    candidates = [model_input_shape] + [tuple(leaf.shape) for leaf in jax.tree.leaves(state)]
    for shape in dict.fromkeys(candidates):
        try:
            out = jax.eval_shape(pre.transform, state,
                                 jax.ShapeDtypeStruct((1, *shape), jnp.float32))
        except (ValueError, TypeError):
            continue
        if tuple(out.shape[1:]) == model_input_shape:
            return shape
    raise ValueError(f"cannot tell which example shape the preprocessing maps to "
                     f"{model_input_shape}")


def preprocessing_arrays(spec: str, state, input_shape, num_classes: int) -> dict[str, Any]:
    """The arrays of ``preprocess.npz``: the ``spec`` (``config.preprocess``), the raw example
    ``input_shape``, ``num_classes`` and every leaf of the fitted ``state`` as
    ``state<path>`` (e.g. ``state.mean``)."""
    arrays = {"format": np.asarray(_FORMAT), "spec": np.asarray(str(spec)),
              "input_shape": np.asarray(tuple(input_shape), np.int64),
              "num_classes": np.asarray(int(num_classes), np.int64)}
    if state is not None:
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
            arrays["state" + jax.tree_util.keystr(path)] = np.asarray(leaf)
    return arrays


def save_preprocessing(run, exp) -> None:
    """Write ``preprocess.npz`` into ``run`` (a :class:`jaxnn.rundir.RunDir`) for the
    :class:`jaxnn.config.Experiment` it trains, atomically."""
    shape = _raw_shape(exp.preprocessor, exp.preprocess_state, exp.model.input_shape)
    run.write_arrays(PREPROCESS_FILE, preprocessing_arrays(
        exp.config.preprocess, exp.preprocess_state, shape, exp.data.num_classes))


def _read_preprocessing(path: str, cfg):
    """``(preprocessor, state, input_shape, num_classes)`` from ``preprocess.npz``."""
    from jaxnn import preprocessing

    file = os.path.join(path, PREPROCESS_FILE)
    arrays = _rundir.read_npz(file)

    def bad(problem):
        return _rundir.RunDirError(f"{file}: {problem}")

    try:
        fmt, spec = str(arrays["format"]), str(arrays["spec"])
        input_shape = tuple(int(d) for d in arrays["input_shape"])
        num_classes = int(arrays["num_classes"])
    except (KeyError, TypeError, ValueError) as e:
        raise bad(f"not a jaxnn preprocessing file ({_rundir._short_reason(e)})") from None
    if fmt != _FORMAT:
        raise bad(f"format {fmt!r}, expected {_FORMAT!r}")
    if spec != cfg.preprocess:
        raise bad(f"holds preprocessing {spec!r} but config.json says {cfg.preprocess!r}")
    pre = _config._preprocessor(spec, preprocessing)
    if pre is None:
        return None, None, input_shape, num_classes
    template = jax.eval_shape(pre.fit, jax.ShapeDtypeStruct((2, *input_shape), jnp.float32))
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for p, t in paths:
        name = "state" + jax.tree_util.keystr(p)
        if name not in arrays or arrays[name].shape != t.shape:
            got = "missing" if name not in arrays else f"of shape {arrays[name].shape}"
            raise bad(f"{name} is {got}; {spec} of examples {input_shape} needs shape {t.shape}")
        leaves.append(jnp.asarray(arrays[name]))
    return pre, jax.tree.unflatten(treedef, leaves), input_shape, num_classes


def _refit_preprocessing(path: str, cfg, notes: list[str]):
    """For runs from before ``preprocess.npz``: fit again on the same training split."""
    ds, pre, state = _config.build_data(cfg)
    shape = _raw_shape(pre, state, ds.x_train.shape[1:])
    note = (f"{path} has no {PREPROCESS_FILE} (trained by an older jaxnn): refitted "
            f"preprocessing {cfg.preprocess!r} on the training split of {cfg.dataset}")
    notes.append(note)
    warnings.warn(note, UserWarning, stacklevel=3)
    return pre, state, shape, int(ds.num_classes)


# --------------------------------------------------------------------------- the lock
def _training_pid(path: str) -> int | None:
    """The process training into ``path`` right now (0 if unknown), or ``None``. Probes the
    run's lock with a shared, non-blocking ``flock`` released at once (never waits, never
    holds it)."""
    lock = os.path.join(path, _rundir._LOCK)
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return _rundir._read_pid(lock) or 0
        return None
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the model
class TrainedModel:
    """A trained run, ready for inference (made by :func:`load_run`).

    Attributes:
      path: the run directory.
      config: its :class:`jaxnn.config.RunConfig`.
      model: the :class:`jaxnn.models.Model`; ``params`` and ``state`` (the model state, e.g.
        batch norm's running averages) are the checkpoint's.
      preprocessor, preprocess_state: the fitted preprocessing (``None`` for none).
      input_shape: one example as :meth:`predict` takes it, before preprocessing (``(64,)``
        for an MLP on digits, ``(8, 8, 1)`` for a convnet).
      num_classes: ``C``, the width of the probabilities.
      step: the checkpoint loaded (the epoch it was saved after; 0 is the initial state).
      notes: one line per thing worth telling (skipped checkpoints, refitted preprocessing, a
        run still training or unfinished).
    """

    def __init__(self, *, path, config, model, params, state, preprocessor, preprocess_state,
                 input_shape, num_classes, step, notes=()):
        self.path = path
        self.config = config
        self.model = model
        self.params = params
        self.state = state
        self.preprocessor = preprocessor
        self.preprocess_state = preprocess_state
        self.input_shape = tuple(input_shape)
        self.num_classes = int(num_classes)
        self.step = step
        self.notes = tuple(notes)

    def __repr__(self) -> str:
        return (f"TrainedModel({self.path!r}, checkpoint {self.step}, examples "
                f"{self.input_shape}, {self.num_classes} classes)")

    # ------------------------------------------------------------------ inputs
    @property
    def _images(self) -> bool:
        return len(self.input_shape) > 1

    def _shape_text(self) -> str:
        dims = ", ".join(map(str, self.input_shape))
        flat = math.prod(self.input_shape)
        alt = f" or [n, {flat}]" if self._images else ""
        return f"[n, {dims}]{alt}"

    def check_input(self, x, *, name: str = "x") -> np.ndarray:
        """``x`` as a float32 batch of shape ``[n, *input_shape]``: an MLP's flat examples may
        come in any shape of the same size per example (images ``[n, H, W, C]`` are
        flattened), a convnet's images flat ``[n, H*W*C]`` too (reshaped). Raises
        ``ValueError`` naming ``name``, the expected and the given shape, for another shape,
        a non-numeric dtype, or NaN/inf."""
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.complexfloating) or not (
                np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise ValueError(f"{name}: expected real numbers, got dtype {x.dtype}")
        size = math.prod(self.input_shape)
        per_example = x.shape[1:] if x.ndim >= 1 else ()
        if x.ndim >= 2 and tuple(per_example) == self.input_shape:
            pass
        elif x.ndim >= 2 and math.prod(per_example) == size and (
                not self._images or x.ndim == 2):
            x = x.reshape(x.shape[0], *self.input_shape)
        else:
            raise ValueError(f"{name}: expected shape {self._shape_text()} (a batch of the "
                             f"run's examples), got {list(x.shape)}")
        with np.errstate(over="ignore", invalid="ignore"):
            x = x.astype(np.float32)
        if not np.isfinite(x).all():
            bad = int(np.size(x) - np.isfinite(x).sum())
            raise ValueError(f"{name}: contains NaN or inf ({bad} value{'s' * (bad != 1)}, or "
                             "values beyond float32's range)")
        return x

    def _check_labels(self, y, n: int, *, name: str = "y") -> np.ndarray:
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != n:
            raise ValueError(f"{name}: expected class ids of shape [{n}], got {list(y.shape)}")
        if y.dtype.kind == "f":
            if not (np.isfinite(y).all() and (y == np.round(y)).all()):
                raise ValueError(f"{name}: expected whole-number class ids")
        elif y.dtype.kind not in "iu":
            raise ValueError(f"{name}: expected integer class ids, got dtype {y.dtype}")
        if n and (y.min() < 0 or y.max() >= self.num_classes):
            raise ValueError(f"{name}: class ids must be in [0, {self.num_classes}), got "
                             f"{y.min() if y.min() < 0 else y.max()}")
        return y.astype(np.int32)

    # ------------------------------------------------------------------ inference
    def _forward(self, params, state, pre_state, x):
        """Probabilities of raw examples ``x``: preprocessing, the model in evaluation mode,
        softmax."""
        if self.preprocessor is not None:
            x = self.preprocessor.transform(pre_state, x)
        scores, _ = self.model.apply(params, state, x, train=False)
        return jax.nn.softmax(scores.astype(jnp.float32), axis=-1)

    @functools.cached_property
    def _jitted(self):
        return jax.jit(self._forward)

    def predict(self, x, *, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """Class probabilities ``[n, C]`` (softmax of the model's scores, evaluation mode:
        dropout off, batch norm's running averages) of the raw examples ``x`` (as
        :func:`jaxnn.data.load` gives them; see :meth:`check_input` for the shapes taken).
        The run's fitted preprocessing is applied; ``batch_size`` examples at a time (the last
        batch padded, so one compiled program serves every batch)."""
        x = self.check_input(x)
        n = x.shape[0]
        if n == 0:
            return np.zeros((0, self.num_classes), np.float32)
        b = min(int(batch_size), n)
        out = []
        for i in range(0, n, b):
            chunk = x[i:i + b]
            if chunk.shape[0] < b:
                chunk = np.concatenate([chunk, np.zeros((b - chunk.shape[0], *chunk.shape[1:]),
                                                        chunk.dtype)])
            probs = self._jitted(self.params, self.state, self.preprocess_state, chunk)
            out.append(np.asarray(probs)[:min(b, n - i)])
        return np.concatenate(out)

    def preprocess(self, x, *, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """The run's preprocessing of raw examples ``x`` (what the model sees), computed the way
        training computed it, ``batch_size`` examples at a time."""
        x = self.check_input(x)
        if self.preprocessor is None:
            return x
        t = self.preprocessor.transform
        return np.concatenate([np.asarray(t(self.preprocess_state, x[i:i + batch_size]))
                               for i in range(0, x.shape[0], batch_size)])

    def evaluate(self, x, y, *, batch_size: int = BATCH_SIZE) -> dict:
        """``{"loss", "acc", "n"}`` on raw examples ``x`` and class ids ``y``: the run's loss
        (the data loss, without L2, as ``summary.json``'s ``test_loss``) and accuracy, means
        over the ``n`` examples. On the run's test split this is ``summary.json``'s
        ``test_loss`` / ``test_acc`` for the checkpoint training ended with."""
        from jaxnn import train

        x = self.check_input(x)
        if x.shape[0] == 0:
            raise ValueError("x: no examples to evaluate")
        y = self._check_labels(y, x.shape[0])
        res = train.evaluate(self.model.apply, self.params, self.state,
                             self.preprocess(x, batch_size=batch_size), y,
                             loss=_config.build_loss(self.config), batch_size=batch_size)
        return {"loss": float(res.loss), "acc": float(res.accuracy), "n": int(x.shape[0])}

    def split(self, name: str = "test", *, dataset: str | None = None):
        """The raw ``(x, y)`` of split ``name`` (``train``, ``val`` or ``test``) of the run's
        dataset, split as in training (``config.split_seed``); ``dataset`` (a name or a
        ``.npz`` path) loads another one the same way."""
        from jaxnn import data

        if name not in ("train", "val", "test"):
            raise ValueError(f"split: expected train, val or test, got {name!r}")
        cfg = self.config
        ds = data.load(dataset if dataset is not None else cfg.dataset, data_dir=cfg.data_dir,
                       seed=cfg.split_seed, flatten=not self._images, data_url=cfg.data_url)
        return getattr(ds, f"x_{name}"), getattr(ds, f"y_{name}")

    # ------------------------------------------------------------------ export
    def export(self, path: str | os.PathLike | None = None, *, platforms=None):
        """The inference function (preprocessing + model in evaluation mode + softmax, the
        parameters baked in as constants) as a :class:`jax.export.Exported` of a float32 batch
        ``[b, *input_shape]`` with a symbolic batch size ``b``, lowered for ``platforms``
        (default: this machine's). With ``path`` its ``serialize()`` bytes are also written
        there atomically. Anyone with jax loads it without jaxnn::

            exp = jax.export.deserialize(bytearray(open(path, "rb").read()))
            probs = exp.call(x)                # x: float32 [b, *input_shape]
        """
        if platforms is not None:
            platforms = tuple(str(p) for p in platforms)
            unknown = [p for p in platforms if p not in PLATFORMS]
            if unknown or not platforms:
                raise ValueError(f"platforms: expected some of {', '.join(PLATFORMS)}, got "
                                 f"{', '.join(platforms) or 'none'}")
        params, state, pre_state = self.params, self.state, self.preprocess_state

        def predict_probabilities(x):
            return self._forward(params, state, pre_state, x)

        (b,) = jax.export.symbolic_shape("b")
        exported = jax.export.export(jax.jit(predict_probabilities), platforms=platforms)(
            jax.ShapeDtypeStruct((b, *self.input_shape), jnp.float32))
        if path is not None:
            _rundir.write_bytes_atomic(path, bytes(exported.serialize()))
        return exported


def load_run(path: str | os.PathLike, *, checkpoint: int | None = None) -> TrainedModel:
    """The trained model of the ``jaxnn train`` run directory ``path``: its newest checkpoint
    that restores and passes resume's checks (``checkpoint=N``: exactly the one saved after
    epoch N; 0 is the initial state), read-only (see the module docstring).

    Raises:
      jaxnn.rundir.RunDirError: not a run directory, no (usable) checkpoint, a damaged
        ``preprocess.npz``.
      jaxnn.config.ConfigError: a ``config.json`` that is not a run's.
      ValueError, OSError: loading the dataset to refit an old run's preprocessing.
    """
    path = os.fspath(path)
    if checkpoint is not None and (isinstance(checkpoint, bool) or not isinstance(
            checkpoint, int | np.integer) or checkpoint < 0):
        raise ValueError(f"checkpoint: expected an epoch number >= 0, got {checkpoint!r}")
    if not os.path.isdir(path):
        raise _rundir.RunDirError(f"{path}: no such run directory")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise _rundir.RunDirError(f"{path} is not a jaxnn run directory (no config.json)")
    cfg = _config.RunConfig.load(os.path.join(path, "config.json"))
    notes: list[str] = []
    if os.path.exists(os.path.join(path, PREPROCESS_FILE)):
        pre, pre_state, input_shape, num_classes = _read_preprocessing(path, cfg)
    else:
        pre, pre_state, input_shape, num_classes = _refit_preprocessing(path, cfg, notes)
    model_input = input_shape if pre is None else tuple(jax.eval_shape(
        pre.transform, pre_state, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    ).shape[1:])
    model = _config.build_model(cfg, model_input, num_classes)
    optimizer = _config.build_optimizer(cfg, steps_per_epoch=1)  # only its state's structure
    found = _rundir.load_checkpoint(path, model, optimizer, key=jax.random.key(cfg.seed),
                                    step=None if checkpoint is None else int(checkpoint))
    for step, reason in found.skipped:
        notes.append(f"skipped checkpoint {step} ({reason}); it stays where it is")
    pid = _training_pid(path)
    if pid is not None:
        who = f"process {pid}" if pid else "another process"
        notes.append(f"{path} is still training ({who}): loaded checkpoint {found.step}, the "
                     "newest finished one")
    elif checkpoint is None and not os.path.exists(os.path.join(path, "summary.json")):
        notes.append(f"{path} did not finish (no summary.json): loaded checkpoint "
                     f"{found.step} of {cfg.epochs} epochs")
    return TrainedModel(path=path, config=cfg, model=model, params=found.state.params,
                        state=found.state.model_state, preprocessor=pre,
                        preprocess_state=pre_state, input_shape=input_shape,
                        num_classes=num_classes, step=found.step, notes=notes)
