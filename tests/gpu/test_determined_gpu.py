"""NeoXTrial under Determined's local training API (no master) on one GPU: train, checkpoint,
restore from that checkpoint in a fresh trial and continue with the losses of an unbroken run.

Runs tests/gpu/det_local_run.py in a subprocess (it owns the process group) with Determined's
checkpoint storage in a temporary folder (`XDG_DATA_HOME`).
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.gpu import BF16, ROOT, child_env, needs_cuda, needs_deepspeed, write_config

pytestmark = [
    pytest.mark.gpu,
    needs_cuda(),
    needs_deepspeed(),
    pytest.mark.skipif(
        importlib.util.find_spec("determined") is None,
        reason="determined (the optional extra) is not installed",
    ),
]
FIRST, TOTAL, GAS = 4, 8, 2


@pytest.fixture(scope="module")
def det_run(corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("det")
    (d / "conf").mkdir()
    write_config(
        d / "conf" / "model.yml",
        corpus,
        **BF16,
        **{"train-iters": 1000, "zero_optimization": {"stage": 1}, "gradient_accumulation_steps": GAS},
    )
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "gpu" / "det_local_run.py"),
            str(d / "conf"),
            str(d / "out.json"),
        ],
        cwd=ROOT,
        env=child_env(XDG_DATA_HOME=str(d / "xdg")),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads((d / "out.json").read_text()), d


def test_trial_trains_validates_and_checkpoints(det_run):
    out, _ = det_run
    first = out["first"]
    assert first["device"].startswith("cuda")
    assert len(first["losses"]) == FIRST * GAS and all(math.isfinite(x) for x in first["losses"])
    assert first["losses"][-1] < first["losses"][0] - 0.5
    assert first["validations"] and all(math.isfinite(v["lm_loss"]) for v in first["validations"])
    assert len(first["checkpoints"]) == 1
    ckpt = Path(first["checkpoints"][0])
    assert (ckpt / "neox" / "model_config.json").is_file() and (ckpt / "latest").read_text().strip() == "neox"
    assert (ckpt / "neox" / "mp_rank_00_model_states.pt").is_file()


def test_restored_trial_continues_where_the_checkpoint_stopped(det_run):
    out, _ = det_run
    resumed, straight = out["resumed"]["losses"], out["straight"]["losses"]
    assert len(straight) == TOTAL * GAS and len(resumed) == (TOTAL - FIRST) * GAS
    # same start as the first fit, then after the restore the unbroken run's losses: weights,
    # optimizer and schedule came back, and the data position too (else other batches, other losses)
    for a, b in zip(out["first"]["losses"], straight[: FIRST * GAS], strict=True):
        assert a == pytest.approx(b, rel=1e-2)
    for a, b in zip(resumed, straight[FIRST * GAS :], strict=True):
        assert a == pytest.approx(b, rel=1e-2)
    assert resumed[0] < straight[0] - 1.0  # started from trained weights, not a fresh model


def test_determined_checkpoint_exports_to_hugging_face(det_run, tmp_path):
    out, _ = det_run
    ckpt = out["first"]["checkpoints"][0]
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.export", "--checkpoint", ckpt, "--out", str(tmp_path / "hf")],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "hf" / "model.safetensors").is_file() and (tmp_path / "hf" / "config.json").is_file()
