"""``jaxnn diagnose``, ``gradcheck``, ``experiment init-depth|activations|losses`` and ``compare``
in-process: the files they write, what they print, their exit status."""

import contextlib
import importlib.util
import io
import json
import re

import jax
import jax.numpy as jnp
import pytest

import jaxnn
from jaxnn import activations, losses
from jaxnn.cli import _gradcheck, main

HAS_TBX = importlib.util.find_spec("tensorboardX") is not None

SHORT = ["--hidden", "32", "--epochs", "3", "--overfit-epochs", "60"]


def _run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


# --------------------------------------------------------------------------- diagnose
@pytest.fixture(scope="module")
def diagnoses(tmp_path_factory):
    """Three diagnoses of the digits MLP: default, far too high and far too low learning rate
    (that one with --quiet); stderr is not a terminal."""
    base = tmp_path_factory.mktemp("diagnose")
    runs = {}
    tb = ["--tensorboard"] if HAS_TBX else []
    for name, extra in (("default", []), ("high", ["--lr", "1000", *tb]),
                        ("low", ["--lr", "1e-6", "--quiet"])):
        out = base / name
        printed, progress = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(progress):
            rc = main(["diagnose", *SHORT, *extra, "--out", str(out)])
        runs[name] = (rc, out, json.loads((out / "diagnosis.json").read_text()))
        REPORTS[name] = printed.getvalue()
        PROGRESS[name] = progress.getvalue()
    return runs


REPORTS: dict[str, str] = {}  # what each diagnosis of the fixture printed
PROGRESS: dict[str, str] = {}  # and what it wrote on stderr


def test_diagnose_writes_the_diagnosis(diagnoses):
    rc, out, d = diagnoses["default"]
    assert rc == 0
    assert {"initial_loss", "overfit", "layers", "verdicts"} <= set(d)
    assert {"expected", "measured", "ok"} <= set(d["initial_loss"])
    assert {"final_loss", "train_acc", "ok"} <= set(d["overfit"])
    assert d["initial_loss"]["expected"] == pytest.approx(2.302585, rel=1e-6)  # log 10 classes
    assert d["initial_loss"]["ok"] and d["overfit"]["ok"]
    assert [layer["name"] for layer in d["layers"]] == ["layer_0", "layer_1"]  # hidden, output
    for layer in d["layers"]:
        assert {"name", "mean", "std", "dead", "saturated", "update_ratio"} <= set(layer)
        assert 0 < layer["update_ratio"] < 1
    assert _png(out / "curves.png")


def test_diagnose_verdicts_follow_the_learning_rate(diagnoses):
    verdicts = {name: d["verdicts"] for name, (_, _, d) in diagnoses.items()}
    assert "learning rate too high" in verdicts["high"]
    assert "learning rate too low" in verdicts["low"]
    for v in ("learning rate too high", "learning rate too low"):
        assert v not in verdicts["default"]
    # Diverging is a finding, not a failure of the command.
    assert diagnoses["high"][0] == 0 and diagnoses["low"][0] == 0
    assert diagnoses["high"][2]["training"]["stopped_reason"].startswith("diverged")
    # A far too large step: the update dwarfs the weights.
    assert all(layer["update_ratio"] > 1 for layer in diagnoses["high"][2]["layers"])
    assert not diagnoses["low"][2]["overfit"]["ok"]


def test_a_run_that_diverges_at_once_still_gets_its_curves_png(diagnoses):
    _, out, d = diagnoses["high"]
    assert d["training"]["records"] == []  # lr 1000 diverges in epoch 1
    assert _png(out / "curves.png")  # what --help promises, explaining why it is empty


@pytest.mark.skipif(not HAS_TBX, reason="tensorboardX (jaxnn[tensorboard]) not installed")
def test_diagnose_tensorboard_writes_event_files(diagnoses):
    _, out, _ = diagnoses["high"]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_tensorboard_without_the_extra_is_one_line_and_writes_nothing(tmp_path, capsys,
                                                                      monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboardx(name, *args, **kw):
        if name == "tensorboardX":
            raise ModuleNotFoundError("No module named 'tensorboardX'", name="tensorboardX")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tensorboardx)
    out = tmp_path / "tb"
    rc, _, err = _run(["diagnose", "--tensorboard", "--out", str(out)], capsys)
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("jaxnn diagnose: error: --tensorboard: ") and "jaxnn[tensorboard]" in err
    assert not out.exists()


