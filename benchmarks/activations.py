"""Activation throughput: every jaxnn activation next to jax.nn, PyTorch and the bandwidth limit.

For each activation, forward (``f(x)``) and forward+backward (``grad(sum(f(x)))``), float32 and
bfloat16, on a large 1-D array (16M elements; ``--quick``: 8M, fewer repeats, float32 only),
jitted, warmed up, ``block_until_ready()``, median of interleaved repeats, in elements/s:

* ``impl``: ``"jaxnn"``; ``"jax.nn"`` (the same function from :mod:`jax.nn`, same arguments);
  ``"torch"`` (PyTorch eager, if installed); ``"bandwidth"`` (activation ``"copy"``: a jitted
  ``x * 2``, one read and one write per element -- the memory traffic of both passes of any
  elementwise activation, hence the limit for both).
* ``alloc``: ``"fresh"`` (a new output array per call, as users call a function) or ``"fixed"``
  (the output written into a donated scratch buffer -- ``donate_argnums`` with
  ``keep_unused=True``, without which jit drops the unused argument and the donation with it).
  On CPU a fresh output larger than glibc's mmap threshold (32 MiB at most) is a new ``mmap``
  every call and page-faults on first write; ``"fixed"`` removes that cost.
* ``malloc``: ``"default"``, ``"env"`` (the process started with ``MALLOC_MMAP_THRESHOLD_``,
  ``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_ARENA_MAX=1``) or ``"mallopt"`` (the same three
  settings made with ``mallopt(3)`` at start-up, before JAX is imported). The non-default
  settings are measured by re-running the float32 ``fresh`` measurement (without PyTorch) in a
  subprocess.

Also ``case="dense"``: a dense layer ``act(x @ W + b)`` followed by each activation (backward: the
gradients with respect to ``x``, ``W`` and ``b`` for a random incoming gradient), in output
elements/s; ``case="maxout_layer"``: maxout with two pieces against ReLU at equal output width, as
layers; and ``case="maxout"``: ways to write maxout on the large array.

Rows: ``{"case", "activation", "pass", "impl", "alloc", "malloc", "dtype", "elements",
"elements_per_s"}`` plus, where they apply, ``vs_jax_nn`` and ``vs_bandwidth``: the median over
rounds of the time ratio to the reference timed next to it in the same round (>1: faster than the
reference), and ``same_xla_cost``.

Usage::

    python benchmarks/activations.py [--quick] [--json PATH] [--activations relu,tanh]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

if __package__ in (None, ""):  # run as `python benchmarks/activations.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common as C  # noqa: E402

#: The activations whose forward pass should reach 80% of the bandwidth limit (issue 6).
CHEAP = ("relu", "leaky_relu", "sigmoid", "tanh", "swish")
_PASSES = ("fwd", "fwd_bwd")
#: What ``--tiny`` (the smoke test) measures.
TINY_ACTIVATIONS = ("relu",)


class Settings(NamedTuple):
    size: int  # elements of the 1-D array
    repeats: int
    min_time: float  # seconds each implementation is timed at least (per group)
    dtypes: tuple[str, ...]
    dense: tuple[int, int, int]  # batch, in, out
    children: bool  # re-run float32 fresh under the other malloc settings


def settings(quick: bool, tiny: bool) -> Settings:
    if tiny:
        return Settings(1 << 16, 2, 0.0, ("float32",), (32, 64, 64), True)
    if quick:
        return Settings(1 << 23, 5, 0.1, ("float32",), (512, 512, 512), True)
    return Settings(1 << 24, 7, 0.25, ("float32", "bfloat16"), (1024, 1024, 1024), True)


# --------------------------------------------------------------------------- the activations
class Case(NamedTuple):
    name: str
    jaxnn: Callable  # x -> y
    jax_nn: Callable | None  # the same function from jax.nn
    torch: Callable | None  # (torch, x) -> y, PyTorch eager


def cases(dtype) -> list[Case]:
    """Every jaxnn activation (aliases once), with its jax.nn and PyTorch equivalents."""
    import jax
    import jax.numpy as jnp

    from jaxnn import activations as A

    alpha = jnp.asarray(0.25, dtype)  # prelu's learnable slope, a scalar here
    out = [
        Case("linear", A.linear, jax.nn.identity, None),
        Case("step", A.step, None, lambda t, x: t.heaviside(x, t.ones((), dtype=x.dtype))),
        Case("sigmoid", A.sigmoid, jax.nn.sigmoid, lambda t, x: t.sigmoid(x)),
        Case("tanh", A.tanh, jax.nn.tanh, lambda t, x: t.tanh(x)),
        Case("relu", A.relu, jax.nn.relu, lambda t, x: t.relu(x)),
        Case("leaky_relu", A.leaky_relu, jax.nn.leaky_relu,
             lambda t, x: t.nn.functional.leaky_relu(x, 0.01)),
        Case("prelu", lambda x: A.prelu(x, alpha), lambda x: jax.nn.leaky_relu(x, 0.25),
             lambda t, x: t.nn.functional.prelu(x, t.full((1,), 0.25, dtype=x.dtype))),
        Case("elu", A.elu, jax.nn.elu, lambda t, x: t.nn.functional.elu(x)),
        Case("selu", A.selu, jax.nn.selu, lambda t, x: t.nn.functional.selu(x)),
        Case("swish", A.swish, jax.nn.swish, lambda t, x: t.nn.functional.silu(x)),
        Case("silu", A.silu, jax.nn.silu, lambda t, x: t.nn.functional.silu(x)),
        Case("gelu", A.gelu, lambda x: jax.nn.gelu(x, approximate=False),
             lambda t, x: t.nn.functional.gelu(x)),
        Case("gelu_tanh", lambda x: A.gelu(x, approximate=True),
             lambda x: jax.nn.gelu(x, approximate=True),
             lambda t, x: t.nn.functional.gelu(x, approximate="tanh")),
        Case("softplus", A.softplus, jax.nn.softplus, lambda t, x: t.nn.functional.softplus(x)),
        Case("maxout", lambda x: A.maxout(x, 2), None, None),
    ]
    covered = {c.name for c in out}
    for name in A.names():  # the rest straight from the registry, next to jax.nn's namesake
        entry = A.entry(name)
        if name in covered or entry.alias_of in covered:
            continue
        if not entry.elementwise:  # parameters or a width change: it needs a row above
            raise RuntimeError(f"benchmarks/activations.py has no case for {name!r}")
        out.append(Case(name, entry.obj, getattr(jax.nn, name, None), None))
    return out


def _copy(x):
    return x * 2  # the bandwidth probe: one read, one write per element


def _fwd_bwd(fn):
    import jax
    import jax.numpy as jnp

    return jax.grad(lambda x: jnp.sum(fn(x)))


# --------------------------------------------------------------------------- callables
def xla_cost(fn, *args) -> tuple[float | None, float | None]:
    """``(bytes accessed, flops)`` of the optimized XLA program of ``jit(fn)(*args)``: equal
    numbers for jaxnn and jax.nn mean the same fused kernel, whatever the timings say."""
    import jax

    ca = jax.jit(fn).lower(*args).compile().cost_analysis()
    ca = (ca[0] if ca else {}) if isinstance(ca, list) else (ca or {})
    return ca.get("bytes accessed"), ca.get("flops")


def _jax_call(fn, args: tuple, alloc: str) -> Callable[[], Any]:
    """A no-argument call of jitted ``fn(*args)``, compiled here; ``alloc="fixed"`` writes the
    result into a donated scratch buffer (checked in the compiled HLO's aliasing)."""
    import jax
    import jax.numpy as jnp

    if alloc == "fresh":
        compiled = jax.jit(fn).lower(*args).compile()
        return lambda: compiled(*args)
    out_struct = jax.eval_shape(fn, *args)
    kernel = lambda scratch, *a: fn(*a)
    compiled = jax.jit(kernel, donate_argnums=0, keep_unused=True).lower(
        out_struct, *args).compile()
    if "input_output_alias" not in compiled.as_text():
        raise RuntimeError("the donated scratch buffer was not aliased to the output")
    state = [jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_struct)]

    def call():
        state[0] = compiled(state[0], *args)
        return state[0]

    return call


