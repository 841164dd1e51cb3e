"""Randomly initialised GPT-NeoX weights in Hugging Face format, shaped by a NeoX config.

    python -m trainer.init_weights --config NEOX.yml [--override KEY=VALUE ...] [--seed 0] --out DIR

`invoke local` serves such a folder as the "published weights" its fetch stage downloads, so the
fetcher and the trainer's loading path run for real without a model hub.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from jobs.cli import run_main
from trainer.checkpoint import save_hf
from trainer.config import load_config
from trainer.model import GPTNeoX

PROG = "trainer.init_weights"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", nargs="+", required=True, help="NeoX YAML files (model shape and vocab-file)"
    )
    parser.add_argument("--out", type=Path, required=True, help="Hugging Face folder to write")
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE", help="config keys to set")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def body() -> int:
        cfg = load_config(args.config, args.override)
        torch.manual_seed(args.seed)
        model = GPTNeoX(cfg.model_config())
        save_hf(model, args.out, tokenizer=cfg.model.vocab_file)
        params = sum(p.numel() for p in model.parameters())
        print(
            f"{PROG}: {params / 1e6:.2f}M parameters, random initialisation (seed {args.seed}) -> {args.out}"
        )
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
