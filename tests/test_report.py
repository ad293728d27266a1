"""jaxnn.report: the babysitting page of a train, diagnose, search or ensemble directory.

One tiny real train run (its dataset under a path holding ``<script>``, so escaping is tested on
a real config) and hand-made diagnose, search (a real Optuna study) and ensemble directories.
The page must be self-contained (every image a data URI, nothing pointing outside), its verdicts
must match hand-made histories, its layer table must be ``layer_stats``'s numbers for the run.
"""

import base64
import html
import json
import math
import os
from html.parser import HTMLParser

import jax
import numpy as np
import pytest

import jaxnn
from jaxnn import config as jconfig
from jaxnn import diagnostics, report, rundir
from jaxnn.cli import main

SCRIPT = "<script>alert(1)</script>"


# --------------------------------------------------------------------------- parsing the page
_INLINE = {"b", "i", "em", "strong", "code", "a", "span", "small"}


class _Page(HTMLParser):
    """Every tag with its attributes, the text, and the rows of the layer table."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.layer_rows: dict[str, list[dict]] = {}
        self._row = None
        self._cell = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag not in _INLINE:
            self.text.append(" ")
        self.tags.append((tag, a))
        if tag == "tr" and "data-layer" in a:
            self._row = self.layer_rows.setdefault(a["data-layer"], [])
        elif tag == "td" and self._row is not None:
            self._cell = {"value": a.get("data-value"), "text": ""}
            self._row.append(self._cell)

    def handle_endtag(self, tag):
        if tag not in _INLINE:
            self.text.append(" ")
        if tag == "tr":
            self._row = None
        if tag == "td":
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell["text"] += data

    def all_text(self) -> str:
        return " ".join("".join(self.text).split())

    def ids(self) -> set[str]:
        return {a["id"] for _, a in self.tags if "id" in a}


def assert_self_contained(page: str) -> _Page:
    """No request leaves the page: every src/href is a data: URI or an in-page anchor, no script,
    no external style or font, and the page says so to the browser (Content-Security-Policy)."""
    p = _Page(page)
    tags = {t for t, _ in p.tags}
    assert not tags & {"script", "link", "iframe", "object", "embed", "base", "frame", "audio",
                       "video", "source"}, tags
    for tag, attrs in p.tags:
        for name in ("src", "href", "srcset", "action", "data", "poster", "background"):
            value = (attrs.get(name) or "").strip()
            if not value:
                continue
            assert not value.lower().startswith(("http", "//", "ftp", "file")), (tag, name, value)
            assert "://" not in value, (tag, name, value[:80])
            assert value.startswith(("data:image/png;base64,", "#")), (tag, name, value[:80])
    imgs = [a for t, a in p.tags if t == "img"]
    for a in imgs:
        assert a["src"].startswith("data:image/png;base64,")
        png = base64.b64decode(a["src"].split(",", 1)[1], validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
        assert a.get("alt")
    assert "url(" not in page and "@import" not in page and "@font-face" not in page
    csp = [a for t, a in p.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]["content"]
    return p


# --------------------------------------------------------------------------- directories
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-epoch MLP on 3 blobs whose .npz lives at ``.../<script>alert(1)</script>.npz`` (a
    directory ``<script>alert(1)<`` holding ``script>.npz``)."""
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 6)) * 3
    y = rng.integers(0, 3, size=300)
    x = (centers[y] + rng.normal(size=(300, 6))).astype(np.float32)
    data = str(root / f"{SCRIPT}.npz")
    os.makedirs(os.path.dirname(data))
    np.savez(data, x=x, y=y)
    run = str(root / "run")
    assert main(["train", "--dataset", data, "--hidden", "8,8", "--batch-size", "32",
                 "--epochs", "3", "--out", run, "--quiet", "--no-report"]) == 0
    assert not os.path.exists(os.path.join(run, "report.html"))
    return run


def _records(train_loss, val_loss, train_acc=None, val_acc=None):
    n = len(train_loss)
    train_acc = train_acc or [0.95] * n
    val_acc = val_acc or [0.93] * n
    return [{"epoch": i + 1, "train_loss": a, "val_loss": b, "train_acc": c, "val_acc": d,
             "lr": 0.05, "seconds": 0.1}
            for i, (a, b, c, d) in enumerate(zip(train_loss, val_loss, train_acc, val_acc,
                                                 strict=True))]


