"""`python -m trainer.train` with `fused-optimizer-step: true` (trainer.optim on fp32 masters, the clip
folded in) against the same run with DeepSpeed's bf16 ZeRO-1 step, 300 iterations on one GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.support.gpu import BF16, losses, needs_cuda, needs_deepspeed, run_trainers

pytestmark = [pytest.mark.gpu, needs_cuda(), needs_deepspeed()]

ITERS = 300
KEYS = {"train-iters": ITERS, "eval-interval": ITERS, "zero_optimization": {"stage": 1}, "log-interval": 1}


@pytest.fixture(scope="module")
def curves(corpus, tmp_path_factory):
    runs = {
        name: {**BF16, **KEYS, "fused-optimizer-step": fused}
        for name, fused in (("deepspeed", False), ("fused", True))
    }
    out = {}
    for name, (d, rc, log) in run_trainers(tmp_path_factory.mktemp("fused-step-runs"), corpus, runs).items():
        assert rc == 0, log[-4000:]
        got = losses(d / "ckpt")
        out[name] = (np.array([got[i] for i in sorted(got)]), log)
    return out


def test_the_fused_step_trains_as_deepspeeds_step(curves):
    theirs, _ = curves["deepspeed"]
    ours, log = curves["fused"]
    assert "optimizer step trainer.optim.MasterWeightAdamW" in log
    assert len(ours) == len(theirs) == ITERS and np.isfinite(ours).all()
    # the same maths; FusedAdam and torch's fused AdamW round differently, so allow drift late on
    np.testing.assert_allclose(ours[:10], theirs[:10], rtol=1e-3)
    for start in range(0, ITERS, 50):
        a, b = ours[start : start + 50].mean(), theirs[start : start + 50].mean()
        assert abs(a - b) <= max(0.05, 0.05 * b), (start, a, b)
    assert ours[-20:].mean() < ours[0] - 3.0


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_the_one_pass_kernel_updates_as_torchs_fused_adamw(clip, monkeypatch):
    """trainer/csrc/adamw.cu against the path without it (a cast to fp32, torch's fused AdamW, a copy
    back), over sizes that take its vector and scalar loops, for a few steps with weight decay."""
    from trainer import kernels, optim

    gen = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(7,), (4096 + 3,), (1024, 1024), (3, 5, 11)]

    ours = [torch.nn.Parameter(torch.randn(s, device="cuda", generator=gen).bfloat16()) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    assert kernels.adamw_kernel(ours) is None  # no gradients yet: nothing to take
    kw = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, max_grad_norm=clip)
    opt_ours, opt_theirs = optim.MasterWeightAdamW(ours, **kw), optim.MasterWeightAdamW(theirs, **kw)
    for _ in range(5):
        for a, b in zip(ours, theirs, strict=True):
            a.grad = torch.randn(a.shape, device="cuda", generator=gen).bfloat16()
            b.grad = a.grad.clone()
        assert kernels.adamw_kernel(ours) is not None, "the extension did not load: build it first"
        opt_ours.step()
        with monkeypatch.context() as m:
            m.setattr(optim.kernels, "adamw_kernel", lambda params: None)
            opt_theirs.step()
    for a, b in zip(ours, theirs, strict=True):
        sa, sb = opt_ours.state[a], opt_theirs.state[b]
        for key in ("master", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(sa[key], sb[key], rtol=1e-5, atol=1e-6, msg=key)
        assert float(sa["step"]) == float(sb["step"]) == 5.0
        assert torch.equal(a.detach(), sa["master"].bfloat16())  # the bf16 weights are the masters rounded
    torch.testing.assert_close(opt_ours.grad_norm, opt_theirs.grad_norm)
