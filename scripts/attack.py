"""Attack the ``jaxnn`` command line the way a user's bad day would, and count the outcomes.

1. Bad inputs: bad numbers, bad data files, unwritable or taken ``--out``, foreign
   ``config.json``. Each must end with exit status 2, exactly one line on stderr, no traceback,
   and no run directory left behind.
   Among them the run-directory family: ``--out`` inside another run's ``checkpoints/``, an
   ``--out`` (or ``.``) holding the user's files, resume of an unmarked directory, a config that
   no longer builds the checkpointed model (nothing may be moved), a symlinked ``.lock`` (the
   victim must stay untouched).
2. Trust cases with their own checks: bit rot in the newest checkpoint (resume falls back and
   says why), a lock held by a resume while ``train --out`` is refused (the lock file survives,
   a second resume is refused), a full disk (a 200 KiB tmpfs when run as root), a download
   from a server that trickles a byte at a time (the overall deadline), a download killed with
   ``kill -9`` (the next one removes its ``.part``), and Ctrl-C at random moments of start-up
   and training (exit 130, one line).
3. Kills: ``kill -9`` at random moments of a training run (after start-up, often inside a
   checkpoint save), then ``jaxnn resume`` until it finishes; every epoch's losses must equal an
   uninterrupted run's.

Usage: ``python scripts/attack.py [--kills 20] [--interrupts 8] [--only bad,trust,kills]
[--out attack.json]``. Prints a summary and writes JSON with every case. The slow test suite
runs a smaller kill loop (``tests/test_cli_train.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile

import numpy as np

TINY = ["--hidden", "8", "--batch-size", "32"]


def _jaxnn(*argv, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "jaxnn", *argv], capture_output=True, text=True,
                          cwd=cwd, timeout=600, env=None if env is None else {**os.environ, **env})


def _popen(*argv, **kw):
    """The console script in the background, with Ctrl-C (SIGINT) delivered as in a terminal."""
    return subprocess.Popen([sys.executable, "-m", "jaxnn", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            **kw)


def _tree(path: str) -> dict[str, bytes | None]:
    """Every file under ``path`` and its bytes (directories as ``None``): what 'nothing
    changed' compares."""
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = os.path.join(root, name)
            if name == ".lock" and not os.path.islink(p) and os.path.exists(
                    os.path.join(root, ".jaxnn-run")):
                out[os.path.relpath(p, path)] = None  # a run's own lock: holds the last PID
                continue
            out[os.path.relpath(p, path)] = None if os.path.isdir(p) else (
                os.readlink(p).encode() if os.path.islink(p) else open(p, "rb").read())
    return out


def _one_line(r, code=2, needle="error:") -> bool:
    lines = [s for s in r.stderr.splitlines() if s.strip()]
    return (r.returncode == code and len(lines) == 1 and needle in lines[0]
            and "Traceback" not in r.stderr)


def _data_files(d: str) -> dict[str, str]:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 6)) * 3
    y = rng.integers(0, 3, size=240)
    x = (centers[y] + rng.normal(size=(240, 6))).astype(np.float32)
    files = {
        "good": dict(x=x, y=y),
        "five_examples": dict(x=x[:5], y=y[:5]),
        "label_1e8": dict(x=x, y=np.where(y == 2, 100_000_000, y)),
        "uint64_label_2^63": dict(x=x, y=np.where(y == 2, np.uint64(2**63), y).astype(np.uint64)),
        "int64_label_2^32+2": dict(x=x, y=np.where(y == 2, 2**32 + 2, y).astype(np.int64)),
        "float_labels": dict(x=x, y=y + 0.5),
        "complex_x": dict(x=x + 1j, y=y),
        "nan_x": dict(x=np.where(y[:, None] == 1, np.nan, x), y=y),
        "huge_x_3e38": dict(x=np.full_like(x, 3e38), y=y),
        "length_mismatch": dict(x=x, y=y[:-7]),
        "no_y": dict(x=x),
        "empty": dict(x=x[:0], y=y[:0]),
        "one_class_zeros": dict(x=x, y=np.zeros_like(y)),
        "one_class_ones": dict(x=x, y=np.ones_like(y)),
    }
    out = {}
    for name, arrays in files.items():
        out[name] = os.path.join(d, f"{name}.npz")
        np.savez(out[name], **arrays)
    out["corrupt_npz"] = os.path.join(d, "corrupt.npz")
    with open(out["corrupt_npz"], "wb") as f:
        f.write(os.urandom(300))
    # A .npz whose x.npy header is damaged (an unclosed bracket): numpy's header parser raised
    # tokenize.TokenError.
    with zipfile.ZipFile(out["good"]) as z:
        members = {n: z.read(n) for n in z.namelist()}
    header = bytearray(members["x.npy"])
    start = header.index(b"{")
    header[start:start + 20] = b"{'descr': '<f4', ((("
    out["corrupt_npy_header"] = os.path.join(d, "corrupt_npy_header.npz")
    with zipfile.ZipFile(out["corrupt_npy_header"], "w") as z:
        z.writestr("x.npy", bytes(header))
        z.writestr("y.npy", members["y.npy"])
    out["missing"] = os.path.join(d, "missing.npz")
    return out


