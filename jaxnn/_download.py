"""Fetch one file over HTTP(S) (or ``file://``), verify its checksum, write it atomically.

The standard library's ``urllib`` does the transfer; ``hashlib`` the digest. The bytes stream
into a temporary file in the destination's directory while being hashed, and only when the
digest matches the published one is the temporary file renamed (``os.replace``, atomic on POSIX
and Windows) to its final name. Any failure (HTTP error, no network, a cut connection, a checksum
mismatch, an interrupt) removes the temporary file, so the destination either holds the verified
file or nothing. A process killed mid-transfer (``kill -9``) cannot remove its temporary file: the
next download of the same file removes such leftovers (only files named as this module names
its temporary files, ``.<name>.XXXXXXXX.part``, that no live download holds locked).

Besides the per-read ``timeout``, each file has an overall deadline (:func:`deadline_for`:
``$JAXNN_DOWNLOAD_DEADLINE`` seconds if set, else :data:`DEADLINE_BASE` plus the time the
expected size takes at :data:`DEADLINE_MIN_RATE`), so a server that trickles bytes cannot keep
a download running for ever, and a transfer is cut off as soon as it exceeds the expected size
(known from the checksum table or announced by the server). Progress is reported through a
callback; nothing here prints.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import os
import re
import stat
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

__all__ = ["DownloadError", "Progress", "fetch", "file_digest", "deadline_for"]

#: ``progress(file_name, bytes_done, bytes_total_or_None)``: called once with ``bytes_done = 0``
#: when a transfer starts and after every chunk.
Progress = Callable[[str, int, int | None], None]

_CHUNK = 1 << 20
_USER_AGENT = "jaxnn (python urllib)"

#: Every file may take this many seconds, plus its expected size at :data:`DEADLINE_MIN_RATE`
#: (``$JAXNN_DOWNLOAD_DEADLINE``, in seconds, replaces the whole rule).
DEADLINE_BASE = 120.0
#: The slowest transfer rate (bytes per second) the default deadline allows for.
DEADLINE_MIN_RATE = 16 * 1024
#: A temporary file older than this (and not locked by a live download) is a leftover.
STALE_SECONDS = 60.0


class DownloadError(ValueError):
    """A file could not be downloaded or failed its checksum; nothing was written.

    A ``ValueError`` so that callers treating bad data uniformly (the CLI among them) report it
    as one line.
    """


def _hasher(algorithm: str):
    # md5 is how some datasets publish their checksums: an integrity check, not security.
    return hashlib.new(algorithm, usedforsecurity=False)


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest (``"sha256"``, ``"md5"``, ...) of a file, read in 1 MiB chunks."""
    h = _hasher(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def deadline_for(size: int | None) -> float:
    """The overall deadline, in seconds, of downloading one file of ``size`` bytes (``None``:
    unknown): ``$JAXNN_DOWNLOAD_DEADLINE`` if set, else :data:`DEADLINE_BASE` +
    ``size`` / :data:`DEADLINE_MIN_RATE` (an hour for an unknown size)."""
    env = os.environ.get("JAXNN_DOWNLOAD_DEADLINE")
    if env:
        try:
            value = float(env)
        except ValueError:
            value = -1.0
        if not value > 0 or value == float("inf"):
            raise DownloadError(f"$JAXNN_DOWNLOAD_DEADLINE must be a positive number of "
                                f"seconds, got {env!r}")
        return value
    return DEADLINE_BASE + (size / DEADLINE_MIN_RATE if size is not None else 3600.0)


def _temp_pattern(name: str) -> re.Pattern:
    # tempfile.mkstemp(prefix=".NAME.", suffix=".part"): 8 characters of [a-z0-9_] between
    return re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}\.part")


