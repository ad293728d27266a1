"""jaxnn.rundir: the lock, atomic files, metrics that lose nothing intact, checkpoint fallback,
resume equal to an uninterrupted run, and whose directory it is: the marker, no run inside
another, no symlink followed, no lock removed from under its holder, a changed config told from
a damaged checkpoint, digests against bit rot, a full disk and Ctrl-C in one line."""

import contextlib
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxnn import layers, optim, rundir, train


@pytest.fixture(scope="module")
def dataset(make_blobs):
    return make_blobs(n=150, classes=3, spread=3.0, n_train=90, n_val=30)


@pytest.fixture(scope="module")
def model():
    return layers.mlp([6, 16, 3], dropout=0.2, batch_norm=True)


KW = dict(batch_size=32, key=jax.random.key(7), l2=1e-3)


def _opt():
    return optim.momentum(0.05)


@pytest.fixture(scope="module")
def full(model, dataset):
    """An uninterrupted 4-epoch run: the reference every resumed run must repeat."""
    return train.fit(model, dataset, optimizer=_opt(), epochs=4, **KW)


def _run(path, model, dataset, *, epochs, resume=False, messages=None, **kw):
    run = rundir.RunDir.open(path) if resume else rundir.RunDir.create(path)
    with run:
        return rundir.fit(run, model, dataset, optimizer=_opt(), epochs=epochs, resume=resume,
                          notify=None if messages is None else messages.append,
                          config={"note": "test"}, **KW, **kw)


def _lines(path):
    return [json.loads(s) for s in open(os.path.join(path, "metrics.jsonl"))]


# --------------------------------------------------------------------------- lock
def test_a_second_holder_is_refused_with_the_pid(tmp_path):
    path = tmp_path / "r"
    with rundir.RunDir.create(path):
        with pytest.raises(rundir.RunInUseError, match=f"in use by process {os.getpid()}"):
            rundir.RunDir.create(path)
        (path / "config.json").write_text("{}")
        with pytest.raises(rundir.RunInUseError):
            rundir.RunDir.open(path)
        with pytest.raises(rundir.RunInUseError, match="in use"):  # not "holds a run"
            rundir.RunDir.create(path)
    with rundir.RunDir.open(path):  # released on close
        pass