def _torch_call(torch, tfn, x_np, dtype: str, pass_: str) -> Callable[[], Any]:
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    tx = torch.from_numpy(x_np).to(tdtype)
    if pass_ == "fwd":
        def call():
            with torch.no_grad():
                return tfn(torch, tx)
        return call
    txg = tx.clone().requires_grad_(True)
    ones = torch.ones((), dtype=tdtype).expand(tx.shape)  # d sum / d y, without memory traffic
    return lambda: torch.autograd.grad(tfn(torch, txg), txg, grad_outputs=ones)[0]


def _torch():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    return torch


# --------------------------------------------------------------------------- measurements
def _row(case, activation, pass_, impl, alloc, malloc, dtype, elements, seconds, **extra):
    return {"case": case, "activation": activation, "pass": pass_, "impl": impl, "alloc": alloc,
            "malloc": malloc, "dtype": dtype, "elements": elements,
            "elements_per_s": elements / seconds, **extra}


def elementwise(s: Settings, names: list[str] | None, *, malloc: str,
                allocs=("fresh", "fixed"), dtypes=None, with_torch=True) -> list[dict]:
    """Rows of ``case="elementwise"``: each activation x pass x alloc x dtype, with the jax.nn
    equivalent and the bandwidth probe timed interleaved in the same group."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rows: list[dict] = []
    torch = _torch() if with_torch else None
    for dtype in dtypes or s.dtypes:
        x = jax.random.normal(jax.random.key(0), (s.size,), jnp.float32).astype(dtype)
        todo = [c for c in cases(x.dtype) if names is None or c.name in names]
        for alloc in allocs:
            bw: dict[str, list[float]] = {p: [] for p in _PASSES}
            for c in todo:
                for pass_ in _PASSES:
                    wrap = (lambda f: f) if pass_ == "fwd" else _fwd_bwd
                    fns = {"jaxnn": wrap(c.jaxnn), "bandwidth": _copy}
                    if c.jax_nn is not None:
                        fns["jax.nn"] = wrap(c.jax_nn)
                    calls = {k: _jax_call(f, (x,), alloc) for k, f in fns.items()}
                    raw = C.measure_rounds(calls, repeats=s.repeats, min_time=s.min_time,
                                           max_repeats=60)
                    t = {k: statistics.median(v) for k, v in raw.items()}
                    bw[pass_].append(t["bandwidth"])
                    same = None
                    if "jax.nn" in fns and alloc == allocs[0]:
                        same = xla_cost(fns["jaxnn"], x) == xla_cost(fns["jax.nn"], x)
                    for impl in ("jaxnn", "jax.nn"):
                        if impl in t:
                            extra = {"vs_bandwidth": C.paired_ratio(raw, "bandwidth", impl)}
                            if impl == "jaxnn" and "jax.nn" in t:
                                extra["vs_jax_nn"] = C.paired_ratio(raw, "jax.nn", "jaxnn")
                                if same is not None:
                                    extra["same_xla_cost"] = same
                            rows.append(_row("elementwise", c.name, pass_, impl, alloc, malloc,
                                             dtype, s.size, t[impl], **extra))
                    C.log(f"  {dtype} {alloc:5} {pass_:7} {c.name:10} " + "  ".join(
                        f"{k} {s.size / v / 1e9:.2f}" for k, v in t.items()) + " G elem/s")
            for pass_ in _PASSES:  # the probe ran in every group: report its median
                if bw[pass_]:
                    rows.append(_row("elementwise", "copy", pass_, "bandwidth", alloc, malloc,
                                     dtype, s.size, float(np.median(bw[pass_]))))
        if torch is not None:  # after the jax groups: torch's OpenMP threads spin after work
            x_np = np.array(x.astype(jnp.float32))  # a writable copy for torch
            for c in todo:
                if c.torch is None:
                    continue
                for pass_ in _PASSES:
                    call = _torch_call(torch, c.torch, x_np, dtype, pass_)
                    try:
                        call()
                    except RuntimeError as e:  # e.g. no derivative for aten::heaviside
                        C.log(f"  torch {c.name} {pass_}: skipped ({str(e).splitlines()[0]})")
                        continue
                    t = C.measure({"torch": call}, repeats=s.repeats, min_time=s.min_time,
                                  max_repeats=60)
                    rows.append(_row("elementwise", c.name, pass_, "torch", "fresh", malloc,
                                     dtype, s.size, t["torch"]))
                    C.log(f"  {dtype} fresh {pass_:7} {c.name:10} torch "
                          f"{s.size / t['torch'] / 1e9:.2f} G elem/s")
    return rows


def dense(s: Settings, names: list[str] | None, *, malloc: str) -> list[dict]:
    """Rows of ``case="dense"``: ``act(x @ W + b)``, float32, output elements/s."""
    import jax
    import jax.numpy as jnp

    from jaxnn import layers

    batch, d_in, d_out = s.dense
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(k1, (batch, d_in), jnp.float32)
    w = jax.random.normal(k2, (d_in, d_out), jnp.float32) / d_in**0.5
    b = jnp.zeros((d_out,), jnp.float32)
    # The incoming gradient of the backward pass: random, as in training. (With the gradient of
    # a plain sum it would be all ones and XLA would turn dW = x^T 1 into a cheap reduction.)
    g = jax.random.normal(k3, (batch, d_out), jnp.float32)
    rows: list[dict] = []
    elements = batch * d_out
    for c in cases(jnp.float32):
        if c.name == "maxout" or (names is not None and c.name not in names):
            continue
        for pass_ in _PASSES:
            for alloc in ("fresh", "fixed"):
                fns = {"jaxnn": c.jaxnn, "linear (no activation)": lambda z: z}
                if c.jax_nn is not None:
                    fns["jax.nn"] = c.jax_nn
                args = (x, w, b) if pass_ == "fwd" else (x, w, b, g)
                calls = {k: _jax_call(_dense_fn(f, pass_), args, alloc) for k, f in fns.items()}
                raw = C.measure_rounds(calls, repeats=s.repeats, min_time=s.min_time,
                                       max_repeats=40)
                t = {k: statistics.median(v) for k, v in raw.items()}
                for impl in ("jaxnn", "jax.nn"):
                    if impl in t:
                        extra = {"vs_linear": C.paired_ratio(raw, "linear (no activation)", impl)}
                        if impl == "jaxnn" and "jax.nn" in t:
                            extra["vs_jax_nn"] = C.paired_ratio(raw, "jax.nn", "jaxnn")
                        rows.append(_row("dense", c.name, pass_, impl, alloc, malloc,
                                         "float32", elements, t[impl], **extra))
                C.log(f"  dense {alloc:5} {pass_:7} {c.name:10} " + "  ".join(
                    f"{k} {elements / v / 1e6:.0f}" for k, v in t.items()) + " M elem/s")
    if names is not None and "maxout" not in names:
        return rows
    # Maxout (two pieces) against ReLU at equal output width, as layers.
    relu_layer = layers.Dense(d_out)
    maxout_layer = layers.Maxout(d_out, 2)
    _, p_relu, _ = relu_layer.init(jax.random.key(2), (d_in,))
    _, p_max, _ = maxout_layer.init(jax.random.key(3), (d_in,))
    from jaxnn import activations as A

    variants = {
        "relu (Dense)": (lambda p, x: A.relu(relu_layer.apply(p, {}, x)[0]), p_relu),
        "maxout (layers.Maxout)": (lambda p, x: maxout_layer.apply(p, {}, x)[0], p_max),
        "maxout (activations.maxout)": (
            lambda p, x: A.maxout(x @ p["w"] + p["b"], 2), p_max),
        "maxout (reshape+max)": (
            lambda p, x: jnp.max((x @ p["w"] + p["b"]).reshape(x.shape[0], -1, 2), axis=-1),
            p_max),
    }
    for pass_ in _PASSES:
        for alloc in ("fresh", "fixed"):
            calls = {}
            for name, (f, p) in variants.items():
                if pass_ == "fwd":
                    calls[name] = _jax_call(f, (p, x), alloc)
                else:
                    fn = lambda p, x, g, f=f: jax.vjp(f, p, x)[1](g)
                    calls[name] = _jax_call(fn, (p, x, g), alloc)
            raw = C.measure_rounds(calls, repeats=s.repeats, min_time=s.min_time, max_repeats=40)
            t = {k: statistics.median(v) for k, v in raw.items()}
            for name, sec in t.items():
                rows.append(_row("maxout_layer", name, pass_, "jaxnn", alloc, malloc, "float32",
                                 elements, sec, vs_relu=C.paired_ratio(raw, "relu (Dense)", name)))
            C.log(f"  layer {alloc:5} {pass_:7} " + "  ".join(
                f"{k} {elements / v / 1e6:.0f}" for k, v in t.items()) + " M elem/s")
    return rows


def _dense_fn(act, pass_):
    """``act(x @ w + b)``, or its backward pass: ``(dx, dw, db)`` for the incoming gradient
    ``g``."""
    import jax

    f = lambda x, w, b: act(x @ w + b)
    if pass_ == "fwd":
        return f
    return lambda x, w, b, g: jax.vjp(f, x, w, b)[1](g)


def maxout_variants(s: Settings, *, malloc: str) -> list[dict]:
    """Rows of ``case="maxout"``: ways to write maxout (two pieces, consecutive groups) on the
    large array. ``elements`` counts the input elements."""
    import jax
    import jax.numpy as jnp

    from jaxnn import activations as A

    x = jax.random.normal(jax.random.key(0), (s.size,), jnp.float32)
    n = s.size
    variants = {
        "jaxnn": lambda z: A.maxout(z, 2),
        "reshape+max": lambda z: jnp.max(z.reshape(-1, 2), axis=-1),
        "strided maximum": lambda z: jnp.maximum(z[0::2], z[1::2]),
        "halves maximum": lambda z: jnp.maximum(z[: n // 2], z[n // 2:]),
        "relu (half width)": lambda z: jax.nn.relu(z[: n // 2]),
    }
    rows = []
    for pass_ in _PASSES:
        for alloc in ("fresh", "fixed"):
            wrap = (lambda f: f) if pass_ == "fwd" else _fwd_bwd
            calls = {k: _jax_call(wrap(f), (x,), alloc) for k, f in variants.items()}
            raw = C.measure_rounds(calls, repeats=s.repeats, min_time=s.min_time, max_repeats=40)
            t = {k: statistics.median(v) for k, v in raw.items()}
            for name, sec in t.items():
                rows.append(_row("maxout", "maxout", pass_, name, alloc, malloc, "float32", n,
                                 sec, vs_jaxnn=C.paired_ratio(raw, "jaxnn", name)))
            C.log(f"  maxout {alloc:5} {pass_:7} " + "  ".join(
                f"{k} {n / v / 1e9:.2f}" for k, v in t.items()) + " G elem/s")
    return rows


# --------------------------------------------------------------------------- malloc children
def _apply_mallopt() -> bool:
    """The ``MALLOC_*`` settings through ``mallopt(3)`` in this process (glibc only)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    return all([mallopt(m_mmap_threshold, 1 << 30), mallopt(m_trim_threshold, 1 << 30),
                mallopt(m_arena_max, 1)])


