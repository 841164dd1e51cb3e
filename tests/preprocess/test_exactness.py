"""The dataset holds exactly what the tokenizer file produces for each document."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jobs.cli import JobError
from jobs.indexed_dataset import IndexedDataset
from jobs.preprocess import preprocess
from tests.support.corpus import TRICKY_TEXTS, expected_ids, long_text, read_docs, write_jsonl


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


def _whitespace_fuzz(seed: int, n: int) -> list[str]:
    """Random text dense in runs of spaces (1-60), tabs, newlines and other whitespace, between words,
    digits, punctuation, contractions and the special tokens' text."""
    rng = np.random.default_rng(seed)
    alphabet = (
        [" " * k for k in range(1, 61)] * 2
        + list("\t\n\r\x0b\x0c\u00a0\u3000\u2028\u2009\u0085")
        + ["\r\n", "\n\n", "\t\t"]
        + list("abcXYZ019'., ;:!?-_()[]{}#=")
        + ["'s", "'ll", "'t", "e\u0301", "\u0338", "<|endoftext|>", "日本", "😀", "١٢", "def", "return"]
    )
    return ["".join(rng.choice(alphabet, size=int(rng.integers(1, 80)))) for _ in range(n)]


def _source_code(limit_chars: int = 400_000) -> list[str]:
    """Real Python source from this interpreter's stdlib, as stored, and the same re-indented deeper
    (runs of 25-60 spaces, trailing blanks), the shape of a code corpus."""
    import sysconfig
    from pathlib import Path

    texts, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")[:40_000]
        texts.append(text)
        texts.append(
            "\n".join(" " * (25 + i % 36) + line + "  " * (i % 3) for i, line in enumerate(text.splitlines()))
        )
        size += 2 * len(text)
        if size > limit_chars:
            break
    return texts


@pytest.mark.parametrize("workers", [1, 2])
def test_fast_engine_folds_space_runs_into_its_regex_and_stays_exact(tokenizer_path, tokenizer, workers):
    """The 20B tokenizer's added tokens for 2-24 spaces are split inside tiktoken's regex (one call a
    document); on whitespace-dense fuzz and on source code its ids equal tokenizers' ids."""
    pytest.importorskip("tiktoken", reason="tiktoken is not installed: the fast engine is optional")
    from jobs.preprocess.fast_bpe import load_fast_bpe

    fast, why = load_fast_bpe(tokenizer_path, tokenizer, workers)
    assert fast is not None, why
    assert fast._runs == 24 and not fast._norm_added  # the folded path, not the piece-by-piece split
    texts = _whitespace_fuzz(workers, 3000) + _source_code()
    got = fast.encode_batch(texts)
    want = [e.ids for e in tokenizer.encode_batch_fast(texts)]
    for text, g, w in zip(texts, got, want, strict=True):
        assert g.tolist() == w, repr(text[:200])
    flat = np.concatenate(got)
    assert ((flat >= 50254) & (flat <= 50276)).any()  # the added space tokens really occur


def test_fast_engine_splits_other_added_tokens_piece_by_piece(tmp_path, tokenizer_path):
    """Normalized added tokens that are not exactly the runs of 2..K spaces (here a run of four tabs is
    added after them) take the piece-by-piece split path, and stay exact."""
    pytest.importorskip("tiktoken", reason="tiktoken is not installed: the fast engine is optional")
    from tokenizers import Tokenizer

    from jobs.preprocess.fast_bpe import load_fast_bpe

    spec = json.loads(tokenizer_path.read_text())
    spec["added_tokens"].append({**spec["added_tokens"][-1], "id": 50277, "content": "\t" * 4})
    other = tmp_path / "other.json"
    other.write_text(json.dumps(spec))
    tok = Tokenizer.from_file(str(other))
    fast, why = load_fast_bpe(other, tok, 2)
    assert fast is not None, why
    assert fast._runs == 0 and "\t" * 4 in fast._norm_added and " " * 24 in fast._norm_added
    texts = _whitespace_fuzz(7, 1500) + _source_code(100_000)
    for text, g in zip(texts, fast.encode_batch(texts), strict=True):
        assert g.tolist() == tok.encode(text).ids, repr(text[:200])
