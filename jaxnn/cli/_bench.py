"""``jaxnn bench``: run the activation benchmark and print its table.

The benchmark itself is ``benchmarks/activations.py`` of the source tree (its ``run()``), loaded
here by path: ``benchmarks/`` is not part of the installed package, and the benchmark imports jaxnn
like any user would. So one piece of code makes both ``python benchmarks/activations.py`` and
``jaxnn bench`` numbers; without a source checkout (a wheel install) the verb says so in one line.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import sys
import time
from pathlib import Path

from jaxnn.cli import CLIError
from jaxnn.cli._progress import Progress, add_quiet_flag


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="activation throughput vs jax.nn, PyTorch and the bandwidth limit",
        description="Time every jaxnn activation (forward and forward+backward) next to its "
                    "jax.nn equivalent, PyTorch (if installed) and a jitted copy (the memory "
                    "bandwidth limit), with fresh and with reused output buffers and under the "
                    "glibc malloc settings; write JSON, a markdown table and a PNG chart and "
                    "print the table. Needs a source checkout (the benchmarks/ directory).")
    p.add_argument("--quick", action="store_true",
                   help="smaller array, fewer repeats, float32 only (about a minute)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="directory for activations.json/.md/.png (default runs/bench-<time>)")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="JSON results path (default DIR/activations.json; .md and .png beside it)")
    p.add_argument("--activations", default=None,
                   help="comma-separated subset, e.g. relu,tanh (default: all)")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    add_quiet_flag(p)
    p.set_defaults(func=run)


def benchmarks_dir() -> Path:
    """``benchmarks/`` beside the ``jaxnn`` package (a source checkout / editable install)."""
    return Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(name: str):
    """Import ``benchmarks.<name>`` from :func:`benchmarks_dir` (without touching sys.path)."""
    bdir = benchmarks_dir()
    if not (bdir / f"{name}.py").is_file() or not (bdir / "__init__.py").is_file():
        raise CLIError(f"{bdir / (name + '.py')} not found: `jaxnn bench` needs the benchmarks/ "
                       "directory of a jaxnn source checkout (git clone, then pip install -e .)")
    pkg = sys.modules.get("benchmarks")
    if pkg is None:
        spec = importlib.util.spec_from_file_location(
            "benchmarks", bdir / "__init__.py", submodule_search_locations=[str(bdir)])
        pkg = importlib.util.module_from_spec(spec)
        sys.modules["benchmarks"] = pkg
        spec.loader.exec_module(pkg)
    elif Path(getattr(pkg, "__file__", "") or "").resolve().parent != bdir.resolve():
        raise CLIError(f"another module named 'benchmarks' is already imported "
                       f"({getattr(pkg, '__file__', '?')}); cannot load {bdir}")
    return importlib.import_module(f"benchmarks.{name}")


def run(args) -> int:
    bench = load_benchmark("activations")
    out_dir = args.out or os.path.join("runs", f"bench-{time.strftime('%Y%m%d-%H%M%S')}")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise CLIError(f"--out {out_dir!r} exists and is not a directory")
    json_path = args.json or os.path.join(out_dir, "activations.json")
    names = [n.strip() for n in args.activations.split(",") if n.strip()] \
        if args.activations else None
    if names is not None:
        from jaxnn import activations

        unknown = [n for n in names if n not in activations.names() and n != "gelu_tanh"]
        if unknown:
            raise CLIError(f"--activations: unknown {', '.join(unknown)}; valid: "
                           f"{', '.join([*activations.names(), 'gelu_tanh'])}")
    progress = Progress(total=None, desc="bench", unit="measurement", quiet=args.quiet)
    try:
        with progress, _progress_of(bench, progress):
            result = bench.run(quick=args.quick, tiny=args.tiny, json_path=json_path,
                               activations=names)
    except RuntimeError as e:
        raise CLIError(f"the benchmark failed: {e}") from None
    print(result["markdown"])
    paths = result["paths"]
    print(f"\nwrote {paths['json']}, {paths['markdown']} and {paths['png']}")
    return 0


@contextlib.contextmanager
def _progress_of(bench, progress: Progress):
    """Route the benchmark's progress lines (``benchmarks._common.log``, one per measurement)
    through ``progress`` while it runs. The malloc re-runs are subprocesses writing to the
    inherited stderr: when stderr carries lines that is kept (their lines arrive as they are
    measured); under a bar or ``--quiet`` their stderr goes to a temporary file instead, whose
    last line a failure names."""
    common = getattr(bench, "C", None)
    real_log = getattr(common, "log", None)
    real_child = getattr(bench, "run_child", None)

    def log(message: str) -> None:
        text = " ".join(str(message).split())
        progress.step(text, postfix=text[:60])

    def run_child(mode, argv):
        if progress.lines:
            return real_child(mode, argv)
        with _stderr_to_temp_file() as tmp:
            try:
                return real_child(mode, argv)
            except RuntimeError as e:
                tmp.seek(0)
                last = [ln for ln in tmp.read().decode(errors="replace").splitlines() if ln.strip()]
                raise RuntimeError(f"{e}: {last[-1].strip()}" if last else str(e)) from None

    if real_log is not None:
        common.log = log
    if real_child is not None:
        bench.run_child = run_child
    try:
        yield
    finally:
        if real_log is not None:
            common.log = real_log
        if real_child is not None:
            bench.run_child = real_child


@contextlib.contextmanager
def _stderr_to_temp_file():
    """File descriptor 2 (what subprocesses inherit) into a temporary file, then back."""
    import tempfile

    with tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            yield tmp
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
