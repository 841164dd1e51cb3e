"""The training loop end to end on CPU (DeepSpeed's CPU accelerator, gloo), as subprocesses:
loss falls, export round trip, kill + resume reproduces losses (also when killed before a checkpoint
was complete), keep-last-n-checkpoints over restarts, the S3 mirror, data parallel == accumulation,
fine-tuning from Hugging Face weights at several ZeRO stages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.net import free_port
from tests.support.trainer import (
    SECRET,
    complete_steps,
    env,
    losses,
    make_hf_model,
    objects,
    run,
    trainer_cmd,
    write_config,
)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("trained")
    cfg = write_config(
        d / "run.yml", corpus, **{"train-iters": 30, "eval-interval": 15, "save": str(d / "ckpt")}
    )
    proc = run(cfg)
    return d, proc


def test_loss_falls_and_validation_is_reported(trained):
    d, proc = trained
    train = losses(d / "ckpt")
    assert sorted(train) == list(range(1, 31))
    assert train[1] > 5.5  # about ln(512) = 6.2 at the start
    assert np.mean([train[i] for i in range(26, 31)]) < train[1] - 2.0
    valid = losses(d / "ckpt", "valid")
    assert set(valid) == {15, 30} and valid[30] < valid[15]
    stats = json.loads((d / "ckpt" / "train-stats.json").read_text())
    assert stats["iterations"] == 30 and stats["last"]["tokens_per_s"] > 0
    assert "done: 30 iterations" in proc.stdout


def test_export_round_trip(trained, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers loads the exported folder")
    from trainer.checkpoint import build_model, read_model_config

    d, _ = trained
    out = tmp_path / "hf"
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.export", "--checkpoint", str(d / "ckpt"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and (tmp_path / "hf-export-stats.json").is_file()
    # the model as trained: stage 1 keeps full fp32 weights in the module state
    tag = d / "ckpt" / "global_step30"
    mcfg, _ = read_model_config(tag)
    module = torch.load(tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    ours = build_model(mcfg, {k: v for k, v in module.items() if not k.startswith("rotary.")}).eval()
    hf = transformers.GPTNeoXForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), rtol=1e-4, atol=1e-4)
    # The folder says what it is: transformers reads its generation config; the card names the data,
    # the weights it started from and the settings.
    gen = transformers.GenerationConfig.from_pretrained(out)
    assert gen.eos_token_id == 0 and gen.pad_token_id == 0
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "| iterations | 30 of 30 |" in card and "| base weights | random initialisation |" in card
    assert "tiny_text_document" in card and "| precision | fp32 |" in card


def test_export_from_and_to_s3_where_the_checkpoint_is(trained, tmp_path):
    """An export Job's path: the checkpoint in a bucket (moto on 127.0.0.1), the Hugging Face folder to
    another prefix; --work holds the download only while it runs."""
    transformers = pytest.importorskip("transformers", reason="transformers loads the exported folder")
    from tests.support.s3 import KEYS, moto_s3

    d, _ = trained
    tag = d / "ckpt" / "global_step30"
    with moto_s3() as (url, bucket):
        bucket.create_bucket(Bucket="ckpts")
        for f in tag.rglob("*"):
            if f.is_file():
                bucket.upload_file(str(f), "ckpts", f"run/global_step30/{f.relative_to(tag).as_posix()}")
        env = {
            **os.environ,
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": KEYS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": KEYS["aws_secret_access_key"],
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        work = tmp_path / "work"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "trainer.export",
                "--checkpoint",
                "s3://ckpts/run/global_step30",
                "--out",
                "s3://ckpts/hf/run",
                "--work",
                str(work),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        keys = {o["Key"] for o in bucket.list_objects_v2(Bucket="ckpts", Prefix="hf/run/")["Contents"]}
        assert {
            "hf/run/config.json",
            "hf/run/model.safetensors",
            "hf/run/README.md",
            "hf/run/generation_config.json",
        } <= keys
        back = tmp_path / "back"
        for key in keys:
            (back / key.removeprefix("hf/run/")).parent.mkdir(parents=True, exist_ok=True)
            bucket.download_file("ckpts", key, str(back / key.removeprefix("hf/run/")))
    assert not (work / "checkpoint").exists() and not (work / "hf").exists()
    transformers.GPTNeoXForCausalLM.from_pretrained(back)
    bad = subprocess.run(
        [sys.executable, "-m", "trainer.export", "--checkpoint", str(tag), "--out", "s3://ckpts/x"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0 and "give --work DIR" in bad.stderr.strip().splitlines()[-1]


RESUME_KEYS = {"train-iters": 12, "save-interval": 4, "lr-decay-iters": 12}


@pytest.fixture(scope="module")
def reference12(corpus, tmp_path_factory):
    """Losses of an uninterrupted 12-iteration run, for the resumed runs to match."""
    d = tmp_path_factory.mktemp("ref12")
    run(write_config(d / "ref.yml", corpus, save=str(d / "ref"), **RESUME_KEYS))
    return losses(d / "ref")


def test_kill_and_resume_reproduces_losses(corpus, tmp_path, reference12):
    save = tmp_path / "killed"
    cfg = write_config(tmp_path / "killed.yml", corpus, save=str(save), **RESUME_KEYS)
    proc = subprocess.Popen(trainer_cmd(cfg), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (save / "global_step4" / "complete.json").exists():
            assert proc.poll() is None, "the run ended before global_step4 was complete"
            assert time.monotonic() < deadline, "no complete global_step4 within 300 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # possibly inside global_step8's save: that one must not count
    finally:
        proc.wait()
    resumed_from = complete_steps(save)[-1]
    assert resumed_from in (4, 8) and not (save / "global_step12").exists()
    (save / "metrics.jsonl").unlink()
    run(cfg)
    got = losses(save)
    assert sorted(got) == list(range(resumed_from + 1, 13))
    for it, loss in got.items():
        assert loss == pytest.approx(reference12[it], rel=1e-5), it


def test_resume_skips_a_checkpoint_killed_before_it_was_complete(corpus, tmp_path, reference12):
    """DeepSpeed writes `latest` before the trainer finishes a checkpoint; a kill in that window
    once restarted from random weights at iteration 1 and overwrote global_step4..."""
    save = tmp_path / "ckpt"
    first = write_config(
        tmp_path / "first.yml", corpus, save=str(save), **RESUME_KEYS, **{"exit-interval": 8}
    )
    run(first)
    tag8 = save / "global_step8"
    assert (save / "global_step4").is_dir() and tag8.is_dir()
    # the kill window: DeepSpeed's files and `latest` are there, the trainer's last files are not
    (tag8 / "complete.json").unlink(missing_ok=True)
    (tag8 / "model_config.json").unlink()
    assert (save / "latest").read_text().strip() == "global_step8"
    shards = sorted(p.name for p in tag8.iterdir())
    (save / "metrics.jsonl").unlink()

    proc = run(write_config(tmp_path / "again.yml", corpus, save=str(save), **RESUME_KEYS))
    out = proc.stdout + proc.stderr
    got = losses(save)
    assert sorted(got) == list(range(5, 13))  # iteration numbers continue from the complete checkpoint
    for it, loss in got.items():
        assert loss == pytest.approx(reference12[it], rel=1e-5), it
    assert f"note: incomplete checkpoint {tag8}, the one 'latest' names, left as is" in out
    assert f"resumed from {save}/global_step4 at iteration 4" in out
    # the incomplete folder was moved aside (never deleted) before the new global_step8 took its name
    aside = list(save.glob("global_step8.incomplete-*"))
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == shards
    assert f"moved {tag8} aside to {aside[0]}" in out
    assert complete_steps(save) == [4, 8, 12]


def test_two_data_parallel_ranks_match_twice_the_accumulation(corpus, tmp_path):
    keys = {"train-iters": 4, "zero_optimization": {"stage": 1}}
    one = write_config(
        tmp_path / "one.yml", corpus, save=str(tmp_path / "one"), gradient_accumulation_steps=4, **keys
    )
    two = write_config(
        tmp_path / "two.yml", corpus, save=str(tmp_path / "two"), gradient_accumulation_steps=2, **keys
    )
    run(one)
    run(two, nproc=2)
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert a[4] < a[1]  # the weights did move, so equal losses mean equal updates
    for it in a:
        assert b[it] == pytest.approx(a[it], rel=1e-5), it


@pytest.mark.parametrize("stage", [0, 3])
def test_finetune_from_hf_weights_without_optimizer_state(corpus, tmp_path, stage):
    from trainer.checkpoint import load_hf
    from trainer.data import MicroBatches, build_splits
    from trainer.model import cross_entropy

    folder, _ = make_hf_model(tmp_path, use_parallel_residual=True, rotary_pct=0.25)
    cfg = write_config(
        tmp_path / "ft.yml",
        corpus,
        load=str(folder),
        save=str(tmp_path / "out"),
        **{"train-iters": 2, "zero_optimization": {"stage": stage}, "gradient_accumulation_steps": 1},
    )
    run(cfg)
    got = losses(tmp_path / "out")
    # iteration 1's loss is the pretrained model's loss on the first batch: the weights were loaded
    splits = build_splits(corpus, [0.9, 0.1, 0.0], 32, 7)
    tokens = next(MicroBatches(splits["train"], 4))
    with torch.no_grad():
        expected = cross_entropy(load_hf(folder)(tokens[:, :-1]), tokens[:, 1:]).item()
    assert got[1] == pytest.approx(expected, rel=1e-5)


def test_keep_last_n_checkpoints_counts_complete_ones_across_restarts(corpus, tmp_path):
    save = tmp_path / "ckpt"
    keys = {"save-interval": 2, "eval-interval": 100, "keep-last-n-checkpoints": 2, "save": str(save)}
    proc = run(write_config(tmp_path / "keep.yml", corpus, **{"train-iters": 6, **keys}))
    assert sorted(d.name for d in save.glob("global_step*")) == ["global_step4", "global_step6"]
    assert (save / "latest").read_text().strip() == "global_step6"
    assert f"removed checkpoint {save / 'global_step2'}" in proc.stdout + proc.stderr
    # a folder some killed run left half written: it neither counts towards the 2 nor goes
    (save / "global_step9").mkdir()
    (save / "global_step9" / "mp_rank_00_model_states.pt").write_bytes(b"partial")
    proc = run(write_config(tmp_path / "keep2.yml", corpus, **{"train-iters": 10, **keys}))
    out = proc.stdout + proc.stderr
    assert sorted(d.name for d in save.glob("global_step*")) == [
        "global_step10",
        "global_step8",
        "global_step9",
    ]
    assert f"resumed from {save}/global_step6 at iteration 6" in out
    assert f"incomplete checkpoint {save / 'global_step9'}, left as is" in out
    assert complete_steps(save) == [8, 10]
    assert (
        f"removed checkpoint {save / 'global_step4'}" in out
        and f"removed checkpoint {save / 'global_step6'}" in out
    )


def test_completed_checkpoints_are_mirrored_to_s3(corpus, tmp_path, s3):
    save = tmp_path / "ckpt"
    cfg = write_config(
        tmp_path / "m.yml", corpus, **{"train-iters": 4, "save-interval": 2, "save": str(save)}
    )
    proc = run(cfg, extra=("--mirror", "s3://ckpt/runs/one"))
    out = proc.stdout + proc.stderr
    for step in (2, 4):
        marker = json.loads((save / f"global_step{step}" / "complete.json").read_text())
        remote = objects(s3, f"runs/one/global_step{step}/")
        want = {f"runs/one/global_step{step}/{rel}": size for rel, size in marker["files"].items()}
        assert {k: v for k, v in remote.items() if not k.endswith("complete.json")} == want
        assert f"runs/one/global_step{step}/complete.json" in remote
        assert f"mirrored global_step{step} to s3://ckpt/runs/one/global_step{step}" in out
    assert s3.get_object(Bucket="ckpt", Key="runs/one/latest")["Body"].read() == b"global_step4"
    stats = json.loads((save / "train-stats.json").read_text())
    assert stats["mirror"] == {
        "url": "s3://ckpt/runs/one",
        "uploaded": ["global_step2", "global_step4"],
        "failed": [],
    }
    assert SECRET not in out


def test_a_mirror_failure_is_one_warning_and_training_finishes(corpus, tmp_path, s3):
    save = tmp_path / "ckpt"
    cfg = write_config(tmp_path / "m.yml", corpus, **{"train-iters": 2, "save": str(save)})
    proc = run(cfg, NEOX_CHECKPOINT_MIRROR="s3://no-such-bucket/x")
    out = proc.stdout + proc.stderr
    warnings = [line for line in out.splitlines() if "warning: mirroring" in line]
    assert len(warnings) == 1 and "global_step2" in warnings[0] and "training continues" in warnings[0]
    assert "done: 2 iterations" in out and complete_steps(save) == [2]
    assert SECRET not in out


def test_export_never_replaces_a_non_empty_folder(trained, tmp_path):
    d, _ = trained
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.export", "--checkpoint", str(d / "ckpt"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"trainer.export: error: --out {out}: folder exists and is not empty; name a new folder (nothing was written)"
    ]
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


def test_deepspeed_launcher_runs_the_same_training_as_torchrun(corpus, tmp_path):
    """The product's other plain launcher: `deepspeed --num_gpus 2 --module trainer.train` on CPU ranks."""
    launcher = Path(sys.executable).parent / "deepspeed"
    if not launcher.exists():
        pytest.fail("the deepspeed launcher is not installed beside this interpreter")
    keys = {"train-iters": 3, "zero_optimization": {"stage": 1}}
    ds = write_config(tmp_path / "ds.yml", corpus, save=str(tmp_path / "ds"), **keys)
    tr = write_config(tmp_path / "tr.yml", corpus, save=str(tmp_path / "tr"), **keys)
    cmd = [
        str(launcher),
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        "--module",
        "trainer.train",
        "--config",
        str(ds),
    ]
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 data-parallel ranks" in proc.stdout + proc.stderr
    run(tr, nproc=2)
    a, b = losses(tmp_path / "ds"), losses(tmp_path / "tr")
    assert sorted(a) == [1, 2, 3] and a == pytest.approx(b, rel=1e-6)
