"""Command line of the preprocessor: parses arguments and calls `preprocess`, nothing more."""

from __future__ import annotations

import argparse
import sys

from jobs.cli import human_bytes, run_main
from jobs.preprocess.pipeline import ENGINES, PROG, default_workers, preprocess


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m jobs.{PROG}",
        description="Tokenize a corpus into PREFIX_<key>_document.bin/.idx (GPT-NeoX indexed dataset).",
    )
    p.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help="files, directories, globs, s3://bucket/prefix or https:// URLs of .jsonl, "
        ".jsonl.zst, .jsonl.gz, .txt (one document per file) or .parquet; order is kept",
    )
    p.add_argument("--tokenizer", required=True, help="a tokenizers JSON file (e.g. 20B_tokenizer.json)")
    p.add_argument("--output-prefix", required=True, help="writes PREFIX_<key>_document.{bin,idx,stats.json}")
    p.add_argument(
        "--jsonl-key", default="text", help="JSON key / Parquet column holding the text (default text)"
    )
    p.add_argument("--append-eod", action="store_true", help="end each document with <|endoftext|>")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"tokenizer threads (default: CPUs available, here {default_workers()})",
    )
    p.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="count and skip lines that are not JSON objects instead of failing",
    )
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="tokenizers: the tokenizers library; tiktoken: its faster BPE, used only where it gives the same "
        "ids (checked at start); auto (default): tiktoken where possible, else tokenizers",
    )
    p.add_argument(
        "--allow-empty",
        action="store_true",
        help="accept inputs (or a whole run) without a single document instead of failing",
    )
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint for s3:// inputs (or AWS_ENDPOINT_URL)")
    p.add_argument(
        "--allow-redirect-host",
        action="append",
        default=[],
        metavar="HOST",
        help="follow https:// input redirects to this other host (repeatable; * for any). Credentials are "
        "never sent along a redirect",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.workers is not None and args.workers < 1:
        _parser().error("--workers must be at least 1")

    def body() -> int:
        s = preprocess(
            args.input,
            args.tokenizer,
            args.output_prefix,
            jsonl_key=args.jsonl_key,
            append_eod=args.append_eod,
            workers=args.workers,
            skip_bad_lines=args.skip_bad_lines,
            endpoint_url=args.endpoint_url,
            engine=args.engine,
            allow_empty=args.allow_empty,
            redirect_hosts=args.allow_redirect_host,
        )
        bad = f", {s.bad_lines:,} bad lines skipped" if s.bad_lines else ""
        print(
            f"{PROG}: wrote {s.output_prefix}.bin/.idx: {s.documents:,} documents, {s.tokens:,} tokens "
            f"({s.dropped_empty:,} empty dropped{bad}) from {s.inputs} inputs, {human_bytes(s.bytes_read)} "
            f"in {s.seconds:.1f}s, {s.tokens_per_second:,.0f} tokens/s ({s.engine})"
        )
        return 0

    return run_main(PROG, body, sigterm_unwinds=True)  # a stopped pod removes its temporary files


if __name__ == "__main__":
    sys.exit(main())
