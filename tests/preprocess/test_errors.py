"""Bad input: one clear line naming the thing at fault, a non-zero exit, and no files left behind."""

from __future__ import annotations

import gzip
import json

import pytest

from tests.support.corpus import run_cli


def _run(capsys, tmp_path, tokenizer_path, inputs, *extra):
    return run_cli(capsys, tmp_path / "out" / "ds", inputs, tokenizer_path, *extra)


def _assert_failed_cleanly(rc, err, tmp_path, *needles):
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    left = sorted(p.name for p in (tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else []
    assert left == [], f"files left behind: {left}"


def _lines(path, lines: list[str]):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD = json.dumps({"text": "fine"})


def test_malformed_json_names_file_and_line(capsys, tmp_path, tokenizer_path):
    src = _lines(tmp_path / "bad.jsonl", [GOOD] * 5000 + [GOOD, "", '{"text": "unterminated', GOOD])
    rc, _, err = _run(capsys, tmp_path, tokenizer_path, [src])
    _assert_failed_cleanly(rc, err, tmp_path, f"{src}:5003:", "invalid JSON", "Unterminated string")


def test_skip_bad_lines_counts_and_reports(capsys, tmp_path, tokenizer_path):
    src = _lines(tmp_path / "bad.jsonl", [GOOD, "{oops", "[1, 2]", GOOD])
    rc, out, err = _run(capsys, tmp_path, tokenizer_path, [src], "--skip-bad-lines")
    assert rc == 0, err
    assert "2 bad lines skipped" in out and "2 documents" in out
    stats = json.loads((tmp_path / "out" / "ds_text_document.stats.json").read_text())
    assert stats["bad_lines"] == 2 and stats["documents"] == 2
    assert stats["bad_line_samples"][0].startswith(f"{src}:2: ")
    assert stats["bad_line_samples"][1] == f"{src}:3: not a JSON object"


@pytest.mark.parametrize(
    "lines, needles",
    [
        ([GOOD, json.dumps({"body": "x"})], [":2: no key 'text'", "keys: body"]),
        ([json.dumps({"text": 5})], [":1: key 'text' holds int, not a string"]),
        ([GOOD, "[1]"], [":2: expected a JSON object, got list"]),
    ],
)
def test_wrong_records(capsys, tmp_path, tokenizer_path, lines, needles):
    src = _lines(tmp_path / "r.jsonl", lines)
    rc, _, err = _run(capsys, tmp_path, tokenizer_path, [src])
    _assert_failed_cleanly(rc, err, tmp_path, str(src), *needles)


def test_missing_key_is_an_error_even_when_skipping_bad_lines(capsys, tmp_path, tokenizer_path):
    src = _lines(tmp_path / "r.jsonl", [json.dumps({"body": "x"})])
    rc, _, err = _run(capsys, tmp_path, tokenizer_path, [src], "--skip-bad-lines")
    _assert_failed_cleanly(rc, err, tmp_path, f"{src}:1: no key 'text'")


def test_undecodable_bytes(capsys, tmp_path, tokenizer_path):
    src = tmp_path / "u.jsonl"
    src.write_bytes(GOOD.encode() + b'\n{"text": "caf\xe9"}\n')
    rc, _, err = _run(capsys, tmp_path, tokenizer_path, [src])
    _assert_failed_cleanly(rc, err, tmp_path, f"{src}:2: not valid UTF-8 (byte 0xe9")
    txt = tmp_path / "u.txt"
    txt.write_bytes(b"ok \xff\xfe")
    rc, _, err = _run(capsys, tmp_path, tokenizer_path, [txt])
    _assert_failed_cleanly(rc, err, tmp_path, f"{txt}: not valid UTF-8 (byte 0xff at offset 3)")


def test_lone_surrogate_names_the_line(capsys, tmp_path, tokenizer_path):
    src = _lines(tmp_path / "s.jsonl", [GOOD, '{"text": "half a pair \\ud800 here"}'])
    rc, _, err = _run(capsys, tmp_path, tokenizer_path, [src])
    _assert_failed_cleanly(rc, err, tmp_path, f"{src}:2: cannot tokenize")


def test_unknown_type_and_missing_inputs(capsys, tmp_path, tokenizer_path):
    csv = tmp_path / "data.csv"
    csv.write_text("text\nhello\n")
    rc, _, err = _run(capsys, tmp_path, tokenizer_path, [csv])
    _assert_failed_cleanly(rc, err, tmp_path, f"{csv}: unknown file type", ".jsonl.zst")
    folder = tmp_path / "mixed"
    folder.mkdir()
    _lines(folder / "a.jsonl", [GOOD])
    (folder / "notes.md").write_text("# notes")
    rc, _, err = _run(capsys, tmp_path, tokenizer_path, [folder])
    _assert_failed_cleanly(rc, err, tmp_path, "notes.md: unknown file type")
    rc, _, err = _run(capsys, tmp_path, tokenizer_path, [tmp_path / "nope.jsonl"])
    _assert_failed_cleanly(rc, err, tmp_path, "nope.jsonl: no such file or directory")
    rc, _, err = _run(capsys, tmp_path, tokenizer_path, [tmp_path / "*.parquet"])
    _assert_failed_cleanly(rc, err, tmp_path, "*.parquet: no files match")


def test_corrupt_compressed_and_parquet(capsys, tmp_path, tokenizer_path):
    gz = tmp_path / "c.jsonl.gz"
    gz.write_bytes(gzip.compress(("\n".join([GOOD] * 100) + "\n").encode())[:-30])
    rc, _, err = _run(capsys, tmp_path, tokenizer_path, [gz])
    _assert_failed_cleanly(rc, err, tmp_path, f"{gz}: cannot read")
    zst = tmp_path / "c.jsonl.zst"
    zst.write_bytes(b"\x28\xb5\x2f\xfd garbage that is not a frame")
    rc, _, err = _run(capsys, tmp_path, tokenizer_path, [zst])
    _assert_failed_cleanly(rc, err, tmp_path, str(zst))
    pq = tmp_path / "c.parquet"
    pq.write_bytes(b"PAR1 not really")
    rc, _, err = _run(capsys, tmp_path, tokenizer_path, [pq])
    _assert_failed_cleanly(rc, err, tmp_path, f"{pq}: not a readable Parquet file")


def test_unreadable_tokenizer(capsys, tmp_path):
    src = _lines(tmp_path / "a.jsonl", [GOOD])
    bad = tmp_path / "tok.json"
    bad.write_text('{"model": 1}')
    rc, _, err = _run(capsys, tmp_path, bad, [src])
    _assert_failed_cleanly(rc, err, tmp_path, f"{bad}: cannot load tokenizer")
    rc, _, err = _run(capsys, tmp_path, tmp_path / "missing.json", [src])
    _assert_failed_cleanly(rc, err, tmp_path, "missing.json: cannot load tokenizer")


def test_remote_failures(capsys, tmp_path, tokenizer_path, s3_endpoint, http_root):
    rc, _, err = _run(
        capsys, tmp_path, tokenizer_path, ["s3://no-such-bucket/x/"], "--endpoint-url", s3_endpoint
    )
    _assert_failed_cleanly(rc, err, tmp_path, "s3://no-such-bucket/x/:", "NoSuchBucket")
    _, base = http_root
    rc, _, err = _run(capsys, tmp_path, tokenizer_path, [f"{base}/missing.jsonl"])
    _assert_failed_cleanly(rc, err, tmp_path, f"{base}/missing.jsonl: HTTP 404")
