"""Training-step throughput: jaxnn against a hand-written JAX+optax step, flax, equinox, PyTorch.

The same model everywhere, SGD with momentum 0.9 (learning rate 0.01), mean softmax
cross-entropy, float32, on random data already on the device:

* ``--model mlp`` (default): an MLP 784-512-512-10 with ReLU, batch 256;
* ``--model convnet``: a CIFAR-shaped convnet on 32x32x3 images, conv32-conv32-pool-conv64-
  conv64-pool-fc256-10 (3x3 SAME convolutions, ReLU, 2x2 max pooling), batch 128. NHWC images
  with HWIO kernels for the JAX implementations; equinox and PyTorch take NCHW, so their copy of
  the data is transposed once, before timing.

``impl``:

* ``"jaxnn"``: ``jaxnn.train.make_train_step`` (jitted, state donated), one Python call per step;
* ``"jaxnn_scan"``: ``jaxnn.train.make_epoch``, a whole epoch (shuffle, gather each batch, step)
  in one ``lax.scan``;
* ``"jaxnn_fit"``: what ``jaxnn.train.fit`` runs per epoch (``train._fit_epoch``, the loop
  ``train._fit_loop`` picks: today the epoch in one scan on every backend, see
  ``benchmarks/fit_loops.py``; the row's ``loop`` says which), without fit's validation pass;
* ``"jax_optax"``: a hand-written step in this file (params as a list of ``(W, b)``, ``optax.sgd``,
  jit with params and optimizer state donated) -- what jaxnn must match;
* ``"flax"`` (``flax.nnx``, ``nnx.jit``), ``"equinox"`` (``eqx.filter_jit``), ``"torch"`` (eager,
  ``torch.optim.SGD``): where installed (``pip install -e '.[bench]'``; PyTorch as
  ``pip install torch==2.13.0``, a CPU build), else the table says "not installed".

Each JAX sample runs ``steps`` steps back to back and blocks on the result (async dispatch
overlaps Python with compute, as in a real loop); the samples of all JAX implementations are
interleaved; PyTorch runs after them. ``compile_s`` is the time to the end of the first step
(tracing + compilation + one step). Rows: ``{"impl", "examples_per_s", "compile_s"}`` plus
``step_ms`` and ``vs_jax_optax`` (examples/s over the hand-written step's).

With ``--model convnet`` the JSON's ``memory`` lists the peak resident memory of the jaxnn rows, the
hand-written JAX step (what XLA itself holds for this model, with ``lax.conv``) and PyTorch, each in a fresh subprocess: ``rss_mb`` after compiling and one warm-up sample (imports,
data, parameters, compiled code), then the high-water mark is reset (``/proc/self/clear_refs``)
and ``peak_mb`` is ``VmHWM`` over two more samples; ``step_mb = peak_mb - rss_mb`` is what the
training steps themselves add (activations, gradients, im2col patches).

Usage::

    python benchmarks/train_step.py [--model mlp|convnet] [--quick] [--json PATH]

Results go to ``benchmarks/results/train_step.json`` (MLP) or ``train_step_convnet.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import NamedTuple

if __package__ in (None, ""):  # run as `python benchmarks/train_step.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common as C  # noqa: E402

IMPLS = ("jaxnn", "jaxnn_scan", "jaxnn_fit", "jax_optax", "flax", "equinox", "torch")
MEMORY_IMPLS = ("jaxnn_fit", "jaxnn", "jaxnn_scan", "jax_optax", "torch")  # convnet: peak RSS
#: glibc settings of the memory subprocesses: every freed block returned to the OS at once.
MEASURE_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
MODELS = ("mlp", "convnet")
PEAK_N = 2048  # size of the square matmul that measures XLA's matmul rate
CIFAR_ARCH = "conv:32,conv:32,pool,conv:64,conv:64,pool,fc:256"


class Settings(NamedTuple):
    sizes: tuple[int, ...]  # MLP: [in, hidden..., out]; convnet: () (see image, arch, classes)
    batch: int
    steps: int  # steps per timed sample (and per scanned epoch)
    repeats: int  # timed samples
    lr: float = 0.01
    momentum: float = 0.9
    model: str = "mlp"
    image: tuple[int, ...] = ()  # convnet: (height, width, channels)
    arch: str = ""  # convnet: hidden layers in jaxnn's --arch language
    classes: int = 10


def settings(quick: bool, tiny: bool, model: str = "mlp") -> Settings:
    if model == "convnet":
        if tiny:
            return Settings((), 8, 2, 2, model="convnet", image=(8, 8, 3),
                            arch="conv:4,conv:4,pool,conv:8,conv:8,pool,fc:16")
        steps, repeats = (5, 3) if quick else (20, 7)
        return Settings((), 128, steps, repeats, model="convnet", image=(32, 32, 3),
                        arch=CIFAR_ARCH)
    if tiny:
        return Settings((64, 32, 32, 10), 16, 4, 2)
    if quick:
        return Settings((784, 512, 512, 10), 256, 20, 5)
    return Settings((784, 512, 512, 10), 256, 50, 15)


def _arch(s: Settings) -> list[tuple[str, int]]:
    """The convnet's hidden layers as (kind, size): ("conv", C), ("pool", 0), ("fc", N)."""
    out = []
    for tok in s.arch.split(","):
        kind, _, size = tok.partition(":")
        out.append((kind, int(size or 0)))
    return out


