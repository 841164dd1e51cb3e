"""The training loop end to end on CPU (DeepSpeed's CPU accelerator, gloo), as subprocesses:
loss falls, export round trip, kill + resume reproduces losses, data parallel == accumulation,
fine-tuning from Hugging Face weights at several ZeRO stages."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from jobs.indexed_dataset import IndexedDatasetWriter, dtype_for_vocab

from .conftest import make_hf_model

BASE = {
    "num-layers": 2, "hidden-size": 64, "num-attention-heads": 4, "seq-length": 32,
    "max-position-embeddings": 64, "rotary_pct": 0.25, "gpt_j_residual": True, "no-weight-tying": True,
    "bias-gelu-fusion": True, "padded-vocab-size": 512, "hidden-dropout": 0, "attention-dropout": 0,
    "optimizer": {"type": "Adam", "params": {"lr": 0.003, "betas": [0.9, 0.95], "eps": 1.0e-8}},
    "min_lr": 0.0003, "lr-decay-style": "cosine", "warmup": 0.1, "zero_optimization": {"stage": 1},
    "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2, "split": "90,10,0",
    "eval-iters": 2, "log-interval": 1, "seed": 7,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """300 documents following x -> 3x + 1 mod 512 from random starts: learnable in a few dozen steps."""
    prefix = tmp_path_factory.mktemp("corpus") / "tiny_text_document"
    rng = np.random.default_rng(0)
    with IndexedDatasetWriter(prefix, dtype_for_vocab(512)) as w:
        for _ in range(300):
            x = [int(rng.integers(0, 512))]
            for _ in range(int(rng.integers(20, 80)) - 1):
                x.append((x[-1] * 3 + 1) % 512)
            w.add_document(x)
    return str(prefix)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, corpus: str, **keys) -> Path:
    path.write_text(yaml.safe_dump({**BASE, "data-path": corpus, **keys}))
    return path


def trainer_cmd(config: Path, nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "trainer.train", "--config", str(config)]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
            f"--master_port={free_port()}", "-m", "trainer.train", "--config", str(config)]


def env() -> dict:
    return {**os.environ, "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}


def run(config: Path, nproc: int = 1) -> subprocess.CompletedProcess:
    proc = subprocess.run(trainer_cmd(config, nproc), env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def losses(log_dir: Path, kind: str = "train") -> dict[int, float]:
    lines = [json.loads(x) for x in (log_dir / "metrics.jsonl").read_text().splitlines()]
    return {m["iteration"]: m["lm_loss"] for m in lines if m["kind"] == kind}


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("trained")
    cfg = write_config(d / "run.yml", corpus, **{"train-iters": 30, "eval-interval": 15, "save": str(d / "ckpt")})
    proc = run(cfg)
    return d, proc


def test_loss_falls_and_validation_is_reported(trained):
    d, proc = trained
    train = losses(d / "ckpt")
    assert sorted(train) == list(range(1, 31))
    assert train[1] > 5.5  # about ln(512) = 6.2 at the start
    assert np.mean([train[i] for i in range(26, 31)]) < train[1] - 2.0
    valid = losses(d / "ckpt", "valid")
    assert set(valid) == {15, 30} and valid[30] < valid[15]
    stats = json.loads((d / "ckpt" / "train-stats.json").read_text())
    assert stats["iterations"] == 30 and stats["last"]["tokens_per_s"] > 0
    assert "done: 30 iterations" in proc.stdout


def test_export_round_trip(trained, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers loads the exported folder")
    from trainer.checkpoint import build_model, read_model_config

    d, _ = trained
    out = tmp_path / "hf"
    proc = subprocess.run([sys.executable, "-m", "trainer.export", "--checkpoint", str(d / "ckpt"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and (tmp_path / "hf-export-stats.json").is_file()
    # the model as trained: stage 1 keeps full fp32 weights in the module state
    tag = d / "ckpt" / "global_step30"
    mcfg, _ = read_model_config(tag)
    module = torch.load(tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    ours = build_model(mcfg, {k: v for k, v in module.items() if not k.startswith("rotary.")}).eval()
    hf = transformers.GPTNeoXForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), rtol=1e-4, atol=1e-4)


def test_kill_and_resume_reproduces_losses(corpus, tmp_path):
    keys = {"train-iters": 12, "save-interval": 4, "lr-decay-iters": 12}
    ref = write_config(tmp_path / "ref.yml", corpus, save=str(tmp_path / "ref"), **keys)
    run(ref)
    expected = losses(tmp_path / "ref")

    save = tmp_path / "killed"
    cfg = write_config(tmp_path / "killed.yml", corpus, save=str(save), **keys)
    proc = subprocess.Popen(trainer_cmd(cfg), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (save / "global_step4" / "model_config.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    resumed_from = int((save / "latest").read_text().strip().removeprefix("global_step"))
    assert resumed_from in (4, 8) and not (save / "global_step12").exists()
    (save / "metrics.jsonl").unlink()
    run(cfg)
    got = losses(save)
    assert sorted(got) == list(range(resumed_from + 1, 13))
    for it, loss in got.items():
        assert loss == pytest.approx(expected[it], rel=1e-5), it


def test_two_data_parallel_ranks_match_twice_the_accumulation(corpus, tmp_path):
    keys = {"train-iters": 4, "zero_optimization": {"stage": 1}}
    one = write_config(tmp_path / "one.yml", corpus, save=str(tmp_path / "one"), gradient_accumulation_steps=4, **keys)
    two = write_config(tmp_path / "two.yml", corpus, save=str(tmp_path / "two"), gradient_accumulation_steps=2, **keys)
    run(one)
    run(two, nproc=2)
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert a[4] < a[1]  # the weights did move, so equal losses mean equal updates
    for it in a:
        assert b[it] == pytest.approx(a[it], rel=1e-5), it


@pytest.mark.parametrize("stage", [0, 3])
def test_finetune_from_hf_weights_without_optimizer_state(corpus, tmp_path, stage):
    from trainer.checkpoint import load_hf
    from trainer.data import MicroBatches, build_splits
    from trainer.model import cross_entropy

    folder, _ = make_hf_model(tmp_path, use_parallel_residual=True, rotary_pct=0.25)
    cfg = write_config(tmp_path / "ft.yml", corpus, load=str(folder), save=str(tmp_path / "out"),
                       **{"train-iters": 2, "zero_optimization": {"stage": stage}, "gradient_accumulation_steps": 1})
    run(cfg)
    got = losses(tmp_path / "out")
    # iteration 1's loss is the pretrained model's loss on the first batch: the weights were loaded
    splits = build_splits(corpus, [0.9, 0.1, 0.0], 32, 7)
    tokens = next(MicroBatches(splits["train"], 4))
    with torch.no_grad():
        expected = cross_entropy(load_hf(folder)(tokens[:, :-1]), tokens[:, 1:]).item()
    assert got[1] == pytest.approx(expected, rel=1e-5)


def test_keep_last_n_checkpoints_deletes_older_ones_after_each_save(corpus, tmp_path):
    save = tmp_path / "ckpt"
    cfg = write_config(tmp_path / "keep.yml", corpus, **{"train-iters": 6, "save-interval": 2, "eval-interval": 100,
                                                       "keep-last-n-checkpoints": 2, "save": str(save)})
    proc = run(cfg)
    assert sorted(d.name for d in save.glob("global_step*")) == ["global_step4", "global_step6"]
    assert (save / "latest").read_text().strip() == "global_step6"
    assert f"removed checkpoint {save / 'global_step2'}" in proc.stdout + proc.stderr


def test_deepspeed_launcher_runs_the_same_training_as_torchrun(corpus, tmp_path):
    """The product's other plain launcher: `deepspeed --num_gpus 2 --module trainer.train` on CPU ranks."""
    launcher = Path(sys.executable).parent / "deepspeed"
    if not launcher.exists():
        pytest.fail("the deepspeed launcher is not installed beside this interpreter")
    keys = {"train-iters": 3, "zero_optimization": {"stage": 1}}
    ds = write_config(tmp_path / "ds.yml", corpus, save=str(tmp_path / "ds"), **keys)
    tr = write_config(tmp_path / "tr.yml", corpus, save=str(tmp_path / "tr"), **keys)
    cmd = [str(launcher), "--num_gpus", "2", "--master_port", str(free_port()), "--module", "trainer.train",
           "--config", str(ds)]
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 data-parallel ranks" in proc.stdout + proc.stderr
    run(tr, nproc=2)
    a, b = losses(tmp_path / "ds"), losses(tmp_path / "tr")
    assert sorted(a) == [1, 2, 3] and a == pytest.approx(b, rel=1e-6)
