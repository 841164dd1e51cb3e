"""k8s/cluster.py through the official kubernetes client, over TLS, against the stand-in API server
(tests/support/kube.py says what it speaks). REQUESTS_CA_BUNDLE and SSL_CERT_FILE point at an
unrelated CA throughout: the cluster is trusted through its kubeconfig's CA alone."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
import threading
import time

import pytest
import yaml

from jobs.cli import JobError
from k8s.cluster import (
    FIELD_MANAGER,
    KINDS,
    Cluster,
    Credentials,
    credentials_from_kubeconfig,
    credentials_in_cluster,
    default_credentials,
    state,
)
from k8s.config import PATCH_MANAGER
from k8s.determined_api import Master
from tests.support.kube import write_kubeconfig

NS = "tenant-finetune"


@pytest.fixture(scope="session")
def foreign_pki(tmp_path_factory):
    from tests.support.kube import make_pki

    return make_pki(tmp_path_factory.mktemp("foreign-pki"), name="unrelated")


@pytest.fixture(autouse=True)
def foreign_ca_env(monkeypatch, foreign_pki):
    """Point requests' and OpenSSL's default bundles at a CA that did not sign the stand-in."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(foreign_pki.ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(foreign_pki.ca_file))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return foreign_pki.ca_file


def _cm(name="settings", **data):
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NS},
        "data": data or {"greeting": "hello"},
    }


def _job(name, component):
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": NS, "labels": {"app.kubernetes.io/component": component}},
        "spec": {
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/component": component}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]},
            }
        },
    }


def _jobset(name, component, nodes=2):
    pod = {
        "metadata": {"labels": {"app.kubernetes.io/component": component}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "node", "image": "x"}]},
    }
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": name, "namespace": NS, "labels": {"app.kubernetes.io/component": component}},
        "spec": {
            "replicatedJobs": [
                {
                    "name": "node",
                    "replicas": 1,
                    "template": {
                        "spec": {
                            "parallelism": nodes,
                            "completions": nodes,
                            "completionMode": "Indexed",
                            "template": pod,
                        }
                    },
                }
            ]
        },
    }


def _trainjob(name, component, nodes=2):
    patch = {
        "manager": PATCH_MANAGER,  # a domain-prefixed path, as Trainer's webhook requires
        "trainingRuntimeSpec": {
            "template": {
                "spec": {
                    "replicatedJobs": [
                        {
                            "name": "node",
                            "template": {
                                "spec": {
                                    "template": {
                                        "metadata": {"labels": {"app.kubernetes.io/component": component}}
                                    }
                                }
                            },
                        }
                    ]
                }
            }
        },
    }
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": name, "namespace": NS, "labels": {"app.kubernetes.io/component": component}},
        "spec": {
            "runtimeRef": {
                "apiGroup": "trainer.kubeflow.org",
                "kind": "ClusterTrainingRuntime",
                "name": "torch-distributed",
            },
            "trainer": {"image": "x", "numNodes": nodes},
            "runtimePatches": [patch],
        },
    }


WORKLOADS = {"Job": _job, "JobSet": _jobset, "TrainJob": _trainjob}


# -- trust and credentials


def test_the_kubeconfig_ca_is_trusted_not_the_environment_bundle(
    kube, kubeconfig, cluster, foreign_ca_env, tmp_path
):
    assert cluster.version() == "v1.30.4"  # over TLS, the CA from the kubeconfig
    # The system store here is the foreign bundle (SSL_CERT_FILE): it does not vouch for the stand-in.
    plain = Cluster(Credentials(server=kube.url, token=kube.token), NS, timeout=5)
    with pytest.raises(JobError) as info:
        plain.version()
    assert str(info.value) == (
        f"Kubernetes API {kube.url}: unreachable "
        "(TLS: certificate verify failed: unable to get local issuer certificate)"
    )
    # A kubeconfig naming the foreign CA is refused too: its CA is the only one trusted.
    wrong = write_kubeconfig(tmp_path / "wrong-ca", kube.url, foreign_ca_env, kube.token)
    with pytest.raises(JobError, match="unreachable .TLS: certificate verify failed"):
        Cluster(default_credentials(str(wrong)), NS, timeout=5).version()


