"""Fused kernels for the GPT-NeoX layer, with plain-PyTorch fallbacks.

Each public function dispatches to the compiled CUDA extension (forward and backward kernels wrapped
in a ``torch.autograd.Function``) when its inputs are CUDA tensors the kernels support and the
extension loaded; otherwise it runs the reference in ``trainer.kernels.reference``. Set
``NEOX_KERNELS=0`` to force the reference everywhere. Inside ``torch.compile`` (``compile-blocks``, ``fp8``)
the references are traced, and inductor generates fused kernels for them.
"""

import torch

from trainer.kernels import reference

__all__ = [
    "bias_gelu",
    "rotary",
    "layer_norm",
    "cross_entropy",
    "causal_softmax",
    "adamw_kernel",
    "status",
    "summary",
]


def _fused():
    """The module of autograd Functions, or None when the extension is unavailable."""
    try:
        from trainer.kernels import fused
    except ImportError:
        return None
    return fused if fused.available() else None


def _use_fused(*tensors: torch.Tensor):
    # inside torch.compile the references are traced instead: inductor fuses them with their neighbours,
    # where the extension's autograd Functions would break the graph
    if torch.compiler.is_compiling() or not all(t.is_cuda for t in tensors):
        return None
    return _fused()


def bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """tanh GELU of x + bias; bias has shape [x.shape[-1]]."""
    f = _use_fused(x, bias)
    if f is not None and f.supports_bias_gelu(x, bias):
        return f.BiasGelu.apply(x, bias)
    return reference.bias_gelu(x, bias)


def rotary(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rot_dim: int) -> torch.Tensor:
    """Rotate-half rotary embedding on the first rot_dim channels of t [b, heads, s, head_dim]."""
    f = _use_fused(t, cos, sin)
    if f is not None and f.supports_rotary(t, cos, sin, rot_dim):
        return f.Rotary.apply(t, cos, sin, rot_dim)
    return reference.rotary(t, cos, sin, rot_dim)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dim with affine weight and bias."""
    f = _use_fused(x, weight, bias)
    if f is not None and f.supports_layer_norm(x, weight, bias):
        return f.LayerNorm.apply(x, weight, bias, eps)
    return reference.layer_norm(x, weight, bias, eps)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over targets != -100 (fp32 scalar); logits [..., vocab]."""
    f = _use_fused(logits, targets)
    if f is not None and f.supports_cross_entropy(logits, targets):
        return f.CrossEntropy.apply(logits, targets)
    return reference.cross_entropy(logits, targets)


def causal_softmax(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal (upper-triangle masked) softmax of scale * x over the last dim; x [..., s, s]."""
    f = _use_fused(x)
    if f is not None and f.supports_causal_softmax(x):
        return f.CausalSoftmax.apply(x, scale)
    return reference.causal_softmax(x, scale)


def adamw_kernel(params: list[torch.Tensor]):
    """The extension, when its one-pass AdamW (`adamw_step`: bf16 parameters and gradients, fp32 masters and
    moments, in place) takes these parameters; else None, and trainer.optim runs torch's fused AdamW."""
    grads = [p.grad for p in params]
    if any(g is None for g in grads):
        return None
    f = _use_fused(*params)
    if f is not None and f.supports_adamw(params + grads):
        return f.ext()
    return None


def status() -> dict:
    """Which kernels are active and why (used at start-up and by ``python -m trainer.doctor``)."""
    from trainer.kernels import loader

    return loader.status()


def summary() -> str:
    """One line for the trainer's start-up log: kernels on (where from, which GPU code) or off and why.

    Calling it loads (or JIT-builds) the extension and checks that it holds code for the running GPU."""
    from trainer.kernels import loader

    return loader.summary()
