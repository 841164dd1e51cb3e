"""Credentials are refused wherever they come in: under a credential-named key, as an environment
variable set in place (Determined's `environment_variables`, a pod's `env`), by their shape (known token
formats, URL user info, signed-URL parameters), or as a value of the process's own credentials. Each
refusal is one line naming the file and where in it, and says how to pass the value by Secret."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jobs.cli import JobError
from k8s.config import load_config, load_lock
from k8s.plan import build_plan
from k8s.secret_scan import find_secret, secret_value

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "value",
    [
        "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIK7MDENGbPxRfiCY",
        "WANDB_API_KEY=0123456789abcdef0123456789abcdef01234567",
        "DB_PASSWORD=hunter2",
        "HF_TOKEN=abc",
        "https://user:pass@data.example.org/corpus.jsonl",
        "https://ghp_abcdefghijklmnopqrstuvwxyz0123@github.com/org/repo",
        "https://bucket.s3.amazonaws.com/x?X-Amz-Algorithm=AWS4&X-Amz-Credential=AK%2F&X-Amz-Signature=ab12",
        "https://data.example.org/corpus.jsonl?token=abc123",
        "https://acct.blob.core.windows.net/c/f?sv=2024&sig=abcd",
        "xoxb-1234567890-abcdefghij",
    ],
)
def test_credential_shapes_are_found(value):
    assert secret_value(value, [])


@pytest.mark.parametrize(
    "value",
    [
        "NCCL_SOCKET_IFNAME=ens,eth,ib",
        "https://the-eye.eu/public/AI/models/GPT-NeoX-20B/slim_weights/",
        "hf://EleutherAI/gpt-neox-20b@main",
        "s3://model-checkpoints/gpt-neox-20b",
        "KEY_COUNT=",
        "text",
    ],
)
def test_ordinary_values_pass(value):
    assert not secret_value(value, [])


def test_env_entries_set_in_place_are_found_and_references_are_not():
    pod = {
        "env": [
            {"name": "HOME", "value": "/tmp"},
            {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ]
    }
    assert find_secret(pod) is None
    pod["env"].append({"name": "WANDB_API_KEY", "value": "0123abcd"})
    assert find_secret(pod) == "env[2].value"


def _plan(make_config, lock_file, edit):
    path = make_config(edit)
    cfg = load_config(path)
    return build_plan(cfg, load_lock(lock_file))


def test_secret_in_the_experiment_base_is_refused_naming_where(make_config, lock_file, tmp_path):
    exp = yaml.safe_load((REPO / "configs" / "finetune-gpt-neox.yml").read_text())
    exp["environment"]["environment_variables"].append("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIK7MDENGbPxRfiCY")
    path = tmp_path / "exp.yml"
    path.write_text(yaml.safe_dump(exp))
    with pytest.raises(JobError) as info:
        _plan(make_config, lock_file, lambda r: r.update(experiment_base=str(path)))
    msg = str(info.value)
    assert msg.startswith(
        f"experiment_base {path}: environment.environment_variables[1] holds a secret value"
    )
    assert "invoke secrets" in msg and "wJalrX" not in msg


def test_token_in_a_source_url_never_reaches_a_job(make_config, lock_file):
    with pytest.raises(
        JobError, match=r"^config .*: dataset.source holds a secret value; put it in a Kubernetes Secret"
    ):
        _plan(
            make_config,
            lock_file,
            lambda r: r["dataset"].update(source="https://data.example.org/x/?token=abc123"),
        )
