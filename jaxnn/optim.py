r"""Parameter updates and learning-rate schedules, built on optax.

Every optimizer here is an ``optax.GradientTransformation`` made with
:func:`optax.inject_hyperparams`, so its learning rate (and momentum, and weight decay for
``adamw``) lives in the optimizer *state* and can be read or replaced per step — a vmapped
population gives each member its own value with :func:`set_hyperparam`. All the update math is
optax's.

Example::

    opt = jaxnn.optim.momentum(0.1, momentum=0.9)
    opt_state = opt.init(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    jaxnn.optim.learning_rate(opt_state)  # 0.1

Schedules are optax schedules (``step -> value``). A schedule is a *shape* that multiplies the
learning rate: with ``schedule=s`` the rate at step :math:`t` is

.. math:: \eta_t = \eta \cdot s(t)

where :math:`\eta` is ``learning_rate`` (a number, kept in the state, so a population can give
each member its own :math:`\eta_i` and every member follows the same shape). Build a shape with
value 1, e.g. ``get_schedule("cosine", 1.0, total_steps=T)``. A schedule passed as
``learning_rate`` itself is the same as ``learning_rate=1.0, schedule=that_schedule``.

Example::

    opt = jaxnn.optim.momentum(0.1, schedule=jaxnn.optim.get_schedule("cosine", 1.0,
                                                                      total_steps=100))
    # step t uses 0.1 * (1 + cos(pi t / 100)) / 2
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import optax

from jaxnn import registry as _registry

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
    "entry",
    "get_schedule",
    "schedule_names",
    "REGISTRY",
    "SCHEDULES",
    "learning_rate",
    "set_hyperparam",
    "hyperparam_names",
]

LearningRate = float | Callable[[Any], Any]
Schedule = Callable[[Any], Any]


def _check_lr(learning_rate) -> None:
    if not callable(learning_rate) and not hasattr(learning_rate, "shape"):
        lr = float(learning_rate)
        if not lr > 0 or lr != lr:
            raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}")


def _check_schedule(learning_rate, schedule):
    """``(learning_rate, schedule)`` with a schedule given as the learning rate moved to
    ``schedule`` (the rate 1.0 times it)."""
    _check_lr(learning_rate)
    if callable(learning_rate):
        if schedule is not None:
            raise ValueError("give learning_rate as a number when schedule= is given")
        return 1.0, learning_rate
    if schedule is not None and not callable(schedule):
        raise ValueError(f"schedule must be a function step -> multiplier, got {schedule!r}")
    return learning_rate, schedule


def _with_schedule(factory):
    """``factory`` with a keyword ``schedule`` that multiplies its ``learning_rate``: under
    :func:`optax.inject_hyperparams` both stay in the state (the rate a number, the schedule
    re-evaluated at every step), and the inner rule sees their product."""
    sig = inspect.signature(factory)

    def make(*args, schedule, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.arguments["learning_rate"] = bound.arguments["learning_rate"] * schedule
        return factory(*bound.args, **bound.kwargs)

    schedule_param = inspect.Parameter("schedule", inspect.Parameter.KEYWORD_ONLY)
    make.__signature__ = sig.replace(parameters=[*sig.parameters.values(), schedule_param])
    return make


def _check_momentum(momentum: float) -> float:
    if not 0.0 <= float(momentum) < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    return momentum


def _injected(factory, learning_rate, schedule=None, *, static_args=(), **hyper):
    learning_rate, schedule = _check_schedule(learning_rate, schedule)
    if schedule is None:
        return optax.inject_hyperparams(factory, static_args=static_args)(
            learning_rate=learning_rate, **hyper)
    return optax.inject_hyperparams(_with_schedule(factory), static_args=static_args)(
        learning_rate=learning_rate, schedule=schedule, **hyper)


# --------------------------------------------------------------------------- update rules
def sgd(learning_rate: LearningRate, *, schedule: Schedule | None = None
        ) -> optax.GradientTransformation:
    r"""Vanilla stochastic gradient descent.

    .. math:: w \leftarrow w - \eta \, \nabla_w L

    ``schedule`` (every rule here takes one) multiplies the learning rate step by step: see the
    module docstring.
    """
    return _injected(optax.sgd, learning_rate, schedule)


def momentum(learning_rate: LearningRate, *, momentum: float = 0.9,
             schedule: Schedule | None = None) -> optax.GradientTransformation:
    r"""SGD with (heavy-ball) momentum (:math:`\mu` is injected, so it can vary per member).

    .. math:: v \leftarrow \mu v + \nabla_w L, \qquad w \leftarrow w - \eta v
    """
    return _injected(optax.sgd, learning_rate, schedule, momentum=_check_momentum(momentum))


def nesterov(learning_rate: LearningRate, *, momentum: float = 0.9,
             schedule: Schedule | None = None) -> optax.GradientTransformation:
    r"""SGD with Nesterov momentum (optax's formulation).

    .. math:: v \leftarrow \mu v + g, \qquad w \leftarrow w - \eta (g + \mu v)
    """
    return _injected(optax.sgd, learning_rate, schedule, static_args=("nesterov",),
                     momentum=_check_momentum(momentum), nesterov=True)


def adagrad(
    learning_rate: LearningRate, *, initial_accumulator_value: float = 0.1, eps: float = 1e-7,
    schedule: Schedule | None = None,
) -> optax.GradientTransformation:
    r"""Adagrad: per-parameter steps shrink with the sum of squared gradients.

    .. math:: c \leftarrow c + g^2, \qquad w \leftarrow w - \eta \, g / (\sqrt{c} + \epsilon)
    """
    return _injected(optax.adagrad, learning_rate, schedule,
                     initial_accumulator_value=initial_accumulator_value, eps=eps)


def rmsprop(
    learning_rate: LearningRate, *, decay: float = 0.99, eps: float = 1e-8,
    schedule: Schedule | None = None,
) -> optax.GradientTransformation:
    r"""RMSProp: a leaky average of squared gradients.

    .. math:: c \leftarrow \rho c + (1-\rho) g^2, \qquad w \leftarrow w - \eta \, g / \sqrt{c + \epsilon}
    """
    return _injected(optax.rmsprop, learning_rate, schedule, decay=decay, eps=eps)


def adam(
    learning_rate: LearningRate, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
    schedule: Schedule | None = None,
) -> optax.GradientTransformation:
    r"""Adam: momentum on the gradient and on its square, bias-corrected.

    .. math::
        m \leftarrow \beta_1 m + (1-\beta_1) g, \quad v \leftarrow \beta_2 v + (1-\beta_2) g^2, \quad
        w \leftarrow w - \eta \, \hat m / (\sqrt{\hat v} + \epsilon)
    """
    return _injected(optax.adam, learning_rate, schedule, b1=b1, b2=b2, eps=eps)


def adamw(
    learning_rate: LearningRate,
    *,
    weight_decay: float = 1e-4,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    schedule: Schedule | None = None,
) -> optax.GradientTransformation:
    r"""Adam with decoupled weight decay (the decay is injectable per step like the learning rate).

    .. math:: w \leftarrow w - \eta \, (\hat m / (\sqrt{\hat v} + \epsilon) + \lambda w)
    """
    if float(weight_decay) < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    return _injected(optax.adamw, learning_rate, schedule, weight_decay=weight_decay, b1=b1,
                     b2=b2, eps=eps)


#: The update rules by name (:class:`jaxnn.registry.Registry` of factories
#: ``rule(learning_rate, **options)``); ``REGISTRY.entry(name).options`` lists the options a
#: rule takes (e.g. ``momentum`` for ``momentum`` and ``nesterov``).
REGISTRY: _registry.Registry[_registry.Entry] = _registry.Registry("optimizer", factory=True)
for _rule in (sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw):
    REGISTRY.register(_rule.__name__, _rule)
del _rule


def names() -> tuple[str, ...]:
    """The optimizer names :func:`get` accepts."""
    return REGISTRY.names()


def entry(name: str) -> _registry.Entry:
    """The registry entry of the update rule ``name`` (:class:`jaxnn.registry.Entry`);
    ``entry(name).options`` lists the options it takes."""
    return REGISTRY.entry(name)


def get(name: str, *, learning_rate: LearningRate, **kwargs) -> optax.GradientTransformation:
    """Build an optimizer by name, e.g. ``get("adam", learning_rate=1e-3)``.

    Raises:
      ValueError: an unknown name (the message lists :func:`names`) or an option the rule does
        not take.
    """
    return REGISTRY.get(name, learning_rate, **kwargs)


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


#: The schedules by name, as :func:`get_schedule` builds them: factories
#: ``(value, *, total_steps) -> schedule`` with defaults fitted to a run of ``total_steps``.
SCHEDULES: _registry.Registry[_registry.Entry] = _registry.Registry("schedule", factory=True)
SCHEDULES.register("constant", lambda value, *, total_steps: constant(value))
SCHEDULES.register("step_decay", lambda value, *, total_steps: step_decay(
    value, step_size=max(1, total_steps // 3)))
SCHEDULES.register("exponential_decay", lambda value, *, total_steps: exponential_decay(
    value, decay_steps=max(1, total_steps)))
SCHEDULES.register("cosine", lambda value, *, total_steps: cosine(
    value, decay_steps=max(1, total_steps)))
SCHEDULES.register("warmup_cosine", lambda value, *, total_steps: warmup_cosine(
    value, decay_steps=max(2, total_steps)))


def schedule_names() -> tuple[str, ...]:
    """The schedule names :func:`get_schedule` accepts."""
    return SCHEDULES.names()


def get_schedule(name: str, value: float, *, total_steps: int) -> optax.Schedule:
    """A schedule by name with defaults fitted to a run of ``total_steps`` steps.

    ``step_decay`` halves the rate at each third of the run, ``exponential_decay`` reaches a tenth
    at the end, ``cosine`` decays to 0 at the end, ``warmup_cosine`` warms up over the first 5%.

    Raises:
      ValueError: an unknown name (the message lists :func:`schedule_names`).
    """
    return SCHEDULES.get(name, value, total_steps=total_steps)


# --------------------------------------------------------------------------- injected state
def _hyperparams(opt_state) -> dict:
    """The injected hyperparameters of ``opt_state`` (the one ``hyperparams`` dict in it)."""
    try:
        hp = optax.tree_utils.tree_get(opt_state, "hyperparams")
    except KeyError:  # several: a chain of injected transformations
        raise ValueError("opt_state carries several injected hyperparameter sets; jaxnn "
                         "optimizers carry one") from None
    if not isinstance(hp, dict):
        raise ValueError("opt_state carries no injected hyperparameters; build it with jaxnn.optim")
    return hp


def learning_rate(opt_state) -> jnp.ndarray:
    r"""The learning rate in force at the last update (or the initial one before any):
    :math:`\eta \cdot s(t)` with a schedule, :math:`\eta` without."""
    hp = _hyperparams(opt_state)
    lr = hp["learning_rate"]
    return lr * hp["schedule"] if "schedule" in hp else lr


def set_hyperparam(opt_state, name: str, value):
    """Return ``opt_state`` with the injected hyperparameter ``name`` replaced by ``value`` (cast
    to the stored dtype).

    Works under ``jit`` and ``vmap`` (a population sets one value per member). With a schedule,
    ``learning_rate`` is the rate the schedule multiplies; the schedule's own value is recomputed
    at every step and cannot be replaced.
    """
    hp = _hyperparams(opt_state)
    if name not in hp or name == "schedule":
        raise ValueError(f"opt_state has no injected hyperparameter {name!r}; it has "
                         f"{sorted(k for k in hp if k != 'schedule')}")
    new = {**hp, name: jnp.asarray(value, hp[name].dtype)}
    return optax.tree_utils.tree_set(opt_state, hyperparams=new)


def hyperparam_names(optimizer: optax.GradientTransformation) -> tuple[str, ...]:
    """The hyperparameters :func:`set_hyperparam` can replace in ``optimizer``'s state, e.g.
    ``("learning_rate", "momentum")`` for :func:`momentum`."""
    state = optimizer.init({"w": jnp.zeros((1,), jnp.float32)})
    return tuple(k for k in _hyperparams(state) if k != "schedule")
