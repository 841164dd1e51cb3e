"""Tokens/s of the preprocessor against the tokenizer's own batch encoding on the same documents.

    python benchmarks/preprocess_corpus.py /tmp/bench.jsonl
    python benchmarks/preprocess_bench.py /tmp/bench.jsonl --tokenizer ../shared/data/20B_tokenizer.json

The baseline gets every document already in memory as one list and only calls `encode_batch` (and
`encode_batch_fast`) on it: no reading, parsing or writing. The preprocessor runs end to end from the
JSONL file to finished .bin/.idx (tokenizer load, reading, JSON parsing, writing included). Rounds
alternate so background load on a shared machine hits both alike; the median round is reported.
The output is checked token for token against the baseline's ids.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from jobs.indexed_dataset import IndexedDataset
from jobs.preprocess import preprocess
from jobs.preprocess.pipeline import default_workers, load_tokenizer, set_workers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("--tokenizer", default=str(Path(__file__).parents[2] / "shared/data/20B_tokenizer.json"))
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    set_workers(args.workers)  # the same Rayon pool for baseline and preprocessor
    tok = load_tokenizer(args.tokenizer)
    docs = [json.loads(line)["text"] for line in open(args.corpus, encoding="utf-8")]
    docs = [d for d in docs if d]
    mb = Path(args.corpus).stat().st_size / 1e6
    print(f"corpus {args.corpus}: {len(docs)} documents, {mb:.1f} MB; workers {args.workers}")

    rates: dict[str, list[float]] = {
        "encode_batch": [],
        "encode_batch_fast": [],
        "preprocess tokenizers": [],
        "preprocess tiktoken": [],
    }
    exact: dict[str, int] = {}
    ref_ids = None
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in ("encode_batch", "encode_batch_fast"):
                t0 = time.perf_counter()
                encs = getattr(tok, name)(docs)
                dt = time.perf_counter() - t0
                n = sum(len(e.ids) for e in encs)
                if ref_ids is None:
                    ref_ids = [e.ids for e in encs]
                del encs
                rates[name].append(n / dt)
                print(f"round {r}: {name:18s} {n:,} tokens in {dt:.2f}s = {n / dt:,.0f} tokens/s")
            for engine in ("tokenizers", "tiktoken"):
                prefix = Path(tmp) / engine
                t0 = time.perf_counter()
                stats = preprocess([args.corpus], args.tokenizer, prefix, workers=args.workers, engine=engine)
                dt = time.perf_counter() - t0
                rates[f"preprocess {engine}"].append(stats.tokens / dt)
                print(
                    f"round {r}: preprocess {engine:10s} {stats.tokens:,} tokens in {dt:.2f}s = "
                    f"{stats.tokens / dt:,.0f} tokens/s (end to end)"
                )
                ds = IndexedDataset(f"{prefix}_text_document")
                same = len(ds) == len(ref_ids)
                exact[engine] = sum(ds[i].tolist() == ids for i, ids in enumerate(ref_ids)) if same else 0
    med = {k: statistics.median(v) for k, v in rates.items()}
    best_base = max(med["encode_batch"], med["encode_batch_fast"])
    for engine, n in exact.items():
        print(f"exact documents ({engine}): {n} of {len(ref_ids)}")
    for k, v in med.items():
        print(f"median {k:22s} {v:,.0f} tokens/s")
    for engine in ("tokenizers", "tiktoken"):
        p = med[f"preprocess {engine}"]
        print(
            f"ratio preprocess {engine} / encode_batch = {p / med['encode_batch']:.3f}, "
            f"/ best batch encode = {p / best_base:.3f}"
        )


if __name__ == "__main__":
    main()
