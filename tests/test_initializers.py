"""Tests for jaxnn.initializers: equality with jax.nn.initializers, variances, errors, registry."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import initializers as I

jinit = jax.nn.initializers

# name -> (ours via get(name), jax's equivalent), default options.
EQUIVALENTS = {
    "zeros": jinit.zeros,
    "ones": jinit.ones,
    "normal": jinit.normal(),
    "uniform": jinit.uniform(),
    "lecun_normal": jinit.lecun_normal(),
    "lecun_uniform": jinit.lecun_uniform(),
    "glorot_normal": jinit.glorot_normal(),
    "glorot_uniform": jinit.glorot_uniform(),
    "xavier_normal": jinit.xavier_normal(),
    "xavier_uniform": jinit.xavier_uniform(),
    "he_normal": jinit.he_normal(),
    "he_uniform": jinit.he_uniform(),
    "kaiming_normal": jinit.kaiming_normal(),
    "kaiming_uniform": jinit.kaiming_uniform(),
    "orthogonal": jinit.orthogonal(),
}

# Factories with options: (ours, jax's).
WITH_OPTIONS = [
    ("constant", I.constant(0.3), jinit.constant(0.3)),
    ("normal_1", I.normal(1.0), jinit.normal(1.0)),
    ("uniform_2", I.uniform(2.0), jinit.uniform(2.0)),
    (
        "vs_fan_out_uniform",
        I.variance_scaling(0.7, "fan_out", "uniform"),
        jinit.variance_scaling(0.7, "fan_out", "uniform"),
    ),
    (
        "vs_geo_normal_axes",
        I.variance_scaling(3.0, "fan_geo_avg", "normal", in_axis=0, out_axis=1),
        jinit.variance_scaling(3.0, "fan_geo_avg", "normal", in_axis=0, out_axis=1),
    ),
    (
        "he_normal_axes",
        I.he_normal(in_axis=(0, 1), out_axis=-1),
        jinit.he_normal(in_axis=(0, 1), out_axis=-1),
    ),
    ("orthogonal_1.5_col0", I.orthogonal(1.5, column_axis=0), jinit.orthogonal(1.5, column_axis=0)),
]

SMALL, CONV = (4, 6), (3, 3, 32, 64)
FAN_IN, FAN_OUT = 400, 600
BIG = (FAN_IN, FAN_OUT)


# Random initializers compile a sampler per (distribution, shape, dtype); compiling every
# initializer of a test batch together in one jit (and caching the result) keeps this file fast.
# The batches use the "rbg" PRNG, whose samplers compile faster than threefry's; the initializers
# are agnostic to the key's implementation (test_default_key_matches_jax covers threefry).
def _rbg_key(seed):
    return jax.random.key(seed, impl="rbg")


@functools.cache
def _registry_outputs(shape, dtype):
    def all_names(key):
        return {
            name: (I.get(name)(key, shape, dtype), EQUIVALENTS[name](key, shape, dtype))
            for name in EQUIVALENTS
            if name != "orthogonal" or dtype == jnp.float32
        }

    return jax.device_get(jax.jit(all_names)(_rbg_key(0)))


@functools.cache
def _options_outputs(shape):
    def all_options(key):
        return {
            name: (ours(key, shape), theirs(key, shape, jnp.float32))
            for name, ours, theirs in WITH_OPTIONS
        }

    return jax.device_get(jax.jit(all_options)(_rbg_key(0)))


def test_every_registered_name_has_a_jax_equivalent():
    assert set(I.names()) == set(EQUIVALENTS) | {"constant", "variance_scaling"}


SHAPES_DTYPES = [(shape, dtype) for shape in (SMALL, CONV)
                 for dtype in (jnp.float32, jnp.bfloat16, jnp.float16)]


@pytest.mark.parametrize("shape,dtype", SHAPES_DTYPES,
                         ids=[f"{'conv' if s == CONV else 'dense'}-{jnp.dtype(d).name}"
                              for s, d in SHAPES_DTYPES])
@pytest.mark.parametrize("name", sorted(EQUIVALENTS))
def test_same_values_as_jax_for_the_same_key(name, shape, dtype):
    outputs = _registry_outputs(shape, dtype)
    if name not in outputs:
        pytest.skip("jax's orthogonal has no 16-bit QR (ours computes in float32)")
    got, expected = outputs[name]
    assert got.dtype == dtype and got.shape == shape
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(expected, np.float32))


@pytest.mark.parametrize("name", [w[0] for w in WITH_OPTIONS])
def test_same_values_as_jax_with_options(name):
    got, expected = _options_outputs(CONV)[name]
    assert got.dtype == jnp.float32 and got.shape == CONV
    np.testing.assert_array_equal(got, expected)


def test_same_values_as_jax_in_float64_for_dense_and_conv_shapes():
    names = [n for n in EQUIVALENTS if n != "orthogonal"]
    with jax.enable_x64(True):
        key = _rbg_key(5)
        for shape in (SMALL, CONV):
            got = jax.jit(lambda k, shape=shape: {
                n: (I.get(n)(k, shape, jnp.float64), EQUIVALENTS[n](k, shape, jnp.float64))
                for n in names})(key)
            for n, (ours, theirs) in got.items():
                assert ours.dtype == jnp.float64, n
                np.testing.assert_array_equal(ours, theirs, err_msg=n)


# Every factory's own dtype= (jax's last argument): the returned initializer's default.
FACTORIES = sorted(n for n in EQUIVALENTS if n not in ("zeros", "ones"))


@functools.cache
def _factory_dtype_outputs(dtype):
    def all_names(key):
        out = {n: (I.get(n, dtype=dtype)(key, CONV), getattr(jinit, n)(dtype=dtype)(key, CONV))
               for n in FACTORIES if n != "orthogonal" or dtype == jnp.float32}
        out["constant"] = (I.constant(0.3, dtype)(key, SMALL), jinit.constant(0.3, dtype)(key, SMALL))
        out["normal_positional"] = (I.normal(2.0, dtype)(key, SMALL),
                                    jinit.normal(2.0, dtype)(key, SMALL))
        out["uniform_positional"] = (I.uniform(0.5, dtype)(key, SMALL),
                                     jinit.uniform(0.5, dtype)(key, SMALL))
        out["variance_scaling"] = (
            I.variance_scaling(1.5, "fan_avg", "uniform", 0, -1, (), dtype)(key, CONV),
            jinit.variance_scaling(1.5, "fan_avg", "uniform", 0, -1, (), dtype)(key, CONV))
        return out

    return jax.device_get(jax.jit(all_names)(_rbg_key(6)))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32],
                         ids=["bf16", "f16", "f32"])
def test_factory_dtype_is_the_default_dtype_as_in_jax(dtype):
    outputs = _factory_dtype_outputs(dtype)
    for name, (got, expected) in outputs.items():
        assert got.dtype == dtype == expected.dtype, name
        np.testing.assert_array_equal(np.asarray(got, np.float32),
                                      np.asarray(expected, np.float32), err_msg=name)
    # The call's dtype still wins over the factory's.
    assert I.he_normal(dtype=jnp.bfloat16)(_rbg_key(0), SMALL, jnp.float32).dtype == jnp.float32


def test_orthogonal_in_16_bits_is_the_rounded_float32_matrix():
    key = _rbg_key(3)
    q16 = I.orthogonal()(key, SMALL, jnp.bfloat16)
    assert q16.dtype == jnp.bfloat16
    np.testing.assert_array_equal(q16, I.orthogonal()(key, SMALL).astype(jnp.bfloat16))


def test_default_key_matches_jax(key):
    np.testing.assert_array_equal(I.he_normal()(key, SMALL), jinit.he_normal()(key, SMALL))


def test_default_dtype_is_float32_even_with_x64(key):
    with jax.enable_x64(True):
        assert I.normal()(key, SMALL).dtype == jnp.float32
        assert I.he_normal(dtype=None)(key, SMALL, None).dtype == jnp.float32
        assert jax.nn.initializers.zeros(key, (2,)).dtype == jnp.float64  # jax's default differs
        assert I.zeros(key, (2,)).dtype == jnp.float32
        assert I.zeros(key, (2,), jnp.float64).dtype == jnp.float64


VARIANCE_CASES = [
    ("normal_0.01", I.normal(0.01), 1e-4),  # "small random numbers"
    ("normal_1", I.normal(1.0), 1.0),  # "big random numbers"
    ("uniform_2", I.uniform(2.0), 4.0 / 12),  # U[0, 2)
    ("lecun_normal", I.lecun_normal(), 1 / FAN_IN),  # the curriculum's "Xavier"
    ("he_normal", I.he_normal(), 2 / FAN_IN),  # the curriculum's "Xavier/2"
    ("kaiming_uniform", I.kaiming_uniform(), 2 / FAN_IN),
    ("glorot_normal", I.glorot_normal(), 2 / (FAN_IN + FAN_OUT)),
    ("vs_fan_out", I.variance_scaling(3.0, "fan_out", "normal"), 3.0 / FAN_OUT),
    ("vs_geo", I.variance_scaling(1.0, "fan_geo_avg", "uniform"), 1 / np.sqrt(FAN_IN * FAN_OUT)),
]


@functools.cache
def _variance_outputs():
    def all_cases(key):
        return {name: init(key, BIG) for name, init, _ in VARIANCE_CASES}

    return jax.device_get(jax.jit(all_cases)(_rbg_key(1)))


@pytest.mark.parametrize("name,init,variance", VARIANCE_CASES, ids=[v[0] for v in VARIANCE_CASES])
def test_empirical_variance_matches_formula(name, init, variance):
    w = np.asarray(_variance_outputs()[name], np.float64)
    np.testing.assert_allclose(w.var(), variance, rtol=0.03)


def test_zero_mean_and_uniform_range(key):
    w = np.asarray(_variance_outputs()["kaiming_uniform"])
    bound = np.sqrt(6 / FAN_IN)
    assert abs(w.mean()) < 0.01 * bound and w.min() >= -bound and w.max() <= bound
    u = np.asarray(_variance_outputs()["uniform_2"])
    assert u.min() >= 0.0 and u.max() < 2.0 and abs(u.mean() - 1.0) < 0.01
    t = np.asarray(_variance_outputs()["he_normal"])  # truncated at 2 stddev (pre-scale)
    assert np.abs(t).max() <= 2 * np.sqrt(2 / FAN_IN) / 0.8796256610342398 + 1e-6


def test_conv_kernel_fans_include_the_receptive_field():
    w = np.asarray(_registry_outputs(CONV, jnp.float32)["he_normal"][0], np.float64)
    np.testing.assert_allclose(w.var(), 2 / (3 * 3 * 32), rtol=0.05)


def test_orthogonal_is_orthogonal():
    q = np.asarray(I.orthogonal(2.0)(_rbg_key(4), (40, 60)), np.float64)
    np.testing.assert_allclose(q @ q.T, 4.0 * np.eye(40), atol=1e-5)  # orthogonal rows, scale 2
    np.testing.assert_allclose(q.var(), 4.0 / 60, rtol=0.05)  # each row has norm 2


def test_constant_zeros_ones(key):
    np.testing.assert_array_equal(I.constant(0.01)(key, (2, 3)), np.full((2, 3), 0.01, np.float32))
    np.testing.assert_array_equal(I.zeros(key, (2,)), [0.0, 0.0])
    np.testing.assert_array_equal(I.ones(key, (2,), jnp.bfloat16), [1.0, 1.0])


def test_works_under_jit_and_vmapped_scale():
    key = _rbg_key(2)
    np.testing.assert_array_equal(
        jax.jit(I.he_normal(), static_argnums=1)(key, SMALL), I.he_normal()(key, SMALL)
    )
    # A population varies the init scale per member: a traced stddev must work.
    stds = jnp.array([0.01, 1.0])
    ws = jax.vmap(lambda s: I.normal(s)(key, (100, 50)))(stds)
    np.testing.assert_allclose(np.asarray(ws).std(axis=(1, 2)), stds, rtol=0.05)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: I.normal(-1.0), "stddev"),
        (lambda: I.uniform(-0.5), "scale"),
        (lambda: I.orthogonal(-1.0), "scale"),
        (lambda: I.variance_scaling(-1.0, "fan_in", "normal"), "scale"),
        (lambda: I.variance_scaling(1.0, "fan_middle", "normal"), "mode.*fan_middle"),
        (lambda: I.variance_scaling(1.0, "fan_in", "cauchy"), "distribution.*cauchy"),
        (lambda: I.normal("big"), "stddev"),
        (lambda: I.normal(float("nan")), "stddev.*finite"),
        (lambda: I.uniform(float("inf")), "scale.*finite"),
        (lambda: I.orthogonal(float("-inf")), "scale.*finite"),
        (lambda: I.variance_scaling(float("nan"), "fan_in", "normal"), "scale.*finite"),
        (lambda: I.get("he_normal", dtype=jnp.float32, scale=2.0), "he_normal"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_get(key):
    np.testing.assert_array_equal(I.get("normal", stddev=1.0)(key, (3,)), I.normal(1.0)(key, (3,)))
    assert I.get("zeros") is I.zeros
    assert I.get(I.ones) is I.ones
    with pytest.raises(ValueError, match="he_normal") as info:
        I.get("he")
    assert "'he'" in str(info.value)
    with pytest.raises(ValueError, match="no options"):
        I.get("zeros", value=1.0)
    with pytest.raises(ValueError, match="normal"):
        I.get("normal", std=1.0)
    with pytest.raises(ValueError, match="mode"):
        I.get("variance_scaling", scale=1.0, mode="bad", distribution="normal")


def test_aliases_and_public_names():
    assert I.xavier_normal is I.glorot_normal and I.xavier_uniform is I.glorot_uniform
    assert I.kaiming_normal is I.he_normal and I.kaiming_uniform is I.he_uniform
    assert I.__all__ and len(set(I.__all__)) == len(I.__all__)
    for name in I.__all__:
        assert getattr(I, name) is not None
    assert set(I.names()) <= set(I.__all__)
