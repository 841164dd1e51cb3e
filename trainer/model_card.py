"""What an exported Hugging Face folder says about itself: `generation_config.json` (the tokenizer's
end-of-text id, so `generate` stops where training documents ended) and a `README.md` model card
naming the base weights, the data and the training settings, from the resolved config saved with
the checkpoint (trainer.checkpoint's model_config.json)."""

from __future__ import annotations

import json
from pathlib import Path

EOD = 0  # <|endoftext|> in the GPT-NeoX-20B tokenizer and in the sample tokenizers


def _eod_id(vocab_file: str | None) -> int:
    """The tokenizer's end-of-text id where its file says, else GPT-NeoX's 0."""
    if vocab_file and Path(vocab_file).is_file():
        try:
            added = json.loads(Path(vocab_file).read_text()).get("added_tokens") or []
        except (OSError, ValueError):
            return EOD
        for tok in added:
            if tok.get("content") == "<|endoftext|>":
                return int(tok["id"])
    return EOD


def generation_config(neox: dict) -> str:
    eod = _eod_id((neox.get("model") or {}).get("vocab_file"))
    return (
        json.dumps(
            {"bos_token_id": eod, "eos_token_id": eod, "pad_token_id": eod, "_from_model_config": False},
            indent=2,
        )
        + "\n"
    )


def card(
    neox: dict, checkpoint: str, iteration: int | None, parameters: int, kind: str = "full fine-tune"
) -> str:
    """A model card in the Hugging Face format (YAML front matter, then prose and a settings table)."""
    m, t, d = neox.get("model") or {}, neox.get("train") or {}, neox.get("data") or {}
    opt, sched, batch = neox.get("optimizer") or {}, neox.get("schedule") or {}, neox.get("batch") or {}
    lr = ((opt.get("optimizer") or {}).get("params") or {}).get("lr")
    rows = [
        ("base weights", t.get("load") or "random initialisation"),
        ("training data", d.get("data_path")),
        ("data split (train, valid, test)", d.get("split")),
        (
            "iterations",
            f"{iteration} of {t.get('train_iters')}" if iteration is not None else t.get("train_iters"),
        ),
        ("sequence length", m.get("seq_length")),
        (
            "micro-batch per GPU x accumulation",
            f"{batch.get('train_micro_batch_size_per_gpu')} x {batch.get('gradient_accumulation_steps')}",
        ),
        ("learning rate (min), schedule", f"{lr} ({sched.get('min_lr')}), {sched.get('lr_decay_style')}"),
        ("precision", neox.get("precision_name")),
        ("ZeRO stage", (neox.get("zero_optimization") or {}).get("stage")),
        ("config files", ", ".join(neox.get("files") or [])),
        ("checkpoint", checkpoint),
    ]
    if neox.get("lora"):
        rows.insert(1, ("LoRA", json.dumps(neox["lora"], sort_keys=True)))
    table = "\n".join(f"| {k} | {'' if v is None else v} |" for k, v in rows)
    return (
        "---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags:\n- gpt-neox\n- neox-pipeline\n---\n\n"
        f"# GPT-NeoX {kind}\n\n"
        f"A GPT-NeoX model ({m.get('num_layers')} layers, hidden {m.get('hidden_size')}, "
        f"{m.get('num_attention_heads')} heads, {parameters / 1e6:.1f}M parameters) fine-tuned with neox-pipeline "
        "and exported from its checkpoint. It loads with `transformers.GPTNeoXForCausalLM.from_pretrained`.\n\n"
        "| setting | value |\n|---|---|\n" + table + "\n"
    )