def test_the_lock_dies_with_its_process(tmp_path):
    """kill -9 of the holder: the OS releases the flock, the next process gets the run."""
    path = tmp_path / "r"
    code = ("import sys, time; from jaxnn import rundir; r = rundir.RunDir.create(sys.argv[1]);"
            "print('locked', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(rundir.RunInUseError, match=f"process {p.pid}"):
            rundir.RunDir.create(path)
    finally:
        p.kill()
        p.wait()
    with rundir.RunDir.create(path):
        pass


def test_default_names_are_unique_within_one_second(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda fmt: "20260101-000000")
    runs = [rundir.RunDir.create(None, prefix="train", root=tmp_path) for _ in range(3)]
    names = [os.path.basename(r.path) for r in runs]
    assert names == ["train-20260101-000000", "train-20260101-000000-2",
                     "train-20260101-000000-3"]
    for r in runs:
        r.close()


def test_unwritable_places_are_refused_before_anything(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(rundir.RunDirError, match="not a directory"):
        rundir.RunDir.create(blocker)
    with pytest.raises(rundir.RunDirError, match="cannot create"):
        rundir.RunDir.create(blocker / "sub")
    if os.path.isdir("/proc/self"):
        with pytest.raises(rundir.RunDirError, match="cannot"):
            rundir.RunDir.create("/proc/self/jaxnn-run")
    if os.geteuid() != 0:  # root writes through permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(rundir.RunDirError, match="cannot"):
            rundir.RunDir.create(ro / "run")


def test_a_run_failing_before_its_first_write_leaves_nothing(tmp_path):
    path = tmp_path / "new"
    with pytest.raises(RuntimeError), rundir.RunDir.create(path):
        raise RuntimeError("failed while loading data")
    assert not path.exists()
    with pytest.raises(RuntimeError), rundir.RunDir.create(None, root=tmp_path / "runs"):
        raise RuntimeError("a bad flag found after the default directory was made")
    assert not (tmp_path / "runs").exists()
    existing = tmp_path / "empty"
    existing.mkdir()
    with pytest.raises(RuntimeError), rundir.RunDir.create(existing):
        raise RuntimeError
    assert existing.is_dir() and os.listdir(existing) == []  # the user's directory stays


def test_a_directory_holding_a_run_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(rundir.RunDirError, match="already holds a run"):
        rundir.RunDir.create(tmp_path)


# --------------------------------------------------------------------------- whose directory
def test_files_jaxnn_did_not_write_are_never_overwritten(tmp_path, monkeypatch):
    """An existing --out must be empty, or a directory of the same verb that a run left
    without a file of its own; the marker says which directories are jaxnn's."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "curves.png").write_text("mine")
    (d / ".lock").write_text("x")
    for verb in ("train", "diagnose"):
        with pytest.raises(rundir.RunDirError, match="not empty"):
            rundir.RunDir.create(d, verb=verb)
    assert (d / "curves.png").read_text() == "mine" and (d / ".lock").read_text() == "x"
    monkeypatch.chdir(d)
    with pytest.raises(rundir.RunDirError, match="not empty"):
        rundir.RunDir.create(".", verb="train")
    # An empty directory is fine; the run marks it as its own.
    e = tmp_path / "e"
    e.mkdir()
    with rundir.RunDir.create(e, verb="train"):
        assert rundir.read_marker(e)["verb"] == "train"
    # Left with nothing but jaxnn's bookkeeping (a kill before the first file): the same verb
    # may use it again, another verb may not.
    with pytest.raises(rundir.RunDirError, match="jaxnn train run, not a diagnose run"):
        rundir.RunDir.create(e, verb="diagnose")
    with rundir.RunDir.create(e, verb="train"):
        pass
    (e / "notes.txt").write_text("the user's")
    with pytest.raises(rundir.RunDirError, match="did not write"):
        rundir.RunDir.create(e, verb="train")


@pytest.mark.parametrize("inner", ["checkpoints/4", "checkpoints/1", "checkpoints", "sub/run"])
def test_a_run_inside_another_run_directory_is_refused(tmp_path, inner):
    """orbax prunes RUN/checkpoints: a run made in there would be deleted by a later resume."""
    outer = tmp_path / "R"
    with rundir.RunDir.create(outer, verb="train"):
        (outer / "checkpoints" / "1").mkdir(parents=True)
    legacy = tmp_path / "L"  # from before markers: config.json and checkpoints/
    (legacy / "checkpoints").mkdir(parents=True)
    (legacy / "config.json").write_text("{}")
    for run in (outer, legacy):
        with pytest.raises(rundir.RunDirError, match=f"inside the run directory {run}"):
            rundir.RunDir.create(run / inner)
        assert not (run / inner).exists() or inner in ("checkpoints", "checkpoints/1")
    link = tmp_path / "link"
    link.symlink_to(outer / "checkpoints")
    with pytest.raises(rundir.RunDirError, match="inside the run directory"):
        rundir.RunDir.create(link / "4")
    with pytest.raises(rundir.RunDirError, match="inside the run directory"):
        rundir.RunDir.create(None, root=outer / "checkpoints" / "runs")
    assert sorted(os.listdir(outer / "checkpoints")) == ["1"]


def test_resume_needs_the_marker_and_marks_runs_from_before_it(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    with pytest.raises(rundir.RunDirError, match="not a jaxnn run directory"):
        rundir.RunDir.open(foreign)
    assert sorted(os.listdir(foreign)) == ["config.json"]
    legacy = tmp_path / "legacy"
    (legacy / "checkpoints").mkdir(parents=True)
    (legacy / "config.json").write_text("{}")
    with rundir.RunDir.open(legacy):
        pass
    assert rundir.read_marker(legacy)["verb"] == "train"


# --------------------------------------------------------------------------- symlinks, lock race
def test_symbolic_links_in_a_run_directory_are_never_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    run = tmp_path / "R"
    with rundir.RunDir.create(run, verb="train"):
        (run / "config.json").write_text("{}")
        (run / "checkpoints").mkdir()
    os.remove(run / ".lock")
    (run / ".lock").symlink_to(victim)
    with pytest.raises(rundir.RunDirError, match="symbolic link"):
        rundir.RunDir.open(run)
    with pytest.raises(rundir.RunDirError):
        rundir.RunDir.create(run, verb="train")
    bare = tmp_path / "bare"  # nothing but a planted lock link
    bare.mkdir()
    (bare / ".lock").symlink_to(victim)
    with pytest.raises(rundir.RunDirError):
        rundir.RunDir.create(bare, verb="train")
    # The writers replace a link by a file and never write through it.
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "summary.json").symlink_to(victim)
    rundir.write_json_atomic(tmp_path / "w" / "summary.json", {"a": 1})
    assert not (tmp_path / "w" / "summary.json").is_symlink()
    assert victim.read_text() == "precious"


def test_a_refused_run_never_removes_a_lock_another_process_may_hold(tmp_path, monkeypatch):
    run = tmp_path / "R"
    with rundir.RunDir.create(run, verb="train"):
        (run / "config.json").write_text("{}")
        (run / "checkpoints").mkdir()
    # A resume has opened the lock file (and is about to flock it) when a `train --out R`
    # takes the lock and is refused: the refused run must leave that lock file alone.
    fd = os.open(run / ".lock", os.O_RDWR)
    try:
        with pytest.raises(rundir.RunDirError, match="already holds a run"):
            rundir.RunDir.create(run, verb="train")
        assert os.fstat(fd).st_ino == os.stat(run / ".lock").st_ino
    finally:
        os.close(fd)
    # A lock file removed (and made anew) between our open and our flock is not the lock:
    # the run directory locks the file that is there now.
    real_flock, swapped = rundir.fcntl.flock, []

    def flock(fd, op):
        if not swapped:
            swapped.append(True)
            os.remove(run / ".lock")
            (run / ".lock").write_text("")
        return real_flock(fd, op)

    monkeypatch.setattr(rundir.fcntl, "flock", flock)
    with rundir.RunDir.open(run) as r:
        assert os.fstat(r._lock_fd).st_ino == os.stat(run / ".lock").st_ino


# --------------------------------------------------------------------------- files
def test_atomic_json_keeps_the_old_file_when_a_write_fails(tmp_path):
    path = tmp_path / "a.json"
    rundir.write_json_atomic(path, {"x": 1, "nan": float("nan")})
    assert json.loads(path.read_text()) == {"x": 1, "nan": None}
    with pytest.raises(TypeError):
        rundir.write_json_atomic(path, {"x": object()})
    assert json.loads(path.read_text()) == {"x": 1, "nan": None}
    assert os.listdir(tmp_path) == ["a.json"]


@pytest.mark.parametrize("text,what", [("{\"foo\": 1", "not valid JSON"), ("[1]", "JSON object"),
                                       ("", "not valid JSON")])
def test_read_json_names_the_file(tmp_path, text, what):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(rundir.RunDirError, match=what) as e:
        rundir.read_json(path)
    assert str(path) in str(e.value)


def test_a_garbled_metrics_line_is_skipped_not_a_cut(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "a": 1}\n{"epoch": 2, "a"\n{"epoch": 3, "a": 3}\n[4]\n'
                    '{"epoch": 4, "a": 4}\n{"ep')
    records, bad = rundir.read_metrics(path)
    assert [r["epoch"] for r in records] == [1, 3, 4]
    assert bad == [2, 4, 6]


# --------------------------------------------------------------------------- fit and resume
def test_fit_writes_config_metrics_and_checkpoints(model, dataset, full, tmp_path):
    hist = _run(tmp_path / "r", model, dataset, epochs=4)
    np.testing.assert_allclose(hist["train_loss"], full["train_loss"], rtol=1e-6)
    assert json.loads((tmp_path / "r" / "config.json").read_text()) == {"note": "test"}
    assert [r["epoch"] for r in _lines(tmp_path / "r")] == [1, 2, 3, 4]
    steps = sorted(int(s) for s in os.listdir(tmp_path / "r" / "checkpoints") if s.isdigit())
    assert steps == [2, 3, 4]  # the newest three of 0..4


def test_resume_repeats_the_uninterrupted_run(model, dataset, full, tmp_path):
    path = tmp_path / "r"
    _run(path, model, dataset, epochs=2)
    resumed = _run(path, model, dataset, epochs=4, resume=True)
    np.testing.assert_allclose(resumed["train_loss"], full["train_loss"], rtol=1e-6)
    np.testing.assert_allclose(resumed["val_loss"], full["val_loss"], rtol=1e-6)
    assert [r["epoch"] for r in _lines(path)] == [1, 2, 3, 4]


def test_resume_keeps_every_intact_line_and_rebuilds_lost_ones(model, dataset, full, tmp_path):
    path = tmp_path / "r"
    _run(path, model, dataset, epochs=3)
    lines = (path / "metrics.jsonl").read_text().splitlines()
    # epoch 2's line garbled in the middle; epoch 3's intact after it.
    (path / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][:17] + "\n" + lines[2] + "\n")
    messages = []
    resumed = _run(path, model, dataset, epochs=4, resume=True, messages=messages)
    got = _lines(path)
    assert [r["epoch"] for r in got] == [1, 2, 3, 4]
    assert got[2] == json.loads(lines[2])  # the intact line after the garbled one survives
    assert any("garbled" in m for m in messages)
    np.testing.assert_allclose(resumed["train_loss"], full["train_loss"], rtol=1e-6)


def test_an_emptied_metrics_file_is_rebuilt_from_the_checkpoint(model, dataset, tmp_path):
    path = tmp_path / "r"
    _run(path, model, dataset, epochs=3)
    before = _lines(path)
    (path / "metrics.jsonl").write_text("")  # a kill during a non-atomic rewrite
    resumed = _run(path, model, dataset, epochs=4, resume=True)
    assert _lines(path)[:3] == before
    assert resumed.epochs_done == 4 and len(resumed.records) == 4


@pytest.mark.parametrize("damage", ["truncate", pytest.param("delete", marks=pytest.mark.slow),
                                    pytest.param("meta", marks=pytest.mark.slow)])
def test_a_corrupt_newest_checkpoint_falls_back(model, dataset, full, tmp_path, damage):
    path = tmp_path / "r"
    _run(path, model, dataset, epochs=3)
    newest = path / "checkpoints" / "3"
    for root, _dirs, files in os.walk(newest):
        for f in files:
            p = os.path.join(root, f)
            if damage == "delete":
                os.remove(p)
            elif damage == "truncate" or f.endswith(".json") or "meta" in root:
                with open(p, "r+b") as fh:
                    fh.truncate(max(0, os.path.getsize(p) // 3))
    messages = []
    resumed = _run(path, model, dataset, epochs=4, resume=True, messages=messages)
    skipped = [m for m in messages if m.startswith("skipped checkpoint")]
    assert len(skipped) == 1 and "checkpoint 3" in skipped[0]
    np.testing.assert_allclose(resumed["train_loss"], full["train_loss"], rtol=1e-6)
    assert [r["epoch"] for r in _lines(path)] == [1, 2, 3, 4]
    assert os.listdir(path / "corrupt-checkpoints")


def test_no_restorable_checkpoint_is_a_clear_error(model, dataset, tmp_path):
    path = tmp_path / "r"
    _run(path, model, dataset, epochs=2, keep_checkpoints=1)
    for root, _dirs, files in os.walk(path / "checkpoints"):
        for f in files:
            os.remove(os.path.join(root, f))
    with pytest.raises(rundir.RunDirError, match="no checkpoint restores"):
        _run(path, model, dataset, epochs=4, resume=True)


def test_a_refused_start_writes_nothing(model, dataset, tmp_path):
    huge = dataset._replace(x_train=np.full_like(dataset.x_train, 3e38))
    with pytest.raises(ValueError, match="initial loss"):
        _run(tmp_path / "r", model, huge, epochs=2)
    assert not (tmp_path / "r").exists()


def test_divergence_in_epoch_one_keeps_the_initial_state(model, dataset, tmp_path):
    path = tmp_path / "r"
    with rundir.RunDir.create(path) as run:
        hist = rundir.fit(run, model, dataset, optimizer=optim.sgd(1e20), epochs=3,
                          loss="multiclass_hinge_loss", **KW)
    assert hist.diverged and hist.epochs_done == 0
    assert os.listdir(path / "checkpoints") == ["0"]
    from jaxnn.checkpoint import Checkpointer

    with Checkpointer(path / "checkpoints") as ck:
        state, meta = ck.restore(template=hist.state)
    assert meta["epoch"] == 0
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(hist.state.params),
                    strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- config vs corruption
def test_a_checkpoint_that_does_not_fit_the_model_is_a_config_error(model, dataset, tmp_path):
    """A changed config (hidden 16 -> 32) is not corruption: one line naming the array and both
    shapes, and every checkpoint stays where it is."""
    path = tmp_path / "r"
    _run(path, model, dataset, epochs=3)
    before = sorted(os.listdir(path / "checkpoints"))
    wider = layers.mlp([6, 32, 3], dropout=0.2, batch_norm=True)
    with pytest.raises(rundir.RunMismatchError) as e:
        _run(path, wider, dataset, epochs=4, resume=True)
    msg = str(e.value)
    assert "\n" not in msg and "params/layer_0/" in msg
    assert "(16,) float32 in the checkpoint but (32,) float32 in the model" in msg
    assert sorted(os.listdir(path / "checkpoints")) == before
    assert not (path / "corrupt-checkpoints").exists()


def test_arrays_that_changed_on_disk_fail_their_digest_and_fall_back(model, dataset, full,
                                                                     tmp_path):
    """Bit rot orbax cannot see (here: checkpoint 3's arrays replaced by checkpoint 2's, valid
    files with the wrong numbers) is caught by the digests and treated as corruption."""
    path = tmp_path / "r"
    _run(path, model, dataset, epochs=3)
    newest, older = path / "checkpoints" / "3", path / "checkpoints" / "2"
    import shutil

    shutil.rmtree(newest / "state")
    shutil.copytree(older / "state", newest / "state")
    messages = []
    resumed = _run(path, model, dataset, epochs=4, resume=True, messages=messages)
    skipped = [m for m in messages if m.startswith("skipped checkpoint")]
    assert len(skipped) == 1 and "checkpoint 3" in skipped[0] and "digest" in skipped[0]
    np.testing.assert_allclose(resumed["train_loss"], full["train_loss"], rtol=1e-6)


# --------------------------------------------------------------------------- disk full
@contextlib.contextmanager
def _tiny_disk(path, size: str):
    """A tmpfs of ``size`` at ``path`` (root only); yields whether it could be mounted."""
    path.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                        capture_output=True).returncode == 0
    try:
        yield ok
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_run_resumes(tmp_path, make_blobs, capfd, monkeypatch):
    """A real 200 KiB tmpfs when this runs as root; else orbax's writer fails with the ENOSPC
    error tensorstore gives."""
    from jaxnn.cli import main

    ds = make_blobs(n=150, classes=3, spread=3.0, n_train=90, n_val=30)
    npz = tmp_path / "blobs.npz"
    np.savez(npz, x=np.concatenate([ds.x_train, ds.x_val]),
             y=np.concatenate([ds.y_train, ds.y_val]))
    argv = ["--hidden", "128,64", "--batch-size", "32", "--quiet"]
    with _tiny_disk(tmp_path / "disk", "200k") as mounted:
        run = tmp_path / "disk" / "run"
        if not mounted:
            import orbax.checkpoint as ocp

            real_save = ocp.CheckpointManager.save

            def full(self, step, *a, **kw):
                if step >= 1:
                    raise ValueError("RESOURCE_EXHAUSTED: Error writing ...: No space left on "
                                     "device [os_error_code='28']")
                return real_save(self, step, *a, **kw)

            monkeypatch.setattr(ocp.CheckpointManager, "save", full)
        capfd.readouterr()
        code = main(["train", "--dataset", str(npz), *argv, "--epochs", "3", "--out", str(run)])
        err = [s for s in capfd.readouterr().err.splitlines() if s.strip()]
        assert code == 2
        assert len(err) == 1 and "disk full while writing checkpoint" in err[0], err
        assert "the run can be resumed once there is space" in err[0]
        assert not [n for n in os.listdir(run / "checkpoints") if "tmp" in n]  # space freed
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=8m", str(tmp_path / "disk")],
                           check=True)
        else:
            monkeypatch.undo()
        assert main(["resume", str(run), "--quiet"]) == 0
        assert [r["epoch"] for r in _lines(run)] == [1, 2, 3]


# --------------------------------------------------------------------------- Ctrl-C
@pytest.mark.slow
@pytest.mark.parametrize("when", [0.1, 0.6, 1.5, "epochs"])
def test_ctrl_c_is_one_line_at_any_moment(tmp_path, make_blobs, when):
    """SIGINT during start-up (imports, JAX's gc callbacks, which swallowed it) or during epochs
    (orbax's worker threads): exit 130 and the one line ``jaxnn train: interrupted``."""
    import signal

    ds = make_blobs(n=150, classes=3, spread=3.0, n_train=90, n_val=30)
    npz = tmp_path / "blobs.npz"
    np.savez(npz, x=ds.x_train, y=ds.y_train)
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "jaxnn", "train", "--dataset", str(npz),
                          "--hidden", "8", "--epochs", "100000", "--quiet", "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        if when == "epochs":
            t0 = time.monotonic()
            while not (out / "metrics.jsonl").exists():
                assert time.monotonic() - t0 < 120 and p.poll() is None
                time.sleep(0.05)
            time.sleep(0.5)
        else:
            time.sleep(when)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 130, err
    assert [s for s in err.splitlines() if s.strip()] == ["jaxnn train: interrupted"], err
