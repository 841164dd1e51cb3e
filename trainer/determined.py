"""Determined entrypoint: `python3 -m determined.launch.deepspeed --trial trainer.determined:NeoXTrial`.

Experiment hyperparameters read here (as the guide's finetune-gpt-neox.yml):
- `conf_dir`: folder of NeoX YAML files; a relative path resolves against the trial's working
  directory (the experiment's context directory);
- `conf_file`: list of file names in it, merged in order (trainer.config);
- `overrides` (optional): mapping of NeoX keys set after the files.
Train length is the experiment's `searcher.max_length.batches` (one batch = one optimizer step of
`train_batch_size` samples); it replaces `train-iters` and `lr-decay-iters` so warmup and decay fit
the run, and the replacement is announced. The validation period is Determined's
(`min_validation_period`); validation runs `eval-iters` micro-batches of the valid split.
Weights come from the config's `load` exactly as in trainer.train. Checkpoints go through
Determined's checkpoint context: `save` writes a DeepSpeed checkpoint (tag `neox`, plus our
model_config.json and the data position) into the directory Determined uploads, so
`python -m trainer.export --checkpoint <that directory>` turns it into a Hugging Face folder.

`determined` is an optional dependency (the `determined` extra; it pins old libraries): it is
imported only when `NeoXTrial` is first looked up, never by the rest of the package.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from jobs.cli import JobError
from trainer.config import NeoXConfig, from_dict
from trainer.neox_yaml import merge, set_key

TAG = "neox"


def config_from_hparams(hparams: dict, exp_conf: dict, workdir: str | os.PathLike = ".") -> NeoXConfig:
    """The NeoX config an experiment describes (no Determined import needed: tested on CPU)."""
    conf_dir = Path(hparams.get("conf_dir", "."))
    if not conf_dir.is_absolute():
        conf_dir = Path(workdir) / conf_dir
    files = hparams.get("conf_file") or []
    if isinstance(files, str):
        files = [files]
    if not files:
        raise JobError("hyperparameter conf_file names no NeoX config file")
    raw, _ = merge(conf_dir / name for name in files)
    for key, value in (hparams.get("overrides") or {}).items():
        set_key(raw, key, value, "hyperparameter overrides")
    length = (exp_conf.get("searcher") or {}).get("max_length")
    batches = length.get("batches") if isinstance(length, dict) else length
    notes = []
    if batches:
        notes.append(
            f"train-iters and lr-decay-iters set to the experiment's searcher.max_length {batches} "
            f"(config had {raw.get('train_iters')} and {raw.get('lr_decay_iters')})"
        )
        raw["train_iters"] = raw["lr_decay_iters"] = int(batches)
    cfg = from_dict(raw, [str(conf_dir / f) for f in files])
    if cfg.lora:  # NeoXTrial saves full DeepSpeed checkpoints and has no lora.json: not a LoRA checkpoint
        raise JobError(
            "config key 'lora': LoRA runs under Determined are not supported yet; "
            "run them with trainer.train or trainer.launch"
        )
    cfg.notes.extend(notes)
    return cfg


class _Loader:
    """A repeating loader with a length, as DeepSpeedTrial wants; iterating hands out the one
    resumable MicroBatches, so restoring its state after iter() still takes effect."""

    def __init__(self, batches, length: int) -> None:
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        return iter(self.batches)


def _allow_determined_rng_state() -> None:
    """Determined 0.38.1 restores its checkpoints' RNG state with torch.load's default
    weights_only=True (torch >= 2.6), which refuses the numpy RNG state it saved itself, so every
    restore fails. Allow exactly the numpy types that state holds."""
    import numpy as np
    import torch

    core = getattr(np, "_core", None) or np.core
    torch.serialization.add_safe_globals(
        [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    )


def _build_trial_class():
    import torch
    import torch.distributed as dist
    from determined.pytorch import deepspeed as det_ds

    _allow_determined_rng_state()

    from trainer import checkpoint
    from trainer.data import MicroBatches, build_splits, eval_batches
    from trainer.engine import NonFinitePolicy, eval_loss, parallelize, train_step
    from trainer.start import build_model, check_model_fits
    from trainer.state import TrainState

    class NeoXTrial(det_ds.DeepSpeedTrial):
        def __init__(self, context: det_ds.DeepSpeedTrialContext) -> None:
            self.context = context
            self.cfg = config_from_hparams(context.get_hparams(), context.get_experiment_config())
            for line in self.cfg.report():
                logging.info("trainer: %s", line)
            cfg = self.cfg
            self.splits = build_splits(
                cfg.data.data_path, cfg.data.split_weights(), cfg.model.seq_length, cfg.data.seed
            )
            # a restore overwrites these weights in load()
            note = lambda m: logging.info("trainer: %s", m)  # noqa: E731
            model, source = build_model(cfg, None, note)
            check_model_fits(cfg, model.cfg, note)
            self.model_cfg = model.cfg
            logging.info("trainer: weights from %s", source)
            self.engine = context.wrap_model_engine(parallelize(model, cfg))
            context.disable_dataset_reproducibility_checks()  # our sampler resumes itself
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            self.train_batches = MicroBatches(
                self.splits["train"], cfg.batch.train_micro_batch_size_per_gpu, self.rank, self.world
            )
            # as trainer.train's: a NaN/Inf loss fails the trial (Determined keeps its last checkpoint)
            self.policy = NonFinitePolicy(cfg.train.skip_non_finite_steps, cfg.precision.fp16_dynamic, note)

        def train_batch(self, dataloader_iter, epoch_idx: int, batch_idx: int) -> dict[str, Any]:
            # Determined calls this once per micro-batch (automatic gradient accumulation)
            loss = train_step(  # as trainer.train's
                self.engine,
                lambda: self.context.to_device(next(dataloader_iter)),
                self.policy,
                batch_idx + 1,
            )
            return {"lm_loss": loss, "lr": self.engine.get_lr()[0]}

        def evaluate_batch(self, dataloader_iter, batch_idx: int) -> dict[str, Any]:
            loss = eval_loss(self.engine, self.context.to_device(next(dataloader_iter)))
            return {"lm_loss": loss.item(), "lm_loss_ppl": torch.exp(loss.clamp(max=50)).item()}

        def build_training_data_loader(self):
            per_rank = len(self.splits["train"]) // (
                self.cfg.batch.train_micro_batch_size_per_gpu * self.world
            )
            return _Loader(self.train_batches, max(per_rank, 1))

        def build_validation_data_loader(self):
            samples = self.splits["valid"] or self.splits["train"]
            iters = self.cfg.train.eval_iters
            batches = list(
                eval_batches(
                    samples, self.cfg.batch.train_micro_batch_size_per_gpu, iters, self.rank, self.world
                )
            )
            return batches  # a list: has a length and restarts on every validation

        def save(self, context, path: Path) -> None:
            # Determined counts the steps itself; the data position travels as the script's does
            state = TrainState(data=self.train_batches.state_dict())
            checkpoint.save_engine(
                self.engine, path, TAG, state, self.model_cfg, self.cfg.to_dict(), self.rank
            )

        def load(self, context, path: Path) -> None:
            _, client = self.engine.load_checkpoint(str(path), tag=TAG)
            if client is None:
                raise JobError(f"{path}: no DeepSpeed checkpoint with tag {TAG}")
            self.train_batches.load_state_dict(TrainState.from_client(client).data)

    return NeoXTrial


def __getattr__(name: str):
    if name == "NeoXTrial":
        try:
            cls = _build_trial_class()
        except ImportError as exc:
            raise ImportError(f"trainer.determined.NeoXTrial needs the 'determined' extra ({exc})") from exc
        globals()["NeoXTrial"] = cls
        return cls
    raise AttributeError(name)
