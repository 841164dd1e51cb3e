"""The training loop's own state, saved inside every checkpoint the same way by every entry point.

`TrainState` is torch.distributed.checkpoint's `Stateful` (state_dict / load_state_dict), so a
DCP-based save could take it as is; under DeepSpeed it travels as the checkpoint's `client_state`
under one key. Checkpoints written before it existed hold `{"iteration": N, "data": {...}}` (the
script) or `{"data": {...}}` (the Determined trial): `from_client` still reads those.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch.distributed.checkpoint.stateful import Stateful

KEY = "train_state"


@dataclass
class TrainState(Stateful):
    step: int = 0  # optimizer iterations done
    tokens_seen: int = 0  # training tokens consumed over all ranks
    data: dict = field(default_factory=dict)  # the sampler's position (trainer.data.MicroBatches.state_dict)

    def state_dict(self) -> dict:
        return {"step": self.step, "tokens_seen": self.tokens_seen, "data": dict(self.data)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.step = int(state_dict["step"])
        self.tokens_seen = int(state_dict.get("tokens_seen", 0))
        self.data = dict(state_dict["data"])

    def to_client(self) -> dict:
        """The `client_state` for DeepSpeed's save_checkpoint."""
        return {KEY: self.state_dict()}

    @classmethod
    def from_client(cls, client: dict) -> TrainState:
        """The state from a loaded checkpoint's `client_state`, this shape or an older one."""
        state = cls()
        if KEY in client:
            state.load_state_dict(client[KEY])
        else:  # before TrainState: the step (script only) and the data position at the top level
            state.load_state_dict({"step": client.get("iteration", 0), "data": client["data"]})
        return state
