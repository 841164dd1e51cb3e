"""`fused-optimizer-step`: AdamW on fp32 master weights of a bf16 model, gradient clipping folded in.

Why: on one H200, DeepSpeed's ZeRO-1 bf16 step is about 20% of a GPT-NeoX-20B-shape (8 layers) fp8 step
and 7% of a Pythia-1.4B step (BENCHMARKS.md, profiles of 2026-12-02): it flattens the bf16 gradients,
converts them to an fp32 partition, checks them for overflow, takes their norm in fp64, scales them,
runs FusedAdam, and copies the masters back. This step does the same maths in fewer passes: one norm
over the bf16 gradients (fp32 accumulation), then one pass per parameter of the fused kernels'
`adamw_step` (trainer/csrc/adamw.cu: bf16 gradient in, fp32 master and moments updated, bf16
parameter written, the clip scale read on the device). Without that kernel (CPU, NEOX_KERNELS=0), a slice
of parameters at a time: a cast of their gradients to fp32, torch's fused AdamW with the clip applied
through its `grad_scale` (as torch.amp.GradScaler does), and a cast copy of the masters into the bf16
parameters; the same maths in two passes more.

DeepSpeed then runs without its own mixed precision (no `bf16` section, ZeRO stage 0, no clipping of
its own) and calls this optimizer as it is; the model is cast to bf16 before. Each rank keeps the whole
optimizer state, as ZeRO-0 does, so trainer.engine allows it only where that is what ZeRO-1 would do
too: one rank, or stage 0.

The state (fp32 masters, moments, step count) is saved and restored with the checkpoint through
state_dict/load_state_dict, in fp32.
"""

from __future__ import annotations

import torch
from torch.optim.adamw import adamw

from trainer import kernels

SLICE_ELEMENTS = 1 << 28  # gradients cast to fp32 a slice at a time: at most 1 GiB of them at once


def _slices(params: list[torch.Tensor]):
    """Consecutive runs of `params` of at most SLICE_ELEMENTS elements (a larger tensor goes alone)."""
    chunk, size = [], 0
    for p in params:
        if chunk and size + p.numel() > SLICE_ELEMENTS:
            yield chunk
            chunk, size = [], 0
        chunk.append(p)
        size += p.numel()
    if chunk:
        yield chunk


class MasterWeightAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) over fp32 copies of low-precision parameters, with global-norm
    clipping at `max_grad_norm` (0 turns it off). `grad_norm` holds the last step's norm (a tensor)."""

    def __init__(
        self,
        params,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        max_grad_norm: float = 0.0,
    ) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.max_grad_norm = max_grad_norm
        self.grad_norm: torch.Tensor | None = None
        self._step: int | None = None  # the step count on the host, for the kernel's bias corrections
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p] = self._fresh_state(p)

    @staticmethod
    def _fresh_state(p: torch.Tensor) -> dict:
        master = p.detach().to(torch.float32, copy=True)
        return {
            "master": master,
            "exp_avg": torch.zeros_like(master),
            "exp_avg_sq": torch.zeros_like(master),
            "step": torch.zeros((), dtype=torch.float32, device=p.device),
        }

    def _clip_scale(self, grads: list[torch.Tensor]) -> torch.Tensor | None:
        """What to divide the gradients by: max(1, (norm + 1e-6) / max_grad_norm), as DeepSpeed's ZeRO
        step clips."""
        norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
        self.grad_norm = torch.linalg.vector_norm(torch.stack(norms))
        if self.max_grad_norm <= 0:
            return None
        return torch.clamp((self.grad_norm + 1e-6) / self.max_grad_norm, min=1.0)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        live = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not live:
            return loss
        scale = self._clip_scale([p.grad for p in live])
        if self._step is None:  # once after construction or a load: where the saved count stands
            self._step = int(self.state[live[0]]["step"].item())
        self._step += 1
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            ext = kernels.adamw_kernel(params) if params else None
            if ext is not None:
                self._update_in_one_pass(ext, params, group, scale)
                continue
            for chunk in _slices(params):
                self._update(chunk, group, scale)
        return loss

    def _update_in_one_pass(self, ext, params: list[torch.Tensor], group: dict, scale) -> None:
        states = [self.state[p] for p in params]
        beta1, beta2 = group["betas"]
        ext.adamw_step(
            params,
            [p.grad for p in params],
            [s["master"] for s in states],
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            float(group["lr"]),
            beta1,
            beta2,
            group["eps"],
            group["weight_decay"],
            self._step,
            scale,
        )
        torch._foreach_add_([s["step"] for s in states], 1.0)  # the saved count, as torch's AdamW keeps it

    def _update(self, params: list[torch.Tensor], group: dict, scale: torch.Tensor | None) -> None:
        states = [self.state[p] for p in params]
        masters = [s["master"] for s in states]
        beta1, beta2 = group["betas"]
        adamw(
            masters,
            [p.grad.to(torch.float32) for p in params],
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [],
            [s["step"] for s in states],
            fused=True,
            grad_scale=scale,
            found_inf=None,
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
        )
        torch._foreach_copy_(params, masters)  # the bf16 weights the next forward uses

    def load_state_dict(self, state_dict: dict) -> None:
        # torch's loader casts floating-point state to each parameter's dtype, which would round the
        # fp32 masters and moments to bf16: load the groups through it, the state here in fp32
        if not isinstance(state_dict, dict) or "state" not in state_dict:
            from jobs.cli import JobError

            raise JobError(
                "config key 'fused-optimizer-step': the checkpoint holds no state of this optimizer (it was saved "
                "with DeepSpeed's own step); resume it with the setting it was saved with"
            )
        saved = state_dict["state"]
        super().load_state_dict({**state_dict, "state": {}})
        self._step = None
        params = [p for g in self.param_groups for p in g["params"]]
        if sorted(saved) != list(range(len(params))):
            raise ValueError(
                f"optimizer state for {len(saved)} parameters, but this optimizer has {len(params)}"
            )
        for i, p in enumerate(params):
            s = saved[i]
            if tuple(s["master"].shape) != tuple(p.shape):
                raise ValueError(f"optimizer state {i}: shape {tuple(s['master'].shape)} != {tuple(p.shape)}")
            self.state[p] = {k: v.to(device=p.device, dtype=torch.float32, copy=True) for k, v in s.items()}
