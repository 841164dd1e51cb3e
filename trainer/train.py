"""Fine-tune GPT-NeoX under DeepSpeed: `python -m trainer.train --config FILE [FILE...] [--override k=v ...]`.

Runs under `deepspeed`, `torchrun` or alone (a world of one). Reads top to bottom: config, checks
(data, where to start), distributed init, the resumed checkpoint's content check (its files' sha256
against complete.json, shared out over the ranks; `--no-verify` or `verify-checkpoints: false` skips it),
weights, engine, loop, summary. A NaN/Inf loss or gradient norm stops the run with an error naming the
iteration and nothing saved of that state (`skip-non-finite-steps: K` skips up to K such micro-batches
first; trainer.engine.NonFinitePolicy).

Where training starts (first match wins; decided in trainer.start, which the Determined trial uses
too for cases 2 and 3, Determined restoring its own checkpoints):
1. `save` (then `load`) holds a complete checkpoint of ours: resume model, optimizer, schedule and
   data position (with `finetune: true`, only the model weights of a `load` checkpoint are taken).
   Complete means `TAG/complete.json` exists (trainer.checkpoint): the tag `latest` names if it is
   complete, else the newest complete one; an incomplete folder (a run killed while saving) is
   reported, left alone, and moved aside (`TAG.incomplete-<time>`) if a save needs its name;
2. `load` is a Hugging Face folder (has config.json) or the slim GPT-NeoX layout (`latest` ->
   TAG/layer_XX-model_YY-model_states.pt): fine-tune from those weights with a fresh optimizer;
3. no `load`: random initialisation (announced).

Outputs: checkpoints `save/global_stepN` (+ `latest`; `complete.json` written last; the loop's step,
tokens seen and data position as trainer.state.TrainState in the engine's client_state),
`metrics.jsonl` (one line per logged iteration and evaluation) and `train-stats.json` in `log-dir`
(else `save`), TensorBoard scalars in `tensorboard-dir`. With `--mirror s3://BUCKET/PREFIX` (or env
NEOX_CHECKPOINT_MIRROR) each complete checkpoint is also copied to S3 (trainer.mirror).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from jobs.cli import JobError, human_duration, run_main, write_json_atomic
from trainer import checkpoint, lora, start
from trainer.config import NeoXConfig, load_config
from trainer.data import MicroBatches, PackedSamples, build_splits, check_token_ids, eval_batches
from trainer.engine import eval_loss, train_step
from trainer.model import ModelConfig
from trainer.state import TrainState

PROG = "trainer.train"


def log(msg: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{PROG}: {msg}", flush=True)


# ---- setup helpers ---------------------------------------------------------------------------------


class Metrics:
    """metrics.jsonl + TensorBoard on rank 0; every value also goes to the log line."""

    def __init__(self, cfg: NeoXConfig, rank: int) -> None:
        self.enabled = rank == 0
        out_dir = cfg.train.log_dir or cfg.train.save
        self.path = Path(out_dir) / "metrics.jsonl" if out_dir and self.enabled else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tb = None
        if cfg.train.tensorboard_dir and self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(cfg.train.tensorboard_dir)

    def write(self, kind: str, iteration: int, values: dict) -> None:
        if not self.enabled:
            return
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps({"kind": kind, "iteration": iteration, **values}) + "\n")
        if self.tb:
            for k, v in values.items():
                if isinstance(v, int | float) and v is not None:
                    self.tb.add_scalar(f"{kind}/{k}", v, iteration)

    def close(self) -> None:
        if self.tb:
            self.tb.close()


def mean_over_ranks(value: float, device) -> float:
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def evaluate(engine, samples: PackedSamples, cfg: NeoXConfig, rank: int, world: int) -> dict:
    engine.eval()
    total = 0.0
    for tokens in eval_batches(
        samples, cfg.batch.train_micro_batch_size_per_gpu, cfg.train.eval_iters, rank, world
    ):
        total += eval_loss(engine, tokens).item()
    engine.train()
    loss = mean_over_ranks(total / cfg.train.eval_iters, engine.device)
    return {"lm_loss": loss, "lm_loss_ppl": math.exp(min(loss, 50))}


def save(engine, cfg: NeoXConfig, mcfg: ModelConfig, state: TrainState, mirror) -> None:
    """A checkpoint that counts only once complete: every rank writes and fsyncs its files, then
    (after a barrier) rank 0 makes what it sees durable and writes complete.json last."""
    import torch.distributed as dist

    rank, save_dir, iteration = dist.get_rank(), Path(cfg.train.save), state.step
    tag = f"global_step{iteration}"
    if rank == 0 and (save_dir / tag).exists():  # an earlier run's leftover: kept, under a clear name
        log(
            f"moved {save_dir / tag} aside to {checkpoint.set_aside(save_dir / tag)} (this save needs the name)"
        )
    dist.barrier()  # no rank writes into the tag folder before it is free
    # writes `latest` too; a LoRA run's frozen base is left out (lora.json names where it is)
    checkpoint.save_engine(
        engine,
        save_dir,
        tag,
        state,
        mcfg,
        cfg.to_dict(),
        rank,
        marker_follows=True,
        exclude_frozen=bool(cfg.lora),
    )
    if rank == 0 and cfg.lora:
        lora.write_info(save_dir / tag, engine.module, cfg)
    hashes = checkpoint.sync_rank_files(save_dir / tag, rank)  # hashed where they were written
    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, hashes)  # also the barrier: every rank's files are written and durable
    if rank == 0:
        written = {rel: h for part in every for rel, h in part.items()}
        checkpoint.mark_complete(save_dir / tag, iteration, dist.get_world_size(), written)
        log(f"saved checkpoint {save_dir / tag}")
        if mirror:
            mirror.submit(save_dir / tag)
        prune(cfg, mirror)
    dist.barrier()  # the next save (or exit) sees the marker


def newest_checkpoint(t) -> str:
    """For the non-finite stop's message: where a restart would resume from."""
    tag = checkpoint.ds_checkpoint_tag(t.save) if t.save else None
    return f"{t.save}/{tag}" if tag else "none yet"


