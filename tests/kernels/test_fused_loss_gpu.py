"""GPU: the chunked output layer + cross-entropy (trainer.fused_loss) against F.cross_entropy on the full
logits, loss and the gradients of hidden states and weight, through the fused CUDA cross-entropy
kernels and through the plain-PyTorch chunk path. Run on the GPU machine: `pytest tests/kernels -m gpu`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer.fused_loss import linear_cross_entropy
from trainer.kernels import loader

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine)"),
]

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(autouse=True)
def exact_fp32_matmul():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 tolerance is for fp32 arithmetic, not tf32
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("use_kernels", [True, False], ids=["cuda-kernels", "torch-chunks"])
@pytest.mark.parametrize("dtype", list(TOL), ids=str)
def test_loss_and_grads_match_full_logits(dtype, use_kernels):
    if use_kernels and loader.load()[0] is None:
        pytest.skip(f"fused kernels unavailable: {loader.load()[1].get('reason')}")
    g = torch.Generator(device="cuda").manual_seed(1)
    tokens, hidden, vocab = 5000, 512, 50304  # 5000 = 4 chunks of 1280 and a short one
    h = (torch.randn(2, tokens // 2, hidden, device="cuda", generator=g) * 0.5).to(dtype).requires_grad_()
    w = (torch.randn(vocab, hidden, device="cuda", generator=g) * 0.05).to(dtype).requires_grad_()
    t = torch.randint(0, vocab, (2, tokens // 2), device="cuda", generator=g)
    t[1, -300:] = -100
    ref = F.cross_entropy((h @ w.t()).float().flatten(0, 1), t.flatten(), ignore_index=-100)
    ref_h, ref_w = torch.autograd.grad(ref, (h, w))
    out = linear_cross_entropy(h, w, t, chunk=1280, use_kernels=use_kernels)
    got_h, got_w = torch.autograd.grad(out, (h, w))
    assert got_h.dtype == dtype and got_w.dtype == dtype
    errors = {"loss": rel(out, ref), "d hidden": rel(got_h, ref_h), "d weight": rel(got_w, ref_w)}
    assert max(errors.values()) < TOL[dtype], errors
    assert got_h[1, -300:].abs().max().item() == 0


def test_peak_memory_is_under_half_of_the_full_logits_path():
    """16k tokens x 50k vocabulary (Pythia-1.4B at micro-batch 8): the unfused path holds the bf16 logits
    (1.6 GB), their fp32 loss copy and their gradient; the chunked loss one chunk of each."""
    h = torch.randn(16384, 2048, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(50304, 2048, device="cuda") * 0.02).to(torch.bfloat16).requires_grad_()
    t = torch.randint(0, 50304, (16384,), device="cuda")

    def extra_memory(loss_fn) -> int:
        h.grad = w.grad = None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        loss_fn().backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    full = extra_memory(lambda: F.cross_entropy((h @ w.t()).float(), t))
    fused = extra_memory(lambda: linear_cross_entropy(h, w, t))
    assert fused < 0.5 * full, f"chunked {fused / 2**30:.2f} GiB, full logits {full / 2**30:.2f} GiB"
