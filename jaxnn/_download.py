"""Fetch one file over HTTP(S) (or ``file://``), verify its checksum, write it atomically.

The standard library's ``urllib`` does the transfer; ``hashlib`` the digest. The bytes stream
into a temporary file in the destination's directory while being hashed, and only when the
digest matches the published one is the temporary file renamed (``os.replace``, atomic on POSIX
and Windows) to its final name. Any failure (HTTP error, no network, a cut connection, a checksum
mismatch, an interrupt) removes the temporary file, so the destination either holds the verified
file or nothing. Progress is reported through a callback; nothing here prints.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

__all__ = ["DownloadError", "Progress", "fetch", "file_digest"]

#: ``progress(file_name, bytes_done, bytes_total_or_None)``: called once with ``bytes_done = 0``
#: when a transfer starts and after every chunk.
Progress = Callable[[str, int, int | None], None]

_CHUNK = 1 << 20
_USER_AGENT = "jaxnn (python urllib)"


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


def fetch(
    url: str,
    dest: str | os.PathLike,
    *,
    algorithm: str,
    digest: str,
    progress: Progress | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` if and only if its ``algorithm`` digest equals ``digest``.

    ``dest``'s directory must exist. Returns ``dest`` as a ``Path``.

    Raises:
      DownloadError: one line naming the file, the URL and the expected digest (and the actual
        one on a mismatch); no file is left behind, not even a partial one.
    """
    dest = Path(dest)
    name = dest.name
    expected = f"expected {algorithm} {digest}"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise DownloadError(
            f"cannot write {name} into {dest.parent}: {e.strerror or e}; {expected}."
        ) from None
    try:
        h = _hasher(algorithm)
        done = 0
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                if progress is not None:
                    progress(name, 0, total)
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
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
