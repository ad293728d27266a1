"""The shared harness of the jaxnn benchmarks: machine info, timing, and result files.

Timing follows jax's own benchmarks: compile once (the first call, reported separately), warm up,
``block_until_ready()`` on every call, and report the **median** of repeats. Implementations that
are compared with each other are timed *interleaved* (one call of each, round after round), so a
neighbour process that slows the machine down for a second slows every contender alike and the
ratios stay meaningful on a shared machine.

Every script writes ``{"machine": {...}, "rows": [...]}`` as JSON, a markdown table beside it
(same name, ``.md``) and a bar chart (``.png``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: Where the scripts write their results unless ``--json`` says otherwise.
RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: The glibc settings that keep large freed buffers in the process (see benchmarks/README.md).
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "4294967296",
    "MALLOC_TRIM_THRESHOLD_": "4294967296",
    "MALLOC_ARENA_MAX": "1",
}


# --------------------------------------------------------------------------- command line
def parser(description: str, default_json: str) -> argparse.ArgumentParser:
    """The flags every benchmark script takes: ``--quick``, ``--json PATH`` (and a hidden
    ``--tiny`` that the smoke tests use: tiny sizes, two repeats; the numbers mean nothing)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    p.add_argument("--json", default=str(RESULTS_DIR / default_json), metavar="PATH",
                   help="where to write the JSON results; the .md table and .png chart go "
                        "beside it (default: %(default)s)")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    return p


def tiny_requested(args) -> bool:
    """``--tiny`` or ``JAXNN_BENCH_TINY=1``: smoke-test sizes."""
    return bool(getattr(args, "tiny", False)) or os.environ.get("JAXNN_BENCH_TINY") == "1"


# --------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_simd() -> str:
    """The widest x86 vector extension the CPU reports (what XLA's CPU codegen can use)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return ""
    for name in ("avx512f", "avx2", "avx", "sse4_2"):
        if name in flags:
            return name
    return ""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


#: Set (to ``"mallopt"``) by whoever applied the same settings with ``mallopt(3)`` in-process
#: (e.g. the ``jaxnn`` console script), so that results are labelled correctly.
MALLOC_MARKER = "JAXNN_MALLOC_APPLIED"


def malloc_setting() -> str:
    """How this process's glibc malloc is set up: ``"env"`` (started with :data:`MALLOC_ENV`),
    ``"mallopt"`` (the same settings applied in-process, see :data:`MALLOC_MARKER`) or
    ``"default"``."""
    if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return "env"
    if os.environ.get(MALLOC_MARKER) == "mallopt":
        return "mallopt"
    return "default"


def machine_info() -> dict[str, Any]:
    """Versions, CPU and device of this run (the ``machine`` entry of every results file)."""
    import jax

    dev = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "numpy": _version("numpy"),
        "optax": _version("optax"),
        "cpu": _cpu_model(),
        "simd": _cpu_simd(),
        "cores": os.cpu_count(),
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "malloc": malloc_setting(),
        "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "optional": {k: _version(k) for k in ("torch", "flax", "equinox")},
    }


def machine_line(m: dict[str, Any]) -> str:
    """One line naming the machine, for the markdown tables."""
    opt = ", ".join(f"{k} {v}" for k, v in m.get("optional", {}).items() if v)
    return (f"{m['cpu']} ({m['cores']} cores, {m['simd'] or 'no SIMD info'}), "
            f"{m['platform']} device `{m['device_kind']}`; python {m['python']}, "
            f"jax {m['jax']}, jaxlib {m['jaxlib']}, numpy {m['numpy']}"
            + (f", {opt}" if opt else "") + f"; malloc {m['malloc']}; {m['date']}"
            + (f"; load average at start {m['loadavg_at_start'][0]}"
               if "loadavg_at_start" in m else ""))


# --------------------------------------------------------------------------- timing
def block(out: Any) -> Any:
    """Wait for every array in ``out`` (jax arrays; anything without the method is ignored)."""
    import jax

    for leaf in jax.tree.leaves(out):
        if hasattr(leaf, "block_until_ready"):
            leaf.block_until_ready()
    return out


def time_once(call: Callable[[], Any]) -> float:
    """Seconds for one blocking call (use it for the first call: tracing + compile + run)."""
    t0 = time.perf_counter()
    block(call())
    return time.perf_counter() - t0


def measure(calls: dict[str, Callable[[], Any]], **kw) -> dict[str, float]:
    """Median seconds per call of each callable, timed interleaved (see :func:`measure_rounds`)."""
    return {name: statistics.median(t) for name, t in measure_rounds(calls, **kw).items()}


def paired_ratio(rounds: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of ``time[num] / time[den]`` measured in the same round: calls timed
    next to each other see the same machine load, so this ratio is steadier than a ratio of
    medians on a shared machine."""
    return statistics.median(a / b for a, b in zip(rounds[num], rounds[den], strict=True))


