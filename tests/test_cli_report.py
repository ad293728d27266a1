"""`jaxnn report RUN_DIR` and the report `jaxnn train` writes, as a user sees them: the summary
line names it, `--no-report` leaves it out, a diverged run still gets one, a directory that is no
run is a one-line error; and headless Chromium renders the page without a single network request.

The browser tests need Chromium (`apt-get install -y chromium`, Debian's; .ci/run installs it):
skipped with a reason when it is missing locally, failed when it is missing in CI (CI=true).
"""

import contextlib
import io
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from html.parser import HTMLParser

import numpy as np
import pytest
import test_report  # the page checks (self-contained, parsed rows) shared with the library tests

from jaxnn.cli import main

TINY = ["--hidden", "8", "--batch-size", "32", "--preprocess", "standardize", "--quiet"]


def _run(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 6)) * 3
    y = rng.integers(0, 3, size=240)
    x = (centers[y] + rng.normal(size=(240, 6))).astype(np.float32)
    path = tmp_path_factory.mktemp("data") / "blobs.npz"
    np.savez(path, x=x, y=y)
    return str(path)


@pytest.fixture(scope="module")
def trained(npz, tmp_path_factory):
    """``(run_dir, stdout)`` of ``jaxnn train`` (3 epochs)."""
    run = str(tmp_path_factory.mktemp("cli") / "run")
    code, out, err = _run("train", "--dataset", npz, *TINY, "--epochs", "3", "--out", run)
    assert code == 0, err
    return run, out


# --------------------------------------------------------------------------- train writes it
def test_train_writes_the_report_and_its_summary_names_it(trained):
    run, out = trained
    path = os.path.join(run, "report.html")
    lines = out.strip().splitlines()
    assert lines[-2] == f"run directory: {run}"
    assert lines[-1] == f"report: {path}"
    page = open(path, encoding="utf-8").read()
    p = test_report.assert_self_contained(page)
    assert {"verdicts", "curves", "layers", "histograms", "update-ratios"} <= p.ids()
    assert list(p.layer_rows) == ["layer_0", "layer_1"]
    assert not [n for n in os.listdir(run) if ".tmp" in n]


def test_no_report_writes_none(npz, tmp_path):
    run = str(tmp_path / "run")
    code, out, err = _run("train", "--dataset", npz, *TINY, "--epochs", "1", "--out", run,
                          "--no-report")
    assert code == 0, err
    assert not os.path.exists(os.path.join(run, "report.html"))
    assert not [s for s in out.splitlines() if s.startswith("report:")]
    # ... and `jaxnn report` makes it afterwards
    code, out, err = _run("report", run)
    assert code == 0, err
    assert out.strip() == f"report: {os.path.join(run, 'report.html')}"
    test_report.assert_self_contained(open(os.path.join(run, "report.html")).read())


def test_a_diverged_run_gets_a_report_that_says_why(npz, tmp_path):
    run = str(tmp_path / "run")
    code, out, _ = _run("train", "--dataset", npz, *TINY, "--epochs", "2", "--lr", "1e4",
                        "--out", run)
    assert code == 1
    assert f"report: {os.path.join(run, 'report.html')}" in out.splitlines()
    text = test_report._Page(open(os.path.join(run, "report.html")).read()).all_text()
    assert "learning rate too high; lower the learning rate" in text


# --------------------------------------------------------------------------- jaxnn report
def test_report_verb_rewrites_the_page(trained):
    run, _ = trained
    path = os.path.join(run, "report.html")
    before = os.stat(path).st_mtime_ns
    code, out, err = _run("report", run, "--probe-examples", "16")
    assert code == 0, err
    assert out.strip() == f"report: {path}"
    assert os.stat(path).st_mtime_ns >= before
    assert "on a probe batch of 16 validation examples" in open(path).read()


@pytest.mark.parametrize("make,needle", [
    (lambda d: d, "is not a jaxnn train, diagnose, search or ensemble directory"),
    (lambda d: d / "nope", "no such directory"),
    (lambda d: d / "file.txt", "no such directory"),
])
def test_a_directory_that_is_no_run_is_a_one_line_error(tmp_path, make, needle):
    (tmp_path / "file.txt").write_text("x")
    code, out, err = _run("report", str(make(tmp_path)))
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxnn report: error: ") and needle in lines[0]
    assert sorted(os.listdir(tmp_path)) == ["file.txt"]


def test_bad_probe_examples_is_refused(trained):
    code, _, err = _run("report", trained[0], "--probe-examples", "0")
    assert code == 2 and "--probe-examples must be >= 1" in err


