"""LoRA fine-tuning throughput on one GPU: our trainer against Hugging Face + PEFT, side by side.

    python benchmarks/lora_bench.py [--preset neox-20b|tiny] [--layers N] [--micro-batch 4] [--seq 2048]
        [--steps 10] [--warmup 3] [--rank 16] [--alpha 32] [--zero 0|1|2] [--impl ours peft]
        [--no-checkpoint-activations] [--compile] [--no-fused-loss] [--quantize-base nf4|int8]
        [--out results.jsonl]

Target (issue 15): ours >= 1.3 x the baseline's tokens/s at the GPT-NeoX-20B shape (all 44 layers),
r=16 on all four linear layers, with the same or lower peak memory.

- `peft`: the baseline of ../shared/FORMATS.md section 6 exactly: GPTNeoXForCausalLM (SDPA attention,
  random bf16 weights made on the GPU), PEFT LoraConfig(r, lora_alpha, target_modules=[query_key_value,
  dense, dense_h_to_4h, dense_4h_to_h]) with the adapters in fp32, gradient checkpointing
  (non-reentrant), autocast bf16, torch.optim.AdamW(fused=True), its own `labels=` loss; clipping 1.0.
- `ours`: the trainer's own path: a NeoX config with a `lora` section -> trainer.lora.apply_lora ->
  trainer.engine.parallelize (DeepSpeed, bf16, ZeRO --zero, clipping 1.0) -> trainer.engine.lm_loss;
  random bf16 weights made on the GPU; activation checkpointing per layer as the baseline's (turn it
  off with --no-checkpoint-activations), the fused output loss unless --no-fused-loss, compiled blocks
  with --compile.

Both forward and backward run inside `sdpa_kernel([CUDNN_ATTENTION, FLASH_ATTENTION])` on the GPU.
Each implementation runs in a fresh process (peak memory is its own: torch.cuda.max_memory_allocated
over the timed steps, plus reserved), `--warmup` steps then `--steps` timed steps between two device
synchronisations. The parent prints one line per implementation, then the ratios. On a machine
without a GPU the script runs on the CPU (a smoke test of the script; `--preset tiny`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
from tests.support.net import free_port  # noqa: E402 - after the path insert

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
PRESETS = {  # hidden, layers, heads, vocab
    "neox-20b": (6144, 44, 64, 50432),
    "tiny": (64, 2, 4, 512),
}
SPEED_TARGET = 1.3


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def attention_backends():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if DEV != "cuda":
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION])


def neox_config(args):
    from trainer.config import from_dict

    return from_dict({
        "num-layers": args.layers, "hidden-size": args.hidden, "num-attention-heads": args.heads,
        "seq-length": args.seq, "max-position-embeddings": args.seq, "rotary-pct": 0.25, "gpt-j-residual": True,
        "no-weight-tying": True, "bias-gelu-fusion": True, "padded-vocab-size": args.vocab,
        "hidden-dropout": 0, "attention-dropout": 0, "checkpoint-activations": args.checkpoint_activations,
        "optimizer": {"type": "Adam", "params": {"lr": 1e-4, "betas": [0.9, 0.95], "eps": 1e-8}},
        "weight-decay": 0.0, "gradient-clipping": 1.0, "bf16": {"enabled": True},
        "zero_optimization": {"stage": args.zero}, "train-micro-batch-size-per-gpu": args.micro_batch,
        "train-iters": 1000, "steps-per-print": 10**9,
        "fused-output-loss": args.fused_loss, "compile-blocks": args.compile,
        "lora": {"rank": args.rank, "alpha": args.alpha, "dropout": 0.0, "target-modules": TARGETS},
    })  # fmt: skip


def build_ours(args):
    from trainer.engine import init_distributed, lm_loss, parallelize
    from trainer.lora import apply_lora
    from trainer.model import GPTNeoX, Rotary

    cfg = neox_config(args)
    init_distributed()
    mcfg = cfg.model_config(vocab_size=args.vocab)
    torch.set_default_dtype(torch.bfloat16)  # the frozen base is made in bf16 on the device: no fp32 copy
    try:
        with torch.device(DEV):
            model = GPTNeoX(mcfg)
    finally:
        torch.set_default_dtype(torch.float32)
    model.rotary = Rotary(mcfg.rot_dim, mcfg.max_position_embeddings, mcfg.rotary_base).to(DEV)  # fp32 tables
    counts = apply_lora(model, cfg.lora, seed=0)
    if args.quantize_base:  # QLoRA: the frozen linear layers in bitsandbytes' nf4 / int8
        from trainer.lora import quantize_base

        quantize_base(model, args.quantize_base, torch.bfloat16)
        if DEV == "cuda":
            torch.cuda.empty_cache()  # the bf16 copies are gone: the peak should show it
    engine = parallelize(model, cfg)
    return (lambda tokens: lm_loss(engine, tokens)), engine.backward, engine.step, counts["trainable"]


def build_peft(args):
    import peft
    import transformers

    hf_cfg = transformers.GPTNeoXConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, intermediate_size=4 * args.hidden, max_position_embeddings=args.seq,
        rotary_pct=0.25, use_parallel_residual=True, hidden_act="gelu_fast", tie_word_embeddings=False,
        attention_dropout=0.0, hidden_dropout=0.0,
    )  # fmt: skip
    with torch.device(DEV):
        model = transformers.AutoModelForCausalLM.from_config(
            hf_cfg, dtype=torch.bfloat16, attn_implementation="sdpa"
        )
    if args.checkpoint_activations:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lcfg = peft.LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=TARGETS,
                           task_type="CAUSAL_LM")  # fmt: skip
    model = peft.get_peft_model(model, lcfg)  # autocast_adapter_dtype: the adapters in fp32
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0,
                                  fused=DEV == "cuda")  # fmt: skip

    def loss(tokens):
        x = tokens[:, :-1].to(DEV)
        with torch.autocast(DEV, dtype=torch.bfloat16):
            return model(input_ids=x, labels=x).loss  # HF shifts the labels itself

    def step():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return loss, lambda value: value.backward(), step, sum(p.numel() for p in params)


def child(args) -> dict:
    """One implementation in this process: build, warm up, time; returns the result row."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    loss_fn, backward, step, trainable = (build_ours if args.child == "ours" else build_peft)(args)
    built = time.perf_counter() - t0
    resident = torch.cuda.memory_allocated() / 2**30 if DEV == "cuda" else None  # weights + optimizer state
    tokens = torch.randint(0, args.vocab, (args.micro_batch, args.seq + 1), device=DEV)

    def one_step() -> float:
        with attention_backends():
            value = loss_fn(tokens)
            backward(value)
        step()
        return value

    for _ in range(args.warmup):
        one_step()
    sync()
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        last = one_step()
    sync()
    seconds = (time.perf_counter() - start) / args.steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else None
    reserved = torch.cuda.max_memory_reserved() / 2**30 if DEV == "cuda" else None
    return {"impl": args.child, "preset": args.preset, "layers": args.layers, "hidden": args.hidden,
            "micro_batch": args.micro_batch, "seq": args.seq, "rank": args.rank, "zero": args.zero,
            "checkpoint_activations": args.checkpoint_activations, "compile": args.compile,
            "fused_loss": args.fused_loss, "quantize_base": args.quantize_base,
            "device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu",
            "trainable": trainable, "build_s": built, "step_s": seconds,
            "tokens_per_s": args.micro_batch * args.seq / seconds, "peak_gib": peak, "reserved_gib": reserved,
            "built_gib": resident,
            "last_loss": float(last.item())}  # fmt: skip


