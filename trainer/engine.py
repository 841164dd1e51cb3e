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

Speed settings, applied to the model before DeepSpeed sees it (`apply_speedups`): `fused-output-loss`
(output layer + cross-entropy in token chunks, trainer.fused_loss), `fp8` (torchao's float8 training for
the blocks' linear layers: their matmuls in fp8 with dynamic scales, the weights, gradients, optimizer
and checkpoints as without it), `compile-blocks` (torch.compile of each block; always on with fp8,
whose casts are only fast once inductor fuses them) and `checkpoint-activations` (each block recomputed
in backward, `apply_activation_checkpointing`). `fused-optimizer-step` replaces DeepSpeed's bf16 ZeRO-1
step with trainer.optim's (one rank or ZeRO-0: it keeps the whole optimizer state).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from trainer.config import NeoXConfig
from trainer.schedule import LRSchedule

FP8_RECIPE = "tensorwise"  # picked by measurement on the H200: see BENCHMARKS.md
FP8_MIN_CAPABILITY = (8, 9)  # Ada and Hopper have fp8 tensor cores
_FP16_KEYS = (
    "enabled",
    "loss_scale",
    "loss_scale_window",
    "initial_scale_power",
    "hysteresis",
    "min_loss_scale",
)


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


def leave_distributed() -> None:
    """Tear the process group down while the interpreter is still whole: Gloo's worker threads, left
    to interpreter finalization, can abort a finished run with SIGABRT ("terminate called without an
    active exception", pytorch/pytorch#179291). Called after a run that succeeded; a failed one just
    exits, so a rank never waits here on peers that are gone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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


def fused_step_config(config: dict) -> dict:
    """The DeepSpeed config for trainer.optim's step: no optimizer, mixed precision, clipping or ZeRO of
    DeepSpeed's own (the optimizer does them), so DeepSpeed calls it as it is."""
    out = {k: v for k, v in config.items() if k not in ("optimizer", "bf16")}
    out["gradient_clipping"] = 0.0
    out["zero_optimization"] = {**config.get("zero_optimization", {}), "stage": 0}
    return out


