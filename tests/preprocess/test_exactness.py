"""The dataset holds exactly what the tokenizer file produces for each document."""

from __future__ import annotations

import json

import numpy as np

from jobs.indexed_dataset import IndexedDataset
from jobs.preprocess import preprocess

from .helpers import TRICKY_TEXTS, expected_ids, long_text, read_docs, write_jsonl


def test_tricky_documents_are_token_exact(tmp_path, tokenizer_path, tokenizer):
    texts = TRICKY_TEXTS + ["", long_text()] + TRICKY_TEXTS[::-1]
    src = write_jsonl(tmp_path / "c.jsonl", texts)
    stats = preprocess([str(src)], tokenizer_path, tmp_path / "out", append_eod=True, workers=2)
    want = expected_ids(tokenizer, texts, eod=True)
    got = read_docs(tmp_path / "out_text_document")
    assert len(got) == len(want) == len(texts) - 1
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"document {i} differs"
    assert got[0][-1] == 0  # <|endoftext|> is id 0 in the 20B tokenizer
    # The added whitespace tokens (50254..50276) and the literal special token really occur.
    flat = np.concatenate([np.array(g) for g in got])
    assert ((flat >= 50254) & (flat <= 50276)).any()
    assert stats.documents == len(want) and stats.dropped_empty == 1
    assert stats.tokens == sum(len(w) for w in want)
    ds = IndexedDataset(tmp_path / "out_text_document")
    assert ds.dtype == np.uint16
    saved = json.loads((tmp_path / "out_text_document.stats.json").read_text())
    assert saved["documents"] == stats.documents and saved["tokens"] == stats.tokens
    assert saved["dropped_empty"] == 1 and saved["bytes_read"] == src.stat().st_size


def test_without_eod_and_custom_key(tmp_path, tokenizer_path, tokenizer):
    texts = ["first document", "", "second  one", "third\n"]
    src = write_jsonl(tmp_path / "k.jsonl", texts, key="content")
    preprocess([str(src)], tokenizer_path, tmp_path / "o", jsonl_key="content", workers=1)
    assert read_docs(tmp_path / "o_content_document") == expected_ids(tokenizer, texts)
