"""The start-up coverage check on a real GPU: a build without code for this GPU must be refused."""

import subprocess
import sys
import textwrap

import pytest
import torch

from trainer.kernels import loader

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine)"),
    pytest.mark.skipif(loader.nvcc_path() is None, reason="needs nvcc to compile the extension"),
]


def test_build_for_another_arch_is_not_accepted(tmp_path):
    """Run in a child process: a second copy of the extension (same symbols, other arch) loaded into
    the test process would shadow the real one for every later test."""
    major, _minor = torch.cuda.get_device_capability()
    other = "8.0" if major >= 9 else "9.0"  # SASS only, no PTX: cannot run here
    script = textwrap.dedent(
        f"""
        import torch
        from trainer.kernels import loader
        module = loader.build({str(tmp_path / "other")!r}, {other!r})
        try:
            module.kernel_image(torch.cuda.current_device())
        except RuntimeError as exc:
            print("refused:", exc)
        else:
            print("accepted")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused:" in proc.stdout and "no kernel image" in proc.stdout, proc.stdout


def test_the_active_build_runs_on_this_gpu():
    mod, info = loader.load()
    assert mod is not None, info
    major, minor = torch.cuda.get_device_capability()
    sass, _ptx, seen = mod.kernel_image(torch.cuda.current_device())
    assert sass == major * 10 + minor and seen // 10 == sass
