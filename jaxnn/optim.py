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

import jax
import jax.numpy as jnp
import numpy as np
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


# --------------------------------------------------------------------------- checks
# Every hyperparameter is checked where its value is known: a Python or numpy number, or a
# concrete array (each element; a population may give one value per member). A traced value
# (inside jit/vmap, e.g. jaxnn.population injecting per-member values) is not known at trace time
# and passes; jaxnn.population checks its per-member values before tracing.
_UNIT = (lambda v: (v >= 0) & (v < 1), "a number in [0, 1)")
_NON_NEGATIVE = (lambda v: v >= 0, "a finite number >= 0")
_POSITIVE = (lambda v: v > 0, "a finite number > 0")

#: The rule of each injectable hyperparameter: ``(ok(values), what is expected)``.
_RULES: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str]] = {
    "learning_rate": _NON_NEGATIVE,
    "momentum": _UNIT,
    "b1": _UNIT,
    "b2": _UNIT,
    "decay": _UNIT,
    "eps": _POSITIVE,
    "weight_decay": _NON_NEGATIVE,
    "initial_accumulator_value": _NON_NEGATIVE,
}


def _host_values(value) -> np.ndarray | None:
    """The values of a concrete hyperparameter as numpy, or None when traced."""
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        return None
    return np.asarray(value)


def _check_value(fn: str, arg: str, value, ok, expected: str):
    """``value`` unchanged if every concrete element is a finite real number for which ``ok``
    holds; else ``ValueError`` naming ``fn``'s ``arg`` and what it expects. Traced values pass."""
    values = _host_values(value)
    if values is None:
        return value
    numeric = values.dtype != np.bool_ and (np.issubdtype(values.dtype, np.integer)
                                            or np.issubdtype(values.dtype, np.floating))
    if not numeric or isinstance(value, bool):
        raise ValueError(f"{fn}: {arg} must be {expected}, got {value!r}")
    v = values.astype(np.float64)
    with np.errstate(invalid="ignore"):
        good = np.isfinite(v) & ok(v)
    if not np.all(good):
        bad = v[~good].flat[0] if v.ndim else v
        raise ValueError(f"{fn}: {arg} must be {expected}, got {_fmt(value, bad)}")
    return value


def _fmt(value, bad) -> str:
    return repr(value) if np.ndim(value) == 0 else f"{float(bad)!r} (in {np.shape(value)} values)"


def _check_hyper(fn: str, name: str, value):
    ok, expected = _RULES[name]
    return _check_value(fn, name, value, ok, expected)


