"""LoRA fine-tuning end to end on CPU (real DeepSpeed, gloo; PEFT and transformers as the reference):
the frozen base stays bit-identical while the adapters train and the loss falls, checkpoints hold only
the adapters, kill + resume reproduces the losses, every start point and launcher, data parallel at
ZeRO 0 and 2, the PEFT export loads with PEFT's logits equal to ours, --merge equals base + adapters,
and bad settings are one line before any heavy work."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.trainer import (
    clean_env,
    complete_steps,
    env,
    free_port,
    losses,
    make_hf_model,
    run,
    trainer_cmd,
    write_config,
    write_slim,
)

LORA = {"rank": 4, "alpha": 8}
LR = {"optimizer": {"type": "Adam", "params": {"lr": 0.01, "betas": [0.9, 0.95], "eps": 1.0e-8}}}
HF_ARCH = {"use_parallel_residual": True, "rotary_pct": 0.25}


def adapter_count(rank: int, hidden: int = 64, ffn: int = 256, layers: int = 2) -> int:
    # rank x (in + out) for query_key_value, dense, dense_h_to_4h, dense_4h_to_h
    return layers * rank * ((hidden + 3 * hidden) + (hidden + hidden) + (hidden + ffn) + (ffn + hidden))


def first_batch_loss(model, corpus_prefix: str, accumulation: int = 2) -> float:
    """The model's loss on iteration 1's micro-batches (BASE accumulates 2)."""
    from trainer.data import MicroBatches, build_splits
    from trainer.model import cross_entropy

    loader = MicroBatches(build_splits(corpus_prefix, [0.9, 0.1, 0.0], 32, 7)["train"], 4)
    with torch.no_grad():
        return float(np.mean([cross_entropy(model(t[:, :-1]), t[:, 1:]).item()
                              for t in (next(loader) for _ in range(accumulation))]))  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder, _ = make_hf_model(tmp_path_factory.mktemp("base"), **HF_ARCH)
    return folder


@pytest.fixture(scope="module")
def trained(corpus, base, tmp_path_factory):
    d = tmp_path_factory.mktemp("lora")
    cfg = write_config(d / "run.yml", corpus, load=str(base), save=str(d / "ckpt"), lora=LORA, **LR,
                       **{"train-iters": 30, "save-interval": 10, "eval-interval": 15})  # fmt: skip
    proc = run(cfg)
    return d, proc


def test_adapters_train_and_the_loss_falls_on_a_frozen_base(trained, base, corpus):
    from trainer.checkpoint import load_hf

    d, proc = trained
    got = losses(d / "ckpt")
    assert sorted(got) == list(range(1, 31))
    # the adapters start at zero: iteration 1 is the base model's own loss
    assert got[1] == pytest.approx(first_batch_loss(load_hf(base), corpus), rel=1e-5)
    assert np.mean([got[i] for i in range(26, 31)]) < got[1] - 0.5
    stats = json.loads((d / "ckpt" / "train-stats.json").read_text())["lora"]
    assert stats["base_unchanged"] and stats["trainable_parameters"] == adapter_count(4)
    assert stats["base"]["kind"] == "Hugging Face folder"
    assert "+ LoRA rank 4 alpha 8 on 8 linear layers" in proc.stdout


def test_a_lora_checkpoint_holds_the_adapters_and_training_state_only(trained, base):
    d, _ = trained
    tag = d / "ckpt" / "global_step30"
    marker = json.loads((tag / "complete.json").read_text())
    assert "lora.json" in marker["files"]  # written before the marker, so completeness covers it
    module = torch.load(tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    info = json.loads((tag / "lora.json").read_text())
    assert sorted(module) == sorted(info["trainable"])
    assert all(".lora_A." in k or ".lora_B." in k for k in module) and len(module) == 16
    assert sum(t.numel() for t in module.values()) == adapter_count(4)
    base_bytes = (base / "model.safetensors").stat().st_size
    ckpt_bytes = sum(p.stat().st_size for p in tag.iterdir())
    assert ckpt_bytes < base_bytes / 2, (ckpt_bytes, base_bytes)  # adapters + Adam moments, no base


DRIVER = r"""
import json, sys, torch
from trainer.checkpoint import load_hf
from trainer.config import load_config
from trainer.data import MicroBatches, build_splits
from trainer.engine import init_distributed, leave_distributed, lm_loss, parallelize
from trainer.start import build_model