def _data(s: Settings):
    import jax
    import jax.numpy as jnp

    n = s.batch * s.steps
    kx, ky = jax.random.split(jax.random.key(0))
    shape = s.image if s.model == "convnet" else (s.sizes[0],)
    x = jax.random.normal(kx, (n, *shape), jnp.float32)
    y = jax.random.randint(ky, (n,), 0, s.classes, jnp.int32)
    return x, y


def _batches(s: Settings, x, y):
    return [(x[i * s.batch:(i + 1) * s.batch], y[i * s.batch:(i + 1) * s.batch])
            for i in range(s.steps)]


def _jaxnn_model(s: Settings):
    from jaxnn import models

    if s.model == "convnet":
        return models.convnet(s.image, s.classes, s.arch, activation="relu", init="he_normal")
    return models.mlp(list(s.sizes), activation="relu", init="he_normal")


# --------------------------------------------------------------------------- implementations
# Each builder returns (first_call, call): both run `s.steps` training steps and return what to
# block on; first_call is timed once as compile_s (it compiles and runs one step first).
def build_jaxnn(s: Settings, x, y):
    import jax
    import jax.numpy as jnp

    from jaxnn import data, optim, train

    model = _jaxnn_model(s)
    opt = optim.momentum(s.lr, momentum=s.momentum)
    step = train.make_train_step(model.apply, "softmax_cross_entropy", opt)  # donates the state
    mask = jnp.ones((s.batch,), jnp.float32)
    batches = [data.Batch(xb, yb, mask) for xb, yb in _batches(s, x, y)]
    st = [train.init_train_state(model, opt, key=jax.random.key(1))]

    def first():
        st[0], m = step(st[0], batches[0])
        return st[0]

    def call():
        state = st[0]
        for b in batches:
            state, _ = step(state, b)
        st[0] = state
        return state

    return first, call


def build_jaxnn_scan(s: Settings, x, y):
    import jax
    import jax.numpy as jnp

    from jaxnn import optim, train

    model = _jaxnn_model(s)
    opt = optim.momentum(s.lr, momentum=s.momentum)
    epoch = train.make_epoch(model.apply, "softmax_cross_entropy", opt, batch_size=s.batch)
    st = [train.init_train_state(model, opt, key=jax.random.key(1))]
    e = [0]

    def call():
        e[0] += 1
        st[0], _ = epoch(st[0], x, y, jnp.int32(e[0]))
        return st[0]

    return call, call


def build_jaxnn_fit(s: Settings, x, y):
    """One epoch of what ``train.fit`` runs (its choice of loop), without validation."""
    import jax
    import jax.numpy as jnp

    from jaxnn import optim, train

    model = _jaxnn_model(s)
    opt = optim.momentum(s.lr, momentum=s.momentum)
    epoch, loop = train._fit_epoch(model, "softmax_cross_entropy", opt, batch_size=s.batch,
                                   l2=0.0, mesh=None, augment=None, x_shape=tuple(x.shape))
    st = [train.init_train_state(model, opt, key=jax.random.key(1))]
    e = [0]

    def call():
        e[0] += 1
        st[0], _ = epoch(st[0], x, y, jnp.int32(e[0]))
        return st[0]

    call.loop = loop
    return call, call