def test_a_wrong_token_is_401_in_one_line(kube, tmp_path):
    bad = write_kubeconfig(tmp_path / "kc", kube.url, kube.ca_file, "not-the-token")
    with pytest.raises(JobError) as info:
        Cluster(default_credentials(str(bad)), NS, timeout=5).version()
    assert str(info.value) == "cluster version: Kubernetes API answered 401 Unauthorized"


def _plugin(path, body: str, exit_code: int = 0):
    path.write_text(f"#!{sys.executable}\nimport json, os, sys\n{body}\nsys.exit({exit_code})\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_an_exec_plugin_user_authenticates_with_the_token_it_prints(kube, tmp_path, monkeypatch):
    kube.tokens = {"exec-token-7f3a"}  # the kubeconfig's static token would no longer do
    (tmp_path / "bin").mkdir()
    _plugin(
        tmp_path / "bin" / "get-token",
        """
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])  # the client says which API it wants
print(json.dumps({"apiVersion": info["apiVersion"], "kind": "ExecCredential",
                  "status": {"token": "exec-token-7f3a", "expirationTimestamp": "2099-01-01T00:00:00Z"}}))""",
    )
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": "./bin/get-token",
            "interactiveMode": "Never",
        }
    }
    kc = write_kubeconfig(tmp_path / "kubeconfig", kube.url, kube.ca_file, user=user)
    monkeypatch.chdir(tmp_path.parent)  # the relative command resolves against the kubeconfig, not here
    creds = default_credentials(str(kc))
    assert creds.token == "exec-token-7f3a" and "exec-token" not in repr(creds)
    assert Cluster(creds, NS, timeout=5).version() == "v1.30.4"


def test_a_failing_exec_plugin_is_one_line_naming_user_and_command(kube, tmp_path):
    _plugin(
        tmp_path / "sso-login",
        'print("sso-login: session expired, run sso-login --renew", file=sys.stderr)',
        1,
    )
    user = {
        "exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": str(tmp_path / "sso-login")}
    }
    kc = write_kubeconfig(tmp_path / "kubeconfig", kube.url, kube.ca_file, user=user)
    with pytest.raises(JobError) as info:
        default_credentials(str(kc))
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"kubeconfig {kc}, context 'stand-in': user 'tester': ")
    assert "sso-login" in msg and "exec" in msg


def test_two_kubeconfig_files_merge_context_in_one_user_in_the_other(kube, tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "ca.crt").write_bytes(kube.ca_file.read_bytes())
    (b / "token").write_text(kube.token + "\n")
    (a / "config").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "work",
                "clusters": [
                    {"name": "stand-in", "cluster": {"server": kube.url, "certificate-authority": "ca.crt"}}
                ],
                "contexts": [{"name": "work", "context": {"cluster": "stand-in", "user": "me"}}],
            }
        )
    )
    (b / "config").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "elsewhere",  # the first file's wins
                "users": [
                    {"name": "me", "user": {"tokenFile": "token"}}
                ],  # relative to b/, not to a/ or the cwd
                "contexts": [{"name": "work", "context": {"cluster": "nowhere", "user": "me"}}],
            }
        )
    )  # first wins
    monkeypatch.setenv(
        "KUBECONFIG", os.pathsep.join([str(a / "config"), str(tmp_path / "absent"), str(b / "config")])
    )
    monkeypatch.chdir(tmp_path)
    creds = default_credentials()
    assert creds.server == kube.url and creds.verify == str(a / "ca.crt") and creds.token == kube.token
    assert Cluster(creds, NS, timeout=5).version() == "v1.30.4"


def test_relative_ca_and_token_paths_resolve_against_the_kubeconfig(kube, tmp_path, monkeypatch):
    home = tmp_path / "home" / ".kube"
    (home / "pki").mkdir(parents=True)
    (home / "pki" / "ca.crt").write_bytes(kube.ca_file.read_bytes())
    (home / "sa-token").write_text(kube.token)
    write_kubeconfig(home / "config", kube.url, None, user={"tokenFile": "sa-token"})
    raw = yaml.safe_load((home / "config").read_text())
    raw["clusters"][0]["cluster"]["certificate-authority"] = "pki/ca.crt"
    (home / "config").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    assert Cluster(default_credentials(str(home / "config")), NS, timeout=5).version() == "v1.30.4"