def test_diagnose_prints_a_report(diagnoses, capsys):
    stdout = REPORTS["low"]
    for needle in ("initial loss", "overfit", "layer_0", "update/weight", "verdicts",
                   "learning rate too low", "overfit 20 examples, 60 healthy epochs",
                   "training 3/3 epochs:"):
        assert needle in stdout
    for report in REPORTS.values():  # "1 epoch", "2 epochs"
        for n, noun in re.findall(r"(\d+) (?:healthy )?(epochs?)\b", report):
            assert noun == ("epoch" if n == "1" else "epochs"), report
    out = diagnoses["low"][1]
    rc, _, err = _run(["diagnose", "--out", str(out)], capsys)  # already a run
    assert rc == 2 and "already holds a run" in err and err.count("\n") == 1


def test_diagnose_reports_progress_on_stderr_unless_quiet(diagnoses):
    """Piped: one flushed line per stage (five) and per training epoch, on stderr only."""
    lines = PROGRESS["default"].splitlines()
    assert all(line.startswith("diagnose: ") for line in lines), lines
    stages = [line for line in lines if " done" in line or " written" in line]
    assert [line.split()[1] for line in stages] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    assert "overfit check done (" in stages[1] and stages[1].endswith(" s)")
    assert "training done: completed" in stages[2]
    epochs = [line for line in lines if "training, epoch" in line]
    assert [line.split("epoch ")[1].split(":")[0] for line in epochs] == ["1/3", "2/3", "3/3"]
    assert len(lines) == 5 + 3
    # lr 1000 diverges in epoch 1: the five stages, no epoch line.
    high = PROGRESS["high"].splitlines()
    assert len(high) == 5 and "training done: diverged" in high[2]
    assert PROGRESS["low"] == ""  # --quiet
    for report in REPORTS.values():  # the report on stdout is unchanged: no progress in it
        assert "diagnose: " not in report and report.startswith("diagnosing: ")


# --------------------------------------------------------------------------- gradcheck
@pytest.mark.slow  # several compiles: in the slow suite
def test_gradcheck_passes_and_lists_everything(capsys):
    rc, stdout, _ = _run(["gradcheck"], capsys)
    assert rc == 0
    for name in (*activations.names(), *losses.names(), "mlp tanh + batch norm"):
        assert name in stdout  # every registered name, aliases included
    assert "FAIL" not in stdout and "skipped" not in stdout and "passed (float64)" in stdout
    rows = [line.split() for line in stdout.splitlines()]
    assert {r[1] for r in rows if r and r[0] == "loss" and "[class" in " ".join(r)} >= {
        "softmax_cross_entropy", "multiclass_hinge_loss"}


def test_gradcheck_derives_each_losss_inputs_from_the_loss():
    """The target kinds come from what each loss accepts: class ids for the two classifiers
    of integer labels, float targets of the scores' shape for the others."""
    import numpy as np

    cases = _gradcheck._loss_cases(np.random.default_rng(0))
    kinds = {}
    for label, f, params in cases:
        name, kind = label.split(" ")[0], label.rsplit("[", 1)[1].rstrip("]")
        kinds.setdefault(name, set()).add(kind)
        assert f is not None
        assert ("target" in params) == (kind != "class ids")
    assert kinds["softmax_cross_entropy"] == {"class ids"}
    assert kinds["multiclass_hinge_loss"] == {"class ids"}
    assert "class distributions" in kinds["softmax_cross_entropy_onehot"]
    assert kinds["mse"] == {"class distributions", "probabilities", "real values"}


def test_gradcheck_fails_for_a_loss_it_cannot_check(capsys, monkeypatch):
    """A registered loss that takes no kind of target is a failure (exit 1), never 'skipped'."""
    def picky(scores, targets):
        raise ValueError("picky: takes nothing")

    scratch = jaxnn.registry.Registry("loss", entry_type=losses.LossEntry)
    scratch.register("softmax_cross_entropy", losses.softmax_cross_entropy, targets="labels")
    scratch.register("picky", picky)
    monkeypatch.setattr(losses, "REGISTRY", scratch)
    monkeypatch.setattr(_gradcheck, "_activation_cases", lambda rng: [])
    monkeypatch.setattr(_gradcheck, "_model_cases", lambda rng: [])
    rc, stdout, err = _run(["gradcheck"], capsys)
    assert rc == 1 and "failed" in err
    rows = {r.split()[1]: r for r in stdout.splitlines() if r.split()[:1] == ["loss"]}
    assert set(rows) == {"picky", "softmax_cross_entropy"}
    assert "FAIL" in rows["picky"] and rows["softmax_cross_entropy"].endswith(" ok")