cfg = load_config([sys.argv[1]])
model, _ = build_model(cfg, None)
init_distributed()
engine = parallelize(model, cfg)
trainable = {n: p.detach().clone() for n, p in engine.module.named_parameters() if p.requires_grad}
loader = MicroBatches(build_splits(cfg.data.data_path, [0.9, 0.1, 0.0], 32, 7)["train"], 4)
seen = []
batch = next(loader)  # one batch over and over: its loss must fall
for _ in range(8):
    loss = lm_loss(engine, batch)
    engine.backward(loss)
    engine.step()
    seen.append(loss.item())
dtype = engine.module.embed_in.weight.dtype
reference = {k: v.to(dtype) for k, v in load_hf(cfg.train.load).state_dict().items()}
frozen = {n: p for n, p in engine.module.named_parameters() if not p.requires_grad}
opt = engine.optimizer
masters = getattr(opt, "single_partition_of_fp32_groups", None) or [p for g in opt.param_groups for p in g["params"]]
print(json.dumps({
    "dtype": str(dtype),
    "frozen": len(frozen),
    "frozen_identical": all(torch.equal(p, reference[n]) for n, p in frozen.items()),
    "adapters_changed": all(not torch.equal(p, trainable[n]) for n, p in engine.module.named_parameters()
                            if p.requires_grad),
    "optimizer_numel": sum(p.numel() for p in masters),
    "optimizer_dtypes": sorted({str(p.dtype) for p in masters}),
    "losses": seen,
}))
leave_distributed()
"""


@pytest.mark.parametrize(("precision", "stage"), [("fp32", 0), ("bfloat16", 1), ("bfloat16", 2)])
def test_the_frozen_base_is_bit_identical_after_training_and_only_adapters_have_fp32_masters(
    corpus,
    base,
    tmp_path,
    precision,
    stage,
):
    cfg = write_config(tmp_path / "d.yml", corpus, load=str(base), lora=LORA, precision=precision, **LR,
                       zero_optimization={"stage": stage}, gradient_accumulation_steps=1)  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(cfg)], env=env(), capture_output=True, text=True,
                          timeout=600, cwd=Path(__file__).parents[2])  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["dtype"] == ("torch.float32" if precision == "fp32" else "torch.bfloat16")
    assert got["frozen"] == 28 and got["frozen_identical"]  # every base tensor, bit for bit
    assert got["adapters_changed"]
    assert got["optimizer_numel"] == adapter_count(4) and got["optimizer_dtypes"] == ["torch.float32"]
    assert np.mean(got["losses"][-3:]) < got["losses"][0]


def ours_with_adapters(tag: Path):
    """Our model: the checkpoint's base with its trained adapters (trainer.lora, no DeepSpeed)."""
    from trainer import lora

    info, state = lora.trained_state(tag.parent, tag.name)
    return lora.adapted_base(tag.parent, tag.name, info, state).eval()


def export(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.export", *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


IDS = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(3))


def test_peft_loads_the_exported_adapters_and_its_logits_equal_ours(trained, base, tmp_path):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    d, _ = trained
    out = tmp_path / "adapters"
    proc = export("--checkpoint", str(d / "ckpt"), "--out", str(out))
    assert "PEFT LoRA adapters" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    keys = set(load_file(out / "adapter_model.safetensors"))
    assert "base_model.model.gpt_neox.layers.1.attention.query_key_value.lora_A.weight" in keys
    assert "base_model.model.gpt_neox.layers.0.mlp.dense_4h_to_h.lora_B.weight" in keys and len(keys) == 16
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base.resolve()) and config["r"] == 4

    hf = transformers.GPTNeoXForCausalLM.from_pretrained(base)
    peft_model = peft.PeftModel.from_pretrained(hf, out).eval()
    ours = ours_with_adapters(d / "ckpt" / "global_step30")
    plain = transformers.GPTNeoXForCausalLM.from_pretrained(base).eval()
    with torch.no_grad():
        theirs = peft_model(IDS).logits
        torch.testing.assert_close(theirs, ours(IDS), rtol=1e-4, atol=1e-4)
        assert (theirs - plain(IDS).logits).abs().max() > 1e-2  # the adapters do change the output


