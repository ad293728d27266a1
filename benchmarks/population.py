"""Population speed-up: N digits-sized models as one vmapped population vs N sequential runs.

Model 64-64-64-10 (ReLU), batch 32, SGD momentum, L2 1e-4 (so every mode computes the same
penalty), on ``jaxnn.data.load("digits")`` (1,257 training examples: 40 steps per epoch), for
N = 1, 8, 32 members. ``mode``:

* ``"vmap_scan"``: ``jaxnn.population.train_population`` -- all members in one jitted, vmapped
  epoch (``lax.scan`` over the steps), validation of every member after each epoch;
* ``"loop_scan"``: N sequential runs of ``jaxnn.train.make_epoch`` (one ``lax.scan`` per epoch,
  compiled once and reused by every member), validation after each epoch;
* ``"loop_step"``: N sequential runs of a Python loop over ``jaxnn.train.make_train_step``
  (jitted, donated), the epoch's batches cut once per epoch by ``jaxnn.data.epoch_batches``,
  validation after each epoch.

``examples_per_s`` counts training examples of all members per second of steady-state training.
For the loops, the compiled functions are warmed up and the members initialized before the clock
starts. ``train_population`` initializes (and, the first time, compiles) inside every call, so its
steady rate comes from two warm calls of different length: ``(E2 - E1) / (t(E2) - t(E1))`` epochs
per second (medians of repeats), which cancels what every call pays once; ``first_call_s`` is the
wall time of the first, cold call of E1 epochs (compilation included). Rows:
``{"n", "mode", "examples_per_s"}`` plus ``epochs``, ``seconds`` and the ratios ``vs_loop_step``
and ``vs_loop_scan``.

``--model convnet`` (issue 18): N = 8 digits convnets (8x8x1 images, ``conv:32,conv:32,pool,
conv:64,pool,fc:128``, the CLI's default convnet, batch 64) as one population (``vmap_scan``: the
members vmapped inside the scanned epoch, so their convolutions are im2col on a CPU) against
``loop_fit``: N sequential ``jaxnn.train.fit`` runs, exactly as a user would write them (fit
picks its own loop, ``train._fit_loop``: the epoch in one scan). Both rates come
from two calls of E1 and E2 epochs, ``(E2 - E1) / (t(E2) - t(E1))`` (each ``loop_fit`` call is
N fit runs, each of which compiles: the difference cancels compilation). Rows: ``{"n", "mode",
"examples_per_s", "epochs", "seconds", "vs_loop_fit"}``; ``first_call_s`` is the cold first
call. PyTorch has no vmapped population to compare with: its row in the table says so.

Usage::

    python benchmarks/population.py [--model mlp|convnet] [--quick] [--json PATH]

Results go to ``benchmarks/results/population.json`` (MLP) or ``population_convnet.json``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

if __package__ in (None, ""):  # run as `python benchmarks/population.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common as C  # noqa: E402

MODES = ("vmap_scan", "loop_scan", "loop_step")
CONV_MODES = ("vmap_scan", "loop_fit")
CONV_ARCH = "conv:32,conv:32,pool,conv:64,pool,fc:128"


class Settings(NamedTuple):
    ns: tuple[int, ...]
    hidden: tuple[int, ...]
    batch: int
    loop_epochs: int  # epochs per member in the sequential modes
    vmap_epochs: tuple[int, int]  # E1, E2 of the two train_population calls
    repeats: int
    train_examples: int | None = None  # use only the first ones (tiny)
    lr: float = 0.05
    l2: float = 1e-4
    model: str = "mlp"
    arch: str = ""  # convnet


def settings(quick: bool, tiny: bool, model: str = "mlp") -> Settings:
    if model == "convnet":
        if tiny:
            return Settings((2,), (), 32, 1, (1, 2), 1, train_examples=128, model="convnet",
                            arch="conv:4,pool,fc:8")
        if quick:
            return Settings((8,), (), 64, 0, (1, 3), 1, model="convnet", arch=CONV_ARCH)
        return Settings((8,), (), 64, 0, (2, 8), 2, model="convnet", arch=CONV_ARCH)
    if tiny:
        return Settings((2,), (16,), 32, 1, (1, 1), 1, train_examples=128)
    if quick:
        return Settings((1, 8, 32), (64, 64), 32, 3, (2, 10), 1)
    return Settings((1, 8, 32), (64, 64), 32, 10, (3, 23), 3)


def _setup(s: Settings):
    import jax.numpy as jnp

    from jaxnn import data, layers, optim

    ds = data.load("digits")
    if s.train_examples:
        ds = ds._replace(x_train=ds.x_train[: s.train_examples],
                         y_train=ds.y_train[: s.train_examples])
    ds = ds._replace(**{k: jnp.asarray(getattr(ds, k)) for k in
                        ("x_train", "y_train", "x_val", "y_val")})
    if s.model == "convnet":
        from jaxnn import models

        img = (8, 8, 1)
        ds = ds._replace(**{k: getattr(ds, k).reshape(-1, *img) for k in ("x_train", "x_val")})
        model = models.convnet(img, int(ds.num_classes), s.arch, activation="relu",
                               init="he_normal")
        return ds, model, optim.momentum(s.lr), [*img, s.arch]
    sizes = [int(ds.x_train.shape[1]), *s.hidden, int(ds.num_classes)]
    model = layers.mlp(sizes, activation="relu", init="he_normal")
    return ds, model, optim.momentum(s.lr), sizes


# --------------------------------------------------------------------------- the three modes
def vmap_scan_call(s: Settings, ds, model, opt, n: int, epochs: int) -> float:
    """Seconds of one ``train_population`` call (compile included)."""
    import jax
    import numpy as np

    from jaxnn import population

    hp = {"learning_rate": np.full(n, s.lr, np.float32), "l2": np.full(n, s.l2, np.float32)}
    t0 = time.perf_counter()
    res = population.train_population(
        data=ds, hparams=hp, epochs=epochs, batch_size=s.batch, key=jax.random.key(0),
        model=model, loss="softmax_cross_entropy", optimizer=opt)
    C.block(res.params)
    dt = time.perf_counter() - t0
    if res.history["train_loss"].shape[0] != epochs:
        raise RuntimeError(f"train_population stopped after {res.history['train_loss'].shape[0]}"
                           f" of {epochs} epochs (status {set(res.status)}): timing is invalid")
    return dt


class Loop(NamedTuple):
    run: object  # run(n) -> seconds for n members x loop_epochs
    warm: object  # compile everything once


def make_loops(s: Settings, ds, model, opt):
    """The two sequential modes, built once (compiled functions shared by all members)."""
    import jax
    import jax.numpy as jnp

    from jaxnn import data, train

    x, y, xv, yv = ds.x_train, ds.y_train, ds.x_val, ds.y_val
    loss = "softmax_cross_entropy"
    epoch_fn = train.make_epoch(model.apply, loss, opt, batch_size=s.batch, l2=s.l2)
    step_fn = train.make_train_step(model.apply, loss, opt, l2=s.l2)
    evaluate = train.make_evaluate(model.apply, loss)
    cut = jax.jit(lambda k, e: data.epoch_batches(x, y, s.batch, key=k, epoch=e))

    def member_state(i):
        return train.init_train_state(model, opt, key=jax.random.key(i))

    def scan_member(st, epochs):
        for e in range(1, epochs + 1):
            st, m = epoch_fn(st, x, y, jnp.int32(e))
            ev = evaluate(st.params, st.model_state, xv, yv)
            float(ev.loss), float(m.loss[-1])  # the host reads the epoch's numbers, as fit does
        return st

    def step_member(st, epochs):
        for e in range(1, epochs + 1):
            b = cut(jax.random.fold_in(st.key, 0), jnp.int32(e))
            m = None
            for xb, yb, mb in zip(b.x, b.y, b.mask, strict=True):
                st, m = step_fn(st, data.Batch(xb, yb, mb))
            ev = evaluate(st.params, st.model_state, xv, yv)
            float(ev.loss), float(m.loss)
        return st

    def timed(member_fn):
        def run(n):
            # Initialized before the clock starts: train_population's steady rate excludes its
            # initialization too.
            states = C.block([member_state(i) for i in range(n)])
            t0 = time.perf_counter()
            for st in states:
                C.block(member_fn(st, s.loop_epochs).params)
            return time.perf_counter() - t0
        return run

    def warm():
        C.block(scan_member(member_state(0), 1).params)
        C.block(step_member(member_state(0), 1).params)

    return {"loop_scan": timed(scan_member), "loop_step": timed(step_member)}, warm


def loop_fit_call(s: Settings, ds, model, opt, n: int, epochs: int) -> float:
    """Seconds of N sequential ``train.fit`` runs of ``epochs`` epochs (compiles included)."""
    import jax

    from jaxnn import train

    t0 = time.perf_counter()
    for i in range(n):
        h = train.fit(model, ds, optimizer=opt, epochs=epochs, key=jax.random.key(i),
                      batch_size=s.batch, l2=s.l2)
        C.block(h.state.params)
        if len(h.records) != epochs:
            raise RuntimeError(f"fit stopped after {len(h.records)} of {epochs} epochs "
                               f"({h.stopped_reason}): timing is invalid")
    return time.perf_counter() - t0


def _steady(call, s: Settings) -> dict:
    """Steady epochs/s of ``call(epochs)`` from calls of E1 and E2 epochs (see the docstring)."""
    e1, e2 = s.vmap_epochs
    first = call(e1)
    t1 = statistics.median(call(e1) for _ in range(s.repeats))
    t2 = statistics.median(call(e2) for _ in range(s.repeats))
    out = {"first_call_s": first, "call_s": t2, "call_epochs": e2}
    if e2 > e1 and t2 - t1 > 0.1 * t2:
        return {"epochs": e2 - e1, "seconds": t2 - t1, "steady": True, **out}
    return {"epochs": e2, "seconds": t2, "steady": False, **out}


def measure_convnet(s: Settings):
    from jaxnn import train

    ds, model, opt, sizes = _setup(s)
    n_train = int(ds.x_train.shape[0])
    loop = train._fit_loop(model, ds.x_train.shape, batch_size=s.batch)
    C.log(f"  fit's loop for this convnet here: {loop}")
    rows = []
    for n in s.ns:
        res = {"vmap_scan": _steady(lambda e, n=n: vmap_scan_call(s, ds, model, opt, n, e), s),
               "loop_fit": _steady(lambda e, n=n: loop_fit_call(s, ds, model, opt, n, e), s)}
        for mode in CONV_MODES:
            r = {"n": n, "mode": mode, **res[mode]}
            r["examples_per_s"] = n * n_train * r["epochs"] / r["seconds"]
            rows.append(r)
        for r in rows[-2:]:
            r["vs_loop_fit"] = r["examples_per_s"] / rows[-1]["examples_per_s"]
            # whole warm calls of E2 epochs, everything a call pays included (fit compiles
            # in every run; train_population reuses its compiled epoch)
            r["vs_loop_fit_whole_call"] = rows[-1]["call_s"] / r["call_s"]
            C.log(f"  N={n:3} {r['mode']:9} {r['examples_per_s']:12.0f} examples/s "
                  f"(x{r['vs_loop_fit']:.2f} loop_fit)")
        rows[-1]["fit_loop"] = loop
    return rows, sizes, n_train


def convnet_targets(rows: list[dict]) -> list[dict]:
    n = max(r["n"] for r in rows)
    v = next(r["vs_loop_fit"] for r in rows if r["n"] == n and r["mode"] == "vmap_scan")
    return [{"target": f"N={n} convnets: population >= 1.5x N sequential fit runs", "value": v,
             "met": v >= 1.5}]


def convnet_markdown(machine, rows, s: Settings, sizes, n_train) -> str:
    table = [[r["n"], r["mode"] + (f" ({r['fit_loop']})" if r.get("fit_loop") else ""),
              float(f"{r['examples_per_s']:.3g}"), float(f"{r['vs_loop_fit']:.3g}"),
              r["epochs"], float(f"{r['seconds']:.3g}"),
              float(f"{r['call_s']:.3g}"), float(f"{r['vs_loop_fit_whole_call']:.3g}"),
              float(f"{r['first_call_s']:.3g}")] for r in rows]
    table.append([max(s.ns), "torch", "not measured (no vmapped population in PyTorch eager)",
                  "-", "-", "-", "-", "-", "-"])
    tg = [[t["target"], float(f"{t['value']:.3g}"), "yes" if t["met"] else "NO"]
          for t in convnet_targets(rows)]
    h, w, c, arch = sizes
    return "\n".join([
        f"# Population speed-up: convnet {h}x{w}x{c} {arch}, batch {s.batch}, digits "
        f"({n_train} training examples)", "", f"Machine: {C.machine_line(machine)}", "",
        "Training examples of all N members per second, steady state: from calls of "
        f"{s.vmap_epochs[0]} and {s.vmap_epochs[1]} epochs, (E2 - E1) / (t(E2) - t(E1)), medians "
        f"of {s.repeats}; validation after every epoch in both modes. *vmap_scan*: "
        "`train_population` (members vmapped in one scanned epoch; im2col convolutions on a "
        "CPU); *loop_fit*: N sequential `train.fit` runs (in brackets: the loop fit picks; each "
        "run compiles, which the difference cancels). *x loop_fit*: speed-up over loop_fit. "
        f"*E2 call s*: a whole warm call of {s.vmap_epochs[1]} epochs, all it pays included "
        "(every fit run compiles its step again; train_population reuses its compiled epoch), "
        "and *x whole call* the speed-up by that measure. *first call s*: the cold first call.",
        "",
        C.markdown_table(table, ["N", "mode", "examples/s", "x loop_fit", "epochs timed",
                                 "seconds", "E2 call s", "x whole call", "first call s"]), "",
        "## Targets", "", C.markdown_table(tg, ["target", "value", "met"])]) + "\n"


# --------------------------------------------------------------------------- run
def measure_all(s: Settings) -> list[dict]:
    ds, model, opt, sizes = _setup(s)
    n_train = int(ds.x_train.shape[0])
    loops, warm = make_loops(s, ds, model, opt)
    t0 = time.perf_counter()
    warm()
    C.log(f"  loops compiled in {time.perf_counter() - t0:.2f} s")
    rows = []
    for n in s.ns:
        res = {}
        e1, e2 = s.vmap_epochs
        first = vmap_scan_call(s, ds, model, opt, n, e1)  # cold: compiles for this N
        t1 = statistics.median(vmap_scan_call(s, ds, model, opt, n, e1) for _ in range(s.repeats))
        t2 = t1 if e1 == e2 else statistics.median(
            vmap_scan_call(s, ds, model, opt, n, e2) for _ in range(s.repeats))
        if t2 - t1 > 0.1 * t2:
            epochs, sec, steady = e2 - e1, t2 - t1, True
        else:  # compile-time noise swamps the difference (tiny sizes): whole call, compile in
            epochs, sec, steady = e2, t2, False
        res["vmap_scan"] = {"epochs": epochs, "seconds": sec, "first_call_s": first,
                            "steady": steady, "examples_per_s": n * n_train * epochs / sec}
        for mode in ("loop_scan", "loop_step"):
            sec = statistics.median(loops[mode](n) for _ in range(s.repeats))
            res[mode] = {"epochs": s.loop_epochs, "seconds": sec,
                         "examples_per_s": n * n_train * s.loop_epochs / sec}
        for mode in MODES:
            r = {"n": n, "mode": mode, **res[mode]}
            for ref in ("loop_step", "loop_scan"):
                r[f"vs_{ref}"] = r["examples_per_s"] / res[ref]["examples_per_s"]
            rows.append(r)
            C.log(f"  N={n:3} {mode:9} {r['examples_per_s']:12.0f} examples/s "
                  f"(x{r['vs_loop_step']:.2f} loop_step, x{r['vs_loop_scan']:.2f} loop_scan)")
    return rows, sizes, n_train


def targets(rows: list[dict]) -> list[dict]:
    """The issue's population targets, checked at the largest N of this run."""
    n = max(r["n"] for r in rows)
    get = {r["mode"]: r for r in rows if r["n"] == n}
    return [
        {"target": f"N={n}: vmap_scan >= 5x loop_step", "value": get["vmap_scan"]["vs_loop_step"],
         "met": get["vmap_scan"]["vs_loop_step"] >= 5},
        {"target": f"N={n}: vmap_scan >= 0.9x loop_scan",
         "value": get["vmap_scan"]["vs_loop_scan"], "met": get["vmap_scan"]["vs_loop_scan"] >= 0.9},
        {"target": "epoch in scan >= 4x the per-step loop (loop_scan / loop_step)",
         "value": get["loop_scan"]["vs_loop_step"], "met": get["loop_scan"]["vs_loop_step"] >= 4},
    ]


