"""Forward+backward time of our GPT-NeoX against transformers' GPTNeoXForCausalLM on the same
weights (CPU, fp32, SDPA attention in both). Usage: python benchmarks/trainer_step_cpu.py"""

from __future__ import annotations

import statistics
import tempfile
import time

import torch
import transformers

from trainer.checkpoint import load_hf
from trainer.model import cross_entropy

SHAPE = dict(
    vocab_size=2048,
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=8,
    intermediate_size=1024,
    max_position_embeddings=512,
    rotary_pct=0.25,
)
BATCH, SEQ, REPEATS = 4, 256, 10


def step_time(fn) -> float:
    fn()  # warm-up
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    hf = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**SHAPE, attn_implementation="sdpa"))
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = load_hf(d)
    ids = torch.randint(0, SHAPE["vocab_size"], (BATCH, SEQ + 1))

    def ours_step():
        cross_entropy(ours(ids[:, :-1]), ids[:, 1:]).backward()

    def hf_step():
        hf(ids[:, :-1], labels=ids[:, :-1]).loss.backward()

    t_ours, t_hf = step_time(ours_step), step_time(hf_step)
    tokens = BATCH * SEQ
    print(f"shape {SHAPE} batch {BATCH} seq {SEQ}")
    print(f"ours: {t_ours * 1000:.1f} ms/step, {tokens / t_ours:,.0f} tokens/s")
    print(f"transformers: {t_hf * 1000:.1f} ms/step, {tokens / t_hf:,.0f} tokens/s")


if __name__ == "__main__":
    main()