def _child_env(mode: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in C.MALLOC_ENV and k != C.MALLOC_MARKER}
    if mode == "env":
        env.update(C.MALLOC_ENV)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_child(mode: str, argv: list[str]) -> list[dict]:
    """Re-run the float32 ``fresh`` measurement in a new process under malloc setting ``mode``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        cmd = [sys.executable, "-m", "benchmarks.activations", *argv,
               "--malloc-child", mode, "--json", out]
        C.log(f"malloc {mode}: {' '.join(cmd[2:])}")
        proc = subprocess.run(cmd, env=_child_env(mode), stdout=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"the malloc={mode} measurement failed (exit {proc.returncode})")
        with open(out) as f:
            return json.load(f)["rows"]


# --------------------------------------------------------------------------- reports
def _get(rows, **want):
    for r in rows:
        if all(r.get(k) == v for k, v in want.items()):
            return r
    return None


def _eps(rows, **want):
    r = _get(rows, **want)
    return None if r is None else r["elements_per_s"]


def targets(rows: list[dict]) -> list[dict]:
    """The issue's activation targets, checked on the rows of one run."""
    out = []
    for r in rows:
        if r["case"] != "elementwise" or r["impl"] != "jaxnn" or r["malloc"] != rows[0]["malloc"]:
            continue
        if "vs_jax_nn" in r:
            out.append({"target": "jaxnn >= 0.95x jax.nn", "activation": r["activation"],
                        "pass": r["pass"], "alloc": r["alloc"], "dtype": r["dtype"],
                        "value": r["vs_jax_nn"], "met": r["vs_jax_nn"] >= 0.95})
        if (r["activation"] in CHEAP and r["pass"] == "fwd" and r["alloc"] == "fixed"):
            out.append({"target": "cheap fwd fixed >= 0.8x bandwidth",
                        "activation": r["activation"], "pass": "fwd", "alloc": "fixed",
                        "dtype": r["dtype"], "value": r["vs_bandwidth"],
                        "met": r["vs_bandwidth"] >= 0.8})
    return out


