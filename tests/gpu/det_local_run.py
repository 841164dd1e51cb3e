"""Run NeoXTrial through Determined's local training API (no master), then restore and continue.

    python tests/gpu/det_local_run.py CONF_DIR OUT.json

Three fits in one process, as ../shared/FORMATS.md section 5 describes: `deepspeed.init_distributed()`
first, then `det_ds.init(...)` with `DistributedContext.from_deepspeed()` and
`det_ds.Trainer(trial, ctx).fit(...)`:
1. `first`: FIRST batches with a checkpoint at the end;
2. `resumed`: a fresh trial restored from that checkpoint (`latest_checkpoint=<uuid>`), trained to TOTAL;
3. `straight`: a fresh trial trained to TOTAL without a break, for the reference losses.
Checkpoints land in `$XDG_DATA_HOME/determined` (Determined's local storage). Writes the losses
per batch, the validation metrics and the checkpoint folders to OUT.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

FIRST, TOTAL = 4, 8


def main(conf_dir: str, out: str) -> None:
    for key, value in {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_SIZE": "1",
        "CROSS_RANK": "0",
        "CROSS_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
    }.items():
        os.environ.setdefault(key, value)
    import deepspeed
    import determined as det
    from determined import pytorch
    from determined.pytorch import deepspeed as det_ds

    from trainer.determined import NeoXTrial

    deepspeed.init_distributed()
    hparams = {"conf_dir": conf_dir, "conf_file": ["model.yml"]}
    exp_conf = {
        "searcher": {
            "name": "single",
            "metric": "lm_loss",
            "smaller_is_better": True,
            "max_length": {"batches": TOTAL},
        }
    }
    storage = Path(os.environ["XDG_DATA_HOME"]) / "determined"
    result: dict = {}

    class Recording(NeoXTrial):
        """NeoXTrial that remembers each batch's loss and each validation."""

        def __init__(self, context) -> None:
            super().__init__(context)
            self.seen: list[float] = []  # every micro-batch's loss in order (Determined's batch_idx restarts)
            self.validations: list[dict] = []

        def train_batch(self, dataloader_iter, epoch_idx, batch_idx):
            metrics = super().train_batch(dataloader_iter, epoch_idx, batch_idx)
            self.seen.append(float(metrics["lm_loss"].detach()))
            return metrics

        def evaluate_batch(self, dataloader_iter, batch_idx):
            metrics = super().evaluate_batch(dataloader_iter, batch_idx)
            self.validations.append(metrics)
            return metrics

    def fit(name: str, length: int, latest: str | None = None) -> None:
        before = set(storage.iterdir()) if storage.exists() else set()
        with det_ds.init(
            hparams=hparams, exp_conf=exp_conf, distributed=det.core.DistributedContext.from_deepspeed()
        ) as ctx:
            trial = Recording(ctx)
            det_ds.Trainer(trial, ctx).fit(
                max_length=pytorch.Batch(length),
                checkpoint_period=pytorch.Batch(FIRST),
                validation_period=pytorch.Batch(FIRST),
                latest_checkpoint=latest,
            )
        new = sorted(str(p) for p in set(storage.iterdir()) - before) if storage.exists() else []
        result[name] = {
            "losses": trial.seen,
            "validations": trial.validations,
            "checkpoints": new,
            "gas": trial.cfg.batch.gradient_accumulation_steps,
            "device": str(ctx.device),
        }
        print(f"det_local_run: {name}: {len(trial.seen)} micro-batches, checkpoints {new}", flush=True)

    fit("first", FIRST)
    first_ckpts = result["first"]["checkpoints"]
    # the checkpoint taken at FIRST batches: Determined names it by a uuid folder
    latest = Path(first_ckpts[-1]).name if first_ckpts else None
    fit("resumed", TOTAL, latest)
    fit("straight", TOTAL)
    Path(out).write_text(json.dumps(result, indent=1))
    from trainer.engine import leave_distributed

    leave_distributed()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