# --------------------------------------------------------------------------- headless Chromium
#: Hosts Chromium itself calls at start (component updates, sign-in), whatever the page; none is
#: a place a page loads fonts, scripts or images from.
BROWSER_HOSTS = {"update.googleapis.com", "accounts.google.com", "clients2.google.com",
                 "optimizationguide-pa.googleapis.com", "safebrowsing.googleapis.com",
                 "redirector.gvt1.com", "edgedl.me.gvt1.com", "clientservices.googleapis.com"}
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-domain-reliability", "--no-pings",
    "--disable-client-side-phishing-detection", "--metrics-recording-only",
    "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,MediaRouter,Translate",
]


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed; .ci/run installs it (apt-get install -y "
                        "chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return exe


@contextlib.contextmanager
def _proxy():
    """A local HTTP proxy that records the host of every request sent through it."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(32)
    hosts: list[str] = []

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.settimeout(2)
            try:
                line = conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
            except OSError:
                line = ""
            conn.close()
            parts = line.split()
            if len(parts) >= 2:
                target = parts[1]
                target = target.split("://", 1)[-1].split("/", 1)[0]
                hosts.append(target.rsplit(":", 1)[0] if parts[0] == "CONNECT" else
                             target.split(":", 1)[0])

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1], hosts
    finally:
        time.sleep(0.2)
        srv.close()


def _render(path: str, *extra: str) -> tuple[str, list[str]]:
    """Chromium's DOM after loading ``path`` (or its output of ``extra`` flags) and the hosts
    of every request it sent, all going through :func:`_proxy`."""
    exe = _chromium()
    with _proxy() as (port, hosts), tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             f"--proxy-server=http://127.0.0.1:{port}", "--proxy-bypass-list=<-loopback>",
             *(extra or ("--dump-dom",)), "file://" + os.path.abspath(path)],
            capture_output=True, timeout=180, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    return proc.stdout.decode("utf-8", errors="replace"), list(hosts)


class _Dom(HTMLParser):
    def __init__(self, text):
        super().__init__()
        self.ids, self.imgs, self.h2 = set(), [], []
        self._h2 = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        self._h2 = tag == "h2"

    def handle_data(self, data):
        if self._h2:
            self.h2.append(data.strip())
            self._h2 = False


@pytest.mark.slow
def test_chromium_sees_every_request_of_a_page_that_makes_some(tmp_path):
    """The harness works: a page with an external image and stylesheet is caught."""
    page = tmp_path / "control.html"
    page.write_text('<!DOCTYPE html><html><body><p>control</p>'
                    '<img src="http://images.example.com/x.png">'
                    '<link rel="stylesheet" href="https://fonts.example.org/a.css"></body></html>')
    dom, hosts = _render(str(page))
    assert "control" in dom
    assert {"images.example.com", "fonts.example.org"} <= set(hosts), hosts


@pytest.mark.slow
def test_chromium_renders_the_report_without_a_network_request(trained):
    run, _ = trained
    dom, hosts = _render(os.path.join(run, "report.html"))
    page_requests = [h for h in hosts if h not in BROWSER_HOSTS]
    assert page_requests == [], page_requests
    d = _Dom(dom)
    assert {"verdicts", "command", "curves", "initial-loss", "layers", "histograms",
            "update-ratios"} <= d.ids
    assert d.h2[:4] == ["Verdicts", "Command and config", "Learning curves", "Initial loss check"]
    assert len(d.imgs) >= 3 and all(s.startswith("data:image/png;base64,") for s in d.imgs)
    assert "layer_0" in dom and "No problem found" in dom


@pytest.mark.slow
def test_chromium_screenshot_of_the_report_is_drawn(trained, tmp_path):
    from PIL import Image

    run, _ = trained
    shot = tmp_path / "report.png"
    _, hosts = _render(os.path.join(run, "report.html"), f"--screenshot={shot}",
                       "--window-size=1200,2400", "--hide-scrollbars")
    assert [h for h in hosts if h not in BROWSER_HOSTS] == []
    img = np.asarray(Image.open(shot).convert("L"), np.float32)
    assert img.shape == (2400, 1200)
    # text, tables and plots: far from a blank page, and the images drew (big non-white areas)
    assert (img < 250).mean() > 0.05
    rows = (img < 250).mean(axis=1)
    assert (rows > 0.3).sum() > 200  # rows crossing the plots, not just lines of text
