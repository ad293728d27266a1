"""``jaxnn search`` and ``jaxnn ensemble`` in-process: the files they write, and bad flags."""

import json
import os

import numpy as np
import pytest

from jaxnn.cli import main

TINY = ["--hidden", "8", "--epochs", "1", "--batch-size", "128"]


def _run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _sorted_by_acc(trials):
    accs = [t["val_acc"] for t in trials if t["status"] != "diverged"]
    return accs == sorted(accs, reverse=True)


def test_search_random_writes_results_plot_and_table(tmp_path, capsys):
    out = tmp_path / "s"
    rc, stdout, _ = _run(["search", "--trials", "3", *TINY, "--out", str(out)], capsys)
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["method"] == "random" and len(res["trials"]) == 3 and "stages" not in res
    for t in res["trials"]:
        assert set(t["params"]) == {"learning_rate", "l2"}
        assert 1e-3 <= t["params"]["learning_rate"] <= 1.0
        assert 1e-6 <= t["params"]["l2"] <= 1e-1
        assert t["status"] in ("ok", "diverged") and "val_loss" in t
    assert _sorted_by_acc(res["trials"]) and res["best"] == res["trials"][0]
    assert res["space"]["learning_rate"] == {"loguniform": [1e-3, 1.0]}
    assert (out / "search.png").stat().st_size > 1000
    assert "rank" in stdout and "val_acc" in stdout and "best:" in stdout


def test_search_grid_uses_the_largest_full_grid_and_fixed_values(tmp_path, capsys):
    out = tmp_path / "g"
    rc, _, _ = _run(["search", "--method", "grid", "--trials", "5", "--lr-range", "0.01,0.1",
                     "--init-scale-range", "0.5,2", "--l2-range", "none", "--l2", "0.001",
                     *TINY, "--out", str(out)], capsys)
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    got = sorted((t["params"]["learning_rate"], t["params"]["init_scale"]) for t in res["trials"])
    np.testing.assert_allclose(got, [(0.01, 0.5), (0.01, 2.0), (0.1, 0.5), (0.1, 2.0)],
                               rtol=1e-12)  # the largest full grid within 5 trials: 2 x 2
    assert all(t["params"]["l2"] == 0.001 for t in res["trials"])  # fixed at --l2
    assert set(res["space"]) == {"learning_rate", "l2", "init_scale"}
    assert res["space"]["l2"] == {"choice": [0.001]}


@pytest.mark.slow
def test_search_coarse_to_fine_writes_stages(tmp_path, capsys):
    out = tmp_path / "c"
    rc, stdout, _ = _run(["search", "--method", "coarse-to-fine", "--stages", "2", "--trials",
                          "4", "--top-k", "2", "--hidden", "8", "--epochs", "2",
                          "--batch-size", "128", "--out", str(out)], capsys)
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    s1, s2 = res["stages"]
    assert (s1["epochs"], s2["epochs"]) == (1, 2)  # the coarse stage: ceil(2 / 3) epochs
    assert len(s1["trials"]) == len(s2["trials"]) == 4
    assert res["trials"] == s2["trials"] and res["best"] == s2["trials"][0]
    best1 = s1["trials"][0]["params"]
    for name in ("learning_rate", "l2"):
        lo1, hi1 = s1["space"][name]["loguniform"]
        lo2, hi2 = s2["space"][name]["loguniform"]
        assert lo1 <= lo2 <= best1[name] <= hi2 <= hi1
    assert "stage 1:" in stdout and "stage 2:" in stdout


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


@pytest.mark.parametrize("argv, match", [
    (["search", "--trials", "0"], "--trials"),
    (["search", "--method", "grid", "--trials", "3"], "--trials >= 4"),
    (["search", "--lr-range", "1,0.1"], "--lr-range"),
    (["search", "--lr-range", "abc"], "--lr-range"),
    (["search", "--l2-range", "0,0.1"], "--l2-range"),
    (["search", "--lr-range", "none", "--l2-range", "none"], "nothing to search"),
    (["search", "--method", "bayes"], "--method"),
    (["search", "--stages", "0", "--method", "coarse-to-fine"], "--stages"),
    (["search", "--top-k", "99"], "--top-k"),
    (["search", "--schedule", "cosine"], "--schedule"),
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


def test_refuses_a_directory_holding_a_run(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "results.json").write_text("{}")
    rc, _, err = _run(["search", "--trials", "2", *TINY, "--out", str(out)], capsys)
    assert rc == 2 and "already holds a run" in err
    assert (out / "results.json").read_text() == "{}"
