"""Fixtures for the deploy tests: a pipeline config built from pipeline.example.yaml (pointing at the
guide's files as configs/ carries them), a lock file, and the local Kubernetes and Determined stand-ins
(tests/support/kube.py says what subset of each API they speak)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.support import kube as standins
from tests.support.s3 import moto_s3

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

DIGESTS = {"trainer": "1" * 64, "fetcher": "2" * 64, "preprocessor": "3" * 64}
# Credentials the tests put in the environment; none may appear in any rendered file or log.
SECRET_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIDTESTVALUE7Q3Z",
    "AWS_SECRET_ACCESS_KEY": "s3cr3t-Xq9-never-print-me",
    "HF_TOKEN": "hf-token-never-print-me",
    "DET_PASS": "det-pass-123",
}


@pytest.fixture
def secret_env(monkeypatch):
    for k, v in SECRET_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("DET_USER", "determined")
    monkeypatch.delenv("DET_SESSION_TOKEN", raising=False)
    return dict(SECRET_ENV)


@pytest.fixture
def lock_file(tmp_path):
    path = tmp_path / "images.lock.json"
    path.write_text(
        json.dumps({"images": {n: f"127.0.0.1:5999/neox/{n}@sha256:{d}" for n, d in DIGESTS.items()}})
    )
    return path


@pytest.fixture
def make_config(tmp_path, lock_file):
    """Write a config derived from pipeline.example.yaml; `edit(raw)` may change it first."""

    def make(edit=None, name="pipeline.yaml"):
        raw = yaml.safe_load((REPO / "pipeline.example.yaml").read_text())
        # The guide's two files as the repository carries them (configs/, the same bytes as ../shared/seed).
        raw["neox_configs"] = [str(REPO / "configs" / "determined-cluster.yml")]
        raw["experiment_base"] = str(REPO / "configs" / "finetune-gpt-neox.yml")
        raw["lock_file"] = str(lock_file)
        if edit:
            edit(raw)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    return make


@pytest.fixture
def config_file(make_config):
    return make_config()


@pytest.fixture(scope="session")
def kube_pki(tmp_path_factory):
    """The stand-in API server's throwaway CA and certificate; only kubeconfigs the tests write name it."""
    return standins.make_pki(tmp_path_factory.mktemp("kube-pki"))


@pytest.fixture
def kube(kube_pki):
    server = standins.FakeKube(tls=kube_pki).start()
    yield server
    server.stop()


@pytest.fixture
def kubeconfig(tmp_path, kube):
    return standins.write_kubeconfig(tmp_path / "kubeconfig", kube.url, kube.ca_file, kube.token)


@pytest.fixture
def det():
    server = standins.FakeDetermined().start()
    yield server
    server.stop()


@pytest.fixture
def cluster(kube, kubeconfig):
    """The official client, its credentials loaded from `kubeconfig` as kubectl would, over TLS."""
    from k8s.cluster import Cluster, default_credentials

    return Cluster(default_credentials(str(kubeconfig)), "tenant-finetune", timeout=10)


@pytest.fixture
def master(det):
    from k8s.determined_api import Master

    return Master(det.url, timeout=5)


@pytest.fixture
def s3(monkeypatch, secret_env):
    """An S3-compatible server (moto's) on 127.0.0.1, empty (tests/support/s3.py)."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto_s3() as server:
        yield server
