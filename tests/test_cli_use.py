"""`jaxnn evaluate`, `jaxnn predict` and `jaxnn export`: their numbers are the library's and
summary.json's, and every refusal is one line, exit 2, nothing written.

The runs are the session's tiny ones (tests/test_inference.py trains them once per process);
the CLI runs in-process except for the end-to-end test of the console script (slow).
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_inference import trained_run

import jaxnn
from jaxnn.cli import main


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    return trained_run(tmp_path_factory, "mlp")


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory):
    return trained_run(tmp_path_factory, "conv")


@pytest.fixture(scope="module")
def inputs(mlp_run, tmp_path_factory):
    """Input files next to each other: good ones and each kind of bad one."""
    d = tmp_path_factory.mktemp("inputs")
    x, _ = jaxnn.load_run(mlp_run).split("test")
    np.savez(d / "x.npz", x=x[:40])
    np.savez(d / "images.npz", x=x[:40].reshape(40, 8, 8, 1))
    np.savez(d / "wrong_shape.npz", x=x[:40, :10])
    np.savez(d / "no_x.npz", y=np.zeros(3))
    nan = x[:5].copy()
    nan[2, 3] = np.nan
    np.savez(d / "nan.npz", x=nan)
    np.savez(d / "strings.npz", x=np.array([["a"] * 64]))
    (d / "garbage.npz").write_bytes(b"not a zip file")
    np.savez(d / "other.npz", x=np.ones((60, 3), np.float32), y=np.arange(60) % 3)
    return d


def _cli(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors (the same one line)
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err, verb, *needles):
    assert code == 2, err
    lines = [s for s in err.strip().splitlines() if s]
    assert len(lines) == 1 and lines[0].startswith(f"jaxnn {verb}: error: "), err
    for n in needles:
        assert n in lines[0], lines[0]


# --------------------------------------------------------------------------- evaluate
def test_evaluate_prints_and_writes_the_summary_numbers(capsys, mlp_run, tmp_path):
    code, out, err = _cli(capsys, "evaluate", mlp_run, "--json", tmp_path / "e.json")
    assert code == 0, err
    summary = json.load(open(os.path.join(mlp_run, "summary.json")))
    res = json.load(open(tmp_path / "e.json"))
    assert res["acc"] == summary["test_acc"] and res["split"] == "test" and res["checkpoint"] == 2
    assert res["loss"] == pytest.approx(summary["test_loss"], rel=1e-6, abs=1e-7)
    assert f"accuracy {summary['test_acc']:.4f}" in out and f"loss {summary['test_loss']:.4f}" in out
    assert "359 examples" in out and err == ""


def test_evaluate_other_splits_datasets_and_checkpoints(capsys, mlp_run, tmp_path):
    m = jaxnn.load_run(mlp_run, checkpoint=1)
    x, y = m.split("val")
    code, _, err = _cli(capsys, "evaluate", mlp_run, "--split", "val", "--checkpoint", "1",
                        "--json", tmp_path / "v.json")
    assert code == 0, err
    res = json.load(open(tmp_path / "v.json"))
    assert (res["loss"], res["acc"], res["n"]) == tuple(m.evaluate(x, y).values())
    # a .npz dataset of the same kind of examples, split the same way
    xt, yt = m.split("test")
    np.savez(tmp_path / "d.npz", x=np.concatenate([xt, xt]), y=np.concatenate([yt, yt]))
    code, out, err = _cli(capsys, "evaluate", mlp_run, "--dataset", tmp_path / "d.npz")
    assert code == 0, err
    assert f"the test split of {tmp_path / 'd.npz'}" in out


# --------------------------------------------------------------------------- predict
@pytest.mark.parametrize("name", ["x.npz", "images.npz"])
def test_predict_writes_the_libraries_probabilities(capsys, mlp_run, inputs, tmp_path, name):
    out_file = tmp_path / "p.npz"
    code, out, err = _cli(capsys, "predict", mlp_run, "--input", inputs / name, "--output",
                          out_file, "--batch-size", "16")
    assert code == 0, err
    got = np.load(out_file)
    assert sorted(got.files) == ["labels", "probs"]
    expected = jaxnn.load_run(mlp_run).predict(np.load(inputs / "x.npz")["x"])
    np.testing.assert_allclose(got["probs"], expected, atol=1e-6)
    np.testing.assert_array_equal(got["labels"], expected.argmax(axis=1))
    assert "probs [40, 10], labels [40]" in out


def test_predict_overwrites_only_with_force(capsys, mlp_run, inputs, tmp_path):
    out_file = tmp_path / "p.npz"
    out_file.write_bytes(b"mine")
    code, _, err = _cli(capsys, "predict", mlp_run, "--input", inputs / "x.npz", "--output",
                        out_file)
    _one_line_error(code, err, "predict", "exists; pass --force")
    assert out_file.read_bytes() == b"mine"
    code, _, err = _cli(capsys, "predict", mlp_run, "--input", inputs / "x.npz", "--output",
                        out_file, "--force")
    assert code == 0, err
    assert np.load(out_file)["probs"].shape == (40, 10)


def _refusals():
    """(id, argv with placeholders, needles)."""
    return [
        ("no_run_dir", ["predict", "{tmp}/nope", "--input", "{in}/x.npz", "--output", "{out}"],
         ["no such run directory"]),
        ("no_checkpoint", ["predict", "{bare}", "--input", "{in}/x.npz", "--output", "{out}"],
         ["no checkpoint"]),
        ("checkpoint_not_kept", ["evaluate", "{run}", "--checkpoint", "9", "--json", "{out}"],
         ["no checkpoint 9"]),
        ("negative_checkpoint", ["evaluate", "{run}", "--checkpoint", "-1"], ["--checkpoint"]),
        ("wrong_shape", ["predict", "{run}", "--input", "{in}/wrong_shape.npz", "--output",
                         "{out}"], ["x: expected shape [n, 64]", "got [40, 10]"]),
        ("no_x", ["predict", "{run}", "--input", "{in}/no_x.npz", "--output", "{out}"],
         ["no array 'x' (found: y)"]),
        ("nan", ["predict", "{run}", "--input", "{in}/nan.npz", "--output", "{out}"],
         ["NaN or inf"]),
        ("strings", ["predict", "{run}", "--input", "{in}/strings.npz", "--output", "{out}"],
         ["expected real numbers"]),
        ("garbage_input", ["predict", "{run}", "--input", "{in}/garbage.npz", "--output",
                           "{out}"], ["--input", "not a valid .npz"]),
        ("missing_input", ["predict", "{run}", "--input", "{in}/none.npz", "--output", "{out}"],
         ["--input", "no such file"]),
        ("no_output_dir", ["predict", "{run}", "--input", "{in}/x.npz", "--output",
                           "{tmp}/no/p.npz"], ["--output", "no such directory"]),
        ("output_in_a_file", ["predict", "{run}", "--input", "{in}/x.npz", "--output",
                              "{in}/x.npz/p.npz"], ["--output", "no such directory"]),
        ("output_not_npz", ["predict", "{run}", "--input", "{in}/x.npz", "--output",
                            "{tmp}/p.txt"], ["expected a .npz"]),
        ("output_is_a_dir", ["predict", "{run}", "--input", "{in}/x.npz", "--output",
                             "{tmp}/d.npz"], ["is a directory"]),
        ("bad_batch_size", ["predict", "{run}", "--input", "{in}/x.npz", "--output", "{out}",
                            "--batch-size", "0"], ["--batch-size"]),
        ("bad_platform", ["export", "{run}", "{out}", "--platforms", "cpu,gpu"],
         ["--platforms", "'cpu,gpu'"]),
        ("export_exists", ["export", "{run}", "{in}/x.npz"], ["exists; pass --force"]),
        ("bad_split", ["evaluate", "{run}", "--split", "dev"], ["--split"]),
        ("missing_dataset", ["evaluate", "{run}", "--dataset", "{tmp}/none.npz"],
         ["--dataset", "none.npz"]),
        ("dataset_of_other_examples", ["evaluate", "{run}", "--dataset", "{in}/other.npz"],
         ["expected shape [n, 64]", "got [", ", 3]"]),
    ]


@pytest.mark.parametrize("argv,needles", [r[1:] for r in _refusals()],
                         ids=[r[0] for r in _refusals()])
def test_refusals_are_one_line_and_write_nothing(capsys, mlp_run, inputs, tmp_path, argv,
                                                 needles):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(open(os.path.join(mlp_run, "config.json")).read())
    (tmp_path / "d.npz").mkdir()
    subs = {"{tmp}": str(tmp_path), "{in}": str(inputs), "{run}": mlp_run, "{bare}": str(bare),
            "{out}": str(tmp_path / "out.npz")}
    for k, v in subs.items():
        argv = [a.replace(k, v) for a in argv]
    before = {p: sorted(os.listdir(p)) for p in (tmp_path, inputs, mlp_run, bare)}
    code, out, err = _cli(capsys, *argv)
    _one_line_error(code, err, argv[0], *needles)
    assert {p: sorted(os.listdir(p)) for p in before} == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_output_directory_is_refused(capsys, mlp_run, inputs, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = _cli(capsys, "predict", mlp_run, "--input", inputs / "x.npz", "--output",
                            ro / "p.npz")
        _one_line_error(code, err, "predict", "--output", "cannot write in")
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o755)


def test_an_unwritable_output_is_refused_even_for_root(capsys, mlp_run, inputs):
    """/proc refuses new files whoever asks: the probe is a real write, not a permission bit."""
    code, _, err = _cli(capsys, "predict", mlp_run, "--input", inputs / "x.npz", "--output",
                        "/proc/p.npz")
    _one_line_error(code, err, "predict", "--output /proc/p.npz: cannot write in /proc")


def test_an_old_run_says_it_refits_in_one_line(capsys, mlp_run, inputs, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(mlp_run, old)
    os.remove(old / "preprocess.npz")
    code, _, err = _cli(capsys, "predict", old, "--input", inputs / "x.npz", "--output",
                        tmp_path / "p.npz")
    assert code == 0
    assert err.strip().splitlines() == [f"jaxnn predict: {old} has no preprocess.npz (trained "
                                        "by an older jaxnn): refitted preprocessing "
                                        "'standardize' on the training split of digits"]
    expected = jaxnn.load_run(mlp_run).predict(np.load(inputs / "x.npz")["x"])
    np.testing.assert_array_equal(np.load(tmp_path / "p.npz")["probs"], expected)


# --------------------------------------------------------------------------- export
def test_export_writes_a_loadable_function(capsys, conv_run, inputs, tmp_path):
    code, out, err = _cli(capsys, "export", conv_run, tmp_path / "m.bin", "--platforms",
                          "cpu,tpu")
    assert code == 0, err
    assert "float32 [b, 8, 8, 1] -> probabilities [b, 10], platforms cpu, tpu" in out
    exported = jax.export.deserialize(bytearray((tmp_path / "m.bin").read_bytes()))
    x = np.load(inputs / "images.npz")["x"]
    np.testing.assert_allclose(np.asarray(exported.call(x)), jaxnn.load_run(conv_run).predict(x),
                               atol=1e-6)


_LOAD = r"""
import sys
import jax, numpy as np
f = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
np.save(sys.argv[3], np.asarray(f.call(np.load(sys.argv[2])["x"])))
assert "jaxnn" not in sys.modules
"""


@pytest.mark.slow
def test_console_script_end_to_end(mlp_run, inputs, tmp_path):
    """The installed `jaxnn` in subprocesses: predict and export; the export loaded by a
    process that never imports jaxnn gives predict's probabilities."""
    exe = os.path.join(os.path.dirname(sys.executable), "jaxnn")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}

    def run(*argv):
        proc = subprocess.run([str(a) for a in argv], env=env, capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    run(exe, "predict", mlp_run, "--input", inputs / "images.npz", "--output", "p.npz")
    run(exe, "export", mlp_run, "m.bin")
    run(sys.executable, "-c", _LOAD, "m.bin", inputs / "x.npz", "q.npy")
    np.testing.assert_allclose(np.load(tmp_path / "q.npy"), np.load(tmp_path / "p.npz")["probs"],
                               atol=1e-6)
    bad = subprocess.run([exe, "predict", mlp_run, "--input", inputs / "nan.npz", "--output",
                          "r.npz"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.npz").exists()
