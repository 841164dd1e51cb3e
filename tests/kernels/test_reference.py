"""The plain-PyTorch references against independent formulas (float64), and CPU dispatch."""

import math

import pytest
import torch
import torch.nn.functional as F

import trainer.kernels as K
from trainer.kernels import loader, reference

torch.manual_seed(0)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_bias_gelu_matches_formula_and_torch_tanh_gelu():
    x, b = torch.randn(7, 24, dtype=torch.float64), torch.randn(24, dtype=torch.float64)
    y = x + b
    formula = 0.5 * y * (1 + torch.tanh(0.79788456 * y * (1 + 0.044715 * y * y)))
    assert rel_err(reference.bias_gelu(x, b), formula) < 1e-8
    assert rel_err(reference.bias_gelu(x, b), F.gelu(y, approximate="tanh")) < 1e-12
    assert rel_err(reference.bias_gelu(x, b), F.gelu(y)) > 1e-6  # the tanh form, not erf


def test_rotary_matches_hf_gpt_neox():
    from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

    b, h, s, d, rot = 2, 3, 10, 16, 8
    q, k = torch.randn(b, h, s, d, dtype=torch.float64), torch.randn(b, h, s, d, dtype=torch.float64)
    inv = 1.0 / (10000 ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))
    freqs = torch.outer(torch.arange(s, dtype=torch.float64), inv)
    emb = torch.cat((freqs, freqs), dim=-1)  # [s, rot]: the half table twice, as HF builds it
    cos, sin = emb.cos(), emb.sin()
    hq, hk = apply_rotary_pos_emb(q, k, cos[None], sin[None])
    assert rel_err(reference.rotary(q, cos, sin, rot), hq) < 1e-12
    assert rel_err(reference.rotary(k, cos, sin, rot), hk) < 1e-12
    assert torch.equal(reference.rotary(q, cos, sin, rot)[..., rot:], q[..., rot:])  # pass-through


def test_rotary_is_a_rotation_of_pairs():
    t = torch.randn(1, 1, 5, 6, dtype=torch.float64)
    theta = torch.rand(5, 2, dtype=torch.float64) * 6
    emb = torch.cat((theta, theta), -1)
    out = reference.rotary(t, emb.cos(), emb.sin(), 4)
    # channels (j, j+2) rotate by theta_j: the norm of each pair is kept and the angle advances
    for j in range(2):
        a, c = torch.complex(t[..., j], t[..., j + 2]), torch.complex(out[..., j], out[..., j + 2])
        assert torch.allclose(c, a * torch.polar(torch.ones_like(theta[:, j]), theta[:, j]))


def test_layer_norm_matches_formula():
    x = torch.randn(5, 33, dtype=torch.float64) * 3 + 2
    w, b = torch.randn(33, dtype=torch.float64), torch.randn(33, dtype=torch.float64)
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    assert rel_err(reference.layer_norm(x, w, b, 1e-5), (x - mu) / torch.sqrt(var + 1e-5) * w + b) < 1e-12


def test_cross_entropy_ignores_minus_100_and_means_over_the_rest():
    logits = torch.randn(2, 4, 11, dtype=torch.float64)
    targets = torch.tensor([[1, -100, 3, 10], [0, 5, -100, -100]])
    lse = torch.logsumexp(logits, -1)
    keep = targets != -100
    picked = logits.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    expected = (lse - picked)[keep].mean()
    got = reference.cross_entropy(logits, targets)
    assert got.dtype == torch.float64  # float64 stays float64 (ground truth)
    assert abs(got.item() - expected.item()) < 1e-5


def test_cross_entropy_gradient_is_softmax_minus_onehot():
    logits = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([1, 2, -100, 8, 0, 4])
    K.cross_entropy(logits, targets).backward()
    p = torch.softmax(logits.detach(), -1)
    expect = (p - F.one_hot(targets.clamp(min=0), 9)) / 5
    expect[2] = 0
    assert rel_err(logits.grad, expect) < 1e-6


def test_causal_softmax_forward_and_backward_formula():
    c = 0.125
    x = torch.randn(3, 7, 7, dtype=torch.float64, requires_grad=True)
    y = reference.causal_softmax(x, c)
    assert torch.all(y.triu(1) == 0)
    assert torch.allclose(y.sum(-1), torch.ones(3, 7, dtype=torch.float64))
    i, j = 4, 2
    row = torch.exp(c * x[0, i, : i + 1] - (c * x[0, i, : i + 1]).max())
    assert math.isclose(y[0, i, j].item(), (row[j] / row.sum()).item(), rel_tol=1e-12)
    dy = torch.randn_like(y)
    y.backward(dy)
    yd = y.detach()
    expect = c * yd * (dy - (yd * dy).sum(-1, keepdim=True))  # FORMATS.md section 4
    assert rel_err(x.grad, expect) < 1e-12


def test_cpu_tensors_use_the_reference_and_autograd_works():
    x = torch.randn(4, 16, requires_grad=True)
    b = torch.randn(16, requires_grad=True)
    K.bias_gelu(x, b).sum().backward()
    assert x.grad is not None and b.grad is not None
    w, bb = torch.ones(16, requires_grad=True), torch.zeros(16, requires_grad=True)
    K.layer_norm(x, w, bb, 1e-5).pow(2).sum().backward()
    assert w.grad is not None and bb.grad is not None


def test_status_without_gpu_names_the_reason(monkeypatch):
    loader.load.cache_clear()
    try:
        if torch.cuda.is_available():
            pytest.skip("this test describes a machine without CUDA")
        s = K.status()
        assert s["active"] is False and s["reason"] == "no CUDA device"
        assert set(s["kernels"].values()) == {"reference"}
        assert "fused kernels off (no CUDA device)" in loader.summary()
        monkeypatch.setenv("NEOX_KERNELS", "0")
        loader.load.cache_clear()
        assert loader.status()["reason"] == "turned off by NEOX_KERNELS"
    finally:
        loader.load.cache_clear()
