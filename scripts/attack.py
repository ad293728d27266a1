"""Attack the ``jaxnn`` command line the way a user's bad day would, and count the outcomes.

1. Bad inputs: bad numbers, bad data files, unwritable or taken ``--out``, foreign
   ``config.json``. Each must end with exit status 2, exactly one line on stderr, no traceback,
   and no run directory left behind.
2. Kills: ``kill -9`` at random moments of a training run (after start-up, often inside a
   checkpoint save), then ``jaxnn resume`` until it finishes; every epoch's losses must equal an
   uninterrupted run's.

Usage: ``python scripts/attack.py [--kills 20] [--out attack.json]``. Prints a summary and writes
JSON with every case. The slow test suite runs a smaller kill loop
(``tests/test_cli_train.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

TINY = ["--hidden", "8", "--batch-size", "32"]


def _jaxnn(*argv, cwd=None):
    return subprocess.run([sys.executable, "-m", "jaxnn", *argv], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


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
    }
    out = {}
    for name, arrays in files.items():
        out[name] = os.path.join(d, f"{name}.npz")
        np.savez(out[name], **arrays)
    out["corrupt_npz"] = os.path.join(d, "corrupt.npz")
    with open(out["corrupt_npz"], "wb") as f:
        f.write(os.urandom(300))
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
                        ("--preprocess", "pca:1000"), ("--seed", "x")]:
        cases.append((f"train {flag} {value}", ["train", *good, flag, value]))
    for name in ("five_examples", "label_1e8", "uint64_label_2^63", "int64_label_2^32+2",
                 "float_labels", "complex_x", "nan_x", "huge_x_3e38", "length_mismatch", "no_y",
                 "empty", "corrupt_npz", "missing"):
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

    results = []
    for name, argv in cases:
        out_dir = argv[argv.index("--out") + 1] if "--out" in argv else None
        existed = out_dir is not None and os.path.exists(out_dir)
        cwd = tempfile.mkdtemp(dir=d)
        r = _jaxnn(*argv, cwd=cwd)
        lines = [s for s in r.stderr.splitlines() if s.strip()]
        left = os.listdir(cwd) + ([] if existed or out_dir is None or not os.path.exists(out_dir)
                                  else [out_dir])
        clean = (r.returncode == 2 and len(lines) == 1 and "error:" in lines[0]
                 and "Traceback" not in r.stderr and not left)
        results.append({"case": name, "exit": r.returncode, "stderr": r.stderr.strip()[-400:],
                        "left_behind": left, "clean": clean})
        print(f"{'ok  ' if clean else 'FAIL'} {name}: exit {r.returncode}: "
              f"{lines[-1] if lines else ''}", flush=True)
    return results


def _lines(path):
    with open(path) as f:
        return [json.loads(s) for s in f if s.strip()]


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
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        bad = bad_inputs(d)
        k = kills(d, args.kills) if args.kills else None
    n_clean = sum(r["clean"] for r in bad)
    print(f"bad inputs: {len(bad)} tried, {n_clean} clean one-line errors (exit 2, nothing left)")
    if k:
        print(f"kill -9: {k['kills']} kills, {k['resumes']} resumes, {k['tracebacks']} tracebacks, "
              f"{k['checkpoints_skipped']} checkpoints skipped as unreadable; "
              f"{k['identical_epochs']}/{k['expected_epochs']} epochs identical to the "
              f"uninterrupted run")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"bad_inputs": bad, "kills": k}, f, indent=2)
    return 0 if n_clean == len(bad) and (not k or k["identical"]) else 1


if __name__ == "__main__":
    sys.exit(main())
