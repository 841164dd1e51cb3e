"""End-to-end training throughput: our trainer vs Hugging Face GPTNeoXForCausalLM, both under DeepSpeed
with the same config (ZeRO-1 by default, bf16, FusedAdam, clipping), random weights and random tokens.

    python benchmarks/e2e_throughput.py --impl ours hf hf-liger ours+fp8 hf+fp8 [--preset pythia-1.4b|neox-20b|tiny]
        [--micro-batches 4 8] [--seq 2048] [--steps 10] [--warmup 3] [--zero 0-3] [--compile]
        [--no-fused-loss] [--fp8-recipe tensorwise|rowwise] [--checkpoint-activations]
        [--save-checkpoint DIR] [--profile FILE] [--out results.jsonl]
    torchrun --nproc-per-node 4 benchmarks/e2e_throughput.py --impl ours --preset neox-20b --zero 3 ...

Implementations: `ours` is the trainer (its NeoX config keys `fused-output-loss`, `compile-blocks` from
--no-fused-loss / --compile, `fp8` from the `+fp8` suffix, `fused-optimizer-step` from `+fused-step`:
trainer.optim's step instead of DeepSpeed's bf16 ZeRO-1 step, on one GPU); `hf` is the strong baseline of
../shared/FORMATS.md section 6: Hugging Face GPTNeoXForCausalLM with SDPA attention, every GPTNeoXLayer
compiled (`layer.compile()`), its own `labels=` loss; `hf-liger` is the same with Liger-Kernel wired in by
hand (LigerLayerNorm for its three kinds of LayerNorm, LigerFusedLinearCrossEntropyLoss on the final
hidden states instead of the logits). `+fp8`: torchao float8 training (`convert_to_float8_training` on the
transformer layers before they are compiled; --fp8-recipe, default tensorwise) for ours and the baselines
alike. Every implementation's forward and backward run inside
`sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION])`. Several --impl values run one
after another, each in a fresh process (same arguments), and a side-by-side table ends the output.

Several processes (torchrun or the deepspeed launcher) make one data-parallel world: tokens/s is given
per GPU and for the world, peak memory is the largest of any rank, and rank 0 alone prints and writes.
With ZeRO-3 our model is built inside `deepspeed.zero.Init`, so no rank ever holds all the weights
(the 20B shape does not fit one GPU otherwise). `--save-checkpoint DIR` times `engine.save_checkpoint`
(every rank's shard, optimizer state included) after the last size and reports its size on disk.

Pythia-1.4B shape by default (hidden 2048, 24 layers, 16 heads, rotary 0.25, parallel residual,
vocab 50304); `--preset neox-20b` is GPT-NeoX-20B's (hidden 6144, 44 layers, 64 heads, vocab 50432). Our side goes through the trainer's own path: the NeoX config -> `trainer.engine.parallelize`
(DeepSpeed config, parameter groups, LR schedule) and `trainer.engine.lm_loss`; the baseline gets the
same DeepSpeed config and parameter groups, SDPA attention, and its own `labels=` loss.
One engine per process; the micro-batch sizes run one after another on it (gradient accumulation 1,
so every step is an optimizer step). Each size: `--warmup` steps, then `--steps` timed steps between
two device synchronisations. Prints one line per size and appends JSON lines to --out.

FLOPs: `6N + 12 l h s` per token (N all parameters, embeddings included), the count
../shared/FORMATS.md section 6 uses for its baseline, and the model's own count
(`ModelConfig.flops_per_token`: matmuls only, causal attention halved); MFU against --peak (989 TFLOP/s).
`NEOX_KERNELS=0` turns our fused kernels off (inside compiled blocks the references are traced anyway).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU only for a smoke test of the script


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def neox_config(args):
    from trainer.config import from_dict

    return from_dict(
        {
            "num-layers": args.layers,
            "hidden-size": args.hidden,
            "num-attention-heads": args.heads,
            "seq-length": args.seq,
            "max-position-embeddings": args.seq,
            "rotary-pct": 0.25,
            "gpt-j-residual": True,
            "no-weight-tying": True,
            "bias-gelu-fusion": True,
            "padded-vocab-size": args.vocab,
            "hidden-dropout": 0,
            "attention-dropout": 0,
            "checkpoint-activations": args.checkpoint_activations,
            "optimizer": {"type": "Adam", "params": {"lr": 1e-4, "betas": [0.9, 0.95], "eps": 1e-8}},
            "weight-decay": 0.01,
            "gradient-clipping": 1.0,
            "bf16": {"enabled": True},
            # the 16-bit save gathers ZeRO-3's shards on rank 0
            "zero_optimization": {
                "stage": args.zero,
                "stage3_gather_16bit_weights_on_model_save": args.save_weights_only,
            },
            "train-micro-batch-size-per-gpu": args.micro_batches[0],
            "train-iters": 1000,
            "steps-per-print": 10**9,
            "fp8": args.fp8,
            "fused-output-loss": args.fused_loss,
            "compile-blocks": args.compile,
            "fused-optimizer-step": args.fused_step,
        }
    )


PRESETS = {  # hidden, layers, heads, vocab
    "pythia-1.4b": (2048, 24, 16, 50304),
    "neox-20b": (6144, 44, 64, 50432),
    "tiny": (64, 2, 4, 512),  # a smoke test of the script, on the CPU too
}


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def say(text: str) -> None:
    if rank() == 0:
        print(text, flush=True)


def world_max(value: float) -> float:
    """The largest value any rank has (peak memory, elapsed time)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=DEV)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def attention_backends():
    """FORMATS section 6's restriction: cuDNN or flash attention, never SDPA's memory-hungry paths."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return (
        sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION])
        if DEV == "cuda"
        else contextlib.nullcontext()
    )


def build_ours(args, cfg):
    import deepspeed
    import torch.distributed as dist

    from trainer.engine import ds_config, lm_loss, parallelize
    from trainer.model import GPTNeoX

    # ZeRO-3 partitions each layer's weights as it is built, so a model larger than one GPU still builds.
    sharded = (
        deepspeed.zero.Init(config_dict_or_path=ds_config(cfg, dist.get_world_size()))
        if args.zero == 3
        else None
    )
    with sharded or contextlib.nullcontext(), torch.device(DEV):
        model = GPTNeoX(cfg.model_config(vocab_size=args.vocab))
    engine = parallelize(
        model, cfg, fp8_recipe=args.fp8_recipe
    )  # fused loss, fp8 and compile from the config
    return engine, lambda tokens: lm_loss(engine, tokens), model.cfg.flops_per_token(args.seq)


def build_hf(args, cfg):
    import deepspeed
    import transformers

    from trainer.engine import ds_config, param_groups

    hf_cfg = transformers.GPTNeoXConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=4 * args.hidden,
        max_position_embeddings=args.seq,
        rotary_pct=0.25,
        use_parallel_residual=True,
        hidden_act="gelu_fast",
        tie_word_embeddings=False,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        attn_implementation="sdpa",
    )
    with torch.device(DEV):
        model = transformers.GPTNeoXForCausalLM(hf_cfg)
    if args.checkpoint_activations:
        model.gradient_checkpointing_enable()
    liger = args.impl_base == "hf-liger"
    if liger:
        wire_liger(model)
    if args.fp8:
        from trainer.engine import apply_fp8

        apply_fp8(model.gpt_neox.layers, args.fp8_recipe)
    # HF's layers differ in guarded attributes (their layer_idx), so dynamo compiles one graph per layer (and
    # per micro-batch size until it marks the batch dimension dynamic);
    # past its recompile limit (8) the rest would silently run eager, as they did in the 24-layer rows
    # measured before 2026-12-02
    from torch._dynamo import config as dynamo_config

    dynamo_config.recompile_limit = max(
        dynamo_config.recompile_limit, (args.layers + 1) * (len(args.micro_batches) + 1)
    )
    for layer in model.gpt_neox.layers:
        if DEV == "cuda":  # a CPU smoke test skips inductor's C++ build
            layer.compile()
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=param_groups(model, 0.01), config=ds_config(cfg, 1)
    )
    if liger:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        flce = LigerFusedLinearCrossEntropyLoss()

        def loss(tokens):
            tokens = tokens.to(engine.device)
            hidden = engine.module.gpt_neox(input_ids=tokens[:, :-1]).last_hidden_state
            weight = engine.module.get_output_embeddings().weight
            return flce(weight, hidden.flatten(0, 1), tokens[:, 1:].flatten())
    else:

        def loss(tokens):
            x = tokens[:, :-1].to(engine.device)
            return engine(input_ids=x, labels=x).loss  # HF shifts the labels itself

    return engine, loss, None


def hf_summary(model) -> str:
    """What attention HF really runs: the config's `attn_implementation` is only a request."""
    return f"HF attention {model.config._attn_implementation!r}, layers compiled"


