"""NeoXTrial's configuration from experiment hyperparameters (no Determined needed); the trial
class itself needs the `determined` extra and a GPU (run on the GPU machine)."""

from __future__ import annotations

import importlib.util
import shutil

import pytest
import yaml

from tests.support.trainer import SEED
from trainer.determined import config_from_hparams


@pytest.mark.skipif(not SEED.exists(), reason="the guide's determined-cluster.yml is not beside the checkout")
def test_hparams_name_the_guide_config_relative_to_the_context_dir(tmp_path):
    (tmp_path / "configs").mkdir()
    shutil.copy(SEED, tmp_path / "configs" / "determined_cluster.yml")
    (tmp_path / "configs" / "local.yml").write_text("data-path: /data/enron_text_document\n")
    hparams = {
        "conf_dir": "configs",
        "conf_file": ["determined_cluster.yml", "local.yml"],
        "overrides": {"optimizer.params.lr": 1.0e-5, "save-interval": 10},
    }
    exp = yaml.safe_load("searcher: {name: single, metric: lm_loss, max_length: {batches: 100}}")
    cfg = config_from_hparams(hparams, exp, workdir=tmp_path)
    assert cfg.data.data_path == "/data/enron_text_document" and cfg.model.num_layers == 44
    assert cfg.optimizer.lr == pytest.approx(1e-5) and cfg.train.save_interval == 10
    assert cfg.train.train_iters == 100 and cfg.schedule.lr_decay_iters == 100
    assert any("searcher.max_length 100" in line for line in cfg.report())


def test_missing_conf_file_is_one_clear_error(tmp_path):
    from jobs.cli import JobError

    with pytest.raises(JobError, match="config file .*nope.yml does not exist"):
        config_from_hparams({"conf_dir": str(tmp_path), "conf_file": ["nope.yml"]}, {})


@pytest.mark.skipif(importlib.util.find_spec("determined") is not None, reason="determined is installed here")
def test_trial_lookup_without_determined_says_which_extra():
    import trainer.determined as td

    with pytest.raises(ImportError, match="'determined' extra"):
        td.NeoXTrial  # noqa: B018


def test_a_lora_config_is_refused_in_one_line(tmp_path):
    from jobs.cli import JobError

    (tmp_path / "l.yml").write_text("lora: {rank: 8}\nload: /weights\n")
    with pytest.raises(
        JobError, match="^config key 'lora': LoRA runs under Determined are not supported yet"
    ):
        config_from_hparams({"conf_dir": str(tmp_path), "conf_file": ["l.yml"]}, {})
