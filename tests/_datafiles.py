"""Small data files in the original formats, and a local HTTP server that serves them.

Used by the dataset and ``jaxnn data`` tests; nothing here touches the internet.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np

from jaxnn import datasets

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_BATCHES = [f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]


def idx_bytes(arr: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array, written out from the format's definition."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.tobytes()


def write_idx_set(directory, *, gz=False, n_train=30, n_test=10, seed=0) -> dict:
    """The four MNIST-style IDX files (``.gz`` with ``gz``); returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    os.makedirs(directory, exist_ok=True)
    for name, arr in arrays.items():
        raw = idx_bytes(arr)
        if gz:
            Path(directory, name + ".gz").write_bytes(gzip.compress(raw))
        else:
            Path(directory, name).write_bytes(raw)
    return arrays


def cifar_batches(*, n=4, seed=0) -> dict:
    """Six CIFAR-10 python batches of ``n`` random images each, as the original dicts."""
    rng = np.random.default_rng(seed)
    return {
        name: {
            b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
            b"labels": [int(v) for v in (np.arange(n) + i) % 10],
            b"batch_label": name.encode(),
        }
        for i, name in enumerate(CIFAR_BATCHES)
    }


def write_cifar(directory, *, n=4, protocol=2, seed=0) -> dict:
    """The extracted batches ``data_batch_1..5``, ``test_batch`` in ``directory``."""
    os.makedirs(directory, exist_ok=True)
    batches = cifar_batches(n=n, seed=seed)
    for name, batch in batches.items():
        with open(os.path.join(directory, name), "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
    return batches


def write_cifar_archive(path, *, n=4, seed=0, skip=()) -> dict:
    """``cifar-10-python.tar.gz`` as the original: ``cifar-10-batches-py/<batch>`` pickles."""
    batches = cifar_batches(n=n, seed=seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, batch in batches.items():
            if name in skip:
                continue
            raw = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return batches


def digest(path, algorithm: str) -> str:
    return hashlib.new(algorithm, Path(path).read_bytes()).hexdigest()


def trust(monkeypatch, name: str, directory, *, url: str | None = None, algorithm="sha256"):
    """Swap dataset ``name``'s checksum table for the digests of the files in ``directory``
    (and its base URL for ``url``)."""
    source = datasets.SOURCES[name]
    files = tuple(
        datasets.RemoteFile(f.name, algorithm, digest(Path(directory) / f.name, algorithm))
        for f in source.files
    )
    monkeypatch.setitem(datasets.SOURCES, name, datasets.Source(url or source.url, files))


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves files; ``/short/<path>`` announces the full length but sends only half."""

    requests: list

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        self.requests.append(self.path)
        if self.path.startswith("/short/"):
            raw = Path(self.directory, self.path[len("/short/"):]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw[: len(raw) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@contextlib.contextmanager
def serve(directory):
    """Serve ``directory`` on 127.0.0.1 in a thread; yields ``(base_url, requests)``."""
    requests: list = []
    handler = type("Handler", (_Handler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def served_tree(root) -> Path:
    """A directory of originals to serve: ``mnist/`` and ``fashion_mnist/`` (IDX ``.gz``, from
    different seeds) and ``cifar10/cifar-10-python.tar.gz``."""
    root = Path(root)
    write_idx_set(root / "mnist", gz=True, seed=1)
    write_idx_set(root / "fashion_mnist", gz=True, seed=2)
    write_cifar_archive(root / "cifar10" / "cifar-10-python.tar.gz", seed=3)
    return root


def refused_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens (a port just bound and released), so a
    request is refused at once: what a download sees without a network."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/dead/"


DEAD = refused_url()  # nothing listens there: a refused connection (one per session)
