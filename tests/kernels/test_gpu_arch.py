"""The start-up coverage check on a real GPU: a build without code for this GPU must be refused."""

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
    major, minor = torch.cuda.get_device_capability()
    other = "8.0" if major >= 9 else "9.0"  # SASS only, no PTX: cannot run here
    module = loader.build(tmp_path / "other", other)
    with pytest.raises(RuntimeError, match="no kernel image"):
        module.kernel_image(torch.cuda.current_device())
    # the module still answers afterwards, and the active build is unaffected
    mod, info = loader.load()
    if mod is not None:
        sass, _ptx, seen = mod.kernel_image(torch.cuda.current_device())
        assert sass == major * 10 + minor and seen // 10 == sass
