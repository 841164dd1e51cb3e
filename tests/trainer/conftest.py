"""Fixtures for the trainer tests: tiny random Hugging Face GPT-NeoX folders and corpora."""

from __future__ import annotations

import pytest
import torch

TINY = dict(
    vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64
)


def make_hf_model(tmp_path, name="hf", seed=0, **overrides):
    """A random GPTNeoXForCausalLM saved to tmp_path/name; returns (folder, model)."""
    transformers = pytest.importorskip("transformers", reason="transformers is needed as the reference model")
    kwargs = {**TINY, "intermediate_size": 4 * TINY["hidden_size"], **overrides}
    torch.manual_seed(seed)
    model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**kwargs)).eval()
    with torch.no_grad():  # HF initialises norms to 1/0 and biases to 0; make every tensor count
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    folder = tmp_path / name
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture
def hf_tiny(tmp_path):
    return make_hf_model(tmp_path)
