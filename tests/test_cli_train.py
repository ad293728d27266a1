"""`jaxnn train` and `jaxnn resume` as a user's bad day sees them: bad numbers, foreign config
files, unwritable places, a second process, kill -9 at any moment, corrupt checkpoints.

Refusals run the CLI in-process (``jaxnn.cli.main``: the same code path as the console script
after start-up); promises about processes (locks, kills) run the console script in a subprocess.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxnn.cli import main

TINY = ["--hidden", "8", "--batch-size", "32", "--preprocess", "standardize"]


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """A small separable 3-class problem as a .npz (the CLI's own data format)."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 6)) * 3
    y = rng.integers(0, 3, size=240)
    x = (centers[y] + rng.normal(size=(240, 6))).astype(np.float32)
    path = tmp_path_factory.mktemp("data") / "blobs.npz"
    np.savez(path, x=x, y=y)
    return str(path)


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [s for s in err.strip().splitlines() if s]
    assert len(lines) == 1 and "error:" in lines[0], err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def _metrics(run):
    return [json.loads(s) for s in open(os.path.join(run, "metrics.jsonl"))]


# --------------------------------------------------------------------------- bad numbers
@pytest.mark.parametrize("flag,value,needle", [
    ("--l2", "nan", "--l2"), ("--l2", "inf", "--l2"), ("--bias-init", "nan", "--bias-init"),
    ("--lr", "nan", "--lr"), ("--dropout", "nan", "--dropout"), ("--patience", "0", "--patience"),
    ("--patience", "-1", "--patience"), ("--keep-checkpoints", "0", "--keep-checkpoints"),
])
def test_non_finite_or_meaningless_flags_are_refused_before_writing(capsys, tmp_path, npz, flag,
                                                                    value, needle):
    out = tmp_path / "run"
    code, _, err = _cli(capsys, "train", "--dataset", npz, *TINY, "--out", str(out), flag, value)
    _one_line_error(code, err, needle)
    assert not out.exists()


def test_huge_data_is_a_data_problem_not_the_learning_rate(capsys, tmp_path, npz):
    d = np.load(npz)
    path = tmp_path / "huge.npz"
    np.savez(path, x=np.full_like(d["x"], 3e38), y=d["y"])
    out = tmp_path / "run"
    code, _, err = _cli(capsys, "train", "--dataset", str(path), *TINY, "--preprocess", "none",
                        "--out", str(out), "--epochs", "1")
    _one_line_error(code, err, "initial loss")
    assert "learning rate" not in err
    assert not out.exists()


def test_a_nan_model_is_diverged_not_completed(capsys, tmp_path, npz):
    out = tmp_path / "run"
    code, stdout, err = _cli(capsys, "train", "--dataset", npz, *TINY, "--out", str(out),
                             "--loss", "multiclass_hinge_loss", "--lr", "1e20", "--epochs", "3")
    assert code == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_reason"].startswith("diverged at epoch 1")
    assert summary["epochs_done"] == 0
    assert "completed" not in stdout
    assert "epoch  train_loss" not in stdout  # no empty table
    assert err.count("diverged at epoch 1") == 1 and "diverged at" not in stdout  # said once
    # What it says is true: the initial state is what the checkpoints hold.
    assert os.listdir(out / "checkpoints") == ["0"] and "epoch 0" in err


# --------------------------------------------------------------------------- places
def test_unwritable_out_is_one_line_and_nothing_runs(capsys, tmp_path, npz):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (str(blocker / "run"), "/proc/self/jaxnn-run"):
        code, _, err = _cli(capsys, "train", "--dataset", npz, *TINY, "--out", out)
        _one_line_error(code, err, "--out")


def test_default_run_names_do_not_collide(capsys, tmp_path, npz, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt: "20260101-000000")
    os.makedirs("runs/train-20260101-000000")  # taken by a run started in the same second
    code, _, err = _cli(capsys, "train", "--dataset", npz, *TINY, "--epochs", "1")
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "runs")) == ["train-20260101-000000",
                                                     "train-20260101-000000-2"]


