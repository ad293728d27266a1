"""The run directory: the one owner of everything a run writes.

A run directory holds ``config.json``, ``metrics.jsonl`` (one JSON object per epoch),
``checkpoints/`` (orbax), ``summary.json`` and plots. This module is the only code that writes
them, and it keeps four promises:

- **One process per run.** :class:`RunDir` holds an exclusive ``fcntl.flock`` on ``RUN/.lock``
  for the whole run; the OS releases it when the process exits, even on ``kill -9``. A second
  process gets :class:`RunInUseError` ("RUN is in use by process P").
- **Nothing half-written.** Every JSON file is written to a temporary file and renamed
  (:func:`write_json_atomic`); ``metrics.jsonl`` grows by appended whole lines and is otherwise
  rewritten atomically. A new run directory is created atomically (``os.mkdir``; a default name
  that is taken gets a ``-2``, ``-3``, ... suffix) and probed for writability before any data is
  loaded; :meth:`RunDir.abandon` removes it again if the run fails before writing anything.
- **Nothing of anybody else's touched.** Every run directory carries a marker, ``.jaxnn-run``
  (JSON ``{"verb": ..., "version": ...}``). A new run goes into a new or empty directory, or
  one this verb marked and left without a file of its own; any other existing directory is
  refused, and so is one inside another run directory (orbax prunes ``checkpoints/``; a run in
  there would be deleted). Resume needs the marker (a run from before markers, ``config.json``
  with ``checkpoints/``, is accepted and marked). Files are opened with ``O_NOFOLLOW``,
  temporary files created with ``O_EXCL``, and a run directory holding a symbolic link is
  refused; a lock file is only removed by the process that created it, while holding it, and
  a process that locked a lock file that was removed meanwhile tries again.
- **Nothing intact lost.** Each checkpoint carries the metric records up to its epoch, so
  ``metrics.jsonl`` can be rebuilt; a garbled line is skipped (and reported), never a reason to
  drop the lines after it; resume falls back to the newest checkpoint that restores and
  passes its integrity check (:mod:`jaxnn.checkpoint` verifies every array's digest), moving a
  corrupt one aside to ``corrupt-checkpoints/``. A checkpoint that does not fit the model is no
  corruption but a changed config: :class:`RunMismatchError`, nothing moved.
- **Resume repeats the uninterrupted run.** :func:`fit` continues from the restored state; since
  the data order and dropout keys are pure functions of ``(key, epoch, step)``, every later
  epoch's loss is the one an uninterrupted run gets.

Example::

    with RunDir.create("runs/exp1") as run:
        history = fit(run, model, data, optimizer=opt, epochs=10, key=jax.random.key(0),
                      config={"lr": 0.1})
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import math
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxnn import train as _train
from jaxnn.checkpoint import Checkpointer, CheckpointMismatchError

__all__ = [
    "RunDirError",
    "RunInUseError",
    "RunMismatchError",
    "RunDir",
    "Restored",
    "jsonable",
    "write_json_atomic",
    "read_json",
    "read_metrics",
    "write_bytes_atomic",
    "write_npz_atomic",
    "read_npz",
    "load_checkpoint",
    "fit",
    "RUN_FILES",
    "MARKER",
    "read_marker",
    "enclosing_run",
]

#: Files whose presence marks a directory as holding a run.
RUN_FILES = ("config.json", "checkpoints", "metrics.jsonl", "results.json", "summary.json",
             "diagnosis.json")
_LOCK = ".lock"
#: The file that says a directory is a jaxnn run directory: JSON ``{"verb", "version"}``.
MARKER = ".jaxnn-run"
#: What a run directory may hold before its run wrote anything (its own bookkeeping).
_BOOKKEEPING = (_LOCK, MARKER)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class RunDirError(ValueError):
    """A run directory that cannot be used: not writable, holding another run, corrupt files."""


class RunInUseError(RunDirError):
    """Another live process holds the run directory's lock."""


class RunMismatchError(RunDirError):
    """A checkpoint does not fit the model built from the run's config (a config problem, not a
    damaged checkpoint: nothing is moved)."""


