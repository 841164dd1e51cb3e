"""Slim GPT-NeoX layout: tensor-parallel shards written from an HF model by FORMATS.md section 2's
split rules merge back to the same model."""

from __future__ import annotations

import pytest
import torch

from jobs.cli import JobError
from tests.support.trainer import TINY, make_hf_model, write_slim
from trainer.checkpoint import load_pretrained, load_slim
from trainer.model import ModelConfig


def tiny_cfg(**kw) -> ModelConfig:
    return ModelConfig(
        vocab_size=512,
        hidden_size=TINY["hidden_size"],
        num_layers=TINY["num_hidden_layers"],
        num_heads=TINY["num_attention_heads"],
        max_position_embeddings=64,
        rotary_pct=0.25,
        parallel_residual=True,
        tied_embeddings=False,
        activation="gelu",
        **kw,
    )


def test_slim_tp2_merges_to_the_same_model(tmp_path):
    folder, ref = make_hf_model(tmp_path, use_parallel_residual=True, rotary_pct=0.25, hidden_act="gelu")
    root = write_slim(ref, tmp_path / "slim")
    model, kind = load_pretrained(root, tiny_cfg())
    assert kind == "GPT-NeoX slim checkpoint" and model.cfg.vocab_size == 512
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids), ref(ids).logits, rtol=1e-4, atol=1e-4)


def test_slim_shape_mismatch_names_tensor(tmp_path):
    _, ref = make_hf_model(tmp_path)
    root = write_slim(ref, tmp_path / "slim")
    cfg = tiny_cfg(intermediate_size=128)
    with pytest.raises(
        JobError, match=r"layers\.0\.mlp\.dense_h_to_4h\.weight has shape \[256, 64\].*\[128, 64\]"
    ):
        load_slim(root, cfg)


def test_slim_missing_layer_is_named(tmp_path):
    _, ref = make_hf_model(tmp_path)
    root = write_slim(ref, tmp_path / "slim")
    for f in (root / "global_step150000").glob("layer_03-*"):
        f.unlink()
    with pytest.raises(JobError, match="layer_03-model_\\*-model_states.pt is missing"):
        load_pretrained(root, tiny_cfg())


def test_untied_config_without_output_layer_is_refused(tmp_path):
    _, ref = make_hf_model(tmp_path)
    root = write_slim(ref, tmp_path / "slim", untied=False)
    with pytest.raises(JobError, match="embed_out.weight .* is missing"):
        load_pretrained(root, tiny_cfg())