def remove_stale_parts(directory: str | os.PathLike, name: str) -> list[str]:
    """Remove the temporary files that downloads of ``name`` killed mid-transfer left in
    ``directory``: regular files named as :func:`fetch` names them, not modified for
    :data:`STALE_SECONDS`, and not locked by a live download. Returns the names removed."""
    pattern, removed = _temp_pattern(name), []
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not pattern.fullmatch(entry):
            continue
        path = os.path.join(directory, entry)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
        except OSError:
            continue  # gone, or a symbolic link: not ours
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < STALE_SECONDS:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live download holds it
            os.unlink(path)
            removed.append(entry)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def fetch(
    url: str,
    dest: str | os.PathLike,
    *,
    algorithm: str,
    digest: str,
    progress: Progress | None = None,
    timeout: float = 60.0,
    size: int | None = None,
    deadline: float | None = None,
) -> Path:
    """Download ``url`` to ``dest`` if and only if its ``algorithm`` digest equals ``digest``.

    ``dest``'s directory must exist. ``size`` (bytes), when known, caps the transfer (as does
    the length the server announces); ``deadline`` (seconds, default :func:`deadline_for`)
    bounds the whole transfer, ``timeout`` each read. Leftover temporary files of earlier,
    killed downloads of ``dest`` are removed first (:func:`remove_stale_parts`). Returns
    ``dest`` as a ``Path``.

    Raises:
      DownloadError: one line naming the file, the URL and the expected digest (and the actual
        one on a mismatch); no file is left behind, not even a partial one.
    """
    dest = Path(dest)
    name = dest.name
    expected = f"expected {algorithm} {digest}"
    if deadline is None:
        deadline = deadline_for(size)
    remove_stale_parts(dest.parent, name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest.parent)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # says "a live download" to cleaners
    except OSError as e:
        raise DownloadError(
            f"cannot write {name} into {dest.parent}: {e.strerror or e}; {expected}."
        ) from None
    start = time.monotonic()
    try:
        h = _hasher(algorithm)
        done = 0
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
            with urllib.request.urlopen(request, timeout=min(timeout, deadline)) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                cap = size if size is not None else total
                if size is not None and total is not None and total > size:
                    raise DownloadError(
                        f"{name}: {url} announces {total} bytes, more than the expected {size}; "
                        f"{expected}; nothing was saved."
                    )
                if progress is not None:
                    progress(name, 0, total)
                read = getattr(response, "read1", response.read)  # returns what has arrived
                while chunk := read(_CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    if cap is not None and done > cap:
                        raise DownloadError(
                            f"{name}: the download from {url} sent more than the expected "
                            f"{cap} bytes; {expected}; nothing was saved."
                        )
                    if time.monotonic() - start > deadline:
                        raise DownloadError(
                            f"{name}: the download from {url} took longer than {deadline:g} s "
                            f"({done} bytes received; a stalled or very slow server? "
                            f"$JAXNN_DOWNLOAD_DEADLINE sets the limit); {expected}; nothing "
                            "was saved."
                        )
                    if progress is not None:
                        progress(name, done, total)
                if total is not None and done != total:
                    raise DownloadError(
                        f"{name}: the download from {url} stopped after {done} of {total} bytes; "
                        f"{expected}; nothing was saved."
                    )
            out.flush()
            os.fsync(out.fileno())
        actual = h.hexdigest()
        if actual != digest.lower():
            raise DownloadError(
                f"{name}: checksum mismatch for {url}: {expected}, got {actual} ({done} bytes); "
                "nothing was saved (a wrong mirror, or a damaged transfer: try again)."
            )
        os.replace(tmp, dest)
        return dest
    except DownloadError:
        _remove(tmp)
        raise
    except urllib.error.HTTPError as e:
        _remove(tmp)
        raise DownloadError(
            f"{name}: cannot download {url}: HTTP {e.code} {e.reason}; {expected}; "
            "nothing was saved."
        ) from None
    except urllib.error.URLError as e:
        _remove(tmp)
        raise DownloadError(
            f"{name}: cannot download {url}: {e.reason} (no network, or a wrong URL?); "
            f"{expected}; nothing was saved."
        ) from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        _remove(tmp)
        what = e.strerror if isinstance(e, OSError) and e.strerror else (str(e) or type(e).__name__)
        raise DownloadError(
            f"{name}: the download from {url} failed: {what}; {expected}; nothing was saved."
        ) from None
    except BaseException:  # KeyboardInterrupt and the like: leave nothing behind either
        _remove(tmp)
        raise


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
