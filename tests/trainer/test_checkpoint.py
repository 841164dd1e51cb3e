"""Slim GPT-NeoX layout: tensor-parallel shards written from an HF model by FORMATS.md section 2's
split rules merge back to the same model."""

from __future__ import annotations

import pytest
import torch

from jobs.cli import JobError
from trainer.checkpoint import load_pretrained, load_slim
from trainer.model import ModelConfig

from .conftest import TINY, make_hf_model


def split_tp2(key: str, t: torch.Tensor) -> list[torch.Tensor]:
    """The inverse of the merge rules: how gpt-neox holds a tensor over two tensor-parallel ranks."""
    if key.endswith(
        ("query_key_value.weight", "query_key_value.bias", "dense_h_to_4h.weight", "dense_h_to_4h.bias")
    ):
        return list(t.chunk(2, dim=0))
    if key.endswith(("attention.dense.weight", "dense_4h_to_h.weight")):
        return list(t.chunk(2, dim=1))
    if key.endswith(("attention.dense.bias", "dense_4h_to_h.bias")):
        share = torch.rand_like(t)  # any two shares that add up
        return [t * share, t * (1 - share)]
    return [t.clone(), t.clone()]  # norms: copies


def write_slim(hf_model, root, tag="global_step150000", untied=True):
    """HF GPTNeoXForCausalLM -> slim layout with tensor parallel 2."""
    sd = hf_model.state_dict()
    n = hf_model.config.num_hidden_layers
    (root / tag).mkdir(parents=True)
    (root / "latest").write_text(tag)

    def save(idx, tensors):
        shards = {
            k: t.chunk(2, dim=0)
            if k.endswith(("word_embeddings.weight", "final_linear.weight"))
            else split_tp2(k, t)
            for k, t in tensors.items()
        }
        for r in range(2):
            part = {k: s[r].clone() for k, s in shards.items()}
            torch.save(part, root / tag / f"layer_{idx:02d}-model_{r:02d}-model_states.pt")

    save(0, {"word_embeddings.weight": sd["gpt_neox.embed_in.weight"]})
    torch.manual_seed(5)
    for i in range(n):
        prefix = f"gpt_neox.layers.{i}."
        layer = {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}
        layer["attention.rotary_emb.inv_freq"] = torch.ones(4)  # a buffer the loader must skip
        save(i + 2, layer)
    save(
        n + 3,
        {
            "norm.weight": sd["gpt_neox.final_layer_norm.weight"],
            "norm.bias": sd["gpt_neox.final_layer_norm.bias"],
        },
    )
    if untied:
        save(n + 4, {"final_linear.weight": sd["lm_head.weight"]})
    return root


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
