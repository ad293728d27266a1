"""The `jaxnn` command line: help that shows every default, one error format, names from the
registries, train/resume end to end, the compilation cache of the console script."""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

import jaxnn
from jaxnn import _startup, activations, initializers, losses
from jaxnn.cli import _build_parser, _os_error_message, main

SMALL = ["--hidden", "16", "--epochs", "3", "--batch-size", "64", "--no-progress"]


def _cli(*args, timeout=240):
    """Run the console script in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "jaxnn", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_help_and_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert jaxnn.__version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--dataset", "--hidden", "--activation", "--init", "--bias-init", "--batch-norm",
                 "--dropout", "--loss", "--optimizer", "--lr", "--schedule", "--l2",
                 "--batch-size", "--epochs", "--preprocess", "--seed", "--out"):
        assert flag in out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    assert main(["train", *SMALL, "--out", str(out)]) == 0
    return out


def test_train_writes_a_complete_run_directory(run_dir, capsys):
    for name in ("config.json", "metrics.jsonl", "summary.json", "curves.png", "checkpoints"):
        assert (run_dir / name).exists(), name
    records = [json.loads(s) for s in open(run_dir / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for key in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"):
        assert key in records[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_done"] == 3 and summary["stopped_reason"] == "completed"
    assert 0.5 < summary["test_acc"] <= 1.0
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["hidden"] == "16" and config["epochs"] == 3


def test_refuses_to_overwrite_a_run(run_dir, capsys):
    assert main(["train", *SMALL, "--out", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flags, needle", [
    (["--activation", "nope"], "--activation"),
    (["--hidden", "16,x"], "--hidden"),
    (["--lr", "-1"], "--lr"),
    (["--dropout", "1.5"], "--dropout"),
    (["--optimizer", "lbfgs"], "--optimizer"),
    (["--dataset", "/no/such/file.npz"], "no/such/file.npz"),
    (["--loss", "nope"], "--loss"),
    (["--init", "nope"], "--init: unknown 'nope'"),
    (["--init", "constant"], "--init: 'constant' needs arguments"),
    (["--preprocess", "pca:1000"], "--preprocess: pca:1000"),
])
def test_bad_flags_one_line_no_run_dir(tmp_path, capsys, flags, needle):
    out = tmp_path / "bad"
    assert main(["train", *SMALL, *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err
    assert err.startswith("jaxnn train: error: ") and "Errno" not in err
    assert not out.exists()


def test_argparse_errors_are_one_line():
    r = _cli("train", "--epochs", "many")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("jaxnn train: error: argument --epochs")


def test_diverging_run_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "div"
    code = main(["train", *SMALL, "--epochs", "6", "--lr", "1e4", "--optimizer", "sgd",
                 "--out", str(out)])
    assert code == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_reason"].startswith("diverged")
    assert summary["epochs_done"] < 6
    assert "diverged" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    flags = ["--hidden", "32", "--epochs", "6", "--batch-size", "16", "--dropout", "0.1",
             "--no-progress", "--seed", "3"]
    ref = tmp_path / "ref"
    assert _cli("train", *flags, "--out", str(ref)).returncode == 0
    expected = [json.loads(s)["train_loss"] for s in open(ref / "metrics.jsonl")]

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "jaxnn", "train", *flags, "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it mid-run, once two epochs are checkpointed
        steps = [d for d in os.listdir(run / "checkpoints")] if (run / "checkpoints").exists() \
            else []
        if len([d for d in steps if d.isdigit()]) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "summary.json").exists()
    r = _cli("resume", str(run), "--no-progress")
    assert r.returncode == 0, r.stderr
    got = [json.loads(s)["train_loss"] for s in open(run / "metrics.jsonl")]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert json.loads((run / "summary.json").read_text())["epochs_done"] == 6


def test_fast_malloc_is_applied_by_the_console_script_only_when_allowed():
    code = ("import os, jaxnn._malloc as m; print(m.apply_fast_malloc(), "
            "os.environ.get(m.MARKER))")
    run = lambda env: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     env={k: v for k, v in {**os.environ, **env}.items()
                                          if v is not None}).stdout.split()
    clean = {k: None for k in os.environ if k.startswith("MALLOC_") or k.startswith("JAXNN_")}
    assert run(clean) == ["True", "mallopt"]
    assert run({**clean, "JAXNN_DEFAULT_MALLOC": "1"}) == ["False", "None"]
    assert run({**clean, "MALLOC_ARENA_MAX": "2"}) == ["False", "None"]


# --------------------------------------------------------------------------- help
def _parsers(parser=None, path=()):
    """Every (command path, parser) of the CLI, the verbs and the experiments."""
    parser = parser or _build_parser()
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def _help_of(parser, flag: str) -> str:
    """The help text shown for ``flag`` in the parser's rendered help (joined lines)."""
    text = parser.format_help()
    m = re.search(rf"^  {re.escape(flag)}(?=[ ,\n])(.*?)(?=^  -|^\S|\Z)", text, re.S | re.M)
    assert m, f"{flag} missing from `{parser.prog} --help`"
    return " ".join(m.group(1).split())