@pytest.fixture(scope="module")
def good_config(tmp_path_factory, npz):
    """The config.json of a real (one-epoch) run."""
    run = tmp_path_factory.mktemp("good") / "run"
    assert main(["train", "--dataset", npz, *TINY, "--out", str(run), "--epochs", "1",
                 "--quiet"]) == 0
    return json.loads((run / "config.json").read_text())


@pytest.mark.parametrize("config,needle", [
    ({"foo": 1}, "key 'dataset': missing"), ("drop:lr", "key 'lr': missing"), ("set:lr=abc", "'lr'"),
    ("set:epochs=4.5", "'epochs'"), ("set:hidden=[8]", "'hidden'"), ("set:foo=1", "unknown key"),
    ("text:{not json", "not valid JSON"), ("set:l2=NaN", "'l2'"),
])
def test_a_foreign_config_is_one_line_naming_file_and_key(capsys, tmp_path, good_config, config,
                                                          needle):
    run = tmp_path / "run"
    run.mkdir()
    path = run / "config.json"
    good = good_config
    if isinstance(config, dict):
        path.write_text(json.dumps(config))
    elif config.startswith("text:"):
        path.write_text(config[5:])
    elif config.startswith("drop:"):
        path.write_text(json.dumps({k: v for k, v in good.items() if k != config[5:]}))
    else:
        k, v = config[4:].split("=")
        path.write_text(json.dumps({**good, k: json.loads(v) if v not in ("abc",) else v})
                        .replace('"NaN"', "NaN"))
    code, _, err = _cli(capsys, "resume", str(run))
    _one_line_error(code, err, str(path), needle)