def prune(cfg: NeoXConfig, mirror) -> None:
    """keep-last-n-checkpoints over complete checkpoints only (rank 0)."""
    keep = cfg.train.keep_last_n_checkpoints
    if not keep:
        return
    save_dir = Path(cfg.train.save)
    for left in checkpoint.finish_removals(save_dir):
        log(f"finished removing {left} (started by an earlier run)")
    for old in checkpoint.stale_checkpoints(save_dir, keep, busy=mirror.busy() if mirror else ()):
        checkpoint.remove_checkpoint(old)
        log(f"removed checkpoint {old} (keep-last-n-checkpoints {keep})")


# ---- the run -----------------------------------------------------------------------------------------


def open_mirror(url: str | None, what: str, cfg: NeoXConfig):
    """The checkpoint mirror (rank 0 only), or None; a bad setting fails before any heavy work."""
    if not url:
        return None
    from trainer.mirror import Mirror, parse_url

    parse_url(url, what)
    if not cfg.train.save:
        raise JobError(f"{what} {url}: needs config key 'save' (the checkpoints it mirrors)")
    return Mirror(url, what, log) if int(os.environ.get("RANK", "0")) == 0 else None


def train(cfg: NeoXConfig, mirror_url: str | None = None, mirror_what: str = "--mirror") -> dict:
    for line in cfg.report():
        log(line)
    # checks that need neither the process group nor a device
    if not cfg.data.data_path:
        raise JobError("config key 'data-path' is not set")
    mirror = open_mirror(mirror_url, mirror_what, cfg)
    t = cfg.train
    seq = cfg.model.seq_length
    splits = build_splits(cfg.data.data_path, cfg.data.split_weights(), seq, cfg.data.seed)
    resume = start.resume_point(cfg, log)  # trainer.start decides where the run starts

    from trainer.engine import NonFinitePolicy, init_distributed, parallelize

    init_distributed()  # before the content check: the ranks share its hashing out
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    if resume and t.verify_checkpoints:
        resume = checkpoint.intact_resume(resume, log, rank, world)
    model, source = start.build_model(cfg, resume, log)
    mcfg = model.cfg
    start.check_model_fits(cfg, mcfg, log)
    check_token_ids(cfg.data.data_path, mcfg.vocab_size)
    log(
        f"model: {mcfg.num_layers} layers, hidden {mcfg.hidden_size}, {mcfg.num_params() / 1e6:.1f}M parameters, "
        f"weights from {source}"
    )
    engine = parallelize(model, cfg)
    log(
        f"DeepSpeed: ZeRO stage {engine.zero_optimization_stage()}, {cfg.precision.name}, {world} data-parallel ranks, "
        f"device {engine.device}, optimizer {type(engine.basic_optimizer).__name__}"
    )
    from trainer.kernels import loader as kernel_loader

    log(kernel_loader.summary())  # which fused kernels run, so a silent fallback to the references shows
    loader = MicroBatches(splits["train"], cfg.batch.train_micro_batch_size_per_gpu, rank, world)
    state = TrainState()  # step, tokens seen, data position: what a checkpoint carries besides the engine's
    if resume:
        where, tag, module_only = resume
        # a LoRA checkpoint holds the trained tensors only (lora.resume_point checked they fit the config)
        _, client = engine.load_checkpoint(
            where,
            tag=tag,
            load_module_only=module_only,
            load_module_strict=not cfg.lora,
            load_optimizer_states=not module_only,
            load_lr_scheduler_states=not module_only,
        )
        if not module_only:
            state = TrainState.from_client(client)
            loader.load_state_dict(state.data)
        log(
            f"resumed from {where}/{tag} at iteration {state.step}"
            + (" (weights only)" if module_only else "")
        )
        if mirror and not module_only and Path(where) == Path(t.save):
            mirror.submit(Path(where) / tag)  # finishes an upload that a stopped run left half done

    metrics = Metrics(cfg, rank)
    gas = cfg.batch.gradient_accumulation_steps
    tokens_per_iter = cfg.batch.train_micro_batch_size_per_gpu * gas * world * seq
    flops_per_token = lora.flops_per_token(mcfg, seq, cfg.lora) if cfg.lora else mcfg.flops_per_token(seq)
    base_print = lora.fingerprint(engine.module) if cfg.lora else None  # the frozen base, checked at the end
    iteration = state.step
    stop = t.train_iters if t.exit_interval is None else min(t.train_iters, iteration + t.exit_interval)
    started, window_start, window_iters = time.monotonic(), time.monotonic(), 0
    last: dict = {}
    # a NaN/Inf loss stops the run before its update (and before any save) unless skips are allowed
    policy = NonFinitePolicy(
        t.skip_non_finite_steps, cfg.precision.fp16_dynamic, log, lambda: newest_checkpoint(t)
    )
    engine.train()
    while iteration < stop:
        loss_sum = 0.0
        for _ in range(gas):
            loss_sum += train_step(engine, lambda: next(loader), policy, iteration + 1).item()
        iteration += 1
        window_iters += 1
        state.step, state.tokens_seen = iteration, state.tokens_seen + tokens_per_iter
        if iteration % t.log_interval == 0 or iteration == stop:
            elapsed = time.monotonic() - window_start
            tok_s = tokens_per_iter * window_iters / max(elapsed, 1e-9)
            tflops = flops_per_token * tok_s / world / 1e12
            last = {
                "lm_loss": mean_over_ranks(loss_sum / gas, engine.device),
                "lr": engine.get_lr()[0],
                "loss_scale": getattr(engine.optimizer, "cur_scale", None),
                "skipped_steps": engine.skipped_steps,
                "tokens_per_s": tok_s,
                "tflops_per_device": tflops,
                "mfu": tflops / t.peak_tflops,
            }
            metrics.write("train", iteration, last)
            log(
                f"iter {iteration}/{t.train_iters} lm_loss {last['lm_loss']:.4f} lr {last['lr']:.3g} "
                f"{tok_s:,.0f} tokens/s {tflops:.1f} TFLOP/s/device MFU {100 * last['mfu']:.1f}%"
            )
            window_start, window_iters = time.monotonic(), 0
        if splits["valid"] is not None and t.eval_interval and iteration % t.eval_interval == 0:
            ev = evaluate(engine, splits["valid"], cfg, rank, world)
            metrics.write("valid", iteration, ev)
            log(f"iter {iteration} validation lm_loss {ev['lm_loss']:.4f} ppl {ev['lm_loss_ppl']:.2f}")
        if t.save and (iteration == stop or (t.save_interval and iteration % t.save_interval == 0)):
            state.data = loader.state_dict()
            save(engine, cfg, mcfg, state, mirror)
    metrics.close()
    stats = {
        "iterations": iteration,
        "stopped_early": iteration < t.train_iters,
        "world_size": world,
        "seconds": time.monotonic() - started,
        "last": last,
        "model": asdict(mcfg),
        "zero_stage": cfg.zero_stage,
        "precision": cfg.precision.name,
    }
    if cfg.lora:
        stats["lora"] = lora.run_summary(engine.module, base_print)
    if mirror:
        mirror.close()
        prune(cfg, None)  # what the uploads held back
        stats["mirror"] = {"url": mirror.url, "uploaded": mirror.uploaded, "failed": mirror.failed}
    out_dir = t.log_dir or t.save
    if rank == 0 and out_dir:
        write_json_atomic(Path(out_dir) / "train-stats.json", stats)
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--config", nargs="+", required=True, help="NeoX YAML files, merged in order")
    parser.add_argument(
        "--override",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="set a config key after the files (dotted keys reach into sections)",
    )
    parser.add_argument(
        "--mirror",
        metavar="s3://BUCKET/PREFIX",
        help="also copy each complete checkpoint there (default: env NEOX_CHECKPOINT_MIRROR)",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="resume without checking the checkpoint's files against the sha256 in its complete.json "
        "(config key verify-checkpoints: false)",
    )
    parser.add_argument(
        "--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS
    )  # deepspeed launcher
    args = parser.parse_args(argv)

    def body() -> int:
        cfg = load_config(args.config, args.override)
        if args.no_verify:
            cfg.train.verify_checkpoints = False
        from_env = not args.mirror and os.environ.get("NEOX_CHECKPOINT_MIRROR")
        stats = train(
            cfg, args.mirror or from_env or None, "env NEOX_CHECKPOINT_MIRROR" if from_env else "--mirror"
        )
        loss = stats["last"].get("lm_loss")
        log(
            f"done: {stats['iterations']} iterations in {human_duration(stats['seconds'])}, "
            f"lm_loss {loss:.4f}"
            if loss is not None
            else "done: nothing to train"
        )
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    rc = main()
    if rc == 0:
        from trainer.engine import leave_distributed

        leave_distributed()
    sys.exit(rc)