def markdown(machine, rows, s: Settings, sizes, n_train) -> str:
    table = [[r["n"], r["mode"], float(f"{r['examples_per_s']:.3g}"),
              float(f"{r['vs_loop_step']:.3g}"), float(f"{r['vs_loop_scan']:.3g}"),
              r["epochs"], float(f"{r['seconds']:.3g}"),
              float(f"{r['first_call_s']:.3g}") if "first_call_s" in r else None] for r in rows]
    table.append([max(s.ns), "torch", "not measured (no vmapped population in PyTorch eager)",
                  "-", "-", "-", "-", "-"])
    tg = [[t["target"], float(f"{t['value']:.3g}"), "yes" if t["met"] else "NO"]
          for t in targets(rows)]
    return "\n".join([
        f"# Population speed-up: MLP {'-'.join(map(str, sizes))}, batch {s.batch}, digits "
        f"({n_train} training examples)", "", f"Machine: {C.machine_line(machine)}", "",
        "Training examples of all N members per second, steady state (vmap_scan: from two "
        f"`train_population` calls of {s.vmap_epochs[0]} and {s.vmap_epochs[1]} epochs; loops: "
        "after warm-up), validation after every epoch in every mode. *x loop_step*, *x loop_scan*:"
        " speed-up over the sequential modes at the same N.", "",
        C.markdown_table(table, ["N", "mode", "examples/s", "x loop_step", "x loop_scan",
                                 "epochs timed", "seconds", "first call s"]), "",
        "## Targets", "", C.markdown_table(tg, ["target", "value", "met"])]) + "\n"


