"""NeoX YAML loading: the guide's file as is, merging, overrides, type errors, unimplemented keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.cli import JobError
from jobs.indexed_dataset import IndexedDatasetWriter, dtype_for_vocab
from trainer.config import load_config
from trainer.engine import ds_config
from trainer.train import main

SEED = Path("/work/shared/seed/determined-cluster.yml")
if not SEED.exists():  # CI checkouts keep the seed beside the repository
    SEED = Path(__file__).resolve().parents[3] / "shared" / "seed" / "determined-cluster.yml"


@pytest.mark.skipif(not SEED.exists(), reason="the guide's determined-cluster.yml is not beside the checkout")
def test_guide_config_loads_as_is():
    cfg = load_config([SEED])
    assert cfg.model.num_layers == 44 and cfg.model.hidden_size == 6144 and cfg.model.rotary_pct == 0.25
    assert cfg.model.gpt_j_residual and cfg.model.no_weight_tying and cfg.model.bias_gelu_fusion
    mcfg = cfg.model_config(vocab_size=cfg.padded_vocab(50277))
    assert mcfg.vocab_size == 50432 and mcfg.activation == "gelu_tanh" and not mcfg.tied_embeddings
    assert cfg.optimizer.lr == pytest.approx(0.97e-4) and cfg.schedule.min_lr == pytest.approx(0.97e-5)
    assert cfg.precision.name == "fp16" and cfg.train.train_iters == 150000
    # model/pipe parallel 2 x 4 is mapped to ZeRO-3 and said so
    assert cfg.zero_stage == 3
    report = "\n".join(cfg.report())
    assert "ZeRO stage 3" in report and "instead of stage 1" in report
    assert "scaled_upper_triang_masked_softmax_fusion" in report
    ds = ds_config(cfg, world_size=96)
    assert ds["train_batch_size"] == 4 * 32 * 96 and ds["fp16"]["initial_scale_power"] == 12
    assert "fp16" not in ds["fp16"]  # the guide's stray key does not reach DeepSpeed


def test_files_merge_in_order_and_overrides_win(tmp_path):
    a = tmp_path / "a.yml"
    a.write_text("num-layers: 4\nhidden_size: 128\nseq-length: 64\nbogus-key: 1\n")
    b = tmp_path / "b.yml"
    b.write_text("num_layers: 6\noptimizer: {type: AdamW, params: {lr: 0.001}}\n")
    cfg = load_config([a, b], ["hidden-size=256", "optimizer.params.lr=1e-5", "train_iters=7"])
    assert cfg.model.num_layers == 6 and cfg.model.hidden_size == 256
    assert cfg.optimizer.lr == pytest.approx(1e-5) and cfg.schedule.lr_decay_iters == 7
    assert cfg.unimplemented == {"bogus_key": 1}
    assert any("bogus_key" in line for line in cfg.report())


@pytest.mark.parametrize(
    "text, message",
    [
        ("seq-length: abc\n", "config key 'seq-length' must be an integer, got 'abc'"),
        ("no-weight-tying: 3\n", "config key 'no-weight-tying' must be true or false"),
        ("seq-length: 4096\nmax-position-embeddings: 2048\n", "'seq-length' 4096 exceeds 'max-position-embeddings' 2048"),
        ("optimizer: {type: SGD, params: {lr: 0.1}}\n", "'optimizer.type': 'SGD' is not implemented"),
        ("split: 'a,b'\n", "config key 'split'"),
        ("lr-decay-style: exponential\n", "'lr-decay-style'"),
        ("zero_optimization: {stage: 5}\n", "'zero_optimization.stage' must be 0, 1, 2 or 3"),
        ("{a: [1, 2\n", "not valid YAML"),
        ("keep-last-n-checkpoints: 0\n", "config key 'keep-last-n-checkpoints' must be >= 1, got 0"),
    ],
)
def test_bad_values_give_one_line(tmp_path, text, message):
    f = tmp_path / "bad.yml"
    f.write_text(text)
    with pytest.raises(JobError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        load_config([f])


def test_cli_reports_missing_dataset_prefix(tmp_path, capsys):
    f = tmp_path / "c.yml"
    f.write_text(f"data-path: {tmp_path}/nope_text_document\npadded-vocab-size: 64\nseq-length: 16\n")
    assert main(["--config", str(f)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope_text_document" in err[0] and "not found" in err[0]


def test_cli_reports_missing_weights(tmp_path, capsys):
    data = tmp_path / "d_text_document"
    with IndexedDatasetWriter(data, dtype_for_vocab(64)) as w:
        w.add_document(list(range(64)) * 4)
    f = tmp_path / "c.yml"
    f.write_text(f"data-path: {data}\npadded-vocab-size: 64\nseq-length: 16\nsplit: 1,0,0\nload: {tmp_path}/weights\n")
    assert main(["--config", str(f)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"trainer.train: error: load {tmp_path}/weights: does not exist"]
