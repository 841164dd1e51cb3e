"""Output layer + cross-entropy in chunks of tokens, never holding the full [tokens, vocab] logits.

`linear_cross_entropy(hidden, weight, targets)` equals
`F.cross_entropy((hidden @ weight.T).float(), targets, ignore_index=-100)` (mean over the targets that
are not -100). The forward walks the tokens `chunk` rows at a time: logits of the chunk, its loss, and
at once (when a gradient is wanted) the chunk's logit gradient, turned straight into its share of the
hidden and weight gradients. Only one chunk's logits and logit gradient exist at any time, so at
Pythia-1.4B, micro-batch 16 x 2048 tokens, 3.3 GB of bf16 logits plus their gradient become about
0.8 GB. The backward only scales the stored gradients by the incoming one (the loss is the last op
of the graph, so that is a scalar 1 in training). The same idea as Liger-Kernel's fused linear
cross-entropy, here over the trainer's own CUDA cross-entropy kernels (`trainer.kernels`), with a
plain-PyTorch fallback on CPU or without the extension.

Precision: logits in the weight's dtype with fp32 accumulation (as the unfused `F.linear`), softmax
and loss in fp32, the weight gradient summed over chunks in fp32 and cast once.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
CHUNK_ELEMENTS = 2**28  # logits per chunk: 512 MiB in bf16 (8192 tokens of a 50k vocabulary at most)


def _chunk_rows(vocab: int, rows: int) -> int:
    return max(1, min(rows, CHUNK_ELEMENTS // vocab // 256 * 256, 8192))  # whole 256-row GEMM tiles


def _accumulate(dw: torch.Tensor, grad: torch.Tensor, hc: torch.Tensor) -> torch.Tensor:
    """dw + grad.T @ hc with dw in fp32: on CUDA one GEMM that adds half-precision products into the
    fp32 sum (cuBLAS's output dtype), elsewhere the product then the sum."""
    if dw.dtype == grad.dtype:
        return dw.addmm_(grad.t(), hc)
    if dw.is_cuda:
        return torch.addmm(dw, grad.t(), hc, out_dtype=dw.dtype)
    return dw.add_((grad.t() @ hc).to(dw.dtype))


def _loss_and_grad_reference(logits: torch.Tensor, targets: torch.Tensor, scale, want_grad: bool):
    """(sum of the chunk's losses in fp32, d(sum * scale)/d logits in logits' dtype or None)."""
    x = logits.float() if logits.dtype != torch.float64 else logits
    lse = torch.logsumexp(x, dim=-1)
    valid = targets != IGNORE_INDEX
    safe = torch.where(valid, targets, 0)
    picked = x.gather(1, safe.unsqueeze(1)).squeeze(1)
    loss_sum = torch.where(valid, lse - picked, 0.0).sum()
    if not want_grad:
        return loss_sum, None
    grad = torch.exp(x - lse.unsqueeze(1))
    grad.scatter_add_(1, safe.unsqueeze(1), -valid.unsqueeze(1).to(grad.dtype))
    grad.mul_(valid.unsqueeze(1).to(grad.dtype) * scale)
    return loss_sum, grad.to(logits.dtype)


def _loss_and_grad_fused(ext, logits: torch.Tensor, targets: torch.Tensor, scale, want_grad: bool):
    losses, lse = ext.cross_entropy_fwd(logits, targets)  # per-row losses (0 where ignored), fp32
    if not want_grad:
        return losses.sum(), None
    return losses.sum(), ext.cross_entropy_bwd(logits, targets, lse, scale.reshape(1).float())


def _kernels(logits: torch.Tensor, targets: torch.Tensor):
    """The CUDA extension when it handles these logits, else None (the reference runs)."""
    if not logits.is_cuda:
        return None
    from trainer import kernels

    f = kernels._fused()
    return f.ext() if f is not None and f.supports_cross_entropy(logits, targets) else None


class LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, use_kernels):
        shape = hidden.shape
        h = hidden.reshape(-1, shape[-1])
        t = targets.reshape(-1).long()
        n, vocab = h.shape[0], weight.shape[0]
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]  # False under no_grad (evaluation)
        count = (t != IGNORE_INDEX).sum().to(torch.float32)  # stays on the device: no host sync
        scale = (
            1.0 / count
        )  # inf when every target is ignored: then no row contributes, loss is nan as torch's
        rows = chunk or _chunk_rows(vocab, n)
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        dh = torch.empty_like(h) if want_grad and ctx.needs_input_grad[0] else None
        acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
        dw = (
            torch.zeros(weight.shape, dtype=acc, device=weight.device)
            if want_grad and ctx.needs_input_grad[1]
            else None
        )
        for start in range(0, n, rows):
            hc, tc = h[start : start + rows], t[start : start + rows]
            logits = hc @ weight.t()
            ext = _kernels(logits, tc) if use_kernels else None
            if ext is not None:
                part, grad = _loss_and_grad_fused(ext, logits, tc, scale, want_grad)
            else:
                part, grad = _loss_and_grad_reference(logits, tc, scale, want_grad)
            loss += part
            del logits
            if grad is not None:
                if dh is not None:
                    torch.mm(grad, weight, out=dh[start : start + rows])
                if dw is not None:
                    dw = _accumulate(dw, grad, hc)
        ctx.save_for_backward(dh, dw.to(weight.dtype) if dw is not None else None)
        ctx.shape = shape
        return loss * scale

    @staticmethod
    def backward(ctx, grad_loss):
        dh, dw = ctx.saved_tensors
        g = grad_loss.to(torch.float32)
        dh = (dh * g.to(dh.dtype)).view(ctx.shape) if dh is not None else None
        dw = dw * g.to(dw.dtype) if dw is not None else None
        return dh, dw, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk: int | None = None,
    use_kernels: bool = True,
) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets` (-100 ignored), in chunks of tokens.

    hidden [..., h], weight [vocab, h], targets [...]; returns an fp32 scalar. `chunk` tokens per
    chunk (default: about 2^28 logits); `use_kernels=False` forces the plain-PyTorch chunk loss."""
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} differ in leading dims"
        )
    return LinearCrossEntropy.apply(hidden, weight, targets, chunk, use_kernels)