def test_missing_context_or_file_is_one_line(kubeconfig, tmp_path):
    with pytest.raises(JobError) as info:
        credentials_from_kubeconfig(kubeconfig, "nope")
    assert str(info.value) == f"kubeconfig {kubeconfig}: no context 'nope' (contexts: stand-in)"
    with pytest.raises(JobError) as info:
        default_credentials(str(tmp_path / "missing"), "stand-in")
    assert str(info.value) == f"kubeconfig {tmp_path / 'missing'}: cannot read (No such file or directory)"


def test_in_cluster_service_account(kube, tmp_path):
    (tmp_path / "token").write_text(kube.token)
    (tmp_path / "ca.crt").write_bytes(kube.ca_file.read_bytes())
    port = kube.url.rsplit(":", 1)[1]
    creds = credentials_in_cluster(
        tmp_path, {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port}
    )
    assert creds.server == kube.url and creds.source.startswith("in-cluster")
    assert Cluster(creds, NS, timeout=5).version() == "v1.30.4"
    assert credentials_in_cluster(tmp_path, {}) is None  # not in a pod


def test_the_master_trusts_its_ca_even_with_requests_ca_bundle_set(kube_pki, foreign_ca_env):
    from tests.support.kube import FakeDetermined

    det = FakeDetermined(tls=kube_pki).start()
    try:
        # requests would let REQUESTS_CA_BUNDLE replace a Session's verify; the master's CA must win.
        assert Master(det.url, timeout=5, verify=str(kube_pki.ca_file)).info()["version"] == "0.38.1"
        with pytest.raises(
            JobError, match=r"^Determined master https://127.0.0.1:\d+: unreachable \(SSLError\)$"
        ):
            Master(det.url, timeout=5).info()  # the system store, here the foreign bundle
    finally:
        det.stop()


# -- apply, get, list, delete


def test_apply_created_unchanged_configured(kube, cluster):
    assert cluster.apply(_cm())[0] == "created"
    what, live = cluster.apply(_cm())
    assert what == "unchanged" and kube.writes == [("create", "ConfigMap", "settings")]
    assert cluster.apply(_cm(greeting="bonjour"))[0] == "configured"
    assert cluster.get("ConfigMap", "settings")["data"] == {"greeting": "bonjour"}
    patches = [p for m, p, _ in kube.requests if m == "PATCH"]
    assert len(patches) == 3 and all(
        f"fieldManager={FIELD_MANAGER}" in p and "force" not in p for p in patches
    )
    assert [o["metadata"]["name"] for o in cluster.list("ConfigMap", "")] == ["settings"]
    assert (
        cluster.delete("ConfigMap", "settings") is True and cluster.delete("ConfigMap", "settings") is False
    )
    assert cluster.get("ConfigMap", "settings") is None


def test_a_conflict_names_field_and_manager_and_force_takes_it_over(kube, cluster):
    cluster.apply(_cm())
    kube.edit("ConfigMap", "settings", ".data.greeting", "edited by hand", manager="kubectl-edit")
    with pytest.raises(JobError) as info:
        cluster.apply(_cm())
    assert str(info.value) == (
        "apply ConfigMap/settings: conflict: .data.greeting owned by field manager "
        "'kubectl-edit'; rerun with --force-conflicts to take them over"
    )
    assert kube.objects[("ConfigMap", "settings")]["data"]["greeting"] == "edited by hand"
    what, live = cluster.apply(_cm(), force=True)
    assert what == "configured" and live["data"]["greeting"] == "hello"
    assert any(m == "PATCH" and "force=true" in p for m, p, _ in kube.requests)
    assert cluster.apply(_cm())[0] == "unchanged"  # ours now: no conflict any more


