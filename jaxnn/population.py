"""Many models at once: a population trained with ``jax.vmap`` inside one jitted epoch.

N members share an architecture; each has its own parameters, optimizer state, data order, and
hyperparameters (learning rate, L2 strength, initial weight scale, momentum, weight decay, dropout
rate, seed). One jitted call runs a whole epoch of every member: ``vmap`` over
:func:`jaxnn.train.epoch_fn` (the same step :func:`jaxnn.train.fit` uses — not a copy), which scans
the step over the epoch's batches. A member that diverges (:func:`jaxnn.train.diverged`: loss
NaN/inf or above ``divergence_factor`` times its initial loss, or NaN/inf parameters) is frozen by
a mask (its last good parameters kept, status :attr:`~jaxnn.train.Status.DIVERGED`); so is a
member that ``on_epoch`` stops (``PRUNED``, e.g. by an Optuna pruner) or that early stopping stops
(``STOPPED``).
Members are independent, so the others train exactly as they would without them. The run stops
when every member is done.

Learning-rate schedules: build the optimizer with a schedule *shape* (``jaxnn.optim.momentum(1.0,
schedule=...)``, see :mod:`jaxnn.optim`); member ``i``'s rate at step ``t`` is
``learning_rate[i] * schedule(t)``.

Member ``i`` trains exactly as :func:`jaxnn.train.fit` with the same model, optimizer (its
hyperparameters set to member ``i``'s) and key ``fold_in(key, seed[i])`` (or ``key[i]`` when
``key`` holds one key per member), up to float rounding.

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

from jaxnn import models as _models
from jaxnn import optim as _optim
from jaxnn import train as _train

__all__ = [
    "PopulationResult",
    "HPARAM_NAMES",
    "OPTIMIZER_HPARAMS",
    "train_population",
    "population_logits",
    "member",
    "default_devices",
]

#: The hyperparameters a member can carry.
HPARAM_NAMES = ("learning_rate", "l2", "init_scale", "seed", "momentum", "weight_decay",
                "dropout")
#: Those that live in the optimizer state (set with :func:`jaxnn.optim.set_hyperparam`).
OPTIMIZER_HPARAMS = ("learning_rate", "momentum", "weight_decay")
_DEFAULTS = {"l2": 0.0, "init_scale": 1.0}


class PopulationResult(NamedTuple):
    """What :func:`train_population` returns.

    ``history`` maps ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` to arrays
    ``[epochs_run, N]`` (NaN after a member stopped); ``params``/``model_state`` are stacked
    along a leading member axis; ``status[i]`` is a :class:`jaxnn.train.Status` (a ``str``):
    ``"ok"``, ``"diverged"``, ``"stopped"`` (early stop) or ``"pruned"`` (stopped by
    ``on_epoch``); ``final`` holds each member's last
    healthy ``val_loss``/``val_acc``/``train_loss``; ``epochs[i]`` counts the epochs member ``i``
    trained healthily; ``initial_loss`` is each member's loss before training.
    """

    history: dict[str, np.ndarray]
    params: Any
    model_state: Any
    status: list[_train.Status]
    hparams: dict[str, np.ndarray]
    final: dict[str, np.ndarray]
    initial_loss: np.ndarray
    epochs: np.ndarray


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
    for name in ("momentum", "dropout"):
        if name in arrays and not np.all((arrays[name] >= 0) & (arrays[name] < 1)):
            raise ValueError(f"hparams[{name!r}] must be in [0, 1)")
    for k, a in arrays.items():
        if not np.all(np.isfinite(a.astype(np.float64))):
            raise ValueError(f"hparams[{k!r}] must be finite, got {a}")
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


def _replicate(tree, devices: int | None):
    """A copy of ``tree`` (the data) on each of the first ``devices`` devices, placed once
    rather than sent again at every epoch."""
    if devices is None or devices == 1:
        return tree
    from jaxnn import distributed

    return distributed.replicate(tree, distributed.population_mesh(devices))


def default_devices(n: int) -> int | None:
    """The devices a population of ``n`` members is split over by default: on CPU, the largest
    number of local devices that divides ``n`` (with the host split into one device per core,
    as the ``jaxnn`` population verbs do, the members train on every core); on GPU/TPU and in
    multi-process runs one device (``None``), unless ``devices=`` says otherwise."""
    if jax.default_backend() != "cpu" or jax.process_count() > 1:
        return None
    d = max(k for k in range(1, jax.local_device_count() + 1) if n % k == 0)
    return None if d == 1 else d


# Compiled pieces are cached by (model, loss, optimizer, ...) identity, so the stages of a search
# or repeated calls with the same objects compile once.
@functools.lru_cache(maxsize=16)
def _build_epoch(model, loss, optimizer, batch_size: int, factor: float, probe,
                 dropout: bool = False):
    if dropout:  # ``model`` is a factory: each member's model carries its own (traced) rate
        def member_epoch(state, x, y, epoch, l2, rate):
            raw = _train.epoch_fn(model(rate).apply, loss, optimizer, batch_size=batch_size)
            return raw(state, x, y, epoch, l2)

        epoch_all = jax.vmap(member_epoch, in_axes=(0, None, None, None, 0, 0))
        eval_model = model(0.0)
    else:
        raw_epoch = _train.epoch_fn(model.apply, loss, optimizer, batch_size=batch_size)
        vmapped = jax.vmap(raw_epoch, in_axes=(0, None, None, None, 0))
        epoch_all = lambda states, x, y, epoch, l2, rate: vmapped(states, x, y, epoch, l2)
        eval_model = model
    eval_members = _evaluate_members_fn(eval_model.apply, loss)

    def run(states, alive, x, y, xv, yv, epoch, l2, rate, initial):
        new, metrics = epoch_all(states, x, y, epoch, l2, rate)
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
def _member_init_fn(model, optimizer, names: tuple[str, ...]):
    def one(k, scale, values):
        state = _train.init_train_state(model, optimizer, key=k, init_scale=scale)
        opt_state = state.opt_state
        for name in names:
            opt_state = _optim.set_hyperparam(opt_state, name, values[name])
        return state._replace(opt_state=opt_state)

    # Not jitted on purpose: eagerly, each random draw's compiled kernel is cached by shape and
    # reused by every later population (e.g. the groups of a comparison); under jit the whole
    # initialization would recompile (seconds) for each new model.
    return jax.vmap(one)


@functools.lru_cache(maxsize=16)
def _evaluate_members_fn(apply, loss):
    return jax.jit(jax.vmap(_train.make_evaluate(apply, loss), in_axes=(0, 0, None, None)))


def _optimizer_hparams(optimizer, hp: dict) -> tuple[str, ...]:
    """The names of ``hp`` that go into the optimizer state; each must be injected there."""
    names = tuple(n for n in OPTIMIZER_HPARAMS if n in hp)
    have = _optim.hyperparam_names(optimizer)
    for n in names:
        if n not in have:
            raise ValueError(f"hparams[{n!r}]: the optimizer has no injectable {n!r} (it has "
                             f"{', '.join(have)}); build it with jaxnn.optim (e.g. momentum for "
                             "'momentum', adamw for 'weight_decay')")
    return names


def _member_keys(key, hp: dict, n: int, seed_given: bool):
    """One PRNG key per member: ``fold_in(key, seed[i])``, or ``key[i]`` for a batch of keys."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    batched = key.ndim == (1 if typed else 2)
    if not batched:
        return jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.asarray(hp["seed"]))
    if key.shape[0] != n:
        raise ValueError(f"key: one key per member needs {n} keys, got {key.shape[0]}")
    if seed_given:
        raise ValueError("give either hparams['seed'] or one key per member, not both")
    return key


def _is_model(model) -> bool:
    return hasattr(model, "init") and hasattr(model, "apply")


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
    divergence_factor: float = _train.DIVERGENCE_FACTOR,
    patience: int | None = None,
    probe: Callable[[Any, Any], dict[str, jax.Array]] | None = None,
    on_epoch: Callable[[int, dict, np.ndarray], Any] | None = None,
) -> PopulationResult:
    """Train N members at once (N = the length of every ``hparams`` array).

    Args:
      data: a :class:`jaxnn.data.Dataset` (train and validation splits are used).
      hparams: ``learning_rate`` (required), ``l2``, ``init_scale`` (multiplies every weight
        matrix at initialization), ``momentum`` (for ``momentum``/``nesterov``),
        ``weight_decay`` (for ``adamw``), ``dropout`` (needs ``model`` to be a factory, below)
        and ``seed`` (member ``i``'s parameters, data order and dropout come from
        ``fold_in(key, seed[i])``; default ``arange(N)``).
      epochs, batch_size: as in :func:`jaxnn.train.fit`.
      key: the base PRNG key, or one key per member (shape ``[N]``; then no ``seed``).
      model: a :class:`jaxnn.models.Model` (default: an MLP with two hidden layers of 64 ReLUs),
        or, with ``hparams["dropout"]``, a function ``rate -> Model`` that builds the model with
        drop probability ``rate`` — called with each member's traced rate, so it must not branch
        on it in Python; its models must share their parameters' structure and initialization.
      loss: a loss name or function.
      optimizer: an optimizer from :mod:`jaxnn.optim` (default ``momentum``); its injected
        ``learning_rate``/``momentum``/``weight_decay`` are replaced by each member's (a schedule
        keeps its shape: member ``i``'s rate is ``learning_rate[i] * schedule(t)``).
      devices: shard the member axis over this many devices (``N`` must divide by it);
        ``None``: :func:`default_devices` (on CPU every host device that divides ``N``, else
        one); ``1``: one device.
      divergence_factor: the divergence rule of :func:`jaxnn.train.diverged` (loss or parameters).
      patience: freeze a member (status ``"stopped"``) after this many epochs without a better
        validation loss.
      probe: ``probe(params, model_state) -> {name: scalar}`` evaluated for every member after
        every epoch inside the jitted epoch (e.g. the dead-ReLU fraction on a fixed batch); each
        name becomes a ``history`` entry ``[epochs_run, N]``.
      on_epoch: ``on_epoch(epoch, metrics, trained) -> stop`` after every epoch, on the host:
        ``metrics`` maps ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` to arrays
        ``[N]``, ``trained`` marks the members that trained healthily this epoch; ``stop`` (a
        boolean array ``[N]`` or ``None``) freezes those members from now on, status
        ``"pruned"`` (their last epoch's numbers are their final ones). A pruner's hook.

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
    dropout = "dropout" in hp
    if model is None:
        if dropout:
            raise ValueError("hparams['dropout'] needs model=, a function rate -> Model")
        model = _models.mlp([int(np.prod(x.shape[1:])), 64, 64, int(data.num_classes)])
    if dropout and _is_model(model):
        raise ValueError("hparams['dropout'] needs model to be a function rate -> Model (the "
                         "rate is part of the model), not a built Model")
    if not dropout and not _is_model(model):
        raise ValueError(f"model must be a Model (init, apply), got {model!r}")
    if optimizer is None:
        optimizer = _optim.momentum(0.1)
    if devices is None:
        devices = default_devices(n)
    elif devices > 1 and n % devices:
        raise ValueError(f"the population size {n} must divide by devices={devices}")

    keys = _member_keys(key, hp, n, "seed" in hparams)
    base_model = model(0.0) if dropout else model
    names = _optimizer_hparams(optimizer, hp)
    states = _member_init_fn(base_model, optimizer, names)(
        keys, hp["init_scale"], {k: hp[k] for k in names})
    l2 = jnp.asarray(hp["l2"])
    rate = jnp.asarray(hp["dropout"] if dropout else np.zeros(n, np.float32))
    states, l2, rate = _shard(states, devices), _shard(l2, devices), _shard(rate, devices)
    x, y, xv, yv = _replicate((x, y, xv, yv), devices)
    evaluate = _evaluate_members_fn(base_model.apply, loss)
    initial = evaluate(states.params, states.model_state, x, y).loss
    run_epoch = _build_epoch(model, loss, optimizer, batch_size, divergence_factor, probe,
                             dropout)

    alive = jnp.ones(n, bool)
    status = np.array([_train.Status.OK] * n, dtype=object)
    hist: dict[str, list] = {}
    final = {k: np.full(n, np.nan) for k in ("train_loss", "val_loss", "val_acc")}
    epochs_done = np.zeros(n, np.int64)
    es = _train.early_stopping_init((n,))
    for epoch in range(1, epochs + 1):
        was_alive = np.asarray(alive)
        states, alive, diverged, metrics = run_epoch(
            states, alive, x, y, xv, yv, jnp.int32(epoch), l2, rate, initial
        )
        metrics = {k: np.asarray(v, np.float64) for k, v in metrics.items()}
        tl, vl, va = metrics["train_loss"], metrics["val_loss"], metrics["val_acc"]
        diverged = np.asarray(diverged)
        status[diverged] = _train.Status.DIVERGED
        healthy = was_alive & ~diverged
        epochs_done += healthy
        for k, v in metrics.items():
            hist.setdefault(k, []).append(np.where(was_alive, v, np.nan))
        # Frozen members keep their last good state; their val numbers are of that state.
        for k, v in (("train_loss", tl), ("val_loss", vl), ("val_acc", va)):
            final[k] = np.where(healthy, v, final[k])
        if patience is not None:
            es = _train.early_stopping_update(es, vl, active=healthy)
            stop = healthy & _train.should_stop_early(es, patience)
            status[stop] = _train.Status.STOPPED
            alive = alive & jnp.asarray(~stop)
        if on_epoch is not None:
            stop = on_epoch(epoch, {k: metrics[k] for k in ("train_loss", "train_acc",
                                                            "val_loss", "val_acc")}, healthy)
            if stop is not None:
                stop = healthy & (status == _train.Status.OK) & np.asarray(stop, bool).reshape(n)
                status[stop] = _train.Status.PRUNED
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
        epochs=epochs_done,
    )
