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
