"""Tests for jaxnn.batching: epoch order, fixed-shape batches, and on-device augmentation."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import batching

# --------------------------------------------------------------------------------------------
# order and batches
# --------------------------------------------------------------------------------------------


def test_num_batches():
    assert batching.num_batches(10, 4) == 3 and batching.num_batches(10, 4, drop_last=True) == 2
    assert batching.num_batches(8, 4) == 2 and batching.num_batches(3, 8) == 1
    with pytest.raises(ValueError, match="batch_size"):
        batching.num_batches(10, 0)
    with pytest.raises(ValueError, match="no batches"):
        batching.num_batches(3, 8, drop_last=True)


@pytest.mark.parametrize("n, b", [(10, 4), (12, 4), (5, 8), (1, 1)])
def test_batch_indices_cover_epoch(n, b, key):
    idx, mask = batching.batch_indices(n, b, key=key, epoch=2)
    nb = -(-n // b)
    assert idx.shape == (nb, b) and mask.shape == (nb, b)
    assert idx.dtype == jnp.int32 and mask.dtype == jnp.float32
    assert float(mask.sum()) == n
    real = np.asarray(idx)[np.asarray(mask) == 1]
    np.testing.assert_array_equal(np.sort(real), np.arange(n))  # each example exactly once
    # the real examples come first; padding only in the last batch
    np.testing.assert_array_equal(np.asarray(mask).ravel(), np.arange(nb * b) < n)
    assert np.all((0 <= np.asarray(idx)) & (np.asarray(idx) < n))


def test_batch_order_pure_function_of_key_and_epoch(key):
    a = batching.batch_indices(100, 16, key=key, epoch=3)[0]
    b = batching.batch_indices(100, 16, key=jax.random.key(0), epoch=3)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, batching.batch_indices(100, 16, key=key, epoch=4)[0])
    assert not np.array_equal(a, batching.batch_indices(100, 16, key=jax.random.key(1), epoch=3)[0])
    # reference: the documented formula
    perm = jax.random.permutation(jax.random.fold_in(key, 3), 100)
    np.testing.assert_array_equal(np.asarray(a).ravel()[:100], perm)
    # an int seed is the same as jax.random.key(seed); key=None keeps the order
    np.testing.assert_array_equal(a, batching.batch_indices(100, 16, key=0, epoch=3)[0])
    np.testing.assert_array_equal(batching.batch_indices(6, 3)[0], [[0, 1, 2], [3, 4, 5]])


def test_batch_indices_drop_last(key):
    idx, mask = batching.batch_indices(10, 4, key=key, epoch=0, drop_last=True)
    assert idx.shape == (2, 4) and float(mask.sum()) == 8
    assert len(np.unique(idx)) == 8


def test_batch_indices_under_jit(key):
    f = jax.jit(lambda k, e: batching.batch_indices(37, 8, key=k, epoch=e))
    for e in (0, 5):
        got_idx, got_mask = f(key, jnp.int32(e))
        want_idx, want_mask = batching.batch_indices(37, 8, key=key, epoch=e)
        np.testing.assert_array_equal(got_idx, want_idx)
        np.testing.assert_array_equal(got_mask, want_mask)


def test_epoch_batches_and_iterator(key):
    n, b = 23, 5
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    y = np.arange(n, dtype=np.int32)
    batches = batching.epoch_batches(x, y, b, key=key, epoch=1)
    assert isinstance(batches, batching.Batch)
    xb, yb, mask = batches
    assert xb.shape == (5, b, 3) and yb.shape == (5, b) and mask.shape == (5, b)
    np.testing.assert_array_equal(xb[..., 0], 3 * yb)  # rows stay aligned with their labels
    real = np.asarray(yb)[np.asarray(mask) == 1]
    np.testing.assert_array_equal(np.sort(real), y)
    it = list(batching.iterate_batches(jnp.asarray(x), y, b, key=key, epoch=1))
    assert len(it) == 5 and all(isinstance(bt, batching.Batch) for bt in it)
    for i, bt in enumerate(it):
        assert bt.x.shape == (b, 3) and bt.y.shape == (b,) and bt.mask.shape == (b,)
        np.testing.assert_array_equal(bt.x, xb[i])
        np.testing.assert_array_equal(bt.mask, mask[i])


def test_epoch_in_one_scan(key):
    x = np.ones((10, 2), np.float32)
    y = np.arange(10) % 3

    def step(total, batch):
        return total + jnp.sum(batch.x[:, 0] * batch.mask), jnp.sum(batch.mask)

    total, counts = jax.lax.scan(step, 0.0, batching.epoch_batches(x, y, 4, key=key, epoch=0))
    assert float(total) == 10.0 and counts.tolist() == [4.0, 4.0, 2.0]


def test_batching_bad_input():
    with pytest.raises(ValueError, match="same leading"):
        batching.epoch_batches(np.zeros((5, 2)), np.zeros(4), 2)
    with pytest.raises(ValueError, match="at least 1"):
        batching.epoch_batches(np.zeros((0, 2)), np.zeros(0), 2)


# --------------------------------------------------------------------------------------------
# augmentation
# --------------------------------------------------------------------------------------------


def test_parse_augment():
    assert batching.parse_augment("crop:4,flip") == batching.Augment(crop=4, flip=True)
    assert batching.parse_augment(" flip , crop:2 ") == batching.Augment(crop=2, flip=True)
    assert batching.parse_augment("crop:1") == batching.Augment(crop=1, flip=False)
    assert batching.parse_augment("flip") == batching.Augment(crop=0, flip=True)
    for nothing in (None, "", "none", "None"):
        assert batching.parse_augment(nothing) is None
    assert batching.parse_augment(batching.Augment(3, True)) == batching.Augment(3, True)


@pytest.mark.parametrize("spec, needle", [
    ("crop", "crop:P needs a whole number"), ("crop:0", "P >= 1"), ("crop:-2", "P >= 1"),
    ("crop:1.5", "whole number"), ("rotate", "unexpected 'rotate'"), ("flip,flip", "unexpected"),
    ("crop:2,crop:3", "unexpected 'crop:3'"), ("flip:1", "unexpected 'flip:1'"),
])
def test_parse_augment_errors(spec, needle):
    with pytest.raises(ValueError, match=needle) as e:
        batching.parse_augment(spec)
    assert "crop:P" in str(e.value) and "flip" in str(e.value)


def images(n=128, h=5, w=6, c=2, seed=0):
    return np.random.default_rng(seed).normal(size=(n, h, w, c)).astype(np.float32)


def matches(x, y, p):
    """For each output image, every (row offset, column offset, flipped) of the numpy reference
    (zero-pad by p, cut an h x w window, mirror left-right) that reproduces it exactly."""
    h, w = x.shape[1:3]
    found = []
    for img, got in zip(x, np.asarray(y), strict=True):
        padded = np.pad(img, ((p, p), (p, p), (0, 0)))
        hits = []
        for a, b, f in itertools.product(range(2 * p + 1), range(2 * p + 1), (False, True)):
            cut = padded[a:a + h, b:b + w]
            if np.array_equal(cut[:, ::-1] if f else cut, got):
                hits.append((a, b, f))
        found.append(hits)
    return found


def test_crop_and_flip_match_numpy(key):
    x = images()
    y = batching.augment(x, key=key, crop=1, flip=True)
    assert y.shape == x.shape and y.dtype == x.dtype
    found = matches(x, y, 1)
    assert all(len(h) == 1 for h in found)  # every image is one crop/flip of its input
    kinds = [h[0] for h in found]
    assert {(a, b) for a, b, _ in kinds} == set(itertools.product(range(3), range(3)))
    flipped = np.mean([f for _, _, f in kinds])
    assert 0.3 < flipped < 0.7  # Binomial(128, 1/2): 4.5 standard deviations either side


def test_crop_only_and_flip_only(key):
    x = images(n=64, h=4, w=7, c=3, seed=1)
    crop = matches(x, batching.augment(x, key=key, crop=2), 2)
    assert all(len(h) == 1 and not h[0][2] for h in crop)
    assert len({h[0][:2] for h in crop}) > 5  # offsets vary over the 25 possible
    flip = matches(x, batching.augment(x, key=key, flip=True), 0)
    assert all(len(h) == 1 and h[0][:2] == (0, 0) for h in flip)
    assert 0 < sum(h[0][2] for h in flip) < 64
    np.testing.assert_array_equal(batching.augment(x, key=key), x)  # nothing asked: identity


def test_augment_jit_dtype_and_determinism(key):
    x = images(n=16)
    eager = batching.augment(x, key=key, crop=1, flip=True)
    jitted = jax.jit(lambda x, k: batching.augment(x, key=k, crop=1, flip=True))(x, key)
    np.testing.assert_array_equal(jitted, eager)
    np.testing.assert_array_equal(batching.augment(x, key=key, crop=1, flip=True), eager)
    # pure data movement: bfloat16 in, bfloat16 out, the same pixels moved
    half = batching.augment(x.astype(jnp.bfloat16), key=key, crop=1, flip=True)
    assert half.dtype == jnp.bfloat16
    np.testing.assert_array_equal(half, eager.astype(jnp.bfloat16))


def test_augment_key_is_a_pure_function_of_key_epoch_step(key):
    x = images(n=32)
    k = batching.augment_key(key, 3, 5)
    # the documented formula
    assert jnp.array_equal(jax.random.key_data(k), jax.random.key_data(
        jax.random.fold_in(jax.random.fold_in(key, 3), 5)))
    out = lambda kk: np.asarray(batching.augment(x, key=kk, crop=1, flip=True))
    np.testing.assert_array_equal(out(k), out(batching.augment_key(jax.random.key(0), 3, 5)))
    np.testing.assert_array_equal(
        out(k), out(jax.jit(batching.augment_key)(key, jnp.int32(3), jnp.int32(5))))
    for other in [(3, 6), (4, 5), (5, 3)]:
        assert not np.array_equal(out(k), out(batching.augment_key(key, *other)))


def test_augment_needs_images(key):
    with pytest.raises(ValueError, match=r"--augment.*images \[n, height, width, channels\].*"
                                         r"\(8, 30\)"):
        batching.augment(np.zeros((8, 30)), key=key, crop=1)
    with pytest.raises(ValueError, match="--augment"):
        batching.check_augment(batching.Augment(0, True), (100, 64))
    batching.check_augment(batching.Augment(2, True), (100, 8, 8, 1))
    batching.check_augment(None, (100, 64))
    with pytest.raises(ValueError, match="crop must be a whole number"):
        batching.augment(images(n=2), key=key, crop=-1)


@pytest.fixture(scope="module")
def linear_epoch():
    """A linear softmax classifier on 4x4x1 images and its jitted epochs, with and without
    augmentation."""
    from jaxnn import optim, train

    def apply(params, state, x, *, train, key=None, mask=None):
        return x.reshape(x.shape[0], -1) @ params["w"] + params["b"], state

    opt = optim.sgd(0.5)
    params = {"w": jnp.zeros((16, 3)), "b": jnp.zeros(3)}
    state = train.TrainState(params, {}, opt.init(params), jnp.zeros((), jnp.int32),
                             jax.random.key(3))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(20, 4, 4, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, size=20), jnp.int32)
    make = lambda aug: train.make_epoch(apply, "softmax_cross_entropy", opt, batch_size=8,
                                        donate=False, augment=aug)
    aug = batching.Augment(crop=1, flip=True)
    return dict(apply=apply, opt=opt, state=state, x=x, y=y, aug=aug, augmented=make(aug),
                plain=make(None))


def test_epoch_augmentation_resumes_identically(linear_epoch):
    e = linear_epoch
    run = lambda epoch: e["augmented"](e["state"], e["x"], e["y"], jnp.int32(epoch))[0].params
    first, again = run(2), run(2)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)  # same (key, epoch): bit-identical, as on resume
    other = run(3)
    plain = e["plain"](e["state"], e["x"], e["y"], jnp.int32(2))[0].params
    assert not np.allclose(first["w"], other["w"]) and not np.allclose(first["w"], plain["w"])


def test_epoch_augmentation_follows_the_documented_keys(linear_epoch):
    """The scanned epoch equals a Python loop: batches of batch_indices(fold_in(key, 0), e), each
    augmented with augment_key(fold_in(key, 2), e, i), then one SGD step."""
    from jaxnn import train

    e = linear_epoch
    s0, epoch = e["state"], 4
    got = e["augmented"](s0, e["x"], e["y"], jnp.int32(epoch))[0].params
    step = jax.jit(train.train_step_fn(e["apply"], "softmax_cross_entropy", e["opt"]))
    idx, mask = batching.batch_indices(20, 8, key=jax.random.fold_in(s0.key, 0), epoch=epoch)
    s = s0
    for i in range(idx.shape[0]):
        b = batching.gather_batch(e["x"], e["y"], idx[i], mask[i])
        k = batching.augment_key(jax.random.fold_in(s0.key, 2), epoch, i)
        s, _ = step(s, b._replace(x=batching.augment(b.x, key=k, crop=1, flip=True)), 0.0)
    # Same operations in a scan vs a loop: only the float32 summation order may differ
    # (16 inputs x 8 rows per product, 3 steps): a few ulps of values of order 1.
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(s.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_epoch_augmentation_refuses_flat_data(linear_epoch):
    e = linear_epoch
    with pytest.raises(ValueError, match="--augment"):
        e["augmented"](e["state"], e["x"].reshape(20, 16), e["y"], jnp.int32(0))


# --------------------------------------------------------------------------------------------
# trust, round two
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("crop, shape", [(100_000_000, (64, 8, 8, 1)), (8, (64, 8, 8, 1)),
                                         (5, (2, 5, 30, 3))])
def test_crop_must_pad_by_less_than_the_smaller_image_side(key, crop, shape):
    # Cause: the pad was never compared with the image, so crop:100000000 asked XLA for a
    # [64, 2e8, 2e8, 1] padded batch and the process aborted in C++. P < min(H, W): every crop
    # keeps part of the image.
    with pytest.raises(ValueError, match=rf"augment \(--augment\): crop:{crop} .*"
                                         rf"P < {min(shape[1:3])}"):
        batching.check_augment(batching.parse_augment(f"crop:{crop}"), shape)
    with pytest.raises(ValueError, match=f"crop:{crop}"):
        jax.eval_shape(lambda x: batching.augment(x, key=key, crop=crop),
                       jax.ShapeDtypeStruct(shape, jnp.float32))
    batching.check_augment(batching.Augment(min(shape[1:3]) - 1), shape)  # the largest allowed
