"""Fixtures for the trainer tests: a tiny random Hugging Face GPT-NeoX folder, a learnable corpus, moto S3
(their helpers: tests.support.trainer)."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.indexed_dataset import IndexedDatasetWriter, dtype_for_vocab
from tests.support.s3 import moto_s3
from tests.support.trainer import SECRET, make_hf_model


@pytest.fixture
def hf_tiny(tmp_path):
    return make_hf_model(tmp_path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """300 documents following x -> 3x + 1 mod 512 from random starts: learnable in a few dozen steps."""
    prefix = tmp_path_factory.mktemp("corpus") / "tiny_text_document"
    rng = np.random.default_rng(0)
    with IndexedDatasetWriter(prefix, dtype_for_vocab(512)) as w:
        for _ in range(300):
            x = [int(rng.integers(0, 512))]
            for _ in range(int(rng.integers(20, 80)) - 1):
                x.append((x[-1] * 3 + 1) % 512)
            w.add_document(x)
    return str(prefix)


@pytest.fixture
def s3(monkeypatch):
    """moto's server; keys and endpoint only through boto3's standard environment variables."""
    boto3 = pytest.importorskip("boto3")
    with moto_s3() as (url, _):
        for k, v in {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "AKIDMIRRORTEST",
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(k, v)
        client = boto3.client("s3")
        client.create_bucket(Bucket="ckpt")
        yield client
