"""A small sample corpus and a tokenizer trained on it, for `invoke local` and the tests.

    python -m jobs.sample --out DIR [--documents 2000] [--vocab-size 512] [--seed 0]

Writes `DIR/corpus.jsonl` (one `{"text": ...}` document per line) and `DIR/tokenizer.json`
(byte-level BPE with GPT-NeoX's special tokens: `<|endoftext|>` is id 0, `<|padding|>` id 1).
The text is generated from a small grammar of facts (colours, animals, places, sums), regular
enough that a tiny model's loss falls visibly within a few hundred steps, and the same for the
same seed, so re-runs are idempotent.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from pathlib import Path

from jobs.cli import JobError, run_main

PROG = "jobs.sample"
SPECIAL_TOKENS = ["<|endoftext|>", "<|padding|>"]

_COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]
_ANIMALS = ["fox", "dog", "cat", "horse", "owl", "whale", "bee", "otter", "crow", "lynx"]
_PLACES = ["river", "forest", "city", "garden", "harbour", "valley", "library", "market"]
_VERBS = ["runs to", "sleeps near", "sings in", "waits by", "walks through", "dreams of"]
_TIMES = ["at dawn", "at noon", "in the evening", "at night", "every morning", "in winter"]


def _sentence(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.4:
        return (
            f"The {rng.choice(_COLOURS)} {rng.choice(_ANIMALS)} {rng.choice(_VERBS)} "
            f"the {rng.choice(_PLACES)} {rng.choice(_TIMES)}."
        )
    if kind < 0.7:
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        return f"{a} plus {b} equals {a + b}."
    if kind < 0.85:
        animal = rng.choice(_ANIMALS)
        return f"A {animal} is an animal, and every {animal} has a name."
    n = rng.randint(2, 9)
    return "Counting: " + ", ".join(str(i) for i in range(1, n + 1)) + "."


def documents(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(_sentence(rng) for _ in range(rng.randint(3, 12))) for _ in range(count)]


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_sample(out: Path, count: int, vocab_size: int, seed: int) -> dict:
    if count < 1 or vocab_size < 300:
        raise JobError("--documents must be >= 1 and --vocab-size >= 300 (256 bytes + merges)")
    out.mkdir(parents=True, exist_ok=True)
    texts = documents(count, seed)
    _write_atomic(out / "corpus.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in texts))
    tokenizer = train_tokenizer(texts, vocab_size)
    _write_atomic(out / "tokenizer.json", tokenizer.to_str())
    return {"documents": count, "vocab_size": tokenizer.get_vocab_size(), "bytes": sum(len(t) for t in texts)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for corpus.jsonl and tokenizer.json")
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def body() -> int:
        stats = make_sample(args.out, args.documents, args.vocab_size, args.seed)
        print(
            f"{PROG}: {stats['documents']} documents ({stats['bytes']} bytes), "
            f"tokenizer with {stats['vocab_size']} tokens in {args.out}"
        )
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
