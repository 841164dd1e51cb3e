"""Tokens/s of the preprocessor against gpt-neox's `tools/datasets/preprocess_data.py`, side by side.

    python benchmarks/preprocess_corpus.py /tmp/prose.jsonl
    python benchmarks/preprocess_corpus.py /tmp/code.jsonl --kind code
    python benchmarks/preprocess_bench.py /tmp/prose.jsonl /tmp/code.jsonl --neox ~/gpt-neox \\
        [--neox-python ~/neox-venv/bin/python] [--workers 2] [--rounds 3]

Both sides run as the user would run them, one command each, timed wall clock from start to exit (imports,
tokenizer load, reading, writing included), on the same corpus, tokenizer, worker count and `--append-eod`:

- ours: `python -m jobs.preprocess --input C --tokenizer T --output-prefix P --workers W --append-eod`
  (default engine: tiktoken where it is exact);
- gpt-neox: `NEOX_PY NEOX/tools/datasets/preprocess_data.py --input C --output-prefix P --tokenizer-type
  HFTokenizer --vocab-file T --append-eod --workers W` (its `multiprocessing.Pool` of W processes, one
  `Tokenizer.encode` a document); NEOX_PY needs gpt-neox's imports (lm_dataformat, ftfy, torch, ...).

Rounds alternate which side goes first, so background load on a shared machine hits both alike; medians are
reported. Each round's .bin and .idx of the two sides are compared byte for byte. `--in-process` adds the
older comparison against `Tokenizer.encode_batch` on documents already in memory.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    secs = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout[-3000:]}")
    return secs


def side_by_side(corpus: str, args, tmp: Path) -> dict:
    ours_prefix, neox_prefix = tmp / "ours", tmp / "neox"
    ours = [
        sys.executable,
        "-m",
        "jobs.preprocess",
        "--input",
        corpus,
        "--tokenizer",
        args.tokenizer,
        "--output-prefix",
        str(ours_prefix),
        "--workers",
        str(args.workers),
        "--append-eod",
    ]
    neox = [
        args.neox_python,
        str(Path(args.neox) / "tools/datasets/preprocess_data.py"),
        "--input",
        corpus,
        "--output-prefix",
        str(neox_prefix),
        "--tokenizer-type",
        "HFTokenizer",
        "--vocab-file",
        args.tokenizer,
        "--append-eod",
        "--workers",
        str(args.workers),
    ]
    secs: dict[str, list[float]] = {"ours": [], "gpt-neox": []}
    loads, identical, tokens = [], True, 0
    for r in range(args.rounds):
        order = [("ours", ours), ("gpt-neox", neox)]
        for name, cmd in order if r % 2 == 0 else order[::-1]:
            loads.append(os.getloadavg()[0])
            secs[name].append(run(cmd))
        stats = json.loads(Path(f"{ours_prefix}_text_document.stats.json").read_text())
        tokens = stats["tokens"]
        same = all(
            filecmp.cmp(
                f"{ours_prefix}_text_document{ext}", f"{neox_prefix}_text_document{ext}", shallow=False
            )
            for ext in (".bin", ".idx")
        )
        identical &= same
        print(
            f"  round {r}: ours {secs['ours'][-1]:.2f}s, gpt-neox {secs['gpt-neox'][-1]:.2f}s, .bin/.idx "
            f"{'identical' if same else 'DIFFER'}",
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in secs.items()}
    return {
        "corpus": corpus,
        "bytes": Path(corpus).stat().st_size,
        "documents": stats["documents"],
        "tokens": tokens,
        "engine": stats["engine"],
        "seconds": secs,
        "median_seconds": med,
        "median_tokens_per_s": {k: tokens / v for k, v in med.items()},
        "ratio": med["gpt-neox"] / med["ours"],
        "byte_identical": identical,
        "load_average_1min": [round(x, 1) for x in loads],
    }


def in_process(corpus: str, args, tmp: Path) -> None:
    """The older baseline: `encode_batch` on documents in memory against the preprocessor end to end."""
    from jobs.preprocess import preprocess
    from jobs.preprocess.pipeline import load_tokenizer, set_workers

    set_workers(args.workers)
    tok = load_tokenizer(args.tokenizer)
    docs = [d for d in (json.loads(line)["text"] for line in open(corpus, encoding="utf-8")) if d]
    rates: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name in ("encode_batch", "encode_batch_fast"):
            t0 = time.perf_counter()
            n = sum(len(e.ids) for e in getattr(tok, name)(docs))
            rates.setdefault(name, []).append(n / (time.perf_counter() - t0))
        for engine in ("tokenizers", "tiktoken"):
            t0 = time.perf_counter()
            stats = preprocess([corpus], args.tokenizer, tmp / engine, workers=args.workers, engine=engine)
            rates.setdefault(f"preprocess {engine}", []).append(stats.tokens / (time.perf_counter() - t0))
    for k, v in rates.items():
        print(f"  in-process median {k:22s} {statistics.median(v):,.0f} tokens/s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus", nargs="+")
    ap.add_argument("--tokenizer", default=str(REPO.parent / "shared/data/20B_tokenizer.json"))
    ap.add_argument("--neox", help="a gpt-neox checkout (has tools/datasets/preprocess_data.py)")
    ap.add_argument("--neox-python", default=sys.executable, help="an interpreter with gpt-neox's imports")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--in-process", action="store_true", help="also the in-memory encode_batch baseline")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    if not args.neox and not args.in_process:
        ap.error("give --neox CHECKOUT (and/or --in-process)")
    results = []
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, workers {args.workers}"
    )
    for corpus in args.corpus:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"{corpus}:", flush=True)
            if args.neox:
                res = side_by_side(corpus, args, Path(tmp))
                results.append(res)
            if args.in_process:
                in_process(corpus, args, Path(tmp))
    if results:
        print(
            "\n| corpus | MB | docs | tokens | ours s (rounds) | gpt-neox s (rounds) | ours tok/s | gpt-neox tok/s "
            "| ratio | byte-identical |\n|---|---|---|---|---|---|---|---|---|---|"
        )
        for r in results:
            t = r["median_tokens_per_s"]
            print(
                f"| {Path(r['corpus']).name} | {r['bytes'] / 1e6:.1f} | {r['documents']:,} | {r['tokens']:,} | "
                f"{', '.join(f'{s:.2f}' for s in r['seconds']['ours'])} | "
                f"{', '.join(f'{s:.2f}' for s in r['seconds']['gpt-neox'])} | {t['ours']:,.0f} | "
                f"{t['gpt-neox']:,.0f} | **{r['ratio']:.2f}x** | {'yes' if r['byte_identical'] else 'NO'} |"
            )
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
