"""Every input format and location, in the order given."""

from __future__ import annotations

import gzip
import json

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from jobs.preprocess import preprocess
from tests.support.corpus import TRICKY_TEXTS, expected_ids, read_docs

A = ["alpha one", "alpha two 🎉"]
B = ["beta  one", "", "beta two"]
C = ["gamma ünïcödé"]
D = ["delta from parquet", None, "", "delta\u3000two"]
E = ["epsilon text file\n"]


def _jsonl_bytes(texts) -> bytes:
    return "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()


def _make_corpus(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "1_a.jsonl").write_bytes(_jsonl_bytes(A))
    (folder / "2_b.jsonl.gz").write_bytes(gzip.compress(_jsonl_bytes(B)))
    # Two zstd frames: concatenated streams must be read across frames.
    z = zstandard.ZstdCompressor()
    (folder / "3_c.jsonl.zst").write_bytes(z.compress(_jsonl_bytes(C[:1])) + z.compress(_jsonl_bytes([])))
    pq.write_table(pa.table({"text": D, "id": list(range(len(D)))}), folder / "4_d.parquet", row_group_size=2)
    (folder / "5_e.txt").write_text(E[0], encoding="utf-8")
    return folder


def _texts(*groups):
    return [t for g in groups for t in g if t]


def test_directory_of_every_format_in_name_order(tmp_path, tokenizer_path, tokenizer):
    folder = _make_corpus(tmp_path / "corpus")
    (folder / ".hidden.jsonl").write_text("not json\n")  # hidden files are not inputs
    stats = preprocess([str(folder)], tokenizer_path, tmp_path / "out", workers=1)
    assert read_docs(tmp_path / "out_text_document") == expected_ids(tokenizer, _texts(A, B, C, D, E))
    assert stats.inputs == 5
    assert stats.dropped_empty == 3  # "" in B, None and "" in D


def test_explicit_order_and_globs(tmp_path, tokenizer_path, tokenizer):
    folder = _make_corpus(tmp_path / "corpus")
    inputs = [str(folder / "5_e.txt"), str(folder / "*.jsonl*"), str(folder / "4_d.parquet")]
    preprocess(inputs, tokenizer_path, tmp_path / "out", workers=2)
    assert read_docs(tmp_path / "out_text_document") == expected_ids(tokenizer, _texts(E, A, B, C, D))


def test_txt_documents_are_whole_files(tmp_path, tokenizer_path, tokenizer):
    folder = tmp_path / "txt"
    folder.mkdir()
    for i, t in enumerate(TRICKY_TEXTS):
        (folder / f"{i:03d}.txt").write_bytes(t.encode("utf-8"))
    (folder / "999.txt").write_bytes(b"")
    stats = preprocess([str(folder)], tokenizer_path, tmp_path / "out", append_eod=True)
    assert read_docs(tmp_path / "out_text_document") == expected_ids(tokenizer, TRICKY_TEXTS, eod=True)
    assert stats.dropped_empty == 1


def test_s3_prefix_object_and_glob(tmp_path, tokenizer_path, tokenizer, s3_endpoint):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="corpus")
    folder = _make_corpus(tmp_path / "corpus")
    for p in sorted(folder.iterdir()):
        s3.upload_file(str(p), "corpus", f"data/{p.name}")
    s3.put_object(Bucket="corpus", Key="other/x.jsonl", Body=_jsonl_bytes(["other"]))
    stats = preprocess(
        ["s3://corpus/data/", "s3://corpus/other/x.jsonl"],
        tokenizer_path,
        tmp_path / "s",
        endpoint_url=s3_endpoint,
    )
    assert read_docs(tmp_path / "s_text_document") == expected_ids(
        tokenizer, _texts(A, B, C, D, E, ["other"])
    )
    assert stats.bytes_read == sum(p.stat().st_size for p in folder.iterdir()) + len(_jsonl_bytes(["other"]))
    # Glob over keys; a prefix without the trailing slash is a folder too.
    preprocess(
        ["s3://corpus/data/*.parquet", "s3://corpus/other"],
        tokenizer_path,
        tmp_path / "g",
        endpoint_url=s3_endpoint,
    )
    assert read_docs(tmp_path / "g_text_document") == expected_ids(tokenizer, _texts(D, ["other"]))


def test_https_inputs_streamed(tmp_path, tokenizer_path, tokenizer, http_root):
    root, base = http_root
    _make_corpus(root)
    urls = [f"{base}/2_b.jsonl.gz", f"{base}/3_c.jsonl.zst", f"{base}/4_d.parquet", f"{base}/1_a.jsonl"]
    preprocess(urls, tokenizer_path, tmp_path / "h", workers=2)
    assert read_docs(tmp_path / "h_text_document") == expected_ids(tokenizer, _texts(B, C, D, A))
