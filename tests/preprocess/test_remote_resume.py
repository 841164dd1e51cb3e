"""Remote inputs survive dropped connections: a reset halfway through an https:// or s3:// input is
resumed at the byte reached (Range), and the output is the same as from the local file. Servers are
real: the fetcher tests' fault-injecting HTTP server (resets with RST, 5xx replies) and moto's S3."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from jobs.cli import JobError
from jobs.preprocess import preprocess
from jobs.preprocess.remote import open_s3
from tests.support.corpus import read_docs
from tests.support.servers import FileServer

# About 5 MB: reads go in 1 MB pieces, so a reset halfway through leaves whole pieces to resume after.
TEXTS = [
    f"document {i}: " + "the quick brown fox jumps over the lazy dog " * (i % 7 + 1) for i in range(24000)
]


@pytest.fixture
def fast_backoff(monkeypatch):
    from jobs import retry

    monkeypatch.setattr(retry.Backoff, "base", 0.01)


@pytest.fixture
def corpus(tmp_path) -> Path:
    root = tmp_path / "served"
    root.mkdir()
    (root / "big.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return root


def _local_docs(corpus: Path, tokenizer_path, out: Path):
    preprocess([str(corpus / "big.jsonl")], tokenizer_path, out, workers=1)
    return read_docs(Path(f"{out}_text_document"))


@pytest.mark.parametrize("ranges", [True, False], ids=["range", "no-range"])
def test_http_input_resumes_after_resets_with_the_same_output(
    corpus, tmp_path, tokenizer_path, fast_backoff, ranges, capsys
):
    expected = _local_docs(corpus, tokenizer_path, tmp_path / "local")
    with FileServer(corpus, ranges=ranges) as srv:
        # cut: half the body then a clean close; reset: half then RST (unread bytes are lost)
        srv.faults = {"cut": 3, "reset": 1, "503": 2}
        preprocess([f"{srv.url}/big.jsonl"], tokenizer_path, tmp_path / "remote", workers=1)
        ranged = [r for method, _, r in srv.requests if method == "GET" and r]
    assert read_docs(tmp_path / "remote_text_document") == expected
    assert srv.faults == {"cut": 0, "reset": 0, "503": 0}  # every fault was served, and survived
    assert f"{srv.url}/big.jsonl: connection lost at byte " in capsys.readouterr().err
    assert len(ranged) >= 3 and all(r.startswith("bytes=") and r != "bytes=0-" for r in ranged), srv.requests


def test_http_input_that_changes_while_read_fails_by_name(corpus, tmp_path, tokenizer_path, fast_backoff):
    with FileServer(corpus) as srv:
        take_fault = srv.take_fault

        def reset_then_change(path, kind):
            hit = take_fault(path, kind)
            if hit and kind == "cut":  # the half body already read the old bytes
                (corpus / "big.jsonl").write_text(json.dumps({"text": "a new version"}) + "\n")
            return hit

        srv.take_fault = reset_then_change
        srv.faults = {"cut": 1}
        url = f"{srv.url}/big.jsonl"
        with pytest.raises(JobError, match=rf"{url}: changed while being read \(ETag .+ became .+\)"):
            preprocess([url], tokenizer_path, tmp_path / "remote", workers=1)
    assert not list(tmp_path.glob("remote*"))  # nothing half-written at the final names


@pytest.fixture
def bucket(s3_endpoint, corpus):
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="resume")
    client.upload_file(str(corpus / "big.jsonl"), "resume", "big.jsonl")
    return client


def _break(reader) -> None:
    """Drop the connection under a reader, as a network failure would."""
    reader._stream._raw_stream.close()


def test_s3_input_resumes_at_the_byte_reached(bucket, corpus, fast_backoff):
    data = (corpus / "big.jsonl").read_bytes()
    reader = open_s3(bucket, "resume", "big.jsonl")
    head = reader.read(100_000)
    _break(reader)
    rest = b"".join(iter(lambda: reader.read(1 << 16), b""))
    assert head + rest == data and reader.resumes == 1


def test_s3_input_that_changes_while_read_fails_by_name(bucket, fast_backoff):
    reader = open_s3(bucket, "resume", "big.jsonl")
    reader.read(100_000)
    bucket.put_object(Bucket="resume", Key="big.jsonl", Body=b'{"text": "a new version"}\n')
    _break(reader)
    with pytest.raises(
        JobError, match=r"s3://resume/big.jsonl: changed while being read \(no longer ETag .+\)"
    ):
        reader.read(1 << 16)