def test_api_errors_name_the_object_and_the_servers_reason(cluster):
    bad = _jobset("js", "train")
    bad["apiVersion"] = "jobset.x-k8s.io/v1alpha1"
    with pytest.raises(JobError) as info:
        cluster.apply(bad)
    assert str(info.value) == (
        "apply JobSet/js: Kubernetes API answered 400 the API version in the data "
        "(jobset.x-k8s.io/v1alpha1) does not match the expected API version "
        "(jobset.x-k8s.io/v1alpha2)"
    )
    with pytest.raises(JobError, match=r"^kind 'Deployment': not one deploy knows"):
        cluster.get("Deployment", "x")


def test_the_kind_table_matches_the_crds_and_every_kind_round_trips(kube, cluster):
    from tests.support.kube import CORE_ROUTES, crd_routes
    from tests.support.kube_scope import CLUSTER_SCOPED

    served = {
        kind: (g, v, p) for (g, v, p), kind in {**CORE_ROUTES, **crd_routes(), **CLUSTER_SCOPED}.items()
    }
    assert {k: (x.group, x.version, x.plural) for k, x in KINDS.items()} == {k: served[k] for k in KINDS}
    assert {k for k, x in KINDS.items() if not x.namespaced} == set(CLUSTER_SCOPED.values())
    objs = [
        _cm(),
        _job("j", "probe"),
        _jobset("js", "train"),
        _trainjob("tj", "train"),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"}, "spec": {"clusterIP": "None"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "dg=="}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "pvc"}, "spec": {}},
    ]
    for obj in objs:
        assert cluster.apply(obj)[0] == "created"
        assert cluster.get(obj["kind"], obj["metadata"]["name"])["metadata"]["uid"]


# -- waiting


@pytest.mark.parametrize("kind", list(WORKLOADS))
def test_wait_follows_a_watch_to_completion(kind, kube, cluster):
    kube.job_polls = 6  # a few steps of the watch before it ends
    cluster.apply(WORKLOADS[kind]("w1", "fetch-data"))
    before = len(kube.requests)
    out = io.StringIO()
    done = cluster.wait(kind, "w1", timeout=120, out=out)
    assert state(kind, done) == "Complete" and cluster.state(kind, cluster.get(kind, "w1")) == "Complete"
    assert f"deploy: {kind}/w1 succeeded after" in out.getvalue()
    asked = [p for _, p, _ in kube.requests[before:]]
    assert sum("watch=true" in p and "fieldSelector=metadata.name%3Dw1" in p for p in asked) >= 1
    assert (
        len(asked) <= 5
    )  # a list, its pods (a TrainJob's JobSet too: restarts), a watch or two; no poll per step


@pytest.mark.parametrize("kind", list(WORKLOADS))
def test_wait_reports_failure_with_the_failed_pods_log(kind, kube, cluster):
    kube.job_polls = 4
    kube.outcomes["train"] = (
        "Failed",
        "".join(f"step {i}\n" for i in range(60)) + "train: CUDA out of memory\n",
    )
    cluster.apply(WORKLOADS[kind]("w2", "train"))
    out = io.StringIO()
    with pytest.raises(JobError) as info:
        cluster.wait(kind, "w2", timeout=120, out=out, log_tail=10)
    reason = {"Job": "BackoffLimitExceeded", "JobSet": "FailedJobs", "TrainJob": "FailedJobs"}[kind]
    assert str(info.value).startswith(f"{kind}/w2 failed: {reason}")
    text = out.getvalue()
    failed = [p["metadata"]["name"] for p in cluster.pods_of(kind, "w2") if p["status"]["phase"] == "Failed"]
    assert len(failed) == 1 and f"log lines of pod {failed[0]}:" in text
    assert "  | train: CUDA out of memory" in text and "step 51" in text and "step 50" not in text
    assert "pods 1 Running" in text or "pods 2 Running" in text  # a progress line while it ran


