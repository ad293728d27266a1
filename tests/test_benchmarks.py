"""Smoke tests of the benchmark scripts: each runs (``--quick --tiny``: tiny sizes, two repeats)
in a subprocess and writes valid JSON with the documented row schema, a markdown table and a
PNG chart. No timing is asserted anywhere: numbers from tiny sizes mean nothing."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MACHINE_KEYS = {"jax", "jaxlib", "numpy", "python", "cpu", "cores", "platform", "device_kind"}


def _run(args, tmp_path, json_name):
    out = tmp_path / json_name
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, *args, "--quick", "--tiny", "--json", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.with_suffix(".md").read_text().startswith("# ")
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads(out.read_text())
    assert MACHINE_KEYS <= set(result["machine"])
    assert result["rows"]
    return result, proc.stdout


#: Set by .ci/run once torch==2.13.0 is installed: the PyTorch rows must then be measured.
REQUIRE_TORCH = os.environ.get("JAXNN_REQUIRE_TORCH") == "1"


def _torch_measured(rows):
    """With :data:`REQUIRE_TORCH`, a measured (positive) torch row is among ``rows``."""
    if REQUIRE_TORCH:
        torch = [r for r in rows if r.get("impl") == "torch"]
        assert torch and all(_positive(r.get("examples_per_s", r.get("elements_per_s")))
                             for r in torch), "no measured PyTorch row"


def _positive(v):
    return isinstance(v, float | int) and math.isfinite(v) and v > 0


@pytest.mark.slow
def test_activations_benchmark_via_cli(tmp_path):
    # `jaxnn bench` loads benchmarks/activations.py by path and runs it: one run covers both.
    result, stdout = _run(["-m", "jaxnn", "bench", "--out", str(tmp_path)], tmp_path,
                          "activations.json")
    rows, main_malloc = result["rows"], result["machine"]["malloc"]
    assert "| activation | pass |" in stdout
    for r in rows:
        assert {"activation", "pass", "impl", "alloc", "dtype", "elements_per_s"} <= set(r)
        assert r["pass"] in ("fwd", "fwd_bwd") and r["alloc"] in ("fresh", "fixed")
        assert _positive(r["elements_per_s"])
    ew = [r for r in rows if r["case"] == "elementwise"]
    assert {r["impl"] for r in ew} <= {"jaxnn", "jax.nn", "torch", "bandwidth"}
    assert all(r["activation"] == "copy" for r in ew if r["impl"] == "bandwidth")
    seen = {(r["impl"], r["pass"], r["alloc"]) for r in ew if r["malloc"] == main_malloc}
    for impl in ("jaxnn", "jax.nn", "bandwidth"):
        for p in ("fwd", "fwd_bwd"):
            assert {(impl, p, "fresh"), (impl, p, "fixed")} <= seen
    mallocs = {r["malloc"] for r in ew}  # this process's setting and one re-run under another
    assert main_malloc in mallocs and len(mallocs) == 2 and mallocs <= {"default", "env", "mallopt"}
    assert any(r["case"] == "dense" for r in rows)
    _torch_measured(ew)


@pytest.mark.slow
def test_train_step_benchmark(tmp_path):
    rows = _run([str(ROOT / "benchmarks" / "train_step.py")], tmp_path, "train_step.json")[0]["rows"]
    impls = {r["impl"] for r in rows}
    assert {"jaxnn", "jaxnn_scan", "jaxnn_fit", "jax_optax"} <= impls
    assert impls <= {"jaxnn", "jaxnn_scan", "jaxnn_fit", "jax_optax", "flax", "equinox", "torch"}
    for r in rows:
        assert _positive(r["examples_per_s"]) and _positive(r["compile_s"])
    assert next(r for r in rows if r["impl"] == "jaxnn_fit")["loop"] == "scan"  # an MLP
    _torch_measured(rows)


@pytest.mark.slow
def test_train_step_convnet_benchmark(tmp_path):
    result, stdout = _run([str(ROOT / "benchmarks" / "train_step.py"), "--model", "convnet"],
                          tmp_path, "train_step_convnet.json")
    fit = next(r for r in result["rows"] if r["impl"] == "jaxnn_fit")
    assert fit["loop"] == result["fit_loop"] == "scan"
    mem = {m["impl"]: m for m in result["memory"]}
    assert {"jaxnn_fit", "jaxnn", "jaxnn_scan", "jax_optax", "torch"} == set(mem)
    for m in mem.values():
        assert m.get("status") == "not installed" or _positive(m["peak_mb"])
    assert "## Peak resident memory" in stdout and "jaxnn_fit (scan)" in stdout
    _torch_measured(result["rows"])
    if REQUIRE_TORCH:
        assert _positive(mem["torch"]["peak_mb"])


@pytest.mark.slow
def test_population_benchmark(tmp_path):
    rows = _run([str(ROOT / "benchmarks" / "population.py")], tmp_path, "population.json")[0]["rows"]
    ns = {r["n"] for r in rows}
    assert {(n, m) for n in ns for m in ("vmap_scan", "loop_scan", "loop_step")} == {
        (r["n"], r["mode"]) for r in rows}
    assert all(_positive(r["examples_per_s"]) for r in rows)


@pytest.mark.slow
def test_population_convnet_benchmark(tmp_path):
    result, stdout = _run([str(ROOT / "benchmarks" / "population.py"), "--model", "convnet"],
                          tmp_path, "population_convnet.json")
    assert {r["mode"] for r in result["rows"]} == {"vmap_scan", "loop_fit"}
    assert all(_positive(r["examples_per_s"]) and _positive(r["vs_loop_fit"])
               for r in result["rows"])
    assert "| torch | not measured" in stdout and result["targets"]


def _machine():
    return {"cpu": "x", "cores": 2, "simd": "", "platform": "cpu", "device_kind": "cpu",
            "python": "3", "jax": "0", "jaxlib": "0", "numpy": "0", "malloc": "default",
            "date": "today", "loadavg_at_start": [1.0, 1.0, 1.0], "optional": {}}


def test_train_step_table_names_missing_peers_and_checks_the_convnet_targets():
    """A peer that is not installed is a row saying so (never left out silently); the convnet
    targets are checked on what fit runs (jaxnn_fit), its memory against PyTorch's."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import train_step as ts

    s = ts.settings(False, True, "convnet")
    rows = [{"impl": i, "examples_per_s": e, "compile_s": 1.0, "step_ms": 1.0,
             "vs_jax_optax": v} for i, e, v in (("jaxnn", 80.0, 0.8), ("jax_optax", 100.0, 1.0),
                                                ("flax", 90.0, 0.9))]
    rows.insert(1, {**rows[0], "impl": "jaxnn_fit", "examples_per_s": 120.0,
                    "vs_jax_optax": 1.2, "loop": "step"})
    memory = [{"impl": "jaxnn_fit", "base_mb": 300.0, "rss_mb": 500.0, "peak_mb": 700.0,
               "step_mb": 200.0},
              {"impl": "torch", "status": "not installed"}]
    md = ts.markdown(_machine(), rows, s, ["equinox", "torch"], 100.0, memory)
    assert "| equinox | not installed |" in md and "| torch | not installed |" in md
    assert "| jaxnn_fit (step) |" in md and "| torch | not installed | - |" in md
    tg = {t["target"]: t for t in ts.targets(rows, "convnet", memory)}
    assert tg["jaxnn_fit ahead of the hand-written JAX+optax lax.conv step"]["value"] == 1.2
    assert tg["jaxnn_fit ahead of flax"]["met"]
    assert tg["jaxnn_fit >= 0.95x the best jaxnn row"]["value"] == 1.0
    assert not any("PyTorch" in t for t in tg)  # torch did not run: no target claimed
    memory[1] = {"impl": "torch", "base_mb": 500.0, "rss_mb": 600.0, "peak_mb": 650.0,
                 "step_mb": 50.0}
    tg = {t["target"]: t for t in ts.targets(rows, "convnet", memory)}
    got = tg["memory: jaxnn_fit peak over base <= 2x PyTorch's"]
    assert got["value"] == pytest.approx((700 - 300) / (650 - 500)) and not got["met"]
    key = "memory: jaxnn_fit peak over base <= the hand-written lax.conv step's"
    assert key not in tg  # no hand-written row measured
    memory.append({"impl": "jax_optax", "base_mb": 300.0, "rss_mb": 600.0, "peak_mb": 800.0,
                   "step_mb": 200.0})
    got = {t["target"]: t for t in ts.targets(rows, "convnet", memory)}[key]
    assert got["value"] == pytest.approx(400 / 500) and got["met"]