def _val(rows, key="elements_per_s", **want):
    r = _get(rows, **want)
    return None if r is None else r.get(key)


def markdown(machine: dict, rows: list[dict], s: Settings) -> str:
    main = machine["malloc"]
    others = [m for m in ("default", "env", "mallopt") if m != main]
    lines = [f"# Activation throughput ({s.size:,} elements)", "",
             f"Machine: {C.machine_line(machine)}", "",
             "G elements/s, median of interleaved repeats. *fresh*: a new output array per call; "
             "*fixed*: output written into a donated scratch buffer. *vs jax.nn*: time of "
             "jax.nn / time of jaxnn (>1 = jaxnn faster), median over rounds of the calls timed "
             "side by side; *of bw*: the same against the bandwidth probe (jitted `x*2`). "
             f"This process: malloc {main}. *malloc env*/*mallopt*: fresh outputs with the glibc "
             "malloc settings given as environment variables / by mallopt(3) "
             "(benchmarks/README.md). "
             "*same XLA cost*: the compiled jaxnn and jax.nn programs read/write the same bytes "
             "and do the same flops (XLA cost analysis), i.e. the same fused kernel.", ""]
    ew = [r for r in rows if r["case"] == "elementwise"]
    for dtype in s.dtypes:
        lines += [f"## Elementwise, {dtype}", ""]
        table = []
        for act in dict.fromkeys(r["activation"] for r in ew if r["dtype"] == dtype):
            impl = "bandwidth" if act == "copy" else "jaxnn"
            for p in _PASSES:
                q = {"activation": act, "dtype": dtype, "pass": p}
                row = [act, p,
                       _g(_val(ew, impl=impl, alloc="fresh", malloc=main, **q)),
                       _g(_val(ew, impl="jax.nn", alloc="fresh", malloc=main, **q)),
                       _val(ew, "vs_jax_nn", impl=impl, alloc="fresh", malloc=main, **q),
                       _g(_val(ew, impl=impl, alloc="fixed", malloc=main, **q)),
                       _g(_val(ew, impl="jax.nn", alloc="fixed", malloc=main, **q)),
                       _val(ew, "vs_jax_nn", impl=impl, alloc="fixed", malloc=main, **q),
                       _val(ew, "vs_bandwidth", impl=impl, alloc="fixed", malloc=main, **q),
                       {True: "yes", False: "NO"}.get(
                           _val(ew, "same_xla_cost", impl=impl, alloc="fresh", malloc=main, **q))]
                if dtype == "float32":
                    row += [_g(_val(ew, impl=impl, alloc="fresh", malloc=m, **q)) for m in others]
                row += [_g(_val(ew, impl="torch", alloc="fresh", malloc=main, **q))]
                table.append(row)
        heads = ["activation", "pass", "jaxnn fresh", "jax.nn fresh", "vs jax.nn",
                 "jaxnn fixed", "jax.nn fixed", "vs jax.nn", "of bw", "same XLA cost"]
        if dtype == "float32":
            heads += [f"jaxnn fresh, malloc {m}" for m in others]
        heads += ["torch fresh"]
        lines += [C.markdown_table(_fill(table), heads), ""]
    dn = [r for r in rows if r["case"] == "dense"]
    if dn:
        b, i, o = s.dense
        lines += [f"## Dense layer + activation, float32 (x [{b}, {i}] @ W [{i}, {o}] + b)", "",
                  "M output elements/s; fwd_bwd = forward and backward (gradients w.r.t. x, W, b "
                  "for a random incoming gradient). *vs linear*: time of the same layer without "
                  "activation / time of this one (1.0 = the activation is free).", ""]
        table = []
        for act in dict.fromkeys(r["activation"] for r in dn):
            for p in _PASSES:
                q = {"activation": act, "pass": p}
                table.append([act, p, _m(_val(dn, impl="jaxnn", alloc="fresh", **q)),
                              _m(_val(dn, impl="jax.nn", alloc="fresh", **q)),
                              _val(dn, "vs_jax_nn", impl="jaxnn", alloc="fresh", **q),
                              _m(_val(dn, impl="jaxnn", alloc="fixed", **q)),
                              _val(dn, "vs_jax_nn", impl="jaxnn", alloc="fixed", **q),
                              _val(dn, "vs_linear", impl="jaxnn", alloc="fixed", **q)])
        lines += [C.markdown_table(_fill(table), [
            "activation", "pass", "jaxnn fresh", "jax.nn fresh", "vs jax.nn", "jaxnn fixed",
            "vs jax.nn", "vs linear"]), ""]
    ml = [r for r in rows if r["case"] == "maxout_layer"]
    if ml:
        lines += ["## Maxout (2 pieces) vs ReLU at equal output width, as layers", "",
                  "M output elements/s; *vs relu*: time of Dense+ReLU / time of the row.", ""]
        table = []
        for name in dict.fromkeys(r["activation"] for r in ml):
            for p in _PASSES:
                q = {"activation": name, "pass": p}
                table.append([name, p, _m(_val(ml, alloc="fresh", **q)),
                              _val(ml, "vs_relu", alloc="fresh", **q),
                              _m(_val(ml, alloc="fixed", **q)),
                              _val(ml, "vs_relu", alloc="fixed", **q)])
        lines += [C.markdown_table(_fill(table), ["layer", "pass", "fresh", "vs relu", "fixed",
                                                  "vs relu"]), ""]
    mv = [r for r in rows if r["case"] == "maxout"]
    if mv:
        lines += [f"## Ways to write maxout (2 pieces) on {s.size:,} elements", "",
                  "G input elements/s; *vs jaxnn*: time of jaxnn.activations.maxout / time of "
                  "the row.", ""]
        table = []
        for name in dict.fromkeys(r["impl"] for r in mv):
            for p in _PASSES:
                q = {"impl": name, "pass": p}
                table.append([name, p, _g(_val(mv, alloc="fresh", **q)),
                              _val(mv, "vs_jaxnn", alloc="fresh", **q),
                              _g(_val(mv, alloc="fixed", **q)),
                              _val(mv, "vs_jaxnn", alloc="fixed", **q)])
        lines += [C.markdown_table(_fill(table), ["variant", "pass", "fresh", "vs jaxnn",
                                                  "fixed", "vs jaxnn"]), ""]
    tg = targets(rows)
    if tg:
        missed = [t for t in tg if not t["met"]]
        lines += ["## Targets", "",
                  f"{len(tg) - len(missed)} of {len(tg)} met."
                  + (" Missed:" if missed else ""), ""]
        if missed:
            lines += [C.markdown_table(
                _fill([[t["target"], t["activation"], t["pass"], t["alloc"], t["dtype"],
                        t["value"]] for t in missed]),
                ["target", "activation", "pass", "alloc", "dtype", "value"]), ""]
    return "\n".join(lines)


