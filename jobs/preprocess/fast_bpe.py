"""An optional faster encoder: tiktoken's byte-pair merger, fed the same vocabulary and merges as the
tokenizer file, with the parts of the `tokenizers` pipeline that tiktoken lacks done here in the same
order: added tokens that match the raw text are split off first, the NFC normalizer runs on what is
left, normalized added tokens (the 20B tokenizer's runs of 2-24 spaces) are split off next, and only
the remaining pieces go through the byte-level regex and BPE.

Runs of spaces are the common case (source code indents every line), so when the normalized added
tokens are exactly the runs of 2..K spaces their split is folded into tiktoken's own regex (one call a
document, see `_space_run_pattern`); other added tokens are split here, piece by piece.

Used only when the tokenizer file has exactly the shape this reproduces and a start-up probe over
tricky text gives the same ids as `tokenizers`; anything else falls back to `tokenizers`.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# GPT-2's pre-tokenizer regex. The alternatives without look-ahead are one group: fancy-regex hands the
# group to the regex crate as one call, instead of trying each alternative in its backtracking VM (about
# 1.4x faster here, same matches: leftmost-first alternation is associative).
_WORDS = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"
GPT2_PATTERN = rf"(?:{_WORDS})|\s+(?!\S)|\s+"

PROBE = [
    "Hello world, it's 2026: naïve café 日本語 العربية हिन्दी 한국어 😀👨\u200d👩\u200d👧 🇺🇸",
    "a  b   c" + " " * 24 + "d" + " " * 25 + "e" + " " * 49 + "\t\n\n  x \r\n",
    "decomposed e\u0301 a\u0308 \u212b \uff21 \u00a0\u3000\u2028\u2009 <|endoftext|>\u0338 <|padding|>",
    "don't I'll we've THEY'RE 1234567890 ١٢٣ ½ ² 3.14 $x_{i}$ def f(x):\n    return x**2\n",
    "\x00\x01\x7f\ufeff\u200b\u0301 combining first; ꙮ 𝔘𝔫𝔦 𐍈 ⅷ Ⅻ ǅ ᾼ ß ẞ ﬃ",
    "def f():\n    if x:\n        return  1 \n \n  \t  y\n" + " " * 23 + "\n" + " " * 26 + "z  \n\n   ",
    " \u00a0 \t\t  \r\n   \n\n\n    'll  's 12  34 !!  ?? " + " " * 48 + "'t" + " " * 25 + "9",
]


def _bytes_to_unicode() -> dict[str, int]:
    """GPT-2's byte-level alphabet: each byte has a printable stand-in character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _space_run_pattern(longest: int) -> str:
    r"""GPT-2's regex with `tokenizers`' split on the space-run added tokens folded in.

    tokenizers cuts every run of 2+ spaces into added tokens (leftmost-longest: `longest` spaces at a time,
    a last single space left to the text after it) and runs the regex on each piece between them. Here a run
    is its own regex match (` {2,longest}`, first), and no other match may start a run: whitespace may only
    take a space that is not followed by another, so it stops where tokenizers' piece would end, and the
    `(?!\S)` look-ahead sees a space there as tokenizers sees the piece's end.
    """
    ws = r"(?:[^\S ]| (?! ))+"  # whitespace, a space only where no other follows
    return rf"(?: {{2,{longest}}}|{_WORDS})|{ws}(?!\S)|{ws}"


def _space_runs(tokens: dict[str, int]) -> int:
    """K when `tokens` is exactly the runs of 2..K spaces, else 0."""
    k = max((len(t) for t in tokens), default=0)
    return k if k >= 2 and set(tokens) == {" " * n for n in range(2, k + 1)} else 0


def _literal_splitter(tokens: dict[str, int]) -> re.Pattern | None:
    # Longest first: Python's alternation is leftmost-first, tokenizers' added vocabulary leftmost-longest.
    if not tokens:
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))


