"""Helpers of the trainer tests (tests/trainer, tests/local): tiny random Hugging Face GPT-NeoX
folders, the slim layout written from one, the tiny NeoX config, the trainer as a subprocess and what
it leaves (metrics, complete checkpoints), a run's checkpoint folder as it is left, S3 listing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.support.net import free_port
from trainer import checkpoint as ck

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


BASE = {
    "num-layers": 2,
    "hidden-size": 64,
    "num-attention-heads": 4,
    "seq-length": 32,
    "max-position-embeddings": 64,
    "rotary_pct": 0.25,
    "gpt_j_residual": True,
    "no-weight-tying": True,
    "bias-gelu-fusion": True,
    "padded-vocab-size": 512,
    "hidden-dropout": 0,
    "attention-dropout": 0,
    "optimizer": {"type": "Adam", "params": {"lr": 0.003, "betas": [0.9, 0.95], "eps": 1.0e-8}},
    "min_lr": 0.0003,
    "lr-decay-style": "cosine",
    "warmup": 0.1,
    "zero_optimization": {"stage": 1},
    "train_micro_batch_size_per_gpu": 4,
    "gradient_accumulation_steps": 2,
    "split": "90,10,0",
    "eval-iters": 2,
    "log-interval": 1,
    "seed": 7,
}


def write_config(path: Path, corpus: str, **keys) -> Path:
    path.write_text(yaml.safe_dump({**BASE, "data-path": corpus, **keys}))
    return path


def trainer_cmd(config: Path, nproc: int = 1, extra: tuple[str, ...] = ()) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "trainer.train", "--config", str(config), *extra]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "trainer.train",
        "--config",
        str(config),
        *extra,
    ]


def env() -> dict:
    return {**os.environ, "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}


def run(
    config: Path, nproc: int = 1, extra: tuple[str, ...] = (), **env_vars: str
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        trainer_cmd(config, nproc, extra),
        env={**env(), **env_vars},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def complete_steps(save: Path) -> list[int]:
    return sorted(
        int(d.name.removeprefix("global_step"))
        for d in save.glob("global_step*")
        if d.name.removeprefix("global_step").isdigit() and (d / "complete.json").is_file()
    )


def losses(log_dir: Path, kind: str = "train") -> dict[int, float]:
    lines = [json.loads(x) for x in (log_dir / "metrics.jsonl").read_text().splitlines()]
    return {m["iteration"]: m["lm_loss"] for m in lines if m["kind"] == kind}


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


_OURS = ("PET_", "JOB_COMPLETION_INDEX", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "NEOX_GPUS_PER_NODE",
         "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")  # fmt: skip


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OURS)}
    return {**env, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", **extra}


def make(save, step, state="complete", size=100):
    """A global_stepN folder as a run leaves it: complete, legacy (before markers), or killed while saving."""
    tag = save / f"global_step{step}"
    tag.mkdir(parents=True)
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"m" * size)
    (tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"o" * size)
    if state in ("complete", "flagged"):  # flagged: model_config.json written, complete.json not yet
        (tag / ck.MODEL_CONFIG).write_text(json.dumps({"model": {}, "neox": {}, "complete_marker": True}))
    if state == "legacy":
        (tag / ck.MODEL_CONFIG).write_text(json.dumps({"model": {}, "neox": {}}))
    if state == "complete":
        ck.mark_complete(tag, step, world_size=1)
    return tag


SECRET = "s3cr3t-never-in-a-log-line"


def objects(client, prefix=""):
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="ckpt", Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


SEED = Path(__file__).resolve().parents[2] / "configs" / "determined-cluster.yml"
