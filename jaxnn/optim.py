"""Parameter updates and learning-rate schedules, built on optax.

Every optimizer here is an ``optax.GradientTransformation`` made with
:func:`optax.inject_hyperparams`, so its learning rate (and weight decay, for ``adamw``) lives in the
optimizer *state* and can be read or replaced per step — a vmapped population gives each member its
own value with :func:`set_hyperparam`. All the update math is optax's.

Example::

    opt = jaxnn.optim.momentum(0.1, momentum=0.9)
    opt_state = opt.init(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    jaxnn.optim.learning_rate(opt_state)  # 0.1

Schedules are optax schedules (``step -> value``) and may be passed wherever a learning rate is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import optax

__all__ = [
    "sgd",
    "momentum",
    "nesterov",
    "adagrad",
    "rmsprop",
    "adam",
    "adamw",
    "constant",
    "step_decay",
    "exponential_decay",
    "cosine",
    "warmup_cosine",
    "get",
    "names",
    "get_schedule",
    "schedule_names",
    "learning_rate",
    "set_hyperparam",
]

LearningRate = float | Callable[[Any], Any]


def _check_lr(learning_rate) -> None:
    if not callable(learning_rate) and not hasattr(learning_rate, "shape"):
        lr = float(learning_rate)
        if not lr > 0 or lr != lr:
            raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}")


def _injected(factory, learning_rate, **hyper):
    _check_lr(learning_rate)
    return optax.inject_hyperparams(factory)(learning_rate=learning_rate, **hyper)


# --------------------------------------------------------------------------- update rules
def sgd(learning_rate: LearningRate) -> optax.GradientTransformation:
    r"""Vanilla stochastic gradient descent.

    .. math:: w \leftarrow w - \eta \, \nabla_w L
    """
    return _injected(optax.sgd, learning_rate)


def momentum(learning_rate: LearningRate, *, momentum: float = 0.9) -> optax.GradientTransformation:
    r"""SGD with (heavy-ball) momentum.

    .. math:: v \leftarrow \mu v + \nabla_w L, \qquad w \leftarrow w - \eta v
    """
    return _injected(optax.sgd, learning_rate, momentum=momentum)


def nesterov(learning_rate: LearningRate, *, momentum: float = 0.9) -> optax.GradientTransformation:
    r"""SGD with Nesterov momentum (optax's formulation).

    .. math:: v \leftarrow \mu v + g, \qquad w \leftarrow w - \eta (g + \mu v)
    """
    _check_lr(learning_rate)
    return optax.inject_hyperparams(optax.sgd, static_args=("nesterov",))(
        learning_rate=learning_rate, momentum=momentum, nesterov=True
    )


def adagrad(
    learning_rate: LearningRate, *, initial_accumulator_value: float = 0.1, eps: float = 1e-7
) -> optax.GradientTransformation:
    r"""Adagrad: per-parameter steps shrink with the sum of squared gradients.

    .. math:: c \leftarrow c + g^2, \qquad w \leftarrow w - \eta \, g / (\sqrt{c} + \epsilon)
    """
    return _injected(
        optax.adagrad, learning_rate, initial_accumulator_value=initial_accumulator_value, eps=eps
    )


def rmsprop(
    learning_rate: LearningRate, *, decay: float = 0.99, eps: float = 1e-8
) -> optax.GradientTransformation:
    r"""RMSProp: a leaky average of squared gradients.

    .. math:: c \leftarrow \rho c + (1-\rho) g^2, \qquad w \leftarrow w - \eta \, g / \sqrt{c + \epsilon}
    """
    return _injected(optax.rmsprop, learning_rate, decay=decay, eps=eps)


def adam(
    learning_rate: LearningRate, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    r"""Adam: momentum on the gradient and on its square, bias-corrected.

    .. math::
        m \leftarrow \beta_1 m + (1-\beta_1) g, \quad v \leftarrow \beta_2 v + (1-\beta_2) g^2, \quad
        w \leftarrow w - \eta \, \hat m / (\sqrt{\hat v} + \epsilon)
    """
    return _injected(optax.adam, learning_rate, b1=b1, b2=b2, eps=eps)


def adamw(
    learning_rate: LearningRate,
    *,
    weight_decay: float = 1e-4,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    r"""Adam with decoupled weight decay (the decay is injectable per step like the learning rate).

    .. math:: w \leftarrow w - \eta \, (\hat m / (\sqrt{\hat v} + \epsilon) + \lambda w)
    """
    if float(weight_decay) < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    return _injected(optax.adamw, learning_rate, weight_decay=weight_decay, b1=b1, b2=b2, eps=eps)


_OPTIMIZERS = {
    "sgd": sgd,
    "momentum": momentum,
    "nesterov": nesterov,
    "adagrad": adagrad,
    "rmsprop": rmsprop,
    "adam": adam,
    "adamw": adamw,
}


def names() -> list[str]:
    """The optimizer names :func:`get` accepts."""
    return list(_OPTIMIZERS)


def get(name: str, *, learning_rate: LearningRate, **kwargs) -> optax.GradientTransformation:
    """Build an optimizer by name, e.g. ``get("adam", learning_rate=1e-3)``."""
    if name not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(_OPTIMIZERS)}")
    return _OPTIMIZERS[name](learning_rate, **kwargs)


# --------------------------------------------------------------------------- schedules
def constant(value: float) -> optax.Schedule:
    r"""A constant learning rate: :math:`\eta_t = \eta_0`."""
    return optax.constant_schedule(value)


def step_decay(value: float, *, step_size: int, decay_rate: float = 0.5) -> optax.Schedule:
    r"""Step decay: multiply by ``decay_rate`` every ``step_size`` steps.

    .. math:: \eta_t = \eta_0 \cdot r^{\lfloor t / s \rfloor}
    """
    if step_size < 1:
        raise ValueError(f"step_size must be >= 1, got {step_size}")
    return optax.exponential_decay(value, step_size, decay_rate, staircase=True)


def exponential_decay(value: float, *, decay_steps: int, decay_rate: float = 0.1) -> optax.Schedule:
    r"""Smooth exponential decay.

    .. math:: \eta_t = \eta_0 \cdot r^{t / T}
    """
    if decay_steps < 1:
        raise ValueError(f"decay_steps must be >= 1, got {decay_steps}")
    return optax.exponential_decay(value, decay_steps, decay_rate)


def cosine(value: float, *, decay_steps: int, alpha: float = 0.0) -> optax.Schedule:
    r"""Cosine decay to ``alpha * value`` over ``decay_steps``.

    .. math:: \eta_t = \eta_0 \left(\alpha + (1-\alpha)\tfrac12 (1 + \cos(\pi \min(t,T)/T))\right)
    """
    if decay_steps < 1:
        raise ValueError(f"decay_steps must be >= 1, got {decay_steps}")
    return optax.cosine_decay_schedule(value, decay_steps, alpha)


def warmup_cosine(
    value: float, *, decay_steps: int, warmup_steps: int | None = None, end_value: float = 0.0
) -> optax.Schedule:
    r"""Linear warm-up from 0 to ``value`` over ``warmup_steps`` (default 5% of the run), then
    cosine decay to ``end_value`` at ``decay_steps`` (the total number of steps)."""
    if decay_steps < 2:
        raise ValueError(f"decay_steps must be >= 2, got {decay_steps}")
    if warmup_steps is None:
        warmup_steps = max(1, decay_steps // 20)
    return optax.warmup_cosine_decay_schedule(0.0, value, warmup_steps, decay_steps, end_value)


_SCHEDULES = {
    "constant": lambda value, total_steps: constant(value),
    "step_decay": lambda value, total_steps: step_decay(value, step_size=max(1, total_steps // 3)),
    "exponential_decay": lambda value, total_steps: exponential_decay(
        value, decay_steps=max(1, total_steps)
    ),
    "cosine": lambda value, total_steps: cosine(value, decay_steps=max(1, total_steps)),
    "warmup_cosine": lambda value, total_steps: warmup_cosine(
        value, decay_steps=max(2, total_steps)
    ),
}


def schedule_names() -> list[str]:
    """The schedule names :func:`get_schedule` accepts."""
    return list(_SCHEDULES)


def get_schedule(name: str, value: float, *, total_steps: int) -> optax.Schedule:
    """A schedule by name with defaults fitted to a run of ``total_steps`` steps.

    ``step_decay`` halves the rate at each third of the run, ``exponential_decay`` reaches a tenth
    at the end, ``cosine`` decays to 0 at the end, ``warmup_cosine`` warms up over the first 5%.
    """
    if name not in _SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid names: {', '.join(_SCHEDULES)}")
    return _SCHEDULES[name](value, total_steps)


# --------------------------------------------------------------------------- injected state
def _hyperparams_state(opt_state):
    """The ``InjectHyperparamsState`` inside ``opt_state`` (searched through chains)."""
    if hasattr(opt_state, "hyperparams"):
        return opt_state
    if isinstance(opt_state, tuple):
        for s in opt_state:
            found = _hyperparams_state(s)
            if found is not None:
                return found
    return None


def learning_rate(opt_state) -> jnp.ndarray:
    """The learning rate in force at the last update (or the initial one before any)."""
    hp = _hyperparams_state(opt_state)
    if hp is None:
        raise ValueError("opt_state carries no injected hyperparameters; build it with jaxnn.optim")
    return hp.hyperparams["learning_rate"]


def set_hyperparam(opt_state, name: str, value):
    """Return ``opt_state`` with the injected hyperparameter ``name`` replaced by ``value``.

    Works under ``jit`` and ``vmap`` (a population sets one value per member). Only constant
    hyperparameters can be replaced: one given as a schedule is recomputed at every step.
    """
    hp = _hyperparams_state(opt_state)
    if hp is None or name not in hp.hyperparams:
        raise ValueError(f"opt_state has no injected hyperparameter {name!r}")
    new_hp = hp._replace(
        hyperparams={**hp.hyperparams, name: jnp.asarray(value, hp.hyperparams[name].dtype)}
    )
    if opt_state is hp:
        return new_hp

    def _swap(s):
        if s is hp:
            return new_hp
        if isinstance(s, tuple) and not hasattr(s, "_fields"):
            return tuple(_swap(t) for t in s)
        if isinstance(s, tuple):
            return type(s)(*(_swap(t) for t in s))
        return s

    return _swap(opt_state)
