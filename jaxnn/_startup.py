"""JAX's persistent compilation cache for the ``jaxnn`` console script.

Most of the time of a short ``jaxnn`` command is XLA compiling the same programs as the last
invocation did. JAX can keep compiled programs on disk (its persistent compilation cache); the
console script turns it on, in the user's cache directory next to the datasets:

* ``$JAXNN_CACHE`` if set, else ``$XDG_CACHE_HOME/jaxnn/jax-compile`` (``~/.cache/jaxnn/jax-compile``);
* every program is cached, however quick its compile (minimum compile time 0 s);
* a user's own JAX cache settings win: with any of ``JAX_COMPILATION_CACHE_DIR``,
  ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` or ``JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES``
  in the environment, jaxnn changes nothing;
* ``JAXNN_NO_COMPILE_CACHE=1`` turns it off.

The cache cannot change a result: JAX keys each entry on the program, the compile options, the
devices and the jax/jaxlib versions, so a hit is the executable the compiler would have produced.
Library users turn the same cache on with ``jax.config.update("jax_compilation_cache_dir", ...)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: The user's own JAX cache settings; with any of them set, jaxnn leaves the cache alone.
JAX_CACHE_VARIABLES = (
    "JAX_COMPILATION_CACHE_DIR",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES",
)
#: ``JAXNN_NO_COMPILE_CACHE=1`` turns the cache off.
OFF_VARIABLE = "JAXNN_NO_COMPILE_CACHE"


def compile_cache_dir(environ: Mapping[str, str] | None = None) -> str | None:
    """The directory the console script caches compiled programs in, or ``None`` when it must
    leave JAX's cache settings alone (turned off, or the user set JAX's own variables)."""
    env = os.environ if environ is None else environ
    if env.get(OFF_VARIABLE, "").strip() not in ("", "0"):
        return None
    if any(v in env for v in JAX_CACHE_VARIABLES):
        return None
    if env.get("JAXNN_CACHE"):
        return os.path.expanduser(env["JAXNN_CACHE"])
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxnn", "jax-compile")


def enable_compile_cache(environ: Mapping[str, str] | None = None) -> str | None:
    """Turn JAX's persistent compilation cache on in :func:`compile_cache_dir` (minimum compile
    time 0) and return the directory; ``None`` (nothing changed) when it must not, or when the
    directory cannot be created (the command then runs without a cache)."""
    path = compile_cache_dir(environ)
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