def wire_liger(model) -> None:
    """Swap every LayerNorm of HF GPT-NeoX for LigerLayerNorm, keeping its weights."""
    from liger_kernel.transformers import LigerLayerNorm

    def swap(parent, name):
        old = getattr(parent, name)
        new = LigerLayerNorm(old.normalized_shape[0], eps=old.eps, bias=True).to(
            old.weight.device, old.weight.dtype
        )
        with torch.no_grad():
            new.weight.copy_(old.weight)
            new.bias.copy_(old.bias)
        setattr(parent, name, new)

    for layer in model.gpt_neox.layers:
        swap(layer, "input_layernorm")
        swap(layer, "post_attention_layernorm")
    swap(model.gpt_neox, "final_layer_norm")


def save_checkpoint(engine, args) -> None:
    """Time one save (every rank's shards, or the gathered 16-bit weights) and report its size on disk."""
    import torch.distributed as dist

    folder = args.save_checkpoint / "bench"
    dist.barrier()
    start = time.perf_counter()
    if args.save_weights_only:
        engine.save_16bit_model(str(folder))
    else:
        engine.save_checkpoint(str(args.save_checkpoint), tag="bench")
    dist.barrier()
    seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    row = {
        "impl": "save_16bit_model" if args.save_weights_only else "save_checkpoint",
        "preset": args.preset,
        "zero": args.zero,
        "world": dist.get_world_size(),
        "seconds": seconds,
        "bytes": size,
        "GBps": size / seconds / 1e9,
    }
    say(
        f"e2e: checkpoint saved in {seconds:.1f}s: {size / 2**30:.1f} GiB in {folder} ({row['GBps']:.2f} GB/s)"
    )
    if args.out and rank() == 0:
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


