"""Greedy generation from a Hugging Face GPT-NeoX folder with the project's own model.

    python -m trainer.generate --model DIR [--tokenizer tokenizer.json] --prompt TEXT [--max-new-tokens 20]

A smoke test of an exported model (`invoke local` runs it); the tokenizer defaults to the
folder's own `tokenizer.json`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from jobs.cli import JobError, run_main
from trainer.checkpoint import load_hf

PROG = "trainer.generate"


@torch.no_grad()
def greedy(model, ids: list[int], max_new_tokens: int, eos_id: int | None = None) -> list[int]:
    """Append the most likely next token, one at a time (no cache: these are small models)."""
    model.eval()
    out = list(ids)
    for _ in range(max_new_tokens):
        window = out[-model.cfg.max_position_embeddings :]
        logits = model(torch.tensor([window]))  # (1, seq, vocab)
        nxt = int(logits[0, -1].argmax())
        out.append(nxt)
        if nxt == eos_id:
            break
    return out[len(ids) :]


def generate(model_dir: Path, tokenizer_file: Path | None, prompt: str, max_new_tokens: int) -> str:
    from tokenizers import Tokenizer

    tokenizer_file = tokenizer_file or model_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise JobError(f"tokenizer {tokenizer_file} not found: pass --tokenizer")
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    model = load_hf(model_dir, dtype=torch.float32)
    ids = tokenizer.encode(prompt).ids
    if not ids:
        raise JobError("--prompt encodes to no tokens")
    new = greedy(model, ids, max_new_tokens, tokenizer.token_to_id("<|endoftext|>"))
    return tokenizer.decode(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="Hugging Face GPT-NeoX folder")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: the model folder's)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    args = parser.parse_args(argv)

    def body() -> int:
        text = generate(args.model, args.tokenizer, args.prompt, args.max_new_tokens)
        print(f"{PROG}: {args.prompt!r} -> {text!r}")
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
