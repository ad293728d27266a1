"""The `jaxnn` command line: help, version, train, resume after kill -9, one-line errors."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import jaxnn
from jaxnn.cli import main

SMALL = ["--hidden", "16", "--epochs", "3", "--batch-size", "64", "--no-progress"]


def _cli(*args, timeout=240):
    """Run the console script in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "jaxnn", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_help_and_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert jaxnn.__version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--dataset", "--hidden", "--activation", "--init", "--bias-init", "--batch-norm",
                 "--dropout", "--loss", "--optimizer", "--lr", "--schedule", "--l2",
                 "--batch-size", "--epochs", "--preprocess", "--seed", "--out"):
        assert flag in out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    assert main(["train", *SMALL, "--out", str(out)]) == 0
    return out


def test_train_writes_a_complete_run_directory(run_dir, capsys):
    for name in ("config.json", "metrics.jsonl", "summary.json", "curves.png", "checkpoints"):
        assert (run_dir / name).exists(), name
    records = [json.loads(s) for s in open(run_dir / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for key in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"):
        assert key in records[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_done"] == 3 and summary["stopped_reason"] == "completed"
    assert 0.5 < summary["test_acc"] <= 1.0
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["hidden"] == "16" and config["epochs"] == 3


def test_refuses_to_overwrite_a_run(run_dir, capsys):
    assert main(["train", *SMALL, "--out", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flags, needle", [
    (["--activation", "nope"], "--activation"),
    (["--hidden", "16,x"], "--hidden"),
    (["--lr", "-1"], "--lr"),
    (["--dropout", "1.5"], "--dropout"),
    (["--optimizer", "lbfgs"], "--optimizer"),
    (["--dataset", "/no/such/file.npz"], "no/such/file.npz"),
    (["--loss", "l1_loss"], "--loss"),
])
def test_bad_flags_one_line_no_run_dir(tmp_path, capsys, flags, needle):
    out = tmp_path / "bad"
    assert main(["train", *SMALL, *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err
    assert not out.exists()


def test_argparse_errors_are_one_line():
    r = _cli("train", "--epochs", "many")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_diverging_run_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "div"
    code = main(["train", *SMALL, "--epochs", "6", "--lr", "1e4", "--optimizer", "sgd",
                 "--out", str(out)])
    assert code == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_reason"].startswith("diverged")
    assert summary["epochs_done"] < 6
    assert "diverged" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    flags = ["--hidden", "32", "--epochs", "6", "--batch-size", "16", "--dropout", "0.1",
             "--no-progress", "--seed", "3"]
    ref = tmp_path / "ref"
    assert _cli("train", *flags, "--out", str(ref)).returncode == 0
    expected = [json.loads(s)["train_loss"] for s in open(ref / "metrics.jsonl")]

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "jaxnn", "train", *flags, "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it mid-run, once two epochs are checkpointed
        steps = [d for d in os.listdir(run / "checkpoints")] if (run / "checkpoints").exists() \
            else []
        if len([d for d in steps if d.isdigit()]) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "summary.json").exists()
    r = _cli("resume", str(run), "--no-progress")
    assert r.returncode == 0, r.stderr
    got = [json.loads(s)["train_loss"] for s in open(run / "metrics.jsonl")]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert json.loads((run / "summary.json").read_text())["epochs_done"] == 6


def test_fast_malloc_is_applied_by_the_console_script_only_when_allowed():
    code = ("import os, jaxnn._malloc as m; print(m.apply_fast_malloc(), "
            "os.environ.get(m.MARKER))")
    run = lambda env: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     env={k: v for k, v in {**os.environ, **env}.items()
                                          if v is not None}).stdout.split()
    clean = {k: None for k in os.environ if k.startswith("MALLOC_") or k.startswith("JAXNN_")}
    assert run(clean) == ["True", "mallopt"]
    assert run({**clean, "JAXNN_DEFAULT_MALLOC": "1"}) == ["False", "None"]
    assert run({**clean, "MALLOC_ARENA_MAX": "2"}) == ["False", "None"]