def test_bench_verb_without_benchmarks_dir(tmp_path, monkeypatch, capsys):
    from jaxnn import cli
    from jaxnn.cli import _bench

    monkeypatch.setattr(_bench, "benchmarks_dir", lambda: tmp_path / "benchmarks")
    assert cli.main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "needs the benchmarks/ directory" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flag", ["--activations=nope"])
def test_bench_verb_bad_flag(flag, capsys):
    from jaxnn import cli

    assert cli.main(["bench", flag]) == 2
    assert "unknown nope" in capsys.readouterr().err


def test_bench_verb_reports_progress_unless_quiet(tmp_path, monkeypatch, capfd):
    """The benchmark's own progress lines (benchmarks._common.log, one per measurement) become
    the verb's: "bench: ..." lines on stderr when it is not a terminal, none with --quiet (nor
    from the malloc re-run's subprocess); the table on stdout is the same either way."""
    import types

    from jaxnn import cli
    from jaxnn.cli import _bench

    common = types.SimpleNamespace(log=lambda msg: sys.stderr.write(f"raw {msg}\n"))
    real_log = common.log

    def run_child(mode, argv):  # as benchmarks/activations.py: a subprocess on inherited stderr
        fake.C.log(f"malloc {mode}: re-run")
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('child says\\n')"],
                       check=True)
        return []

    def run(*, quick, tiny, json_path, activations):
        fake.C.log("activations: 65,536 elements")
        fake.C.log("  float32 fresh fwd     relu       jaxnn 1.00 G elem/s")
        fake.run_child("env", [])
        return {"markdown": "| activation | pass |", "paths": {"json": "a.json",
                                                              "markdown": "a.md", "png": "a.png"}}

    fake = types.SimpleNamespace(C=common, run=run, run_child=run_child)
    monkeypatch.setattr(_bench, "load_benchmark", lambda name: fake)
    assert cli.main(["bench", "--tiny", "--out", str(tmp_path / "b")]) == 0
    out = capfd.readouterr()
    assert out.err.splitlines() == ["bench: activations: 65,536 elements",
                                    "bench: float32 fresh fwd relu jaxnn 1.00 G elem/s",
                                    "bench: malloc env: re-run",
                                    "child says"]  # the subprocess's lines as they come
    assert out.out.startswith("| activation | pass |") and "bench:" not in out.out
    assert common.log is real_log and fake.run_child is run_child  # given back afterwards

    assert cli.main(["bench", "--tiny", "--quiet", "--out", str(tmp_path / "q")]) == 0
    quiet = capfd.readouterr()
    assert quiet.err == "" and quiet.out == out.out


