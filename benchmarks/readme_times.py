"""The README's times: wall and CPU time of the commands the README quotes, each a fresh process.

Cases (``--cases``, default all but ``tests``):

* ``train``: ``jaxnn train`` (the default digits MLP, 30 epochs, report page included);
* ``train_no_report``: the same with ``--no-report``;
* ``convnet``: ``jaxnn train --arch conv:32,conv:32,pool,conv:64,pool,fc:128 --batch-norm
  --no-report`` (the README's convnet);
* ``residual``: ``jaxnn train --arch "conv:16,res(conv:16,conv:16),pool,res(conv:16,conv:16),
  pool,fc:64" --no-report`` (the README's residual network);
* ``search``: ``jaxnn search --method random --trials 16 --epochs 10`` (the README's "16-trial x
  10-epoch random search"); ``ensemble``: ``jaxnn ensemble --members 5 --epochs 15``;
* ``tests``: the README's test command, ``python -m pytest -q -m "not slow" -n 2``, with an
  empty compilation cache of its own (a fresh clone's first run; minutes, so run once).

The ``jaxnn`` runs use the console script's persistent compilation cache in a directory of this
benchmark's own, filled by one untimed run of each case first (what every run after a user's
first sees). Cases run interleaved, round after round (the order rotating); the table gives the
median wall time, the median CPU time of the process and its children (user + system: more than
the wall time when both cores work, and what load from other processes does not change much),
and the accuracy each run printed (``summary.json``'s test accuracy; a search's best validation
accuracy from ``results.json``): every run, so a README accuracy is checked with its time. Rows: ``{"case", "command", "wall_s", "cpu_s", "runs",
"wall_runs", "cpu_runs", "test_acc"}``.

Usage::

    python benchmarks/readme_times.py [--quick] [--cases train,convnet,...] [--json PATH]
"""

from __future__ import annotations

import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/readme_times.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common as C  # noqa: E402
from benchmarks.startup import _env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONVNET = ["--arch", "conv:32,conv:32,pool,conv:64,pool,fc:128", "--batch-norm", "--no-report"]
RESIDUAL = ["--arch", "conv:16,res(conv:16,conv:16),pool,res(conv:16,conv:16),pool,fc:64",
            "--no-report"]
#: case -> the jaxnn train flags, or a whole jaxnn command line (``tests``: the README's test
#: command instead).
CASES = {"train": [], "train_no_report": ["--no-report"], "convnet": CONVNET,
         "residual": RESIDUAL,
         "search": ["search", "--method", "random", "--trials", "16", "--epochs", "10"],
         "ensemble": ["ensemble", "--members", "5", "--epochs", "15"], "tests": None}
VERBS = ("search", "ensemble")
DEFAULT_CASES = ("train", "train_no_report", "convnet", "residual")
TINY = ["--epochs", "1", "--hidden", "8"]


def command(case: str, out: Path, tiny: bool = False) -> list[str]:
    """The process ``case`` runs (``out``: its run directory)."""
    if CASES[case] is None:
        return [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-n", "2"]
    args = CASES[case] if CASES[case][:1] and CASES[case][0] in VERBS else ["train", *CASES[case]]
    if tiny:
        args = [args[0], "--epochs", "1"] + (["--hidden", "8"] if args[0] == "train" else [])
        args += {"search": ["--trials", "2"], "ensemble": ["--members", "2"]}.get(args[0], [])
    return [sys.executable, "-m", "jaxnn", args[0], "--quiet", *args[1:], "--out", str(out)]


def _label(case: str) -> str:
    if CASES[case] is None:
        return 'python -m pytest -q -m "not slow" -n 2'
    verb = CASES[case][:1] and CASES[case][0] in VERBS
    return " ".join(["jaxnn", *CASES[case]] if verb else ["jaxnn train", *CASES[case]])


def _accuracy(out: Path) -> float | None:
    """The test accuracy a run printed (``summary.json``: ``test_acc``, an ensemble's
    ``ensemble_test_acc``), or a search's best validation accuracy (``results.json``)."""
    summary, results = out / "summary.json", out / "results.json"
    if summary.exists():
        d = json.loads(summary.read_text())
        return d.get("test_acc", d.get("ensemble_test_acc"))
    if results.exists():
        return (json.loads(results.read_text()).get("best") or {}).get("val_acc")
    return None


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def time_case(case: str, out: Path, env: dict[str, str], tiny: bool = False,
              timeout: float = 1800.0) -> tuple[float, float, float | None]:
    """``(wall_s, cpu_s, test_acc)`` of one fresh process of ``case``."""
    cmd = command(case, out, tiny)
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-800:]}")
    return wall, cpu, (_accuracy(out) if CASES[case] is not None else None)


