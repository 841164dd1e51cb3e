"""Nothing lost, nothing half-accepted: an input cut short or holding no documents is an error naming
it, malformed inputs and unwritable outputs are one line, and the output folder keeps what is not ours."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zstandard

from tests.support.corpus import read_docs, run_cli
from tests.support.readonly import unprivileged_cmd, world_readable_tmp

LINES = [json.dumps({"text": f"document {i} " + "words " * (i % 50)}) + "\n" for i in range(20000)]
DATA = "".join(LINES).encode()
REPO = Path(__file__).resolve().parents[2]


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("preprocess: error: "), err
    return lines[0]


def _zst_blocks() -> list[bytes]:
    """A one-frame .zst written block by block, as a streaming compressor writes it."""
    z = zstandard.ZstdCompressor().compressobj()
    parts = []
    for i in range(0, len(DATA), 64 << 10):
        parts += [z.compress(DATA[i : i + (64 << 10)]), z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)]
    return [p for p in [*parts, z.flush()] if p]


def test_a_compressed_input_that_ends_early_fails_naming_the_file(capsys, tmp_path, tokenizer_path):
    blocks = _zst_blocks()
    cut_zst = tmp_path / "cut.jsonl.zst"
    cut_zst.write_bytes(b"".join(blocks[: len(blocks) // 2]))  # ends at a block boundary, mid-frame
    cut_gz = tmp_path / "cut.jsonl.gz"
    packed = gzip.compress(DATA)
    cut_gz.write_bytes(packed[: len(packed) // 2])
    for cut in (cut_zst, cut_gz):
        rc, _, err = run_cli(capsys, tmp_path / "out" / "ds", [cut], tokenizer_path)
        line = _one_line(err)
        assert rc == 1 and f"{cut}: cannot read: the file is truncated" in line, line
        assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True
    whole = tmp_path / "whole.jsonl.zst"
    whole.write_bytes(b"".join(blocks))
    rc, _, err = run_cli(capsys, tmp_path / "ok", [whole], tokenizer_path)
    assert rc == 0, err
    assert len(read_docs(tmp_path / "ok_text_document")) == len(LINES)


def test_an_input_without_documents_is_an_error_unless_allowed(capsys, tmp_path, tokenizer_path):
    good = tmp_path / "good.jsonl"
    good.write_bytes(DATA[:1000].rsplit(b"\n", 1)[0] + b"\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    empty_zst = tmp_path / "empty.jsonl.zst"
    empty_zst.write_bytes(zstandard.ZstdCompressor().compress(b"\n\n"))
    for inputs, named in (([empty], empty), ([good, empty_zst], empty_zst)):
        rc, _, err = run_cli(capsys, tmp_path / "out" / "ds", inputs, tokenizer_path)
        line = _one_line(err)
        assert rc == 1 and f"{named}: no documents" in line and "--allow-empty" in line, line
        assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*"))
    rc, out, err = run_cli(capsys, tmp_path / "out" / "ds", [empty], tokenizer_path, "--allow-empty")
    assert rc == 0 and "0 documents" in out, err
    assert read_docs(tmp_path / "out" / "ds_text_document") == []


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "s3:/bucket/x.jsonl",
        "https:/host/x.jsonl",
        "s3://",
        "http://",
        "https:///x.jsonl",
        "http://[::1/x.jsonl",
        "http://h:99999/x.jsonl",
        "http://exa mple.com/x.jsonl",
    ],
)
def test_a_malformed_input_is_one_line(spec, capsys, tmp_path, tokenizer_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_cli(capsys, tmp_path / "out" / "ds", [spec], tokenizer_path)
    line = _one_line(err)
    assert rc == 1 and ("malformed URL" in line if spec else "empty path" in line), line


def test_a_read_only_output_folder_is_one_line(tokenizer_path):
    """The writer is a subprocess without the right to ignore file modes (tests.support.readonly), not this
    pytest process switched to another uid."""
    with world_readable_tmp() as tmp:
        src = tmp / "a.jsonl"
        src.write_bytes(DATA[:1000].rsplit(b"\n", 1)[0] + b"\n")
        out = tmp / "out"
        out.mkdir()
        out.chmod(0o555)
        cmd = [
            sys.executable,
            "-m",
            "jobs.preprocess",
            "--input",
            str(src),
            "--tokenizer",
            str(tokenizer_path),
        ]
        proc = subprocess.run(
            unprivileged_cmd([*cmd, "--output-prefix", str(out / "ds")]),
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert list(out.iterdir()) == []
    line = _one_line(proc.stderr)
    assert proc.returncode == 1 and str(out) in line and "Permission denied" in line, line


def test_the_output_folder_keeps_unrelated_files(capsys, tmp_path, tokenizer_path):
    out = tmp_path / "out"
    out.mkdir()
    keep = {"notes.txt": b"mine", "ds_text_document.bin.tmp.keep": b"looks like a temp file, is not"}
    for name, data in keep.items():
        (out / name).write_bytes(data)
        old = time.time() - 3600  # older than the stale-temp age
        os.utime(out / name, (old, old))
    src = tmp_path / "a.jsonl"
    src.write_bytes(DATA[:1000].rsplit(b"\n", 1)[0] + b"\n")
    rc, _, err = run_cli(capsys, out / "ds", [src], tokenizer_path)
    assert rc == 0, err
    for name, data in keep.items():
        assert (out / name).read_bytes() == data, name
