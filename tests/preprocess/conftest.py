"""Fixtures for the preprocessor tests: the real 20B tokenizer, a local S3 server, a local HTTP server."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest

from tests.support.s3 import moto_s3

TOKENIZER = Path(__file__).parents[3] / "shared/data/20B_tokenizer.json"


@pytest.fixture(scope="session")
def tokenizer_path() -> Path:
    if not TOKENIZER.is_file():
        pytest.skip(f"the GPT-NeoX-20B tokenizer is not at {TOKENIZER} (the shared/ folder beside the repo)")
    return TOKENIZER


@pytest.fixture(scope="session")
def tokenizer(tokenizer_path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_path))


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
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


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="session")
def http_root(tmp_path_factory):
    """A plain http.server on 127.0.0.1 serving a temporary folder; yields (folder, base URL)."""
    root = tmp_path_factory.mktemp("http")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
