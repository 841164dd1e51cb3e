"""Helpers of the GPU tests (tests/gpu): the small GPT-NeoX they train, the trainer as a subprocess,
its metrics, and the skip marks for a machine without CUDA or DeepSpeed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.support.net import rendezvous_port

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


def write_config(path: Path, corpus: str, **keys) -> Path:
    path.write_text(yaml.safe_dump({**BASE, "data-path": corpus, **keys}))
    return path


def child_env(**extra: str) -> dict:
    """The environment of a trainer subprocess: its own rendezvous port, the checkout importable."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "MASTER_PORT": str(rendezvous_port()), "PYTHONPATH": path, **extra}


def start_trainer(config: Path, log: Path, **env: str) -> subprocess.Popen:
    out = open(log, "w")  # noqa: SIM115 - closed by the caller through proc.stdout
    return subprocess.Popen(
        [sys.executable, "-m", "trainer.train", "--config", str(config)],
        cwd=ROOT,
        env=child_env(**env),
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def finish_trainer(proc: subprocess.Popen, log: Path, timeout: float = 480) -> tuple[int, str]:
    """Wait for a start_trainer run (killed past `timeout` seconds); its exit code and console log."""
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    return rc, log.read_text()


def run_trainers(
    root: Path, corpus: str, runs: dict[str, dict], env: dict[str, dict] | None = None, timeout: float = 480
) -> dict[str, tuple[Path, int, str]]:
    """One trainer per entry of `runs` (name -> config keys over BASE; `env`: name -> extra environment),
    all at once, each in root/NAME with its checkpoints and metrics in root/NAME/ckpt unless its keys say
    `save`; waits for all. A run that lost its rendezvous port to another process runs once more.
    Returns name -> (folder, exit code, console log)."""
    env = env or {}

    def start(name):
        d = root / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        cfg = write_config(d / "run.yml", corpus, **{"save": str(d / "ckpt"), **runs[name]})
        return d, start_trainer(cfg, d / "console.log", **env.get(name, {}))

    def finish(d, proc):
        return (d, *finish_trainer(proc, d / "console.log", timeout))

    procs = {name: start(name) for name in runs}
    out = {name: finish(*procs[name]) for name in runs}
    for name, (_, rc, log) in out.items():
        if rc != 0 and "EADDRINUSE" in log:
            out[name] = finish(*start(name))
    return out


def losses(log_dir: Path, kind: str = "train") -> dict[int, float]:
    lines = [json.loads(x) for x in (log_dir / "metrics.jsonl").read_text().splitlines()]
    return {m["iteration"]: m["lm_loss"] for m in lines if m["kind"] == kind}


def metrics(log_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (log_dir / "metrics.jsonl").read_text().splitlines()]