def kernel_times(prof) -> dict[str, float]:
    """Device time (microseconds) of each GPU kernel name in a torch.profiler run: the kernels only,
    not the CPU-side ops that launched them (those carry the same time again)."""
    from torch.autograd import DeviceType

    out: dict[str, float] = {}
    for e in prof.events():
        # a GPU-side user annotation (Optimizer.step#...) spans kernels that are counted on their own
        if e.device_type == DeviceType.CUDA and not e.is_user_annotation:
            out[e.name] = out.get(e.name, 0.0) + e.device_time_total
    return out


# kernel-name patterns, first match wins: where a step's device time goes, by kind
KERNEL_KINDS = (  # attention and inductor first: cuDNN's names hold "sm90_", inductor's "_to_copy" or "cat"
    ("attention", ("flash", "fmha", "cudnn", "attention", "sdpa")),
    ("triton (inductor)", ("triton",)),
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "sm90_", "matmul", "cublas")),
    ("optimizer", ("multi_tensor", "adam", "l2norm", "unscale")),
    ("copy", ("copy", "cat", "memcpy", "transpose", "elementwise_kernel_manual_unroll")),
)


def kernel_kinds(kernels: dict[str, float]) -> list[tuple[str, float]]:
    totals: dict[str, float] = {}
    for name, t in kernels.items():
        low = name.lower()
        kind = next((k for k, pats in KERNEL_KINDS if any(p in low for p in pats)), "other")
        totals[kind] = totals.get(kind, 0.0) + t
    return sorted(totals.items(), key=lambda kv: -kv[1])