def fit_loop(s: Settings) -> str:
    """The loop ``train.fit`` picks for this benchmark's model here ("scan" or "step")."""
    from jaxnn import train

    n = s.batch * s.steps
    shape = (n, *s.image) if s.model == "convnet" else (n, s.sizes[0])
    return train._fit_loop(_jaxnn_model(s), shape, batch_size=s.batch)


def _handwritten_mlp(s: Settings):
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(1), len(s.sizes) - 1)
    params = [(jax.random.normal(k, (m, n), jnp.float32) * jnp.sqrt(2.0 / m),
               jnp.zeros((n,), jnp.float32))
              for k, m, n in zip(keys, s.sizes[:-1], s.sizes[1:], strict=True)]

    def forward(params, xb):
        h = xb
        for w, b in params[:-1]:
            h = jax.nn.relu(h @ w + b)
        w, b = params[-1]
        return h @ w + b

    return params, forward


def _handwritten_convnet(s: Settings):
    """Params: a list of (kernel HWIO or matrix, bias); ``None`` marks a 2x2 max pooling."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    keys = iter(jax.random.split(jax.random.key(1), 16))
    h, w, c = s.image
    params = []
    for kind, size in _arch(s) + [("fc", s.classes)]:
        if kind == "conv":
            params.append((jax.random.normal(next(keys), (3, 3, c, size)) * jnp.sqrt(2 / (9 * c)),
                           jnp.zeros((size,))))
            c = size
        elif kind == "pool":
            params.append(None)
            h, w = h // 2, w // 2
        else:
            n_in = h * w * c
            params.append((jax.random.normal(next(keys), (n_in, size)) * jnp.sqrt(2 / n_in),
                           jnp.zeros((size,))))
            h = w = 1
            c = size

    def forward(params, xb):
        z = xb
        for i, p in enumerate(params):
            if p is None:
                z = lax.reduce_window(z, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
                continue
            k, b = p
            if k.ndim == 4:
                z = lax.conv_general_dilated(z, k, (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
            else:
                z = z.reshape(z.shape[0], -1) @ k + b
            if i < len(params) - 1:
                z = jax.nn.relu(z)
        return z

    return params, forward


def build_jax_optax(s: Settings, x, y):
    """The hand-written reference: the textbook JAX + optax training step."""
    import jax
    import optax

    params, forward = (_handwritten_convnet if s.model == "convnet" else _handwritten_mlp)(s)
    tx = optax.sgd(s.lr, momentum=s.momentum)

    def loss_fn(params, xb, yb):
        logits = forward(params, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def _step(params, opt_state, xb, yb):
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(_step, donate_argnums=(0, 1))
    batches = _batches(s, x, y)
    st = [(params, tx.init(params))]

    def first():
        p, o, _ = step(*st[0], *batches[0])
        st[0] = (p, o)
        return p

    def call():
        p, o = st[0]
        for xb, yb in batches:
            p, o, _ = step(p, o, xb, yb)
        st[0] = (p, o)
        return p

    return first, call


def _flax_model(s: Settings, nnx, rngs):
    import jax

    he = nnx.initializers.he_normal()
    if s.model == "mlp":
        class MLP(nnx.Module):
            def __init__(self, sizes, rngs):
                self.layers = nnx.List([
                    nnx.Linear(m, n, kernel_init=he, rngs=rngs)
                    for m, n in zip(sizes[:-1], sizes[1:], strict=True)])

            def __call__(self, h):
                for layer in self.layers[:-1]:
                    h = jax.nn.relu(layer(h))
                return self.layers[-1](h)

        return MLP(s.sizes, rngs)

    class CNN(nnx.Module):
        def __init__(self, rngs):
            h, _, c = s.image
            layers = []
            for kind, size in _arch(s):
                if kind == "conv":
                    layers.append(nnx.Conv(c, size, (3, 3), padding="SAME", kernel_init=he,
                                           rngs=rngs))
                    c = size
                elif kind == "pool":
                    layers.append(None)
                    h //= 2
                else:
                    layers.append(nnx.Linear(h * h * c, size, kernel_init=he, rngs=rngs))
                    h, c = 1, size
            self.layers = nnx.List(layers)
            self.out = nnx.Linear(c * h * h, s.classes, kernel_init=he, rngs=rngs)

        def __call__(self, z):
            for layer in self.layers:
                if layer is None:
                    z = nnx.max_pool(z, (2, 2), strides=(2, 2))
                    continue
                if isinstance(layer, nnx.Linear):
                    z = z.reshape(z.shape[0], -1)
                z = jax.nn.relu(layer(z))
            return self.out(z.reshape(z.shape[0], -1))

    return CNN(rngs)


def build_flax(s: Settings, x, y):
    import optax
    from flax import nnx

    model = _flax_model(s, nnx, nnx.Rngs(1))
    optimizer = nnx.Optimizer(model, optax.sgd(s.lr, momentum=s.momentum), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, xb, yb):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(xb), yb).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    # nnx.cached_partial caches the graph traversal of model/optimizer between calls (the
    # documented way to cut nnx.jit's Python overhead for a training loop).
    cached = nnx.cached_partial(step, model, optimizer)
    batches = _batches(s, x, y)

    def first():
        return cached(*batches[0])

    def call():
        out = None
        for xb, yb in batches:
            out = cached(xb, yb)
        return out

    return first, call


def _equinox_model(s: Settings, eqx, key):
    """One example at a time (vmapped by the step); the convnet takes CHW images."""
    import jax

    if s.model == "mlp":
        return eqx.nn.MLP(s.sizes[0], s.sizes[-1], width_size=s.sizes[1],
                          depth=len(s.sizes) - 2, activation=jax.nn.relu, key=key)
    keys = iter(jax.random.split(key, 16))
    h, _, c = s.image
    layers = []
    for kind, size in _arch(s):
        if kind == "conv":
            layers += [eqx.nn.Conv2d(c, size, 3, padding=1, key=next(keys)),
                       eqx.nn.Lambda(jax.nn.relu)]
            c = size
        elif kind == "pool":
            layers.append(eqx.nn.MaxPool2d(2, 2))
            h //= 2
        else:
            layers += [eqx.nn.Lambda(lambda z: z.reshape(-1)),
                       eqx.nn.Linear(h * h * c, size, key=next(keys)),
                       eqx.nn.Lambda(jax.nn.relu)]
            h, c = 1, size
    layers.append(eqx.nn.Linear(h * h * c, s.classes, key=next(keys)))
    return eqx.nn.Sequential(layers)


def build_equinox(s: Settings, x, y):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    model = _equinox_model(s, eqx, jax.random.key(1))
    if s.model == "convnet":
        x = jnp.transpose(x, (0, 3, 1, 2))  # NCHW, once, before timing
    tx = optax.sgd(s.lr, momentum=s.momentum)
    opt_state = tx.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit(donate="all-except-first")
    def step(xb, model, opt_state, yb):
        def loss_fn(model):
            logits = jax.vmap(model)(xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    batches = _batches(s, x, y)
    st = [(model, opt_state)]

    def first():
        m, o, loss = step(batches[0][0], *st[0], batches[0][1])
        st[0] = (m, o)
        return loss

    def call():
        m, o = st[0]
        loss = None
        for xb, yb in batches:
            m, o, loss = step(xb, m, o, yb)
        st[0] = (m, o)
        return loss

    return first, call


def _torch_model(s: Settings, torch):
    mods = []
    if s.model == "mlp":
        dims = list(zip(s.sizes[:-1], s.sizes[1:], strict=True))
        for i, (m, n) in enumerate(dims):
            mods.append(torch.nn.Linear(m, n))
            if i < len(dims) - 1:
                mods.append(torch.nn.ReLU())
    else:
        h, _, c = s.image
        for kind, size in _arch(s):
            if kind == "conv":
                mods += [torch.nn.Conv2d(c, size, 3, padding=1), torch.nn.ReLU()]
                c = size
            elif kind == "pool":
                mods.append(torch.nn.MaxPool2d(2))
                h //= 2
            else:
                mods += [torch.nn.Flatten(), torch.nn.Linear(h * h * c, size), torch.nn.ReLU()]
                h, c = 1, size
        mods.append(torch.nn.Linear(h * h * c, s.classes))
    for m in mods:
        if isinstance(m, torch.nn.Linear | torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight)
            torch.nn.init.zeros_(m.bias)
    return torch.nn.Sequential(*mods)


def build_torch(s: Settings, x, y):
    import numpy as np
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(1)
    model = _torch_model(s, torch)
    opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum)
    loss_fn = torch.nn.CrossEntropyLoss()
    xn = np.array(x)
    if s.model == "convnet":
        xn = np.ascontiguousarray(xn.transpose(0, 3, 1, 2))  # NCHW, once, before timing
    tx = torch.from_numpy(xn)
    ty = torch.from_numpy(np.array(y)).long()
    batches = _batches(s, tx, ty)

    def one(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        return loss

    def first():
        return one(*batches[0])

    def call():
        loss = None
        for xb, yb in batches:
            loss = one(xb, yb)
        return loss

    return first, call


BUILDERS = {"jaxnn": build_jaxnn, "jaxnn_scan": build_jaxnn_scan, "jaxnn_fit": build_jaxnn_fit,
            "jax_optax": build_jax_optax, "flax": build_flax, "equinox": build_equinox,
            "torch": build_torch}
_NEEDS = {"flax": "flax", "equinox": "equinox", "torch": "torch"}


def available(impl: str) -> bool:
    import importlib.util

    mod = _NEEDS.get(impl)
    return mod is None or importlib.util.find_spec(mod) is not None


# --------------------------------------------------------------------------- run
def measure_all(s: Settings, impls=IMPLS) -> tuple[list[dict], list[str]]:
    """Rows for every available implementation, and the list of skipped ones."""
    x, y = _data(s)
    skipped = [i for i in impls if not available(i)]
    compile_s, calls = {}, {}
    for impl in impls:
        if impl in skipped:
            C.log(f"  {impl}: not installed, skipped")
            continue
        first, call = BUILDERS[impl](s, x, y)
        compile_s[impl] = C.time_once(first)
        calls[impl] = call
        C.log(f"  {impl}: first step {compile_s[impl]:.2f} s")
    jax_calls = {k: v for k, v in calls.items() if k != "torch"}
    raw = C.measure_rounds(jax_calls, repeats=s.repeats, warmup=1)
    times = {k: statistics.median(v) for k, v in raw.items()}
    if "torch" in calls:  # alone, after the JAX runs (its OpenMP threads spin after work)
        times.update(C.measure({"torch": calls["torch"]}, repeats=s.repeats, warmup=1))
    examples = s.batch * s.steps
    rows = []
    for impl in calls:
        eps = examples / times[impl]
        if impl in raw and "jax_optax" in raw:  # paired: samples timed side by side
            vs = C.paired_ratio(raw, "jax_optax", impl)
        elif "jax_optax" in times:
            vs = times["jax_optax"] / times[impl]
        else:
            vs = None
        row = {"impl": impl, "examples_per_s": eps, "compile_s": compile_s[impl],
               "step_ms": 1e3 * times[impl] / s.steps, "vs_jax_optax": vs}
        if impl == "jaxnn_fit":
            row["loop"] = getattr(calls[impl], "loop", None)
        rows.append(row)
        C.log(f"  {impl:10} {eps:10.0f} examples/s  ({1e3 * times[impl] / s.steps:.2f} ms/step)")
    return rows, skipped


# --------------------------------------------------------------------------- memory
def _proc_status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def memory_child(s: Settings, impl: str) -> dict:
    """In this (fresh) process: build ``impl``, compile and warm up, then the peak resident
    memory of two more samples of ``s.steps`` steps (see the module docstring)."""
    x, y = _data(s)
    if impl == "torch":
        import torch  # noqa: F401 -- its import in the baseline, as jax's is
    C.block((x, y))
    base = _proc_status_kb("VmRSS")
    first, call = BUILDERS[impl](s, x, y)
    C.block(first())
    C.block(call())
    rss = _proc_status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
        f.write("5")
    for _ in range(2):
        C.block(call())
    peak = _proc_status_kb("VmHWM")
    return {"impl": impl, "base_mb": base / 1024, "rss_mb": rss / 1024, "peak_mb": peak / 1024,
            "step_mb": (peak - rss) / 1024}


def measure_memory(s: Settings, quick: bool, tiny: bool, impls=MEMORY_IMPLS) -> list[dict]:
    """:func:`memory_child` of each available ``impl`` in its own subprocess."""
    import json
    import subprocess

    if not os.path.exists("/proc/self/clear_refs"):
        C.log("  memory: no /proc/self/clear_refs here, skipped")
        return []
    out = []
    for impl in impls:
        if not available(impl):
            out.append({"impl": impl, "status": "not installed"})
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "--model", s.model,
               "--memory-child", impl] + (["--quick"] if quick else []) + (
                   ["--tiny"] if tiny else [])
        # Freed blocks go back to the OS at once (glibc keeps large freed blocks otherwise, and
        # the warm-up's peak would stay resident): RSS is then what is live.
        env = {**os.environ, **MEASURE_MALLOC}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
        if proc.returncode != 0:
            C.log(f"  memory {impl}: failed: {proc.stderr.strip().splitlines()[-1:]}")
            out.append({"impl": impl, "status": "failed"})
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        out.append(row)
        C.log(f"  memory {impl:10} resident {row['rss_mb']:.0f} MB, peak {row['peak_mb']:.0f} MB"
              f" (steps add {row['step_mb']:.0f} MB)")
    return out


def matmul_peak(n: int) -> float:
    """GFLOP/s of one jitted float32 ``[n, n] @ [n, n]`` (XLA's matmul rate on this machine)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a).lower(a).compile()
    t = C.measure({"matmul": lambda: f(a)}, repeats=10, warmup=2)["matmul"]
    return 2 * n**3 / t / 1e9


def matmul_flops_per_example(sizes) -> float:
    """Exact matmul FLOPs of one training example: forward 2mn per layer, backward 4mn (dX and
    dW) except for the first layer, whose dX is not needed (XLA drops it)."""
    f = 0
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        f += 2 * m * n + (2 * m * n if i == 0 else 4 * m * n)
    return float(f)


def convnet_flops_per_example(s: Settings) -> float:
    """Exact convolution and matmul FLOPs of one training example: forward
    ``2 * H * W * 9 * C_in * C_out`` per 3x3 SAME convolution (``2mn`` per dense layer), backward
    twice that (dX and dW) except for the first layer, whose dX is not needed."""
    h, w, c = s.image
    f, first = 0.0, True
    for kind, size in _arch(s) + [("fc", s.classes)]:
        if kind == "pool":
            h, w = h // 2, w // 2
            continue
        fwd = 2 * h * w * 9 * c * size if kind == "conv" else 2 * h * w * c * size
        f += fwd + (fwd if first else 2 * fwd)
        first = False
        if kind == "fc":
            h = w = 1
        c = size
    return f


def model_label(s: Settings) -> str:
    if s.model == "mlp":
        return f"MLP {'-'.join(map(str, s.sizes))}"
    parts = [f"conv{n}" if k == "conv" else k if k == "pool" else f"fc{n}" for k, n in _arch(s)]
    return f"convnet {'x'.join(map(str, s.image))} {'-'.join(parts)}-{s.classes}"


def markdown(machine: dict, rows: list[dict], s: Settings, skipped: list[str],
             peak: float, memory: list[dict] | None = None) -> str:
    conv = s.model == "convnet"
    flops = convnet_flops_per_example(s) if conv else matmul_flops_per_example(s.sizes)
    table = [[r["impl"], r["examples_per_s"], r["step_ms"], r["vs_jax_optax"],
              r["examples_per_s"] * flops / 1e9, r["examples_per_s"] * flops / 1e9 / peak,
              r["compile_s"]] for r in rows]
    table = [[c if not isinstance(c, float) else float(f"{c:.3g}") for c in t] for t in table]
    for r, t in zip(rows, table, strict=True):
        if r.get("loop"):
            t[0] = f"{r['impl']} ({r['loop']})"
    table += [[impl, "not installed", "-", "-", "-", "-", "-"] for impl in skipped]
    lines = [f"# Training-step throughput: {model_label(s)}, batch {s.batch}",
             "", f"Machine: {C.machine_line(machine)}", "",
             f"SGD momentum {s.momentum}, softmax cross-entropy, float32. Median of {s.repeats} "
             f"interleaved samples of {s.steps} steps. *vs jax_optax*: speed over the "
             "hand-written JAX+optax step (median over the samples timed side by side); "
             f"*GFLOP/s*: exact {'convolution and ' if conv else ''}matmul FLOPs "
             f"({flops / 1e6:.2f} MFLOP per example) per second; *of peak*: GFLOP/s over "
             f"XLA's float32 matmul rate on this machine ({peak:.0f} GFLOP/s, a jitted "
             f"{PEAK_N}x{PEAK_N} @ {PEAK_N}x{PEAK_N}); *compile_s*: time to the end of the first "
             "step (jaxnn_scan: the first epoch).", "",
             C.markdown_table(table, ["impl", "examples/s", "ms/step", "vs jax_optax",
                                      "GFLOP/s", "of peak", "compile_s"])]
    if skipped:
        lines += ["", f"Not installed: {', '.join(skipped)} (`pip install -e '.[bench]'`; "
                      "PyTorch: `pip install torch==2.13.0`, a CPU build)."]
    if any(r["impl"] == "jaxnn_fit" for r in rows):
        lines += ["", "*jaxnn_fit*: what `train.fit` runs per epoch here (in brackets: `scan`, the "
                      "epoch in one `lax.scan`, or `step`, a loop of steps jitted alone with "
                      "`lax.conv`), without its validation pass."]
    if memory:
        mt = [[m["impl"], m.get("status", "ok")] + (
            [round(m["base_mb"]), round(m["rss_mb"]), round(m["peak_mb"]), round(m["step_mb"]),
             round(m["peak_mb"] - m["base_mb"])]
            if "peak_mb" in m else ["-"] * 5) for m in memory]
        lines += ["", "## Peak resident memory", "",
                  "Each in a fresh process whose glibc returns every freed block to the OS at "
                  "once (`MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0`): *base* after "
                  "the imports and the data; *resident* after compiling and one warm-up sample "
                  "(parameters, optimizer state, compiled code, and whatever the compiler keeps); "
                  f"*peak*: the high-water mark (VmHWM, reset after warm-up) over two samples of "
                  f"{s.steps} steps; *steps add*: peak - resident (activations, gradients, im2col "
                  "patches); *over base*: peak - base.", "",
                  C.markdown_table(mt, ["impl", "status", "base MB", "resident MB", "peak MB",
                                        "steps add MB", "over base MB"])]
    tg = targets(rows, s.model, memory)
    if tg:
        lines += ["", "## Targets", "", C.markdown_table(
            [[t["target"], float(f"{t['value']:.3g}"), "yes" if t["met"] else "NO"] for t in tg],
            ["target", "value", "met"])]
    return "\n".join(lines) + "\n"


def targets(rows: list[dict], model: str = "mlp", memory: list[dict] | None = None) -> list[dict]:
    """The training-step targets (those whose implementations ran). MLP: >= 1.0x the
    hand-written step, >= 2x PyTorch eager; convnet (issue 18): what ``fit`` runs (``jaxnn_fit``)
    ahead of the hand-written step, flax, equinox and >= 1.0x PyTorch eager, >= 0.95x the best
    jaxnn row, and its peak memory (and the im2col scan's) within 2x PyTorch's."""
    eps = {r["impl"]: r["examples_per_s"] for r in rows}
    vs = {r["impl"]: r["vs_jax_optax"] for r in rows}
    out = []
    me = "jaxnn_fit" if model == "convnet" else "jaxnn"
    if model == "convnet":
        goals = (("jax_optax", 1.0, "jaxnn_fit ahead of the hand-written JAX+optax lax.conv step"),
                 ("flax", 1.0, "jaxnn_fit ahead of flax"),
                 ("equinox", 1.0, "jaxnn_fit ahead of equinox"),
                 ("torch", 1.0, "jaxnn_fit >= 1.0x PyTorch eager"))
    else:
        goals = (("jax_optax", 1.0, "jaxnn >= 1.0x the hand-written JAX+optax step"),
                 ("torch", 2.0, "jaxnn >= 2x PyTorch eager"))
    for impl, need, what in goals:
        if me in eps and impl in eps:
            v = vs[me] if impl == "jax_optax" and vs[me] else eps[me] / eps[impl]
            out.append({"target": what, "value": v, "met": v >= need})
    if "jaxnn_fit" in eps:
        best = max(v for k, v in eps.items() if k.startswith("jaxnn"))
        v = eps["jaxnn_fit"] / best
        out.append({"target": "jaxnn_fit >= 0.95x the best jaxnn row", "value": v,
                    "met": v >= 0.95})
    # Memory: peak over the process's base (imports and data), jaxnn's over PyTorch's; the
    # "steps add" column cannot be compared (XLA:CPU keeps its step's buffers resident).
    mem = {m["impl"]: m for m in memory or [] if "peak_mb" in m}
    torch_over = mem["torch"]["peak_mb"] - mem["torch"]["base_mb"] if "torch" in mem else 0.0
    for impl in ("jaxnn_fit", "jaxnn_scan"):
        if impl in mem and torch_over >= 1.0:
            v = (mem[impl]["peak_mb"] - mem[impl]["base_mb"]) / torch_over
            out.append({"target": f"memory: {impl} peak over base <= 2x PyTorch's", "value": v,
                        "met": v <= 2.0})
    # The same measure for the hand-written lax.conv step: what any JAX program of this model
    # holds (XLA's compiled code and runtime included), against which im2col's patches show.
    if "jaxnn_fit" in mem and "jax_optax" in mem:
        v = ((mem["jaxnn_fit"]["peak_mb"] - mem["jaxnn_fit"]["base_mb"])
             / max(mem["jax_optax"]["peak_mb"] - mem["jax_optax"]["base_mb"], 1.0))
        out.append({"target": "memory: jaxnn_fit peak over base <= the hand-written lax.conv "
                              "step's", "value": v, "met": v <= 1.0})
    if "jaxnn" in eps and "jaxnn_scan" in eps:
        v = eps["jaxnn_scan"] / eps["jaxnn"]
        out.append({"target": "jaxnn_scan faster than the per-step jaxnn loop", "value": v,
                    "met": v > 1.0})
    return out


def run(*, quick: bool = False, tiny: bool = False, json_path, model: str = "mlp") -> dict:
    s = settings(quick, tiny, model)
    machine = C.machine_info()
    C.log(f"train_step: {model_label(s)}, batch {s.batch}, {s.steps} steps x {s.repeats}")
    rows, skipped = measure_all(s)
    peak = matmul_peak(64 if tiny else PEAK_N)
    C.log(f"  XLA float32 matmul rate: {peak:.0f} GFLOP/s")
    memory = measure_memory(s, quick, tiny) if s.model == "convnet" else []
    md = markdown(machine, rows, s, skipped, peak, memory)
    jpath, mdpath = C.write_results(json_path, machine, rows, md, settings=s._asdict(),
                                    skipped=skipped, matmul_peak_gflops=peak, memory=memory,
                                    fit_loop=fit_loop(s),
                                    targets=targets(rows, s.model, memory))
    png = jpath.with_suffix(".png")
    C.bar_chart(png, [{"title": f"{model_label(s)}, batch {s.batch}, "
                                f"float32 ({machine['cpu']}, {machine['cores']} cores)",
                       "groups": [r["impl"] for r in rows],
                       "series": {"examples/s": [r["examples_per_s"] for r in rows]}}],
                xlabel="training examples / s")
    return {"machine": machine, "rows": rows, "markdown": md,
            "paths": {"json": str(jpath), "markdown": str(mdpath), "png": str(png)}}


def main(argv: list[str] | None = None) -> int:
    p = C.parser("Training-step throughput: jaxnn vs hand-written JAX+optax, flax, equinox, "
                 "PyTorch.", "train_step.json")
    p.add_argument("--model", choices=MODELS, default="mlp",
                   help="mlp (784-512-512-10, batch 256) or convnet (CIFAR-shaped, batch 128); "
                        "the convnet's results default to train_step_convnet.json")
    p.add_argument("--memory-child", choices=MEMORY_IMPLS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:  # a subprocess of measure_memory: one JSON line on stdout
        import json

        s = settings(args.quick, C.tiny_requested(args), args.model)
        print(json.dumps(memory_child(s, args.memory_child)))
        return 0
    json_path = args.json
    if args.model == "convnet" and json_path == p.get_default("json"):
        json_path = str(C.RESULTS_DIR / "train_step_convnet.json")
    out = run(quick=args.quick, tiny=C.tiny_requested(args), json_path=json_path,
              model=args.model)
    print(out["markdown"])
    C.log(f"wrote {out['paths']['json']}, {out['paths']['markdown']}, {out['paths']['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
