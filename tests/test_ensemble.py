"""jaxnn.ensemble: probability averaging against numpy, and K seeds trained as one population."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import ensemble, losses, models, optim, population


def _softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def logits():
    return np.random.default_rng(0).normal(size=(4, 7, 5)).astype(np.float32) * 3


def test_average_probabilities_matches_numpy(logits):
    got = ensemble.average_probabilities(logits)
    assert got.shape == (7, 5) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, _softmax(logits).mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.sum(got, -1), 1.0, rtol=1e-6)


def test_average_probabilities_is_not_averaged_logits():
    # Two confident members disagreeing on classes 0 and 1, both giving class 2 some weight:
    # averaged probabilities keep the split between 0 and 1, mean logits would pick class 2.
    z = np.array([[[10.0, 0.0, 6.0]], [[0.0, 10.0, 6.0]]], np.float32)
    got = np.asarray(ensemble.average_probabilities(z))[0]
    np.testing.assert_allclose(got, _softmax(z).mean(0)[0], rtol=1e-6)
    assert got[2] < got[0]
    assert np.argmax(_softmax(z.mean(0))[0]) == 2


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_average_probabilities_keeps_dtype(logits, dtype):
    got = ensemble.average_probabilities(jnp.asarray(logits, dtype))
    assert got.dtype == dtype
    np.testing.assert_allclose(np.asarray(got, np.float32), _softmax(logits).mean(0), atol=2e-2)


def test_average_probabilities_is_finite_for_huge_logits():
    z = np.array([[[1e4, -1e4, 0.0]], [[-jnp.inf, 0.0, 1e4]]], np.float32)
    got = np.asarray(ensemble.average_probabilities(z))
    np.testing.assert_allclose(got, [[0.5, 0.0, 0.5]], atol=1e-7)


def test_ensemble_accuracy_matches_numpy(logits):
    labels = np.random.default_rng(1).integers(0, 5, size=7)
    expected = np.mean(np.argmax(_softmax(logits).mean(0), -1) == labels)
    assert float(ensemble.ensemble_accuracy(logits, labels)) == pytest.approx(expected)
    assert float(jax.jit(ensemble.ensemble_accuracy)(logits, labels)) == pytest.approx(expected)


@pytest.mark.parametrize("z, labels, match", [
    (np.zeros((7, 5), np.float32), None, "members, batch, classes"),
    (np.zeros((2, 7, 5), np.int32), None, "floating"),
    (np.zeros((2, 7, 5), np.float32), np.zeros(6, np.int32), "labels must have shape"),
])
def test_shape_errors(z, labels, match):
    with pytest.raises(ValueError, match=match):
        if labels is None:
            ensemble.average_probabilities(z)
        else:
            ensemble.ensemble_accuracy(z, labels)


# --------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def dataset(make_blobs):
    return make_blobs(n=400, classes=3, spread=1.2, n_train=200, n_val=50)  # overlapping blobs: members disagree a little


@pytest.fixture(scope="module")
def model():
    return models.mlp([6, 16, 3])


@pytest.fixture(scope="module")
def result(dataset, model):
    return ensemble.ensemble(dataset, members=3, epochs=3, key=jax.random.key(0), model=model,
                             optimizer=optim.momentum(1.0), batch_size=32, learning_rate=0.05)


def test_ensemble_trains_seeds_as_one_population(result):
    pop = result.population
    np.testing.assert_array_equal(pop.hparams["seed"], [0, 1, 2])
    np.testing.assert_allclose(pop.hparams["learning_rate"], 0.05)
    w = np.asarray(pop.params["layer_0"]["w"])
    assert w.shape == (3, 6, 16) and not np.allclose(w[0], w[1])  # different seeds
    assert result.status == ["ok", "ok", "ok"]


def test_ensemble_numbers_match_a_direct_computation(result, dataset, model):
    pop = result.population
    z = np.asarray(population.population_logits(model, pop.params, pop.model_state,
                                                dataset.x_test))
    y = dataset.y_test
    p = _softmax(z)
    np.testing.assert_allclose(result.member_test_acc, np.mean(np.argmax(z, -1) == y, -1))
    member_nll = -np.mean(np.log(p[:, np.arange(len(y)), y]), -1)
    np.testing.assert_allclose(result.member_test_loss, member_nll, rtol=1e-4)
    avg = p.mean(0)
    assert result.ensemble_test_acc == pytest.approx(np.mean(np.argmax(avg, -1) == y))
    assert result.ensemble_test_loss == pytest.approx(
        -np.mean(np.log(avg[np.arange(len(y)), y])), rel=1e-4)
    # Jensen: the averaged distribution's NLL is at most the members' mean NLL.
    assert result.ensemble_test_loss <= np.mean(member_nll) + 1e-6


def test_nan_members_are_diverged_and_left_out(dataset, model):
    # The hinge loss clips at 0, so with lr 1e20 the loss can stay finite while the weights are
    # NaN: such a member is diverged, never averaged in.
    res = ensemble.ensemble(dataset, members=2, epochs=2, key=jax.random.key(0), model=model,
                            loss=losses.multiclass_hinge_loss, optimizer=optim.momentum(1.0),
                            batch_size=32, learning_rate=1e20)
    assert res.status == ["diverged", "diverged"]
    assert np.isnan(res.ensemble_test_acc) and np.isnan(res.ensemble_test_loss)
    for leaf in jax.tree.leaves(res.population.params):
        assert np.all(np.isfinite(np.asarray(leaf)))  # the last good parameters, not NaN


def test_ensemble_rejects(dataset):
    with pytest.raises(ValueError, match="members"):
        ensemble.ensemble(dataset, members=0, epochs=1, key=jax.random.key(0))
    empty = dataset._replace(x_test=dataset.x_test[:0], y_test=dataset.y_test[:0])
    with pytest.raises(ValueError, match="test split is empty"):
        ensemble.ensemble(empty, members=2, epochs=1, key=jax.random.key(0))


def test_public_names():
    assert set(ensemble.__all__) == {"EnsembleResult", "average_probabilities",
                                     "ensemble_accuracy", "ensemble"}


# --------------------------------------------------------------------------- trust, round two
@pytest.mark.parametrize("bad, match", [
    ([7, 0, 1, 2, 3, 4, 0], r"class ids in \[0, 5\).*got 7"),
    ([-1, 0, 1, 2, 3, 4, 0], r"class ids in \[0, 5\).*got -1"),
    ([2.5, 0, 1, 2, 3, 4, 0], "integer class ids.*float"),
    ([2.0, 0, 1, 2, 3, 4, 0], "integer class ids.*float"),
    ([True, False, True, False, True, False, True], "integer class ids.*bool"),
    (np.array([2**32 + 2, 0, 1, 2, 3, 4, 0], np.int64), r"got 4294967298"),
])
def test_ensemble_accuracy_refuses_labels_that_are_not_class_ids(logits, bad, match):
    # Cause: the labels were compared with the argmax as they came, so 7 (of 5 classes), -1 and
    # 2.5 each counted as a miss and a plausible accuracy came back.
    with pytest.raises(ValueError, match=match):
        ensemble.ensemble_accuracy(logits, np.asarray(bad))


def test_ensemble_accuracy_is_nan_for_a_traced_bad_label(logits):
    acc = jax.jit(ensemble.ensemble_accuracy)
    good = np.array([0, 1, 2, 3, 4, 0, 1], np.int32)
    assert np.isfinite(float(acc(logits, good)))
    for label in (5, -1):
        assert np.isnan(float(acc(logits, np.where(np.arange(7) == 0, label, good))))


def test_ensemble_refuses_test_labels_beyond_the_models_classes(dataset):
    # Checked before any training: a label the model has no output for.
    bad = dataset._replace(y_test=np.where(np.arange(len(dataset.y_test)) == 0, 3,
                                           dataset.y_test).astype(np.int32))
    with pytest.raises(ValueError, match=r"y_test: labels must be class ids in \[0, 3\)"):
        ensemble.ensemble(bad, members=2, epochs=1, key=jax.random.key(0),
                          model=models.mlp([6, 4, 3]))


def test_an_ensemble_that_cannot_fit_in_memory_is_refused_before_allocating(make_blobs):
    from jaxnn import distributed, models

    data = make_blobs(n=40, classes=3, spread=3.0, n_train=24, n_val=8)
    model = models.mlp([6, 8, 3])
    members = distributed.memory_bytes() // (
        models.parameter_count(model) * distributed.BYTES_PER_PARAMETER) + 1
    with pytest.raises(ValueError, match=f"x {members:,} copies: .* GiB"):
        ensemble.ensemble(data, members=members, epochs=1, key=jax.random.key(0), model=model)