def test_jobset_and_trainjob_pods_carry_the_controllers_labels(kube, cluster):
    kube.job_polls = 10**6
    cluster.apply(_jobset("js", "train", nodes=2))
    cluster.apply(_trainjob("tj", "train", nodes=3))
    js = cluster.pods_of("JobSet", "js")
    assert [p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] for p in js] == ["0", "1"]
    assert all(p["metadata"]["labels"]["jobset.sigs.k8s.io/replicatedjob-name"] == "node" for p in js)
    tj = cluster.list(
        "Pod", "jobset.sigs.k8s.io/jobset-name=tj,trainer.kubeflow.org/trainjob-ancestor-step=trainer"
    )
    assert len(tj) == 3 and all(p["metadata"]["labels"]["app.kubernetes.io/component"] == "train" for p in tj)
    assert (
        state("JobSet", cluster.get("JobSet", "js"))
        == state("TrainJob", cluster.get("TrainJob", "tj"))
        == "Running"
    )


def test_wait_relists_after_410_gone(kube, cluster):
    kube.job_polls = 8
    kube.expire_watches = 1  # the first watch finds its resourceVersion compacted away
    cluster.apply(_job("j", "preprocess"))
    before = len(kube.requests)
    assert state("Job", cluster.wait_job("j", 120, out=io.StringIO())) == "Complete"
    lists = [p for _, p, _ in kube.requests[before:] if "fieldSelector" in p and "watch=true" not in p]
    assert len(lists) == 2  # the first list, and the re-list after 410


def test_progress_lines_while_waiting_and_a_timeout_says_what_it_waited_for(kube, cluster):
    kube.job_polls = 10**6  # never ends
    cluster.apply(_trainjob("tj", "train", nodes=2))
    out = io.StringIO()
    started = time.monotonic()
    with pytest.raises(JobError) as info:
        cluster.wait("TrainJob", "tj", timeout=2.5, out=out, progress_every=1.0)
    assert str(info.value) == "TrainJob/tj: still running after 0:02; see `invoke logs`"
    lines = [line for line in out.getvalue().splitlines() if line.startswith("deploy: TrainJob/tj: ")]
    assert len(lines) >= 2 and "1 jobs running, 0 succeeded, 0 failed" in lines[0]
    assert time.monotonic() - started < 60


def test_state_of_each_kind():
    assert state("Job", {}) == "Pending" and state("Job", {"status": {"active": 1}}) == "Running"
    assert state("JobSet", {"status": {"terminalState": "Completed"}}) == "Complete"
    assert (
        state("JobSet", {"status": {"conditions": [{"type": "Completed", "status": "True"}]}}) == "Complete"
    )
    assert (
        state("TrainJob", {"status": {"conditions": [{"type": "Complete", "status": "False"}]}}) == "Pending"
    )
    assert state("TrainJob", {"status": {"conditions": [{"type": "Failed", "status": "True"}]}}) == "Failed"
    assert state("TrainJob", {"status": {"jobsStatus": [{"name": "node", "active": 1}]}}) == "Running"
    assert state("Pod", {"status": {"phase": "Succeeded"}}) == "Complete"


# -- logs


def test_logs_are_followed_as_they_are_written(kube, cluster):
    kube.job_polls = 10**6
    cluster.apply(_job("j", "fetch-weights"))
    pod = cluster.job_pods("j")[0]["metadata"]["name"]
    kube.logs[pod] = "fetch: starting\n"

    def container():
        time.sleep(0.6)
        with kube.lock:
            kube.logs[pod] += "fetch: 12.0 GB in 0:41\n" + json.dumps({"weights_verified": True}) + "\n"
        time.sleep(0.3)
        with kube.lock:
            kube.objects[("Pod", pod)]["status"]["phase"] = "Succeeded"

    writer = threading.Thread(target=container)
    out = io.StringIO()
    started = time.monotonic()
    writer.start()
    cluster.follow_log(pod, out)
    writer.join()
    assert time.monotonic() - started >= 0.8  # it stayed on the stream until the container ended
    assert out.getvalue() == 'fetch: starting\nfetch: 12.0 GB in 0:41\n{"weights_verified": true}\n'
    assert cluster.pod_log(pod, 1) == '{"weights_verified": true}\n'  # JSON lines stay text
    again = io.StringIO()  # follow=True on pod_log streams too; the pod has ended, so it returns at once
    assert (
        cluster.pod_log(pod, 1, follow=True, out=again) == ""
        and again.getvalue() == '{"weights_verified": true}\n'
    )
