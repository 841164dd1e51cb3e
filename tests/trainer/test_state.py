"""TrainState: the loop's step, tokens and data position, in one client_state shape for every entry point."""

from torch.distributed.checkpoint.stateful import Stateful

from trainer.state import TrainState


def test_train_state_round_trips_through_client_state():
    state = TrainState(step=7, tokens_seen=7 * 512, data={"consumed": 56})
    back = TrainState.from_client(state.to_client())
    assert isinstance(back, Stateful)
    assert back == state and back.data is not state.data


def test_scripts_older_client_state_still_loads():
    back = TrainState.from_client({"iteration": 4, "data": {"consumed": 32}})
    assert (back.step, back.tokens_seen, back.data) == (4, 0, {"consumed": 32})


def test_determined_trials_older_client_state_still_loads():
    back = TrainState.from_client({"data": {"consumed": 8}})
    assert (back.step, back.data) == (0, {"consumed": 8})