def palm_flops_per_token(n_params: int, args) -> float:
    return 6 * n_params + 12 * args.layers * args.hidden * args.seq


BASES = ("ours", "hf", "hf-liger")
OPTIONS = ("fp8", "rowwise", "compile", "unfused-loss", "fused-step")  # +rowwise: +fp8, rowwise recipe


def set_inductor_options(items: list[str]) -> None:
    """`KEY=VALUE` pairs onto torch._inductor.config (VALUE: an int, a float, or 'true'/'false')."""
    import torch._inductor.config as inductor

    for item in items:
        key, _, raw = item.partition("=")
        *path, name = key.split(".")
        target = inductor
        for part in path:
            target = getattr(target, part)
        old = getattr(target, name)  # an AttributeError names a key inductor does not have
        value = raw.lower() in ("1", "true") if isinstance(old, bool) else type(old or 0)(raw)
        setattr(target, name, value)


def impl_spec(text: str) -> str:
    """`BASE[+OPTION...]`, e.g. `ours+fp8+unfused-loss`; checked here so a typo fails before any run."""
    base, *opts = text.split("+")
    if base not in BASES or any(o not in OPTIONS for o in opts):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected one of {BASES} with optional +{'/+'.join(OPTIONS)}"
        )
    return text


def run_each(args, argv) -> int:
    """Each implementation in a fresh process with the same arguments; then one side-by-side table."""
    out = args.out or Path(f"/tmp/e2e-{os.getpid()}.jsonl")
    rest, skip = [], False
    for a in argv:  # argv without the --impl values
        if a == "--impl":
            skip = True
            continue
        if skip and not a.startswith("-"):
            continue
        skip = False
        rest.append(a)
    if not args.out:
        rest += ["--out", str(out)]
    failed = []
    for impl in args.impl:
        rc = subprocess.call([sys.executable, __file__, "--impl", impl, *rest])
        if rc:
            failed.append(impl)
            print(f"e2e: {impl} exited with {rc}", flush=True)
    rows = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
    print_table([r for r in rows if "micro_batch" in r])
    return 1 if failed else 0


