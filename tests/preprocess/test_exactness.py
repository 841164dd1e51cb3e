"""The dataset holds exactly what the tokenizer file produces for each document."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jobs.cli import JobError
from jobs.indexed_dataset import IndexedDataset
from jobs.preprocess import preprocess

from .helpers import TRICKY_TEXTS, expected_ids, long_text, read_docs, write_jsonl


def _engine(name: str) -> str:
    if name == "tiktoken":
        pytest.importorskip("tiktoken", reason="tiktoken is not installed: the fast engine is optional")
    return name


@pytest.mark.parametrize("engine", ["tokenizers", "tiktoken"])
def test_tricky_documents_are_token_exact(tmp_path, tokenizer_path, tokenizer, engine):
    texts = TRICKY_TEXTS + ["", long_text()] + TRICKY_TEXTS[::-1]
    src = write_jsonl(tmp_path / "c.jsonl", texts)
    stats = preprocess(
        [str(src)], tokenizer_path, tmp_path / "out", append_eod=True, workers=2, engine=_engine(engine)
    )
    assert stats.engine == engine
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


@pytest.mark.parametrize("engine", ["tokenizers", "tiktoken"])
def test_without_eod_and_custom_key(tmp_path, tokenizer_path, tokenizer, engine):
    texts = ["first document", "", "second  one", "third\n"]
    src = write_jsonl(tmp_path / "k.jsonl", texts, key="content")
    preprocess(
        [str(src)], tokenizer_path, tmp_path / "o", jsonl_key="content", workers=1, engine=_engine(engine)
    )
    assert read_docs(tmp_path / "o_content_document") == expected_ids(tokenizer, texts)


@pytest.mark.parametrize("workers", [1, 2])
def test_fast_engine_matches_on_generated_unicode(tokenizer_path, tokenizer, workers):
    """Many random mixes of scripts, digits, punctuation, whitespace runs and special-token text."""
    pytest.importorskip("tiktoken", reason="tiktoken is not installed: the fast engine is optional")
    from jobs.preprocess.fast_bpe import load_fast_bpe

    fast, why = load_fast_bpe(tokenizer_path, tokenizer, workers)
    assert fast is not None, why
    rng = np.random.default_rng(workers)
    alphabet = (
        list("abcXYZ019'., ;:!?-_\t\n\r")
        + [" " * k for k in (2, 3, 7, 24, 25, 30)]
        + list("éüßñ日本語中文한국어العربيةहिन्दीπλ∑√½²١٢😀🎉👍🏽\u200d\u0301\u0338\u00a0\u3000\u2028\ufeff")
        + ["<|endoftext|>", "<|padding|>", "'s", "'ll", "e\u0301", "<|endoftext|"]
    )
    texts = ["".join(rng.choice(alphabet, size=int(rng.integers(1, 400)))) for _ in range(400)]
    got = fast.encode_batch(texts)
    for text, ids in zip(texts, got, strict=True):
        assert ids.tolist() == tokenizer.encode(text).ids, repr(text)


def test_fast_engine_refused_for_other_tokenizer_shapes(tmp_path, tokenizer_path, tokenizer):
    pytest.importorskip("tiktoken", reason="tiktoken is not installed: the fast engine is optional")
    from jobs.preprocess.fast_bpe import unsupported_reason

    spec = json.loads(tokenizer_path.read_text())
    assert unsupported_reason(spec) is None
    spec["normalizer"] = {"type": "NFKC"}
    assert unsupported_reason(spec) == "normalizer NFKC"
    other = tmp_path / "nfkc.json"
    other.write_text(json.dumps(spec))
    src = write_jsonl(tmp_path / "a.jsonl", ["x"])
    with pytest.raises(
        JobError, match="tiktoken engine cannot be used: unsupported tokenizer: normalizer NFKC"
    ):
        preprocess([str(src)], other, tmp_path / "o", engine="tiktoken")
    stats = preprocess([str(src)], other, tmp_path / "o", engine="auto")
    assert stats.engine == "tokenizers"