class FastBPE:
    """Encodes like `tokenizers.Tokenizer.encode(text).ids` for the supported tokenizer shape."""

    def __init__(self, spec: dict, workers: int) -> None:
        import tiktoken

        to_byte = _bytes_to_unicode()
        model = spec["model"]
        vocab: dict[str, int] = model["vocab"]
        raw_added = {a["content"]: a["id"] for a in spec["added_tokens"] if not a["normalized"]}
        norm_added = {a["content"]: a["id"] for a in spec["added_tokens"] if a["normalized"]}
        ranks: dict[bytes, int] = {}
        ids: list[int] = []
        # tiktoken merges by the rank of the merged token: single bytes first, then merge order.
        for token, tid in sorted(vocab.items(), key=lambda kv: kv[1]):
            if token in raw_added or token in norm_added:
                continue
            b = bytes(to_byte[c] for c in token)
            if len(b) == 1:
                ranks[b] = len(ids)
                ids.append(tid)
        for merge in model["merges"]:
            a, b = merge.split(" ") if isinstance(merge, str) else merge
            ranks[bytes(to_byte[c] for c in a + b)] = len(ids)
            ids.append(vocab[a + b])
        self._runs = _space_runs(norm_added)
        if self._runs:
            # A run of spaces is one regex match, and a match that is a whole vocabulary entry becomes that
            # entry's rank without merging: make those ranks stand for the added tokens' ids. The vocabulary's
            # own multi-space tokens cannot be reached otherwise (no other match holds two spaces in a row).
            for run, tid in norm_added.items():
                key = run.encode()
                if key in ranks:
                    ids[ranks[key]] = tid
                else:
                    ranks[key] = len(ids)
                    ids.append(tid)
            norm_added = {}
        self._ids = np.asarray(ids, dtype=np.int64)
        pattern = _space_run_pattern(self._runs) if self._runs else GPT2_PATTERN
        self._enc = tiktoken.Encoding("fast-bpe", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
        self._raw_added, self._norm_added = raw_added, norm_added
        self._raw_re, self._norm_re = _literal_splitter(raw_added), _literal_splitter(norm_added)
        self._nfc = spec["normalizer"] is not None
        self._pool = ThreadPoolExecutor(workers) if workers > 1 else None
        self.workers = workers

    def _bpe(self, text: str, out: list[np.ndarray]) -> None:
        if text:
            try:  # the buffer is ranks as uint32, made with the GIL released
                ranks = self._enc.encode_to_numpy(text, disallowed_special=())
            except UnicodeEncodeError:
                # tokenizers refuses text that is not valid Unicode; tiktoken would quietly replace it.
                raise ValueError("text holds a lone surrogate (not valid Unicode)") from None
            out.append(self._ids[ranks])

    def _normalized(self, text: str, out: list[np.ndarray]) -> None:
        if self._nfc and not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        if self._norm_re is None:
            self._bpe(text, out)
            return
        last = 0
        for m in self._norm_re.finditer(text):
            self._bpe(text[last : m.start()], out)
            out.append(np.array([self._norm_added[m.group()]], dtype=np.int64))
            last = m.end()
        self._bpe(text[last:], out)

    def encode(self, text: str) -> np.ndarray:
        out: list[np.ndarray] = []
        last = 0
        # `in` is a fast scan; the regex runs only on the rare document holding an added token's text.
        if self._raw_re is not None and any(t in text for t in self._raw_added):
            for m in self._raw_re.finditer(text):
                self._normalized(text[last : m.start()], out)
                out.append(np.array([self._raw_added[m.group()]], dtype=np.int64))
                last = m.end()
        self._normalized(text[last:], out)
        if not out:
            return np.zeros(0, dtype=np.int64)
        return out[0] if len(out) == 1 else np.concatenate(out)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        if self._pool is None or len(texts) < 2:
            return [self.encode(t) for t in texts]
        return list(self._pool.map(self.encode, texts, chunksize=max(1, len(texts) // (4 * self.workers))))


def unsupported_reason(spec: dict) -> str | None:
    """Why this tokenizer file is outside what FastBPE reproduces, or None if it is inside."""
    norm, pre, model, post = (
        spec.get("normalizer"),
        spec.get("pre_tokenizer"),
        spec.get("model", {}),
        spec.get("post_processor"),
    )
    if norm is not None and norm != {"type": "NFC"}:
        return f"normalizer {norm.get('type')}"
    if (
        not pre
        or pre.get("type") != "ByteLevel"
        or pre.get("add_prefix_space")
        or not pre.get("use_regex", True)
    ):
        return "pre-tokenizer is not plain ByteLevel"
    if model.get("type") != "BPE":
        return "model is not BPE"
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix", "unk_token"):
        if model.get(key):
            return f"BPE option {key}"
    if model.get("byte_fallback") or model.get("ignore_merges"):
        return "BPE byte_fallback/ignore_merges"
    if post is not None and post.get("type") != "ByteLevel":
        return f"post-processor {post.get('type')}"
    for a in spec.get("added_tokens", []):
        if a["lstrip"] or a["rstrip"] or a["single_word"]:
            return f"added token {a['content']!r} with lstrip/rstrip/single_word"
    return None


def load_fast_bpe(path: str | os.PathLike, tokenizer, workers: int) -> tuple[FastBPE | None, str]:
    """FastBPE for this tokenizer file if it is supported and agrees with `tokenizer` on the probe."""
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        return None, "tiktoken is not installed"
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    reason = unsupported_reason(spec)
    if reason:
        return None, f"unsupported tokenizer: {reason}"
    try:
        fast = FastBPE(spec, workers)
    except (KeyError, ValueError) as exc:
        return None, f"cannot build: {exc}"
    for text in PROBE:
        if fast.encode(text).tolist() != tokenizer.encode(text).ids:
            return None, "probe text disagrees with tokenizers"
    return fast, "tiktoken"
