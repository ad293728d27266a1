"""Checkpoints with orbax-checkpoint: atomic, the last N kept, the latest finalized one restored,
each array verified against the digest recorded when it was saved.

A checkpoint holds a pytree (e.g. a :class:`jaxnn.train.TrainState`) and a small JSON dict of
metadata. orbax writes each step to a temporary directory and renames it when it is complete, so a
run killed mid-save leaves the previous checkpoint intact and the half-written one is ignored.
Typed PRNG keys are stored as their raw key data and rebuilt on restore.

Three failures get their own exception, each one line:

- :class:`CheckpointMismatchError`: the checkpoint's tree does not fit the template (another
  structure, or other shapes: the model was changed, not the checkpoint damaged). Checked from
  the checkpoint's own metadata before any array is read.
- :class:`CheckpointCorruptError`: an array read back is not the one written (its SHA-256 digest,
  recorded in the metadata at save time, differs: bit rot, a swapped file). Checkpoints written
  before digests were recorded still restore, unverified.
- :class:`CheckpointWriteError`: a save failed (``disk_full`` when the disk or quota is full); the
  half-written step is removed and the previous checkpoints stay.

orbax's own log lines (errors of its worker threads, with tracebacks) are not shown: every
failure reaches the caller as one of these exceptions instead.

Example::

    ckpt = Checkpointer(run_dir / "checkpoints", max_to_keep=3)
    ckpt.save(epoch, state, {"epoch": epoch})
    state, meta = ckpt.restore(template=state)
    ckpt.close()
"""

from __future__ import annotations

import errno
import glob
import hashlib
import logging
import os
import shutil
from typing import Any

import jax
import numpy as np

__all__ = ["Checkpointer", "CheckpointError", "CheckpointMismatchError", "CheckpointCorruptError",
           "CheckpointWriteError", "tree_digests"]

#: The metadata key under which the array digests are stored (removed again on restore).
DIGEST_KEY = "_jaxnn_digests"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (one line; a ``ValueError`` for the CLI)."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's tree does not fit the template: a changed model, not a damaged file.
    ``path`` names the first differing array, ``saved`` and ``expected`` its shapes (``None``:
    absent)."""

    def __init__(self, message: str, *, step: int, path: str, saved, expected):
        super().__init__(message)
        self.step, self.path, self.saved, self.expected = step, path, saved, expected


class CheckpointCorruptError(CheckpointError):
    """An array read back differs from the one saved (its recorded digest does not match)."""


class CheckpointWriteError(CheckpointError):
    """A save failed; ``disk_full`` says whether for lack of space."""

    def __init__(self, message: str, *, step: int, disk_full: bool):
        super().__init__(message)
        self.step, self.disk_full = step, disk_full


_ORBAX = f"{os.sep}orbax{os.sep}"


class _QuietOrbax(logging.Filter):
    """Drop the log records of orbax's modules (absl), and asyncio's "Task exception was never
    retrieved" about orbax's tasks: their failures reach the caller as exceptions."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _ORBAX in (record.pathname or ""):
            return False
        if record.name == "asyncio":
            text = record.getMessage()
            if record.exc_info and record.exc_info[2] is not None:
                import traceback

                text += "".join(traceback.format_tb(record.exc_info[2]))
            return _ORBAX not in text
        return True


_QUIET = _QuietOrbax()


def _late_callback_noise(exc_type, exc, tb) -> bool:
    """tensorstore's threads finishing a read of a damaged (or interrupted) checkpoint after
    orbax closed its event loop: ``RuntimeError: Event loop is closed`` raised in
    ``call_soon_threadsafe``, printed as a bare traceback. Nothing was lost: the failure was
    already raised to the caller."""
    import traceback

    if exc_type is not RuntimeError or "Event loop is closed" not in str(exc):
        return False
    frames = traceback.extract_tb(tb if tb is not None else exc.__traceback__)
    return any(f.name == "call_soon_threadsafe" for f in frames)