def test_every_flag_of_every_verb_has_help_with_its_default():
    seen = 0
    for _, parser in _parsers():
        text = parser.format_help()
        assert not re.search(r"\{[a-z_]+\}", text), f"placeholder left in `{parser.prog} --help`"
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or \
                    action.default == argparse.SUPPRESS:
                continue
            shown = _help_of(parser, action.option_strings[-1])
            assert "default" in shown.lower(), f"{parser.prog} {action.option_strings}: {shown}"
            # A default written by the formatter is the value argparse actually uses.
            m = re.search(r"\(default: ([^)]*)\)$", shown)
            if m and "default" not in (action.help or "") and \
                    isinstance(action.default, (int, float, str)) and \
                    not isinstance(action.default, bool):
                assert m.group(1).replace(" ", "") == str(action.default).replace(" ", "")
            seen += 1
    assert seen > 50  # every verb's flags were looked at


@pytest.mark.parametrize("verb", [["train"], ["diagnose"], ["compare"], ["experiment", "losses"],
                                  ["experiment", "activations"]])
def test_default_epochs_per_verb_are_shown(verb):
    parsers = dict(_parsers())
    parsed = _build_parser().parse_args([*verb])
    shown = _help_of(parsers[tuple(verb)], "--epochs")
    assert f"(default: {parsed.epochs})" in shown
    for flag in ("--batch-size", "--seed", "--lr"):
        assert "(default: " in _help_of(parsers[tuple(verb)], flag)


def test_help_lists_the_registries():
    text = dict(_parsers())[("train",)].format_help()
    flat = " ".join(text.split())
    for names in (activations.names(), losses.names(), initializers.names()):
        assert ", ".join(names) in flat


@pytest.mark.parametrize("argv", [[], ["experiment"]])
def test_no_verb_prints_help_on_stderr_and_exits_2(argv, capsys):
    assert main(argv) == 2
    out = capsys.readouterr()
    assert out.out == "" and "usage: jaxnn" in out.err
    assert out.err.strip().splitlines()[-1].startswith(f"jaxnn{' experiment' if argv else ''}: "
                                                       "error: ")


