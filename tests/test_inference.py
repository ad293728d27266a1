"""jaxnn.load_run: a trained run as a model that predicts, evaluates and exports, read-only.

One tiny MLP run and one tiny convnet run per session (trained through the CLI in-process, as a
user makes them); every test reads them or a copy of them.
"""

import os
import shutil
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest

import jaxnn
from jaxnn import config, inference, rundir, train
from jaxnn.checkpoint import Checkpointer
from jaxnn.cli import main

ARCHS = {"mlp": ["--hidden", "8"], "conv": ["--arch", "conv:2,pool,fc:8"]}


def trained_run(tmp_path_factory, kind: str) -> str:
    """The session's tiny finished run of ``kind`` (trained once per test process, shared with
    tests/test_cli_use.py); tests must not change it (copy it first)."""
    out = tmp_path_factory.getbasetemp() / f"trained-{kind}"
    if not (out / "summary.json").exists():
        code = main(["train", *ARCHS[kind], "--epochs", "2", "--batch-size", "64", "--quiet",
                     "--out", str(out)])
        assert code == 0
    return str(out)


@pytest.fixture(scope="session")
def mlp_run(tmp_path_factory):
    return trained_run(tmp_path_factory, "mlp")


@pytest.fixture(scope="session")
def conv_run(tmp_path_factory):
    return trained_run(tmp_path_factory, "conv")


@pytest.fixture(params=["mlp", "conv"])
def run(request):
    return request.getfixturevalue(f"{request.param}_run")


def _listing(path):
    """Every file under ``path`` with its size and modification time."""
    out = {}
    for root, _dirs, files in os.walk(path):
        for f in files:
            st = os.stat(os.path.join(root, f))
            out[os.path.relpath(os.path.join(root, f), path)] = (st.st_size, st.st_mtime_ns)
    return out


