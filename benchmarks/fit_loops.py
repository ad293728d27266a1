"""The two loops ``jaxnn.train.fit`` can run an epoch with, side by side: the measurement behind
its rule (``train._fit_loop``: on a CPU, a model with ``Conv2D`` layers trains as a loop of steps
jitted alone with ``lax.conv``; every other model as the epoch in one ``lax.scan``).

For each model, ``loop``:

* ``"scan"``: the epoch in one ``lax.scan`` (``train.make_epoch``; ``Conv2D`` on a CPU computes
  im2col + matmul there, since XLA:CPU runs ``lax.conv``'s gradients tens of times slower inside
  a scan);
* ``"step"``: a Python loop over a step jitted alone (``train._step_epoch``), ``Conv2D`` as
  ``lax.conv``;
* ``"step_im2col"`` (convnets): the same loop with im2col convolutions (``Conv2D``'s CPU default
  outside fit), to separate the loop from the convolution;
* ``"scan_lax"`` (the digits convnet, ``--with-scan-lax``): the scan with ``lax.conv`` (very slow
  on a CPU).

Models: ``digits_convnet`` (8x8x1, ``conv:32,conv:32,pool,conv:64,pool,fc:128`` with batch norm,
batch 64, 1,280 random examples: the README's digits convnet), ``cifar_convnet`` (32x32x3,
``conv:32,conv:32,pool,conv:64,conv:64,pool,fc:256``, batch 128) and ``digits_mlp`` (64-64-64-10,
batch 32). One sample is one epoch; the loops of a model are timed interleaved and compared
per round (``vs_scan``: speed over the scan, median of the per-round ratios). Rows: ``{"model",
"loop", "examples_per_s", "vs_scan", "chosen"}`` (``chosen``: the loop fit picks here).

Usage::

    python benchmarks/fit_loops.py [--quick] [--json PATH] [--with-scan-lax]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import NamedTuple

if __package__ in (None, ""):  # run as `python benchmarks/fit_loops.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common as C  # noqa: E402


class Model(NamedTuple):
    name: str
    image: tuple[int, ...]  # () for flat inputs
    arch: str
    batch: int
    examples: int
    batch_norm: bool = False


def settings(quick: bool, tiny: bool) -> tuple[list[Model], int]:
    """(models, repeats)."""
    if tiny:
        return [Model("digits_convnet", (8, 8, 1), "conv:4,pool,fc:8", 16, 64, True),
                Model("digits_mlp", (), "fc:8", 16, 64)], 2
    cifar = Model("cifar_convnet", (32, 32, 3), "conv:32,conv:32,pool,conv:64,conv:64,pool,fc:256",
                  128, 128 * (3 if quick else 8))
    return [Model("digits_convnet", (8, 8, 1), "conv:32,conv:32,pool,conv:64,pool,fc:128", 64,
                  1280, True), cifar, Model("digits_mlp", (), "fc:64,fc:64", 32, 1280)], (
        3 if quick else 7)


def _build(m: Model, loop: str):
    import jax
    import jax.numpy as jnp

    from jaxnn import _conv, models, optim, train

    shape = m.image or (64,)
    model = models.convnet(shape, 10, m.arch, batch_norm=m.batch_norm)
    opt = optim.momentum(0.01)
    kx, ky = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (m.examples, *shape), jnp.float32)
    y = jax.random.randint(ky, (m.examples,), 0, 10, jnp.int32)
    base = loop.split("_")[0]
    run, _ = train._fit_epoch(model, "softmax_cross_entropy", opt, batch_size=m.batch, l2=0.0,
                              mesh=None, augment=None, x_shape=tuple(x.shape), loop=base)
    if loop == "step_im2col":  # the step loop with Conv2D's CPU default, im2col
        run = train._step_epoch(model.apply, "softmax_cross_entropy", opt, batch_size=m.batch,
                                cpu_algorithm="im2col")
    if loop == "scan_lax":
        epoch_fn = train.epoch_fn(model.apply, "softmax_cross_entropy", opt, batch_size=m.batch)

        def traced(state, x, y, e):
            with _conv.cpu_algorithm("lax"):
                return epoch_fn(state, x, y, e, 0.0)

        run = jax.jit(traced)
    st = [train.init_train_state(model, opt, key=jax.random.key(1))]
    e = [0]

    def call():
        e[0] += 1
        st[0], _ = run(st[0], x, y, jnp.int32(e[0]))
        return st[0]

    chosen = train._fit_loop(model, tuple(x.shape), batch_size=m.batch)
    return call, chosen


def measure_all(models: list[Model], repeats: int, scan_lax: bool) -> list[dict]:
    rows = []
    for m in models:
        conv = bool(m.image)
        # scan_lax: the digits convnet only (on the CIFAR-shaped one an epoch takes minutes)
        loops = ["scan", "step"] + (["step_im2col"] if conv else []) + (
            ["scan_lax"] if conv and scan_lax and m.name.startswith("digits") else [])
        calls, chosen = {}, None
        for loop in loops:
            calls[loop], chosen = _build(m, loop)
            t = C.time_once(calls[loop])
            C.log(f"  {m.name} {loop}: first epoch {t:.2f} s")
        raw = C.measure_rounds(calls, repeats=repeats, warmup=1)
        for loop in loops:
            eps = m.examples / statistics.median(raw[loop])
            rows.append({"model": m.name, "loop": loop, "examples_per_s": eps,
                         "vs_scan": C.paired_ratio(raw, "scan", loop), "chosen": chosen,
                         "batch": m.batch, "arch": m.arch, "image": list(m.image)})
            C.log(f"  {m.name:15} {loop:12} {eps:10.0f} examples/s  "
                  f"x{rows[-1]['vs_scan']:.2f} scan")
    return rows


def markdown(machine: dict, rows: list[dict], repeats: int) -> str:
    table = [[r["model"], r["loop"] + (" (fit's choice)" if r["loop"] == r["chosen"] else ""),
              float(f"{r['examples_per_s']:.3g}"), float(f"{r['vs_scan']:.3g}")] for r in rows]
    table.append(["-", "torch", "not measured (this compares jaxnn's own two loops)", "-"])
    return "\n".join([
        "# fit's two loops: the epoch in one lax.scan vs a loop of steps jitted alone", "",
        f"Machine: {C.machine_line(machine)}", "",
        f"Median of {repeats} interleaved epochs per loop; *x scan*: speed over the scan loop "
        "(median of the per-round ratios). *step*: steps jitted alone with `lax.conv`; "
        "*step_im2col*: the same loop with im2col convolutions; *scan*: im2col convolutions on "
        "a CPU.", "",
        C.markdown_table(table, ["model", "loop", "examples/s", "x scan"])]) + "\n"


def run(*, quick=False, tiny=False, json_path, scan_lax=False) -> dict:
    models, repeats = settings(quick, tiny)
    machine = C.machine_info()
    C.log(f"fit_loops: {', '.join(m.name for m in models)}, {repeats} rounds")
    rows = measure_all(models, repeats, scan_lax)
    md = markdown(machine, rows, repeats)
    jpath, mdpath = C.write_results(json_path, machine, rows, md, repeats=repeats,
                                    models=[m._asdict() for m in models])
    png = jpath.with_suffix(".png")
    names = list(dict.fromkeys(r["model"] for r in rows))
    loops = list(dict.fromkeys(r["loop"] for r in rows))
    C.bar_chart(png, [{"title": "fit's loops (speed over the scan)", "groups": names,
                       "series": {lp: [next((r["vs_scan"] for r in rows if r["model"] == n
                                             and r["loop"] == lp), None) for n in names]
                                  for lp in loops}}], xlabel="x the scan loop")
    return {"machine": machine, "rows": rows, "markdown": md,
            "paths": {"json": str(jpath), "markdown": str(mdpath), "png": str(png)}}


def main(argv: list[str] | None = None) -> int:
    p = C.parser("fit's two loops (scan vs steps jitted alone) side by side.", "fit_loops.json")
    p.add_argument("--with-scan-lax", action="store_true",
                   help="also time the scan with lax.conv (tens of times slower on a CPU)")
    args = p.parse_args(argv)
    out = run(quick=args.quick, tiny=C.tiny_requested(args), json_path=args.json,
              scan_lax=args.with_scan_lax)
    print(out["markdown"])
    C.log(f"wrote {out['paths']['json']}, {out['paths']['markdown']}, {out['paths']['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
