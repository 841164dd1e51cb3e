"""Our plain-PyTorch GPT-NeoX against transformers' GPTNeoXForCausalLM on shared random weights."""

from __future__ import annotations

import pytest
import torch

from jobs.cli import JobError
from tests.support.trainer import make_hf_model
from trainer.checkpoint import load_hf
from trainer.engine import apply_activation_checkpointing
from trainer.model import GPTNeoX, ModelConfig


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"use_parallel_residual": False},
        {"rotary_pct": 1.0},
        {"rotary_pct": 0.5, "hidden_act": "gelu"},
        {"tie_word_embeddings": True},
        {
            "use_parallel_residual": False,
            "rotary_pct": 0.25,
            "hidden_act": "gelu_fast",
            "tie_word_embeddings": True,
        },
    ],
    ids=["default", "sequential", "rotary-full", "rotary-half-exact-gelu", "tied", "sequential-tanh-tied"],
)
def test_logits_match_transformers(tmp_path, variant):
    folder, ref = make_hf_model(tmp_path, **variant)
    ours = load_hf(folder).eval()
    ids = torch.randint(0, 512, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(ids).logits
        got = ours(ids)
    assert got.shape == (2, 17, 512)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert (ours.embed_out is None) == variant.get("tie_word_embeddings", False)


def test_mismatched_weights_name_the_tensor(tmp_path):
    folder, _ = make_hf_model(tmp_path)
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    state["gpt_neox.layers.1.mlp.dense_h_to_4h.weight"] = torch.zeros(100, 64)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(
        JobError, match=r"layers\.1\.mlp\.dense_h_to_4h\.weight has shape \[100, 64\].*\[256, 64\]"
    ):
        load_hf(folder)


def test_sequence_longer_than_positions_is_refused():
    model = GPTNeoX(
        ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, max_position_embeddings=8)
    )
    with pytest.raises(ValueError, match="exceeds max_position_embeddings 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_activation_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=16)
    a = GPTNeoX(cfg)
    b = GPTNeoX(cfg)
    b.load_state_dict(a.state_dict())
    assert apply_activation_checkpointing(b.layers) == 2
    assert list(b.state_dict()) == list(a.state_dict())  # names unchanged: checkpoints load either way
    calls = []
    b.layers[0].attention.register_forward_pre_hook(lambda *_: calls.append(1))
    ids = torch.randint(0, 64, (2, 16))
    for m in (a, b):
        m(ids).float().pow(2).mean().backward()
    assert len(calls) == 2  # the block ran again in backward: its activations were not kept
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)


def test_set_dropout_reaches_every_block_and_the_config():
    model = GPTNeoX(
        ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=16)
    )
    model.set_dropout(0.1, 0.2)
    assert (model.cfg.hidden_dropout, model.cfg.attention_dropout) == (0.1, 0.2)
    assert [(b.dropout.p, b.attention.dropout) for b in model.layers] == [(0.1, 0.2)] * 2
    model.set_dropout(0.0)
    assert [(b.dropout.p, b.attention.dropout) for b in model.layers] == [(0.0, 0.0)] * 2
