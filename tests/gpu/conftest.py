"""Fixtures for the GPU tests: a learnable token corpus (their helpers: tests.support.gpu).

These tests run on the GPU machine (`pytest tests/gpu -m gpu`); without CUDA every test is
skipped with the reason. The fused kernels should be built first (the driver
benchmarks/e2e_gpu_driver.sh does: `python -m trainer.kernels.build --out DIR`, `NEOX_KERNELS_DIR=DIR`),
else the first trainer run compiles them just in time.
"""

from __future__ import annotations

import numpy as np
import pytest

from jobs.indexed_dataset import IndexedDatasetWriter, dtype_for_vocab
from tests.support.gpu import VOCAB


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """600 documents following x -> 3x + 1 mod 512 from random starts: learnable in a few dozen steps."""
    prefix = tmp_path_factory.mktemp("corpus") / "gpu_text_document"
    rng = np.random.default_rng(0)
    with IndexedDatasetWriter(prefix, dtype_for_vocab(VOCAB)) as w:
        for _ in range(600):
            x = [int(rng.integers(0, VOCAB))]
            for _ in range(int(rng.integers(40, 400)) - 1):
                x.append((x[-1] * 3 + 1) % VOCAB)
            w.add_document(x)
    return str(prefix)
