"""Fused CUDA kernels against the float64 references: forward and backward, several dtypes and shapes.

Run on the GPU machine: ``pytest tests/kernels -m gpu``. The extension is built just in time when no
prebuilt one matches (TORCH_CUDA_ARCH_LIST, NEOX_KERNELS_CACHE apply).
"""

import math

import pytest
import torch

import trainer.kernels as K
from trainer.kernels import loader, reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine)"),
]

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
DTYPES = list(TOL)


@pytest.fixture(scope="module", autouse=True)
def ext():
    module, info = loader.load()
    if module is None and "no nvcc" in info.get("reason", ""):
        pytest.skip(f"fused kernels unavailable: {info['reason']}")
    assert module is not None, f"fused kernels did not load: {info['reason']}"
    return module


def max_rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max |ref|: NaN anywhere fails."""
    got, ref = got.double(), ref.double()
    if torch.isnan(got).any():
        return math.inf
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def run_both(fused_fn, ref_fn, inputs: list[torch.Tensor], grad_mask: list[bool], fn_name: str):
    """Forward + backward through the public (fused) function and the float64 reference."""
    ours = [t.detach().clone().requires_grad_(g) for t, g in zip(inputs, grad_mask, strict=True)]
    theirs = [t.detach().double().requires_grad_(g) for t, g in zip(inputs, grad_mask, strict=True)]
    out = fused_fn(*ours)
    assert out.grad_fn.name().startswith(f"{fn_name}Backward"), (
        f"{out.grad_fn.name()}: the fused kernel was not used"
    )
    ref = ref_fn(*theirs)
    dy = torch.randn_like(ref) if out.dim() else torch.ones_like(ref)
    out.backward(dy.to(out.dtype))
    ref.backward(dy)
    errs = {"out": max_rel(out, ref)}
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if a.requires_grad:
            errs[f"grad{i}"] = max_rel(a.grad, b.grad)
    return errs


def assert_close(errs: dict, dtype):
    bad = {k: v for k, v in errs.items() if not v < TOL[dtype]}
    assert not bad, f"{dtype}: relative errors over {TOL[dtype]}: {bad} (all: {errs})"


def test_status_reports_active_kernels():
    s = K.status()
    assert s["active"], s
    major, minor = torch.cuda.get_device_capability()
    assert s["image"]["cuda_arch"] // 10 <= major * 10 + minor
    assert set(s["kernels"].values()) == {"fused"}
    assert "fused kernels on" in loader.summary()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 64, 512), (3, 5, 100)])  # 100: not a multiple of the vector width
def test_bias_gelu(dtype, shape):
    x = torch.randn(shape, device="cuda", dtype=dtype) * 2
    b = torch.randn(shape[-1], device="cuda", dtype=dtype)
    assert_close(run_both(K.bias_gelu, reference.bias_gelu, [x, b], [True, True], "BiasGelu"), dtype)


def _tables(s, rot, device="cuda"):
    inv = 1.0 / (10000 ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))
    emb = torch.outer(torch.arange(s, dtype=torch.float64), inv).repeat(1, 2)  # [s, rot]
    return emb.cos().float().to(device), emb.sin().float().to(device)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,h,s,d,rot", [(2, 4, 64, 128, 32), (2, 6, 48, 96, 24), (1, 3, 17, 10, 6)])
def test_rotary_contiguous(dtype, b, h, s, d, rot):
    t = torch.randn(b, h, s, d, device="cuda", dtype=dtype)
    cos, sin = _tables(s, rot)

    def ref(t):
        return reference.rotary(t, cos.double(), sin.double(), rot)

    assert_close(run_both(lambda t: K.rotary(t, cos, sin, rot), ref, [t], [True], "Rotary"), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_on_strided_query_from_fused_qkv(dtype):
    b, s, h, d, rot = 2, 40, 4, 64, 16
    qkv = torch.randn(b, s, h, 3 * d, device="cuda", dtype=dtype)  # GPT-NeoX layout
    q = qkv[..., :d].permute(0, 2, 1, 3)  # [b, h, s, d], not contiguous
    assert not q.is_contiguous()
    cos, sin = _tables(s, rot)
    out = K.rotary(q, cos, sin, rot)
    ref = reference.rotary(q.double(), cos.double(), sin.double(), rot)
    assert max_rel(out, ref) < TOL[dtype]
    # gradient reaches the right slice of qkv and nothing else
    qkv.requires_grad_(True)
    q = qkv[..., :d].permute(0, 2, 1, 3)
    K.rotary(q, cos, sin, rot).sum().backward()
    assert torch.all(qkv.grad[..., d:] == 0) and qkv.grad[..., :d].abs().sum() > 0


def layer_norm_errors(x, w, b):
    """The fused LayerNorm against the reference, forward and all three gradients."""
    return run_both(
        lambda x, w, b: K.layer_norm(x, w, b, 1e-5),
        lambda x, w, b: reference.layer_norm(x, w, b, 1e-5),
        [x, w, b],
        [True, True, True],
        "LayerNorm",
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,hidden", [(64, 2048), (16, 6144), (7, 100), (3, 8192)])
def test_layer_norm(dtype, rows, hidden):
    x = torch.randn(rows, hidden, device="cuda", dtype=dtype) * 2 + 0.5
    w = 1 + 0.1 * torch.randn(hidden, device="cuda", dtype=dtype)
    b = 0.1 * torch.randn(hidden, device="cuda", dtype=dtype)
    errs = layer_norm_errors(x, w, b)
    assert_close(errs, dtype)


def test_layer_norm_many_rows_exercises_persistent_backward():
    x = torch.randn(20000, 256, device="cuda")
    w, b = torch.randn(256, device="cuda"), torch.randn(256, device="cuda")
    errs = layer_norm_errors(x, w, b)
    assert_close(errs, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,vocab", [(96, 50304), (33, 1001)])
def test_cross_entropy(dtype, n, vocab):
    logits = torch.randn(2, n, vocab, device="cuda", dtype=dtype) * 3
    targets = torch.randint(0, vocab, (2, n), device="cuda")
    targets[0, ::5] = -100
    errs = run_both(
        lambda lg: K.cross_entropy(lg, targets),
        lambda lg: reference.cross_entropy(lg, targets),
        [logits],
        [True],
        "CrossEntropy",
    )
    assert_close(errs, dtype)


def test_cross_entropy_keeps_no_fp32_copy_of_bf16_logits():
    n, vocab = 2048, 50304
    logits = torch.randn(n, vocab, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, vocab, (n,), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    K.cross_entropy(logits, targets).backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    # the gradient (bf16, same size as the logits) plus small per-row buffers; an fp32 copy would double it
    assert extra < 1.2 * logits.numel() * 2, extra


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 128, 128), (4, 37, 37), (1, 1, 2048, 2048)])
def test_causal_softmax(dtype, shape):
    x = torch.randn(shape, device="cuda", dtype=dtype) * 4
    scale = 1 / math.sqrt(96)
    errs = run_both(
        lambda x: K.causal_softmax(x, scale),
        lambda x: reference.causal_softmax(x, scale),
        [x],
        [True],
        "CausalSoftmax",
    )
    assert_close(errs, dtype)


def test_unsupported_inputs_fall_back_to_reference():
    x = torch.randn(4, 8, device="cuda", dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, device="cuda", dtype=torch.float64)
    assert not K.bias_gelu(x, b).grad_fn.name().startswith("BiasGeluBackward")
    big = torch.randn(2, 16384, device="cuda", requires_grad=True)  # fp32 rows over the register budget
    w = torch.ones(16384, device="cuda")
    out = K.layer_norm(big, w, torch.zeros_like(w), 1e-5)
    assert not out.grad_fn.name().startswith("LayerNormBackward")
    assert max_rel(out, reference.layer_norm(big.double(), w.double(), w.double() * 0, 1e-5)) < 1e-5
