"""Many models at once: a population trained with ``jax.vmap`` inside one jitted epoch.

N members share an architecture; each has its own parameters, optimizer state, data order, and
hyperparameters (learning rate, L2 strength, initial weight scale, seed). One jitted call runs a
whole epoch of every member: ``vmap`` over :func:`jaxnn.train.epoch_fn` (the same step
:func:`jaxnn.train.fit` uses — not a copy), which scans the step over the epoch's batches. A member
whose epoch loss is NaN/inf or above ``divergence_factor`` times its initial loss is frozen by a
mask (its last good parameters kept, status ``"diverged"``); members are independent, so the others
train exactly as they would without it. The run stops when every member is done.

With ``devices=N`` the population axis is sharded over N devices (members never communicate).

Example::

    res = train_population(
        data=jaxnn.data.load("digits"),
        hparams={"learning_rate": jnp.array([0.01, 0.1]), "l2": jnp.array([1e-4, 1e-3])},
        epochs=10, batch_size=32, key=jax.random.key(0))
    res.history["val_acc"][-1]   # [N]
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnn import layers as _layers
from jaxnn import optim as _optim
from jaxnn import train as _train

__all__ = [
    "PopulationResult",
    "HPARAM_NAMES",
    "train_population",
    "population_logits",
    "member",
]

#: The hyperparameters a member can carry, with their defaults.
HPARAM_NAMES = ("learning_rate", "l2", "init_scale", "seed", "weight_decay")
_DEFAULTS = {"l2": 0.0, "init_scale": 1.0}


class PopulationResult(NamedTuple):
    """What :func:`train_population` returns.

    ``history`` maps ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` to arrays
    ``[epochs_run, N]`` (NaN after a member stopped); ``params``/``model_state`` are stacked
    along a leading member axis; ``status[i]`` is ``"ok"``, ``"diverged"`` or ``"stopped"``
    (early stop); ``final`` holds each member's last healthy ``val_loss``/``val_acc``/
    ``train_loss``; ``initial_loss`` is each member's loss before training.
    """

    history: dict[str, np.ndarray]
    params: Any
    model_state: Any
    status: list[str]
    hparams: dict[str, np.ndarray]
    final: dict[str, np.ndarray]
    initial_loss: np.ndarray


def _check_hparams(hparams: dict) -> tuple[dict[str, np.ndarray], int]:
    if not isinstance(hparams, dict) or "learning_rate" not in hparams:
        raise ValueError("hparams must be a dict with at least 'learning_rate' (an array [N])")
    unknown = set(hparams) - set(HPARAM_NAMES)
    if unknown:
        raise ValueError(f"hparams: unknown names {sorted(unknown)}; valid: {HPARAM_NAMES}")
    arrays = {k: np.atleast_1d(np.asarray(v)) for k, v in hparams.items()}
    sizes = {k: a.shape for k, a in arrays.items()}
    n = arrays["learning_rate"].shape[0]
    if n < 1 or any(a.ndim != 1 or a.shape[0] != n for a in arrays.values()):
        raise ValueError(f"hparams: every entry must have the same shape [N], N >= 1; got {sizes}")
    if not np.all(arrays["learning_rate"] > 0):
        raise ValueError("hparams['learning_rate'] must be positive")
    for name in ("l2", "weight_decay"):
        if name in arrays and not np.all(arrays[name] >= 0):
            raise ValueError(f"hparams[{name!r}] must be >= 0")
    if "init_scale" in arrays and not np.all(arrays["init_scale"] > 0):
        raise ValueError("hparams['init_scale'] must be positive")
    out = {k: arrays[k].astype(np.float32) for k in arrays if k != "seed"}
    for k, v in _DEFAULTS.items():
        out.setdefault(k, np.full(n, v, np.float32))
    seeds = arrays.get("seed", np.arange(n))
    if not np.all(np.equal(np.mod(seeds, 1), 0)):
        raise ValueError("hparams['seed'] must hold integers")
    out["seed"] = seeds.astype(np.int32)
    return out, n


def member(result: PopulationResult, i: int):
    """Member ``i``'s ``(params, model_state)`` out of the stacked result."""
    take = lambda a: a[i]
    return jax.tree.map(take, result.params), jax.tree.map(take, result.model_state)


@functools.lru_cache(maxsize=16)
def _logits_fn(apply):
    return jax.jit(jax.vmap(lambda p, s, x: apply(p, s, x, train=False)[0],
                            in_axes=(0, 0, None)))


def population_logits(model, params, model_state, x) -> jax.Array:
    """Every member's outputs on ``x`` in evaluation mode: ``[N, batch, classes]``."""
    return _logits_fn(model.apply)(params, model_state, jnp.asarray(x))


def _shard(tree, devices: int | None):
    """Place a member-stacked pytree with its leading axis split over ``devices`` devices."""
    if devices is None or devices == 1:
        return tree
    from jaxnn import distributed

    return distributed.shard_population(tree, devices)


# Compiled pieces are cached by (model, loss, optimizer, ...) identity, so the stages of a search
# or repeated calls with the same objects compile once.
@functools.lru_cache(maxsize=16)
def _build_epoch(model, loss, optimizer, batch_size: int, factor: float, probe):
    raw_epoch = _train.epoch_fn(model.apply, loss, optimizer, batch_size=batch_size)
    eval_members = _evaluate_members_fn(model.apply, loss)

    def run(states, alive, x, y, xv, yv, epoch, l2, initial):
        new, metrics = jax.vmap(raw_epoch, in_axes=(0, None, None, None, 0))(
            states, x, y, epoch, l2
        )
        train_loss, train_acc = _train.epoch_means(metrics)
        finite = jax.vmap(_train.tree_all_finite)(new.params)
        healthy = ~_train.diverged(train_loss, initial, factor=factor, params_finite=finite)
        keep = alive & healthy

        def select(n, o):
            k = keep.reshape((-1,) + (1,) * (n.ndim - 1))
            return jnp.where(k, n, o)

        states = jax.tree.map(select, new, states)
        ev = eval_members(states.params, states.model_state, xv, yv)
        probed = {} if probe is None else jax.vmap(probe)(states.params, states.model_state)
        metrics = {"train_loss": train_loss, "train_acc": train_acc, "val_loss": ev.loss,
                   "val_acc": ev.accuracy, **probed}
        return states, keep, alive & ~healthy, metrics

    return jax.jit(run, donate_argnums=(0,))


@functools.lru_cache(maxsize=16)
def _member_init_fn(model, optimizer, with_weight_decay: bool):
    def one(k, scale, lr, wd):
        state = _train.init_train_state(model, optimizer, key=k, init_scale=scale)
        opt_state = _optim.set_hyperparam(state.opt_state, "learning_rate", lr)
        if with_weight_decay:
            opt_state = _optim.set_hyperparam(opt_state, "weight_decay", wd)
        return state._replace(opt_state=opt_state)

    # Not jitted on purpose: eagerly, each random draw's compiled kernel is cached by shape and
    # reused by every later population (e.g. the groups of a comparison); under jit the whole
    # initialization would recompile (seconds) for each new model.
    return jax.vmap(one)


@functools.lru_cache(maxsize=16)
def _evaluate_members_fn(apply, loss):
    return jax.jit(jax.vmap(_train.make_evaluate(apply, loss), in_axes=(0, 0, None, None)))


def _init_members(model, optimizer, keys, hp):
    wd = hp.get("weight_decay")
    init = _member_init_fn(model, optimizer, wd is not None)
    return init(keys, hp["init_scale"], hp["learning_rate"],
                hp["learning_rate"] * 0 if wd is None else wd)


def train_population(
    *,
    data,
    hparams: dict,
    epochs: int,
    batch_size: int,
    key: jax.Array,
    model=None,
    loss: str | Callable = "softmax_cross_entropy",
    optimizer: optax.GradientTransformation | None = None,
    devices: int | None = None,
    divergence_factor: float = 3.0,
    patience: int | None = None,
    probe: Callable[[Any, Any], dict[str, jax.Array]] | None = None,
) -> PopulationResult:
    """Train N members at once (N = the length of every ``hparams`` array).

    Args:
      data: a :class:`jaxnn.data.Dataset` (train and validation splits are used).
      hparams: ``learning_rate`` (required), ``l2``, ``init_scale`` (multiplies every weight
        matrix at initialization), ``seed`` (member ``i``'s parameters and data order come from
        ``fold_in(key, seed[i])``; default ``arange(N)``) and, for ``adamw``, ``weight_decay``.
      epochs, batch_size: as in :func:`jaxnn.train.fit`.
      key: the base PRNG key.
      model: a :class:`jaxnn.layers.Model` (default: an MLP with two hidden layers of 64 ReLUs).
      loss: a loss name or function.
      optimizer: an optimizer from :mod:`jaxnn.optim` (its learning rate is replaced per member;
        default ``momentum``).
      devices: shard the member axis over this many devices (``N`` must divide by it).
      divergence_factor: the divergence rule of :func:`jaxnn.train.diverged` (loss or parameters).
      patience: freeze a member (status ``"stopped"``) after this many epochs without a better
        validation loss.
      probe: ``probe(params, model_state) -> {name: scalar}`` evaluated for every member after
        every epoch inside the jitted epoch (e.g. the dead-ReLU fraction on a fixed batch); each
        name becomes a ``history`` entry ``[epochs_run, N]``.

    A population of one with member ``i``'s hyperparameters gives member ``i``'s losses.
    """
    hp, n = _check_hparams(hparams)
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    xv, yv = jnp.asarray(data.x_val), jnp.asarray(data.y_val)
    if x.shape[0] == 0 or xv.shape[0] == 0:
        raise ValueError("data: the training and validation splits must not be empty")
    batch_size = min(batch_size, x.shape[0])
    if model is None:
        model = _layers.mlp([int(np.prod(x.shape[1:])), 64, 64, int(data.num_classes)])
    if optimizer is None:
        optimizer = _optim.momentum(0.1)
    if devices is not None and devices > 1 and n % devices:
        raise ValueError(f"the population size {n} must divide by devices={devices}")

    keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.asarray(hp["seed"]))
    states = _init_members(model, optimizer, keys, hp)
    l2 = jnp.asarray(hp["l2"])
    states, l2 = _shard(states, devices), _shard(l2, devices)
    evaluate = _evaluate_members_fn(model.apply, loss)
    initial = evaluate(states.params, states.model_state, x, y).loss
    run_epoch = _build_epoch(model, loss, optimizer, batch_size, divergence_factor, probe)

    alive = jnp.ones(n, bool)
    status = np.array(["ok"] * n, dtype=object)
    hist: dict[str, list] = {}
    final = {k: np.full(n, np.nan) for k in ("train_loss", "val_loss", "val_acc")}
    es = _train.early_stopping_init((n,))
    for epoch in range(1, epochs + 1):
        was_alive = np.asarray(alive)
        states, alive, diverged, metrics = run_epoch(
            states, alive, x, y, xv, yv, jnp.int32(epoch), l2, initial
        )
        metrics = {k: np.asarray(v, np.float64) for k, v in metrics.items()}
        tl, vl, va = metrics["train_loss"], metrics["val_loss"], metrics["val_acc"]
        diverged = np.asarray(diverged)
        status[diverged] = "diverged"
        healthy = was_alive & ~diverged
        for k, v in metrics.items():
            hist.setdefault(k, []).append(np.where(was_alive, v, np.nan))
        # Frozen members keep their last good state; their val numbers are of that state.
        for k, v in (("train_loss", tl), ("val_loss", vl), ("val_acc", va)):
            final[k] = np.where(healthy, v, final[k])
        if patience is not None:
            es = _train.early_stopping_update(es, vl, active=healthy)
            stop = healthy & _train.should_stop_early(es, patience)
            status[stop] = "stopped"
            alive = alive & jnp.asarray(~stop)
        if not np.any(np.asarray(alive)):
            break
    return PopulationResult(
        history={k: np.stack(v) for k, v in hist.items()},
        params=states.params,
        model_state=states.model_state,
        status=list(status),
        hparams={k: np.asarray(v) for k, v in hp.items()},
        final=final,
        initial_loss=np.asarray(initial),
    )