def _install_hooks() -> None:
    import sys
    import threading

    if getattr(sys.excepthook, "_jaxnn_quiet", False):
        return
    prev_except, prev_unraisable, prev_thread = (sys.excepthook, sys.unraisablehook,
                                                 threading.excepthook)

    def excepthook(exc_type, exc, tb):
        if not _late_callback_noise(exc_type, exc, tb):
            prev_except(exc_type, exc, tb)

    def unraisablehook(u):
        if not _late_callback_noise(u.exc_type, u.exc_value, u.exc_traceback):
            prev_unraisable(u)

    def thread_hook(args):
        if not _late_callback_noise(args.exc_type, args.exc_value, args.exc_traceback):
            prev_thread(args)

    excepthook._jaxnn_quiet = True
    sys.excepthook, sys.unraisablehook, threading.excepthook = (excepthook, unraisablehook,
                                                                 thread_hook)


def _quiet_orbax() -> None:
    absl = logging.getLogger("absl")
    absl.setLevel(logging.WARNING)  # orbax logs every save at INFO
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if _QUIET not in logger.filters:
            logger.addFilter(_QUIET)
    _install_hooks()


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree):
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _data_to_keys(tree, template):
    return jax.tree.map(
        lambda x, t: jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if _is_key(t) else x,
        tree,
        template,
    )


def _key_name(k) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _path(path) -> str:
    return "/".join(_key_name(k) for k in path)