def fused_step_optimizer(cfg: NeoXConfig, world_size: int):
    """A callable DeepSpeed builds trainer.optim's optimizer with once the model is on its device."""
    from jobs.cli import JobError
    from trainer.optim import MasterWeightAdamW

    if cfg.zero_stage == 1 and world_size > 1:
        raise JobError(
            f"config key 'fused-optimizer-step': it keeps the whole optimizer state on every rank, and ZeRO "
            f"stage 1 over {world_size} ranks would shard it; use it on one GPU or with stage 0"
        )
    params = cfg.optimizer.optimizer.get("params", {})

    def build(groups):
        return MasterWeightAdamW(
            groups,
            lr=cfg.optimizer.lr,
            betas=tuple(params.get("betas", (0.9, 0.999))),
            eps=float(params.get("eps", 1e-8)),
            weight_decay=cfg.optimizer.weight_decay,
            max_grad_norm=cfg.optimizer.gradient_clipping,
        )

    return build


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:  # frozen (a LoRA run's base): no master copy, gradient or optimizer state
            continue
        (no_decay if name.endswith("bias") or p.ndim == 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def fp8_refusal() -> str | None:
    """Why fp8 cannot run here (one line), or None where it can."""
    if not on_gpu():
        return "config key 'fp8': FP8 training needs an NVIDIA GPU with compute capability >= 8.9; no GPU is visible"
    cap = torch.cuda.get_device_capability()
    if cap < FP8_MIN_CAPABILITY:
        return (
            f"config key 'fp8': FP8 training needs compute capability >= 8.9 (Ada, Hopper); "
            f"{torch.cuda.get_device_name()} is {cap[0]}.{cap[1]}"
        )
    return None


def apply_fp8(layers: torch.nn.Module, recipe: str = FP8_RECIPE) -> int:
    """Swap the nn.Linear modules under `layers` for torchao's Float8Linear (same parameters, so the
    same state dict); returns how many were swapped. The output layer stays in bf16."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    convert_to_float8_training(layers, config=Float8LinearConfig.from_recipe_name(recipe))
    return sum(type(m).__name__ == "Float8Linear" for m in layers.modules())


def apply_speedups(model: torch.nn.Module, cfg: NeoXConfig, fp8_recipe: str = FP8_RECIPE) -> list[str]:
    """Set the model's speed options from the config (see the module docstring); returns what was done."""
    from jobs.cli import JobError

    m = cfg.model
    done = []
    if hasattr(model, "fused_loss"):
        model.fused_loss = m.fused_output_loss
        done.append(f"fused output loss {'on' if m.fused_output_loss else 'off'}")
    if m.fp8:
        reason = fp8_refusal()
        if reason:
            raise JobError(reason)
        n = apply_fp8(model.layers, fp8_recipe)
        done.append(f"fp8 ({fp8_recipe}) in {n} linear layers")
    if m.compile_blocks or m.fp8:
        for block in model.layers:  # identical blocks: one compiled graph, reused
            block.compile()
        done.append("blocks compiled")
    if m.checkpoint_activations and hasattr(model, "layers"):
        n = apply_activation_checkpointing(model.layers)
        done.append(f"activation checkpointing in {n} blocks")
    return done


class _Checkpointed:
    """Mixed into a block's class: its whole call (hooks, compiled graph) recomputed in backward."""

    def __call__(self, *args, **kwargs):
        if self.training and torch.is_grad_enabled():
            return checkpoint(super().__call__, *args, use_reentrant=False, **kwargs)
        return super().__call__(*args, **kwargs)


_CHECKPOINTED: dict[type, type] = {}


def apply_activation_checkpointing(layers: torch.nn.Module) -> int:
    """`checkpoint-activations`: each block's activations recomputed in backward, applied from outside
    the model. The block's class is swapped for a checkpointing subclass (as FSDP2's fully_shard does)
    rather than wrapped, so parameter names, state dicts and checkpoints stay as without it."""
    n = 0
    for block in layers:
        cls = type(block)
        if not issubclass(cls, _Checkpointed):
            if cls not in _CHECKPOINTED:  # one subclass per block class, shared by all its blocks
                _CHECKPOINTED[cls] = type(f"Checkpointed{cls.__name__}", (_Checkpointed, cls), {})
            block.__class__ = _CHECKPOINTED[cls]
            n += 1
    return n


def lm_loss(engine, tokens: torch.Tensor) -> torch.Tensor:
    tokens = tokens.to(engine.device)
    # the model takes the targets so that it can fuse the output layer with the loss (fused-output-loss)
    return engine(tokens[:, :-1], targets=tokens[:, 1:])  # (b, s) inputs -> next-token targets


# A test hook (tests/trainer/test_nonfinite.py): NEOX_TEST_NAN_AT=N[,M...] makes the loss of the first
# micro-batch of those iterations NaN, as a diverged model's would be. Read only here; unset in real runs.
_NAN_AT = "NEOX_TEST_NAN_AT"


class NonFinitePolicy:
    """What a NaN/Inf loss or gradient norm does to a run (one home for trainer.train and the Determined
    trial): it stops, with an error naming the iteration, before the micro-batch's backward, so the weights
    and every later checkpoint stay finite; with `allowed` K > 0 the first K such micro-batches are skipped
    instead (no backward, no step; the next micro-batch takes the place). With fp16 dynamic loss scaling,
    steps whose gradients overflowed are DeepSpeed's to skip (it lowers the scale): they never count."""

    def __init__(
        self,
        allowed: int = 0,
        fp16_dynamic: bool = False,
        log: Callable[[str], None] = print,
        last_good: Callable[[], str] | None = None,
    ) -> None:
        self.allowed, self.fp16_dynamic, self.log = allowed, fp16_dynamic, log
        self.last_good = last_good or (lambda: "")
        self.skipped = 0
        self._poison = {int(x) for x in os.environ.get(_NAN_AT, "").split(",") if x.strip()}

    def _stop(self, what: str, iteration: int) -> None:
        from jobs.cli import JobError

        where = self.last_good()
        raise JobError(
            f"iteration {iteration}: {what}; stopped without saving"
            + (f" (the newest complete checkpoint is {where})" if where else "")
            + (f", after skipping {self.skipped}" if self.skipped else "")
            + "; lower the learning rate or check the data, or allow skips with config key "
            "'skip-non-finite-steps'"
        )

    def loss_ok(self, loss: torch.Tensor, iteration: int) -> bool:
        """True to go on with this micro-batch; False to skip it; raises to stop. Every rank agrees."""
        if iteration in self._poison:
            self._poison.discard(iteration)
            loss = loss * float("nan")
        finite = torch.isfinite(loss.detach()).all().to(torch.int32).reshape(1)
        if dist_world() > 1:
            import torch.distributed as dist

            dist.all_reduce(finite, op=dist.ReduceOp.MIN)  # one rank's NaN is every rank's
        if finite.item():
            return True
        what = f"lm_loss {loss.detach().float().mean().item()} is not finite"
        if self.skipped >= self.allowed:
            self._stop(what, iteration)
        self.skipped += 1
        self.log(
            f"warning: iteration {iteration}: {what}; micro-batch skipped ({self.skipped} of "
            f"{self.allowed} allowed by 'skip-non-finite-steps')"
        )
        return False

    def step_done(self, engine, iteration: int, skipped_before: int) -> None:
        """After an optimizer step: a non-finite gradient norm that DeepSpeed applied cannot be undone."""
        norm = engine.get_global_grad_norm()
        if norm is None or math.isfinite(float(norm)):
            return
        if engine.skipped_steps > skipped_before:  # DeepSpeed skipped the update itself
            if self.fp16_dynamic:
                return  # the loss scaler's overflow step: its own business
            if self.skipped < self.allowed:
                self.skipped += 1
                self.log(f"warning: iteration {iteration}: gradient norm {norm} is not finite; step skipped")
                return
        self._stop(f"gradient norm {norm} is not finite", iteration)


def dist_world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def train_step(
    engine,
    tokens: torch.Tensor | Callable[[], torch.Tensor],
    policy: NonFinitePolicy | None = None,
    iteration: int = 0,
) -> torch.Tensor:
    """One micro-batch: loss, backward, step (DeepSpeed applies the optimizer at the accumulation
    boundary). The script's loop and the Determined trial both run this; returns the loss. With a
    `policy`, `tokens` is a callable giving micro-batches: one whose loss is not finite is skipped (the
    next is drawn) or stops the run, as the policy says."""
    while True:
        loss = lm_loss(engine, tokens() if callable(tokens) else tokens)
        if policy is None or policy.loss_ok(loss, iteration):
            break
    skipped_before = engine.skipped_steps
    boundary = engine.is_gradient_accumulation_boundary()
    engine.backward(loss)
    engine.step()
    if policy is not None and boundary:
        policy.step_done(engine, iteration, skipped_before)
    return loss


def eval_loss(engine, tokens: torch.Tensor) -> torch.Tensor:
    """The loss of one validation micro-batch, without gradients."""
    with torch.no_grad():
        return lm_loss(engine, tokens)


def parallelize(model: torch.nn.Module, cfg: NeoXConfig, fp8_recipe: str = FP8_RECIPE):
    """DeepSpeed engine around `model`, with our LR schedule; returns the engine."""
    import deepspeed
    import torch.distributed as dist

    done = apply_speedups(model, cfg, fp8_recipe)
    if cfg.optimizer.fused_optimizer_step:
        done.append(
            "optimizer step trainer.optim.MasterWeightAdamW (DeepSpeed without ZeRO or bf16 of its own)"
        )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trainer.engine: {', '.join(done) or 'no speed settings'}", flush=True)

    config = ds_config(cfg, dist.get_world_size())
    # DeepSpeed builds the optimizer from the config; the schedule then needs that optimizer,
    # so it is passed as a callable.
    s = cfg.schedule

    def schedule(optimizer):
        return LRSchedule(optimizer, cfg.optimizer.lr, s.min_lr, s.warmup, s.lr_decay_iters, s.lr_decay_style)

    optimizer = None
    if cfg.optimizer.fused_optimizer_step:
        optimizer = fused_step_optimizer(cfg, dist.get_world_size())
        config = fused_step_config(config)
        for p in model.parameters():  # what DeepSpeed's bf16 mode would do: parameters only, not buffers
            p.data = p.data.to(torch.bfloat16)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=param_groups(model, cfg.optimizer.weight_decay),
        optimizer=optimizer,
        config=config,
        lr_scheduler=schedule,
    )
    if cfg.optimizer.fused_optimizer_step and dist.get_world_size() == 1:
        # one rank: DeepSpeed's ZeRO-0 all-reduce would flatten the gradients, divide them by 1 and copy them
        # back, three passes over them for nothing
        engine.enable_backward_allreduce = False
    return engine
