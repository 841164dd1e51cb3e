"""Apply, wait and submit against the local stand-ins (tests/support/kube.py): no Kubernetes API
server or Determined master can run here, so these speak the subset of each API deploy uses."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from jobs.cli import JobError
from k8s import deploy as d
from k8s.cluster import Cluster, Credentials


def _opts(config_file, **kw):
    return d.Options(config=str(config_file), skip_preflight=True, poll=0.01, **kw)


def _verdict(ok: bool) -> str:
    return (
        json.dumps(
            {
                "weights_verified": ok,
                "reason": "all files present" if ok else "no fetch-manifest.json",
                "files": 3,
            }
        )
        + "\n"
    )


def _create_secret(config_file, cluster):
    d.secrets(_opts(config_file), cluster=cluster, out=io.StringIO())


def test_full_deploy_then_second_run_changes_nothing(
    config_file, kube, det, cluster, master, secret_env, tmp_path
):
    _create_secret(config_file, cluster)
    kube.outcomes["probe-weights"] = ("Complete", _verdict(False))
    log = io.StringIO()
    res = d.deploy(_opts(config_file, out=str(tmp_path / "r")), cluster=cluster, master=master, out=log)
    applied_kinds = [k.split("/")[0] for k in res.applied]
    assert applied_kinds.count("Job") == 4  # probe, fetch-weights, fetch-data, preprocess
    assert set(res.applied.values()) == {"created"}
    assert res.experiment_id == 1 and res.experiment_url == f"{det.url}/det/experiments/1"
    assert f"submitted experiment 1: {det.url}/det/experiments/1" in log.getvalue()
    # Every write was a server-side apply with our field manager.
    patches = [p for m, p, _ in kube.requests if m == "PATCH"]
    assert patches and all("fieldManager=neox-pipeline" in p for p in patches)
    # The experiment got its config and the context (configs only, .detignore honoured).
    exp = det.experiments[1]
    assert exp["config"]["environment"]["image"]["cuda"].endswith("@sha256:" + "1" * 64)
    files = det.context_files(1)
    assert set(files) == {"configs/determined-cluster.yml"}
    assert b"/mnt/finetune-gpt-neox/data/enron/enron_text_document" in files["configs/determined-cluster.yml"]

    writes_before = list(kube.writes)
    log2 = io.StringIO()
    res2 = d.deploy(_opts(config_file), cluster=cluster, master=master, out=log2)
    assert set(res2.applied.values()) == {"unchanged"}
    assert kube.writes == writes_before  # the stand-in saw no change at all
    assert len(det.experiments) == 1 and res2.experiment_id == 1
    assert "already submitted" in log2.getvalue()


def test_fetch_skipped_when_volume_holds_verified_weights(config_file, kube, cluster, master, secret_env):
    _create_secret(config_file, cluster)
    kube.outcomes["probe-weights"] = ("Complete", _verdict(True))
    log = io.StringIO()
    res = d.deploy(_opts(config_file), cluster=cluster, master=master, out=log)
    assert any("fetch-weights" in s for s in res.skipped)
    assert not any("fetch-weights" in k for k in res.applied)
    assert not any(k == "Job" and "fetch-weights" in n for k, n in kube.objects)
    assert "skipping the fetch" in log.getvalue()


def test_job_failure_prints_pod_log_and_stops(config_file, kube, det, cluster, master, secret_env):
    _create_secret(config_file, cluster)
    kube.job_polls = 3  # a few "still running" reads before the outcome
    kube.outcomes["probe-weights"] = ("Complete", _verdict(True))
    failing_log = (
        "".join(f"line {i}\n" for i in range(100)) + "preprocess: error: tokenizer.json: not found\n"
    )
    kube.outcomes["preprocess"] = ("Failed", failing_log)
    log = io.StringIO()
    with pytest.raises(JobError, match=r"Job/.*preprocess.* failed: BackoffLimitExceeded"):
        d.deploy(_opts(config_file), cluster=cluster, master=master, out=log)
    text = log.getvalue()
    assert "preprocess: error: tokenizer.json: not found" in text
    assert "line 99" in text and "line 10\n" not in text  # only the tail
    assert "0 failed attempts" in text  # progress while it ran
    assert det.experiments == {}  # nothing submitted after a failed Job


def test_nothing_applied_when_validation_fails(make_config, kube, cluster, master, secret_env):
    bad = make_config(lambda r: r["experiment"].update(smaller_is_better="yes"))
    with pytest.raises(JobError, match="experiment.smaller_is_better"):
        d.deploy(_opts(bad), cluster=cluster, master=master, out=io.StringIO())
    assert kube.requests == []


def test_nothing_applied_when_lock_entry_missing(config_file, lock_file, kube, cluster, master):
    data = json.loads(lock_file.read_text())
    del data["images"]["trainer"]
    lock_file.write_text(json.dumps(data))
    with pytest.raises(JobError, match="no entry for image 'trainer'"):
        d.deploy(_opts(config_file), cluster=cluster, master=master, out=io.StringIO())
    assert kube.requests == []


def test_missing_secret_stops_before_applying(config_file, kube, cluster, master):
    with pytest.raises(
        JobError, match=r"Secret/checkpoint-s3-credentials: not in namespace .*invoke secrets"
    ):
        d.deploy(_opts(config_file), cluster=cluster, master=master, out=io.StringIO())
    assert kube.writes == []


def test_unreachable_cluster_and_master_one_line(config_file, master):
    dead = Cluster(Credentials(server="http://127.0.0.1:9", token="t"), "ns", timeout=2)
    with pytest.raises(JobError) as info:
        dead.version()
    assert str(info.value) == "Kubernetes API http://127.0.0.1:9: unreachable (ConnectionError)"
    from k8s.determined_api import Master

    with pytest.raises(JobError, match=r"^Determined master http://127.0.0.1:9: unreachable"):
        Master("http://127.0.0.1:9", timeout=2).info()


def test_bad_token_is_reported(kube):
    c = Cluster(Credentials(server=kube.url, token="wrong", verify=str(kube.ca_file)), "ns", timeout=5)
    with pytest.raises(JobError, match="cluster version: Kubernetes API answered 401 Unauthorized"):
        c.version()


def test_secrets_come_from_env_and_never_leak(
    config_file, kube, det, cluster, master, secret_env, tmp_path, capsys
):
    log = io.StringIO()
    d.secrets(_opts(config_file), cluster=cluster, out=log)
    assert sorted(kube.secret_values()) == sorted(
        [secret_env["AWS_ACCESS_KEY_ID"], secret_env["AWS_SECRET_ACCESS_KEY"]]
    )
    kube.outcomes["probe-weights"] = ("Complete", _verdict(False))
    d.deploy(_opts(config_file, out=str(tmp_path / "r")), cluster=cluster, master=master, out=log)
    d.status(_opts(config_file), cluster=cluster, master=master, out=log)
    d.logs(_opts(config_file), cluster=cluster, out=log)
    captured = capsys.readouterr()
    texts = [log.getvalue(), captured.out, captured.err]
    texts += [f.read_text() for f in (tmp_path / "r").rglob("*") if f.is_file()]
    # What deploy sent anywhere except the Secret itself, and what the master received.
    texts += [body.decode(errors="replace") for m, p, body in kube.requests if "/secrets/" not in p]
    texts += [body.decode(errors="replace") for m, p, body in det.requests if "/auth/login" not in p]
    for value in secret_env.values():
        assert not any(value in t for t in texts), value
    # The login sent the SDK's salted hash, not the password.
    assert all(secret_env["DET_PASS"].encode() not in body for _, _, body in det.requests)


def test_secrets_need_the_environment(config_file, cluster, monkeypatch):
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDONLYONE")
    with pytest.raises(JobError, match="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        d.secrets(_opts(config_file), cluster=cluster, out=io.StringIO())


def test_status_logs_and_teardown_keeps_the_volume(config_file, kube, cluster, master, secret_env):
    _create_secret(config_file, cluster)
    kube.outcomes["probe-weights"] = ("Complete", _verdict(False))
    kube.outcomes["fetch-weights"] = ("Complete", "fetch: 39.0 GB in 1:02:03\n")
    d.deploy(_opts(config_file), cluster=cluster, master=master, out=io.StringIO())
    out = io.StringIO()
    report = d.status(_opts(config_file), cluster=cluster, master=master, out=out)
    assert report["volume"] == "Bound" and set(report["jobs"].values()) == {"Complete"}
    assert report["experiment"] == {
        "id": 1,
        "state": "STATE_ACTIVE",
        "url": f"{master.url}/det/experiments/1",
    }
    out = io.StringIO()
    assert d.logs(_opts(config_file), step="fetch-weights", cluster=cluster, out=out) == 1
    assert "fetch: 39.0 GB in 1:02:03" in out.getvalue()

    gone = d.teardown(_opts(config_file), cluster=cluster, out=io.StringIO())
    assert sum(g.startswith("Job/") for g in gone) == 4
    assert ("PersistentVolumeClaim", "finetune-gpt-neox") in kube.objects
    assert ("Secret", "checkpoint-s3-credentials") in kube.objects
    assert not any(k in ("Job", "ConfigMap", "Pod") for k, _ in kube.objects)
    gone = d.teardown(_opts(config_file), volume=True, secrets_too=True, cluster=cluster, out=io.StringIO())
    assert set(gone) == {"PersistentVolumeClaim/finetune-gpt-neox", "Secret/checkpoint-s3-credentials"}


def test_apply_reports_immutable_job_change(config_file, kube, cluster):
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "j", "namespace": "tenant-finetune"},
        "spec": {"template": {"metadata": {}, "spec": {"containers": [{"name": "c", "image": "a"}]}}},
    }
    assert cluster.apply(job)[0] == "created"
    assert cluster.apply(job)[0] == "unchanged"
    job["spec"]["template"]["spec"]["containers"][0]["image"] = "b"
    with pytest.raises(JobError, match="apply Job/j: Kubernetes API answered 422 .*immutable"):
        cluster.apply(job)


def test_kubeconfig_token_ca_and_plugins(tmp_path, kube, monkeypatch):
    import base64

    import yaml

    from k8s.cluster import credentials_from_kubeconfig, default_credentials

    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").decode()
    kc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "work",
        "contexts": [
            {"name": "work", "context": {"cluster": "c1", "user": "u1", "namespace": "tenant"}},
            {"name": "plain", "context": {"cluster": "c2", "user": "u2"}},
            {"name": "sso", "context": {"cluster": "c2", "user": "u3"}},
        ],
        "clusters": [
            {
                "name": "c1",
                "cluster": {"server": "https://k8s.example:6443/", "certificate-authority-data": ca},
            },
            {"name": "c2", "cluster": {"server": kube.url, "insecure-skip-tls-verify": True}},
        ],
        "users": [
            {"name": "u1", "user": {"token": "abc"}},
            {"name": "u2", "user": {"token": kube.token}},
            {"name": "u3", "user": {"exec": {"command": "sso-login"}}},
        ],
    }
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(kc))
    creds = credentials_from_kubeconfig(path)
    assert creds.server == "https://k8s.example:6443" and creds.token == "abc"
    assert Path(creds.verify).read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    plain = default_credentials(context="plain")
    assert Cluster(plain, "tenant-finetune").version() == "v1.30.4"
    with pytest.raises(JobError, match="exec/auth-provider plugin"):
        credentials_from_kubeconfig(path, "sso")
    with pytest.raises(JobError, match="no context 'nope'"):
        credentials_from_kubeconfig(path, "nope")