def bad_inputs(d: str) -> list[dict]:
    files = _data_files(d)
    good = ["--dataset", files["good"], *TINY]
    cases = []
    for flag, value in [("--l2", "nan"), ("--l2", "inf"), ("--l2", "-1"), ("--bias-init", "nan"),
                        ("--lr", "nan"), ("--lr", "-1"), ("--lr", "inf"), ("--dropout", "1.5"),
                        ("--dropout", "nan"), ("--patience", "0"), ("--patience", "-1"),
                        ("--keep-checkpoints", "0"), ("--epochs", "0"), ("--batch-size", "0"),
                        ("--hidden", "abc"), ("--activation", "nope"), ("--init", "nope"),
                        ("--loss", "nope"), ("--optimizer", "nope"), ("--schedule", "nope"),
                        ("--preprocess", "pca:1000"), ("--seed", "x"),
                        # seeds beyond 32 bits (2**32 was silently seed 0; 2**64 a traceback),
                        # numbers finite in float64 but not float32, an empty width, models
                        # too large for memory (were out-of-memory tracebacks)
                        ("--seed", "18446744073709551616"), ("--seed", "4294967296"),
                        ("--seed", "-1"), ("--lr", "1e308"), ("--hidden", "128,,64"),
                        ("--hidden", "1000000000")]:
        cases.append((f"train {flag} {value}", ["train", *good, flag, value]))
    # Optimizer hyperparameters out of range, and a crop pad beyond the 8x8 digits images (was a
    # C++ abort: XLA asked for a [64, 2e8, 2e8, 1] padded batch).
    for extra in (["--optimizer", "momentum", "--momentum", "1"],
                  ["--optimizer", "nesterov", "--momentum", "-0.5"],
                  ["--optimizer", "adamw", "--weight-decay", "nan"],
                  ["--optimizer", "adamw", "--weight-decay", "-1"]):
        cases.append((f"train {' '.join(extra)}", ["train", *good, *extra]))
    cases.append(("train --arch conv:100000,conv:100000",
                  ["train", "--arch", "conv:100000,conv:100000", "--epochs", "1"]))
    cases.append(("ensemble --members 1000000000000",
                  ["ensemble", *good, "--members", "1000000000000"]))
    cases.append(("search --momentum-range 1.5,2.5",
                  ["search", *good, "--optimizer", "momentum", "--momentum-range", "1.5,2.5",
                   "--out", os.path.join(d, "search-momentum")]))
    for crop in ("100000000", "8"):
        cases.append((f"train --arch conv:2,fc:8 --augment crop:{crop}",
                      ["train", "--arch", "conv:2,fc:8", "--augment", f"crop:{crop}",
                       "--batch-size", "32"]))
    for name in ("five_examples", "label_1e8", "uint64_label_2^63", "int64_label_2^32+2",
                 "float_labels", "complex_x", "nan_x", "huge_x_3e38", "length_mismatch", "no_y",
                 "empty", "corrupt_npz", "missing", "one_class_zeros", "one_class_ones",
                 "corrupt_npy_header"):
        cases.append((f"train --dataset {name}", ["train", "--dataset", files[name], *TINY,
                                                  "--preprocess", "none"]))
    blocker = os.path.join(d, "a-file")
    open(blocker, "w").close()
    cases.append(("train --out under a file", ["train", *good, "--out",
                                               os.path.join(blocker, "run")]))
    cases.append(("train --out /proc/self/run", ["train", *good, "--out", "/proc/self/run"]))
    for verb in ("diagnose", "ensemble", "search", "compare"):
        cases.append((f"{verb} --out under a file", [verb, *good, "--out",
                                                     os.path.join(blocker, "run")]))
    # Foreign config.json on resume.
    run = os.path.join(d, "finished")
    assert _jaxnn("train", *good, "--epochs", "1", "--out", run).returncode == 0
    good_cfg = json.load(open(os.path.join(run, "config.json")))
    foreign = {"{}": {}, '{"foo": 1}': {"foo": 1},
               "missing lr": {k: v for k, v in good_cfg.items() if k != "lr"},
               'lr "abc"': {**good_cfg, "lr": "abc"}, "epochs 4.5": {**good_cfg, "epochs": 4.5},
               "hidden [8]": {**good_cfg, "hidden": [8]}}
    for name, cfg in [*foreign.items(), ("invalid JSON", None)]:
        rd = os.path.join(d, f"foreign-{len(cases)}")
        os.makedirs(rd)
        with open(os.path.join(rd, "config.json"), "w") as f:
            f.write("{not json" if cfg is None else json.dumps(cfg))
        cases.append((f"resume with config.json {name}", ["resume", rd]))
    cases.append(("resume of a directory without config.json", ["resume", d]))
    cases.append(("train --out of a finished run", ["train", *good, "--out", run]))

    # The run-directory family: whose directory it is, and what is inside a run.
    for inner in ("checkpoints/4", "checkpoints/1", "checkpoints"):
        cases.append((f"train --out RUN/{inner}", ["train", *good, "--out",
                                                   os.path.join(run, inner)]))
    cases.append(("train --out RUN/sub/run", ["train", *good, "--out",
                                              os.path.join(run, "sub", "run")]))
    mine = os.path.join(d, "users-dir")
    os.makedirs(mine)
    for name, text in (("curves.png", "mine"), (".lock", "x")):
        with open(os.path.join(mine, name), "w") as f:
            f.write(text)
    for verb in ("train", "diagnose"):
        cases.append((f"{verb} --out a directory of the user's files", [verb, *good, "--out",
                                                                        mine]))
    cases.append(("train --out . (the user's files)", ["train", *good, "--out", "."]))
    unmarked = os.path.join(d, "unmarked")
    os.makedirs(unmarked)
    shutil.copy(os.path.join(run, "config.json"), unmarked)
    cases.append(("resume of a directory jaxnn did not write (no marker)", ["resume", unmarked]))
    # An interrupted run whose config.json was edited: hidden 8 -> "32".
    edited = os.path.join(d, "edited")
    shutil.copytree(run, edited)
    os.remove(os.path.join(edited, "summary.json"))
    cfg = json.load(open(os.path.join(edited, "config.json")))
    with open(os.path.join(edited, "config.json"), "w") as f:
        json.dump({**cfg, "hidden": "32"}, f)
    cases.append(("resume after config.json hidden 8 -> 32 (nothing moved)", ["resume", edited]))
    victim = os.path.join(d, "victim.txt")
    with open(victim, "w") as f:
        f.write("precious\n")
    linked = os.path.join(d, "linked")
    shutil.copytree(run, linked)
    os.remove(os.path.join(linked, "summary.json"))
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(linked, ".lock"))
    os.symlink(victim, os.path.join(linked, ".lock"))
    cases.append(("resume with RUN/.lock a symlink to a victim file", ["resume", linked]))
    watched = {p: _tree(p) for p in (run, mine, edited, linked)}
    watched[victim] = open(victim, "rb").read()

    results = []
    for name, argv in cases:
        out_dir = argv[argv.index("--out") + 1] if "--out" in argv else None
        cwd = tempfile.mkdtemp(dir=d)
        planted = {}
        if out_dir == ".":  # the user's files in the current directory
            planted = {"notes.txt": b"the user's\n", ".lock": b"x"}
            for f, data in planted.items():
                with open(os.path.join(cwd, f), "wb") as fh:
                    fh.write(data)
        existed = out_dir is not None and os.path.exists(os.path.join(cwd, out_dir))
        r = _jaxnn(*argv, cwd=cwd)
        lines = [s for s in r.stderr.splitlines() if s.strip()]
        left = [f for f in os.listdir(cwd) if f not in planted] + (
            [] if existed or out_dir is None or not os.path.exists(os.path.join(cwd, out_dir))
            else [out_dir])
        changed = [p for p, before in watched.items()
                   if (_tree(p) if os.path.isdir(p) else open(p, "rb").read()) != before]
        changed += [f for f, data in planted.items()
                    if open(os.path.join(cwd, f), "rb").read() != data]
        clean = (r.returncode == 2 and len(lines) == 1 and "error:" in lines[0]
                 and "Traceback" not in r.stderr and not left and not changed)
        results.append({"case": name, "exit": r.returncode, "stderr": r.stderr.strip()[-400:],
                        "left_behind": left, "changed": changed, "clean": clean})
        print(f"{'ok  ' if clean else 'FAIL'} {name}: exit {r.returncode}: "
              f"{lines[-1] if lines else ''}", flush=True)
    return results


