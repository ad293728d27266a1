"""``jaxnn search`` and ``jaxnn ensemble``: the study they keep, the files they write, the
commands that retrain a trial, and bad flags."""

import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import optuna
import pytest

from jaxnn import data
from jaxnn.cli import main

TINY = ["--hidden", "8", "--epochs", "2", "--batch-size", "128"]


def _run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _results(out):
    return json.loads((out / "results.json").read_text())


def _study(out, name="jaxnn-search"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A TPE search under a cosine schedule with a searched momentum, run once."""
    out = tmp_path_factory.mktemp("search") / "s"
    argv = ["search", "--trials", "4", "--population", "4", "--pruner", "none", "--schedule",
            "cosine", "--momentum-range", "0.5,0.95", *TINY, "--out", str(out)]
    rc = main(argv)
    return rc, out, argv


def test_search_writes_results_a_study_and_a_plot(searched):
    rc, out, _ = searched
    assert rc == 0
    res = _results(out)
    assert res["method"] == "tpe" and len(res["trials"]) == 4
    for t in res["trials"]:
        assert set(t["params"]) == {"learning_rate", "l2", "momentum"}
        assert 1e-3 <= t["params"]["learning_rate"] <= 1.0 and 0.5 <= t["params"]["momentum"]
        assert t["status"] in ("ok", "diverged")
        assert t["command"].startswith("jaxnn train ")
    losses = [t["val_loss"] for t in res["trials"] if t["status"] != "diverged"]
    assert losses == sorted(losses) and res["best"] == res["trials"][0]
    assert res["space"]["learning_rate"] == {"loguniform": [1e-3, 1.0]}
    study = _study(out)  # optuna reads it, with every trial
    assert sorted(t.number for t in study.trials) == sorted(t["number"] for t in res["trials"])
    for t in res["trials"]:
        ft = study.trials[t["number"]]
        assert ft.params == t["params"] and ft.user_attrs["command"] == t["command"]
    assert (out / "search.png").stat().st_size > 1000
    assert json.loads((out / ".jaxnn-run").read_text())["verb"] == "search"  # rundir's marker


def test_best_trial_command_retrains_it(searched, tmp_path, capsys):
    _, out, _ = searched
    best = _results(out)["best"]
    argv = shlex.split(best["command"])
    assert argv[:2] == ["jaxnn", "train"] and "--schedule" in argv and "--momentum" in argv
    rc = main([*argv[1:], "--out", str(tmp_path / "r"), "--quiet"])
    capsys.readouterr()
    assert rc == 0
    last = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()][-1]
    # Same initial weights, data order and hyperparameters: the same numbers up to float32
    # rounding (vmapped vs plain matmuls over 20 steps); an example whose two top scores lie
    # within that rounding may flip, hence one example of slack on the accuracy.
    assert last["val_loss"] == pytest.approx(best["val_loss"], rel=1e-4)
    n_val = data.load("digits").x_val.shape[0]
    assert abs(last["val_acc"] - best["val_acc"]) <= 1 / n_val + 1e-6


@pytest.mark.slow  # the fast suite's time budget; CI runs it with the slow suite
def test_the_same_command_continues_the_study(searched, capsys):
    rc, out, argv = searched
    before = {t["number"]: t for t in _results(out)["trials"]}
    grown = [a if a != "4" or argv[i - 1] != "--trials" else "6" for i, a in enumerate(argv)]
    rc, stdout, _ = _run(grown, capsys)
    assert rc == 0
    res = _results(out)
    assert sorted(t["number"] for t in res["trials"]) == list(range(6))
    assert res["trained_now"] == 2
    after = {t["number"]: t for t in res["trials"]}
    assert all(after[n] == t for n, t in before.items())  # told trials are kept as they were
    # One flushed progress line per round (the output is not a terminal here).
    assert [line.split(":")[0] for line in stdout.splitlines() if line.startswith("round")] == [
        "round 1"]
    assert "6/6 trials" in stdout and "retrain it: jaxnn train" in stdout
    rc, stdout, _ = _run([*grown, "--quiet"], capsys)  # complete: nothing to train, no progress
    assert rc == 0 and _results(out)["trained_now"] == 0 and "round" not in stdout


@pytest.mark.slow
def test_categorical_choices_group_and_reach_the_command(tmp_path, capsys):
    out = tmp_path / "g"
    tb = ["--tensorboard"] if importlib.util.find_spec("tensorboardX") else []
    rc, stdout, _ = _run(["search", "--method", "grid", "--trials", "2", "--lr-range", "none",
                          "--l2-range", "none", "--space", "activation=relu|tanh", *TINY,
                          "--out", str(out), *tb], capsys)
    assert rc == 0
    res = _results(out)
    if tb:  # one HParams session per trial
        assert len([d for d in os.listdir(out / "tensorboard") if d.startswith("trial-")]) == 2
    assert sorted(t["params"]["activation"] for t in res["trials"]) == ["relu", "tanh"]
    for t in res["trials"]:
        argv = shlex.split(t["command"])
        assert argv[argv.index("--activation") + 1] == t["params"]["activation"]
        assert float(argv[argv.index("--lr") + 1]) == 0.05  # the fixed --lr default
    assert "(2 populations" in stdout


@pytest.mark.slow
def test_every_trial_diverged_exits_1(tmp_path, capsys):
    out = tmp_path / "d"
    rc, stdout, err = _run(["search", "--loss", "multiclass_hinge_loss", "--lr-range",
                            "1e19,1e20", "--trials", "2", "--population", "2", *TINY, "--out",
                            str(out)], capsys)
    assert rc == 1
    assert err.count("\n") == 1 and "every trial diverged" in err and "Traceback" not in err
    res = _results(out)
    assert [t["status"] for t in res["trials"]] == ["diverged", "diverged"]
    assert res["best"] is None and "best:" not in stdout


@pytest.mark.slow  # the fast suite's time budget; CI runs it with the slow suite
def test_ensemble_writes_summary(tmp_path, capsys):
    out = tmp_path / "e"
    rc, stdout, _ = _run(["ensemble", "--members", "3", *TINY, "--out", str(out)], capsys)
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert len(s["member_test_acc"]) == 3 and all(0 <= a <= 1 for a in s["member_test_acc"])
    assert 0 <= s["ensemble_test_acc"] <= 1
    assert s["mean_member_test_acc"] == pytest.approx(sum(s["member_test_acc"]) / 3)
    assert s["status"] == ["ok"] * 3
    assert "ensemble" in stdout and f"{s['ensemble_test_acc']:.4f}" in stdout
    # One progress line per epoch (TINY trains 2), printed as each epoch ends.
    assert [ln.split(":")[0] for ln in stdout.splitlines() if ln.startswith("epoch ")] == [
        "epoch 1/2", "epoch 2/2"]



def test_ensemble_of_nan_models_exits_1(tmp_path, capsys):
    out = tmp_path / "n"
    rc, _, err = _run(["ensemble", "--members", "2", "--loss", "multiclass_hinge_loss", "--lr",
                       "1e20", *TINY, "--out", str(out)], capsys)
    assert rc == 1 and "every member diverged" in err
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == ["diverged", "diverged"] and s["ensemble_test_acc"] is None


@pytest.mark.parametrize("argv, match", [
    (["search", "--trials", "0"], "--trials"),
    (["search", "--population", "0"], "--population"),
    (["search", "--method", "grid", "--trials", "3"], "--trials >= 4"),
    (["search", "--lr-range", "1,0.1"], "--lr-range"),
    (["search", "--lr-range", "abc"], "--lr-range"),
    (["search", "--l2-range", "0,0.1"], "--l2-range"),
    (["search", "--momentum-range", "0.9,0.5"], "--momentum-range"),
    (["search", "--lr-range", "none", "--l2-range", "none"], "nothing to search"),
    (["search", "--method", "bayes"], "--method"),
    (["search", "--stages", "0", "--method", "coarse-to-fine"], "--stages"),
    (["search", "--top-k", "99"], "--top-k"),
    (["search", "--space", "epochs=1|2"], "cannot search 'epochs'"),
    (["search", "--space", "activation"], "NAME=A|B"),
    (["search", "--space", "activation=relu|swoosh"], "--activation"),
    (["search", "--space", "arch=fc:8|conv:4,pool,pool,pool,pool"], "--arch"),  # no fit
    (["search", "--space", "l2=0|x", "--l2-range", "none"], "expected numbers"),
    (["search", "--storage", "nosuchdb://x"], "--storage"),
    (["search", "--momentum-range", "1.5,2.5"],
     "--momentum-range 1.5,2.5: momentum must be in [0, 1)"),
    (["search", "--space", "momentum=2"], "--space momentum=2: momentum must be in [0, 1)"),
    (["search", "--space", "lr=0.1|-1", "--lr-range", "none"], "--space lr=0.1|-1: learning_rate"),
    (["search", "--weight-decay-range", "-1,1", "--optimizer", "adamw"], "--weight-decay-range"),
    (["search", "--grace-period", "0"], "--grace-period"),
    (["search", "--hidden", "8,x"], "--hidden"),
    (["search", "--epochs", "0"], "--epochs"),
    (["ensemble", "--members", "0"], "--members"),
    (["ensemble", "--optimizer", "lion"], "--optimizer"),
])
def test_bad_flags_one_line_exit_2_nothing_written(tmp_path, capsys, argv, match):
    out = tmp_path / "bad"
    try:
        rc = main([*argv, "--out", str(out)])
    except SystemExit as e:  # argparse's own checks (e.g. --method choices)
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and match in err and "Traceback" not in err
    assert not os.path.exists(out)


def test_refuses_a_directory_holding_another_run(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "config.json").write_text("{}")
    rc, _, err = _run(["search", "--trials", "2", *TINY, "--out", str(out)], capsys)
    assert rc == 2 and "not a search" in err
    assert sorted(os.listdir(out)) == ["config.json"]


@pytest.mark.parametrize("files, match", [
    ({"study.db": "my own database"}, "not a jaxnn search directory"),
    ({"search.png": "my own picture"}, "not a jaxnn search directory"),
    ({".jaxnn-run": '{"verb": "train", "version": "0.1.0"}'}, "holds a jaxnn train run"),
])
def test_never_writes_over_files_jaxnn_did_not_write(tmp_path, capsys, files, match):
    """An existing --out must be empty or a jaxnn search directory (the run-directory rules):
    a user's own study.db or search.png is never replaced nor given Optuna's tables."""
    out = tmp_path / "mine"
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    rc, _, err = _run(["search", "--trials", "2", *TINY, "--out", str(out)], capsys)
    assert rc == 2 and match in err and err.count("\n") == 1
    assert {p.name: p.read_text() for p in out.iterdir()} == files


def test_a_study_of_another_search_is_refused_before_anything_is_written(searched, tmp_path,
                                                                         capsys):
    _, out, argv = searched
    other = tmp_path / "other"
    storage = f"sqlite:///{out / 'study.db'}"

    def files():  # SQLite's own journal files of study.db come and go with its connections
        return sorted(f for f in os.listdir(out) if not f.endswith(("-wal", "-shm")))

    before = files()
    rc, _, err = _run(["search", "--trials", "4", "--population", "4", *TINY, "--storage",
                       storage, "--out", str(other)], capsys)
    assert rc == 2 and "holds a different search" in err and err.count("\n") == 1
    assert not other.exists()
    # The same directory with another study would replace its results.json: refused too.
    rc, _, err = _run([*argv[:-2], "--study-name", "other", "--out", str(out)], capsys)
    assert rc == 2 and "holds the results of study 'jaxnn-search'" in err
    assert files() == before


def test_a_search_directory_from_before_markers_is_continued_and_marked(searched, tmp_path,
                                                                        capsys):
    _, out, argv = searched
    old = tmp_path / "old"
    old.mkdir()
    import sqlite3

    # As written before run-directory markers: a study.db and a search's results.json.
    with sqlite3.connect(out / "study.db") as src, sqlite3.connect(old / "study.db") as dst:
        src.backup(dst)  # the study as it stands, write-ahead log included
    (old / "results.json").write_bytes((out / "results.json").read_bytes())
    done = len(_results(old)["trials"])
    rc, _, err = _run([*argv[:-2], "--out", str(old)], capsys)
    assert rc == 0, err
    assert json.loads((old / ".jaxnn-run").read_text())["verb"] == "search"
    assert _results(old)["trained_now"] == 0 and len(_results(old)["trials"]) == done


def test_postgresql_without_its_driver_names_the_extra(tmp_path, capsys, monkeypatch):
    from jaxnn.search import _storage

    monkeypatch.setattr(_storage.importlib.util, "find_spec", lambda name: None)
    out = tmp_path / "pg"
    rc, _, err = _run(["search", "--trials", "2", *TINY, "--storage",
                       "postgresql://me:hunter22@db.example/jaxnn", "--out", str(out)], capsys)
    assert rc == 2 and err.count("\n") == 1
    assert err == ("jaxnn search: error: --storage postgresql://me:***@db.example/jaxnn: a "
                   "PostgreSQL storage needs the psycopg driver: pip install 'jaxnn[postgres]'\n")
    assert not out.exists()


# --------------------------------------------------------------------------- processes
def _cli(*argv):
    return [sys.executable, "-m", "jaxnn", *argv]


def _finished(study):
    return [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                                   optuna.trial.TrialState.PRUNED)]


@pytest.mark.slow
def test_two_processes_share_one_study_without_duplicates(tmp_path):
    out = tmp_path / "shared"
    argv = _cli("search", "--trials", "8", "--population", "2", "--quiet", *TINY,
                "--out", str(out))
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    study = _study(out)
    done = _finished(study)
    # Each worker asks only for trials neither finished nor running live in the other, and keeps
    # an asked trial only if fewer than 8 finished-or-live trials have lower numbers: exactly 8.
    assert len(done) == 8
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    params = [tuple(sorted(t.params.items())) for t in done]
    assert len(set(params)) == len(params)  # per-trial-number seeds: no point drawn twice


@pytest.mark.slow
def test_a_killed_search_loses_at_most_its_round_in_flight(tmp_path):
    out = tmp_path / "killed"
    argv = _cli("search", "--trials", "6", "--population", "2", "--pruner", "none", *TINY,
                "--grace-period", "3", "--out", str(out))
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()  # the first round is told
    assert line.startswith("round 1: 2/6")
    time.sleep(0.5)
    p.send_signal(signal.SIGKILL)
    p.wait()
    told = {t.number: t.params for t in _finished(_study(out))}
    assert len(told) >= 2
    rc = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert rc.returncode == 0, rc.stderr
    study = _study(out)
    done = {t.number: t.params for t in _finished(study)}
    assert len(done) == 6 and all(done[n] == p for n, p in told.items())
    running = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert len(running) <= 2  # the round killed in flight, not counted


@pytest.mark.slow  # the fast suite trains a convnet group in the arch search below
def test_a_convnet_search_trains_images_and_retrains_by_command(tmp_path, capsys):
    """A search over a convnet (--arch with convolutions keeps digits as 8x8x1 images)."""
    out = tmp_path / "conv"
    rc, _, err = _run(["search", "--method", "random", "--trials", "2", "--population", "2",
                       "--arch", "conv:4,pool,fc:8", "--epochs", "1", "--batch-size", "128",
                       "--pruner", "none", "--out", str(out)], capsys)
    assert rc == 0, err
    res = _results(out)
    assert len(res["trials"]) == 2 and {t["status"] for t in res["trials"]} == {"ok"}
    for t in res["trials"]:
        argv = shlex.split(t["command"])
        assert argv[argv.index("--arch") + 1] == "conv:4,pool,fc:8"
        assert 0.0 <= t["val_acc"] <= 1.0


@pytest.mark.slow
def test_a_search_over_mlp_and_convnet_archs_trains_each_on_its_own_data(tmp_path, capsys):
    """The issue's command: each arch group is built from the config, so the convnet gets
    8x8x1 images and the MLP flat vectors (it failed with `x must have shape [batch, 8, 8, 1]`)."""
    out = tmp_path / "archs"
    rc, stdout, err = _run(["search", "--space", "arch=fc:16|conv:4,pool,fc:16", "--trials",
                            "4", "--population", "2", "--epochs", "1", "--hidden", "8",
                            "--batch-size", "128", "--method", "grid", "--lr-range",
                            "0.05,0.2", "--l2-range", "none", "--pruner", "none", "--out",
                            str(out)], capsys)
    assert rc == 0, err
    trials = _results(out)["trials"]
    by_arch = {}
    for t in trials:
        by_arch.setdefault(t["params"]["arch"], []).append(t)
        argv = shlex.split(t["command"])
        assert argv[argv.index("--arch") + 1] == t["params"]["arch"]
        assert argv[argv.index("--hidden") + 1] == "128,64"  # the arch replaces --hidden 8
    assert sorted(by_arch) == ["conv:4,pool,fc:16", "fc:16"]
    assert all(len(ts) == 2 for ts in by_arch.values())
    assert all(t["status"] == "ok" and 0 <= t["val_acc"] <= 1 for t in trials)


def test_a_worker_waits_for_the_marker_of_an_out_another_is_creating(tmp_path):
    """Two workers started at once on one new --out: the second may look while the first holds
    only its lock (before the marker). It waits for the marker instead of refusing the
    directory; a directory that never gets one is still refused."""
    import threading

    from jaxnn import rundir
    from jaxnn.cli import _search

    out = tmp_path / "shared"
    out.mkdir()
    (out / ".lock").write_text("1")
    timer = threading.Timer(0.3, lambda: rundir.write_json_atomic(
        str(out / rundir.MARKER), {"verb": "search", "version": "0"}))
    timer.start()
    try:
        assert _search._out_state(str(out)) == "search"
    finally:
        timer.cancel()
    (out / rundir.MARKER).unlink()
    assert not _search._marked_soon(str(out), seconds=0.2)
    (out / "notes.txt").write_text("mine")  # files jaxnn did not write: refused at once
    with pytest.raises(_search.CLIError, match="not a jaxnn search directory"):
        _search._out_state(str(out))
