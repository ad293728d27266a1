"""Start-up: time to the first epoch of ``jaxnn train --epochs 1``, cold and warm compile cache.

Each run is a fresh process, as a user starts one: ``python -m jaxnn train --epochs 1 --quiet``
(the default digits MLP) in a new run directory. ``first_epoch_s`` is the wall time from starting
the process until the first epoch's line is in ``metrics.jsonl`` (imports, data, compiling,
initial loss, one epoch, validation); ``total_s`` is until the process exits (test evaluation,
summary and plot included). ``mode``:

* ``"cold"``: the console script's persistent compilation cache on, in an empty directory (a
  first run: everything is compiled, and written to the cache);
* ``"warm"``: the same cache directory, already filled by one untimed run (every later run);
* ``"off"``: ``JAXNN_NO_COMPILE_CACHE=1`` (no cache at all).

Modes are run interleaved, round after round, and the median over the rounds is reported. The
user's own JAX cache variables are removed from the children's environment so the console
script's defaults apply. Rows: ``{"mode", "first_epoch_s", "total_s", "repeats",
"first_epoch_runs", "total_runs", "vs_off"}`` (first-epoch time over the uncached run's in the
same round, median over rounds) plus ``cache_mb`` (size of the warm cache).

Usage::

    python benchmarks/startup.py [--quick] [--json PATH]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/startup.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common as C  # noqa: E402

MODES = ("cold", "warm", "off")
#: Variables removed from the children's environment (the user's JAX cache choices and jaxnn's).
_DROPPED = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "JAXNN_CACHE", "JAXNN_NO_COMPILE_CACHE")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return {**env, **extra}


def time_run(out: Path, env: dict[str, str], flags: list[str], timeout: float = 600.0):
    """``(first_epoch_s, total_s)`` of one ``jaxnn train --epochs 1`` process writing to ``out``."""
    metrics = out / "metrics.jsonl"
    cmd = [sys.executable, "-m", "jaxnn", "train", "--epochs", "1", "--quiet", *flags,
           "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    first = None
    while proc.poll() is None:
        if first is None and metrics.exists() and metrics.read_text().strip():
            first = time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            raise RuntimeError(f"{' '.join(cmd)} took more than {timeout:.0f} s")
        time.sleep(0.005)
    total = time.perf_counter() - t0
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err.strip()[-500:]}")
    if first is None:  # the epoch and the exit fell within one poll
        first = total
    return first, total


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2 ** 20


def measure(repeats: int, flags: list[str]) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="jaxnn-startup-"))
    try:
        warm_cache = work / "warm-cache"
        C.log("startup: filling the warm cache (untimed run)")
        time_run(work / "fill", _env(JAXNN_CACHE=str(warm_cache)), flags)
        times: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
        for r in range(repeats):
            k = r % len(MODES)
            for mode in MODES[k:] + MODES[:k]:  # rotate the order from round to round
                out = work / f"{mode}-{r}"
                if mode == "cold":
                    env = _env(JAXNN_CACHE=str(work / f"cold-cache-{r}"))
                elif mode == "warm":
                    env = _env(JAXNN_CACHE=str(warm_cache))
                else:
                    env = _env(JAXNN_NO_COMPILE_CACHE="1")
                times[mode].append(time_run(out, env, flags))
                C.log(f"startup: round {r + 1}/{repeats} {mode}: first epoch "
                      f"{times[mode][-1][0]:.2f} s, exit {times[mode][-1][1]:.2f} s")
        cache_mb = _size_mb(warm_cache)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [{
        "mode": m,
        "first_epoch_s": statistics.median(t[0] for t in times[m]),
        "total_s": statistics.median(t[1] for t in times[m]),
        "repeats": repeats,
        "first_epoch_runs": [t[0] for t in times[m]],
        "total_runs": [t[1] for t in times[m]],
        # paired within each round (the same machine load): steadier than a ratio of medians
        "vs_off": statistics.median(a[0] / b[0] for a, b in zip(times[m], times["off"],
                                                                 strict=True)),
        "cache_mb": cache_mb if m == "warm" else None,
    } for m in MODES]


def markdown(machine, rows, flags) -> str:
    table = [[r["mode"], float(f"{r['first_epoch_s']:.3g}"), float(f"{r['vs_off']:.2f}"),
              float(f"{r['total_s']:.3g}"), r["repeats"]] for r in rows]
    table.append(["torch", "not measured (the start-up of jaxnn's own command)", "-", "-", "-"])
    cmd = " ".join(["jaxnn train --epochs 1 --quiet", *flags])
    return "\n".join([
        f"# Start-up: `{cmd}`, time to the first epoch", "", f"Machine: {C.machine_line(machine)}",
        "", "Wall time of a fresh process, medians over rounds (modes interleaved). cold: the "
            "compilation cache on but empty (a first run); warm: the cache filled by an earlier "
            "run; off: `JAXNN_NO_COMPILE_CACHE=1`. *x off*: time to the first epoch over the "
            "uncached run's in the same round (median over rounds).", "",
        C.markdown_table(table, ["mode", "first epoch s", "x off (paired)", "process exit s",
                                 "runs"])]) + "\n"


def run(*, quick: bool = False, tiny: bool = False, json_path) -> dict:
    repeats = 1 if tiny else 3 if quick else 5
    flags = ["--hidden", "8"] if tiny else []
    machine = C.machine_info()
    rows = measure(repeats, flags)
    md = markdown(machine, rows, flags)
    jpath, mdpath = C.write_results(json_path, machine, rows, md,
                                    settings={"repeats": repeats, "flags": flags})
    png = jpath.with_suffix(".png")
    C.bar_chart(png, [{"title": "jaxnn train --epochs 1 (fresh process)",
                       "groups": list(MODES),
                       "series": {"first epoch": [r["first_epoch_s"] for r in rows],
                                  "process exit": [r["total_s"] for r in rows]}}],
                xlabel="seconds (median)",
                suptitle=f"{machine['cpu']}, {machine['cores']} cores, jax {machine['jax']}")
    return {"machine": machine, "rows": rows, "markdown": md,
            "paths": {"json": str(jpath), "markdown": str(mdpath), "png": str(png)}}


def main(argv: list[str] | None = None) -> int:
    args = C.parser("Start-up: time to the first epoch of `jaxnn train`, cold and warm "
                    "compilation cache.", "startup.json").parse_args(argv)
    out = run(quick=args.quick, tiny=C.tiny_requested(args), json_path=args.json)
    print(out["markdown"])
    C.log(f"wrote {out['paths']['json']}, {out['paths']['markdown']}, {out['paths']['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
