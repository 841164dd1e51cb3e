"""benchmarks/e2e_throughput.py on the CPU with its tiny preset: the code paths the GPU runs take.

A stand-in for the GPU machines, which CI does not have: real DeepSpeed (its CPU accelerator, gloo),
real torchrun and the real Hugging Face baseline, on a model of 0.2M parameters. What it cannot check is
speed or GPU memory (those numbers are zero here); what it checks is that a device call will not fail
on the script itself: the ZeRO-3 build inside `deepspeed.zero.Init` over two ranks and the gathered
16-bit save (issue 18's driver), ours (also with trainer.optim's step) and the baseline side by side,
and one profile file each."""

import json
import math
import subprocess
import sys
from pathlib import Path

import torch

from tests.support.net import free_port
from tests.support.trainer import clean_env

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "e2e_throughput.py"
TINY = ("--preset", "tiny", "--micro-batches", "2", "--seq", "64", "--steps", "2", "--warmup", "1")


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=clean_env(), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_zero3_over_two_ranks_trains_and_saves_the_gathered_weights(tmp_path):
    out, ck = tmp_path / "rows.jsonl", tmp_path / "ck"
    run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            str(SCRIPT),
            "--impl",
            "ours",
            "--zero",
            "3",
            *TINY,
            "--save-checkpoint",
            str(ck),
            "--save-weights-only",
            "--out",
            str(out),
        ]
    )
    step, save = rows(out)
    assert (step["zero"], step["world"], step["micro_batch"]) == (3, 2, 2)
    assert step["tokens_per_s"] > 0 and math.isfinite(step["loss"]) and 5 < step["loss"] < 8  # ln(512) = 6.2
    assert save["impl"] == "save_16bit_model" and save["bytes"] > 0
    weights = torch.load(next(ck.rglob("pytorch_model.bin")), weights_only=True)
    # gathered, not each rank's shard: the full embedding of vocab 512 x hidden 64
    assert tuple(weights["embed_in.weight"].shape) == (512, 64)
    assert weights["embed_in.weight"].dtype == torch.bfloat16


def test_ours_and_the_baseline_side_by_side_with_one_profile_each(tmp_path):
    out, prof = tmp_path / "rows.jsonl", tmp_path / "prof"
    impls = ["ours", "ours+fused-step", "hf"]
    proc = run(
        [
            sys.executable,
            str(SCRIPT),
            "--impl",
            *impls,
            *TINY,
            "--out",
            str(out),
            "--profile",
            str(prof),
        ]
    )
    assert [r["impl"] for r in rows(out)] == impls
    table = proc.stdout[proc.stdout.index("vs best bf16 HF") :]
    assert "ours" in table and "hf" in table and "1.00x" in table  # the baseline against itself
    assert sorted(p.name for p in prof.iterdir()) == ["hf-mb2.txt", "ours-mb2.txt", "ours_fused-step-mb2.txt"]
    assert "2 steps" in (prof / "ours-mb2.txt").read_text()
