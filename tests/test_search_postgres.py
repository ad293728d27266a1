"""``jaxnn search`` on a real PostgreSQL server: several workers on one study, a killed worker,
the errors a user sees (passwords masked), and optuna-dashboard reading the study. The race of
many workers asking at once also runs on SQLite, in the fast suite.

The session fixture starts a throw-away server (``initdb`` + ``pg_ctl``, as the ``postgres`` user
when run as root) in a temporary directory, listening on a unix socket there and on a free
localhost port with password (SCRAM) authentication, and stops it at the end. Without the server
binaries (``/usr/lib/postgresql/*/bin``, or ``$JAXNN_PG_BIN``) or psycopg the tests skip — except
on CI (``CI=true``), where they fail: CI installs both (``.ci/run``)."""

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

import numpy as np
import optuna
import pytest

from jaxnn import models, optim, population, search
from jaxnn.cli import main

USER = "jaxnn"
PASSWORD = "pa:ss@w/rd#9"  # every character a URL must escape
TINY = ["--hidden", "8", "--epochs", "1", "--batch-size", "128", "--pruner", "none"]
RUNNING = optuna.trial.TrialState.RUNNING
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the PostgreSQL tests: {reason}")
    pytest.skip(reason)


def _pg_bin() -> str | None:
    env = os.environ.get("JAXNN_PG_BIN")
    if env:
        return env
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0)
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: str, port: int):
        self.root, self.port = root, port

    def admin(self):
        import psycopg

        return psycopg.connect(host=self.root, port=self.port, user="postgres",
                               dbname="postgres", autocommit=True)

    def create_db(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" OWNER {USER}')

    def url(self, db: str, *, password: str = PASSWORD, port: int | None = None,
            scheme: str = "postgresql") -> str:
        pw = urllib.parse.quote(password, safe="")
        return f"{scheme}://{USER}:{pw}@127.0.0.1:{port or self.port}/{db}"

    def masked(self, db: str, *, port: int | None = None) -> str:
        return f"postgresql://{USER}:***@127.0.0.1:{port or self.port}/{db}"


@pytest.fixture(scope="session")
def pg(request):
    """A PostgreSQL server of its own for this test session."""
    bindir = _pg_bin()
    if bindir is None or not os.path.isfile(os.path.join(bindir, "initdb")):
        _unavailable("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb; apt-get "
                     "install postgresql, or set JAXNN_PG_BIN)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'jaxnn[postgres]')")
    as_root = os.geteuid() == 0
    if as_root:  # initdb refuses to run as root: the server runs as the postgres user
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no postgres user to run the server")
        prefix = ["runuser", "-u", "postgres", "--"]
    else:
        prefix = []
    root = tempfile.mkdtemp(prefix="jaxnn-pg-", dir="/tmp")  # short: a socket path is <108
    if as_root:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data, log = os.path.join(root, "data"), os.path.join(root, "server.log")
    pwfile = os.path.join(root, "pw")
    with open(pwfile, "w") as f:
        f.write("postgres-admin\n")
    if as_root:
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    port = _free_port()
    pg_ctl = os.path.join(bindir, "pg_ctl")

    def stop():
        subprocess.run([*prefix, pg_ctl, "-D", data, "stop", "-m", "immediate"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)

    request.addfinalizer(stop)
    subprocess.run([*prefix, os.path.join(bindir, "initdb"), "-D", data, "-U", "postgres",
                    "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
                    "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
    opts = (f"-k {root} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off")
    r = subprocess.run([*prefix, pg_ctl, "-D", data, "-l", log, "-w", "-t", "60", "-o", opts,
                        "start"], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        with contextlib.suppress(OSError), open(log) as f:
            pytest.fail(f"PostgreSQL did not start: {r.stderr}\n{f.read()[-2000:]}")
    server = Server(root, port)
    from psycopg import sql

    with server.admin() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(USER), sql.Literal(PASSWORD)))
    return server


def _running(pg: Server, db: str) -> int:
    """How many trials of ``db`` are RUNNING, read straight from Optuna's ``trials`` table."""
    import psycopg

    with psycopg.connect(host=pg.root, port=pg.port, user="postgres", dbname=db,
                         autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0]


def _kill_while_running(p: subprocess.Popen, pg: Server, db: str, *, timeout: float = 120) -> None:
    """SIGKILL ``p`` at a moment when one of its trials is RUNNING (asked, not told)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and p.poll() is None:
        if _running(pg, db):
            p.send_signal(signal.SIGSTOP)
            time.sleep(0.05)  # a commit already sent lands; after it nothing moves
            if _running(pg, db):
                break
            p.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()


def _study(pg: Server, db: str, name: str = "s"):
    return optuna.load_study(study_name=name, storage=pg.url(db, scheme="postgresql+psycopg"))


def _cli(*argv):
    return [sys.executable, "-m", "jaxnn", *argv]


def _no_password(text: str) -> None:
    assert PASSWORD not in text and urllib.parse.quote(PASSWORD, safe="") not in text


# --------------------------------------------------------------------------- several workers
@pytest.mark.slow
def test_three_workers_reach_exactly_the_trials_none_twice_none_lost(pg, tmp_path):
    pg.create_db("three")
    url = pg.url("three")
    outs = [tmp_path / f"w{i}" for i in range(3)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(_cli("search", "--trials", "12", "--population", "2", *TINY,
                                   "--storage", url, "--study-name", "s", "--out", str(out),
                                   "--quiet"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for out in outs]
    results = [p.communicate(timeout=1200) for p in procs]
    seconds = time.perf_counter() - t0
    assert [p.returncode for p in procs] == [0, 0, 0], [e for _, e in results]
    study = _study(pg, "three")
    done = [t for t in study.trials if t.state in FINISHED]
    assert len(done) == 12  # exactly --trials, though three workers asked at once
    assert not [t for t in study.trials if t.state == RUNNING]  # none lost
    # Any other trial is a surplus ask (lost a race for the last places), told FAIL untrained.
    others = [t for t in study.trials if t.state not in FINISHED]
    assert all(t.user_attrs.get("jaxnn_surplus") and not t.intermediate_values for t in others)
    assert len({t.number for t in done}) == 12
    params = [tuple(sorted(t.params.items())) for t in done]
    assert len(set(params)) == 12  # no point drawn twice
    for t in done:  # each told once with what it trained
        assert t.user_attrs["status"] == "ok" and sorted(t.intermediate_values) == [1]
        assert t.value == pytest.approx(t.intermediate_values[1])
        assert t.user_attrs["command"].startswith("jaxnn train ")
    # Every trial trained by exactly one worker: the workers' trained counts add up to 12.
    res = [json.loads((out / "results.json").read_text()) for out in outs]
    assert sum(r["trained_now"] for r in res) == 12
    for r in res:  # each worker waited for the others: its results hold the whole study
        assert sorted(t["number"] for t in r["trials"]) == sorted(t.number for t in done)
        assert r["study"] == {"storage": pg.masked("three"), "name": "s", "in_out": False}
    # The password is nowhere: not in results.json, the study's attributes, any trial's.
    for out in outs:
        _no_password((out / "results.json").read_text())
        assert sorted(os.listdir(out)) == [".jaxnn-run", ".lock", "results.json", "search.png"]
    _no_password(json.dumps(study.user_attrs) + json.dumps([t.user_attrs for t in study.trials]))
    print(f"3 workers, 12 trials: {seconds:.1f}s; trained "
          f"{[r['trained_now'] for r in res]}, surplus asks {len(others)}")


@pytest.mark.slow
def test_a_killed_worker_loses_nothing_finished_and_a_rerun_completes(pg, tmp_path):
    pg.create_db("killed")
    url = pg.url("killed")
    # 30 epochs a round: long enough for the poll below to see round 2 running under load.
    argv = _cli("search", "--trials", "6", "--population", "2", *TINY, "--epochs", "30",
                "--lr-range", "1e-3,0.1", "--grace-period", "4", "--storage", url, "--study-name", "s",
                "--out", str(tmp_path / "k"))
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert p.stdout.readline().startswith("round 1: 2/6")
        # Kill it in the middle of round 2, once a trial of it is asked (RUNNING). The poll is one
        # SQL count (loading the study through Optuna took long enough under load to miss whole
        # rounds); the process is stopped first and the count read again, so the kill lands in
        # the state the poll saw.
        _kill_while_running(p, pg, "killed")
    finally:
        if p.poll() is None:
            p.kill()
    study = _study(pg, "killed")
    told = {t.number: t for t in study.trials if t.state in FINISHED}
    killed = {t.number for t in study.trials if t.state == RUNNING}
    assert len(told) in (2, 4) and killed  # nothing it had not told counts as finished
    for t in told.values():
        assert t.user_attrs["status"] == "ok" and t.value == t.intermediate_values[max(t.intermediate_values)]
    rc = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - t0
    assert rc.returncode == 0, rc.stderr
    study = _study(pg, "killed")
    done = {t.number: t for t in study.trials if t.state in FINISHED}
    assert len(done) == 6  # exactly --trials
    assert all(done[n].params == t.params and done[n].value == t.value for n, t in told.items())
    # The killed round's trials stay RUNNING, never counted: others took their places.
    assert {t.number for t in study.trials if t.state == RUNNING} == killed
    assert not killed & set(done)
    print(f"kill + rerun to 6 trials: {seconds:.1f}s")


def _fake_population(**kw):
    """train_population without training (a few milliseconds, so the workers below spend their
    time asking and telling, where the races are): every member ``ok``, loss = its rate."""
    lr = np.asarray(kw["hparams"]["learning_rate"], np.float64)
    n = lr.shape[0]
    time.sleep(float(np.random.default_rng().uniform(0, 0.03)))
    final = {"val_loss": lr, "val_acc": np.full(n, 0.5), "train_loss": lr}
    return population.PopulationResult({}, None, None, ["ok"] * n, kw["hparams"], final,
                                       np.ones(n), np.full(n, kw["epochs"]))


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def test_many_workers_asking_at_once_keep_exactly_the_trials(request, tmp_path, monkeypatch,
                                                             make_blobs, backend):
    """Six workers (threads, each with its own study object and storage cache, as processes
    have) search one study with rounds of 3 at once: exactly --trials finished trials (24 on
    SQLite, 40 on the server), each trained by one worker, and every other trial a surplus ask
    told FAIL untrained."""
    n = 24 if backend == "sqlite" else 40
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'race.db'}"
    else:
        pg = request.getfixturevalue("pg")
        pg.create_db("race")
        url = pg.url("race")
    monkeypatch.setattr(population, "train_population", _fake_population)
    data = make_blobs(n=60, classes=3, spread=2, n_train=40, n_val=10)
    task = search.SearchTask.from_data(data, {"learning_rate": (1e-3, 1.0)}, epochs=1,
                                       model=models.mlp([6, 4, 3]), optimizer=optim.sgd(0.1))
    settings = search.SearchSettings(method="random", trials=n, population=3, pruner="none")
    storage = search.open_storage(url)
    search.optimize(task, search.SearchSettings(method="random", trials=1, population=1,
                                                pruner="none"), storage=storage,
                    study_name="race")  # the study exists before the workers race
    trained, errors = [], []

    def worker():
        try:
            res = search.optimize(task, settings, storage=search.open_storage(url),
                                  study_name="race")
            trained.append(res.trained)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    study = optuna.load_study(study_name="race", storage=storage)
    done = [t for t in study.trials if t.state in FINISHED]
    assert len(done) == n and sum(trained) == n - 1  # one trial was there before
    assert not [t for t in study.trials if t.state == RUNNING]
    others = [t for t in study.trials if t.state not in FINISHED]
    assert all(t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get("jaxnn_surplus")
               for t in others)
    print(f"{backend}: 6 workers, {n} trials, {len(others)} surplus asks")


# --------------------------------------------------------------------------- errors
@pytest.mark.slow
@pytest.mark.parametrize("case", ["wrong password", "unreachable server", "missing database"])
def test_connection_errors_are_one_line_with_the_password_masked(pg, tmp_path, capsys, case):
    port, db, kw = pg.port, "postgres", {}
    if case == "wrong password":
        kw = {"password": "not-" + PASSWORD}
    elif case == "unreachable server":
        port = _free_port()  # nothing listens there
    else:
        db = "no_such_db"
    url = pg.url(db, port=port, **kw)
    out = tmp_path / "never"
    rc = main(["search", "--trials", "2", *TINY, "--storage", url, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"jaxnn search: error: --storage {pg.masked(db, port=port)}: ")
    _no_password(err)
    assert "not-" not in err
    want = {"wrong password": "password authentication failed",
            "unreachable server": "Connection refused",
            "missing database": 'database "no_such_db" does not exist'}[case]
    assert want in err
    assert not out.exists()


@pytest.mark.slow
def test_a_study_holding_another_search_is_refused_before_anything_is_written(pg, tmp_path,
                                                                             capsys):
    pg.create_db("other")
    url = pg.url("other")
    assert main(["search", "--trials", "2", "--population", "2", *TINY, "--storage", url,
                 "--study-name", "s", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    capsys.readouterr()
    out = tmp_path / "b"
    rc = main(["search", "--trials", "2", "--population", "2", *TINY, "--epochs", "2",
               "--storage", url, "--study-name", "s", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "holds a different search" in err and err.count("\n") == 1
    assert pg.masked("other") in err
    _no_password(err)
    assert not out.exists()


# --------------------------------------------------------------------------- optuna-dashboard
@pytest.mark.slow
def test_optuna_dashboard_reads_the_study_with_each_trials_command(pg, tmp_path, capsys):
    exe = shutil.which("optuna-dashboard") or os.path.join(os.path.dirname(sys.executable),
                                                           "optuna-dashboard")
    if not os.path.exists(exe):
        _unavailable("optuna-dashboard is not installed (pip install optuna-dashboard)")
    pg.create_db("dash")
    url = pg.url("dash")
    assert main(["search", "--trials", "3", "--population", "3", *TINY, "--storage", url,
                 "--study-name", "dash", "--out", str(tmp_path / "d"), "--quiet"]) == 0
    capsys.readouterr()
    port = _free_port()
    server = subprocess.Popen([exe, pg.url("dash", scheme="postgresql+psycopg"), "--host",
                               "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/studies", timeout=5) as r:
                    studies = json.load(r)["study_summaries"]
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.3)
        (summary,) = [s for s in studies if s["study_name"] == "dash"]
        with urllib.request.urlopen(f"{base}/api/studies/{summary['study_id']}",
                                    timeout=30) as r:
            detail = json.load(r)
    finally:
        server.terminate()
        server.wait(timeout=30)
    trials = detail["trials"]
    assert len(trials) == 3 and {t["state"] for t in trials} == {"Complete"}
    for t in trials:
        attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
        assert attrs["command"].startswith("jaxnn train ") and attrs["status"] == "ok"
        assert {p["name"] for p in t["params"]} == {"learning_rate", "l2"}
        assert len(t["intermediate_values"]) == 1 and t["values"]
    study_attrs = {a["key"] for a in detail.get("user_attrs", [])}
    assert "jaxnn_search" in study_attrs


def test_batched_writes_store_what_optunas_own_calls_store_in_postgresql(pg, monkeypatch):
    """PostgreSQL's upsert takes the round's reports and attributes in one statement each, and
    its trials are told in one transaction; what is read back equals Optuna's per-value calls
    and tell (see test_search for SQLite)."""
    from test_search import _same, _tell_trials, _write_trials

    pg.create_db("writes_ref")
    pg.create_db("writes")
    ref = _write_trials(pg.url("writes_ref", scheme="postgresql+psycopg"), False, monkeypatch)
    got = _write_trials(search.open_storage(pg.url("writes")), True, monkeypatch)
    assert _same(got, ref)
    assert got[1][0][1] == {"stage": 1, "status": "ok", "curve": [1, 2]}
    pg.create_db("tell_ref")
    pg.create_db("tell")
    ref = _tell_trials(pg.url("tell_ref", scheme="postgresql+psycopg"), False, monkeypatch)
    got = _tell_trials(search.open_storage(pg.url("tell")), True, monkeypatch)
    assert _same(got, ref) and len(got[1]) == 6