@pytest.mark.slow
def test_gradcheck_fails_on_a_wrong_gradient(capsys, monkeypatch):
    @jax.custom_jvp
    def bad_tanh(x):
        return jnp.tanh(x)

    @bad_tanh.defjvp
    def _bad_tanh_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        return jnp.tanh(x), 2.0 * t  # wrong: should be (1 - tanh^2) t

    real_get = activations.get
    monkeypatch.setattr(activations, "get", lambda n: bad_tanh if n == "tanh" else real_get(n))
    monkeypatch.setattr(_gradcheck, "_loss_cases", lambda rng: [])  # activations are enough
    monkeypatch.setattr(_gradcheck, "_model_cases", lambda rng: [])
    rc, stdout, err = _run(["gradcheck"], capsys)
    assert rc == 1
    rows = [line.split() for line in stdout.splitlines()]
    result = {r[1]: r[-1] for r in rows if r and r[0] == "activation"}
    assert result.pop("tanh") == "FAIL"
    assert set(result.values()) == {"ok"}  # every other activation still passes
    assert "failed" in err


def test_gradcheck_reports_each_check_on_stderr_unless_quiet(capsys, monkeypatch):
    real = _gradcheck._activation_cases
    monkeypatch.setattr(_gradcheck, "_activation_cases",
                        lambda rng: [c for c in real(rng) if c[0] in ("relu", "tanh")])
    monkeypatch.setattr(_gradcheck, "_loss_cases", lambda rng: [("picky [class ids]", None, {})])
    monkeypatch.setattr(_gradcheck, "_model_cases", lambda rng: [])
    rc, stdout, err = _run(["gradcheck"], capsys)
    assert rc == 1
    assert err.splitlines() == [
        "gradcheck: 1/3 activation tanh ok", "gradcheck: 2/3 activation relu ok",
        "gradcheck: 3/3 loss picky [class ids] FAIL (rejects its declared targets)",
        "jaxnn gradcheck: 1 of 3 gradient checks failed"]
    assert "gradcheck: " not in stdout
    rc, quiet_stdout, err = _run(["gradcheck", "--quiet"], capsys)
    assert rc == 1 and err == "jaxnn gradcheck: 1 of 3 gradient checks failed\n"
    assert quiet_stdout == stdout


# --------------------------------------------------------------------------- experiments
@pytest.mark.slow  # the fast suite's time budget; CI runs it with the slow suite
def test_experiment_init_depth(tmp_path, capsys):
    out = tmp_path / "id"
    rc, stdout, err = _run(["experiment", "init-depth", "--depth", "4", "--width", "32",
                            "--examples", "64", "--out", str(out)], capsys)
    assert rc == 0
    # One progress line per configuration on stderr (not a terminal), none on stdout.
    assert [re.sub(r" \([0-9.]+ s\)$", "", line) for line in err.splitlines()] == [
        "init-depth: 1/5 tanh + N(0, 0.01) done", "init-depth: 2/5 tanh + N(0, 1) done",
        "init-depth: 3/5 tanh + Xavier 1/n done", "init-depth: 4/5 relu + Xavier 1/n done",
        "init-depth: 5/5 relu + He 2/n done"]
    assert "init-depth:" not in stdout
    res = json.loads((out / "results.json").read_text())
    assert [c["label"] for c in res["configs"]] == [
        "tanh + N(0, 0.01)", "tanh + N(0, 1)", "tanh + Xavier 1/n", "relu + Xavier 1/n",
        "relu + He 2/n"]
    for c in res["configs"]:
        assert [layer["layer"] for layer in c["layers"]] == [1, 2, 3, 4]
        assert {"mean", "std", "saturated", "dead"} <= set(c["layers"][0])
    small = [layer["std"] for layer in res["configs"][0]["layers"]]
    assert small == sorted(small, reverse=True) and small[-1] < 1e-3  # collapsing
    assert _png(out / "histograms.png")
    assert "std of the activations per layer" in stdout and "relu + He 2/n" in stdout