def test_merged_export_gives_the_logits_of_base_plus_adapters(trained, tmp_path):
    transformers = pytest.importorskip("transformers")
    d, _ = trained
    out = tmp_path / "merged"
    proc = export("--checkpoint", str(d / "ckpt"), "--out", str(out), "--merge")
    assert "merged Hugging Face weights" in proc.stdout
    merged = transformers.GPTNeoXForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in k for k in merged.state_dict())
    ours = ours_with_adapters(d / "ckpt" / "global_step30")
    with torch.no_grad():
        torch.testing.assert_close(merged(IDS).logits, ours(IDS), rtol=1e-4, atol=1e-4)


def test_trained_embeddings_and_output_layer_export_as_peft_modules_to_save(corpus, base, tmp_path):
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    lora = {
        **LORA,
        "train-embeddings": True,
        "train-output-layer": True,
        "target-modules": ["query_key_value"],
    }
    cfg = write_config(tmp_path / "e.yml", corpus, load=str(base), save=str(tmp_path / "ckpt"), lora=lora, **LR,
                       **{"train-iters": 4, "zero_optimization": {"stage": 2}})  # fmt: skip
    run(cfg)
    stats = json.loads((tmp_path / "ckpt" / "train-stats.json").read_text())["lora"]
    assert stats["trainable_parameters"] == 2 * 4 * (64 + 192) + 2 * 512 * 64
    out = tmp_path / "adapters"
    export("--checkpoint", str(tmp_path / "ckpt"), "--out", str(out))
    assert sorted(json.loads((out / "adapter_config.json").read_text())["modules_to_save"]) == [
        "embed_in",
        "lm_head",
    ]
    peft_model = peft.PeftModel.from_pretrained(
        transformers.GPTNeoXForCausalLM.from_pretrained(base), out
    ).eval()
    ours = ours_with_adapters(tmp_path / "ckpt" / "global_step4")
    with torch.no_grad():
        torch.testing.assert_close(peft_model(IDS).logits, ours(IDS), rtol=1e-4, atol=1e-4)


RESUME = {"train-iters": 12, "save-interval": 4, "lr-decay-iters": 12}


def test_kill_and_resume_reproduce_the_losses(corpus, base, tmp_path):
    ref = write_config(tmp_path / "ref.yml", corpus, load=str(base), save=str(tmp_path / "ref"), lora=LORA, **LR,
                       **RESUME)  # fmt: skip
    run(ref)
    reference = losses(tmp_path / "ref")
    save = tmp_path / "killed"
    cfg = write_config(
        tmp_path / "killed.yml", corpus, load=str(base), save=str(save), lora=LORA, **LR, **RESUME
    )
    proc = subprocess.Popen(trainer_cmd(cfg), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (save / "global_step4" / "complete.json").exists():
            assert proc.poll() is None, "the run ended before global_step4 was complete"
            assert time.monotonic() < deadline, "no complete global_step4 within 300 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    resumed_from = complete_steps(save)[-1]
    assert resumed_from in (4, 8) and not (save / "global_step12").exists()
    (save / "metrics.jsonl").unlink()
    out = run(cfg).stdout
    assert f"resumed from {save}/global_step{resumed_from} at iteration {resumed_from}" in out
    got = losses(save)
    assert sorted(got) == list(range(resumed_from + 1, 13))
    for it, loss in got.items():
        assert loss == pytest.approx(reference[it], rel=1e-5), it


@pytest.mark.parametrize("stage", [0, 2])
def test_two_data_parallel_ranks_match_twice_the_accumulation(corpus, base, tmp_path, stage):
    keys = {"train-iters": 4, "zero_optimization": {"stage": stage}, "lora": LORA, **LR, "load": str(base)}
    one = write_config(
        tmp_path / "one.yml", corpus, save=str(tmp_path / "one"), gradient_accumulation_steps=4, **keys
    )
    two = write_config(
        tmp_path / "two.yml", corpus, save=str(tmp_path / "two"), gradient_accumulation_steps=2, **keys
    )
    run(one)
    run(two, nproc=2)
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4] and a[4] < a[1]
    for it in a:
        assert b[it] == pytest.approx(a[it], rel=1e-5), it
    assert json.loads((tmp_path / "two" / "train-stats.json").read_text())["lora"]["base_unchanged"]