def measure(cases: list[str], repeats: int, tiny: bool = False) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="jaxnn-readme-times-"))
    try:
        cache = work / "cache"
        train_env = _env(JAXNN_CACHE=str(cache))
        runs: dict[str, list[tuple[float, float, float | None]]] = {c: [] for c in cases}
        for c in cases:
            if CASES[c] is not None:
                C.log(f"readme_times: {c}: filling the compilation cache (untimed run)")
                time_case(c, work / f"fill-{c}", train_env, tiny)
        for r in range(repeats):
            k = r % len(cases)
            for c in cases[k:] + cases[:k]:
                if CASES[c] is None:
                    if r:  # minutes: one cold run
                        continue
                    env = _env(JAX_COMPILATION_CACHE_DIR=str(work / "tests-cache"),
                               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
                else:
                    env = train_env
                runs[c].append(time_case(c, work / f"{c}-{r}", env, tiny))
                w, cpu, acc = runs[c][-1]
                C.log(f"readme_times: round {r + 1}/{repeats} {c}: {w:.1f} s wall, "
                      f"{cpu:.1f} s CPU" + (f", test accuracy {acc:.4f}" if acc is not None
                                            else ""))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [{"case": c, "command": _label(c),
             "wall_s": statistics.median(w for w, _, _ in runs[c]),
             "cpu_s": statistics.median(cpu for _, cpu, _ in runs[c]),
             "runs": len(runs[c]), "wall_runs": [w for w, _, _ in runs[c]],
             "cpu_runs": [cpu for _, cpu, _ in runs[c]],
             "test_acc": [a for _, _, a in runs[c]] if CASES[c] is not None else None}
            for c in cases]


def markdown(machine: dict, rows: list[dict]) -> str:
    table = [[f"`{r['command']}`", float(f"{r['wall_s']:.3g}"), float(f"{r['cpu_s']:.3g}"),
              r["runs"], ", ".join(f"{a:.4f}" for a in r["test_acc"] if a is not None)
              if r["test_acc"] else "-"]
             for r in rows]
    table.append(["torch", "not measured (the README's own commands)", "-", "-", "-"])
    return "\n".join([
        "# The README's times", "", f"Machine: {C.machine_line(machine)}", "",
        "Fresh processes, cases interleaved round after round; medians over the rounds. *CPU s*: "
        "user + system time of the process and its children. `jaxnn train` runs with the "
        "console script's compilation cache warm (filled by one untimed run of each case); the "
        "test command with an empty cache of its own (a fresh clone), once.", "",
        C.markdown_table(table, ["command", "wall s", "CPU s", "runs", "accuracy"])]) + "\n"


def run(*, quick: bool = False, tiny: bool = False, json_path, cases=DEFAULT_CASES) -> dict:
    cases = list(cases)
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"readme_times: unknown case(s) {unknown}; valid: {', '.join(CASES)}")
    repeats = 1 if tiny else 2 if quick else 3
    machine = C.machine_info()
    rows = measure(cases, repeats, tiny)
    md = markdown(machine, rows)
    jpath, mdpath = C.write_results(json_path, machine, rows, md,
                                    settings={"repeats": repeats, "cases": cases, "tiny": tiny})
    png = jpath.with_suffix(".png")
    C.bar_chart(png, [{"title": "README commands (fresh processes)",
                       "groups": [r["case"] for r in rows],
                       "series": {"wall": [r["wall_s"] for r in rows],
                                  "CPU": [r["cpu_s"] for r in rows]}}],
                xlabel="seconds (median)",
                suptitle=f"{machine['cpu']}, {machine['cores']} cores, jax {machine['jax']}")
    return {"machine": machine, "rows": rows, "markdown": md,
            "paths": {"json": str(jpath), "markdown": str(mdpath), "png": str(png)}}


def main(argv: list[str] | None = None) -> int:
    p = C.parser("The README's times: its commands in fresh processes, wall and CPU time.",
                 "readme_times.json")
    p.add_argument("--cases", default=",".join(DEFAULT_CASES),
                   help=f"comma-separated, of: {', '.join(CASES)} (default: %(default)s)")
    args = p.parse_args(argv)
    out = run(quick=args.quick, tiny=C.tiny_requested(args), json_path=args.json,
              cases=[c for c in args.cases.split(",") if c])
    print(out["markdown"])
    C.log(f"wrote {out['paths']['json']}, {out['paths']['markdown']}, {out['paths']['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