def _lines(path):
    with open(path) as f:
        return [json.loads(s) for s in f if s.strip()]


# ----------------------------------------------------------------------------- trust cases
@contextlib.contextmanager
def _trickle_server(delay: float = 0.5):
    """An HTTP server that announces 100000 bytes and sends one every ``delay`` seconds."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(100000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(delay)
            except OSError:
                pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _case(results, name, ok, detail=""):
    results.append({"case": name, "clean": bool(ok), "detail": str(detail)[-400:]})
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {str(detail).strip().splitlines()[-1:] or ''}",
          flush=True)


def _wait(cond, timeout=120.0):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.05)
    return True


def trust_cases(d: str, n_interrupts: int, seed: int = 0) -> list[dict]:
    os.makedirs(os.path.join(d, "tdata"))
    files = _data_files(os.path.join(d, "tdata"))
    good = ["--dataset", files["good"], *TINY, "--quiet"]
    results = []

    # Bit rot in the newest checkpoint: its arrays replaced by an older checkpoint's (valid
    # files, wrong numbers): resume must notice, say so in one line and fall back.
    run = os.path.join(d, "rot")
    _jaxnn("train", *good, "--epochs", "3", "--out", run)
    os.remove(os.path.join(run, "summary.json"))
    ck = os.path.join(run, "checkpoints")
    shutil.rmtree(os.path.join(ck, "3", "state"))
    shutil.copytree(os.path.join(ck, "2", "state"), os.path.join(ck, "3", "state"))
    r = _jaxnn("resume", run, "--quiet")
    notes = [s for s in r.stderr.splitlines() if "skipped checkpoint 3" in s]
    _case(results, "bit rot in the newest checkpoint: resume falls back",
          r.returncode == 0 and len(notes) == 1 and "digest" in notes[0]
          and "Traceback" not in r.stderr, r.stderr)

    # The lock race: a refused `train --out R` while `resume R` holds the lock must leave the
    # lock file alone, so that a second resume is still refused.
    run = os.path.join(d, "race")
    p = _popen("train", *good, "--epochs", "100000", "--out", run)
    _wait(lambda: os.path.exists(os.path.join(run, "metrics.jsonl")))
    p.kill()
    p.communicate()
    holder = _popen("resume", run, "--quiet")
    try:
        _wait(lambda: (open(os.path.join(run, ".lock")).read().strip() == str(holder.pid)))
        ino = os.stat(os.path.join(run, ".lock")).st_ino
        r1 = _jaxnn("train", *good, "--out", run)
        r2 = _jaxnn("resume", run)
        same = os.path.exists(os.path.join(run, ".lock")) and os.stat(
            os.path.join(run, ".lock")).st_ino == ino
        _case(results, "lock race: refused train --out leaves the held lock; 2nd resume refused",
              _one_line(r1) and _one_line(r2, needle="in use") and same,
              r1.stderr + r2.stderr)
    finally:
        holder.kill()
        holder.communicate()

    # A full disk (a real 200 KiB tmpfs; only as root).
    disk = os.path.join(d, "disk")
    os.makedirs(disk)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", disk],
                      capture_output=True).returncode == 0:
        try:
            r = _jaxnn("train", "--dataset", files["good"], "--hidden", "128,64", "--epochs",
                       "3", "--quiet", "--out", os.path.join(disk, "run"))
            _case(results, "disk full mid-run (tmpfs 200k): one line, resumable",
                  _one_line(r, needle="disk full while writing checkpoint"), r.stderr)
        finally:
            subprocess.run(["umount", "-l", disk], capture_output=True)
    else:
        print("skip disk full: cannot mount a tmpfs (not root)")

    # Downloads: a server trickling one byte every 0.5 s; a download killed mid-transfer.
    with _trickle_server() as url:
        cache = os.path.join(d, "cache")
        t0 = time.monotonic()
        r = _jaxnn("data", "download", "mnist", "--data-url", url, "--data-dir", cache,
                   "--no-progress", env={"JAXNN_DOWNLOAD_DEADLINE": "3"})
        took = time.monotonic() - t0
        _case(results, f"download from a trickling server: deadline 3 s ({took:.1f} s)",
              _one_line(r, needle="took longer than 3 s") and took < 60
              and not os.path.exists(cache), r.stderr)
        p = _popen("data", "download", "mnist", "--data-url", url, "--data-dir", cache,
                   "--no-progress")
        parts = lambda: [f for f in os.listdir(os.path.join(cache, "mnist"))  # noqa: E731
                         if f.endswith(".part")] if os.path.isdir(
            os.path.join(cache, "mnist")) else []
        _wait(parts, 60)
        p.kill()
        p.communicate()
        left = parts()
        for f in left:  # as if a while ago
            os.utime(os.path.join(cache, "mnist", f), (time.time() - 3600,) * 2)
        _jaxnn("data", "download", "mnist", "--data-url", "http://127.0.0.1:9/", "--data-dir",
               cache, "--no-progress")  # nothing listens there: fails at once, cleans first
        _case(results, "kill -9 mid-download: the next download removes the .part",
              len(left) == 1 and not parts(), f"left {left}, after {parts()}")

    # Two search workers started at the same moment on one new --out (and so one new study.db):
    # both must finish (the one that finds the directory mid-creation waits for its marker; the
    # study's tables are created once) and the study holds exactly --trials trials.
    out = os.path.join(d, "shared-search")
    search = ["search", "--dataset", files["good"], *TINY, "--epochs", "1", "--method", "random",
              "--trials", "4", "--population", "2", "--quiet", "--out", out]
    procs = [_popen(*search) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    trials = None
    if os.path.exists(os.path.join(out, "results.json")):
        with open(os.path.join(out, "results.json")) as f:
            trials = len(json.load(f)["trials"])
    _case(results, "two searches started at once on one new --out: both finish, 4 trials",
          codes == [0, 0] and trials == 4, f"exit {codes}, {trials} trials; "
          + " ".join(e.strip()[-200:] for _, e in outs))

    # kill -9 of a search while its round is written to the study (a round's reports, attributes
    # and tells are one SQLite transaction each): a rerun completes the study with exactly
    # --trials finished trials, each told once, and nothing of the killed round counted.
    out = os.path.join(d, "killed-search")
    search = ["search", "--dataset", files["good"], *TINY, "--epochs", "20", "--method", "random",
              "--trials", "6", "--population", "2", "--pruner", "none", "--out", out]
    p = _popen(*search)
    line = p.stdout.readline()  # "round 1: 2/6 ...": the first round is told
    time.sleep(random.Random(seed).uniform(0.0, 0.4))
    p.kill()
    p.communicate()
    rerun = subprocess.run([sys.executable, "-m", "jaxnn", *search, "--quiet"],
                           capture_output=True, text=True, timeout=600)
    done = None
    if rerun.returncode == 0:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=None,
                                  storage=f"sqlite:///{os.path.join(out, 'study.db')}")
        fin = [t for t in study.trials if t.state.is_finished() and "status" in t.user_attrs]
        done = (len(fin), len({t.number for t in fin}),
                all(len(t.intermediate_values) == 20 for t in fin))
    _case(results, "kill -9 mid-round of a search, rerun: exactly --trials told once",
          line.startswith("round 1") and done is not None and done[:2] == (6, 6) and done[2],
          f"first line {line.strip()[:60]!r}, rerun exit {rerun.returncode}, finished {done}; "
          + rerun.stderr.strip()[-200:])

    # Ctrl-C at random moments of start-up and of training: exit 130, one line.
    rng = random.Random(seed)
    bad = []
    for i in range(n_interrupts):
        out = os.path.join(d, f"int-{i}")
        p = _popen("train", *good, "--epochs", "100000", "--out", out)
        time.sleep(rng.uniform(0.05, 2.5) if i % 2 == 0 else 0.0)
        if i % 2:  # during epochs
            _wait(lambda: os.path.exists(os.path.join(out, "metrics.jsonl")))  # noqa: B023
            time.sleep(rng.uniform(0.0, 1.0))
        p.send_signal(signal.SIGINT)
        try:
            _, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
            err += "\n(still running 120 s after Ctrl-C)"
        lines = [s for s in err.splitlines() if s.strip()]
        if not (p.returncode == 130 and lines == ["jaxnn train: interrupted"]):
            bad.append((i, p.returncode, err[-300:]))
    _case(results, f"Ctrl-C at {n_interrupts} random moments: exit 130, one line",
          not bad, bad)
    return results


def kills(d: str, n_kills: int, seed: int = 0) -> dict:
    os.makedirs(os.path.join(d, "kdata"))
    files = _data_files(os.path.join(d, "kdata"))
    args = ["--dataset", files["good"], *TINY, "--epochs", "150", "--keep-checkpoints", "2",
            "--quiet"]
    ref = os.path.join(d, "ref")
    assert _jaxnn("train", *args, "--out", ref).returncode == 0
    want = _lines(os.path.join(ref, "metrics.jsonl"))
    rng = random.Random(seed)
    run = os.path.join(d, "killed")
    metrics = os.path.join(run, "metrics.jsonl")
    argv, done_kills, resumes, tracebacks, skipped = ["train", *args, "--out", run], 0, 0, 0, 0
    while True:
        before = len(_lines(metrics)) if os.path.exists(metrics) else 0
        p = subprocess.Popen([sys.executable, "-m", "jaxnn", *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        if done_kills < n_kills:
            t0 = time.monotonic()  # wait until it trains, then kill at a random moment
            while p.poll() is None and time.monotonic() - t0 < 120:
                if os.path.exists(metrics) and len(_lines(metrics)) > before:
                    break
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.6))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                done_kills += 1
        _, err = p.communicate()
        tracebacks += "Traceback" in err
        skipped += err.count("skipped checkpoint")
        if os.path.exists(os.path.join(run, "summary.json")):
            break
        argv = ["resume", run, "--quiet"]
        resumes += 1
    got = _lines(metrics)
    same = [a["epoch"] == b["epoch"] and abs(a["train_loss"] - b["train_loss"]) <= 1e-6 * abs(
        a["train_loss"]) and abs(a["val_loss"] - b["val_loss"]) <= 1e-6 * abs(a["val_loss"])
        for a, b in zip(want, got, strict=False)]
    return {"kills": done_kills, "resumes": resumes, "tracebacks": tracebacks,
            "checkpoints_skipped": skipped,
            "left_in_checkpoints": sorted(os.listdir(os.path.join(run, "checkpoints"))),
            "epochs": len(got), "expected_epochs": len(want),
            "identical_epochs": int(sum(same)),
            "identical": len(got) == len(want) and all(same)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20, help="kill -9s of the kill loop")
    p.add_argument("--interrupts", type=int, default=8, help="Ctrl-Cs at random moments")
    p.add_argument("--only", default="bad,trust,kills",
                   help="comma-separated parts to run: bad, trust, kills")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    parts = set(args.only.split(","))
    with tempfile.TemporaryDirectory() as d:
        bad = bad_inputs(d) if "bad" in parts else []
        trust = trust_cases(d, args.interrupts) if "trust" in parts else []
        k = kills(d, args.kills) if args.kills and "kills" in parts else None
    n_clean = sum(r["clean"] for r in bad)
    n_trust = sum(r["clean"] for r in trust)
    if bad:
        print(f"bad inputs: {len(bad)} tried, {n_clean} clean one-line errors (exit 2, nothing "
              "left, nothing changed)")
    if trust:
        print(f"trust cases: {len(trust)} tried, {n_trust} held")
    if k:
        print(f"kill -9: {k['kills']} kills, {k['resumes']} resumes, {k['tracebacks']} tracebacks, "
              f"{k['checkpoints_skipped']} checkpoints skipped as unreadable; "
              f"{k['identical_epochs']}/{k['expected_epochs']} epochs identical to the "
              f"uninterrupted run")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"bad_inputs": bad, "trust": trust, "kills": k}, f, indent=2)
    return 0 if n_clean == len(bad) and n_trust == len(trust) and (
        not k or k["identical"]) else 1


if __name__ == "__main__":
    sys.exit(main())