# --------------------------------------------------------------------------- resume
def test_resume_after_a_corrupt_newest_checkpoint_continues_identically(capsys, tmp_path, npz):
    ref, run = tmp_path / "ref", tmp_path / "run"
    code, stdout, err = _cli(capsys, "train", "--dataset", npz, *TINY, "--out", str(ref),
                             "--epochs", "4")
    assert code == 0, err
    rows = [s.split()[0] for s in stdout.splitlines() if s.strip()[:1].isdigit()]
    assert rows == ["1", "2", "3", "4"]  # few epochs: every one in the table, no "..."
    code, _, err = _cli(capsys, "train", "--dataset", npz, *TINY, "--out", str(run),
                        "--epochs", "4")
    assert code == 0, err
    # Pretend the run was killed after epoch 3's checkpoint, which the crash then damaged.
    os.remove(run / "summary.json")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n")
    for root, _dirs, files in os.walk(run / "checkpoints" / "4"):
        for f in files:
            with open(os.path.join(root, f), "r+b") as fh:
                fh.truncate(7)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "devices": 4}))  # as if run on 4 devices
    code, _, err = _cli(capsys, "resume", str(run), "--devices", "1")
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["devices"] == 1  # what resume used
    notes = [s for s in err.splitlines() if "skipped checkpoint" in s]
    assert len(notes) == 1 and "checkpoint 4" in notes[0]
    for a, b in zip(_metrics(ref), _metrics(run), strict=True):
        assert a["epoch"] == b["epoch"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
    assert json.loads((run / "summary.json").read_text())["epochs_done"] == 4


# --------------------------------------------------------------------------- processes
def _jaxnn(*argv, **kw):
    return subprocess.Popen([sys.executable, "-m", "jaxnn", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(path, timeout=120.0):
    t0 = time.monotonic()
    while not os.path.exists(path):
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(path)
        time.sleep(0.05)


@pytest.mark.slow
def test_a_second_process_on_a_live_run_is_refused(tmp_path, npz):
    run = tmp_path / "run"
    first = _jaxnn("train", "--dataset", npz, *TINY, "--out", str(run), "--epochs", "100000",
                   "--quiet")
    try:
        _wait_for(run / "config.json")
        for argv in (["resume", str(run)], ["train", "--dataset", npz, "--out", str(run)]):
            second = subprocess.run([sys.executable, "-m", "jaxnn", *argv], capture_output=True,
                                    text=True, timeout=300)
            assert second.returncode == 2, second.stderr
            assert f"in use by process {first.pid}" in second.stderr
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
def test_progress_lines_arrive_while_it_runs_when_piped(tmp_path, npz):
    """Not a terminal: one flushed line per epoch, readable while the run goes on."""
    p = _jaxnn("train", "--dataset", npz, *TINY, "--out", str(tmp_path / "r"),
               "--epochs", "100000")
    try:
        first = p.stderr.readline()
        second = p.stderr.readline()
        assert p.poll() is None  # still running: the lines were flushed as they happened
        assert first.startswith("epoch 1/100000") and second.startswith("epoch 2/100000")
        assert "val_acc" in first
    finally:
        p.kill()
        p.communicate()
    quiet = _jaxnn("train", "--dataset", npz, *TINY, "--out", str(tmp_path / "q"),
                   "--epochs", "2", "--quiet")
    _, err = quiet.communicate(timeout=300)
    assert quiet.returncode == 0 and "epoch 1/" not in err


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path, npz):
    """The random-kill loop: kill -9 at random moments (also during checkpoint saves), resume,
    and compare every epoch's losses with an uninterrupted run's."""
    epochs = 12
    args = ["--dataset", npz, *TINY, "--epochs", str(epochs), "--keep-checkpoints", "2",
            "--quiet"]
    ref = subprocess.run([sys.executable, "-m", "jaxnn", "train", *args, "--out",
                          str(tmp_path / "ref")], capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "run"
    rng = random.Random(0)
    kills, verb = 0, ["train", *args, "--out", str(run)]
    for _ in range(40):
        p = _jaxnn(*verb)
        if os.path.exists(run / "config.json"):
            # Kill while it trains: somewhere after start-up, often inside a checkpoint save.
            time.sleep(rng.uniform(1.0, 4.0))
        else:
            _wait_for(run / "config.json")
            time.sleep(rng.uniform(0.0, 1.0))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        out, err = p.communicate()
        assert "Traceback" not in err, err
        verb = ["resume", str(run), "--quiet"]
        if os.path.exists(run / "summary.json"):
            break
    else:
        pytest.fail("the run never finished")
    assert kills >= 1
    want = [json.loads(s) for s in open(tmp_path / "ref" / "metrics.jsonl")]
    got = _metrics(run)
    assert [r["epoch"] for r in got] == list(range(1, epochs + 1))
    for a, b in zip(want, got, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["val_acc"] == pytest.approx(b["val_acc"], rel=1e-6)


def test_tensorboard_events_follow_the_metrics(capsys, tmp_path, npz):
    pytest.importorskip("tensorboardX")
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    run = tmp_path / "run"
    code, _, err = _cli(capsys, "train", "--dataset", npz, *TINY, "--out", str(run),
                        "--epochs", "2", "--tensorboard")
    assert code == 0, err
    acc = ea.EventAccumulator(str(run / "tensorboard"), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    got = {e.step: e.value for e in acc.Scalars("train/loss")}
    for rec in _metrics(run):
        assert got[rec["epoch"]] == pytest.approx(rec["train_loss"], rel=1e-6)


@pytest.mark.slow
def test_a_convnet_run_resumes_with_its_arch(capsys, tmp_path):
    """--arch is recorded in config.json and rebuilt by resume; digits keep their 8x8x1 shape."""
    run = tmp_path / "run"
    arch = ["--arch", "conv:4,pool,fc:8", "--batch-norm", "--batch-size", "64"]
    code, _, err = _cli(capsys, "train", *arch, "--out", str(run), "--epochs", "1")
    assert code == 0, err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["arch"] == "conv:4,pool,fc:8"
    (run / "config.json").write_text(json.dumps({**cfg, "epochs": 2}))
    os.remove(run / "summary.json")
    code, _, err = _cli(capsys, "resume", str(run))
    assert code == 0, err
    assert [r["epoch"] for r in _metrics(run)] == [1, 2]
    code, _, err = _cli(capsys, "train", *arch, "--hidden", "16", "--out", str(tmp_path / "b"))
    _one_line_error(code, err, "--arch")
    code, _, err = _cli(capsys, "train", "--arch", "conv:x", "--out", str(tmp_path / "c"))
    _one_line_error(code, err, "--arch")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
