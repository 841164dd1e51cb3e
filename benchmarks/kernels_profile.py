"""A few launches of chosen fused kernels at the benchmark shapes, for a profiler (ncu) to attach to.

PYTHONPATH=. ncu --clock-control none -k regex:ln_ python benchmarks/kernels_profile.py layer_norm
"""

import sys

import torch

import trainer.kernels as K


def main() -> None:
    which = sys.argv[1:] or ["layer_norm"]
    dt = torch.bfloat16
    for rows, hidden in ((16384, 2048), (8192, 6144)):
        if "layer_norm" in which:
            x = torch.randn(rows, hidden, device="cuda", dtype=dt, requires_grad=True)
            w = torch.ones(hidden, device="cuda", dtype=dt, requires_grad=True)
            b = torch.zeros(hidden, device="cuda", dtype=dt, requires_grad=True)
            y = K.layer_norm(x, w, b, 1e-5)
            y.backward(torch.randn_like(y))
        if "rotary" in which:
            heads, d = hidden // 128, 128
            q = torch.randn(rows // 2048, heads, 2048, d, device="cuda", dtype=dt, requires_grad=True)
            cos = torch.randn(2048, 32, device="cuda")
            K.rotary(q, cos, cos, 32).backward(torch.randn_like(q))
    torch.cuda.synchronize()
    print(K.status()["active"])


if __name__ == "__main__":
    main()
