"""CPU: the chunked output layer + cross-entropy (trainer.fused_loss) against F.cross_entropy on the full
logits, the model's fused and unfused loss paths, and the fp8 switch's refusal without a GPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jobs.cli import JobError
from trainer.config import from_dict
from trainer.engine import apply_speedups, fp8_refusal
from trainer.fused_loss import linear_cross_entropy
from trainer.model import GPTNeoX, ModelConfig


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def full_logits_loss(h, w, t):
    return F.cross_entropy((h @ w.t()).reshape(-1, w.shape[0]).float(), t.reshape(-1), ignore_index=-100)


@pytest.mark.parametrize("chunk", [1, 7, 64, None])  # one token, uneven chunks, one chunk, the default
def test_chunked_loss_and_grads_match_full_logits_fp32(chunk):
    g = torch.Generator().manual_seed(chunk or 0)
    h = torch.randn(3, 21, 32, generator=g, requires_grad=True)
    w = torch.randn(97, 32, generator=g, requires_grad=True)
    t = torch.randint(0, 97, (3, 21), generator=g)
    t[0, :4] = -100  # ignored targets count neither in the loss nor in the mean
    ref = full_logits_loss(h, w, t)
    ref_h, ref_w = torch.autograd.grad(ref, (h, w))
    out = linear_cross_entropy(h, w, t, chunk=chunk)
    got_h, got_w = torch.autograd.grad(out * 3.0, (h, w))  # the incoming gradient scales both
    assert out.dtype == torch.float32 and out.shape == ()
    assert rel(out, ref) < 1e-5
    assert rel(got_h, 3.0 * ref_h) < 1e-5
    assert rel(got_w, 3.0 * ref_w) < 1e-5
    assert got_h[0, :4].abs().max() == 0  # rows with ignored targets get no gradient


def test_without_grad_only_the_loss_is_computed():
    h, w = torch.randn(50, 16), torch.randn(40, 16)
    t = torch.randint(0, 40, (50,))
    with torch.no_grad():
        out = linear_cross_entropy(h, w, t, chunk=8)
    assert rel(out, full_logits_loss(h, w, t)) < 1e-6
    assert out.grad_fn is None


def test_mismatched_targets_are_refused_by_shape():
    with pytest.raises(ValueError, match=r"hidden \(4, 8\) and targets \(5,\)"):
        linear_cross_entropy(torch.randn(4, 8), torch.randn(10, 8), torch.zeros(5, dtype=torch.long))


@pytest.mark.parametrize("tied", [False, True])
def test_model_fused_loss_equals_the_full_logits_loss(tied):
    torch.manual_seed(0)
    model = GPTNeoX(
        ModelConfig(
            vocab_size=128,
            hidden_size=32,
            num_layers=2,
            num_heads=4,
            max_position_embeddings=16,
            tied_embeddings=tied,
        )
    )
    x = torch.randint(0, 128, (2, 17))
    grads = {}
    for fused in (False, True):
        model.fused_loss = fused
        model.zero_grad()
        loss = model(x[:, :-1], targets=x[:, 1:])
        loss.backward()
        grads[fused] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
    assert rel(grads[True][0], grads[False][0]) < 1e-6
    assert rel(grads[True][0], F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())) < 1e-6
    assert max(rel(a, b) for a, b in zip(grads[True][1], grads[False][1], strict=True)) < 1e-5


def test_fp8_is_refused_with_one_clear_line_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = from_dict({"fp8": True, "padded-vocab-size": 128})
    assert cfg.model.fp8 is True
    model = GPTNeoX(cfg.model_config())
    with pytest.raises(JobError) as err:
        apply_speedups(model, cfg)
    msg = str(err.value)
    assert msg == fp8_refusal()
    assert "\n" not in msg and "config key 'fp8'" in msg and "compute capability >= 8.9" in msg
    assert "no GPU" in msg
    assert all(type(m) is torch.nn.Linear for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_speed_keys_default_off_and_fused_loss_is_set_from_the_config():
    cfg = from_dict({"padded-vocab-size": 128})
    assert (cfg.model.fp8, cfg.model.compile_blocks, cfg.model.fused_output_loss) == (False, False, False)
    model = GPTNeoX(cfg.model_config())
    model.fused_loss = True
    assert apply_speedups(model, cfg) == ["fused output loss off"]
    assert model.fused_loss is False
    cfg = from_dict({"padded-vocab-size": 128, "fused-output-loss": True})
    assert apply_speedups(model, cfg) == ["fused output loss on"] and model.fused_loss is True


def test_trainer_cli_refuses_fp8_on_cpu_with_one_line_and_exit_code(tmp_path):
    import os
    import subprocess
    import sys

    import numpy as np
    import yaml

    from jobs.indexed_dataset import IndexedDatasetWriter, dtype_for_vocab

    prefix = tmp_path / "doc"
    rng = np.random.default_rng(0)
    with IndexedDatasetWriter(prefix, dtype_for_vocab(128)) as w:
        for _ in range(20):
            w.add_document([int(v) for v in rng.integers(0, 128, 40)])
    cfg = tmp_path / "fp8.yml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "num-layers": 1,
                "hidden-size": 32,
                "num-attention-heads": 4,
                "seq-length": 16,
                "padded-vocab-size": 128,
                "data-path": str(prefix),
                "train-iters": 2,
                "train_micro_batch_size_per_gpu": 2,
                "fp8": True,
                "optimizer": {"type": "Adam", "params": {"lr": 0.001}},
            }
        )
    )
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "MASTER_PORT": str(29000 + os.getpid() % 1000),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.train", "--config", str(cfg)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0, proc.stdout[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("trainer.train: error:")]
    assert errors == [
        "trainer.train: error: "
        + (
            "config key 'fp8': FP8 training needs an NVIDIA GPU with compute capability >= 8.9; no GPU is visible"
        )
    ], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def test_checkpoint_activations_key_wraps_the_blocks_from_outside():
    cfg = from_dict({"padded-vocab-size": 128, "num-layers": 2, "checkpoint-activations": True})
    model = GPTNeoX(cfg.model_config())
    names = list(model.state_dict())
    assert apply_speedups(model, cfg) == ["fused output loss off", "activation checkpointing in 2 blocks"]
    assert all(type(b).__name__ == "CheckpointedBlock" for b in model.layers)
    assert list(model.state_dict()) == names
