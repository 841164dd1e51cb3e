"""Fixtures for the GPU tests: a learnable token corpus and the trainer as a subprocess.

These tests run on the GPU machine (`pytest tests/gpu -m gpu`); without CUDA every test is
skipped with the reason. The fused kernels should be built first (the driver
benchmarks/e2e_gpu_driver.sh does: `python -m trainer.kernels.build --out DIR`, `NEOX_KERNELS_DIR=DIR`),
else the first trainer run compiles them just in time.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from jobs.indexed_dataset import IndexedDatasetWriter, dtype_for_vocab

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 512

# A small GPT-NeoX that still exercises every fused kernel: rotary on a quarter of 64-channel heads,
# parallel residual, tanh bias-GELU, untied embeddings.
BASE = {
    "num-layers": 4,
    "hidden-size": 256,
    "num-attention-heads": 4,
    "seq-length": 256,
    "max-position-embeddings": 256,
    "rotary_pct": 0.25,
    "gpt_j_residual": True,
    "no-weight-tying": True,
    "bias-gelu-fusion": True,
    "padded-vocab-size": VOCAB,
    "hidden-dropout": 0,
    "attention-dropout": 0,
    "optimizer": {"type": "Adam", "params": {"lr": 0.001, "betas": [0.9, 0.95], "eps": 1.0e-8}},
    "min_lr": 0.0001,
    "lr-decay-style": "cosine",
    "warmup": 0.1,
    "weight-decay": 0.01,
    "gradient-clipping": 1.0,
    "train_micro_batch_size_per_gpu": 8,
    "gradient_accumulation_steps": 2,
    "split": "90,10,0",
    "eval-iters": 2,
    "log-interval": 1,
    "seed": 7,
}
FP16 = {
    "fp16": {
        "enabled": True,
        "loss_scale": 0,
        "initial_scale_power": 12,
        "loss_scale_window": 1000,
        "hysteresis": 2,
        "min_loss_scale": 1,
    }
}
BF16 = {"bf16": {"enabled": True}}


def needs_cuda():
    return pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine)"
    )


def needs_deepspeed():
    import importlib.util

    return pytest.mark.skipif(
        importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed"
    )


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """600 documents following x -> 3x + 1 mod 512 from random starts: learnable in a few dozen steps."""
    prefix = tmp_path_factory.mktemp("corpus") / "gpu_text_document"
    rng = np.random.default_rng(0)
    with IndexedDatasetWriter(prefix, dtype_for_vocab(VOCAB)) as w:
        for _ in range(600):
            x = [int(rng.integers(0, VOCAB))]
            for _ in range(int(rng.integers(40, 400)) - 1):
                x.append((x[-1] * 3 + 1) % VOCAB)
            w.add_document(x)
    return str(prefix)


_TAKEN: set[int] = set()


def free_port() -> int:
    """A free port below Linux's ephemeral range (32768+), so that the outgoing connections of
    concurrent runs cannot take it between this check and the rendezvous binding it; never the
    same one twice in this process."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 32000)
        if port in _TAKEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _TAKEN.add(port)
        return port


def write_config(path: Path, corpus: str, **keys) -> Path:
    path.write_text(yaml.safe_dump({**BASE, "data-path": corpus, **keys}))
    return path


def child_env(**extra: str) -> dict:
    """The environment of a trainer subprocess: its own rendezvous port, the checkout importable."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "MASTER_PORT": str(free_port()), "PYTHONPATH": path, **extra}


def start_trainer(config: Path, log: Path, **env: str) -> subprocess.Popen:
    out = open(log, "w")  # noqa: SIM115 - closed by the caller through proc.stdout
    return subprocess.Popen(
        [sys.executable, "-m", "trainer.train", "--config", str(config)],
        cwd=ROOT,
        env=child_env(**env),
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def losses(log_dir: Path, kind: str = "train") -> dict[int, float]:
    lines = [json.loads(x) for x in (log_dir / "metrics.jsonl").read_text().splitlines()]
    return {m["iteration"]: m["lm_loss"] for m in lines if m["kind"] == kind}


def metrics(log_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (log_dir / "metrics.jsonl").read_text().splitlines()]
