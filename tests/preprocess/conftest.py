"""Fixtures for the preprocessor tests: the real 20B tokenizer and a local HTTP server (the local S3 server,
`s3_endpoint`, is tests/support/fixtures.py's)."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest

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