def test_every_start_point_is_a_base_slim_and_our_own_full_checkpoint(corpus, tmp_path):
    """The slim 20B layout (tensor parallel 2) and a full checkpoint of ours serve as the frozen base; the
    first loss is the base's own, and the export's PEFT config names the base --base-out wrote."""
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from trainer import checkpoint
    from trainer.config import load_config

    _, hf = make_hf_model(tmp_path, **HF_ARCH)
    slim = write_slim(hf, tmp_path / "slim")
    cfg = write_config(tmp_path / "slim.yml", corpus, load=str(slim), save=str(tmp_path / "on_slim"), lora=LORA,
                       **LR, **{"train-iters": 2})  # fmt: skip
    slim_model, _ = checkpoint.load_pretrained(slim, load_config([str(cfg)]).model_config(vocab_size=1))
    run(cfg)
    assert losses(tmp_path / "on_slim")[1] == pytest.approx(first_batch_loss(slim_model, corpus), rel=1e-5)

    # a full fine-tuning run of ours, then adapters on its weights
    full = write_config(tmp_path / "full.yml", corpus, load=str(slim), save=str(tmp_path / "full"),
                        **{"train-iters": 2})  # fmt: skip
    run(full)
    cfg = write_config(tmp_path / "ours.yml", corpus, load=str(tmp_path / "full"), save=str(tmp_path / "on_ours"),
                       lora=LORA, **LR, **{"train-iters": 3})  # fmt: skip
    proc = run(cfg)
    assert "full checkpoint of ours" in proc.stdout and "resumed" not in proc.stdout
    from trainer import lora

    full_model, _ = lora.load_base(str(tmp_path / "full"), None)
    assert losses(tmp_path / "on_ours")[1] == pytest.approx(first_batch_loss(full_model, corpus), rel=1e-5)

    adapters, base_hf = tmp_path / "adapters", tmp_path / "base_hf"
    proc = export(
        "--checkpoint", str(tmp_path / "on_ours"), "--out", str(adapters), "--base-out", str(base_hf)
    )
    config = json.loads((adapters / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base_hf.resolve())
    peft_model = peft.PeftModel.from_pretrained(
        transformers.GPTNeoXForCausalLM.from_pretrained(base_hf), adapters
    )
    ours = ours_with_adapters(tmp_path / "on_ours" / "global_step3")
    with torch.no_grad():
        torch.testing.assert_close(peft_model.eval()(IDS).logits, ours(IDS), rtol=1e-4, atol=1e-4)


def test_trainer_launch_runs_a_lora_run(corpus, base, tmp_path):
    cfg = write_config(tmp_path / "l.yml", corpus, load=str(base), save=str(tmp_path / "ckpt"), lora=LORA, **LR,
                       **{"train-iters": 2})  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "trainer.launch", "--", "--config", str(cfg)],
                          env=clean_env(MASTER_PORT=str(free_port())), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert complete_steps(tmp_path / "ckpt") == [2]
    assert (tmp_path / "ckpt" / "global_step2" / "lora.json").is_file()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lora": {**LORA, "target-modules": ["q_proj"]}},
         "config key 'lora.target-modules': 'q_proj' is not a linear layer of GPT-NeoX"),
        ({"lora": {"rank": 0}}, "config key 'lora.rank' must be a positive integer, got 0"),
        ({"lora": {"rank": -4}}, "config key 'lora.rank' must be a positive integer, got -4"),
        ({"lora": {**LORA, "ranks": 8}}, "config key 'lora.ranks' is not known"),
        ({"lora": LORA, "zero_optimization": {"stage": 3}}, "config key 'lora' cannot be combined with ZeRO stage 3"),
        ({"lora": LORA, "model-parallel-size": 2},
         "config key 'lora' cannot be combined with ZeRO stage 3 (model-parallel-size"),
        ({"lora": LORA, "precision": "fp16"}, "config key 'lora' cannot be combined with fp16"),
        ({"lora": LORA, "fp8": True}, "config key 'lora' cannot be combined with 'fp8'"),
        ({"lora": LORA, "load": None}, "config key 'lora' needs 'load'"),
    ],
)  # fmt: skip
def test_bad_lora_settings_are_one_line_before_any_heavy_work(
    corpus, base, tmp_path, capsys, change, message
):
    from trainer.train import main

    keys = {"load": str(base), "save": str(tmp_path / "ckpt"), **change}
    cfg = write_config(tmp_path / "bad.yml", corpus, **{k: v for k, v in keys.items() if v is not None})
    assert main(["--config", str(cfg)]) == 1
    out, err = capsys.readouterr()
    assert err.startswith(f"trainer.train: error: {message}") and err.count("\n") == 1, err
    assert "DeepSpeed" not in out and "model:" not in out  # refused before weights or the process group
    assert not (tmp_path / "ckpt").exists()