@pytest.mark.slow
def test_fit_loops_benchmark(tmp_path):
    result, stdout = _run([str(ROOT / "benchmarks" / "fit_loops.py")], tmp_path, "fit_loops.json")
    got = {(r["model"], r["loop"]): r for r in result["rows"]}
    assert {("digits_convnet", lp) for lp in ("scan", "step", "step_im2col")} | {
        ("digits_mlp", "scan"), ("digits_mlp", "step")} == set(got)
    assert got["digits_convnet", "scan"]["chosen"] == "scan"
    assert got["digits_mlp", "scan"]["chosen"] == "scan"
    assert all(_positive(r["examples_per_s"]) and _positive(r["vs_scan"]) for r in got.values())
    assert "(fit's choice)" in stdout


@pytest.mark.slow
def test_readme_times_benchmark(tmp_path):
    """The README's commands in fresh processes (tiny: one epoch of a small MLP): wall and CPU
    time of each, and the test accuracy its summary.json holds."""
    result, stdout = _run([str(ROOT / "benchmarks" / "readme_times.py"),
                           "--cases", "train,convnet"], tmp_path, "readme_times.json")
    rows = {r["case"]: r for r in result["rows"]}
    assert set(rows) == {"train", "convnet"}
    for r in rows.values():
        assert _positive(r["wall_s"]) and _positive(r["cpu_s"]) and r["runs"] == 1
        assert all(0.0 <= a <= 1.0 for a in r["test_acc"])
    assert rows["convnet"]["command"].startswith("jaxnn train --arch conv:32")
    assert "| `jaxnn train` |" in stdout


def test_search_targets_check_the_sqlite_study_on_its_own():
    """The fastest row may meet 20x in memory while the batched TPE with its study in SQLite
    (what `jaxnn search` runs) does not: that one is a target of its own."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import search as sb

    def row(impl, storage, vs, acc):
        return {"impl": impl, "storage": storage, "vs_optuna": vs, "best_val_acc": acc,
                "best_val_acc_at_optuna_time": acc}

    rows = [row("optuna_loop", "memory", 1.0, 0.95), row("jaxnn_tpe_p64", "memory", 23.0, 0.97),
            row("jaxnn_tpe_p64_sqlite", "sqlite", 16.5, 0.96)]
    tg = {t["target"]: t for t in sb.targets(rows)}
    assert tg["trials/s >= 20x the optuna loop (best impl)"]["met"]
    sqlite = tg["jaxnn_tpe_p64_sqlite (study in SQLite): trials/s >= 20x the optuna loop"]
    assert sqlite["value"] == 16.5 and not sqlite["met"]
    assert tg["jaxnn_tpe_p64_sqlite: best val_acc >= the optuna loop's"]["met"]
    assert sb.targets(rows[:1]) == []