def _check_steps(fn: str, arg: str, value, minimum: int = 1) -> int:
    """A whole number of steps ``>= minimum`` (Python or numpy int, not bool or float)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer) or (
            value < minimum):
        raise ValueError(f"{fn}: {arg} must be a whole number of steps >= {minimum}, got "
                         f"{value!r}")
    return int(value)


def _check_lr(learning_rate, fn: str = "optimizer") -> None:
    if not callable(learning_rate):
        _check_hyper(fn, "learning_rate", learning_rate)


def _check_schedule(learning_rate, schedule, fn: str = "optimizer"):
    """``(learning_rate, schedule)`` with a schedule given as the learning rate moved to
    ``schedule`` (the rate 1.0 times it)."""
    _check_lr(learning_rate, fn)
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


def _injected(fn: str, factory, learning_rate, schedule=None, *, static_args=(), **hyper):
    """``factory`` under :func:`optax.inject_hyperparams`, every hyperparameter checked first
    (``fn`` names the rule in the messages)."""
    learning_rate, schedule = _check_schedule(learning_rate, schedule, fn)
    for name, value in hyper.items():
        if name in _RULES:
            _check_hyper(fn, name, value)
    # optax injects Python numbers and arrays; a numpy scalar (np.float32(0.1)) would be kept
    # static, so a population could not set it per member.
    scalar = lambda v: float(v) if isinstance(v, np.floating | np.integer) else v  # noqa: E731
    learning_rate, hyper = scalar(learning_rate), {k: scalar(v) for k, v in hyper.items()}
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
    return _injected("sgd", optax.sgd, learning_rate, schedule)


def momentum(learning_rate: LearningRate, *, momentum: float = 0.9,
             schedule: Schedule | None = None) -> optax.GradientTransformation:
    r"""SGD with (heavy-ball) momentum (:math:`\mu` is injected, so it can vary per member).

    .. math:: v \leftarrow \mu v + \nabla_w L, \qquad w \leftarrow w - \eta v
    """
    return _injected("momentum", optax.sgd, learning_rate, schedule, momentum=momentum)


def nesterov(learning_rate: LearningRate, *, momentum: float = 0.9,
             schedule: Schedule | None = None) -> optax.GradientTransformation:
    r"""SGD with Nesterov momentum (optax's formulation).

    .. math:: v \leftarrow \mu v + g, \qquad w \leftarrow w - \eta (g + \mu v)
    """
    return _injected("nesterov", optax.sgd, learning_rate, schedule, static_args=("nesterov",),
                     momentum=momentum, nesterov=True)


def adagrad(
    learning_rate: LearningRate, *, initial_accumulator_value: float = 0.1, eps: float = 1e-7,
    schedule: Schedule | None = None,
) -> optax.GradientTransformation:
    r"""Adagrad: per-parameter steps shrink with the sum of squared gradients.

    .. math:: c \leftarrow c + g^2, \qquad w \leftarrow w - \eta \, g / (\sqrt{c} + \epsilon)
    """
    return _injected("adagrad", optax.adagrad, learning_rate, schedule,
                     initial_accumulator_value=initial_accumulator_value, eps=eps)


def rmsprop(
    learning_rate: LearningRate, *, decay: float = 0.99, eps: float = 1e-8,
    schedule: Schedule | None = None,
) -> optax.GradientTransformation:
    r"""RMSProp: a leaky average of squared gradients.

    .. math:: c \leftarrow \rho c + (1-\rho) g^2, \qquad w \leftarrow w - \eta \, g / \sqrt{c + \epsilon}
    """
    return _injected("rmsprop", optax.rmsprop, learning_rate, schedule, decay=decay, eps=eps)


def adam(
    learning_rate: LearningRate, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
    schedule: Schedule | None = None,
) -> optax.GradientTransformation:
    r"""Adam: momentum on the gradient and on its square, bias-corrected.

    .. math::
        m \leftarrow \beta_1 m + (1-\beta_1) g, \quad v \leftarrow \beta_2 v + (1-\beta_2) g^2, \quad
        w \leftarrow w - \eta \, \hat m / (\sqrt{\hat v} + \epsilon)
    """
    return _injected("adam", optax.adam, learning_rate, schedule, b1=b1, b2=b2, eps=eps)


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
    return _injected("adamw", optax.adamw, learning_rate, schedule, weight_decay=weight_decay,
                     b1=b1, b2=b2, eps=eps)


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
def _check_value_arg(fn: str, value):
    """A schedule's ``value`` (a learning rate or a multiplier of one): finite, >= 0."""
    return _check_value(fn, "value", value, *_NON_NEGATIVE)


_DECAY_RATE = (lambda v: (v > 0) & (v <= 1), "a number in (0, 1] (the factor per period)")
_FRACTION = (lambda v: (v >= 0) & (v <= 1), "a number in [0, 1]")


def constant(value: float) -> optax.Schedule:
    r"""A constant learning rate: :math:`\eta_t = \eta_0`."""
    _check_value_arg("constant", value)
    return optax.constant_schedule(value)


def step_decay(value: float, *, step_size: int, decay_rate: float = 0.5) -> optax.Schedule:
    r"""Step decay: multiply by ``decay_rate`` every ``step_size`` steps.

    .. math:: \eta_t = \eta_0 \cdot r^{\lfloor t / s \rfloor}

    ``decay_rate`` is in ``(0, 1]`` (a negative rate would flip the sign of every other period's
    rate, one above 1 grow it without bound); ``step_size`` is a whole number ``>= 1``.
    """
    _check_value_arg("step_decay", value)
    step_size = _check_steps("step_decay", "step_size", step_size)
    _check_value("step_decay", "decay_rate", decay_rate, *_DECAY_RATE)
    return optax.exponential_decay(value, step_size, decay_rate, staircase=True)


def exponential_decay(value: float, *, decay_steps: int, decay_rate: float = 0.1) -> optax.Schedule:
    r"""Smooth exponential decay.

    .. math:: \eta_t = \eta_0 \cdot r^{t / T}

    ``decay_rate`` is in ``(0, 1]``; ``decay_steps`` is a whole number ``>= 1``.
    """
    _check_value_arg("exponential_decay", value)
    decay_steps = _check_steps("exponential_decay", "decay_steps", decay_steps)
    _check_value("exponential_decay", "decay_rate", decay_rate, *_DECAY_RATE)
    return optax.exponential_decay(value, decay_steps, decay_rate)


def cosine(value: float, *, decay_steps: int, alpha: float = 0.0) -> optax.Schedule:
    r"""Cosine decay to ``alpha * value`` over ``decay_steps`` (``alpha`` in ``[0, 1]``).

    .. math:: \eta_t = \eta_0 \left(\alpha + (1-\alpha)\tfrac12 (1 + \cos(\pi \min(t,T)/T))\right)
    """
    _check_value_arg("cosine", value)
    decay_steps = _check_steps("cosine", "decay_steps", decay_steps)
    _check_value("cosine", "alpha", alpha, *_FRACTION)
    return optax.cosine_decay_schedule(value, decay_steps, alpha)


def warmup_cosine(
    value: float, *, decay_steps: int, warmup_steps: int | None = None, end_value: float = 0.0
) -> optax.Schedule:
    r"""Linear warm-up from 0 to ``value`` over ``warmup_steps`` (default 5% of the run), then
    cosine decay to ``end_value`` at ``decay_steps`` (the total number of steps).

    ``decay_steps >= 2`` and ``0 <= warmup_steps < decay_steps`` are whole numbers; ``end_value``
    is a finite number ``>= 0``."""
    _check_value_arg("warmup_cosine", value)
    decay_steps = _check_steps("warmup_cosine", "decay_steps", decay_steps, 2)
    if warmup_steps is None:
        warmup_steps = max(1, decay_steps // 20)
    warmup_steps = _check_steps("warmup_cosine", "warmup_steps", warmup_steps, 0)
    if warmup_steps >= decay_steps:
        raise ValueError(f"warmup_cosine: warmup_steps must be below decay_steps "
                         f"({decay_steps}), got {warmup_steps}")
    _check_value("warmup_cosine", "end_value", end_value, *_NON_NEGATIVE)
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
    total_steps = _check_steps("get_schedule", "total_steps", total_steps)
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
    if name in _RULES:  # checked where concrete; a traced (per-member) value passes
        _check_hyper("set_hyperparam", name, value)
    new = {**hp, name: jnp.asarray(value, hp[name].dtype)}
    return optax.tree_utils.tree_set(opt_state, hyperparams=new)


def hyperparam_names(optimizer: optax.GradientTransformation) -> tuple[str, ...]:
    """The hyperparameters :func:`set_hyperparam` can replace in ``optimizer``'s state, e.g.
    ``("learning_rate", "momentum")`` for :func:`momentum`."""
    state = optimizer.init({"w": jnp.zeros((1,), jnp.float32)})
    return tuple(k for k in _hyperparams(state) if k != "schedule")