def _g(v):
    return None if v is None else v / 1e9


def _m(v):
    return None if v is None else v / 1e6


def _fill(table):
    """Markdown cells: ratios and G/M values as plain 3-digit numbers."""
    return [[(f"{v:.3g}" if isinstance(v, float) else ("-" if v is None else v)) for v in r]
            for r in table]


def chart(path: Path, machine: dict, rows: list[dict], s: Settings) -> None:
    main = machine["malloc"]
    ew = [r for r in rows if r["case"] == "elementwise" and r["dtype"] == "float32"]
    acts = [a for a in dict.fromkeys(r["activation"] for r in ew) if a != "copy"]
    panels = []
    for p in _PASSES:
        def col(impl, alloc, malloc=main, p=p):
            return [_g(_eps(ew, activation=a, impl=impl, alloc=alloc, malloc=malloc,
                            **{"pass": p})) for a in acts]
        series = {"jaxnn fresh": col("jaxnn", "fresh"), "jaxnn fixed": col("jaxnn", "fixed"),
                  "jax.nn fixed": col("jax.nn", "fixed")}
        for other in (m for m in ("default", "env", "mallopt") if m != main):
            if any(v is not None for v in col("jaxnn", "fresh", other)):
                series[f"jaxnn fresh, malloc {other}"] = col("jaxnn", "fresh", other)
        if any(v is not None for v in col("torch", "fresh")):
            series["torch fresh"] = col("torch", "fresh")
        bw = _eps(ew, activation="copy", impl="bandwidth", alloc="fixed", malloc=main,
                  **{"pass": p})
        panels.append({"title": f"float32 {p}", "groups": acts, "series": series,
                       "reference": ("bandwidth (x*2, fixed)", _g(bw))})
    C.bar_chart(path, panels, xlabel="G elements/s",
                suptitle=f"jaxnn activations, {s.size:,} elements; {machine['cpu']}, "
                         f"{machine['cores']} cores, jax {machine['jax']}")