def test_experiment_init_depth_quiet(tmp_path, capsys, monkeypatch):
    from jaxnn import experiments

    monkeypatch.setattr(experiments, "INIT_DEPTH_CONFIGS", experiments.INIT_DEPTH_CONFIGS[:1])
    rc, stdout, err = _run(["experiment", "init-depth", "--depth", "3", "--width", "16",
                            "--examples", "32", "--quiet", "--out", str(tmp_path / "q")], capsys)
    assert rc == 0 and err == "" and "tanh + N(0, 0.01)" in stdout


def test_experiment_losses_and_compare_report_progress_unless_quiet(tmp_path, capsys,
                                                                    monkeypatch):
    """The verbs' progress lines come from the library's callbacks (on_epoch, on_group): one
    per epoch of each loss, one per group; --quiet none. The training itself is stood in for
    here (the slow tests below train for real)."""
    import numpy as np

    from jaxnn import experiments

    calls = []

    def loss_comparison(data, *, key, losses, epochs, seeds, on_epoch=None, **kw):
        calls.append("losses")
        for name in losses:
            for epoch in range(1, epochs + 1):
                if on_epoch is not None:
                    on_epoch(name, epoch, {k: np.full(seeds, 0.5) for k in (
                        "train_loss", "train_acc", "val_loss", "val_acc")})
        curve = [0.5] * epochs
        rows = [experiments.LossRow(name, 0.5, 0.0, 1.0, curve, curve, curve, curve, curve, curve)
                for name in losses]
        return experiments.LossComparison(experiments.score_sweep(), rows)

    def activation_comparison(data, *, key, activations, inits, epochs, seeds, on_group=None,
                              **kw):
        calls.append("compare")
        rows = []
        for a in activations:
            for i in inits:
                curve = [0.5] * epochs
                rows.append(experiments.ComparisonRow(a, i, 0.5, 0.0, 0.0, curve, curve, curve,
                                                      [0.5] * seeds, ["ok"] * seeds))
                if on_group is not None:
                    on_group(rows[-1])
        return rows

    monkeypatch.setattr(experiments, "loss_comparison", loss_comparison)
    monkeypatch.setattr(experiments, "activation_comparison", activation_comparison)
    losses = ["experiment", "losses", "--hidden", "8", "--epochs", "2", "--seeds", "1"]
    rc, stdout, err = _run([*losses, "--out", str(tmp_path / "l")], capsys)
    assert rc == 0 and "margin met" in stdout and "losses:" not in stdout
    assert [re.sub(r": val_acc .*", "", line) for line in err.splitlines()] == [
        f"losses: training with {loss}, epoch {e}/2"
        for loss in ("multiclass_hinge_loss", "softmax_cross_entropy") for e in (1, 2)]
    rc, quiet_stdout, err = _run([*losses, "--quiet", "--out", str(tmp_path / "lq")], capsys)
    assert rc == 0 and err == ""
    assert quiet_stdout.replace("lq", "l") == stdout

    for verb in (["compare"], ["experiment", "activations"]):
        cmp = [*verb, "--activations", "relu,tanh", "--inits", "he_normal,lecun_normal",
               "--hidden", "8", "--epochs", "1", "--seeds", "1"]
        rc, stdout, err = _run([*cmp, "--out", str(tmp_path / verb[-1])], capsys)
        assert rc == 0 and "val_acc_mean" in stdout
        name = verb[-1]
        assert [re.sub(r" done: .*", "", line) for line in err.splitlines()] == [
            f"{name}: 1/4 relu + he_normal", f"{name}: 2/4 relu + lecun_normal",
            f"{name}: 3/4 tanh + he_normal", f"{name}: 4/4 tanh + lecun_normal"]
        rc, _, err = _run([*cmp, "--quiet", "--out", str(tmp_path / f"{name}-q")], capsys)
        assert rc == 0 and err == ""
    assert calls == ["losses", "losses", "compare", "compare", "compare", "compare"]


