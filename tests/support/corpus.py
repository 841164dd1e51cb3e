"""Small helpers shared by the preprocessor tests."""

from __future__ import annotations

import json
from pathlib import Path

from jobs.indexed_dataset import IndexedDataset

TRICKY_TEXTS = [
    "Hello world",
    "   ",
    "a  b   c    d     e" + " " * 30 + "f" + " " * 24 + "g" + " " * 25 + "h",
    "tabs\tand\t\tnewlines\n\n\nand\r\nwindows\r\n",
    "naïve café, Ångström, straße, ﬁ ligature",
    "decomposed e\u0301 and a\u0308 compose under NFC: cafe\u0301",
    "日本語のテキストと中文文本，한국어 텍스트",
    "العربية مع أرقام ١٢٣ and हिन्दी पाठ",
    "emoji 🎉🚀 family 👨\u200d👩\u200d👧\u200d👦 flag 🇺🇸 tone 👍🏽 keycap 1\ufe0f\u20e3",
    "nbsp\u00a0ideographic\u3000space\u2028line separator",
    "special tokens in text: <|endoftext|> and <|padding|> stay what the tokenizer makes of them",
    "contractions don't I'll we've they're it's 1234567890 3.14159 0xDEADBEEF",
    "control \x00\x01\x7f chars and a lone combining mark \u0301 at start",
    "    leading spaces and trailing spaces    ",
    "\n",
    "x",
]


def long_text(n_chars: int = 200_000) -> str:
    base = "The quick brown fox 🦊 jumps over the lazy dog; ünïcödé   spaces\tand\nlines. "
    return (base * (n_chars // len(base) + 1))[:n_chars]


def write_jsonl(path: Path, texts: list[str], key: str = "text") -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({key: t, "meta": {"n": len(t)}}) + "\n")
    return path


def read_docs(prefix: str | Path) -> list[list[int]]:
    ds = IndexedDataset(prefix)
    return [ds[i].tolist() for i in range(len(ds))]


def expected_ids(tokenizer, texts: list[str], eod: bool = False) -> list[list[int]]:
    out = []
    for t in texts:
        ids = tokenizer.encode(t).ids
        if ids:
            out.append(ids + ([0] if eod else []))
    return out


def run_cli(capsys, prefix, inputs, tokenizer_path, *extra) -> tuple[int, str, str]:
    """`python -m jobs.preprocess` in-process on `inputs` into `prefix`; its exit code, stdout and stderr."""
    from jobs.preprocess.__main__ import main

    rc = main(
        [
            "--input",
            *map(str, inputs),
            "--tokenizer",
            str(tokenizer_path),
            "--output-prefix",
            str(prefix),
            *extra,
        ]
    )
    out, err = capsys.readouterr()
    return rc, out, err
