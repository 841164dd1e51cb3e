"""Where a training run starts: the one place that decides it, for trainer.train and the Determined trial.

First match wins (the notes at the top of trainer.train say what each means for the run):
1. a complete checkpoint of ours in `save` (then `load`): trainer.checkpoint.resume_candidates, and for
   a LoRA run only LoRA checkpoints (trainer.lora.resume_point);
2. `load` a Hugging Face folder or the slim GPT-NeoX layout: trainer.checkpoint.load_pretrained;
3. no `load`: random initialisation.
`build_model` gives the model to hand to DeepSpeed; the engine load of case 1 happens in trainer.train.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from jobs.cli import JobError
from trainer import checkpoint, lora
from trainer.config import NeoXConfig
from trainer.model import GPTNeoX, ModelConfig

Resume = tuple[str, str, bool]  # (dir, tag, module_only)


def resume_point(cfg: NeoXConfig, log: Callable[[str], None]) -> Resume | None:
    """(dir, tag, module_only) of a complete checkpoint of ours to continue from, or None."""
    if cfg.lora:
        return lora.resume_point(cfg, log)
    return next(checkpoint.resume_candidates(cfg.train, log), None)


def build_model(
    cfg: NeoXConfig, resume: Resume | None, log: Callable[[str], None] = print
) -> tuple[GPTNeoX, str]:
    """The model to hand to DeepSpeed, and a line saying where its weights come from."""
    if cfg.lora:  # a frozen base (from `load`) with adapters: trainer.lora
        return lora.build_model(cfg, resume, log, apply_run_settings)
    if resume:
        mcfg, _ = checkpoint.read_model_config(Path(resume[0]) / resume[1])
        mcfg = replace(
            mcfg,
            checkpoint_activations=cfg.model.checkpoint_activations,
            hidden_dropout=cfg.model.hidden_dropout,
            attention_dropout=cfg.model.attention_dropout,
        )
        return checkpoint.empty_model(mcfg), f"checkpoint {resume[0]}/{resume[1]}"
    if cfg.train.load:
        slim_cfg = None
        if not (Path(cfg.train.load) / "config.json").is_file():
            slim_cfg = cfg.model_config(vocab_size=1)  # vocab taken from the embedding's rows
        model, kind = checkpoint.load_pretrained(cfg.train.load, slim_cfg)
        if cfg.precision.name == "fp32":
            model.float()  # published weights are often fp16; DeepSpeed casts only for fp16/bf16 runs
        apply_run_settings(model, cfg)
        return model, f"{kind} {cfg.train.load}"
    torch.manual_seed(cfg.data.seed)
    return GPTNeoX(cfg.model_config()), "random initialisation (no 'load' given)"


def apply_run_settings(model: GPTNeoX, cfg: NeoXConfig) -> None:
    """The run's own settings, not architecture, come from the NeoX config."""
    model.cfg.checkpoint_activations = cfg.model.checkpoint_activations
    model.set_dropout(cfg.model.hidden_dropout, cfg.model.attention_dropout)


def check_model_fits(cfg: NeoXConfig, mcfg: ModelConfig, log: Callable[[str], None]) -> None:
    """The weights' shape wins over the config's: a note where they differ, an error where they cannot fit."""
    if cfg.model.seq_length > mcfg.max_position_embeddings:
        raise JobError(
            f"config key 'seq-length' {cfg.model.seq_length} exceeds the weights' max_position_embeddings "
            f"{mcfg.max_position_embeddings}"
        )
    for key, ours, theirs in (
        ("num-layers", cfg.model.num_layers, mcfg.num_layers),
        ("hidden-size", cfg.model.hidden_size, mcfg.hidden_size),
        ("num-attention-heads", cfg.model.num_attention_heads, mcfg.num_heads),
    ):
        if ours != theirs:
            log(f"note: config key '{key}' is {ours} but the weights have {theirs}; using the weights'")
