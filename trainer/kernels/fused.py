"""Autograd Functions over the CUDA extension: forward and backward are both fused kernels.

``supports_*`` say whether the kernels handle given inputs (dtype, shape, size limits); the public
functions in ``trainer.kernels`` fall back to the references when they do not.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from trainer.kernels import loader

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def ext():
    return loader.load()[0]


def available() -> bool:
    return ext() is not None


def _vec_ok(t: torch.Tensor, n: int) -> bool:
    """Whether rows of length n of t take the 16-byte vector path (else the kernels use scalar loads)."""
    return n % (16 // t.element_size()) == 0 and t.data_ptr() % 16 == 0


def supports_bias_gelu(x, bias) -> bool:
    return (
        x.dtype in DTYPES
        and bias.dtype == x.dtype
        and bias.dim() == 1
        and x.dim() >= 1
        and x.shape[-1] == bias.shape[0]
    )


def supports_rotary(t, cos, sin, rot_dim) -> bool:
    return (
        t.dim() == 4
        and t.dtype in DTYPES
        and 0 < rot_dim <= t.shape[-1]
        and rot_dim % 2 == 0
        and t.shape[0] * t.shape[1] <= 65535
        and t.shape[-1] <= 256
        and cos.numel() == t.shape[2] * rot_dim
        and sin.numel() == cos.numel()
        and not cos.requires_grad
        and not sin.requires_grad
    )


def supports_layer_norm(x, weight, bias) -> bool:
    h = x.shape[-1] if x.dim() else 0
    return (
        x.dtype in DTYPES
        and weight.dtype == x.dtype
        and bias.dtype == x.dtype
        and weight.shape == (h,)
        and bias.shape == (h,)
        and h > 0
        and h <= ext().layer_norm_max_hidden(x.element_size(), h % (16 // x.element_size()) == 0)
    )


def supports_cross_entropy(logits, targets) -> bool:
    return (
        logits.dtype in DTYPES
        and logits.dim() >= 1
        and not targets.is_floating_point()
        and targets.numel() * logits.shape[-1] == logits.numel()
    )


def supports_causal_softmax(x) -> bool:
    if x.dtype not in DTYPES or x.dim() < 2 or x.shape[-1] != x.shape[-2]:
        return False
    s = x.shape[-1]
    return 0 < s <= ext().causal_softmax_max_len(x.element_size(), s % (16 // x.element_size()) == 0)


def supports_adamw(params) -> bool:
    """The master-weight AdamW kernel: bf16 parameters (and gradients), contiguous, on the GPU."""
    return all(p.dtype == torch.bfloat16 and p.is_contiguous() for p in params)


class BiasGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias):
        x, bias = x.contiguous(), bias.contiguous()
        ctx.save_for_backward(x, bias)
        return ext().bias_gelu_fwd(x, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, bias = ctx.saved_tensors
        dx, dbias = ext().bias_gelu_bwd(dy.contiguous(), x, bias)
        return dx, dbias


class Rotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, cos, sin, rot_dim):
        # the tables are small ([s, rot_dim]); fp32 keeps the angles exact for any t dtype
        cos = cos.reshape(-1, rot_dim).float().contiguous()
        sin = sin.reshape(-1, rot_dim).float().contiguous()
        if t.stride(-1) != 1:
            t = t.contiguous()
        ctx.save_for_backward(cos, sin)
        ctx.rot_dim = rot_dim
        return ext().rotary_fwd(t, cos, sin, rot_dim, False)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        if dy.stride(-1) != 1:
            dy = dy.contiguous()
        return ext().rotary_fwd(dy, cos, sin, ctx.rot_dim, True), None, None, None


class LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        x = x.contiguous()
        y, mean, rstd = ext().layer_norm_fwd(x, weight.contiguous(), bias.contiguous(), eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = ext().layer_norm_bwd(dy.contiguous(), x, weight.contiguous(), mean, rstd)
        return dx, dw, db, None


class CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets):
        shape = logits.shape
        flat = logits.reshape(-1, shape[-1]).contiguous()
        t = targets.reshape(-1).long().contiguous()
        losses, lse = ext().cross_entropy_fwd(flat, t)
        count = (t != -100).sum().float()  # stays on the device: no host sync
        ctx.save_for_backward(flat, t, lse, count)
        ctx.shape = shape
        return losses.sum() / count

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        flat, t, lse, count = ctx.saved_tensors
        scale = (grad.float() / count).reshape(1)
        return ext().cross_entropy_bwd(flat, t, lse, scale).view(ctx.shape), None


class CausalSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        y = ext().causal_softmax_fwd(x.contiguous(), float(scale))
        ctx.save_for_backward(y)
        ctx.scale = float(scale)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        return ext().causal_softmax_bwd(dy.contiguous(), y, ctx.scale), None
