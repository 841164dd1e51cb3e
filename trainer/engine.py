"""Wrap the plain model with DeepSpeed from outside (torchtitan's `parallelize` role).

Order: distributed init -> model (weights already loaded, on CPU) -> parameter groups (no weight
decay on biases and norms, as gpt-neox) -> optimizer and LR schedule -> `deepspeed.initialize`
(ZeRO 0-3, fp16 with dynamic loss scaling or bf16, clipping, accumulation).

Because the weights are in the model before DeepSpeed builds the optimizer, fine-tuning from weights
without optimizer state works at every ZeRO stage: there is no optimizer state to load.

CPU (tests, CI): DeepSpeed 0.19.8's CPU accelerator (`DS_ACCELERATOR=cpu`, picked automatically
when no GPU is visible) with gloo, and `torch_adam: true` so the optimizer is torch's AdamW
instead of DeepSpeed's compiled CPU Adam. No oneCCL or IPEX is needed. On GPU: nccl and
DeepSpeed's FusedAdam.
"""

from __future__ import annotations

import os

import torch

from trainer.config import NeoXConfig
from trainer.schedule import LRSchedule

_FP16_KEYS = ("enabled", "loss_scale", "loss_scale_window", "initial_scale_power", "hysteresis", "min_loss_scale")


def on_gpu() -> bool:
    return torch.cuda.is_available()


def init_distributed() -> None:
    """Join the process group that the launcher (deepspeed, torchrun, Determined) describes in env;
    a bare `python -m trainer.train` becomes a world of one."""
    import deepspeed

    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    if on_gpu():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu() else "gloo")


def ds_config(cfg: NeoXConfig, world_size: int) -> dict:
    """The DeepSpeed config, built from the NeoX config's sections."""
    b = cfg.batch
    train_batch = b.train_micro_batch_size_per_gpu * b.gradient_accumulation_steps * world_size
    if b.train_batch_size is not None and b.train_batch_size != train_batch:
        from jobs.cli import JobError

        raise JobError(
            f"config key 'train_batch_size' {b.train_batch_size} != micro-batch {b.train_micro_batch_size_per_gpu}"
            f" x accumulation {b.gradient_accumulation_steps} x {world_size} ranks = {train_batch}"
        )
    opt = cfg.optimizer.optimizer
    params = {k: v for k, v in opt.get("params", {}).items() if k in ("lr", "betas", "eps")}
    params["weight_decay"] = cfg.optimizer.weight_decay
    params["adam_w_mode"] = True  # gpt-neox's Adam is FusedAdam, i.e. decoupled weight decay
    if not on_gpu():
        params["torch_adam"] = True
    out = {
        "train_micro_batch_size_per_gpu": b.train_micro_batch_size_per_gpu,
        "gradient_accumulation_steps": b.gradient_accumulation_steps,
        "train_batch_size": train_batch,
        "optimizer": {"type": "Adam", "params": params},
        "gradient_clipping": cfg.optimizer.gradient_clipping,
        "zero_optimization": dict(cfg.zero_optimization),
        "steps_per_print": cfg.train.steps_per_print,
        "wall_clock_breakdown": cfg.train.wall_clock_breakdown,
        "zero_allow_untested_optimizer": True,
    }
    p = cfg.precision
    if p.fp16_enabled:
        fp16 = {k: v for k, v in (p.fp16 or {}).items() if k in _FP16_KEYS}
        out["fp16"] = {**fp16, "enabled": True}
    elif p.bf16_enabled:
        out["bf16"] = {"enabled": True}
    return out


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if name.endswith("bias") or p.ndim == 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def parallelize(model: torch.nn.Module, cfg: NeoXConfig):
    """DeepSpeed engine around `model`, with our LR schedule; returns the engine."""
    import deepspeed
    import torch.distributed as dist

    config = ds_config(cfg, dist.get_world_size())
    # DeepSpeed builds the optimizer from the config; the schedule then needs that optimizer,
    # so it is passed as a callable.
    s = cfg.schedule

    def schedule(optimizer):
        return LRSchedule(optimizer, cfg.optimizer.lr, s.min_lr, s.warmup, s.lr_decay_iters, s.lr_decay_style)

    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=param_groups(model, cfg.optimizer.weight_decay),
        config=config,
        lr_scheduler=schedule,
    )
    return engine
