"""Fused-kernel benchmark (issue 9, item 1): accuracy against float64, time, and bandwidth against a copy.

    PYTHONPATH=. python benchmarks/kernels_bench.py [--out DIR] [--quick]

For each kernel at the Pythia-1.4B and GPT-NeoX-20B shapes, in fp32 and bf16:
  * error: max|out - ref| / max|ref| of the forward output and of every input gradient, against the
    float64 reference on fresh random inputs (leading rows sliced so the float64 copy stays <= 2^27
    elements; every row runs the same code);
  * time: median of CUDA-event timings after warm-up, forward and backward (torch.autograd.grad),
    rotating input sets so that no run reads from a warm L2. Device time: a GPU spin queued before the
    start event lets the host queue the whole call first, so the interval holds the call's kernels and
    no host launch overhead (what a GPU-bound training step sees). Per-call time: the same without the
    spin, host overhead included (what an idle GPU waiting on Python sees);
  * bandwidth: the fewest bytes each pass must move (inputs read once, outputs written once) over its
    time, as a share of a device-to-device copy (bytes read + written) measured in the same run;
  * the PyTorch reference (eager, same dtype) timed the same way, for the speed-up.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
from pathlib import Path

import torch

import trainer.kernels as K
from trainer.kernels import loader, reference

TARGET = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
MAX_REF_ELEMS = 2**27


SPIN_CYCLES = 4_000_000  # ~2 ms at the H200's clock: longer than any call here takes to queue


def timed(fn, sets: int, reps: int = 20, warmup: int = 5, device_only: bool = True) -> float:
    """Median milliseconds of fn(i % sets) over reps runs (device time, or per call with host overhead)."""
    for i in range(warmup):
        fn(i % sets)
    times = []
    for i in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if device_only:
            torch.cuda._sleep(SPIN_CYCLES)
        a.record()
        fn(i % sets)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def copy_bandwidth(nbytes: int = 4 << 30) -> float:
    src = torch.randn(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    ms = timed(lambda i: dst.copy_(src), 1, reps=30)
    return 2 * nbytes / (ms * 1e-3)


def max_rel(got, ref) -> float:
    got, ref = got.double(), ref.double()
    if not torch.isfinite(got).all():
        return math.inf
    return ((got - ref).abs().max() / ref.abs().max()).item()


# Each case: make(dtype) -> (inputs, grad_mask, fused(*inputs), ref(*inputs), bytes_fwd, bytes_bwd)
def tables(s, rot):
    inv = 1.0 / (10000 ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))
    emb = torch.outer(torch.arange(s, dtype=torch.float64), inv).repeat(1, 2)
    return emb.cos().float().cuda(), emb.sin().float().cuda()


def case_bias_gelu(rows, ffn):
    def make(dtype):
        x = torch.randn(rows, ffn, device="cuda", dtype=dtype)
        b = torch.randn(ffn, device="cuda", dtype=dtype)
        e, n = x.element_size(), x.numel()
        return [x, b], [True, True], K.bias_gelu, reference.bias_gelu, 2 * n * e, 3 * n * e

    return f"bias_gelu [{rows}, {ffn}]", make


def case_rotary(b, s, h, d, rot):
    cos, sin = tables(s, rot)

    def make(dtype):
        qkv = torch.randn(b, s, h, 3 * d, device="cuda", dtype=dtype)  # GPT-NeoX fused qkv layout
        q = qkv[..., :d].permute(0, 2, 1, 3)  # [b, h, s, d], strided like the model's query
        e, n = q.element_size(), q.numel()

        def ref(t):
            return reference.rotary(t, cos.to(t.dtype), sin.to(t.dtype), rot)

        return [q], [True], lambda t: K.rotary(t, cos, sin, rot), ref, 2 * n * e, 2 * n * e

    return f"rotary q [{b}, {h}, {s}, {d}] rot {rot}", make


def case_layer_norm(rows, hidden):
    def make(dtype):
        x = torch.randn(rows, hidden, device="cuda", dtype=dtype) * 2 + 0.5
        w = 1 + 0.1 * torch.randn(hidden, device="cuda", dtype=dtype)
        bb = 0.1 * torch.randn(hidden, device="cuda", dtype=dtype)
        e, n = x.element_size(), x.numel()
        return (
            [x, w, bb],
            [True, True, True],
            lambda x, w, b: K.layer_norm(x, w, b, 1e-5),
            lambda x, w, b: reference.layer_norm(x, w, b, 1e-5),
            2 * n * e,
            3 * n * e,
        )

    return f"layer_norm [{rows}, {hidden}]", make


def case_cross_entropy(rows, vocab):
    targets_all = torch.randint(0, vocab, (rows,), device="cuda")
    targets_all[::50] = -100

    def make(dtype):
        lg = torch.randn(rows, vocab, device="cuda", dtype=dtype) * 3
        e, n = lg.element_size(), lg.numel()

        def fused(lg):
            return K.cross_entropy(lg, targets_all[: lg.shape[0]])

        def ref(lg):
            return reference.cross_entropy(lg, targets_all[: lg.shape[0]])

        return [lg], [True], fused, ref, n * e, 2 * n * e

    return f"cross_entropy [{rows}, {vocab}]", make


def case_causal_softmax(mats, s, head_dim):
    scale = 1 / math.sqrt(head_dim)

    def make(dtype):
        x = torch.randn(mats, s, s, device="cuda", dtype=dtype) * 4
        e, tri = x.element_size(), s * (s + 1) // 2
        return (
            [x],
            [True],
            lambda x: K.causal_softmax(x, scale),
            lambda x: reference.causal_softmax(x, scale),
            mats * (tri + s * s) * e,
            mats * (2 * tri + s * s) * e,
        )

    return f"causal_softmax [{mats}, {s}, {s}]", make


def shapes(quick: bool):
    s = 2048
    pythia = dict(mb=8, hidden=2048, heads=16, d=128, rot=32, vocab=50304)
    neox20b = dict(mb=4, hidden=6144, heads=64, d=96, rot=24, vocab=50432)
    out = []
    for name, m in (("pythia-1.4b", pythia), ("neox-20b", neox20b)):
        mb = 1 if quick else m["mb"]
        rows = mb * s
        out += [
            (name, case_layer_norm(rows, m["hidden"])),
            (name, case_bias_gelu(rows, 4 * m["hidden"])),
            (name, case_rotary(mb, s, m["heads"], m["d"], m["rot"])),
            (name, case_cross_entropy(rows, m["vocab"])),
            (name, case_causal_softmax(mb * m["heads"], s, m["d"])),
        ]
    return out


def slice_rows(t: torch.Tensor, is_param: bool) -> torch.Tensor:
    if is_param or t.numel() <= MAX_REF_ELEMS:
        return t
    keep = max(1, t.shape[0] * MAX_REF_ELEMS // t.numel())
    return t[:keep]


def errors(inputs, grads, fused, ref):
    params = [t.dim() == 1 for t in inputs]
    sl = [slice_rows(t, p) for t, p in zip(inputs, params, strict=True)]
    ours = [
        t.detach().clone().requires_grad_(g) if not t.is_contiguous() else t.detach().requires_grad_(g)
        for t, g in zip(sl, grads, strict=True)
    ]
    if len(ours) == 1 and not sl[0].is_contiguous():  # keep the strided layout of the rotary query
        ours = [sl[0].detach().requires_grad_(grads[0])]
    theirs = [t.detach().double().requires_grad_(g) for t, g in zip(sl, grads, strict=True)]
    out, r = fused(*ours), ref(*theirs)
    dy = torch.randn_like(r) if r.dim() else torch.ones_like(r)
    g_ours = torch.autograd.grad(out, [t for t in ours if t.requires_grad], dy.to(out.dtype))
    g_ref = torch.autograd.grad(r, [t for t in theirs if t.requires_grad], dy)
    errs = {"out": max_rel(out, r)}
    for i, (a, b) in enumerate(zip(g_ours, g_ref, strict=True)):
        errs[f"grad{i}"] = max_rel(a, b)
    fused_used = type(out.grad_fn).__name__
    return errs, fused_used


def bench_pass(fn_fwd, inputs_sets, grads, device_only: bool = True):
    """(fwd ms, bwd ms) of fn over rotating input sets."""

    def fwd(i):
        with torch.no_grad():
            fn_fwd(*inputs_sets[i])

    outs, leaves = [], []
    for inputs in inputs_sets:
        xs = [t.detach().requires_grad_(g) for t, g in zip(inputs, grads, strict=True)]
        o = fn_fwd(*xs)
        outs.append((o, torch.randn_like(o) if o.dim() else torch.ones_like(o)))
        leaves.append([t for t in xs if t.requires_grad])

    def bwd(i):
        o, dy = outs[i]
        torch.autograd.grad(o, leaves[i], dy, retain_graph=True)

    f = timed(fwd, len(inputs_sets), device_only=device_only)
    b = timed(bwd, len(inputs_sets), device_only=device_only)
    return f, b


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    p.add_argument("--quick", action="store_true", help="micro-batch 1 (smoke run)")
    p.add_argument("--only", default="", help="comma-separated kernel names")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("kernels_bench: error: needs a CUDA GPU", file=sys.stderr)
        return 1
    st = K.status()
    print(loader.summary(), flush=True)
    if not st["active"]:
        return 1
    copy_bw = copy_bandwidth()
    print(f"device-to-device copy: {copy_bw / 1e12:.2f} TB/s (read + write)", flush=True)
    rows = []
    for model, (label, make) in shapes(args.quick):
        kname = label.split()[0]
        if args.only and kname not in args.only.split(","):
            continue
        for dtype in (torch.float32, torch.bfloat16):
            torch.manual_seed(len(rows))
            inputs, grads, fused, ref, bytes_f, bytes_b = make(dtype)
            errs, fn_class = errors(inputs, grads, fused, ref)
            torch.cuda.empty_cache()
            size = sum(t.numel() * t.element_size() for t in inputs)
            sets = [inputs] + [
                make(dtype)[0] for _ in range(min(3, max(0, math.ceil((256 << 20) / size) - 1)))
            ]
            f_ms, b_ms = bench_pass(fused, sets, grads)
            f_call_ms, b_call_ms = bench_pass(fused, sets, grads, device_only=False)
            rf_ms, rb_ms = bench_pass(ref, sets[:1] * 1, grads) if size < (8 << 30) else (math.nan, math.nan)
            del sets, inputs
            torch.cuda.empty_cache()
            row = {
                "model": model,
                "kernel": label,
                "dtype": str(dtype).replace("torch.", ""),
                "autograd": fn_class,
                "max_rel_err": max(errs.values()),
                "errors": errs,
                "target": TARGET[dtype],
                "fwd_ms": f_ms,
                "bwd_ms": b_ms,
                "fwd_call_ms": f_call_ms,
                "bwd_call_ms": b_call_ms,
                "fwd_GBps": bytes_f / f_ms / 1e6,
                "bwd_GBps": bytes_b / b_ms / 1e6,
                "ref_fwd_ms": rf_ms,
                "ref_bwd_ms": rb_ms,
            }
            row["fwd_pct_copy"] = 100 * row["fwd_GBps"] * 1e9 / copy_bw
            row["bwd_pct_copy"] = 100 * row["bwd_GBps"] * 1e9 / copy_bw
            rows.append(row)
            ok = "ok" if row["max_rel_err"] < row["target"] else "OVER"
            print(
                f"{model:12s} {label:38s} {row['dtype']:8s} err {row['max_rel_err']:.2e} {ok:4s} "
                f"fwd {f_ms:7.3f} ms {row['fwd_pct_copy']:5.1f}% (ref {rf_ms:7.3f})  "
                f"bwd {b_ms:7.3f} ms {row['bwd_pct_copy']:5.1f}% (ref {rb_ms:7.3f})  "
                f"per call {f_call_ms:.3f} / {b_call_ms:.3f} ms",
                flush=True,
            )
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "kernels": st,
        "copy_TBps": copy_bw / 1e12,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernels_bench.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    bad = [r for r in rows if not r["max_rel_err"] < r["target"]]
    print(
        f"kernels_bench: {len(rows)} rows, {len(bad)} over the error target, copy {copy_bw / 1e12:.2f} TB/s; "
        f"wrote {args.out / 'kernels_bench.json'}"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
