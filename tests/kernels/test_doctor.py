"""`python -m trainer.doctor` on a machine without a GPU, with and without DeepSpeed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer import doctor

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="describes a machine without a GPU")
def test_doctor_cli_without_gpu_reports_and_exits_zero(tmp_path):
    out = tmp_path / "doctor.json"
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.doctor", "--json", str(out), "--require-kernels"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert any(ln.startswith(f"torch {torch.__version__} (CUDA") for ln in lines)  # DeepSpeed may log first
    assert "GPU: none visible" in lines
    assert any(ln.startswith("fused kernels off (no CUDA device)") for ln in lines)
    assert any(ln.startswith("DeepSpeed") for ln in lines)
    report = json.loads(out.read_text())
    assert report["gpus"] == [] and report["kernels"]["active"] is False
    assert set(report["kernels"]["kernels"]) == {
        "bias_gelu",
        "rotary",
        "layer_norm",
        "cross_entropy",
        "causal_softmax",
    }


def test_doctor_without_deepspeed_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # makes `import deepspeed` raise ImportError
    ops = doctor.deepspeed_ops()
    assert ops["available"] is False and "deepspeed" in ops["reason"]
    lines = doctor.render(
        {
            "torch": "x",
            "torch_cuda": None,
            "torch_archs": [],
            "gpus": [],
            "nvcc": {"path": None},
            "prebuilt": doctor.prebuilt(),
            "kernels": {"active": False, "reason": "no CUDA device"},
            "deepspeed": ops,
        }
    )
    assert any(ln.startswith("DeepSpeed: not usable (") for ln in lines), lines
    assert "nvcc: not found" in lines


def test_prebuilt_folder_is_read_without_gpu(tmp_path, monkeypatch):
    from trainer.kernels import loader

    (tmp_path / f"{loader.EXT_NAME}.so").write_bytes(b"")
    (tmp_path / loader.BUILD_INFO).write_text(
        json.dumps({"arch_list": "8.0 9.0+PTX", "source_hash": "stale"})
    )
    monkeypatch.setenv("NEOX_KERNELS_DIR", str(tmp_path))
    p = doctor.prebuilt()
    assert p == {"dir": str(tmp_path), "present": True, "arch_list": "8.0 9.0+PTX", "matches_sources": False}
    assert any(
        "STALE" in ln
        for ln in doctor.render(
            {
                "torch": "x",
                "torch_cuda": None,
                "torch_archs": [],
                "gpus": [],
                "nvcc": {"path": None},
                "prebuilt": p,
                "kernels": {"active": False, "reason": "no CUDA device"},
                "deepspeed": {"available": False, "reason": "r"},
            }
        )
    )
