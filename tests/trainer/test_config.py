"""NeoX YAML loading: the guide's file as is, merging, overrides, type and range errors, unknown and
unimplemented keys, the dataset's token ids against the vocabulary."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from jobs.cli import JobError
from jobs.indexed_dataset import IndexedDatasetWriter, dtype_for_vocab
from tests.support.trainer import SEED
from trainer.config import GPT_NEOX_KEYS, SECTIONS, load_config
from trainer.engine import ds_config
from trainer.train import main

# The guide's file as the repository carries it (the same bytes as ../shared/seed's copy).


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
    a.write_text("num-layers: 4\nhidden_size: 128\nseq-length: 64\nuse-wandb: true\n")
    b = tmp_path / "b.yml"
    b.write_text("num_layers: 6\noptimizer: {type: AdamW, params: {lr: 0.001}}\n")
    cfg = load_config([a, b], ["hidden-size=256", "optimizer.params.lr=1e-5", "train_iters=7"])
    assert cfg.model.num_layers == 6 and cfg.model.hidden_size == 256
    assert cfg.optimizer.lr == pytest.approx(1e-5) and cfg.schedule.lr_decay_iters == 7
    assert cfg.unimplemented == {"use_wandb": True}  # gpt-neox knows it, we do not implement it: a warning
    assert any("not implemented (ignored): use_wandb" in line for line in cfg.report())


@pytest.mark.parametrize(
    "text, message",
    [
        ("seq-length: abc\n", "config key 'seq-length' must be an integer, got 'abc'"),
        ("no-weight-tying: 3\n", "config key 'no-weight-tying' must be true or false"),
        (
            "seq-length: 4096\nmax-position-embeddings: 2048\n",
            "'seq-length' 4096 exceeds 'max-position-embeddings' 2048",
        ),
        ("optimizer: {type: SGD, params: {lr: 0.1}}\n", "'optimizer.type': 'SGD' is not implemented"),
        ("split: 'a,b'\n", "config key 'split'"),
        ("lr-decay-style: exponential\n", "'lr-decay-style'"),
        ("zero_optimization: {stage: 5}\n", "'zero_optimization.stage' must be 0, 1, 2 or 3"),
        ("{a: [1, 2\n", "not valid YAML"),
        ("keep-last-n-checkpoints: 0\n", "config key 'keep-last-n-checkpoints' must be >= 1, got 0"),
        (
            "optimizer: {type: Adam, params: {lr: -0.001}}\n",
            "config key 'optimizer.params.lr' must be >= 0, got -0.001",
        ),
        ("min-lr: -1.0e-5\n", "config key 'min-lr' must be >= 0, got -1e-05"),
        (
            "optimizer: {type: Adam, params: {lr: 1.0e-5}}\nmin_lr: 1.0e-4\n",
            "config key 'min-lr' 0.0001 must not exceed 'optimizer.params.lr' 1e-05",
        ),
        (
            "hidden-size: 100\nnum-attention-heads: 3\n",
            "config key 'num-attention-heads' 3 must divide 'hidden-size' 100",
        ),
        ("hidden-dropout: 1.0\n", "config key 'hidden-dropout' must be in [0, 1), got 1.0"),
        ("attention-dropout: -0.1\n", "config key 'attention-dropout' must be in [0, 1), got -0.1"),
        ("train-iters: 0\n", "config key 'train-iters' must be >= 1, got 0"),
        ("save-interval: 0\n", "config key 'save-interval' must be >= 1, got 0"),
        ("eval-interval: -5\n", "config key 'eval-interval' must be >= 1, got -5"),
        ("log-interval: 0\n", "config key 'log-interval' must be >= 1, got 0"),
        (
            "train_micro_batch_size_per_gpu: 0\n",
            "config key 'train-micro-batch-size-per-gpu' must be >= 1, got 0",
        ),
        (
            "gradient_accumulation_steps: -1\n",
            "config key 'gradient-accumulation-steps' must be >= 1, got -1",
        ),
        ("warmup: 1.5\n", "config key 'warmup' must be a fraction in [0, 1], got 1.5"),
    ],
)
def test_bad_values_give_one_line(tmp_path, text, message):
    f = tmp_path / "bad.yml"
    f.write_text(text)
    with pytest.raises(
        JobError,
        match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.").replace("[", r"\["),
    ):
        load_config([f])


def test_range_errors_are_reported_all_at_once(tmp_path):
    f = tmp_path / "bad.yml"
    f.write_text("train-iters: 0\nhidden-dropout: 2\nmin-lr: -1\nnum-attention-heads: 5\n")
    with pytest.raises(JobError) as err:
        load_config([f])
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("4 config errors: ")
    for key in ("'train-iters'", "'hidden-dropout'", "'min-lr'", "'num-attention-heads' 5 must divide"):
        assert key in msg


def test_type_errors_in_several_sections_are_reported_all_at_once(tmp_path):
    f = tmp_path / "bad.yml"
    f.write_text("seq-length: abc\nno-weight-tying: 3\nlr-decay-iters: soon\nseed: 1.5\nmin-lr: 1.0e-5\n")
    with pytest.raises(JobError) as err:
        load_config([f])
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("4 config errors: "), msg
    assert "config key 'seq-length' must be an integer, got 'abc' (str)" in msg
    assert "config key 'no-weight-tying' must be true or false, got 3 (int)" in msg
    assert "config key 'lr-decay-iters' must be an integer or null, got 'soon' (str)" in msg
    assert "config key 'seed' must be an integer, got 1.5 (float)" in msg
    assert "min-lr" not in msg  # `1.0e-5`, a string to PyYAML, is the number it spells


def test_misspelt_key_is_an_error_naming_the_closest_key(tmp_path):
    f = tmp_path / "typo.yml"
    f.write_text("train_itres: 20\n")  # once ignored: the run went on for the default 1000 iterations
    with pytest.raises(
        JobError,
        match=r"config key 'train_itres' in .*typo\.yml is not known to trainer\.train "
        r"or gpt-neox \(did you mean 'train_iters'\?\)",
    ):
        load_config([f])
    with pytest.raises(JobError, match=r"'eval-intervall' in --override \(did you mean 'eval-interval'\?\)"):
        load_config([f], ["eval-intervall=5"])


def test_every_unknown_key_is_named_in_one_line(tmp_path):
    f = tmp_path / "typo.yml"
    f.write_text("hiden-size: 64\nbogus: 1\nsave-interval: 5\n")
    with pytest.raises(JobError) as err:
        load_config([f])
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("config keys not known to trainer.train or gpt-neox: ")
    assert "'bogus' in" in msg and "'hiden-size' in" in msg and "(did you mean 'hidden-size'?)" in msg


def test_our_keys_are_known_and_gpt_neox_keys_we_skip_are_listed(tmp_path):
    f = tmp_path / "c.yml"
    f.write_text("use_wandb: true\nwandb_project: x\nrope_fusion: false\npeak-tflops: 100\n")
    cfg = load_config([f])
    assert set(cfg.unimplemented) == {"use_wandb", "wandb_project", "rope_fusion"}
    assert cfg.train.peak_tflops == 100.0
    ours = {fl.name for cls in SECTIONS.values() for fl in dataclasses.fields(cls)}
    assert {
        "train_iters",
        "save_interval",
        "keep_last_n_checkpoints",
        "lr",
        "zero_optimization",
    } <= GPT_NEOX_KEYS
    assert "train_itres" not in GPT_NEOX_KEYS | ours


REPO = Path(__file__).resolve().parents[2]


def test_repository_configs_load_as_they_are(tmp_path):
    from trainer.determined import config_from_hparams

    for name in ("configs/determined-cluster.yml", "local/neox-tiny.yml"):
        load_config([REPO / name])
    # the guide's experiment file names the cluster config as conf_dir/determined_cluster.yml
    exp = yaml.safe_load((REPO / "configs" / "finetune-gpt-neox.yml").read_text())
    (tmp_path / "determined_cluster.yml").write_text(
        (REPO / "configs" / "determined-cluster.yml").read_text()
    )
    cfg = config_from_hparams({**exp["hyperparameters"], "conf_dir": str(tmp_path)}, exp)
    assert cfg.train.train_iters == 100 and cfg.model.num_layers == 44


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
    f.write_text(
        f"data-path: {data}\npadded-vocab-size: 64\nseq-length: 16\nsplit: 1,0,0\nload: {tmp_path}/weights\n"
    )
    assert main(["--config", str(f)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"trainer.train: error: load {tmp_path}/weights: does not exist"]


def test_token_ids_beyond_the_vocabulary_are_refused_before_engine_setup(tmp_path, capsys):
    data = tmp_path / "d_text_document"
    with IndexedDatasetWriter(data, dtype_for_vocab(1000)) as w:
        w.add_document(list(range(64)) * 4)
        w.add_document([5, 700, 6] * 30)  # another tokenizer's ids
    f = tmp_path / "c.yml"
    f.write_text(f"data-path: {data}\npadded-vocab-size: 512\nseq-length: 16\nsplit: 1,0,0\n")
    assert main(["--config", str(f)]) == 1
    out = capsys.readouterr()
    err = out.err.strip().splitlines()
    assert err == [
        f"trainer.train: error: data-path {data}: token id 700 is outside the model's vocabulary of 512 "
        f"(ids 0..511); was it tokenized with another tokenizer?"
    ]
    assert "DeepSpeed" not in out.out  # refused before the engine was built


def test_token_id_range_reads_the_whole_file_in_chunks(tmp_path):
    from jobs.indexed_dataset import IndexedDataset
    from trainer.data import token_id_range

    data = tmp_path / "d_text_document"
    with IndexedDatasetWriter(data, dtype_for_vocab(100_000)) as w:
        w.add_document([3] * 50)
        w.add_document([9, 99_999, 4])
    assert token_id_range(IndexedDataset(data), chunk=7) == (0, 99_999)