@pytest.mark.parametrize("argv, prefix", [
    (["train", "--epochs", "many"], "jaxnn train: error: argument --epochs"),
    (["train", "--bogus", "1"], "jaxnn train: error: unrecognized arguments: --bogus 1"),
    (["experiment", "init-depth", "--depth", "x"], "jaxnn experiment init-depth: error: "),
    (["compare", "--seeds", "two"], "jaxnn compare: error: argument --seeds"),
    (["gradcheck", "--tol"], "jaxnn gradcheck: error: argument --tol"),
])
def test_argparse_errors_use_the_verb_prefix(argv, prefix, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(prefix) and err.count("\n") == 1


# --------------------------------------------------------------------------- messages
def test_activation_error_lists_every_name_once(tmp_path, capsys):
    assert main(["train", "--activation", "nope", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    listed = err.split("valid: ", 1)[1].split(", ")
    assert listed == list(activations.names())  # the registry, in order, each name once


def test_os_error_names_the_flag_and_the_path():
    args = argparse.Namespace(out="/data/runs/r1", dataset="digits", verb="train")
    msg = _os_error_message(PermissionError(13, "Permission denied", "/data/runs/r1/x.json"),
                            args)
    assert msg == "cannot use --out '/data/runs/r1/x.json': permission denied"
    msg = _os_error_message(FileNotFoundError(2, "No such file or directory", "/elsewhere"), args)
    assert msg == "cannot use '/elsewhere': no such file or directory"


@pytest.mark.parametrize("argv", [["train"], ["diagnose"], ["experiment", "init-depth"]])
def test_unwritable_out_is_one_sentence_naming_out(argv, capsys):
    assert main([*argv, "--out", "/proc/forbidden/run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err and "Errno" not in err
    assert err.startswith(f"jaxnn {' '.join(argv)}: error: ")


# --------------------------------------------------------------------------- --loss
@pytest.mark.slow  # the fast suite's time budget; CI runs it with the slow suite
def test_a_loss_of_one_hot_targets_trains_a_classifier(tmp_path, capsys):
    out = tmp_path / "mse"
    assert main(["train", "--loss", "mse", "--hidden", "32", "--epochs", "3", "--lr", "0.05",
                 "--quiet", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_acc"] > 0.5  # 10 classes: chance is 0.1
    assert json.loads((out / "config.json").read_text())["loss"] == "mse"


# --------------------------------------------------------------------------- compile cache
@pytest.mark.parametrize("env, expected", [
    ({"HOME": "/home/u"}, "/home/u/.cache/jaxnn/jax-compile"),
    ({"HOME": "/home/u", "XDG_CACHE_HOME": "/c"}, "/c/jaxnn/jax-compile"),
    ({"HOME": "/home/u", "JAXNN_CACHE": "/fast/cc"}, "/fast/cc"),
    ({"HOME": "/home/u", "JAXNN_NO_COMPILE_CACHE": "1"}, None),
    ({"HOME": "/home/u", "JAXNN_NO_COMPILE_CACHE": "0"}, "/home/u/.cache/jaxnn/jax-compile"),
    ({"HOME": "/home/u", "JAX_COMPILATION_CACHE_DIR": "/mine"}, None),
    ({"HOME": "/home/u", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "2"}, None),
])
def test_compile_cache_location_and_who_decides(env, expected, monkeypatch):
    monkeypatch.setenv("HOME", env["HOME"])  # expanduser reads the process's HOME
    assert _startup.compile_cache_dir(env) == expected


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in _startup.JAX_CACHE_VARIABLES and not k.startswith("JAXNN_")}
    return {**env, "JAX_PLATFORMS": "cpu", **extra}


@pytest.mark.slow
def test_the_console_script_caches_compiles_and_a_warm_run_gives_the_same_losses(tmp_path):
    """Cold (empty cache), warm (cache filled by the cold run) and uncached runs of the same
    command write the same losses; the cache is the user's, unless they chose their own."""
    flags = ["train", "--hidden", "16", "--epochs", "2", "--quiet"]
    run = lambda out, **env: subprocess.run(
        [sys.executable, "-m", "jaxnn", *flags, "--out", str(tmp_path / out)],
        capture_output=True, text=True, timeout=240, env=_clean_env(**env))
    losses_of = lambda out: [json.loads(s)["train_loss"]
                             for s in open(tmp_path / out / "metrics.jsonl")]
    cache = tmp_path / "cache"
    for out in ("cold", "warm"):
        r = run(out, JAXNN_CACHE=str(cache))
        assert r.returncode == 0, r.stderr
        assert len(os.listdir(cache)) > 0
    assert run("off", JAXNN_CACHE=str(tmp_path / "c2"), JAXNN_NO_COMPILE_CACHE="1"
               ).returncode == 0
    assert not (tmp_path / "c2").exists()
    mine = tmp_path / "mine"
    assert run("users", JAXNN_CACHE=str(tmp_path / "c3"), JAX_COMPILATION_CACHE_DIR=str(mine),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0").returncode == 0
    assert not (tmp_path / "c3").exists() and len(os.listdir(mine)) > 0
    assert losses_of("cold") == losses_of("warm") == losses_of("off") == losses_of("users")


def test_a_ctrl_c_inside_jaxs_backend_set_up_is_delivered_again_a_moment_later(monkeypatch):
    """A SIGINT that lands in JAX's backend initialization (which would leave its 60 s timer
    thread running: the process waited a minute at exit and printed JAX's TPU warning) is sent
    again 50 ms later; anywhere else it raises KeyboardInterrupt at once."""
    import threading

    from jaxnn import cli

    installed, timers = [], []

    class Timer:
        def __init__(self, seconds, fn, args=()):
            timers.append((seconds, fn, args))
            self.daemon = False

        def start(self):
            pass

    monkeypatch.setattr(signal, "getsignal", lambda s: signal.default_int_handler)
    monkeypatch.setattr(signal, "signal", lambda s, h: installed.append(h))
    monkeypatch.setattr(threading, "Timer", Timer)
    monkeypatch.setattr(cli, "_SIGINT", {"raised": False, "handled": False})
    cli._install_sigint(["jaxnn train"])
    (handler,) = installed
    where = {}
    exec(compile("import sys\ndef backend_init(h):\n    h(2, sys._getframe())\n",
                 os.path.join(os.sep, "venv", "jax", "_src", "xla_bridge.py"), "exec"), where)
    try:
        where["backend_init"](handler)  # deferred: no KeyboardInterrupt here
    except KeyboardInterrupt:
        pytest.fail("a SIGINT inside JAX's backend initialization raised at once")
    assert timers == [(0.05, os.kill, (os.getpid(), signal.SIGINT))]
    with pytest.raises(KeyboardInterrupt):
        handler(2, sys._getframe())
    assert timers[1][0] == cli._INTERRUPT_GRACE  # the watchdog of a raised interrupt


def test_after_a_ctrl_c_what_fails_to_close_at_exit_is_not_printed(monkeypatch, capsys):
    """Once "interrupted" is printed, an object that fails in ``__del__`` at exit (orbax's
    asyncio loop, stopped while closing, printed 25 lines of "Exception ignored in") and
    coroutines never awaited (its pending save steps) are quiet; before, both print as usual."""
    import gc

    from jaxnn import cli

    class Broken:
        def __del__(self):
            raise ValueError("Invalid file descriptor: -1")

    async def pending():
        pass

    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")
        Broken()
        pending()  # a coroutine never awaited: a RuntimeWarning when collected
        gc.collect()
        assert "Exception ignored" in capsys.readouterr().err
        assert [str(w.message) for w in shown if "was never awaited" in str(w.message)]
        shown.clear()
        cli._quiet_teardown()
        Broken()
        pending()
        gc.collect()
        assert capsys.readouterr().err == "" and shown == []