def measure_rounds(
    calls: dict[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int = 2,
    min_time: float = 0.0,
    max_repeats: int | None = None,
) -> dict[str, list[float]]:
    """Seconds of every timed call of each callable, timed interleaved (one list per callable,
    one entry per round).

    Each ``call()`` runs the work once and returns what to block on (it may update its own
    closure, e.g. to feed a donated buffer back in). The first call of each (compile) and
    ``warmup`` more are not timed. Then rounds run one timed call of each implementation, at
    least ``repeats`` rounds and, if ``min_time`` is set, until the slowest has spent that many
    seconds (capped at ``max_repeats`` rounds). The order within a round rotates from round to
    round, so no implementation always runs first (after the others' buffers were freed).
    """
    for call in calls.values():
        for _ in range(1 + warmup):
            block(call())
    times: dict[str, list[float]] = {name: [] for name in calls}
    cap = max_repeats or max(repeats, 1000)
    rounds = 0
    names = list(calls)
    while rounds < repeats or (
        min_time and rounds < cap and max(sum(t) for t in times.values()) < min_time
    ):
        k = rounds % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            block(calls[name]())
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return times


# --------------------------------------------------------------------------- output
def fmt(v: Any) -> str:
    """A table cell: floats with 3 significant digits (G/M/k suffixes for large ones)."""
    if v is None:
        return "-"
    if isinstance(v, float):
        for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(v) >= div:
                return f"{v / div:.3g}{suffix}"
        return f"{v:.3g}"
    return str(v)


def markdown_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A GitHub markdown table (numbers right-aligned)."""
    cells = [[fmt(v) for v in r] for r in rows]

    def numeric(i):
        return any(_is_number(r[i]) for r in rows) and all(
            _is_number(r[i]) or r[i] in (None, "-") for r in rows)

    align = ["---:" if numeric(i) else ":---" for i in range(len(headers))]
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(out)


def _is_number(v: Any) -> bool:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return True
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def write_results(json_path: str | os.PathLike, machine: dict, rows: list[dict],
                  markdown: str, **extra: Any) -> tuple[Path, Path]:
    """Write ``{"machine", "rows", **extra}`` to ``json_path`` and ``markdown`` beside it
    (``.md``). Returns both paths."""
    path = Path(json_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    machine = {**machine, "loadavg_at_end": [round(v, 2) for v in os.getloadavg()]}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"machine": machine, "rows": rows, **extra}, indent=1) + "\n")
    os.replace(tmp, path)
    md = path.with_suffix(".md")
    start, end = machine.get("loadavg_at_start"), machine["loadavg_at_end"]
    md.write_text(markdown.rstrip() + "\n\nLoad average (1, 5, 15 min) at start "
                  f"{', '.join(map(str, start or []))}; at end {', '.join(map(str, end))}.\n")
    return path, md


def bar_chart(
    png_path: str | os.PathLike,
    panels: Sequence[dict[str, Any]],
    *,
    xlabel: str,
    suptitle: str = "",
    log: bool = False,
) -> Path:
    """Horizontal grouped bar charts, one panel per entry of ``panels``.

    Each panel is a dict with ``title``, ``groups`` (one group of bars per label), ``series``
    (``{name: [value or None per group]}``, one bar per series; ``None`` is left out) and an
    optional ``reference`` ``(label, value)`` drawn as a dashed vertical line (e.g. the bandwidth
    limit). Uses matplotlib's Agg backend (no display needed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = [max(len(p["groups"]), 1) * max(len(p["series"]), 2) for p in panels]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(6.5 * len(panels), 1.6 + 0.13 * max(heights)), squeeze=False
    )
    for ax, panel in zip(axes[0], panels, strict=True):
        groups, series = list(panel["groups"]), panel["series"]
        n_s = max(len(series), 1)
        height = 0.8 / n_s
        for j, (name, values) in enumerate(series.items()):
            ys = [i + (j - (n_s - 1) / 2) * height for i in range(len(groups))]
            pts = [(y, v) for y, v in zip(ys, values, strict=True) if v is not None]
            if pts:
                ax.barh([p[0] for p in pts], [p[1] for p in pts], height=height, label=name)
        ref = panel.get("reference")
        if ref is not None and ref[1] is not None:
            ax.axvline(ref[1], color="k", linestyle="--", linewidth=1, label=ref[0])
        ax.set_yticks(range(len(groups)), groups)
        ax.set_ylim(len(groups) - 0.5, -0.5)
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(panel.get("title", ""), fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    handles, labels = {}, {}
    for ax in axes[0]:  # one legend for all panels, below them
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    labels = list(handles)
    fig.legend([handles[k] for k in labels], labels, loc="lower center", fontsize=8,
               ncol=min(len(labels), 4), frameon=False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout(rect=(0, 0.03 + 0.025 * ((len(labels) + 3) // 4), 1, 1))
    path = Path(png_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log(msg: str) -> None:
    """Progress on stderr (stdout carries the table)."""
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()
