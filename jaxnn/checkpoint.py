"""Checkpoints with orbax-checkpoint: atomic, the last N kept, the latest finalized one restored.

A checkpoint holds a pytree (e.g. a :class:`jaxnn.train.TrainState`) and a small JSON dict of
metadata. orbax writes each step to a temporary directory and renames it when it is complete, so a
run killed mid-save leaves the previous checkpoint intact and the half-written one is ignored.
Typed PRNG keys are stored as their raw key data and rebuilt on restore.

Example::

    ckpt = Checkpointer(run_dir / "checkpoints", max_to_keep=3)
    ckpt.save(epoch, state, {"epoch": epoch})
    state, meta = ckpt.restore(template=state)
    ckpt.close()
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax

__all__ = ["Checkpointer"]


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
        # orbax logs every save at INFO; keep the user's console for the progress bar.
        absl = logging.getLogger("absl")
        absl.setLevel(logging.WARNING)
        self._ocp = ocp
        self.directory = os.path.abspath(os.fspath(directory))
        if read_only:  # restores only: nothing created, saved, deleted or cleaned up
            absl.setLevel(logging.ERROR)  # orbax warns of each option read_only turns off
            try:
                options = ocp.CheckpointManagerOptions(read_only=True, max_to_keep=None,
                                                       create=False)
                self._manager = ocp.CheckpointManager(self.directory, options=options)
            finally:
                absl.setLevel(logging.WARNING)
            return
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save
            ),
        )

    def save(self, step: int, tree: Any, metadata: dict | None = None) -> None:
        """Write ``tree`` (and JSON ``metadata``) as checkpoint ``step``; replaces nothing older
        than the kept window until the new one is finalized."""
        ocp = self._ocp
        self._manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_keys_to_data(tree)),
                meta=ocp.args.JsonSave(dict(metadata or {})),
            ),
            force=True,
        )

    def wait(self) -> None:
        """Block until pending saves are finalized."""
        self._manager.wait_until_finished()

    def latest_step(self) -> int | None:
        """The newest finalized step, or ``None`` when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every finalized step still kept, oldest first."""
        return sorted(self._manager.all_steps())

    def restore(self, *, template: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore checkpoint ``step`` (default: the latest) into the structure of ``template``.

        Returns ``(tree, metadata)``; raises ``FileNotFoundError`` when there is no checkpoint.
        """
        ocp = self._ocp
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no finalized checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _keys_to_data(template))
        restored = self._manager.restore(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        return _data_to_keys(restored.state, template), dict(restored.meta or {})

    def reload(self) -> None:
        """Re-read the directory (after a step was moved away by hand)."""
        self._manager.reload()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
