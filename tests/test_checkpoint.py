"""jaxnn.checkpoint: orbax round trips, retention, and ignoring half-written checkpoints."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import optim
from jaxnn.checkpoint import Checkpointer
from jaxnn.train import TrainState


def _state(scale=1.0):
    params = {"w": jnp.arange(6.0).reshape(2, 3) * scale, "b": jnp.zeros(3)}
    opt = optim.momentum(0.1)
    return TrainState(params, {}, opt.init(params), jnp.int32(7), jax.random.key(3))


def test_round_trip_with_keys_and_metadata(tmp_path):
    state = _state(2.0)
    with Checkpointer(tmp_path / "ck") as ck:
        ck.save(1, state, {"epoch": 1, "initial_loss": 2.5})
        restored, meta = ck.restore(template=_state())
    assert meta == {"epoch": 1, "initial_loss": 2.5}
    np.testing.assert_array_equal(restored.params["w"], state.params["w"])
    assert int(restored.step) == 7
    np.testing.assert_array_equal(jax.random.key_data(restored.key),
                                  jax.random.key_data(state.key))
    assert float(optim.learning_rate(restored.opt_state)) == pytest.approx(0.1)


def test_keeps_last_n_and_restores_latest(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=2) as ck:
        for step in range(1, 5):
            ck.save(step, _state(step), {"epoch": step})
        assert ck.all_steps() == [3, 4]
        restored, meta = ck.restore(template=_state())
        assert meta["epoch"] == 4
        np.testing.assert_array_equal(restored.params["w"], _state(4).params["w"])


def test_half_written_checkpoint_is_ignored(tmp_path):
    with Checkpointer(tmp_path) as ck:
        ck.save(1, _state(1.0), {"epoch": 1})
    # A save killed before finalizing leaves only a temporary directory.
    os.makedirs(tmp_path / "2.orbax-checkpoint-tmp-123" / "state")
    with Checkpointer(tmp_path) as ck:
        assert ck.latest_step() == 1
        _, meta = ck.restore(template=_state())
        assert meta["epoch"] == 1


def test_no_checkpoint_is_a_clear_error(tmp_path):
    with Checkpointer(tmp_path) as ck, pytest.raises(FileNotFoundError, match="no finalized"):
        ck.restore(template=_state())
    with pytest.raises(ValueError, match="max_to_keep"):
        Checkpointer(tmp_path, max_to_keep=0)


def test_checkpoints_from_before_digests_still_restore(tmp_path):
    """Digests are checked when recorded; an older checkpoint (none recorded) restores."""
    import orbax.checkpoint as ocp

    from jaxnn.checkpoint import DIGEST_KEY, _keys_to_data

    state = _state(3.0)
    with ocp.CheckpointManager(tmp_path) as mgr:  # as the Checkpointer saved before digests
        mgr.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(_keys_to_data(state)),
                                            meta=ocp.args.JsonSave({"epoch": 1})))
        mgr.wait_until_finished()
    with Checkpointer(tmp_path) as ck:
        restored, meta = ck.restore(template=_state())
        assert meta == {"epoch": 1}
        np.testing.assert_array_equal(restored.params["w"], state.params["w"])
        ck.save(2, state, {"epoch": 2})
        _, meta = ck.restore(template=_state())
        assert meta == {"epoch": 2} and DIGEST_KEY not in meta  # recorded, and not shown