def _fake_train_dir(path, records, *, initial_loss=2.3, **config):
    """A train directory without checkpoints: curves, verdicts and config only."""
    os.makedirs(path)
    cfg = jconfig.RunConfig(**config).to_dict()
    rundir.write_json_atomic(os.path.join(path, "config.json"), cfg)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    rundir.write_json_atomic(os.path.join(path, "summary.json"), {
        "test_acc": 0.9, "test_loss": 0.3, "epochs_done": len(records),
        "stopped_reason": "completed", "status": "ok", "initial_loss": initial_loss})
    return str(path)


def _diagnose_dir(path, *, activation="relu"):
    os.makedirs(path)
    layers = [{"name": "layer_0", "pre_mean": 0.1, "pre_std": 1.2, "mean": 0.5, "std": 0.7,
               "saturated": 0.0, "dead": 0.45, "grad_norm": 0.3, "update_ratio": 0.2},
              {"name": "layer_1", "pre_mean": -0.2, "pre_std": 2.0, "mean": -0.2, "std": 2.0,
               "saturated": 0.0, "dead": 0.0, "grad_norm": 0.1, "update_ratio": 2e-5}]
    rundir.write_json_atomic(os.path.join(path, "diagnosis.json"), {
        "config": jconfig.RunConfig(activation=activation, epochs=5).to_dict(),
        "initial_loss": {"expected": 2.302585, "measured": 2.3026, "ok": True, "with_l2": 2.31,
                         "l2": 1.0, "as_initialized": 3.1, "init_scale": 0.01},
        "overfit": {"final_loss": 0.01, "train_acc": 1.0, "ok": True, "initial_loss": 3.1,
                    "num_examples": 20, "epochs": 30, "stopped_reason": "completed",
                    "status": "ok"},
        "layers": layers, "verdicts": [], "reasons": [],
        "training": {"records": _records([1.5, 0.6, 0.4, 0.3, 0.2], [1.4, 0.7, 0.6, 0.62, 0.8]),
                     "stopped_reason": "completed", "initial_loss": 3.1}})
    return str(path)


def _search_dir(path, *, trials: int):
    """A search directory: results.json and a real Optuna study in study.db in which the
    objective depends on the learning rate only."""
    import optuna
    from optuna.distributions import FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.makedirs(path)
    url = f"sqlite:///{os.path.join(path, 'study.db')}"
    study = optuna.create_study(study_name="jaxnn-search", storage=url)
    dist = {"learning_rate": FloatDistribution(1e-3, 1.0, log=True),
            "l2": FloatDistribution(1e-6, 1e-1, log=True)}
    rng = np.random.default_rng(1)
    rows = []
    for i in range(trials):
        lr, l2 = float(10 ** rng.uniform(-3, 0)), float(10 ** rng.uniform(-6, -1))
        val = (math.log10(lr) + 1.3) ** 2 + 0.1
        study.add_trial(optuna.trial.create_trial(
            params={"learning_rate": lr, "l2": l2}, distributions=dist, value=val))
        rows.append({"params": {"learning_rate": lr, "l2": l2}, "val_loss": val,
                     "val_acc": 1 - val / 10, "status": "ok", "number": i, "epochs": 2,
                     "command": f"jaxnn train --lr {lr!r} --l2 {l2!r} --epochs 2"})
    rows.sort(key=lambda t: t["val_loss"])
    rundir.write_json_atomic(os.path.join(path, "results.json"), {
        "method": "random", "config": {"hidden": "16", "epochs": 2, "lr_range": "1e-3,1",
                                       "trials": trials, "method": "random"},
        "study": {"storage": url, "name": "jaxnn-search"}, "trials": rows, "best": rows[0]})
    return str(path)


def _ensemble_dir(path):
    os.makedirs(path)
    rundir.write_json_atomic(os.path.join(path, "summary.json"), {
        "members": 3, "member_test_acc": [0.91, 0.93, 0.92], "member_test_loss": [0.3, 0.25, 0.28],
        "mean_member_test_acc": 0.92, "ensemble_test_acc": 0.95, "ensemble_test_loss": 0.2,
        "status": ["ok", "ok", "ok"], "seconds": 3.0,
        "config": {"hidden": "16", "epochs": 2, "lr": 0.05}})
    return str(path)


