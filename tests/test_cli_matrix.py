"""Every verb with every model: each verb that trains x {the default MLP, a convnet, a residual
net, --batch-norm, --dropout}, at tiny sizes, exits 0 with finite numbers in what it writes.

The matrix runs with the slow tests (CI runs them), next to a search that mixes an MLP and a
convnet (tests/test_cli_search.py).
"""

import json
import math
import os
import shutil

import pytest

from jaxnn.cli import main

MODELS = {
    "mlp": ["--hidden", "8"],
    "conv": ["--arch", "conv:2,pool,fc:8"],
    "residual": ["--arch", "conv:2,res(conv:2,conv:2),pool,fc:8"],
    "batch_norm": ["--hidden", "8", "--batch-norm"],
    "dropout": ["--hidden", "8", "--dropout", "0.2"],
}
FAST: set = set()  # all with the slow tests, as is tests/test_cli_search.py's mixed search
TINY = ["--epochs", "2", "--batch-size", "128", "--seed", "1"]


def _finite(values) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def _records(run):
    return [json.loads(line) for line in open(run / "metrics.jsonl")]


def _train(tmp_path, model, name="run"):
    out = tmp_path / name
    assert main(["train", *MODELS[model], *TINY, "--quiet", "--out", str(out)]) == 0
    return out


def check_train(tmp_path, model, capsys):
    out = _train(tmp_path, model)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_reason"] == "completed" and summary["epochs_done"] == 2
    assert 0.0 <= summary["test_acc"] <= 1.0 and _finite([summary["test_loss"]])
    assert _finite([r["train_loss"] for r in _records(out)])
    assert "test accuracy" in capsys.readouterr().out


def check_resume(tmp_path, model, capsys):
    """Cut a finished run back to epoch 1 (as a kill would leave it): resume repeats epoch 2
    exactly."""
    out = _train(tmp_path, model)
    want = _records(out)
    os.remove(out / "summary.json")
    shutil.rmtree(out / "checkpoints" / "2")
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text(lines[0])
    assert main(["resume", str(out), "--quiet"]) == 0
    got = _records(out)
    assert [r["epoch"] for r in got] == [1, 2]
    assert got[1]["train_loss"] == want[1]["train_loss"]


def check_diagnose(tmp_path, model, capsys):
    out = tmp_path / "diag"
    assert main(["diagnose", *MODELS[model], *TINY, "--overfit-examples", "8",
                 "--overfit-epochs", "2", "--probe-examples", "16", "--out", str(out)]) == 0
    d = json.loads((out / "diagnosis.json").read_text())
    assert d["layers"] and _finite([row["std"] for row in d["layers"]])
    assert _finite([d["initial_loss"]["measured"]])


def check_compare(tmp_path, model, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", *MODELS[model], *TINY, "--activations", "relu,tanh", "--seeds", "2",
                 "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["activation"] for r in rows] == ["relu", "tanh"]
    assert _finite([r["val_acc_mean"] for r in rows])


def check_experiment_losses(tmp_path, model, capsys):
    out = tmp_path / "losses"
    assert main(["experiment", "losses", *MODELS[model], *TINY, "--seeds", "1",
                 "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == 2 and _finite([r["val_acc_mean"] for r in rows])


def check_ensemble(tmp_path, model, capsys):
    out = tmp_path / "ens"
    assert main(["ensemble", *MODELS[model], *TINY, "--members", "2", "--quiet",
                 "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert len(s["member_test_acc"]) == 2 and _finite([s["ensemble_test_acc"]])


def check_search(tmp_path, model, capsys):
    out = tmp_path / "search"
    assert main(["search", *MODELS[model], *TINY, "--trials", "2", "--population", "2",
                 "--method", "random", "--quiet", "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    assert len(r["trials"]) == 2 and r["best"] is not None
    assert r["best"]["command"].startswith("jaxnn train ")


VERBS = {"train": check_train, "resume": check_resume, "diagnose": check_diagnose,
         "compare": check_compare, "experiment-losses": check_experiment_losses,
         "ensemble": check_ensemble, "search": check_search}


@pytest.mark.parametrize("verb, model", [
    pytest.param(v, m, marks=() if (v, m) in FAST else pytest.mark.slow)
    for v in VERBS for m in MODELS])
def test_every_verb_with_every_model(verb, model, tmp_path, capsys):
    VERBS[verb](tmp_path, model, capsys)
