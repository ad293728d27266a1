"""jaxnn.distributed: data-parallel training, sharded populations and multi-process runs give the
numbers of one device.

The pytest process has one CPU device, so the multi-device checks run in child processes whose
host is split into 8 CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``); the
multi-process check joins two children of 4 devices each with ``jax.distributed`` on 127.0.0.1.
One child does all the 8-device work and reports JSON, so JAX starts only a few times.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from jaxnn import distributed
from jaxnn.cli import main

# Small and fast: a 16-unit MLP on the embedded digits, 2 epochs of 64-example batches.
TRAIN_FLAGS = ["--hidden", "16", "--epochs", "2", "--batch-size", "64", "--seed", "3",
               "--no-progress", "--keep-checkpoints", "1"]

# A single step on a fixed batch, computed from a full global batch (one process) or from each
# process's own rows via global_batch (several processes): the loss and a parameter checksum.
STEP_CHECK = """
def step_check():
    import jax, jax.numpy as jnp, numpy as np
    from jaxnn import data, distributed, layers, optim, train
    ds = data.load("digits")
    model = layers.mlp([64, 16, 10])
    opt = optim.momentum(0.1)
    x, y, m = ds.x_train[:64], ds.y_train[:64], np.ones(64, np.float32)
    mesh = distributed.data_mesh("all")
    step = train.make_train_step(model.apply, "softmax_cross_entropy", opt, l2=1e-3,
                                 donate=False, mesh=mesh)
    state = distributed.replicate(train.init_train_state(model, opt, key=jax.random.key(0)),
                                  mesh)
    if jax.process_count() == 1:
        batch = distributed.shard_batch(data.Batch(x, y, m), mesh)
    else:
        rows = slice(jax.process_index() * 32, (jax.process_index() + 1) * 32)
        batch = distributed.global_batch(data.Batch(x[rows], y[rows], m[rows]), mesh)
    new, metrics = step(state, batch)
    hlo = step.lower(state, batch).compile().as_text()
    return {"loss": float(metrics.loss), "count": float(metrics.count),
            "param_sum": float(sum(jnp.sum(jnp.abs(p)) for p in jax.tree.leaves(new.params))),
            "batch_spec": list(batch.x.sharding.spec), "all_reduce": "all-reduce" in hlo,
            "params_replicated": all(p.sharding.is_fully_replicated
                                     for p in jax.tree.leaves(new.params))}
"""

CHILD_8 = STEP_CHECK + r"""
import contextlib, io, json, os, re, sys
import jax, jax.numpy as jnp, numpy as np
from jaxnn import data, distributed, layers, optim, population, train
from jaxnn.cli import main

out, flags = {"device_count": jax.device_count()}, json.loads(sys.argv[2])

def losses(run):
    with open(f"{run}/metrics.jsonl") as f:
        return [json.loads(line)["train_loss"] for line in f]

for n in ("1", "8"):
    run = f"{sys.argv[1]}/d{n}"
    with contextlib.redirect_stdout(io.StringIO()):
        out[f"rc_{n}"] = main(["train", *flags, "--devices", n, "--out", run])
    out[f"loss_{n}"] = losses(run)
    with open(f"{run}/config.json") as f:
        out[f"config_devices_{n}"] = json.load(f)["devices"]

# Resume each finished run for a third epoch on the other device count: the checkpoint is
# restored into the new placement, and both continue alike.
for n, other in (("1", "8"), ("8", "1")):
    run = f"{sys.argv[1]}/d{n}"
    with open(f"{run}/config.json") as f:
        config = json.load(f)
    with open(f"{run}/config.json", "w") as f:
        json.dump({**config, "epochs": 3}, f)
    os.remove(f"{run}/summary.json")
    with contextlib.redirect_stdout(io.StringIO()):
        out[f"rc_resume_{n}"] = main(["resume", run, "--devices", other, "--no-progress"])
    out[f"resumed_{n}"] = losses(run)

err = io.StringIO()
with contextlib.redirect_stderr(err):
    out["rc_bad_batch"] = main(["train", *flags, "--devices", "8", "--batch-size", "60",
                                "--out", f"{sys.argv[1]}/bad"])
out["bad_batch_err"] = err.getvalue()

ds = data.load("digits")
model = layers.mlp([64, 8, 10])
hp = {"learning_rate": np.array([0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]),
      "l2": np.array([0.0, 1e-3] * 4)}
pops = {d: population.train_population(data=ds, hparams=hp, epochs=2, batch_size=128,
                                       key=jax.random.key(1), model=model, devices=d)
        for d in (None, 8)}
for d, r in pops.items():
    out[f"pop_{d}"] = {k: np.asarray(v).tolist() for k, v in r.history.items()}
    out[f"pop_status_{d}"] = list(r.status)
    out[f"pop_w_{d}"] = np.asarray(r.params["layer_0"]["w"]).sum(axis=(1, 2)).tolist()
