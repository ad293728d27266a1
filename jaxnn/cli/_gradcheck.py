"""``jaxnn gradcheck``: check the library's own gradients against centered differences.

Every activation (at points away from its kinks), every loss, and small MLPs with batch norm,
all in float64 (:func:`jaxnn.gradcheck.check_grads`); prints a table of the max relative error
per case and exits 1 if any case fails.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np


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
    p.set_defaults(func=run_gradcheck)


def _away_from_kinks(rng, shape, *, gap: float = 0.1):
    """Standard normal values pushed at least ``gap`` away from 0 (where ReLU-like kinks are)."""
    z = rng.standard_normal(shape)
    return z + gap * (2 * (z >= 0) - 1)


def _activation_cases(rng) -> list[tuple[str, Callable, dict]]:
    import jax.numpy as jnp

    from jaxnn import activations

    x = jnp.asarray(_away_from_kinks(rng, (4, 6)))
    r = jnp.asarray(rng.standard_normal((4, 6)))  # random weights: no cancelling symmetry
    cases = []
    for name in activations.names():
        fn = activations.get(name)
        if name == "prelu":
            alpha = jnp.asarray(rng.uniform(0.05, 0.5, (6,)))
            cases.append((name, lambda p, fn=fn: jnp.sum(r * fn(p["x"], p["alpha"])),
                          {"x": x, "alpha": alpha}))
        elif name == "maxout":
            rr = r[:, :3]
            cases.append((name, lambda p, fn=fn, rr=rr: jnp.sum(rr * fn(p["x"], 2)), {"x": x}))
        else:
            cases.append((name, lambda p, fn=fn: jnp.sum(r * fn(p["x"])), {"x": x}))
    return cases


def _loss_cases(rng) -> list[tuple[str, Callable | None, dict]]:
    import jax.numpy as jnp

    from jaxnn import losses

    n, c = 5, 4
    labels = jnp.asarray(rng.integers(0, c, n), jnp.int32)
    pred = jnp.asarray(rng.standard_normal((n, c)))
    target = pred + jnp.asarray(_away_from_kinks(rng, (n, c)))  # l1's kink is at pred == target
    probs = jnp.asarray(rng.dirichlet(np.ones(c), n))
    # Hinge: keep every s_k - s_y + 1 away from its kink at 0.
    scores = jnp.asarray(rng.standard_normal((n, c)) * 2)
    for _ in range(100):
        s_y = jnp.take_along_axis(scores, labels[:, None], 1)
        if float(jnp.min(jnp.abs(scores - s_y + 1))) > 0.05:
            break
        scores = jnp.asarray(rng.standard_normal((n, c)) * 2)
    w = jnp.asarray(rng.uniform(0.5, 1.5, n))  # per-example weights on the per-example losses
    binary = jnp.asarray(rng.uniform(0, 1, (n, c)))
    kinds = {
        losses.l1_loss: (pred, target), losses.l2_loss: (pred, target), losses.mse: (pred, target),
        losses.sigmoid_binary_cross_entropy: (pred, binary),
        losses.softmax_cross_entropy: (pred, labels),
        losses.softmax_cross_entropy_onehot: (pred, probs),
        losses.multiclass_hinge_loss: (scores, labels),
    }
    cases = []
    for name in losses.names():
        fn = losses.get(name)
        if fn not in kinds:
            cases.append((name, None, {}))
            continue
        first, second = kinds[fn]
        cases.append((name, lambda p, fn=fn, second=second: jnp.sum(w * fn(p["pred"], second)),
                      {"pred": first}))
    return cases


def _mlp_cases(rng) -> list[tuple[str, Callable, dict]]:
    import jax
    import jax.numpy as jnp

    from jaxnn import layers, losses, regularizers

    x = jnp.asarray(rng.standard_normal((8, 5)))
    y = jnp.asarray(rng.integers(0, 3, 8), jnp.int32)
    key = jax.random.key(0)
    cases = []
    for label, kw in (("mlp tanh + batch norm", {"activation": "tanh", "batch_norm": True}),
                      ("mlp elu + batch norm + dropout",
                       {"activation": "elu", "batch_norm": True, "dropout": 0.2}),
                      ("mlp maxout", {"activation": "maxout"})):
        model = layers.mlp([5, 7, 6, 3], **kw)
        params, state = model.init(key)
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        state = jax.tree.map(lambda a: a.astype(jnp.float64), state)

        def objective(p, model=model, state=state):
            logits, _ = model.apply(p, state, x, train=True, key=key)
            return regularizers.full_loss(jnp.mean(losses.softmax_cross_entropy(logits, y)), p,
                                          l2=1e-2)

        cases.append((label, objective, params))
    return cases


def run_gradcheck(args) -> int:
    import jax

    from jaxnn import gradcheck
    from jaxnn.cli._common import table

    rows, failed = [], 0
    with jax.enable_x64(True):
        rng = np.random.default_rng(args.seed)
        groups = (("activation", _activation_cases(rng)), ("loss", _loss_cases(rng)),
                  ("model", _mlp_cases(rng)))
        for kind, cases in groups:
            for name, f, params in cases:
                if f is None:
                    rows.append([kind, name, "", "", "skipped (no check case)"])
                    continue
                rep = gradcheck.check_grads(f, params, tol=args.tol)
                failed += not rep.passed
                rows.append([kind, name, rep.max_error, rep.tol, "ok" if rep.passed else "FAIL"])
    print(table(rows, ["kind", "name", "max rel error", "tol", "result"]))
    if failed:
        sys.stderr.write(f"jaxnn gradcheck: {failed} of {len(rows)} gradient checks failed\n")
        return 1
    checked = sum(r[-1] == "ok" for r in rows)
    print(f"all {checked} gradient checks passed (float64)")
    return 0

