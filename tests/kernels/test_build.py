"""The ahead-of-time build entry: error handling without nvcc, and (slow) a real compile when nvcc exists."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.kernels import build, loader

REPO = Path(__file__).resolve().parents[2]


def test_build_without_nvcc_fails_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loader, "nvcc_path", lambda: None)
    assert build.main(["--out", str(tmp_path / "k")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["trainer.kernels.build: error: nvcc not found: set CUDA_HOME to a CUDA toolkit"]


def test_source_hash_follows_the_sources(tmp_path, monkeypatch):
    h = loader.source_hash()
    assert h == loader.source_hash() and len(h) == 16
    fake = tmp_path / "csrc"
    shutil.copytree(loader.CSRC, fake)
    monkeypatch.setattr(loader, "CSRC", fake)
    assert loader.source_hash() == h
    (fake / "rotary.cu").write_text((fake / "rotary.cu").read_text() + "\n// changed\n")
    assert loader.source_hash() != h


@pytest.mark.slow
@pytest.mark.skipif(loader.nvcc_path() is None, reason="needs nvcc (CUDA_HOME) to compile the extension")
def test_extension_compiles_and_imports_without_gpu(tmp_path):
    out = tmp_path / "kernels"
    env = {**os.environ, "MAX_JOBS": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.kernels.build", "--out", str(out), "--arch-list", "9.0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        proc.stdout.strip()
        .splitlines()[-1]
        .startswith("trainer.kernels.build: built neox_fused_kernels for 9.0")
    )
    info = json.loads((out / "build-info.json").read_text())
    assert info["arch_list"] == "9.0" and info["source_hash"] == loader.source_hash()
    assert not list(out.glob("*.o"))  # only the module ships
    module = loader._import_from(out / f"{loader.EXT_NAME}.so")
    for fn in ("bias_gelu_fwd", "rotary_fwd", "layer_norm_bwd", "cross_entropy_bwd", "causal_softmax_fwd"):
        assert callable(getattr(module, fn))
    assert module.layer_norm_max_hidden(2, True) == 16384
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):
            module.kernel_image(0)