out["pop_spec"] = list(jax.tree.leaves(pops[8].params)[0].sharding.spec)
out["pop_devices"] = len(jax.tree.leaves(pops[8].params)[0].sharding.device_set)
try:
    train.fit(model, ds, optimizer=optim.sgd(0.1), epochs=1, key=jax.random.key(0),
              batch_size=60, mesh=distributed.data_mesh(8))
    out["fit_bad"] = ""
except ValueError as e:
    out["fit_bad"] = str(e)
try:
    distributed.shard_population(jnp.zeros((6, 2)), 4)
    out["pop_bad"] = ""
except ValueError as e:
    out["pop_bad"] = str(e)

out["step"] = step_check()

# Inside the scanned epoch each device multiplies only its 64 / 8 = 8 rows of every batch.
mesh, opt = distributed.data_mesh(8), optim.momentum(0.1)
epoch = train.make_epoch(model.apply, "softmax_cross_entropy", opt, batch_size=64, mesh=mesh)
state = distributed.replicate(train.init_train_state(model, opt, key=jax.random.key(0)), mesh)
xy = distributed.replicate((ds.x_train, ds.y_train), mesh)
hlo = epoch.lower(state, *xy, np.int32(1)).compile().as_text()
out["epoch_dots"] = sorted(set(re.findall(r"= f32\[([\d,]*)\][^ ]* dot\(", hlo)))
print("RESULT " + json.dumps(out))
"""

CHILD_MP = STEP_CHECK + """
import contextlib, io, json, sys
import jax
from jaxnn.cli import main

run, port, pid = sys.argv[1], sys.argv[2], sys.argv[3]
rc = main(["train", *json.loads(sys.argv[4]), "--coordinator", f"127.0.0.1:{port}",
           "--num-processes", "2", "--process-id", pid, "--out", run])
res = {"rc": rc, "process_count": jax.process_count(), "device_count": jax.device_count(),
       "local": jax.local_device_count(), "step": step_check()}
