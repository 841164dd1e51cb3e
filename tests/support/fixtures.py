"""Fixtures any test area may use, registered for the whole suite by `pytest_plugins` in tests/conftest.py."""

from __future__ import annotations

import pytest

from tests.support.s3 import moto_s3


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1 and a random port, with dummy credentials in the environment."""
    mp = pytest.MonkeyPatch()
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        mp.setenv(k, v)
    mp.delenv("AWS_ENDPOINT_URL", raising=False)
    mp.delenv("AWS_PROFILE", raising=False)
    with moto_s3() as (endpoint, _):
        yield endpoint
    mp.undo()
