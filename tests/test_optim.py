"""jaxnn.optim against optax built directly and against the schedule formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnn import optim

REFERENCES = {
    "sgd": lambda lr: optax.sgd(lr),
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "nesterov": lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
    "adagrad": lambda lr: optax.adagrad(lr),
    "rmsprop": lambda lr: optax.rmsprop(lr, decay=0.99),
    "adam": lambda lr: optax.adam(lr),
    "adamw": lambda lr: optax.adamw(lr, weight_decay=1e-4),
}


def test_registry_covers_every_rule():
    assert set(optim.names()) == set(REFERENCES)
    for name in optim.__all__:
        assert hasattr(optim, name)


def _run(opt, params, steps=4):
    state = opt.init(params)
    for i in range(steps):
        grads = jax.tree.map(lambda p, i=i: jnp.sin(p * (i + 1)), params)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


@pytest.mark.parametrize("name", list(REFERENCES))
def test_update_rules_equal_optax(name):
    params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.array([0.5, -0.2])}
    ours, state = _run(optim.get(name, learning_rate=0.05), params)
    ref, _ = _run(REFERENCES[name](0.05), params)
    # Injected hyperparameters are float32 arrays (b2=0.999 rounds), hence not bit-equal.
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert float(optim.learning_rate(state)) == pytest.approx(0.05)


def test_learning_rate_can_be_set_per_member_under_vmap():
    opt = optim.sgd(1.0)
    params = {"w": jnp.ones(3)}
    lrs = jnp.array([0.1, 0.2, 0.3])

    def one(lr):
        state = optim.set_hyperparam(opt.init(params), "learning_rate", lr)
        updates, _ = opt.update({"w": jnp.ones(3)}, state, params)
        return updates["w"]

    out = jax.vmap(one)(lrs)
    np.testing.assert_allclose(out, -lrs[:, None] * np.ones((3, 3)), rtol=1e-6)
    with pytest.raises(ValueError, match="no injected"):
        optim.set_hyperparam(opt.init(params), "nope", 1.0)


def test_weight_decay_is_injectable():
    opt = optim.adamw(0.1, weight_decay=0.5)
    state = optim.set_hyperparam(opt.init({"w": jnp.ones(2)}), "weight_decay", 0.0)
    updates, _ = opt.update({"w": jnp.zeros(2)}, state, {"w": jnp.ones(2)})
    np.testing.assert_allclose(updates["w"], 0.0, atol=1e-7)


def test_bad_arguments():
    with pytest.raises(ValueError, match="learning_rate"):
        optim.sgd(-1.0)
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.get("lbfgs", learning_rate=0.1)
    with pytest.raises(ValueError, match="unknown schedule"):
        optim.get_schedule("warm", 0.1, total_steps=10)
    with pytest.raises(ValueError, match="weight_decay"):
        optim.adamw(0.1, weight_decay=-1.0)


def test_schedules_match_formulas():
    steps = np.arange(0, 100)
    step = optim.step_decay(1.0, step_size=10, decay_rate=0.5)
    np.testing.assert_allclose([step(t) for t in steps], 0.5 ** (steps // 10), rtol=1e-6)
    exp = optim.exponential_decay(2.0, decay_steps=50, decay_rate=0.1)
    np.testing.assert_allclose([exp(t) for t in steps], 2.0 * 0.1 ** (steps / 50), rtol=1e-5)
    cos = optim.cosine(1.0, decay_steps=100, alpha=0.1)
    ref = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * steps / 100))
    np.testing.assert_allclose([cos(t) for t in steps], ref, rtol=1e-5)
    wc = optim.warmup_cosine(1.0, decay_steps=100, warmup_steps=10)
    assert float(wc(0)) == 0.0 and float(wc(5)) == pytest.approx(0.5)
    assert float(wc(10)) == pytest.approx(1.0)
    assert float(wc(100)) == pytest.approx(0.0, abs=1e-6)
    assert float(optim.constant(0.3)(1234)) == pytest.approx(0.3)


def test_schedule_drives_the_injected_learning_rate():
    opt = optim.sgd(optim.get_schedule("cosine", 1.0, total_steps=10))
    params = {"w": jnp.zeros(1)}
    state = opt.init(params)
    seen = []
    for _ in range(3):
        _, state = opt.update({"w": jnp.ones(1)}, state, params)
        seen.append(float(optim.learning_rate(state)))
    np.testing.assert_allclose(seen, [0.5 * (1 + math.cos(math.pi * t / 10)) for t in range(3)],
                               rtol=1e-6)


# --------------------------------------------------------------------------- trust, round two
# Cause: only the learning rate's sign, momentum and adamw's weight_decay sign were checked, so
# adam(eps=-1) stepped uphill near zero gradients, step_decay(decay_rate=-1) flipped the sign of
# the rate, sgd(inf) and adamw(weight_decay=nan) gave NaN parameters a step later. Every
# hyperparameter is now checked where its value is known (numbers and concrete arrays).
NAN, INF = float("nan"), float("inf")
BAD = [
    (lambda: optim.sgd(INF), "sgd: learning_rate"),
    (lambda: optim.sgd(NAN), "sgd: learning_rate"),
    (lambda: optim.sgd(-0.1), "sgd: learning_rate"),
    (lambda: optim.sgd(True), "sgd: learning_rate"),
    (lambda: optim.sgd("0.1"), "sgd: learning_rate"),
    (lambda: optim.sgd(np.array([0.1, -0.2], np.float32)), "sgd: learning_rate"),
    (lambda: optim.sgd(jnp.array([0.1, NAN])), "sgd: learning_rate"),
    (lambda: optim.momentum(0.1, momentum=1.0), "momentum: momentum"),
    (lambda: optim.nesterov(0.1, momentum=-0.5), "nesterov: momentum"),
    (lambda: optim.adagrad(0.1, eps=0.0), "adagrad: eps"),
    (lambda: optim.adagrad(0.1, initial_accumulator_value=-1.0), "adagrad: initial_accumul"),
    (lambda: optim.rmsprop(0.1, decay=2.0), "rmsprop: decay"),
    (lambda: optim.rmsprop(0.1, eps=INF), "rmsprop: eps"),
    (lambda: optim.adam(0.1, eps=-1.0), "adam: eps"),
    (lambda: optim.adam(0.1, b1=NAN), "adam: b1"),
    (lambda: optim.adam(0.1, b2=1.0), "adam: b2"),
    (lambda: optim.adamw(0.1, weight_decay=NAN), "adamw: weight_decay"),
    (lambda: optim.adamw(0.1, weight_decay=INF), "adamw: weight_decay"),
    (lambda: optim.get("adam", learning_rate=0.1, eps=-1.0), "adam: eps"),
    (lambda: optim.constant(INF), "constant: value"),
    (lambda: optim.step_decay(1.0, step_size=3, decay_rate=-1.0), "step_decay: decay_rate"),
    (lambda: optim.step_decay(1.0, step_size=3, decay_rate=0.0), "step_decay: decay_rate"),
    (lambda: optim.step_decay(1.0, step_size=3, decay_rate=2.0), "step_decay: decay_rate"),
    (lambda: optim.step_decay(1.0, step_size=2.5), "step_decay: step_size"),
    (lambda: optim.step_decay(-1.0, step_size=3), "step_decay: value"),
    (lambda: optim.exponential_decay(1.0, decay_steps=10, decay_rate=NAN), "exponential_decay"),
    (lambda: optim.exponential_decay(1.0, decay_steps=True), "exponential_decay: decay_steps"),
    (lambda: optim.cosine(1.0, decay_steps=10, alpha=1.5), "cosine: alpha"),
    (lambda: optim.cosine(NAN, decay_steps=10), "cosine: value"),
    (lambda: optim.warmup_cosine(1.0, decay_steps=10, warmup_steps=10), "warmup_steps"),
    (lambda: optim.warmup_cosine(1.0, decay_steps=10, warmup_steps=-1), "warmup_steps"),
    (lambda: optim.warmup_cosine(1.0, decay_steps=10, end_value=-1.0), "end_value"),
    (lambda: optim.get_schedule("cosine", 1.0, total_steps=0), "total_steps"),
    (lambda: optim.set_hyperparam(optim.adam(0.1).init({"w": jnp.ones(2)}), "eps", -1.0),
     "set_hyperparam: eps"),
]


@pytest.mark.parametrize("make, match", BAD, ids=[m for _, m in BAD])
def test_every_hyperparameter_is_checked_eagerly(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_hyperparameters_stay_injectable_as_arrays():
    # Concrete per-member arrays are checked element by element and accepted when valid; traced
    # values (a vmapped population) are not known at trace time and pass through.
    params = {"w": jnp.ones(2)}
    lrs = jnp.array([0.0, 0.1, 0.2])
    opt = optim.adamw(lrs[1], weight_decay=np.float32(1e-3), eps=jnp.array(1e-8))
    assert float(optim.learning_rate(opt.init(params))) == pytest.approx(0.1)

    def member(lr, wd):
        state = optim.set_hyperparam(opt.init(params), "learning_rate", lr)
        state = optim.set_hyperparam(state, "weight_decay", wd)
        updates, _ = opt.update({"w": jnp.zeros(2)}, state, params)
        return updates["w"]

    out = jax.vmap(member)(lrs, jnp.full(3, 0.5))
    np.testing.assert_allclose(out, -(lrs * 0.5)[:, None] * np.ones((3, 2)), rtol=1e-6)
    assert optim.step_decay(1.0, step_size=np.int64(3))(3) == pytest.approx(0.5)
