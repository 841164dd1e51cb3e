"""Plain-PyTorch reference versions of the fused kernels (FORMATS.md section 4).

They run on CPU and wherever the CUDA extension is absent; autograd differentiates them as ordinary
torch ops. Tests and benchmarks also evaluate them in float64 as the ground truth.
"""

import math

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
GELU_C = math.sqrt(2.0 / math.pi)  # 0.79788456...


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """fp32 for half types; float64 stays float64 (the ground truth of tests and benchmarks)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """tanh-approximated GELU of x + bias (bias broadcast over the last dim)."""
    y = x + bias
    return 0.5 * y * (1.0 + torch.tanh(GELU_C * y * (1.0 + 0.044715 * y * y)))


def rotate_half(t: torch.Tensor) -> torch.Tensor:
    half = t.shape[-1] // 2
    return torch.cat((-t[..., half:], t[..., :half]), dim=-1)


def rotary(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rot_dim: int) -> torch.Tensor:
    """Partial rotary embedding. t: [b, heads, s, head_dim]; cos/sin: [s, rot_dim] (broadcastable)."""
    cos = cos.reshape(-1, rot_dim).to(t.dtype)
    sin = sin.reshape(-1, rot_dim).to(t.dtype)
    t_rot, t_pass = t[..., :rot_dim], t[..., rot_dim:]
    out = t_rot * cos + rotate_half(t_rot) * sin
    return torch.cat((out, t_pass), dim=-1)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy over targets != -100; logits [..., vocab], targets [...]."""
    flat = logits.reshape(-1, logits.shape[-1])
    return F.cross_entropy(_at_least_fp32(flat), targets.reshape(-1), ignore_index=IGNORE_INDEX)


def causal_softmax(x: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale * x) over the last dim with j > i masked out (zero); x [..., s, s]."""
    s_q, s_k = x.shape[-2], x.shape[-1]
    mask = torch.ones(s_q, s_k, dtype=torch.bool, device=x.device).triu(1)
    y = (_at_least_fp32(x) * scale).masked_fill(mask, float("-inf"))
    return torch.softmax(y, dim=-1).to(x.dtype)
