"""`python -m trainer.train` with `fp8: true` (torchao float8 training, compiled blocks) against the same
run in bf16 over 300 iterations, and a checkpoint saved by the fp8 run resumed by a bf16 run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.support.gpu import BF16, losses, needs_cuda, needs_deepspeed, run_trainers

pytestmark = [
    pytest.mark.gpu,
    needs_cuda(),
    needs_deepspeed(),
    pytest.mark.skipif(
        torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9),
        reason="fp8 needs compute capability >= 8.9",
    ),
]

ITERS = 300
# hidden 256, FFN 1024: every linear layer's dimensions are multiples of 16, as fp8 matmuls need
KEYS = {"train-iters": ITERS, "eval-interval": ITERS, "zero_optimization": {"stage": 1}, "log-interval": 1}


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8-runs")
    out = run_trainers(
        root, corpus, {name: {"fp8": fp8, **BF16, **KEYS} for name, fp8 in (("bf16", False), ("fp8", True))}
    )
    # the fp8 run's checkpoint, continued for 10 iterations with fp8 off
    resume = {**BF16, **KEYS, "save": str(root / "fp8" / "ckpt"), "fp8": False, "train-iters": ITERS + 10,
              "log-dir": str(root / "resume-bf16")}  # fmt: skip
    return out | run_trainers(root, corpus, {"resume-bf16": resume})


def curve(run) -> np.ndarray:
    got = losses(run[0] / "ckpt" if (run[0] / "ckpt" / "metrics.jsonl").exists() else run[0])
    return np.array([got[i] for i in sorted(got)])


def test_fp8_run_uses_float8_linear_layers_and_learns(runs):
    d, rc, log = runs["fp8"]
    assert rc == 0, log[-4000:]
    assert "fp8 (tensorwise) in 16 linear layers" in log, [
        x for x in log.splitlines() if "trainer.engine" in x
    ]
    assert "blocks compiled" in log
    c = curve(runs["fp8"])
    assert len(c) == ITERS and np.isfinite(c).all()
    assert c[-20:].mean() < c[0] - 3.0, c[::20]


def test_fp8_losses_follow_bf16_within_tolerance(runs):
    """Tolerance: the first step (same weights, same batch) within 0.2%, every 20-iteration mean within
    0.05 nats or 10% of the bf16 run's. Seen on an H200 (2026-12-01): 1.8e-4 at the first step, at most
    0.018 nats (3%) between window means, both runs ending at 0.058."""
    assert runs["bf16"][1] == 0 and runs["fp8"][1] == 0
    a, b = curve(runs["bf16"]), curve(runs["fp8"])
    assert abs(a[0] - b[0]) <= 2e-3 * a[0], (a[0], b[0])
    ma, mb = a.reshape(-1, 20).mean(1), b.reshape(-1, 20).mean(1)
    gap = np.abs(ma - mb)
    assert (gap <= np.maximum(0.05, 0.1 * ma)).all(), f"window means\nbf16 {ma}\nfp8  {mb}"


def test_fp8_checkpoint_resumes_in_bf16(runs):
    d, rc, log = runs["resume-bf16"]
    assert rc == 0, log[-4000:]
    assert f"at iteration {ITERS}" in log, [x for x in log.splitlines() if "resumed" in x]
    assert "fp8" not in "".join(x for x in log.splitlines() if x.startswith("trainer.engine"))
    after = losses(d)
    assert sorted(after) == list(range(ITERS + 1, ITERS + 11))
    fp8_end = curve(runs["fp8"])[-10:].mean()
    resumed = np.mean(list(after.values()))
    assert abs(resumed - fp8_end) <= max(0.05, 0.1 * fp8_end), (fp8_end, after)