def run_convnet(s: Settings, json_path) -> dict:
    machine = C.machine_info()
    C.log(f"population: N in {s.ns} convnets {s.arch}, batch {s.batch}")
    rows, sizes, n_train = measure_convnet(s)
    md = convnet_markdown(machine, rows, s, sizes, n_train)
    jpath, mdpath = C.write_results(json_path, machine, rows, md, settings=s._asdict(),
                                    targets=convnet_targets(rows))
    png = jpath.with_suffix(".png")
    C.bar_chart(png, [{
        "title": f"convnet {s.arch}, batch {s.batch}, digits",
        "groups": [f"N={n}" for n in s.ns],
        "series": {m: [next(r["examples_per_s"] for r in rows if r["n"] == n and r["mode"] == m)
                       for n in s.ns] for m in CONV_MODES}}],
        xlabel="training examples / s (all members)",
        suptitle=f"{machine['cpu']}, {machine['cores']} cores, jax {machine['jax']}")
    return {"machine": machine, "rows": rows, "markdown": md,
            "paths": {"json": str(jpath), "markdown": str(mdpath), "png": str(png)}}


def run(*, quick: bool = False, tiny: bool = False, json_path, model: str = "mlp") -> dict:
    s = settings(quick, tiny, model)
    if model == "convnet":
        return run_convnet(s, json_path)
    machine = C.machine_info()
    C.log(f"population: N in {s.ns}, hidden {s.hidden}, batch {s.batch}")
    rows, sizes, n_train = measure_all(s)
    md = markdown(machine, rows, s, sizes, n_train)
    jpath, mdpath = C.write_results(json_path, machine, rows, md, settings=s._asdict(),
                                    targets=targets(rows))
    png = jpath.with_suffix(".png")
    C.bar_chart(png, [{
        "title": f"MLP {'-'.join(map(str, sizes))}, batch {s.batch}, digits",
        "groups": [f"N={n}" for n in s.ns],
        "series": {m: [next(r["examples_per_s"] for r in rows if r["n"] == n and r["mode"] == m)
                       for n in s.ns] for m in MODES}}],
        xlabel="training examples / s (all members)",
        suptitle=f"{machine['cpu']}, {machine['cores']} cores, jax {machine['jax']}")
    return {"machine": machine, "rows": rows, "markdown": md,
            "paths": {"json": str(jpath), "markdown": str(mdpath), "png": str(png)}}


def main(argv: list[str] | None = None) -> int:
    p = C.parser("Population speed-up: vmapped population vs sequential runs.",
                 "population.json")
    p.add_argument("--model", choices=("mlp", "convnet"), default="mlp",
                   help="mlp (N = 1, 8, 32 MLPs) or convnet (N = 8 digits convnets vs N "
                        "sequential fit runs); the convnet's results default to "
                        "population_convnet.json")
    args = p.parse_args(argv)
    json_path = args.json
    if args.model == "convnet" and json_path == p.get_default("json"):
        json_path = str(C.RESULTS_DIR / "population_convnet.json")
    out = run(quick=args.quick, tiny=C.tiny_requested(args), json_path=json_path,
              model=args.model)
    print(out["markdown"])
    C.log(f"wrote {out['paths']['json']}, {out['paths']['markdown']}, {out['paths']['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
