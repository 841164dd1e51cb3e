"""`invoke local` end to end on the real Docker engine, with the smallest settings: every stage
runs in the project's images, the loss falls, the exported model loads in `transformers` and
generates, and a second run reuses fetch and preprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_sample_corpus_and_tokenizer_are_deterministic(tmp_path):
    from tokenizers import Tokenizer

    from jobs.sample import make_sample

    make_sample(tmp_path / "a", 50, 300, seed=3)
    make_sample(tmp_path / "b", 50, 300, seed=3)
    for name in ("corpus.jsonl", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    tok = Tokenizer.from_file(str(tmp_path / "a" / "tokenizer.json"))
    assert tok.token_to_id("<|endoftext|>") == 0
    assert tok.decode(tok.encode("3 plus 4 equals 7.").ids) == "3 plus 4 equals 7."
    assert len((tmp_path / "a" / "corpus.jsonl").read_text().splitlines()) == 50


def _invoke_local(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if os.environ.get("NEOX_BASE_IMAGE"):
        extra = (*extra, "--base-image", os.environ["NEOX_BASE_IMAGE"])
    cmd = [sys.executable, "-m", "invoke", "local", "--workdir", str(workdir), "--train-iters", "120", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000)


@pytest.mark.integration
@pytest.mark.slow
def test_invoke_local_runs_every_stage_and_reuses_on_rerun(tmp_path, docker_engine):
    workdir = tmp_path / "local"
    first = _invoke_local(workdir)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert set(summary["stages"]) == {
        "sample",
        "weights",
        "fetch",
        "preprocess",
        "train",
        "export",
        "generate",
        "train-lora",
        "export-lora",
    }
    assert not any(stage["reused"] for stage in summary["stages"].values())
    assert summary["final_loss"] < summary["first_loss"] - 1.0, summary
    assert (workdir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((workdir / "weights" / "model" / "fetch-manifest.json").read_text())
    assert any(f["path"].endswith("model.safetensors") for f in manifest["files"])

    # The exported folder is a real Hugging Face model: transformers loads it and generates.
    import torch
    from tokenizers import Tokenizer
    from transformers import GPTNeoXForCausalLM

    hf = Path(summary["hf_model"])
    model = GPTNeoXForCausalLM.from_pretrained(hf).eval()
    tok = Tokenizer.from_file(str(workdir / "sample" / "tokenizer.json"))
    ids = torch.tensor([tok.encode("12 plus 30 equals").ids])
    out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape[1] == ids.shape[1] + 4

    # The LoRA run from the same fetched weights: its loss fell too, and PEFT loads its adapters on them.
    lora = summary["lora"]
    assert lora["final_loss"] < lora["first_loss"] - 0.5, lora
    peft = pytest.importorskip("peft", reason="peft loads the exported adapters")
    base = GPTNeoXForCausalLM.from_pretrained(workdir / "weights" / "model").eval()
    tuned = peft.PeftModel.from_pretrained(base, lora["adapter"]).eval()
    assert tuned.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0).shape[1] == ids.shape[1] + 4

    # The same pipeline with the train stage as two trainer containers (the JobSet's environment):
    # fetch and preprocess are reused, train runs again as two nodes.
    second = _invoke_local(workdir, "--nodes", "2")
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    again = json.loads((workdir / "summary.json").read_text())
    assert again["stages"]["fetch"]["reused"] and again["stages"]["preprocess"]["reused"]
    assert not again["stages"]["train"]["reused"] and not again["stages"]["train-lora"]["reused"]
    assert "== fetch: unchanged, reused" in second.stdout
    assert "[train-node1] trainer.launch: node 1 of 2, 1 processes per node, world 2" in second.stdout
    assert again["final_loss"] < again["first_loss"] - 1.0, again

    third = _invoke_local(workdir, "--nodes", "2")
    assert third.returncode == 0, third.stdout[-4000:] + third.stderr[-2000:]
    assert all(
        stage["reused"] for stage in json.loads((workdir / "summary.json").read_text())["stages"].values()
    )


@pytest.mark.integration
def test_invoke_local_stops_on_a_failing_stage_and_records_nothing(tmp_path, docker_engine):
    workdir = tmp_path / "local"
    bad = tmp_path / "bad.yml"
    bad.write_text(
        (ROOT / "local" / "neox-tiny.yml").read_text().replace('"hidden-size": 128', '"hidden-size": "wide"')
    )
    proc = _invoke_local(workdir, "--config", str(bad))
    assert proc.returncode != 0
    assert "stage 'weights' failed" in proc.stderr + proc.stdout
    assert "hidden-size" in proc.stderr + proc.stdout
    state = json.loads((workdir / "state.json").read_text())
    assert "weights" not in state and "fetch" not in state
