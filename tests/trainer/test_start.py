"""trainer.start.check_model_fits: the weights' shape wins over the config's, with a note; a sequence
longer than the weights' positions is one clear error."""

import pytest

from jobs.cli import JobError
from trainer.config import from_dict
from trainer.start import check_model_fits

SMALL = {"num-layers": 2, "hidden-size": 64, "num-attention-heads": 4, "seq-length": 32,
         "max-position-embeddings": 64, "padded-vocab-size": 512}  # fmt: skip


def test_a_shape_that_differs_from_the_weights_gives_a_note_naming_the_key():
    cfg = from_dict(SMALL)
    weights = from_dict({**SMALL, "num-layers": 3}).model_config(vocab_size=512)
    notes = []
    check_model_fits(cfg, weights, notes.append)
    assert notes == ["note: config key 'num-layers' is 2 but the weights have 3; using the weights'"]


def test_a_sequence_longer_than_the_weights_positions_is_one_error():
    cfg = from_dict({**SMALL, "seq-length": 128, "max-position-embeddings": 128})
    weights = from_dict(SMALL).model_config(vocab_size=512)
    with pytest.raises(JobError, match="'seq-length' 128 exceeds the weights' max_position_embeddings 64"):
        check_model_fits(cfg, weights, print)