@pytest.mark.slow
def test_compare_writes_rows_curves_and_table(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc, stdout, err = _run(["compare", "--activations", "relu,maxout", "--seeds", "2",
                            "--epochs", "2", "--hidden", "16", "--out", str(out)], capsys)
    assert rc == 0
    assert [line.split(" done:")[0] for line in err.splitlines()] == [
        "compare: 1/2 relu + he_normal", "compare: 2/2 maxout + he_normal"]
    res = json.loads((out / "results.json").read_text())
    assert [(r["activation"], r["init"]) for r in res["rows"]] == [("relu", "he_normal"),
                                                                   ("maxout", "he_normal")]
    for r in res["rows"]:
        assert {"activation", "init", "val_acc_mean", "val_acc_std", "dead_fraction"} <= set(r)
        assert len(r["val_acc_per_seed"]) == 2 and len(r["curves"]["val_acc"]) == 2
        assert 0.0 <= r["dead_fraction"] <= 1.0
    assert _png(out / "curves.png")
    assert "val_acc_mean" in stdout and "maxout" in stdout


@pytest.mark.slow
def test_experiment_losses(tmp_path, capsys):
    out = tmp_path / "losses"
    rc, stdout, err = _run(["experiment", "losses", "--epochs", "2", "--seeds", "1",
                            "--hidden", "16", "--out", str(out)], capsys)
    assert rc == 0
    # One progress line per epoch of each loss, as the library's on_epoch reports it.
    assert [line.split(":")[0] + ":" + line.split(":")[1] for line in err.splitlines()] == [
        f"losses: training with {loss}, epoch {e}/2"
        for loss in ("multiclass_hinge_loss", "softmax_cross_entropy") for e in (1, 2)]
    res = json.loads((out / "results.json").read_text())
    assert [r["loss"] for r in res["rows"]] == ["multiclass_hinge_loss", "softmax_cross_entropy"]
    assert res["config"]["l2"] == 0.0
    scores = res["scores"]
    met = [h for s, h in zip(scores["correct_score"], scores["hinge"], strict=True)
           if s > max(scores["other_scores"]) + 1]
    assert met and all(h == 0 for h in met)
    assert _png(out / "scores.png") and _png(out / "curves.png")
    assert "margin met" in stdout and "cross-entropy" in stdout


@pytest.mark.slow
def test_compare_honours_activation_and_init(tmp_path, capsys):
    out = tmp_path / "one"
    rc, stdout, _ = _run(["compare", "--activation", "tanh", "--init", "lecun_normal",
                          "--seeds", "1", "--epochs", "1", "--hidden", "8", "--out", str(out)],
                         capsys)
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert [(r["activation"], r["init"]) for r in res["rows"]] == [("tanh", "lecun_normal")]
    assert res["config"]["activations"] == ["tanh"] and res["config"]["inits"] == ["lecun_normal"]
    assert "activation" not in res["config"] and "init" not in res["config"]


@pytest.mark.parametrize("argv, needle", [
    (["compare", "--activations", "relu,nope"], "--activations: unknown 'nope'; valid: "),
    (["compare", "--inits", "bogus"], "--inits: unknown 'bogus'; valid: "),
    (["compare", "--activation", "tanh", "--activations", "relu"],
     "give --activations or --activation, not both"),
    (["experiment", "activations", "--init", "he_normal", "--inits", "he_normal"],
     "give --inits or --init, not both"),
    (["experiment", "losses", "--loss", "hinge"], "--loss: this experiment trains both"),
    (["experiment", "activations", "--seeds", "0"], "--seeds must be >= 1"),
    (["experiment", "init-depth", "--width", "0"], "--width must be >= 1"),
    (["diagnose", "--overfit-examples", "0"], "--overfit-examples must be >= 1"),
])
def test_bad_flags_one_line_nothing_written(tmp_path, capsys, argv, needle):
    out = tmp_path / "never"
    rc, _, err = _run([*argv, "--out", str(out)], capsys)
    assert rc == 2 and needle in err and err.count("\n") == 1
    assert err.startswith(f"jaxnn {' '.join(argv[:2] if argv[0] == 'experiment' else argv[:1])}"
                          ": error: ")
    assert not out.exists()


def test_every_verb_has_help(capsys):
    for argv in (["diagnose"], ["gradcheck"], ["compare"], ["experiment"],
                 ["experiment", "init-depth"], ["experiment", "activations"],
                 ["experiment", "losses"]):
        with pytest.raises(SystemExit) as e:
            main([*argv, "--help"])
        assert e.value.code == 0
    assert "--activations" in capsys.readouterr().out
    assert main(["experiment"]) == 2  # no experiment named: usage on stderr
    assert "usage: jaxnn experiment" in capsys.readouterr().err