def fmt_gib(value: float | None) -> str:
    return "n/a (CPU)" if value is None else f"{value:.1f} GiB"


def parent(args, argv: list[str]) -> int:
    rows = {}
    for impl in args.impl:
        env = {
            **os.environ,
            "MASTER_PORT": str(free_port()),
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
        }
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", impl]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        result = [line for line in proc.stdout.splitlines() if line.startswith("lora_bench_result ")]
        if proc.returncode != 0 or not result:
            print(f"lora_bench: {impl} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}",
                  file=sys.stderr)  # fmt: skip
            return 1
        row = json.loads(result[-1].removeprefix("lora_bench_result "))
        rows[impl] = row
        print(f"lora_bench: {impl:5s} {args.preset} {args.layers} layers, micro-batch {args.micro_batch}, seq {args.seq}, "
              f"r={args.rank}{', base ' + args.quantize_base if args.quantize_base else ''}: {row['tokens_per_s']:,.0f} tokens/s ({row['step_s'] * 1000:.0f} ms/step), "
              f"peak {fmt_gib(row['peak_gib'])} (reserved {fmt_gib(row['reserved_gib'])}, "
              f"{fmt_gib(row['built_gib'])} before the first step), "
              f"{row['trainable']:,} trainable parameters, loss {row['last_loss']:.3f}", flush=True)  # fmt: skip
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    if "ours" in rows and "peft" in rows:
        ours, base = rows["ours"], rows["peft"]
        speed = ours["tokens_per_s"] / base["tokens_per_s"]
        line = f"lora_bench: ours / peft: {speed:.2f}x tokens/s (target >= {SPEED_TARGET}x)"
        if ours["peak_gib"] is not None:
            line += f", peak memory {ours['peak_gib'] / base['peak_gib']:.2f}x (target <= 1.00x)"
            met = speed >= SPEED_TARGET and ours["peak_gib"] <= base["peak_gib"]
            line += "; target met" if met else "; target NOT met"
        print(line, flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="neox-20b")
    p.add_argument("--layers", type=int, help="fewer layers than the preset's (default: all)")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument(
        "--zero", type=int, choices=(0, 1, 2), default=1, help="ours: ZeRO stage over the adapters"
    )
    p.add_argument("--impl", nargs="+", choices=("ours", "peft"), default=["ours", "peft"])
    p.add_argument(
        "--no-checkpoint-activations",
        dest="checkpoint_activations",
        action="store_false",
        help="both: no activation checkpointing (the baseline's settings have it)",
    )
    p.add_argument("--compile", action="store_true", help="ours: torch.compile each block (compile-blocks)")
    p.add_argument("--no-fused-loss", dest="fused_loss", action="store_false", help="ours: full logits")
    p.add_argument("--quantize-base", choices=("nf4", "int8"), help="ours: QLoRA, the frozen base quantized")
    p.add_argument("--out", help="append one JSON line per implementation")
    p.add_argument("--child", choices=("ours", "peft"), help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    args = p.parse_args(argv)
    hidden, layers, heads, vocab = PRESETS[args.preset]
    args.hidden, args.heads, args.vocab = hidden, heads, vocab
    args.layers = args.layers or layers
    if args.child:
        print("lora_bench_result " + json.dumps(child(args)), flush=True)
        from trainer.engine import leave_distributed

        leave_distributed()
        return 0
    return parent(args, argv)


if __name__ == "__main__":
    sys.exit(main())