def _copy(run, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(run, dst)
    return str(dst)


# --------------------------------------------------------------------------- loading
def test_load_run_is_the_library_entry_point(mlp_run):
    m = jaxnn.load_run(mlp_run)
    assert jaxnn.load_run is inference.load_run
    assert isinstance(m.config, config.RunConfig) and m.config.hidden == "8"
    assert m.step == 2 and m.notes == ()
    assert m.input_shape == (64,) and m.num_classes == 10
    assert jax.tree.structure(m.params) == jax.tree.structure(m.model.init(jax.random.key(0))[0])
    assert "preprocess.npz" in os.listdir(mlp_run)


def test_evaluate_on_the_test_split_is_the_summary(run):
    m = jaxnn.load_run(run)
    x, y = m.split("test")
    res = m.evaluate(x, y)
    summary = rundir.read_json(os.path.join(run, "summary.json"))
    assert res["n"] == len(y)
    assert res["acc"] == summary["test_acc"]
    assert res["loss"] == pytest.approx(summary["test_loss"], rel=1e-6, abs=1e-7)


def test_predict_is_the_model_on_the_training_time_preprocessing(run):
    """Probabilities against the model applied to the data as `config.build` preprocesses it
    (no code of jaxnn.inference on that side), and their accuracy against train.evaluate."""
    m = jaxnn.load_run(run)
    exp = config.build(m.config)
    x, _ = m.split("test")
    probs = m.predict(x)
    assert probs.shape == (len(x), 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    scores, _ = exp.model.apply(m.params, m.state, exp.data.x_test, train=False)
    np.testing.assert_allclose(probs, jax.nn.softmax(scores, axis=-1), atol=1e-6)
    ev = train.evaluate(exp.model.apply, m.params, m.state, exp.data.x_test, exp.data.y_test,
                        loss=exp.loss)
    assert np.mean(probs.argmax(axis=1) == exp.data.y_test) == pytest.approx(float(ev.accuracy))


def test_predict_in_batches_pads_the_last_and_gives_the_same(mlp_run):
    m = jaxnn.load_run(mlp_run)
    x, _ = m.split("test")
    whole = m.predict(x)
    np.testing.assert_array_equal(m.predict(x, batch_size=100), whole)
    # one example is a matrix-vector product: rounding may differ in the last float32 bits
    np.testing.assert_allclose(m.predict(x[:1]), whole[:1], atol=1e-6)
    assert m.predict(x[:0]).shape == (0, 10)


def test_checkpoint_n_loads_that_epoch(mlp_run):
    final, first = jaxnn.load_run(mlp_run), jaxnn.load_run(mlp_run, checkpoint=1)
    assert first.step == 1
    leaves = zip(jax.tree.leaves(final.params), jax.tree.leaves(first.params), strict=True)
    assert any(not np.array_equal(a, b) for a, b in leaves)
    x, y = final.split("test")
    assert first.evaluate(x, y)["loss"] != final.evaluate(x, y)["loss"]
    # epoch 1's params are those of epoch 1's checkpoint, as resume would restore them
    template = train.init_train_state(first.model, config.build_optimizer(
        first.config, steps_per_epoch=1), key=jax.random.key(0))
    with Checkpointer(os.path.join(mlp_run, "checkpoints"), read_only=True) as ckpt:
        state, _ = ckpt.restore(template=template, step=1)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(first.params), strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- input shapes
def test_an_mlp_takes_flat_examples_or_images(mlp_run):
    m = jaxnn.load_run(mlp_run)
    x, _ = m.split("test")
    np.testing.assert_array_equal(m.predict(x[:9].reshape(9, 8, 8, 1)), m.predict(x[:9]))
    with pytest.raises(ValueError, match=r"expected shape \[n, 64\].*got \[9, 10\]"):
        m.predict(x[:9, :10])


def test_a_convnet_takes_images_or_flat_examples(conv_run):
    m = jaxnn.load_run(conv_run)
    assert m.input_shape == (8, 8, 1)
    x, _ = m.split("test")
    np.testing.assert_array_equal(m.predict(x[:9].reshape(9, 64)), m.predict(x[:9]))
    with pytest.raises(ValueError, match=r"\[n, 8, 8, 1\] or \[n, 64\].*got \[9, 8, 8\]"):
        m.predict(x[:9, :, :, 0])  # ambiguous channels are not guessed
    with pytest.raises(ValueError, match=r"got \[64\]"):
        m.predict(x[0].reshape(-1))  # one example without its batch axis


@pytest.mark.parametrize("bad", ["nan", "inf", "huge"])
def test_non_finite_inputs_are_refused(mlp_run, bad):
    m = jaxnn.load_run(mlp_run)
    x = np.zeros((3, 64), np.float64)
    x[1, 5] = {"nan": np.nan, "inf": np.inf, "huge": 1e300}[bad]
    with pytest.raises(ValueError, match="NaN or inf"):
        m.predict(x)


def test_evaluate_checks_the_labels(mlp_run):
    m = jaxnn.load_run(mlp_run)
    x, y = m.split("test")
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 10\), got 10"):
        m.evaluate(x[:3], np.array([0, 10, 1]))
    with pytest.raises(ValueError, match=r"shape \[3\]"):
        m.evaluate(x[:3], y[:4])
    assert m.evaluate(x[:3], y[:3].astype(np.float64))["n"] == 3


# --------------------------------------------------------------------------- read-only loading
def test_loading_changes_nothing_and_works_while_training_holds_the_lock(mlp_run, tmp_path):
    path = _copy(mlp_run, tmp_path)
    os.remove(os.path.join(path, "summary.json"))  # as while training
    before = _listing(path)
    with rundir.RunDir.open(path):  # the lock a training process holds
        m = jaxnn.load_run(path)
    assert m.step == 2
    assert len(m.notes) == 1 and "still training" in m.notes[0] and str(os.getpid()) in m.notes[0]
    after = jaxnn.load_run(path)
    assert len(after.notes) == 1 and "did not finish" in after.notes[0]
    before.pop(".lock", None)
    now = _listing(path)
    now.pop(".lock", None)
    assert now == before


def test_a_corrupt_newest_checkpoint_is_skipped_and_left_in_place(mlp_run, tmp_path):
    path = _copy(mlp_run, tmp_path)
    newest = os.path.join(path, "checkpoints", "2")
    for root, _dirs, files in os.walk(newest):
        for f in files:
            with open(os.path.join(root, f), "r+b") as fh:
                fh.truncate(os.path.getsize(os.path.join(root, f)) // 3)
    before = _listing(path)
    m = jaxnn.load_run(path)
    assert m.step == 1
    assert len(m.notes) == 1 and m.notes[0].startswith("skipped checkpoint 2")
    assert _listing(path) == before and not os.path.exists(os.path.join(path, "corrupt-checkpoints"))
    with pytest.raises(rundir.RunDirError, match="checkpoint 2 does not restore"):
        jaxnn.load_run(path, checkpoint=2)


def test_a_run_from_before_preprocess_npz_refits_and_says_so(run, tmp_path):
    path = _copy(run, tmp_path, "old")
    os.remove(os.path.join(path, "preprocess.npz"))
    with pytest.warns(UserWarning, match="refitted preprocessing 'standardize'"):
        old = jaxnn.load_run(path)
    assert any("no preprocess.npz" in n for n in old.notes)
    new = jaxnn.load_run(run)
    x, _ = new.split("test")
    np.testing.assert_array_equal(old.predict(x), new.predict(x))
    assert not os.path.exists(os.path.join(path, "preprocess.npz"))  # loading writes nothing


@pytest.mark.parametrize("preprocess", ["pca:5", "none"])
def test_preprocess_npz_round_trips_other_steps(tmp_path, preprocess):
    """pca changes the example shape (the raw shape is stored); none stores no state."""
    cfg = config.RunConfig(hidden="4", epochs=1, preprocess=preprocess)
    exp = config.build(cfg)
    with rundir.RunDir.create(tmp_path / "r") as r:
        inference.save_preprocessing(r, exp)
    arrays = np.load(tmp_path / "r" / "preprocess.npz")
    assert tuple(arrays["input_shape"]) == (64,)
    pre, state, shape, classes = inference._read_preprocessing(str(tmp_path / "r"), cfg)
    assert shape == (64,) and classes == 10
    if preprocess == "none":
        assert pre is None and state is None
    else:
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(exp.preprocess_state),
                        strict=True):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(rundir.RunDirError, match="config.json says 'center'"):
        inference._read_preprocessing(str(tmp_path / "r"), cfg.replace(preprocess="center"))


@pytest.mark.parametrize("case,needle", [
    ("missing", "no such run directory"), ("no_config", "no config.json"),
    ("no_checkpoints", "no checkpoints/"), ("empty_checkpoints", "no checkpoint in"),
    ("checkpoint_9", "no checkpoint 9; kept: 0, 1, 2"), ("checkpoint_-1", "checkpoint: expected"),
    ("bad_preprocess", "preprocess.npz: not a valid .npz"),
])
def test_unusable_runs_are_one_clear_error(mlp_run, tmp_path, case, needle):
    path = str(tmp_path / "nothing") if case == "missing" else _copy(mlp_run, tmp_path)
    kw = {}
    if case == "no_config":
        os.remove(os.path.join(path, "config.json"))
    elif case in ("no_checkpoints", "empty_checkpoints"):
        shutil.rmtree(os.path.join(path, "checkpoints"))
        if case == "empty_checkpoints":
            os.mkdir(os.path.join(path, "checkpoints"))
    elif case.startswith("checkpoint_"):
        kw["checkpoint"] = int(case.split("_")[1])
    elif case == "bad_preprocess":
        with open(os.path.join(path, "preprocess.npz"), "wb") as f:
            f.write(b"not a zip")
    with pytest.raises(ValueError) as e:
        jaxnn.load_run(path, **kw)
    assert needle in str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------------------- export
def test_export_is_batch_polymorphic_and_equals_predict(run, tmp_path):
    m = jaxnn.load_run(run)
    path = tmp_path / "model.jaxexport"
    exported = m.export(path)
    assert str(exported.in_avals[0].shape[0]) == "b"
    loaded = jax.export.deserialize(bytearray(path.read_bytes()))
    x, _ = m.split("test")
    for n in (1, 7):
        np.testing.assert_allclose(np.asarray(loaded.call(x[:n])), m.predict(x[:n]), atol=1e-6)


def test_export_lowers_for_several_platforms(conv_run):
    exported = jaxnn.load_run(conv_run).export(platforms=["cpu", "cuda", "tpu"])
    assert exported.platforms == ("cpu", "cuda", "tpu")
    with pytest.raises(ValueError, match="platforms: expected some of"):
        jaxnn.load_run(conv_run).export(platforms=["gpu"])


_STANDALONE = r"""
import sys
import jax, numpy as np
exported = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
x = np.load(sys.argv[2])["x"]
np.save(sys.argv[3], np.asarray(exported.call(x)))
assert "jaxnn" not in sys.modules and not any(m.startswith("jaxnn.") for m in sys.modules)
"""


@pytest.mark.slow
def test_an_exported_model_runs_in_a_process_without_jaxnn(run, tmp_path):
    m = jaxnn.load_run(run)
    m.export(tmp_path / "model.jaxexport")
    x, _ = m.split("test")
    np.savez(tmp_path / "x.npz", x=x[:33])
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _STANDALONE, str(tmp_path / "model.jaxexport"),
                           str(tmp_path / "x.npz"), str(tmp_path / "p.npy")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), m.predict(x[:33]), atol=1e-6)


def test_no_warning_for_a_current_run(mlp_run):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jaxnn.load_run(mlp_run)
