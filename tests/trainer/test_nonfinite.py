"""A NaN/Inf loss stops the run (non-zero exit, the iteration named, nothing of that state saved) unless
`skip-non-finite-steps` allows skipping a few micro-batches. Real runs (DeepSpeed's CPU accelerator, gloo, as
subprocesses); the NaN comes through trainer.engine's test hook NEOX_TEST_NAN_AT=N, which makes the loss of
iteration N's first micro-batch NaN, as a diverged model's would be."""

from __future__ import annotations

import subprocess

import pytest

from jobs.cli import JobError
from tests.support.trainer import complete_steps, env, losses, trainer_cmd, write_config
from trainer.engine import NonFinitePolicy


def run(corpus, tmp_path, nan_at: str, **keys):
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = write_config(
        tmp_path / "run.yml",
        corpus,
        **{
            "train-iters": 6,
            "save-interval": 2,
            "eval-interval": 1000,
            "save": str(tmp_path / "ckpt"),
            **keys,
        },
    )
    return subprocess.run(
        trainer_cmd(cfg),
        env={**env(), "NEOX_TEST_NAN_AT": nan_at},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(corpus, tmp_path):
    proc = run(corpus, tmp_path, "4")  # 4 is a save iteration: it must not be saved
    assert proc.returncode == 1, proc.stdout[-3000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("trainer.train: error")]
    assert errors == [
        f"trainer.train: error: iteration 4: lm_loss nan is not finite; stopped without saving (the newest "
        f"complete checkpoint is {tmp_path / 'ckpt'}/global_step2); lower the learning rate or check the data, "
        f"or allow skips with config key 'skip-non-finite-steps'"
    ]
    assert complete_steps(tmp_path / "ckpt") == [2]
    assert not (tmp_path / "ckpt" / "global_step4").exists()
    assert "done:" not in proc.stdout
    assert sorted(losses(tmp_path / "ckpt")) == [1, 2, 3]  # every logged loss is finite


def test_allowed_skips_leave_the_weights_untouched_and_then_stop(corpus, tmp_path):
    proc = run(corpus, tmp_path, "3", **{"skip-non-finite-steps": 1})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    warnings = [x for x in proc.stdout.splitlines() if "warning" in x]
    assert warnings == [
        "trainer.train: warning: iteration 3: lm_loss nan is not finite; micro-batch skipped "
        "(1 of 1 allowed by 'skip-non-finite-steps')"
    ]
    train = losses(tmp_path / "ckpt")
    assert sorted(train) == list(range(1, 7)) and all(v == v for v in train.values())  # no NaN
    assert complete_steps(tmp_path / "ckpt") == [2, 4, 6]
    # a second one in another run of the same settings is one too many
    proc = run(corpus, tmp_path / "again", "3,5", **{"skip-non-finite-steps": 1})
    assert proc.returncode == 1
    assert (
        "trainer.train: error: iteration 5: lm_loss nan is not finite; stopped without saving" in proc.stderr
    )
    assert ", after skipping 1;" in proc.stderr
    assert complete_steps(tmp_path / "again" / "ckpt") == [2, 4]


class _Engine:
    """The two things NonFinitePolicy.step_done reads of a DeepSpeed engine after its step: the global
    gradient norm and the count of steps DeepSpeed skipped (its fp16 loss scaler's overflow skips). An
    fp16 overflow cannot be provoked on the CPU accelerator (no fp16 there), hence this stand-in."""

    def __init__(self, norm, skipped):
        self.norm, self.skipped_steps = norm, skipped

    def get_global_grad_norm(self):
        return self.norm


def test_fp16_overflow_steps_are_deepspeeds_own_and_never_count():
    policy = NonFinitePolicy(0, fp16_dynamic=True, log=print)
    for _ in range(5):
        policy.step_done(_Engine(float("inf"), skipped=1), 7, skipped_before=0)  # skipped by the scaler
    assert policy.skipped == 0
    policy.step_done(_Engine(1.5, skipped=0), 8, skipped_before=0)
    with pytest.raises(
        JobError, match=r"^iteration 9: gradient norm nan is not finite; stopped without saving"
    ):
        policy.step_done(_Engine(float("nan"), skipped=0), 9, skipped_before=0)  # applied: cannot be undone
    bf16 = NonFinitePolicy(0, fp16_dynamic=False, log=print)
    with pytest.raises(JobError, match=r"^iteration 3: gradient norm inf"):
        bf16.step_done(_Engine(float("inf"), skipped=1), 3, skipped_before=0)
