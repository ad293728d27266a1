"""``jaxnn gradcheck``: check the library's own gradients against centered differences.

Every activation (at points away from its kinks), every loss, and small MLPs with batch norm,
all in float64 (:func:`jaxnn.gradcheck.check_grads`); prints a table of the max relative error
per case and exits 1 if any case fails.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from jaxnn.cli._progress import Progress, add_quiet_flag


def add_parser(sub) -> None:
    p = sub.add_parser(
        "gradcheck", help="check jaxnn's gradients (activations, losses, MLP + batch norm)",
        description="Compare jax.grad with centered finite differences in float64 for every "
                    "activation (away from kinks), every loss and small MLPs with batch norm; "
                    "print the max relative error of each and exit 1 if any exceeds the "
                    "tolerance.")
    p.add_argument("--tol", type=float, default=None,
                   help="max relative error allowed (default: the float64 default of "
                        "jaxnn.gradcheck, 1e-6)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random check points")
    add_quiet_flag(p)
    p.set_defaults(func=run_gradcheck)


def _away_from_kinks(rng, shape, *, gap: float = 0.1):
    """Standard normal values pushed at least ``gap`` away from 0 (where ReLU-like kinks are)."""
    z = rng.standard_normal(shape)
    return z + gap * (2 * (z >= 0) - 1)


def _activation_cases(rng) -> list[tuple[str, Callable, dict]]:
    import jax
    import jax.numpy as jnp

    from jaxnn import activations

    x = jnp.asarray(_away_from_kinks(rng, (4, 6)))
    r = jnp.asarray(rng.standard_normal((4, 6)))  # random weights: no cancelling symmetry
    cases = []
    for name in activations.names():
        entry = activations.entry(name)  # its learnable parameters and width change
        fn = activations.get(name)
        # Learnable parameters (prelu's slope) are checked too: one random value per channel.
        learned = {k: jnp.asarray(rng.uniform(0.05, 0.5, (6,))) for k in entry.params}
        options = {} if entry.pieces_option is None else {
            entry.pieces_option: entry.default_pieces}
        width = jax.eval_shape(lambda x, fn=fn, o=options, a=learned: fn(x, **o, **a),
                               x).shape[-1]
        rr = r[:, :width]  # maxout: num_pieces inputs per output

        def f(p, fn=fn, rr=rr, options=options, keys=tuple(learned)):
            return jnp.sum(rr * fn(p["x"], **options, **{k: p[k] for k in keys}))

        cases.append((name, f, {"x": x, **learned}))
    return cases


#: The kinds of target a loss may take, in this order, on ``[n, c]`` scores: integer class
#: ids ``[n]``, class distributions ``[n, c]`` (rows summing to 1), per-element probabilities
#: ``[n, c]`` and real values ``[n, c]``.
_TARGET_KINDS = ("class ids", "class distributions", "probabilities", "real values")
#: The interval the values of each kind of float target lie in (``None``: unbounded).
_KIND_RANGE = {"class distributions": (0.0, 1.0), "probabilities": (0.0, 1.0),
               "real values": (None, None)}


def _targets(kind: str, rng, n: int, c: int):
    import jax.numpy as jnp

    if kind == "class ids":
        return jnp.asarray(rng.integers(0, c, n), jnp.int32)
    if kind == "class distributions":
        return jnp.asarray(rng.dirichlet([1.0] * c, n))
    if kind == "probabilities":
        return jnp.asarray(rng.uniform(0.05, 0.95, (n, c)))
    return jnp.asarray(rng.standard_normal((n, c)))


def _declared_kinds(entry) -> list[str]:
    """The target kinds a loss's registry entry declares: class ids for a ``"labels"`` loss,
    else every float kind whose values lie in its ``target_range``."""
    if entry.targets == "labels":
        return ["class ids"]
    lo, hi = entry.target_range
    return [kind for kind, (klo, khi) in _KIND_RANGE.items()
            if (lo is None or (klo is not None and klo >= lo))
            and (hi is None or (khi is not None and khi <= hi))]


def _accepted_targets(fn, kinds, rng, n: int, c: int) -> tuple[list[tuple[str, object]],
                                                               list[str]]:
    """``(accepted, rejected)``: the target ``kinds`` (with a target of each), split by whether
    the loss ``fn`` evaluates them eagerly to ``n`` finite per-example values."""
    import jax.numpy as jnp

    scores = jnp.asarray(rng.standard_normal((n, c)))
    accepted, rejected = [], []
    for kind in kinds:
        target = _targets(kind, rng, n, c)
        try:
            value = fn(scores, target)
            ok = jnp.shape(value) == (n,) and bool(jnp.all(jnp.isfinite(value)))
        except (ValueError, TypeError):
            ok = False
        if ok:
            accepted.append((kind, target))
        else:
            rejected.append(kind)
    return accepted, rejected


def _loss_cases(rng) -> list[tuple[str, Callable | None, dict]]:
    """One case per loss of the registry (aliases share their loss's case) and per target kind
    its registry entry declares (:class:`jaxnn.losses.LossEntry`: ``targets`` and
    ``target_range``): the gradient of a weighted sum of its per-example values with respect to
    the scores, and to float targets too. A declared kind the loss rejects is a failed case
    (``None``), never a skipped one."""
    import jax.numpy as jnp

    from jaxnn import losses

    n, c = 5, 4
    w = jnp.asarray(rng.uniform(0.5, 1.5, n))  # per-example weights on the per-example losses
    by_loss: dict = {}
    for name in losses.names():
        by_loss.setdefault(losses.entry(name).canonical, []).append(name)
    cases = []
    for canonical, names in by_loss.items():
        label = names[0] + (f" (= {', '.join(names[1:])})" if names[1:] else "")
        fn = losses.get(canonical)
        accepted, rejected = _accepted_targets(fn, _declared_kinds(losses.entry(canonical)),
                                               rng, n, c)
        cases.extend((f"{label} [{kind}]", None, {}) for kind in rejected)
        for kind, target in accepted:
            # Random scores are a.s. away from every kink (|pred - target| = 0 for l1, a zero
            # margin for the hinge loss); the draw is fixed by --seed.
            params = {"scores": jnp.asarray(rng.standard_normal((n, c)) * 2)}
            if jnp.issubdtype(target.dtype, jnp.floating):
                params["target"] = target
                f = lambda p, fn=fn: jnp.sum(w * fn(p["scores"], p["target"]))
            else:
                f = lambda p, fn=fn, target=target: jnp.sum(w * fn(p["scores"], target))
            cases.append((f"{label} [{kind}]", f, params))
    return cases


def _model_cases(rng) -> list[tuple[str, Callable, dict]]:
    """Small models built from configs (:func:`jaxnn.config.build_model`): MLPs with batch
    norm, dropout and maxout, and a convnet with a residual block, in training mode."""
    import jax
    import jax.numpy as jnp

    from jaxnn import losses, regularizers
    from jaxnn.config import RunConfig, build_model

    flat = jnp.asarray(rng.standard_normal((8, 5)))
    images = jnp.asarray(rng.standard_normal((8, 4, 4, 1)))
    y = jnp.asarray(rng.integers(0, 3, 8), jnp.int32)
    key = jax.random.key(0)
    cases = []
    for label, x, cfg in (
            ("mlp tanh + batch norm", flat,
             RunConfig(hidden="7,6", activation="tanh", batch_norm=True)),
            ("mlp elu + batch norm + dropout", flat,
             RunConfig(hidden="7,6", activation="elu", batch_norm=True, dropout=0.2)),
            ("mlp maxout", flat, RunConfig(hidden="7,6", activation="maxout")),
            ("convnet tanh + residual block", images,
             RunConfig(arch="conv:2,res(conv:2,conv:2),fc:4", activation="tanh"))):
        model = build_model(cfg, x.shape[1:], 3)
        params, state = model.init(key)
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        state = jax.tree.map(lambda a: a.astype(jnp.float64), state)

        def objective(p, model=model, state=state, x=x):
            logits, _ = model.apply(p, state, x, train=True, key=key)
            return regularizers.full_loss(jnp.mean(losses.softmax_cross_entropy(logits, y)), p,
                                          l2=1e-2)

        cases.append((label, objective, params))
    return cases


#: How a check's verdict reads in the table; anything but "ok" makes the command exit 1.
_RESULT = {"passed": "ok", "failed": "FAIL",
           "inconclusive": "INCONCLUSIVE (float rounding hides the error: rerun in float64)"}


def run_gradcheck(args) -> int:
    import jax
    import numpy as np

    from jaxnn import gradcheck
    from jaxnn.cli._common import table

    rows, failed = [], 0
    with jax.enable_x64(True):
        rng = np.random.default_rng(args.seed)  # numpy: the check points, fixed by --seed
        groups = (("activation", _activation_cases(rng)), ("loss", _loss_cases(rng)),
                  ("model", _model_cases(rng)))
        total = sum(len(cases) for _, cases in groups)
        with Progress(total=total, desc="gradcheck", unit="check", quiet=args.quiet) as progress:
            for kind, cases in groups:
                for name, f, params in cases:
                    if f is None:  # a check that cannot run is a failure, not a pass
                        failed += 1
                        rows.append([kind, name, "", "", "FAIL (rejects its declared targets)"])
                    else:
                        rep = gradcheck.check_grads(f, params, tol=args.tol)
                        failed += not rep.passed
                        rows.append([kind, name, rep.max_error, rep.tol,
                                     _RESULT.get(rep.verdict, "FAIL")])
                    result = rows[-1][-1]
                    progress.step(f"{progress.count()} {kind} {name} {result}",
                                  postfix=f"{kind} {name}")
    print(table(rows, ["kind", "name", "max rel error", "tol", "result"]))
    if failed:
        sys.stderr.write(f"jaxnn gradcheck: {failed} of {len(rows)} gradient checks failed\n")
        return 1
    checked = sum(r[-1] == "ok" for r in rows)
    print(f"all {checked} gradient checks passed (float64)")
    return 0

