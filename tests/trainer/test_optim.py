"""`fused-optimizer-step` (trainer.optim.MasterWeightAdamW): the maths against torch's own AdamW and
clip_grad_norm_ on fp32 copies, its state through a checkpoint, and the trainer end to end on the CPU
(DeepSpeed's CPU accelerator) against DeepSpeed's bf16 ZeRO-1 step, with a stop and resume. Its speed is
a GPU matter for benchmarks/e2e_throughput.py (`ours+fused-step`), not a test here."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from jobs.cli import JobError
from tests.support.trainer import complete_steps, env, losses, run, trainer_cmd, write_config
from trainer import optim
from trainer.config import load_config
from trainer.optim import MasterWeightAdamW

BF16 = {"bf16": {"enabled": True}, "fused-optimizer-step": True}


def reference_step(params32, grads32, opt, max_norm):
    """What the step should do: DeepSpeed's clip (divide by max(1, (norm + 1e-6) / max_norm)), then AdamW."""
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads32]))
    scale = max(1.0, (norm.item() + 1e-6) / max_norm)
    for p, g in zip(params32, grads32, strict=True):
        p.grad = g / scale
    opt.step()
    return norm


@pytest.mark.parametrize("max_norm", [0.5, 1e9])  # clipping active, and never reached
def test_the_step_is_adamw_on_fp32_masters_with_the_clip(monkeypatch, max_norm):
    monkeypatch.setattr(optim, "SLICE_ELEMENTS", 100)  # several slices, so slicing is exercised too
    torch.manual_seed(0)
    shapes = [(30, 7), (7,), (64,), (5, 40)]
    params = [torch.randn(s).to(torch.bfloat16).requires_grad_() for s in shapes]
    start = [p.detach().clone() for p in params]
    groups = [{"params": params[:2], "weight_decay": 0.1}, {"params": params[2:], "weight_decay": 0.0}]
    ours = MasterWeightAdamW(groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, max_grad_norm=max_norm)
    ref32 = [p.detach().float().clone().requires_grad_() for p in params]
    ref = torch.optim.AdamW(
        [{"params": ref32[:2], "weight_decay": 0.1}, {"params": ref32[2:], "weight_decay": 0.0}],
        lr=1e-2,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    for _ in range(5):
        grads = [torch.randn(s).to(torch.bfloat16) for s in shapes]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        ours.step()
        norm = reference_step(ref32, [g.float() for g in grads], ref, max_norm)
        assert ours.grad_norm.item() == pytest.approx(norm.item(), rel=1e-5)
    for p, r in zip(params, ref32, strict=True):
        master = ours.state[p]["master"]
        assert master.dtype == torch.float32
        torch.testing.assert_close(master, r.detach(), rtol=1e-5, atol=1e-6)
        assert torch.equal(p.detach(), master.to(torch.bfloat16))  # the weights are the rounded masters
    assert not torch.equal(params[0].detach(), start[0])  # it moved the weights


def test_its_state_survives_a_checkpoint_in_fp32():
    torch.manual_seed(1)
    params = [torch.randn(50, 3).to(torch.bfloat16).requires_grad_()]
    a = MasterWeightAdamW(params, lr=1e-3, max_grad_norm=1.0)
    for _ in range(3):
        params[0].grad = torch.randn(50, 3).to(torch.bfloat16)
        a.step()
    saved = copy.deepcopy(a.state_dict())
    fresh = [params[0].detach().clone().requires_grad_()]
    b = MasterWeightAdamW(fresh, lr=1e-3, max_grad_norm=1.0)
    b.load_state_dict(saved)
    for key in ("master", "exp_avg", "exp_avg_sq", "step"):
        assert b.state[fresh[0]][key].dtype == torch.float32
        assert torch.equal(b.state[fresh[0]][key], a.state[params[0]][key]), key
    grad = torch.randn(50, 3).to(torch.bfloat16)
    params[0].grad, fresh[0].grad = grad.clone(), grad.clone()
    a.step()
    b.step()
    assert torch.equal(a.state[params[0]]["master"], b.state[fresh[0]]["master"])
    with pytest.raises(ValueError, match="shape"):
        MasterWeightAdamW([torch.zeros(2, 2, requires_grad=True)], lr=1e-3).load_state_dict(saved)


@pytest.mark.parametrize(
    ("keys", "why"),
    [
        ({"fused-optimizer-step": True}, "this config is fp32"),
        ({**BF16, "zero_optimization": {"stage": 2}}, "ZeRO stage 2 shards it"),
    ],
)
def test_what_it_does_not_do_is_refused_with_one_line(corpus, tmp_path, keys, why):
    cfg = write_config(tmp_path / "run.yml", corpus, **keys)
    with pytest.raises(JobError, match=f"config key 'fused-optimizer-step': .*{why}"):
        load_config([str(cfg)])


KEYS = {"train-iters": 8, "save-interval": 4, "lr-decay-iters": 8}


def test_the_trainer_learns_as_with_deepspeeds_step_and_resumes_exactly(corpus, tmp_path):
    ds = tmp_path / "ds"
    run(write_config(tmp_path / "ds.yml", corpus, save=str(ds), **KEYS, bf16={"enabled": True}))
    fused = tmp_path / "fused"
    proc = run(write_config(tmp_path / "fused.yml", corpus, save=str(fused), **KEYS, **BF16))
    assert "optimizer step trainer.optim.MasterWeightAdamW" in proc.stdout
    theirs, ours = losses(ds), losses(fused)
    assert sorted(ours) == list(range(1, 9))
    assert ours[1] == pytest.approx(theirs[1], rel=1e-6)  # the same weights and batch before any step
    for it in range(2, 9):  # the same maths (measured: within 2e-5); the order of fp32 sums differs
        assert ours[it] == pytest.approx(theirs[it], rel=1e-3), it
    assert ours[8] < ours[1] - 0.5
    # its checkpoint is a ZeRO-0 one: the export takes the module's bf16 weights
    export = subprocess.run(
        [sys.executable, "-m", "trainer.export", "--checkpoint", str(fused), "--out", str(tmp_path / "hf")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    assert (tmp_path / "hf" / "model.safetensors").is_file()

    # stopped after the checkpoint at 4, then run on: iterations 5-8 as in the uninterrupted run
    stopped = tmp_path / "stopped"
    cfg = write_config(
        tmp_path / "stopped.yml", corpus, save=str(stopped), **{**KEYS, **BF16, "train-iters": 4}
    )
    run(cfg)
    (stopped / "metrics.jsonl").unlink()
    run(write_config(tmp_path / "stopped.yml", corpus, save=str(stopped), **KEYS, **BF16))
    again = losses(stopped)
    assert sorted(again) == [5, 6, 7, 8]
    for it in again:
        assert again[it] == pytest.approx(ours[it], rel=1e-6), it


def test_zero1_over_two_ranks_is_refused_with_one_line(corpus, tmp_path):
    """ZeRO-1 over several ranks shards the optimizer state, which this step does not: refused, not ignored."""
    cfg = write_config(tmp_path / "run.yml", corpus, **{**BF16, "train-iters": 2})
    proc = subprocess.run(trainer_cmd(cfg, 2), env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert (
        "config key 'fused-optimizer-step': it keeps the whole optimizer state on every rank"
        in proc.stdout + proc.stderr
    )


def test_resuming_a_deepspeed_step_checkpoint_with_it_is_refused_with_one_line(corpus, tmp_path):
    save = tmp_path / "ckpt"
    keys = {**KEYS, "train-iters": 4, "bf16": {"enabled": True}}
    run(write_config(tmp_path / "ds.yml", corpus, save=str(save), **keys))
    cfg = write_config(tmp_path / "fused.yml", corpus, save=str(save), **{**KEYS, **BF16})
    proc = subprocess.run(trainer_cmd(cfg), env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "the checkpoint holds no state of this optimizer" in proc.stdout + proc.stderr
    assert complete_steps(save) == [4]  # nothing of the refused run written
