"""Fixtures for the deploy tests: a pipeline config built from pipeline.example.yaml (pointing at the
guide's files in ../shared/seed), a lock file, and the local Kubernetes and Determined stand-ins
(tests/deploy/standins.py says what subset of each API they speak)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHARED = Path(__file__).parents[3] / "shared"

# `k8s` runs from the checkout and is not in the wheel (DESIGN.md), so the editable install does not
# expose it; pytest's importlib mode does not add the root either.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

_spec = importlib.util.spec_from_file_location("deploy_standins", HERE / "standins.py")
standins = importlib.util.module_from_spec(_spec)
sys.modules["deploy_standins"] = standins
_spec.loader.exec_module(standins)

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
    """An S3-compatible server (moto's) on 127.0.0.1, emptied first: moto keeps state per process."""
    import boto3
    import requests
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    requests.post(f"{url}/moto-api/reset", timeout=10).raise_for_status()
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    yield url, boto3.client("s3", endpoint_url=url)
    server.stop()