def test_resuming_with_other_lora_settings_or_into_a_full_run_is_refused(
    trained, corpus, base, tmp_path, capsys
):
    from trainer.train import main

    d, _ = trained
    cfg = write_config(
        tmp_path / "r.yml", corpus, load=str(base), save=str(d / "ckpt"), lora={"rank": 8}, **LR
    )
    assert main(["--config", str(cfg)]) == 1
    assert "its adapters have lora.rank 4, the config says 8" in capsys.readouterr().err
    run(write_config(tmp_path / "full.yml", corpus, save=str(tmp_path / "full"), **{"train-iters": 1}))
    cfg = write_config(tmp_path / "s.yml", corpus, load=str(base), save=str(tmp_path / "full"), lora=LORA)
    assert main(["--config", str(cfg)]) == 1
    assert (
        "holds global_step1, a full checkpoint (no lora.json), not LoRA adapters" in capsys.readouterr().err
    )


def test_the_lora_benchmark_runs_ours_and_peft_side_by_side_on_a_tiny_shape():
    pytest.importorskip("peft")
    script = Path(__file__).parents[2] / "benchmarks" / "lora_bench.py"
    args = [
        "--preset",
        "tiny",
        "--seq",
        "32",
        "--micro-batch",
        "2",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--rank",
        "4",
    ]
    proc = subprocess.run(
        [sys.executable, str(script), *args], env=env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    for impl in ("ours", "peft"):
        line = next(x for x in lines if x.startswith(f"lora_bench: {impl} "))
        assert "tokens/s" in line and f"{adapter_count(4):,} trainable parameters" in line
    assert any(x.startswith("lora_bench: ours / peft: ") for x in lines)


@pytest.mark.parametrize("stage", [0, 1])
def test_a_bf16_run_exports_the_fp32_master_adapters(corpus, base, tmp_path, stage):
    from safetensors.torch import load_file

    cfg = write_config(tmp_path / "bf.yml", corpus, load=str(base), save=str(tmp_path / "ckpt"), lora=LORA, **LR,
                       precision="bfloat16", zero_optimization={"stage": stage}, **{"train-iters": 3})  # fmt: skip
    run(cfg)
    tag = tmp_path / "ckpt" / "global_step3"
    module = torch.load(tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    assert {t.dtype for t in module.values()} == {
        torch.bfloat16
    }  # the adapters as the bf16 forward used them
    export("--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "adapters"))
    tensors = load_file(tmp_path / "adapters" / "adapter_model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    for name, t in module.items():
        exported = tensors[f"base_model.model.gpt_neox.{name}"]
        torch.testing.assert_close(exported.bfloat16(), t, rtol=0.02, atol=1e-3)  # the same adapters ...
    # ... from the fp32 master copies, not the rounded module copies
    assert any((t != t.bfloat16().float()).any() for t in tensors.values())


def test_finetune_from_a_lora_checkpoint_takes_its_adapters_and_base_with_a_fresh_optimizer(
    trained, corpus, tmp_path
):
    d, _ = trained
    cfg = write_config(tmp_path / "ft.yml", corpus, load=str(d / "ckpt"), save=str(tmp_path / "ft"), lora=LORA, **LR,
                       finetune=True, **{"train-iters": 2})  # fmt: skip
    out = run(cfg).stdout
    assert f"resumed from {d / 'ckpt'}/global_step30 at iteration 0 (weights only)" in out
    # the base came from the checkpoint's lora.json, the adapters from its iteration 30
    assert losses(tmp_path / "ft")[1] == pytest.approx(
        first_batch_loss(ours_with_adapters(d / "ckpt" / "global_step30"), corpus), rel=1e-5
    )


def test_a_bf16_zero2_run_stopped_and_restarted_gives_the_uninterrupted_losses(corpus, base, tmp_path):
    keys = {"load": str(base), "lora": LORA, "precision": "bfloat16", "zero_optimization": {"stage": 2}, **LR,
            "train-iters": 6, "save-interval": 3, "lr-decay-iters": 6}  # fmt: skip
    run(write_config(tmp_path / "ref.yml", corpus, save=str(tmp_path / "ref"), **keys))
    stopped = write_config(
        tmp_path / "stop.yml", corpus, save=str(tmp_path / "stop"), **keys, **{"exit-interval": 3}
    )
    run(stopped)
    assert complete_steps(tmp_path / "stop") == [3]
    run(stopped)  # resumes at 3, runs to 6
    ref, got = losses(tmp_path / "ref"), losses(tmp_path / "stop")
    assert sorted(got) == list(range(1, 7))
    for it in range(4, 7):
        assert got[it] == pytest.approx(ref[it], rel=1e-5), it


def test_the_lora_section_reads_like_the_rest_of_the_config(corpus, tmp_path):
    from trainer.config import load_config

    path = write_config(
        tmp_path / "c.yml", corpus, lora={"rank": 8, "target_modules": "dense", "train-embeddings": True}
    )
    cfg = load_config([str(path)], ["lora.alpha=4", "lora.dropout=0.1"])  # dotted overrides reach into it
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.scaling) == (8, 4.0, 0.1, 0.5)
    assert cfg.lora.target_modules == ["dense"] and cfg.lora.train_embeddings
    assert cfg.to_dict()["lora"]["target_modules"] == ["dense"]  # saved with every checkpoint
    assert "lora" not in cfg.unimplemented
    assert load_config([str(path)], ["lora.enabled=false"]).lora is None
    assert load_config([str(write_config(tmp_path / "n.yml", corpus))]).lora is None
    default = load_config([str(write_config(tmp_path / "d.yml", corpus, lora={}))]).lora
    assert default.target_modules == ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
    assert (default.rank, default.alpha, default.dropout) == (16, 32.0, 0.0)


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_a_quantized_base_trains_resumes_exactly_and_exports_peft_adapters(corpus, base, tmp_path, kind):
    """QLoRA: bitsandbytes' nf4 / int8 copies of the blocks' frozen linear weights (on the CPU here)."""
    pytest.importorskip("bitsandbytes")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    keys = {"load": str(base), "lora": {**LORA, "quantize-base": kind}, **LR, "train-iters": 6, "save-interval": 3,
            "lr-decay-iters": 6}  # fmt: skip
    proc = run(write_config(tmp_path / "ref.yml", corpus, save=str(tmp_path / "ref"), **keys))
    assert f"(frozen, 8 linear layers in {kind})" in proc.stdout
    ref = losses(tmp_path / "ref")
    stats = json.loads((tmp_path / "ref" / "train-stats.json").read_text())["lora"]
    assert stats["base_unchanged"] and stats["trainable_parameters"] == adapter_count(4)
    assert np.mean([ref[5], ref[6]]) < ref[1]
    # quantization changes the base's output a little, not a lot
    from trainer.checkpoint import load_hf

    assert ref[1] == pytest.approx(first_batch_loss(load_hf(base), corpus), rel=0.02)
    stopped = write_config(
        tmp_path / "stop.yml", corpus, save=str(tmp_path / "stop"), **keys, **{"exit-interval": 3}
    )
    run(stopped)
    run(stopped)
    got = losses(tmp_path / "stop")
    for it in range(1, 7):
        assert got[it] == pytest.approx(ref[it], rel=1e-5), it
    out = tmp_path / "adapters"
    export("--checkpoint", str(tmp_path / "ref"), "--out", str(out))
    peft_model = peft.PeftModel.from_pretrained(
        transformers.GPTNeoXForCausalLM.from_pretrained(base), out
    ).eval()
    ours = ours_with_adapters(
        tmp_path / "ref" / "global_step6"
    )  # the same adapters on the full-precision base
    with torch.no_grad():
        torch.testing.assert_close(peft_model(IDS).logits, ours(IDS), rtol=1e-4, atol=1e-4)


def test_an_unknown_quantization_is_one_line(corpus, base, tmp_path, capsys):
    from trainer.train import main

    cfg = write_config(tmp_path / "q.yml", corpus, load=str(base), lora={**LORA, "quantize-base": "fp4"})
    assert main(["--config", str(cfg)]) == 1
    assert capsys.readouterr().err.startswith(
        "trainer.train: error: config key 'lora.quantize-base' must be one of nf4, int8 (or null), got 'fp4'"
    )