print("RESULT " + json.dumps(res))
"""


def _env(devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={devices}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _result(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, stdout[-2000:]
    return json.loads(lines[-1][len("RESULT "):])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    """Everything an 8-device process computes (see CHILD_8)."""
    tmp = tmp_path_factory.mktemp("eight")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD_8), str(tmp), json.dumps(TRAIN_FLAGS)],
        capture_output=True, text=True, env=_env(8), timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _result(proc.stdout)


# ------------------------------------------------------------------------ in-process, 1 device
def test_public_names():
    assert set(distributed.__all__) == {
        "DATA_AXIS", "POP_AXIS", "initialize", "is_main_process", "resolve_devices",
        "data_mesh", "population_mesh", "replicated", "data_sharding", "replicate",
        "shard_batch", "global_batch", "constrain_batch", "check_batch_size",
        "shard_population", "memory_bytes", "BYTES_PER_PARAMETER", "check_fits"}
    for name in distributed.__all__:
        assert hasattr(distributed, name)


def test_resolve_devices():
    n = jax.device_count()
    assert distributed.resolve_devices(None) == 1
    assert distributed.resolve_devices("all") == n
    assert distributed.resolve_devices("ALL") == n
    assert distributed.resolve_devices(1) == 1
    assert distributed.resolve_devices("1") == 1
    for bad in (0, -2, "two", 1.5, True):
        with pytest.raises(ValueError, match="positive integer or 'all'"):
            distributed.resolve_devices(bad)
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
        distributed.resolve_devices(n + 1)


def test_check_batch_size():
    distributed.check_batch_size(64, 8)
    distributed.check_batch_size(7, distributed.data_mesh(1))
    with pytest.raises(ValueError, match="batch size 60 must divide by the number of data "
                                         r"shards \(8 devices\); try 56"):
        distributed.check_batch_size(60, 8)


def test_meshes_and_placement_on_one_device():
    mesh = distributed.data_mesh(1)
    assert mesh.axis_names == ("data",) and mesh.shape["data"] == 1
    assert distributed.population_mesh(1).axis_names == ("pop",)
    tree = {"w": np.ones((4, 2), np.float32), "k": jax.random.key(3)}
    placed = distributed.replicate(tree, mesh)
    assert placed["w"].sharding == distributed.replicated(mesh)
    # A typed key survives placement (it travels as its raw key data).
    assert jax.random.key_data(placed["k"]).tolist() == jax.random.key_data(tree["k"]).tolist()
    batch = distributed.shard_batch(np.arange(8.0).reshape(4, 2), mesh)
    assert batch.sharding.spec == jax.sharding.PartitionSpec("data")
    np.testing.assert_array_equal(distributed.global_batch(np.arange(3.0), mesh), np.arange(3.0))
    assert distributed.constrain_batch(tree, None) is tree


@pytest.mark.parametrize("flags, message", [
    (["--devices", "0"], "expected a positive integer or 'all'"),
    (["--devices", "many"], "expected a positive integer or 'all'"),
    (["--devices", "99"], "asked for 99 devices but only"),
    (["--num-processes", "2"], "need --coordinator"),
    (["--coordinator", "127.0.0.1"], "HOST:PORT"),
    (["--coordinator", "127.0.0.1:1234"], "needs --num-processes P and --process-id I"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"],
     r"--process-id must be in \[0, 2\)"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "0"],
     "needs --out"),
])
def test_cli_device_flag_errors(flags, message, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--epochs", "1", *flags]
    if "needs --out" not in message:
        argv += ["--out", str(out)]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own one-line error
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert __import__("re").search(message, err), err
    assert not out.exists()


# ---------------------------------------------------------------------- 8 devices, one process
@pytest.mark.slow
def test_child_has_8_devices(eight):
    assert eight["device_count"] == 8


@pytest.mark.slow
def test_train_on_8_devices_equals_1_device(eight):
    assert eight["rc_1"] == 0 and eight["rc_8"] == 0
    assert eight["config_devices_1"] == 1 and eight["config_devices_8"] == 8
    assert len(eight["loss_8"]) == 2
    np.testing.assert_allclose(eight["loss_8"], eight["loss_1"], rtol=1e-5)
    assert eight["loss_8"][1] < eight["loss_8"][0]  # it trained


@pytest.mark.slow
def test_resume_on_another_device_count(eight):
    assert eight["rc_resume_1"] == 0 and eight["rc_resume_8"] == 0
    one, eight_ = eight["resumed_1"], eight["resumed_8"]  # trained on 1 / 8, resumed on 8 / 1
    assert len(one) == len(eight_) == 3
    assert one[:2] == eight["loss_1"] and eight_[:2] == eight["loss_8"]
    np.testing.assert_allclose(eight_[2], one[2], rtol=1e-5)


@pytest.mark.slow
def test_batch_size_must_divide_by_devices(eight):
    assert eight["rc_bad_batch"] == 2
    err = eight["bad_batch_err"].strip()
    assert len(err.splitlines()) == 1
    assert "--batch-size 60 must divide by the number of data shards (8 devices)" in err
    assert "batch size 60 must divide by the number of data shards (8 devices)" in eight["fit_bad"]


@pytest.mark.slow
def test_sharded_step_all_reduces_and_replicates(eight):
    step = eight["step"]
    assert step["batch_spec"] == ["data"]
    assert step["all_reduce"], "the compiler should insert the gradient all-reduce"
    assert step["params_replicated"]
    assert step["count"] == 64


@pytest.mark.slow
def test_epoch_computes_a_slice_of_each_batch_per_device(eight):
    # The hidden layer's forward product is [rows, 8]: 8 rows per device, not the batch's 64.
    assert "8,8" in eight["epoch_dots"] and "64,8" not in eight["epoch_dots"], eight["epoch_dots"]


@pytest.mark.slow
def test_population_sharded_over_8_devices_equals_unsharded(eight):
    assert eight["pop_spec"] == ["pop"] and eight["pop_devices"] == 8
    assert eight["pop_status_8"] == eight["pop_status_None"]
    assert "diverged" in eight["pop_status_None"]  # lr 30: the freeze path is exercised too
    one, many = eight["pop_None"], eight["pop_8"]
    assert one.keys() == many.keys()
    for k in one:
        np.testing.assert_allclose(many[k], one[k], rtol=1e-5, atol=1e-7, err_msg=k)
    np.testing.assert_allclose(eight["pop_w_8"], eight["pop_w_None"], rtol=1e-5)
    assert "population size 6 must divide by devices=4" in eight["pop_bad"]


# ------------------------------------------------------------------ 2 processes x 4 devices
@pytest.mark.slow
def test_two_processes_equal_one_process_with_8_devices(eight, tmp_path):
    run, port = tmp_path / "mp", _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(CHILD_MP), str(run), str(port), str(i),
             json.dumps(TRAIN_FLAGS)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(4))
        for i in range(2)
    ]
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    res = [_result(o) for o, _ in outs]
    for r in res:
        assert (r["rc"], r["process_count"], r["device_count"], r["local"]) == (0, 2, 8, 4)
    # Only process 0 prints the report and writes metrics (once per epoch, not twice).
    assert "test accuracy" in outs[0][0] and "test accuracy" not in outs[1][0]
    with open(run / "metrics.jsonl") as f:
        mp_loss = [json.loads(line)["train_loss"] for line in f]
    np.testing.assert_allclose(mp_loss, eight["loss_8"], rtol=1e-5)
    assert json.loads((run / "config.json").read_text())["devices"] == 8
    assert (run / "summary.json").exists() and (run / "checkpoints").is_dir()
    # Each process loads only its half of the batch (make_array_from_process_local_data).
    for r in res:
        assert r["step"]["loss"] == pytest.approx(eight["step"]["loss"], rel=1e-6)
        assert r["step"]["param_sum"] == pytest.approx(eight["step"]["param_sum"], rel=1e-6)