def jsonable(obj, *, convert: Callable[[Any], Any] | None = None):
    """``obj`` as strict JSON values: NamedTuples and mappings as dicts, tuples and arrays as
    lists, numpy scalars plain, NaN/inf as ``None``; ``convert(x)`` may first replace any value
    (return ``x`` itself to leave it to these rules). The one JSON sanitizer of jaxnn."""
    if convert is not None:
        obj = convert(obj)
    rec = functools.partial(jsonable, convert=convert)
    if hasattr(obj, "_asdict"):
        obj = obj._asdict()
    if isinstance(obj, Mapping):
        return {str(k): rec(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [rec(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as strict JSON (:func:`jsonable`) to ``path``: a temporary file in the same
    directory, flushed to disk, then renamed over ``path`` (readers see the old file or the new
    one, never half of one)."""
    text = json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n"  # fails before writing
    _write_text_atomic(os.fspath(path), text)


def _write_text_atomic(path: str, text: str) -> None:
    _write_atomic(path, text.encode())


def _write_atomic(path: str, data: bytes) -> None:
    """``data`` into a new temporary file next to ``path`` (``O_EXCL | O_NOFOLLOW``: never an
    existing file or a symbolic link's target), flushed, then renamed over ``path`` (a
    symbolic link at ``path`` is replaced, never followed)."""
    tmp = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def read_json(path: str | os.PathLike) -> dict:
    """A JSON object from ``path``; a missing file, invalid JSON or a non-object is a
    :class:`RunDirError` naming the file."""
    path = os.fspath(path)
    try:
        with open(path) as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise RunDirError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        msg = getattr(e, "msg", str(e))
        raise RunDirError(f"{path}: not valid JSON ({msg})") from None
    if not isinstance(obj, dict):
        raise RunDirError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` as :func:`write_json_atomic` writes JSON: a temporary file in
    the same directory, flushed to disk, renamed over ``path``."""
    _write_atomic(os.fspath(path), bytes(data))


def write_npz_atomic(path: str | os.PathLike, arrays: Mapping[str, Any]) -> None:
    """Write ``arrays`` (name -> array) as an uncompressed ``.npz`` at ``path``, atomically
    (:func:`write_bytes_atomic`); ``np.load(path)`` reads them back."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    write_bytes_atomic(path, buf.getvalue())


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` at ``path`` (no pickled objects); a missing or damaged file is
    a :class:`RunDirError` naming it."""
    import zipfile

    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise RunDirError(f"{path}: no such file") from None
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise RunDirError(f"{path}: not a valid .npz file ({_short_reason(e)})") from None
    if not all(isinstance(v, np.ndarray) for v in arrays.values()):
        raise RunDirError(f"{path}: not a valid .npz file (a member is not a .npy array)")
    return arrays


def read_metrics(path: str | os.PathLike) -> tuple[list[dict], list[int]]:
    """The intact records of a ``metrics.jsonl`` and the line numbers (1-based) that were garbled
    and skipped. A record is intact when it is a JSON object with an integer ``epoch`` >= 1; the
    last record of an epoch wins. Records come back sorted by epoch."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return [], []
    by_epoch, bad = {}, []
    with open(path, errors="replace") as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad.append(i)
                continue
            ep = rec.get("epoch") if isinstance(rec, dict) else None
            if not isinstance(ep, int) or isinstance(ep, bool) or ep < 1:
                bad.append(i)
                continue
            by_epoch[ep] = rec
    return [by_epoch[e] for e in sorted(by_epoch)], bad


def _holds_run(path: str) -> bool:
    return any(os.path.lexists(os.path.join(path, f)) for f in RUN_FILES)


def read_marker(path: str | os.PathLike) -> dict | None:
    """The marker (``{"verb": ..., "version": ...}``) of the run directory ``path``, or ``None``
    when it has none; an unreadable marker (or a symbolic link) is a :class:`RunDirError`."""
    marker = os.path.join(os.fspath(path), MARKER)
    try:
        fd = os.open(marker, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RunDirError(f"{marker}: cannot read the jaxnn marker ({_os_reason(e)})") from None
    try:
        with os.fdopen(fd, "rb") as f:
            obj = json.loads(f.read(4096).decode())
    except (OSError, ValueError) as e:
        raise RunDirError(f"{marker}: not a valid jaxnn marker ({_short_reason(e)})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("verb"), str):
        raise RunDirError(f"{marker}: not a valid jaxnn marker (expected {{\"verb\": ...}})")
    return obj


def _is_run_dir(path: str) -> bool:
    """A jaxnn run directory: marked, or (from before markers) ``config.json`` with
    ``checkpoints/``."""
    return os.path.lexists(os.path.join(path, MARKER)) or (
        os.path.isfile(os.path.join(path, "config.json"))
        and os.path.isdir(os.path.join(path, "checkpoints")))


def enclosing_run(path: str | os.PathLike) -> str | None:
    """The run directory that ``path`` lies inside (a parent, grandparent, ... of it, symbolic
    links resolved), or ``None``. A run inside another's ``checkpoints/`` would be deleted when
    orbax prunes old checkpoints, so a new run is never made there."""
    d = os.path.realpath(os.path.abspath(os.fspath(path)))
    while True:
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent
        if _is_run_dir(d):
            return d


def _symlinks(path: str) -> list[str]:
    """Symbolic links among ``path``'s entries and those of its ``checkpoints/``."""
    found = []
    for d in (path, os.path.join(path, "checkpoints")):
        with contextlib.suppress(OSError):
            with os.scandir(d) as it:
                found += [e.path for e in it if e.is_symlink()]
    return found


def _refuse_symlinks(path: str) -> None:
    links = _symlinks(path)
    if links:
        raise RunDirError(f"{links[0]} is a symbolic link; jaxnn does not follow symbolic links "
                          "in a run directory (remove it)")


def _os_reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


def _refuse_if_in_use(path: str) -> None:
    """:class:`RunInUseError` when a live process holds ``path``'s lock (tried with a shared
    flock on the existing lock file, never created, followed or changed)."""
    lock_path = os.path.join(path, _LOCK)
    try:
        fd = os.open(lock_path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            pid = _read_pid(lock_path)
            who = f"process {pid}" if pid else "another process"
            raise RunInUseError(f"{path} is in use by {who}") from None
    finally:
        os.close(fd)  # also releases the shared lock


def _check_reusable(path: str, verb: str, *, locked: bool = False) -> None:
    """Refuse an existing ``path`` as a new ``verb`` run's directory unless it is empty or holds
    nothing but jaxnn's bookkeeping of a ``verb`` run that wrote nothing (``locked``: this
    process holds the lock now, so ``.lock`` and its probe are its own)."""
    try:
        entries = os.listdir(path)
    except OSError as e:
        raise RunDirError(f"cannot read the directory {path}: {_os_reason(e)}") from None
    if not entries:
        return
    if not locked:
        _refuse_if_in_use(path)
    marker = read_marker(path)
    if marker is None:
        if _holds_run(path):
            raise RunDirError(f"{path} already holds a run; choose another directory "
                              "(or resume it)")
        if locked and set(entries) <= {_LOCK}:
            return
        raise RunDirError(f"{path} exists, is not empty and is not a jaxnn {verb} directory; "
                          "choose a new or empty directory (jaxnn does not write over files "
                          "it did not write)")
    if marker["verb"] != verb:
        raise RunDirError(f"{path} holds a jaxnn {marker['verb']} run, not a {verb} run; "
                          "choose another directory")
    if _holds_run(path):
        raise RunDirError(f"{path} already holds a run; choose another directory "
                          "(or resume it)")
    others = [e for e in entries if e not in _BOOKKEEPING]
    if others:
        raise RunDirError(f"{path} holds files jaxnn did not write ({others[0]}); choose a new "
                          "or empty directory")
    _refuse_symlinks(path)


class Restored(NamedTuple):
    """What :meth:`RunDir.restore` found: the restored ``state`` and checkpoint ``metadata`` (both
    ``None`` when there is no usable checkpoint), its ``step``, and ``skipped``: one
    ``(step, reason)`` per newer checkpoint that did not restore."""

    state: Any
    metadata: dict | None
    step: int | None
    skipped: list[tuple[int, str]]


class RunDir:
    """A run directory held by this process (see the module docstring).

    Build one with :meth:`create` (a new run) or :meth:`open` (an existing run, e.g. to resume).
    In a multi-process run only process 0 (``main=True``) locks and writes files; the others only
    take part in checkpoint saves. Use as a context manager: leaving it releases the lock, and
    leaving it with an exception before anything was written removes a directory it created.
    """

    def __init__(self, path: str, *, main: bool = True, created: bool = False):
        self.path = os.fspath(path)
        self.main = main
        self.created = created
        self._lock_fd: int | None = None
        self._made_lock = False
        self._made_marker = False
        self._made_root: str | None = None
        self._written = False
        self._file_epochs: set[int] = set()

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"RunDir({self.path!r})"

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, path: str | os.PathLike | None = None, *, prefix: str = "run",
               root: str | os.PathLike = "runs", main: bool = True,
               verb: str | None = None) -> RunDir:
        """A directory for a new run of ``verb`` (default: ``prefix``), locked, checked
        writable and marked (``.jaxnn-run``).

        With ``path`` the directory may exist if it is empty, or holds nothing but the marker
        of the same verb (a run that stopped before writing anything); without it the name is
        ``root/prefix-YYYYmmdd-HHMMSS``, created atomically with a numeric suffix if taken.
        Neither may lie inside another run directory. Errors (:class:`RunDirError`) name the
        path and why it cannot be used."""
        if not main:
            return cls(os.fspath(path), main=False)
        verb = verb or prefix
        made_root = None
        if path is None:
            inside = enclosing_run(os.path.join(os.fspath(root), "x"))
            if inside is not None:
                raise RunDirError(f"{root} is inside the run directory {inside}; run from "
                                  "outside it or choose --out elsewhere")
            made_root = None if os.path.isdir(root) else os.fspath(root)
            path, created = cls._make_default(os.fspath(root), prefix), True
        else:
            path, created = os.fspath(path), False
            inside = enclosing_run(path)
            if inside is not None:
                raise RunDirError(f"{path} is inside the run directory {inside}; choose a "
                                  "directory outside it (jaxnn manages what is in there)")
            if os.path.lexists(path) and not os.path.isdir(path):
                raise RunDirError(f"{path} exists and is not a directory")
            if os.path.isdir(path):
                _check_reusable(path, verb)
            else:
                try:
                    os.makedirs(path)
                    created = True
                except FileExistsError:
                    pass  # made by someone else meanwhile: the lock below decides
                except OSError as e:
                    raise RunDirError(f"cannot create the run directory {path}: "
                                      f"{_os_reason(e)}") from None
        run = cls(path, main=True, created=created)
        run._made_root = made_root
        try:
            run._probe_writable()
            run._acquire_lock()
            _check_reusable(path, verb, locked=True)  # again, now that nobody else can start
            if read_marker(path) is None:
                run._write_marker(verb)
        except BaseException:
            run._cleanup()
            raise
        return run

    def _write_marker(self, verb: str) -> None:
        from jaxnn import __version__

        _write_text_atomic(self.file(MARKER),
                           json.dumps({"verb": verb, "version": __version__}) + "\n")
        self._made_marker = True

    @staticmethod
    def _make_default(root: str, prefix: str) -> str:
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"cannot create {root}: {_os_reason(e)}") from None
        base = os.path.join(root, f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}")
        for i in range(1, 10_000):
            path = base if i == 1 else f"{base}-{i}"
            try:
                os.mkdir(path)  # atomic: exactly one process gets each name
                return path
            except FileExistsError:
                continue
            except OSError as e:
                raise RunDirError(f"cannot create the run directory {path}: "
                                  f"{_os_reason(e)}") from None
        raise RunDirError(f"cannot find a free run directory name under {root}")

    @classmethod
    def open(cls, path: str | os.PathLike, *, main: bool = True,
             verb: str | None = None) -> RunDir:
        """An existing run directory (holding ``config.json``), locked for this process.

        The locking open (``main=True``) needs the jaxnn marker (of ``verb``, when given); a
        run from before markers (``config.json`` and ``checkpoints/``, no marker) is accepted
        as a ``train`` run and marked. A run directory holding a symbolic link is refused."""
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise RunDirError(f"{path} is not a directory")
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise RunDirError(f"{path} is not a jaxnn run directory (no config.json)")
        run = cls(path, main=main)
        if main:
            _refuse_symlinks(path)
            marker = read_marker(path)
            legacy = marker is None and os.path.isdir(os.path.join(path, "checkpoints"))
            if marker is None and not legacy:
                raise RunDirError(f"{path} is not a jaxnn run directory (no {MARKER} marker); "
                                  "jaxnn only continues runs it wrote")
            if verb is not None and marker is not None and marker["verb"] != verb:
                raise RunDirError(f"{path} holds a jaxnn {marker['verb']} run, not a {verb} run")
            run._probe_writable()
            run._acquire_lock()
            run._written = True  # an existing run is never removed
            if legacy:  # a run from before markers: mark it as the train run it is
                run._write_marker("train")
                run._made_marker = False
        return run

    def _probe_writable(self) -> None:
        probe = os.path.join(self.path, f".probe-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
                         0o600)
            try:
                os.write(fd, b"ok")
            finally:
                os.close(fd)
            os.remove(probe)
        except OSError as e:
            raise RunDirError(f"cannot write in the run directory {self.path}: "
                              f"{_os_reason(e)}") from None

    def _acquire_lock(self) -> None:
        """Lock ``RUN/.lock``: opened without following a symbolic link, flocked, and checked to
        still be the file at that name (a lock file removed or replaced meanwhile is not the
        lock any more: try again)."""
        lock_path = os.path.join(self.path, _LOCK)
        for _ in range(100):
            made = False
            try:
                try:
                    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW
                                 | _CLOEXEC, 0o644)
                    made = True
                except FileExistsError:
                    fd = os.open(lock_path, os.O_RDWR | _NOFOLLOW | _CLOEXEC | os.O_NONBLOCK)
            except FileNotFoundError:
                continue  # removed between the two opens
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise RunDirError(f"{lock_path} is a symbolic link; jaxnn does not follow "
                                      "symbolic links in a run directory (remove it)") from None
                raise RunDirError(f"cannot write in the run directory {self.path}: "
                                  f"{_os_reason(e)}") from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise RunDirError(f"{lock_path} is not a regular file (remove it)")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunDirError(f"cannot lock the run directory {self.path}: "
                                      f"{_os_reason(e)}") from None
                pid = _read_pid(lock_path)
                who = f"process {pid}" if pid else "another process"
                raise RunInUseError(f"{self.path} is in use by {who}") from None
            try:
                now = os.stat(lock_path, follow_symlinks=False)
            except FileNotFoundError:
                now = None
            mine = os.fstat(fd)
            if now is None or (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
                os.close(fd)  # the file was removed or replaced after we opened it
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._lock_fd, self._made_lock = fd, made
            return
        raise RunDirError(f"cannot lock the run directory {self.path}: its lock file keeps "
                          "changing")

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Release the lock (the lock file stays; it is not a sign of a live process)."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def abandon(self) -> None:
        """Undo :meth:`create` when the run failed before writing anything: remove the lock file
        and, if this process created the directory and it is now empty, the directory."""
        if self._written:
            self.close()
            return
        self._cleanup()

    def _cleanup(self) -> None:
        if self.main and self._lock_fd is not None:
            # Only what this process made, and only while it still holds the lock: a process
            # that opened the lock file meanwhile finds it gone once it gets the flock, and
            # tries again (a lock file another process may hold is never removed).
            if self._made_marker:
                with contextlib.suppress(OSError):
                    os.remove(self.file(MARKER))
            if self._made_lock:
                with contextlib.suppress(OSError):
                    os.remove(self.file(_LOCK))
        self.close()
        if not self.main:
            return
        if self.created:
            with contextlib.suppress(OSError):
                os.rmdir(self.path)  # only if empty: nothing of anybody's is removed
                if self._made_root:
                    os.rmdir(self._made_root)

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not self._written:
            self.abandon()
        else:
            self.close()

    # ------------------------------------------------------------------ files
    def file(self, name: str) -> str:
        """The path of ``name`` inside the run directory."""
        return os.path.join(self.path, name)

    def exists(self, name: str) -> bool:
        return os.path.exists(self.file(name))

    def write_json(self, name: str, obj: Any) -> None:
        """Write ``name`` atomically as strict JSON (process 0 only)."""
        if self.main:
            write_json_atomic(self.file(name), obj)
            self._written = True

    def write_arrays(self, name: str, arrays: Mapping[str, Any]) -> None:
        """Write ``name`` atomically as an ``.npz`` of ``arrays`` (process 0 only)."""
        if self.main:
            write_npz_atomic(self.file(name), arrays)
            self._written = True

    def read_json(self, name: str) -> dict:
        """:func:`read_json` of ``name`` in this directory."""
        return read_json(self.file(name))

    def mark_written(self) -> None:
        """Say that the run has written something of its own (a plot, say): from now on a
        failure keeps the directory."""
        self._written = True

    # ------------------------------------------------------------------ metrics
    def read_metrics(self) -> tuple[list[dict], list[int]]:
        """:func:`read_metrics` of ``metrics.jsonl``."""
        return read_metrics(self.file("metrics.jsonl"))

    def write_metrics(self, records: list[dict]) -> None:
        """Replace ``metrics.jsonl`` atomically by ``records`` (sorted by epoch)."""
        if not self.main:
            return
        records = sorted(records, key=lambda r: r["epoch"])
        _write_text_atomic(self.file("metrics.jsonl"),
                           "".join(json.dumps(jsonable(r)) + "\n" for r in records))
        self._file_epochs = {r["epoch"] for r in records}
        self._written = True

    def record_epoch(self, rec: dict) -> None:
        """Add one epoch's record: appended as one whole line, or, when ``metrics.jsonl`` already
        holds that epoch (a rerun after a fallback), an atomic rewrite replacing it."""
        if not self.main:
            return
        if rec["epoch"] in self._file_epochs or (self._file_epochs and
                                                 rec["epoch"] < max(self._file_epochs)):
            records, _ = self.read_metrics()
            self.write_metrics([r for r in records if r["epoch"] != rec["epoch"]] + [rec])
            return
        fd = os.open(self.file("metrics.jsonl"),
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o644)
        with os.fdopen(fd, "a") as f:
            f.write(json.dumps(jsonable(rec)) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._file_epochs.add(rec["epoch"])
        self._written = True

    # ------------------------------------------------------------------ checkpoints
    def checkpointer(self, *, keep: int = 3) -> Checkpointer:
        """The orbax :class:`~jaxnn.checkpoint.Checkpointer` of ``checkpoints/``."""
        ckpt = Checkpointer(self.file("checkpoints"), max_to_keep=keep)
        self._written = True
        return ckpt

    def restore(self, ckpt: Checkpointer, *, template: Any,
                check: Callable[[Any, dict], str | None] | None = None) -> Restored:
        """Restore the newest checkpoint that restores, passes its integrity check and
        ``check(state, meta)`` (which returns a reason to reject it or ``None``); each newer one
        that fails is moved to ``corrupt-checkpoints/`` and listed in ``skipped``.

        Raises:
          RunMismatchError: a checkpoint's tree does not fit ``template`` (the model changed,
            e.g. a hand-edited config): one line naming the array and both shapes; nothing is
            moved.
        """
        skipped, found = [], Restored(None, None, None, [])
        for step in sorted(ckpt.all_steps(), reverse=True):
            try:
                state, meta = ckpt.restore(template=template, step=step)
                reason = check(state, meta) if check is not None else None
            except CheckpointMismatchError as e:
                raise RunMismatchError(
                    f"{self.path}: {e}; the run's config does not build the model it was "
                    "trained with (was config.json edited?); nothing was changed") from None
            except Exception as e:  # orbax raises many types for a damaged directory
                reason = _short_reason(e)
            if reason is None:
                found = Restored(state, meta, step, skipped)
                break
            skipped.append((step, reason))
        for step, _reason in skipped:  # moved only once no checkpoint turned out a mismatch
            self._set_aside(ckpt, step)
        return found._replace(skipped=skipped)

    def _set_aside(self, ckpt: Checkpointer, step: int) -> None:
        if not self.main:
            return
        src = os.path.join(ckpt.directory, str(step))
        dst_dir = self.file("corrupt-checkpoints")
        os.makedirs(dst_dir, exist_ok=True)
        dst = os.path.join(dst_dir, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        if os.path.exists(src):
            shutil.move(src, dst)
        ckpt.reload()


def _read_pid(lock_path: str) -> int | None:
    try:
        fd = os.open(lock_path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | os.O_NONBLOCK)
        with os.fdopen(fd) as f:
            return int(f.read(32).strip() or 0) or None
    except (OSError, ValueError):
        return None


def _short_reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(e).__name__}: {first[:160]}" if first else type(e).__name__


# ---------------------------------------------------------------------- fit in a run directory
def _check_meta(meta: dict) -> str | None:
    """A reason to reject checkpoint metadata, or ``None``."""
    ep, l0, recs = meta.get("epoch"), meta.get("initial_loss"), meta.get("records")
    if not isinstance(ep, int) or ep < 0:
        return f"metadata 'epoch' is {ep!r}, expected an integer >= 0"
    if not isinstance(l0, int | float) or not math.isfinite(l0):
        return f"metadata 'initial_loss' is {l0!r}, expected a finite number"
    if not isinstance(recs, list) or [r.get("epoch") for r in recs if isinstance(r, dict)] != \
            list(range(1, ep + 1)):
        return "metadata 'records' do not list epochs 1..epoch"
    return None


def _tree_finite(state) -> bool:
    return bool(_train.tree_all_finite(state.params))


def _check_restored(state, meta: dict) -> str | None:
    """Why a restored checkpoint cannot be resumed from (or used), or ``None``."""
    return _check_meta(meta) or (None if _tree_finite(state) else "parameters are not finite")


def load_checkpoint(path: str | os.PathLike, model, optimizer, *, key: jax.Array,
                    step: int | None = None) -> Restored:
    """The newest checkpoint of the run at ``path`` that restores and passes resume's checks
    (``step``: exactly that one), **read-only**: nothing is moved, deleted or locked, so it
    works next to a process still training into the run (orbax renames a checkpoint into place
    only when it is complete) and in a read-only directory. ``skipped`` lists each newer
    checkpoint that did not restore and why; :func:`fit`'s resume falls back the same way but
    also moves those aside. ``model``, ``optimizer`` and ``key`` give the structure (the state
    :func:`jaxnn.train.init_train_state` makes).

    Raises:
      RunDirError: no ``checkpoints/``, no checkpoint at all, ``step`` not kept or not
        restoring, or none restores (naming the newest one's reason).
    """
    path = os.fspath(path)
    directory = os.path.join(path, "checkpoints")
    if not os.path.isdir(directory):
        raise RunDirError(f"{path}: no checkpoints/ (is this a `jaxnn train` run directory?)")
    template = _train.init_train_state(model, optimizer, key=key)
    ckpt = Checkpointer(directory, read_only=True)
    try:
        steps = sorted(ckpt.all_steps(), reverse=True)
        if not steps:
            raise RunDirError(f"{path}: no checkpoint in {directory}")
        if step is not None and step not in steps:
            raise RunDirError(f"{path}: no checkpoint {step}; kept: "
                              f"{', '.join(map(str, sorted(steps)))}")
        skipped = []
        for s in [step] if step is not None else steps:
            try:
                state, meta = ckpt.restore(template=template, step=s)
                reason = _check_restored(state, meta)
            except CheckpointMismatchError as e:
                raise RunMismatchError(f"{path}: {e}") from None
            except Exception as e:  # orbax raises many types for a damaged directory
                if not os.path.isdir(os.path.join(directory, str(s))):
                    continue  # removed meanwhile (a training process keeps the newest N)
                reason = _short_reason(e)
            if reason is None:
                return Restored(state, meta, s, skipped)
            skipped.append((s, reason))
        s, reason = skipped[0] if skipped else (steps[0], "removed while reading")
        if step is not None:
            raise RunDirError(f"{path}: checkpoint {s} does not restore: {reason}")
        raise RunDirError(f"{path}: no checkpoint restores (newest: checkpoint {s}: {reason})")
    finally:
        ckpt.close()


def fit(
    run: RunDir,
    model,
    data,
    *,
    optimizer,
    epochs: int,
    key: jax.Array,
    resume: bool = False,
    keep_checkpoints: int = 3,
    config: dict | None = None,
    callback: Callable[[dict, Any], None] | None = None,
    on_start: Callable[[Any, float], None] | None = None,
    notify: Callable[[str], None] | None = None,
    **fit_kw,
) -> _train.History:
    """:func:`jaxnn.train.fit` inside a run directory.

    Saves a checkpoint of the initial state (epoch 0) and one after every healthy epoch (the last
    ``keep_checkpoints`` kept), each carrying the metric records so far, then appends the epoch's
    line to ``metrics.jsonl``. ``config`` is written to ``config.json`` once the initial loss is
    known to be finite (a run refused at the start writes nothing). With ``resume=True`` it
    continues from the newest checkpoint that restores; ``metrics.jsonl`` is rebuilt from the
    intact lines and the checkpoint's records. ``notify(message)`` receives one line per event
    worth telling the user (a skipped checkpoint, garbled metrics lines). ``callback(record,
    state)`` and ``on_start(state, initial_loss)`` are called as :func:`jaxnn.train.fit` calls them,
    after the run directory's own work. Other keywords go to :func:`jaxnn.train.fit`.
    """
    if keep_checkpoints < 1:
        raise ValueError(f"keep_checkpoints must be >= 1, got {keep_checkpoints}")
    say = notify or (lambda _msg: None)
    ckpts, start, initial, records = [], None, [], []
    try:
        if resume:
            ckpts.append(run.checkpointer(keep=keep_checkpoints))
            start = _resume_point(run, ckpts[0], model, optimizer, key, say)
        elif run.exists("checkpoints") and os.listdir(run.file("checkpoints")):
            raise RunDirError(f"{run.path} already holds checkpoints; resume it or choose "
                              "another directory")

        if start is not None:
            records.extend(start.records)

        user_start = on_start

        def on_start(state, initial_loss):
            # Nothing is written before the run is known to start: a refused run leaves no trace.
            initial.append(initial_loss)
            if config is not None and not resume:
                run.write_json("config.json", config)
            if not ckpts:
                ckpts.append(run.checkpointer(keep=keep_checkpoints))
            if start is None:  # the initial state: the last good checkpoint of a run that
                # diverges in its first epoch, and a resume point before epoch 1
                ckpts[0].save(0, state, {"epoch": 0, "initial_loss": initial_loss,
                                         "records": []})
            if user_start is not None:
                user_start(state, initial_loss)

        def on_epoch(rec, state):
            records.append(rec)
            ckpts[0].save(rec["epoch"], state, {"epoch": rec["epoch"], "initial_loss": initial[0],
                                            "records": jsonable(records)})
            run.record_epoch(rec)
            if callback is not None:
                callback(rec, state)

        return _train.fit(model, data, optimizer=optimizer, epochs=epochs, key=key, start=start,
                          on_start=on_start, callback=on_epoch, **fit_kw)
    finally:
        for ckpt in ckpts:
            ckpt.close()


def _resume_point(run, ckpt, model, optimizer, key, say):
    """The :class:`jaxnn.train.Start` to continue from, and ``metrics.jsonl`` rebuilt."""
    template = _train.init_train_state(model, optimizer, key=key)
    found = run.restore(ckpt, template=template, check=_check_restored)
    for step, reason in found.skipped:
        say(f"skipped checkpoint {step} ({reason}); moved to corrupt-checkpoints/")
    file_records, bad = run.read_metrics()
    if bad:
        say(f"skipped {len(bad)} garbled line(s) of metrics.jsonl (line "
            f"{', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''})")
    if found.state is None:
        if found.skipped:
            raise RunDirError(f"{run.path}: no checkpoint restores (newest: checkpoint "
                              f"{found.skipped[0][0]}: {found.skipped[0][1]})")
        run.write_metrics(file_records)  # no checkpoint yet: start again from the beginning
        return None
    meta = found.metadata
    kept = {r["epoch"]: r for r in file_records}
    for r in meta["records"]:
        kept.setdefault(r["epoch"], r)  # the checkpoint restores lines lost from the file
    if bad or len(kept) != len(file_records):
        run.write_metrics(list(kept.values()))
    else:
        run._file_epochs = set(kept)
    return _train.Start(found.state, int(meta["epoch"]), float(meta["initial_loss"]),
                        list(meta["records"]))