def _is_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _leaves(tree) -> dict[str, Any]:
    """``{"params/0/w": leaf}`` of the array leaves of ``tree`` (orbax metadata leaves too)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_array)
    return {_path(p): x for p, x in flat if _is_array(x)}


def _digest(x) -> str | None:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return None  # a multi-process array: this process does not hold all of it
    a = np.ascontiguousarray(np.asarray(x))
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def tree_digests(tree) -> dict[str, str]:
    """The SHA-256 of every array of ``tree`` (dtype, shape and bytes), by path
    (``"params/0/w"``); typed PRNG keys by their key data."""
    return {p: d for p, x in _leaves(_keys_to_data(tree)).items() if (d := _digest(x)) is not None}


def _shape(x) -> tuple[int, ...]:
    return tuple(int(n) for n in x.shape)


def _disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return ("No space left on device" in text or "Disk quota exceeded" in text
            or f"os_error_code='{errno.ENOSPC}'" in text)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


class Checkpointer:
    """Save and restore pytrees under ``directory`` (created if needed), keeping ``max_to_keep``.

    Saves are synchronous by default so that "saved" means "on disk"; pass ``async_save=True`` to
    overlap writing with training (call :meth:`wait` before reading back). ``read_only=True``
    only restores: the directory is neither created nor changed (safe next to a process that
    is saving into it; orbax renames a checkpoint into place only when it is complete).
    """

    def __init__(self, directory, *, max_to_keep: int = 3, async_save: bool = False,
                 read_only: bool = False):
        import orbax.checkpoint as ocp

        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        _quiet_orbax()
        absl = logging.getLogger("absl")
        self._ocp = ocp
        self._failed = False
        self._async = async_save
        self.directory = os.path.abspath(os.fspath(directory))
        handlers = {"state": ocp.StandardCheckpointHandler(),
                    "meta": ocp.JsonCheckpointHandler()}  # item_metadata reads 'state' by them
        if read_only:  # restores only: nothing created, saved, deleted or cleaned up
            absl.setLevel(logging.ERROR)  # orbax warns of each option read_only turns off
            try:
                options = ocp.CheckpointManagerOptions(read_only=True, max_to_keep=None,
                                                       create=False)
                self._manager = ocp.CheckpointManager(self.directory, options=options,
                                                      item_handlers=handlers)
            finally:
                absl.setLevel(logging.WARNING)
            return
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save
            ),
            item_handlers=handlers,
        )

    def save(self, step: int, tree: Any, metadata: dict | None = None) -> None:
        """Write ``tree`` (and JSON ``metadata``) as checkpoint ``step``; replaces nothing older
        than the kept window until the new one is finalized. The SHA-256 of every array goes
        into the metadata, for :meth:`restore` to verify.

        Raises:
          CheckpointWriteError: the save failed (e.g. the disk is full); the partial step is
            removed, the older checkpoints are untouched.
        """
        ocp = self._ocp
        step = int(step)
        data = _keys_to_data(tree)
        meta = dict(metadata or {})
        meta[DIGEST_KEY] = {"algorithm": "sha256", "arrays": tree_digests(data)}
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(data),
                                        meta=ocp.args.JsonSave(meta)),
                force=True,
            )
            if not self._async:  # surface the worker threads' errors here
                self._manager.wait_until_finished()
        except Exception as e:  # orbax raises ValueError/OSError/... from its worker threads
            self._failed = True
            self._remove_partial(step)
            full = _disk_full(e)
            what = ("disk full" if full else f"failed ({_first_line(e)})")
            raise CheckpointWriteError(
                f"{what} while writing checkpoint {step} in {self.directory}; the run can be "
                f"resumed once there is space" if full else
                f"writing checkpoint {step} in {self.directory} {what}",
                step=step, disk_full=full) from None

    def _remove_partial(self, step: int) -> None:
        """Remove what a failed save of ``step`` left (orbax's temporary directory), freeing the
        space it took; finalized checkpoints are never touched."""
        for tmp in glob.glob(os.path.join(glob.escape(self.directory),
                                          f"{step}.orbax-checkpoint-tmp*")):
            shutil.rmtree(tmp, ignore_errors=True)

    def wait(self) -> None:
        """Block until pending saves are finalized."""
        self._manager.wait_until_finished()

    def latest_step(self) -> int | None:
        """The newest finalized step, or ``None`` when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every finalized step still kept, oldest first."""
        return sorted(self._manager.all_steps())

    def check_fits(self, template: Any, step: int) -> None:
        """Raise :class:`CheckpointMismatchError` when checkpoint ``step``'s saved tree does not
        have ``template``'s structure, shapes and dtypes (read from the checkpoint's metadata,
        no array is loaded). Unreadable metadata raises what orbax raises (a damaged
        checkpoint)."""
        meta = self._manager.item_metadata(int(step))
        saved_meta = meta["state"] if meta is not None else None
        tree = getattr(saved_meta, "tree", saved_meta)
        if tree is None:
            raise CheckpointCorruptError(f"checkpoint {step} has no readable array metadata")
        saved = _leaves(tree)
        wanted = _leaves(_keys_to_data(template))
        bad = []
        for p in list(wanted) + [p for p in saved if p not in wanted]:
            s, w = saved.get(p), wanted.get(p)
            if s is None or w is None or _shape(s) != _shape(w) or np.dtype(s.dtype) != np.dtype(
                    w.dtype):
                bad.append((p, s, w))
        if not bad:
            return
        p, s, w = bad[0]

        def show(x):
            return "absent" if x is None else f"{_shape(x)} {np.dtype(x.dtype).name}"

        more = f" ({len(bad) - 1} more array(s) differ)" if len(bad) > 1 else ""
        raise CheckpointMismatchError(
            f"checkpoint {step} does not fit the model: {p} is {show(s)} in the checkpoint but "
            f"{show(w)} in the model{more}",
            step=int(step), path=p, saved=None if s is None else _shape(s),
            expected=None if w is None else _shape(w))

    def restore(self, *, template: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore checkpoint ``step`` (default: the latest) into the structure of ``template``.

        Returns ``(tree, metadata)``.

        Raises:
          FileNotFoundError: there is no checkpoint.
          CheckpointMismatchError: the checkpoint's tree does not fit ``template``.
          CheckpointCorruptError: an array does not match the digest recorded when it was saved.
          Exception: whatever orbax raises for a checkpoint it cannot read.
        """
        ocp = self._ocp
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no finalized checkpoint in {self.directory}")
        self.check_fits(template, step)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _keys_to_data(template))
        restored = self._manager.restore(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        meta = dict(restored.meta or {})
        recorded = meta.pop(DIGEST_KEY, None)
        if recorded is not None:  # checkpoints from before digests restore unverified
            arrays = recorded.get("arrays") if isinstance(recorded, dict) else None
            if not isinstance(arrays, dict):
                raise CheckpointCorruptError(f"checkpoint {step}: its recorded digests are "
                                             "unreadable")
            got = tree_digests(restored.state)
            for p, want in arrays.items():
                if p in got and got[p] != want:
                    raise CheckpointCorruptError(
                        f"checkpoint {step}: array {p} does not match the sha256 digest "
                        "recorded when it was saved (the checkpoint is damaged)")
        return _data_to_keys(restored.state, template), meta

    def reload(self) -> None:
        """Re-read the directory (after a step was moved away by hand)."""
        self._manager.reload()

    def close(self) -> None:
        """Finish pending saves and release the manager (after a failed save, quietly: the
        failure was raised already)."""
        try:
            self._manager.wait_until_finished()
            self._manager.close()
        except Exception:
            if not self._failed:
                raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