@pytest.fixture(scope="module")
def dirs(trained, tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    return {"train": trained, "diagnose": _diagnose_dir(root / "diag"),
            "search": _search_dir(root / "search", trials=10),
            "ensemble": _ensemble_dir(root / "ens")}


@pytest.fixture(scope="module")
def pages(dirs):
    return {kind: report.report_html(path) for kind, path in dirs.items()}


# --------------------------------------------------------------------------- (1) self-contained
SECTIONS = {
    "train": {"verdicts", "command", "curves", "initial-loss", "layers", "histograms",
              "update-ratios"},
    "diagnose": {"verdicts", "command", "curves", "initial-loss", "overfit", "layers",
                 "update-ratios"},
    "search": {"best", "command", "trials", "importance"},
    "ensemble": {"members", "command"},
}


@pytest.mark.parametrize("kind", sorted(SECTIONS))
def test_page_is_self_contained_and_has_its_sections(pages, dirs, kind):
    p = assert_self_contained(pages[kind])
    assert SECTIONS[kind] <= p.ids(), SECTIONS[kind] - p.ids()
    assert report.run_kind(dirs[kind]) == kind
    assert sum(t == "img" for t, _ in p.tags) >= {"train": 3, "diagnose": 2, "search": 2,
                                                 "ensemble": 1}[kind]


def test_write_report_writes_the_page_atomically_and_returns_its_path(dirs, tmp_path):
    path = _ensemble_dir(tmp_path / "ens")
    out = report.write_report(path)
    assert out == os.path.join(path, "report.html")
    text = open(out, encoding="utf-8").read()
    assert text.startswith("<!DOCTYPE html>") and "ensemble of 3" in text
    assert sorted(os.listdir(path)) == ["report.html", "summary.json"]  # no temporary left
    assert report.write_report(path) == out  # replaces it


# --------------------------------------------------------------------------- (2) verdicts
def test_rising_validation_loss_is_overfitting_from_the_epoch_it_starts():
    recs = _records([2.0, 1.0, 0.6, 0.4, 0.3, 0.25, 0.2], [1.9, 1.1, 0.8, 0.7, 0.75, 0.85, 0.95])
    d = diagnostics.diagnose(recs, initial_loss=2.3)
    assert d.verdicts == [diagnostics.OVERFITTING]
    assert d.overfit_epoch == 4
    assert d.reasons == ["validation loss rising while training loss falls from epoch 4 "
                         "(0.7 then, 0.95 at the end)"]


def test_overfitting_onset_needs_a_real_rise_with_training_still_improving():
    diag = lambda t, v, **kw: diagnostics.diagnose(_records(t, v, **kw), initial_loss=2.3)
    # 0.70 -> 0.75 is under 10%: noise, not a verdict
    assert diag([2.0, 1.0, 0.6, 0.4, 0.3, 0.25], [1.9, 1.1, 0.8, 0.7, 0.72, 0.75]).ok
    # the minimum at the second-to-last epoch: one epoch is no trend
    assert diag([2.0, 1.0, 0.6, 0.4], [1.9, 1.1, 0.7, 0.9]).overfit_epoch is None
    # both rising: no overfitting onset (the learning rate's verdict instead)
    d = diag([1.0, 0.5, 0.6, 1.4, 1.6], [1.0, 0.5, 0.6, 1.4, 1.6])
    assert d.overfit_epoch is None and diagnostics.OVERFITTING not in d.verdicts
    # epochs are the records' own numbers (a resumed run's metrics start wherever)
    recs = _records([2.0, 1.0, 0.6, 0.4, 0.3], [1.9, 1.0, 0.8, 0.9, 1.0])
    for i, r in enumerate(recs):
        r["epoch"] = 11 + i
    assert diagnostics.diagnose(recs, initial_loss=2.3).overfit_epoch == 13


def test_an_accuracy_gap_names_the_epoch_too():
    recs = _records([1.0, 0.5, 0.3, 0.1, 0.05], [1.0, 0.6, 0.5, 0.6, 0.7],
                    [0.8, 0.9, 0.95, 0.99, 1.0], [0.7, 0.75, 0.78, 0.77, 0.76])
    d = diagnostics.diagnose(recs, initial_loss=2.3)
    assert d.verdicts == [diagnostics.OVERFITTING]
    assert d.reasons[0].startswith("training accuracy 1.000 is 0.240 above validation accuracy "
                                   "0.760; validation loss rising while training loss falls "
                                   "from epoch 3")


@pytest.mark.parametrize("train_loss,val_loss,sentence", [
    ([2.0, 1.0, 0.6, 0.4, 0.3, 0.25, 0.2], [1.9, 1.1, 0.8, 0.7, 0.75, 0.85, 0.95],
     "validation loss rising while training loss falls from epoch 4 (0.7 then, 0.95 at the "
     "end): overfitting; use more regularization (L2, dropout) or more data."),
    ([2.29, 2.28, 2.28], [2.29, 2.28, 2.28],
     "the training loss went from 2.3 to only 2.28 (0.87% lower): learning rate too low; raise "
     "the learning rate (3-10x)."),
    ([2.0, 6.0, 2.2], [2.0, 6.0, 2.2],
     "the training loss jumped to 6 at epoch 2 from a best of 2: learning rate too high; lower "
     "the learning rate (3-10x)."),
])
def test_the_page_says_the_verdict_on_the_curves(tmp_path, train_loss, val_loss, sentence):
    path = _fake_train_dir(tmp_path / "run", _records(train_loss, val_loss),
                           dataset="/data/$x^2$ & <b>.npz")  # no mathtext, no markup
    page = report.report_html(path)
    p = assert_self_contained(page)
    assert sentence in p.all_text()
    assert "no per-layer statistics" in p.all_text()  # no checkpoint: said, not an error
    assert "/data/$x^2$ & <b>.npz" in p.all_text() and "<b>.npz" not in page


def test_a_healthy_run_gets_no_verdict(pages):
    text = _Page(pages["train"]).all_text()
    assert "No problem found" in text


def test_initial_loss_check_is_log_c_against_the_measured_loss(pages, trained):
    summary = json.load(open(os.path.join(trained, "summary.json")))
    text = _Page(pages["train"]).all_text()
    assert f"Expected {math.log(3):.4g} = log(3); measured {summary['initial_loss']:.4g}" in text
    d = _Page(pages["diagnose"]).all_text()
    assert "Expected 2.303 = log(10); measured 2.303: within 5%" in d
    assert "With L2 1: 2.31 (raised, as it must)" in d


# --------------------------------------------------------------------------- (3) layer table
def _layer_stats_of(run):
    """layer_stats of the run as a user would compute it: the trained model, the first 256
    validation examples, the checkpoint's optimizer state for the update."""
    tm = jaxnn.load_run(run)
    cfg = tm.config
    x, y = tm.split("val")
    n_train = tm.split("train")[0].shape[0]
    opt = jconfig.build_optimizer(cfg, steps_per_epoch=jconfig.steps_per_epoch(cfg, n_train))
    found = rundir.load_checkpoint(run, tm.model, opt, key=jax.random.key(cfg.seed),
                                   step=tm.step)
    return diagnostics.layer_stats(tm.model, tm.params, tm.state, tm.preprocess(x[:256]),
                                   y[:256], loss=jconfig.build_loss(cfg), optimizer=opt,
                                   opt_state=found.state.opt_state, l2=cfg.l2)


COLUMNS = {3: "pre_mean", 4: "pre_std", 5: "mean", 6: "std", 7: "saturated", 8: "dead",
           9: "grad_norm", 10: "update_ratio"}


def test_layer_table_rows_are_layer_stats_of_the_run(pages, trained):
    expected = _layer_stats_of(trained)
    rows = _Page(pages["train"]).layer_rows
    assert list(rows) == [s.name for s in expected] == ["layer_0", "layer_1", "layer_2"]
    for s in expected:
        row = rows[s.name]
        assert row[1]["text"] == ("relu" if s.name != "layer_2" else "(scores)")
        assert row[2]["text"] == ("8" if s.name != "layer_2" else "3")
        for i, field in COLUMNS.items():
            assert float(row[i]["value"]) == pytest.approx(getattr(s, field), rel=1e-5,
                                                           abs=1e-7), (s.name, field)
        ratio = s.update_ratio
        assert row[11]["text"].startswith(f"{ratio / 1e-3:.3g}x: ")
    assert 1e-5 < expected[0].update_ratio < 1  # a real step, not NaN


def test_the_model_in_memory_gives_the_same_layer_numbers(trained):
    """``jaxnn train`` writes its report from the Experiment and TrainState it holds;
    ``jaxnn report`` loads the run (load_run): the same rows."""
    loaded = _Page(report.report_html(trained)).layer_rows
    exp = jconfig.build(jconfig.RunConfig.load(os.path.join(trained, "config.json")))
    state = rundir.load_checkpoint(trained, exp.model, exp.optimizer,
                                   key=jax.random.key(exp.config.seed)).state
    in_memory = _Page(report.report_html(trained, experiment=exp, state=state)).layer_rows
    assert list(in_memory) == list(loaded)
    for name in loaded:
        for i in COLUMNS:
            assert float(in_memory[name][i]["value"]) == pytest.approx(
                float(loaded[name][i]["value"]), rel=1e-4, abs=1e-6), (name, COLUMNS[i])


def test_diagnose_page_shows_its_layer_table_and_flags(pages):
    p = _Page(pages["diagnose"])
    rows = p.layer_rows
    assert float(rows["layer_0"][8]["value"]) == 0.45
    text = p.all_text()
    assert "200x: high (learning rate too high?)" in text
    assert "0.02x: low (learning rate too low?)" in text
    assert "validation loss rising while training loss falls from epoch 3" in text
    assert "20 examples, 30 epoch(s): loss 0.01, accuracy 1: ok" in text


# --------------------------------------------------------------------------- (4) escaping
def test_user_strings_are_escaped(pages, trained):
    page = pages["train"]
    assert SCRIPT not in page and "<script" not in page
    assert html.escape(SCRIPT) in page  # the dataset path, in the config and the command
    p = _Page(page)
    assert not any(t == "script" for t, _ in p.tags)
    assert SCRIPT in p.all_text()  # shown to the reader as it is


def test_attribute_and_markup_injection_in_a_search_is_escaped(tmp_path):
    path = _search_dir(tmp_path / "s", trials=3)
    res = json.load(open(os.path.join(path, "results.json")))
    evil = '"><img src=http://evil.example/x onerror=alert(1)>'
    res["best"]["command"] += f" --dataset '{evil}'"
    res["trials"][0]["params"][evil] = 1.0
    res["config"]["space"] = evil
    rundir.write_json_atomic(os.path.join(path, "results.json"), res)
    page = report.report_html(path)
    assert evil not in page and "evil.example" in page
    assert_self_contained(page)


# --------------------------------------------------------------------------- search importance
def test_search_importance_ranks_the_hyperparameter_the_objective_depends_on(pages):
    p = _Page(pages["search"])
    text = p.all_text()
    assert "fANOVA over the study's 10 finished trials" in text
    i_lr, i_l2 = text.index("learning_rate 0."), text.index("l2 0.")
    rows = [a for t, a in p.tags if t == "td" and "data-value" in a]
    assert rows
    assert i_lr < text.index("fANOVA")
    assert "Retrain it exactly" in text and "jaxnn train --lr" in text
    assert i_l2 > 0


def test_search_importance_falls_back_with_a_note(tmp_path):
    path = _search_dir(tmp_path / "one", trials=1)
    text = assert_self_contained(report.report_html(path)).all_text()
    assert "1 finished trial(s): importance needs at least 2" in text
    os.remove(os.path.join(path, "study.db"))
    text = _Page(report.report_html(path)).all_text()
    assert "importance not computed" in text


# --------------------------------------------------------------------------- not a run
def test_a_directory_that_is_no_run_is_one_line_and_nothing_written(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    for path, needle in ((tmp_path, "is not a jaxnn train, diagnose, search or ensemble"),
                         (tmp_path / "missing", "no such directory")):
        with pytest.raises(rundir.RunDirError, match=needle) as e:
            report.write_report(path)
        assert "\n" not in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / ".jaxnn-run").write_text('{"verb": "experiment", "version": "0.1.0"}')
    with pytest.raises(rundir.RunDirError, match="a jaxnn experiment directory"):
        report.write_report(exp)
    assert not (exp / "report.html").exists()