def print_table(rows: list[dict]) -> None:
    if not rows:
        return
    best_base = max(
        (r["tokens_per_s"] for r in rows if r["impl"].startswith("hf") and "fp8" not in r["impl"]),
        default=None,
    )
    print(
        f"{'impl':<24} {'mb':>3} {'tokens/s':>9} {'ms/step':>8} {'MFU 6N+12lhs':>12} {'model MFU':>9} "
        f"{'peak GiB':>8} {'vs best bf16 HF':>15}"
    )
    for r in rows:
        ratio = f"{r['tokens_per_s'] / best_base:.2f}x" if best_base else "-"
        print(
            f"{r['impl']:<24} {r['micro_batch']:>3} {r['tokens_per_s']:>9,.0f} {r['step_s'] * 1e3:>8.1f} "
            f"{100 * r['mfu_palm']:>11.1f}% {100 * r['mfu_model']:>8.1f}% {r['peak_mem_gib']:>8.1f} {ratio:>15}"
        )


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--impl",
        type=impl_spec,
        nargs="+",
        required=True,
        metavar="BASE[+OPTION]",
        help=f"one or more of {BASES}, each with optional +{'/+'.join(OPTIONS)} (these override "
        "--compile, --no-fused-loss and --fp8-recipe); several run one after another in fresh processes",
    )
    p.add_argument(
        "--no-fused-loss",
        dest="fused_loss",
        action="store_false",
        help="ours: full logits then cross-entropy (config key fused-output-loss: false)",
    )
    p.add_argument("--fp8-recipe", choices=["tensorwise", "rowwise"], default="tensorwise")
    p.add_argument("--preset", choices=sorted(PRESETS), default="pythia-1.4b", help="model shape")
    p.add_argument("--micro-batches", type=int, nargs="+", default=[4, 8])
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--hidden", type=int, help="override the preset's")
    p.add_argument("--layers", type=int, help="override the preset's")
    p.add_argument("--heads", type=int, help="override the preset's")
    p.add_argument("--vocab", type=int, help="override the preset's")
    p.add_argument("--zero", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--compile",
        action="store_true",
        help="ours: torch.compile each block (config key compile-blocks); the baselines always are",
    )
    p.add_argument("--checkpoint-activations", action="store_true")
    p.add_argument(
        "--save-checkpoint", type=Path, metavar="DIR", help="time a checkpoint save after the last size"
    )
    p.add_argument(
        "--save-weights-only",
        action="store_true",
        help="save only the 16-bit weights (save_16bit_model), not the resumable optimizer state; "
        "GPT-NeoX-20B's full state is about 290 GB",
    )
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="after timing, profile 2 steps of the last size: DIR/IMPL-mbN.txt",
    )
    p.add_argument(
        "--inductor",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set torch._inductor.config KEY (e.g. triton.prefer_nd_tiling=1) for every row; repeatable",
    )
    p.add_argument("--peak", type=float, default=989.0, help="dense bf16 TFLOP/s of the device")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if len(args.impl) > 1:
        return run_each(args, argv)
    args.impl = args.impl[0]
    args.impl_base, *opts = args.impl.split("+")
    args.fp8 = "fp8" in opts or "rowwise" in opts
    if "rowwise" in opts:
        args.fp8_recipe = "rowwise"
    args.compile = args.compile or "compile" in opts
    args.fused_loss = args.fused_loss and "unfused-loss" not in opts
    args.fused_step = "fused-step" in opts
    if args.fused_step and args.impl_base != "ours":
        p.error(f"{args.impl}: +fused-step is a setting of ours (the baselines keep DeepSpeed's ZeRO-1 step)")
    for name, value in zip(("hidden", "layers", "heads", "vocab"), PRESETS[args.preset], strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)

    import torch.distributed as dist

    from trainer.engine import init_distributed

    set_inductor_options(args.inductor)
    init_distributed()
    world = dist.get_world_size()
    cfg = neox_config(args)
    t0 = time.perf_counter()
    engine, loss_fn, model_fpt = (build_ours if args.impl_base == "ours" else build_hf)(args, cfg)
    # a ZeRO-3 parameter holds only its shard; ds_numel is its full size
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())
    palm_fpt = palm_flops_per_token(n_params, args)
    if model_fpt is None:  # the same architecture: take our model's count for the baseline too
        from trainer.model import ModelConfig

        model_fpt = ModelConfig(
            vocab_size=args.vocab,
            hidden_size=args.hidden,
            num_layers=args.layers,
            num_heads=args.heads,
            max_position_embeddings=args.seq,
        ).flops_per_token(args.seq)
    from trainer.kernels import loader

    ours = args.impl_base == "ours"
    label = "+".join(
        [args.impl_base]
        + [f"fp8-{args.fp8_recipe}"] * args.fp8
        + ["compile"] * (ours and args.compile)
        + ["unfused-loss"] * (ours and not args.fused_loss)
        + ["fused-step"] * args.fused_step
        + ["ckpt"] * args.checkpoint_activations
    )
    say(
        f"e2e: {label}: {n_params / 1e6:,.1f}M parameters, ZeRO-{args.zero} over {world} GPU(s), built in "
        f"{time.perf_counter() - t0:.1f}s; {loader.summary() if ours else hf_summary(engine.module)}"
    )
    gen = torch.Generator(device=DEV).manual_seed(0)
    engine.train()

    def step(tokens):
        with attention_backends():
            loss = loss_fn(tokens)
            engine.backward(loss)
        engine.step()
        return loss

    for mb in args.micro_batches:
        batches = [
            torch.randint(0, args.vocab, (mb, args.seq + 1), device=DEV, generator=gen) for _ in range(4)
        ]
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
            say(f"e2e: {label} micro-batch {mb}: out of memory")
            engine.zero_grad()
            loss = None
            torch.cuda.empty_cache()
            continue
        elapsed = world_max(elapsed)  # the step ends when the slowest rank's does
        tok_s = mb * args.seq * args.steps / elapsed  # per GPU
        row = {
            "impl": label,
            "preset": args.preset,
            "micro_batch": mb,
            "seq": args.seq,
            "zero": args.zero,
            "world": world,
            "steps": args.steps,
            "step_s": elapsed / args.steps,
            "tokens_per_s": tok_s,
            "tokens_per_s_world": tok_s * world,
            "warmup_s": warm_s,
            "tflops_palm": palm_fpt * tok_s / 1e12,
            "mfu_palm": palm_fpt * tok_s / 1e12 / args.peak,
            "tflops_model": model_fpt * tok_s / 1e12,
            "mfu_model": model_fpt * tok_s / 1e12 / args.peak,
            "peak_mem_gib": world_max(torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else 0.0),
            "loss": loss.item(),
            "fp8": args.fp8_recipe if args.fp8 else None,
            "fused_loss": ours and args.fused_loss,
            "fused_step": args.fused_step,
            "compiled": args.compile or not ours or args.fp8,
            "kernels": os.environ.get("NEOX_KERNELS", "1"),
            "inductor": args.inductor,
            "device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu",
            "torch": torch.__version__,
        }
        say(
            f"e2e: {label:<18} mb {mb:>2}: {tok_s:>9,.0f} tokens/s per GPU  {row['step_s'] * 1e3:7.1f} ms/step  "
            f"{row['tflops_palm']:6.1f} TFLOP/s (6N+12lhs) MFU {100 * row['mfu_palm']:5.1f}%  "
            f"model-count MFU {100 * row['mfu_model']:5.1f}%  peak {row['peak_mem_gib']:.1f} GiB  "
            f"loss {row['loss']:.3f}"
        )
        if args.out and rank() == 0:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    if args.save_checkpoint:
        save_checkpoint(engine, args)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        sync()
        t_prof = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(2):
                step(batches[i])
            sync()
        wall_ms = (time.perf_counter() - t_prof) * 1e3
        events = prof.key_averages()
        kernels = kernel_times(prof)
        busy_ms = sum(kernels.values()) / 1e3  # microseconds -> ms
        # one file per implementation, so several --impl values profile side by side
        args.profile.mkdir(parents=True, exist_ok=True)
        path = args.profile / f"{label.replace('+', '_')}-mb{mb}.txt"  # a name the device tool returns
        head = f"{label} mb {mb}: 2 steps, {wall_ms:.0f} ms wall, {busy_ms:.0f} ms of kernels ({100 * busy_ms / wall_ms:.0f}% busy)"
        by_kind = kernel_kinds(kernels)
        kinds = ", ".join(
            f"{k} {t / 1e3:.0f} ms ({100 * t / 1e3 / max(busy_ms, 1e-9):.0f}%)" for k, t in by_kind
        )
        top = sorted(kernels.items(), key=lambda kv: -kv[1])[:40]
        path.write_text(
            f"{head}\nby kind: {kinds}\n\ntop kernels (ms, name):\n"
            + "\n".join(f"{t / 1e3:9.2f}  {name[:160]}" for name, t in top)
            + "\n\n"
            + events.table(sort_by="self_cuda_time_total", row_limit=45)
        )
        say(f"e2e profile: {head}; by kind: {kinds}")
    if world > 1:
        # no rank leaves while another still talks to it; memory first, since NCCL needs some for the barrier
        del engine, loss_fn
        torch.cuda.empty_cache()
        dist.barrier()
    from trainer.engine import leave_distributed

    leave_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