# --------------------------------------------------------------------------- entry points
def run(*, quick: bool = False, tiny: bool = False, json_path: str | os.PathLike,
        activations: list[str] | None = None, malloc_children: bool = True) -> dict:
    """Run the benchmark; write JSON, markdown and PNG; return ``{"machine", "rows",
    "markdown", "paths"}`` (``jaxnn bench`` calls this)."""
    s = settings(quick, tiny)
    if tiny and activations is None:
        activations = list(TINY_ACTIVATIONS)
    malloc = C.malloc_setting()
    machine = C.machine_info()
    C.log(f"activations: {s.size:,} elements, {s.repeats}+ repeats, dtypes {s.dtypes}")
    rows = elementwise(s, activations, malloc=malloc)
    rows += dense(s, activations, malloc=malloc)
    if activations is None or "maxout" in activations:
        rows += maxout_variants(s, malloc=malloc)
    if malloc_children and s.children:
        argv = (["--quick"] if quick else []) + (["--tiny"] if tiny else [])
        if activations is not None:
            argv += ["--activations", ",".join(activations)]
        modes = [m for m in ("default", "env", "mallopt") if m != malloc][: 1 if tiny else 2]
        for mode in modes:
            rows += run_child(mode, argv)
    md = markdown(machine, rows, s)
    jpath, mdpath = C.write_results(json_path, machine, rows, md,
                                    settings=s._asdict(), targets=targets(rows))
    png = jpath.with_suffix(".png")
    chart(png, machine, rows, s)
    return {"machine": machine, "rows": rows, "markdown": md,
            "paths": {"json": str(jpath), "markdown": str(mdpath), "png": str(png)}}


def main(argv: list[str] | None = None) -> int:
    p = C.parser("Activation throughput: jaxnn vs jax.nn, PyTorch and the bandwidth limit.",
                 "activations.json")
    p.add_argument("--activations", default=None,
                   help="comma-separated subset of activations (default: all)")
    p.add_argument("--malloc-child", default=None, choices=("default", "env", "mallopt"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = args.activations.split(",") if args.activations else None
    tiny = C.tiny_requested(args)
    if args.malloc_child:  # float32 fresh only, under this malloc setting
        if args.malloc_child == "mallopt" and not _apply_mallopt():
            C.log("mallopt(3) is not available (not glibc): measured with the default malloc")
        s = settings(args.quick, tiny)
        if tiny and names is None:
            names = list(TINY_ACTIVATIONS)
        rows = elementwise(s, names, malloc=args.malloc_child, allocs=("fresh",),
                           dtypes=("float32",), with_torch=False)
        Path(args.json).write_text(json.dumps({"rows": rows}))
        return 0
    out = run(quick=args.quick, tiny=tiny, json_path=args.json, activations=names)
    print(out["markdown"])
    C.log(f"wrote {out['paths']['json']}, {out['paths']['markdown']}, {out['paths']['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
