"""End-to-end training throughput on one GPU: our trainer vs Hugging Face GPTNeoXForCausalLM, both under
DeepSpeed with the same config (ZeRO-1, bf16, FusedAdam, clipping), random weights and random tokens.

    python benchmarks/e2e_throughput.py --impl ours|hf [--micro-batches 4 8] [--seq 2048] [--steps 10]
        [--warmup 3] [--compile] [--checkpoint-activations] [--profile FILE] [--out results.jsonl]

Pythia-1.4B shape by default (hidden 2048, 24 layers, 16 heads, rotary 0.25, parallel residual,
vocab 50304). Our side goes through the trainer's own path: the NeoX config -> `trainer.engine.parallelize`
(DeepSpeed config, parameter groups, LR schedule) and `trainer.train.lm_loss`; the baseline gets the
same DeepSpeed config and parameter groups, SDPA attention, and its own `labels=` loss.
One engine per process; the micro-batch sizes run one after another on it (gradient accumulation 1,
so every step is an optimizer step). Each size: `--warmup` steps, then `--steps` timed steps between
two device synchronisations. Prints one line per size and appends JSON lines to --out.

FLOPs: `6N + 12 l h s` per token (N all parameters, embeddings included), the count
../shared/FORMATS.md section 6 uses for its baseline, and the model's own count
(`ModelConfig.flops_per_token`: matmuls only, causal attention halved); MFU against --peak (989 TFLOP/s).
`NEOX_KERNELS=0` turns our fused kernels off (the --compile runs use it: inductor fuses those ops itself).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU only for a smoke test of the script


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def neox_config(args):
    from trainer.config import from_dict

    return from_dict({
        "num-layers": args.layers, "hidden-size": args.hidden, "num-attention-heads": args.heads,
        "seq-length": args.seq, "max-position-embeddings": args.seq, "rotary-pct": 0.25, "gpt-j-residual": True,
        "no-weight-tying": True, "bias-gelu-fusion": True, "padded-vocab-size": args.vocab,
        "hidden-dropout": 0, "attention-dropout": 0, "checkpoint-activations": args.checkpoint_activations,
        "optimizer": {"type": "Adam", "params": {"lr": 1e-4, "betas": [0.9, 0.95], "eps": 1e-8}},
        "weight-decay": 0.01, "gradient-clipping": 1.0, "bf16": {"enabled": True},
        "zero_optimization": {"stage": args.zero}, "train-micro-batch-size-per-gpu": args.micro_batches[0],
        "train-iters": 1000, "steps-per-print": 10**9,
    })


def build_ours(args, cfg):
    from trainer.engine import parallelize
    from trainer.model import GPTNeoX
    from trainer.train import lm_loss

    with torch.device(DEV):
        model = GPTNeoX(cfg.model_config(vocab_size=args.vocab))
    if args.compile:
        for block in model.layers:  # identical blocks: one compiled graph, reused
            block.compile()
    engine = parallelize(model, cfg)
    return engine, lambda tokens: lm_loss(engine, tokens), model.cfg.flops_per_token(args.seq)


def build_hf(args, cfg):
    import deepspeed
    import transformers

    from trainer.engine import ds_config, param_groups

    hf_cfg = transformers.GPTNeoXConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, intermediate_size=4 * args.hidden, max_position_embeddings=args.seq,
        rotary_pct=0.25, use_parallel_residual=True, hidden_act="gelu_fast", tie_word_embeddings=False,
        attention_dropout=0.0, hidden_dropout=0.0, attn_implementation="sdpa")
    with torch.device(DEV):
        model = transformers.GPTNeoXForCausalLM(hf_cfg)
    if args.checkpoint_activations:
        model.gradient_checkpointing_enable()
    if args.compile:
        for layer in model.gpt_neox.layers:
            layer.compile()
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=param_groups(model, 0.01),
                                           config=ds_config(cfg, 1))

    def loss(tokens):
        x = tokens[:, :-1].to(engine.device)
        return engine(input_ids=x, labels=x).loss  # HF shifts the labels itself

    return engine, loss, None


def palm_flops_per_token(n_params: int, args) -> float:
    return 6 * n_params + 12 * args.layers * args.hidden * args.seq


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--impl", choices=["ours", "hf"], required=True)
    p.add_argument("--micro-batches", type=int, nargs="+", default=[4, 8])
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--zero", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="torch.compile each transformer block")
    p.add_argument("--checkpoint-activations", action="store_true")
    p.add_argument("--profile", type=Path, help="after timing, profile 2 steps of the last size; top ops here")
    p.add_argument("--peak", type=float, default=989.0, help="dense bf16 TFLOP/s of the device")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    from trainer.engine import init_distributed

    init_distributed()
    cfg = neox_config(args)
    t0 = time.perf_counter()
    engine, loss_fn, model_fpt = (build_ours if args.impl == "ours" else build_hf)(args, cfg)
    n_params = sum(p.numel() for p in engine.module.parameters())
    palm_fpt = palm_flops_per_token(n_params, args)
    if model_fpt is None:  # the same architecture: take our model's count for the baseline too
        from trainer.model import ModelConfig

        model_fpt = ModelConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
                                num_heads=args.heads, max_position_embeddings=args.seq).flops_per_token(args.seq)
    from trainer.kernels import loader

    label = args.impl + ("+compile" if args.compile else "") + ("+ckpt" if args.checkpoint_activations else "")
    print(f"e2e: {label}: {n_params / 1e9:.3f}B parameters, built in {time.perf_counter() - t0:.1f}s; "
          f"{loader.summary() if args.impl == 'ours' else 'HF SDPA attention'}", flush=True)
    gen = torch.Generator(device=DEV).manual_seed(0)
    engine.train()

    def step(tokens):
        loss = loss_fn(tokens)
        engine.backward(loss)
        engine.step()
        return loss

    for mb in args.micro_batches:
        batches = [torch.randint(0, args.vocab, (mb, args.seq + 1), device=DEV, generator=gen) for _ in range(4)]
        if DEV == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            t_warm = time.perf_counter()
            for i in range(args.warmup):
                step(batches[i % 4])
            sync()
            warm_s = time.perf_counter() - t_warm
            start = time.perf_counter()
            for i in range(args.steps):
                loss = step(batches[i % 4])
            sync()
            elapsed = time.perf_counter() - start
        except torch.OutOfMemoryError:
            print(f"e2e: {label} micro-batch {mb}: out of memory", flush=True)
            torch.cuda.empty_cache()
            continue
        tok_s = mb * args.seq * args.steps / elapsed
        row = {"impl": label, "micro_batch": mb, "seq": args.seq, "zero": args.zero, "steps": args.steps,
               "step_s": elapsed / args.steps, "tokens_per_s": tok_s, "warmup_s": warm_s,
               "tflops_palm": palm_fpt * tok_s / 1e12, "mfu_palm": palm_fpt * tok_s / 1e12 / args.peak,
               "tflops_model": model_fpt * tok_s / 1e12, "mfu_model": model_fpt * tok_s / 1e12 / args.peak,
               "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else 0.0, "loss": loss.item(),
               "kernels": os.environ.get("NEOX_KERNELS", "1"), "device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu",
               "torch": torch.__version__}
        print(f"e2e: {label:<18} mb {mb:>2}: {tok_s:>9,.0f} tokens/s  {row['step_s'] * 1e3:7.1f} ms/step  "
              f"{row['tflops_palm']:6.1f} TFLOP/s (6N+12lhs) MFU {100 * row['mfu_palm']:5.1f}%  "
              f"model-count MFU {100 * row['mfu_model']:5.1f}%  peak {row['peak_mem_gib']:.1f} GiB  "
              f"loss {row['loss']:.3f}", flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(2):
                step(batches[i])
            sync()
        table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25)
        args.profile.write_text(table)
        print("\n".join(table.splitlines()[:20]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
