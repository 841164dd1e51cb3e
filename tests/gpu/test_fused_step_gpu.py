"""`python -m trainer.train` with `fused-optimizer-step: true` (trainer.optim on fp32 masters, the clip
folded in) against the same run with DeepSpeed's bf16 ZeRO-1 step, 300 iterations on one GPU."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.support.gpu import (
    BF16,
    finish_trainer,
    losses,
    needs_cuda,
    needs_deepspeed,
    start_trainer,
    write_config,
)

pytestmark = [pytest.mark.gpu, needs_cuda(), needs_deepspeed()]

ITERS = 300
KEYS = {"train-iters": ITERS, "eval-interval": ITERS, "zero_optimization": {"stage": 1}, "log-interval": 1}


@pytest.fixture(scope="module")
def curves(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("fused-step-runs")
    procs = {}
    for name, fused in (("deepspeed", False), ("fused", True)):
        d = root / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        keys = {**BF16, **KEYS, "fused-optimizer-step": fused}
        cfg = write_config(d / "run.yml", corpus, save=str(d / "ckpt"), **keys)
        procs[name] = (d, start_trainer(cfg, d / "console.log"))
    out = {}
    for name, (d, proc) in procs.items():
        rc, log = finish_trainer(proc, d / "console.log")
        assert rc == 0, log[-4000:]
        got = losses(d / "ckpt")
        out[name] = (np.array([got[i] for i in sorted(got)]), log)
    return out


def test_the_fused_step_trains_as_deepspeeds_step(curves):
    theirs, _ = curves["deepspeed"]
    ours, log = curves["fused"]
    assert "optimizer step trainer.optim.MasterWeightAdamW" in log
    assert len(ours) == len(theirs) == ITERS and np.isfinite(ours).all()
    # the same maths; FusedAdam and torch's fused AdamW round differently, so allow drift late on
    np.testing.assert_allclose(ours[:10], theirs[:10], rtol=1e-3)
    for start in range(0, ITERS, 50):
        a, b = ours[start : start + 50].mean(), theirs[start : start + 50].mean()
        assert abs(a - b) <= max(0.05, 0.05 * b), (start, a, b)
    assert ours[-20:].mean() < ours[0] - 3.0
