"""Learning-rate schedule: linear warmup, then cosine or linear decay to min_lr (gpt-neox's AnnealingLR).

DeepSpeed steps it after every optimizer step that was not skipped for fp16 overflow and saves
its `state_dict` with each checkpoint.
"""

from __future__ import annotations

import math


def lr_at(step: int, max_lr: float, min_lr: float, warmup_iters: int, decay_iters: int, style: str) -> float:
    if warmup_iters > 0 and step <= warmup_iters:
        return max_lr * step / warmup_iters
    if style == "constant":
        return max_lr
    if step > decay_iters:
        return min_lr
    progress = (step - warmup_iters) / max(decay_iters - warmup_iters, 1)
    if style == "cosine":
        return min_lr + (max_lr - min_lr) / 2 * (math.cos(math.pi * progress) + 1)
    return max_lr - (max_lr - min_lr) * progress  # linear


class LRSchedule:
    """Sets every param group's lr; `warmup` is a fraction of `decay_iters`, as in gpt-neox."""

    def __init__(
        self, optimizer, max_lr: float, min_lr: float, warmup: float, decay_iters: int, style: str
    ) -> None:
        self.optimizer = optimizer
        self.max_lr, self.min_lr, self.style = max_lr, min_lr, style
        self.decay_iters = decay_iters
        self.warmup_iters = int(warmup * decay_iters)
        self.step_count = 0
        self._apply()

    def get_lr(self) -> list[float]:
        return [
            lr_at(self.step_count, self.max_lr, self.min_lr, self.warmup_iters, self.decay_iters, self.style)
        ]

    def get_last_lr(self) -> list[float]:
        return self.get_lr()

    def _apply(self) -> None:
        lr = self.get_lr()[0]
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, increment: int = 1) -> None:
        self.step_count += increment
        self._apply()

    def state_dict(self) -> dict:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self._apply()
