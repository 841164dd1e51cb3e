"""Preflight's cluster checks: what stops a run from ever starting is one line naming the config key,
before anything is applied. No Kubernetes API server can run here, so the cluster is the stand-in
(tests/support/kube.py with its front, kube_scope.py and kube_rbac.py) reached through the official
client over TLS, behaving as a real server does: namespaces that must exist, cluster-scoped
StorageClasses and ClusterTrainingRuntimes, API discovery that knows only the installed CRDs, RBAC
403s and SelfSubjectAccessReviews from one rule table. The images are checked in a real Docker
registry and the bucket in moto's S3 server, with IAM enforced where the keys matter."""

from __future__ import annotations

import base64
import io
import json

import boto3
import pytest
import requests

from jobs.cli import JobError
from k8s import deploy as d
from k8s.cluster import missing_namespace_line
from k8s.config import IMAGES, load_config, load_lock
from k8s.plan import build_plan
from k8s.preflight import Report, check_storage, deploy_access, run_preflight
from tests.support.kube_scope import cluster_training_runtime, storage_class
from tests.support.registry import REGISTRY_BIN, docker_registry, push_manifest
from tests.support.s3 import KEYS

NS = "tenant-finetune"
SECRET = "checkpoint-s3-credentials"
TRAIN = "gpt-neox-20b-finetune-train"  # the TrainJob/JobSet of pipeline.example.yaml's experiment
RBAC_FIX = "ask the cluster admin for a Role that grants it, or set `namespace` to one where you may"


@pytest.fixture(scope="module")
def pinned_images(tmp_path_factory):
    """The three images pushed to a real registry: image refs by digest that preflight finds."""
    if REGISTRY_BIN is None:
        pytest.skip("no docker-registry binary (Debian package docker-registry) on this machine")
    with docker_registry(tmp_path_factory.mktemp("registry")) as host:
        yield {n: f"{host}/neox/{n}@{push_manifest(host, f'neox/{n}')}" for n in IMAGES}


def put_secret(kube, key_id: str, secret_key: str) -> None:
    """The Secret as `invoke secrets` leaves it, put straight into the stand-in so that `kube.writes`
    holds only what deploy does."""
    data = {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret_key}
    kube.objects[("Secret", SECRET)] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": NS, "resourceVersion": "1"},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


@pytest.fixture
def ready(make_config, lock_file, pinned_images, s3, kube, secret_env):
    """A cluster and its surroundings where preflight passes: images pushed, the bucket made, the
    Secret in place. `ready(edit, engine=...)` writes the config (engine jobset unless told)."""
    url, client = s3
    client.create_bucket(Bucket="model-checkpoints")
    lock_file.write_text(json.dumps({"images": pinned_images}))
    put_secret(kube, secret_env["AWS_ACCESS_KEY_ID"], secret_env["AWS_SECRET_ACCESS_KEY"])

    def config(edit=None, engine="jobset"):
        def change(raw):
            raw["checkpoints"]["endpoint_url"] = url
            raw.setdefault("train", {})["engine"] = engine
            if edit:
                edit(raw)

        return make_config(change)

    return config


def refused(cfg, cluster, kube) -> tuple[list[str], str]:
    """Deploy, which preflight must stop: its FAIL lines and the error; nothing was applied."""
    log = io.StringIO()
    with pytest.raises(JobError) as info:
        d.deploy(d.Options(config=str(cfg), poll=0.01), cluster=cluster, master=None, out=log)
    assert kube.writes == []
    fails = [
        line.removeprefix("preflight: FAIL  ")
        for line in log.getvalue().splitlines()
        if line.startswith("preflight: FAIL")
    ]
    assert str(info.value) == f"preflight: {len(fails)} check(s) failed, nothing applied; first: {fails[0]}"
    return fails, str(info.value)


def passes(cfg, cluster) -> list[str]:
    """Preflight alone, which must pass: its lines."""
    out = io.StringIO()
    config = load_config(cfg)
    run_preflight(config, load_lock(config.lock_path), cluster, None, out=out)
    return out.getvalue().splitlines()


# -- the namespace


def test_a_missing_namespace_is_one_line_for_deploy_and_for_secrets(ready, kube, cluster):
    kube.namespaces.discard(NS)
    cfg = ready()
    line = (
        f"namespace {NS}: does not exist in the cluster; create it (`kubectl create namespace {NS}`) or set "
        f"`namespace` in {cfg} (or --namespace) to one that exists"
    )
    fails, _ = refused(cfg, cluster, kube)
    assert fails == [line]  # nothing else about the cluster: in no namespace, nothing more can be told
    with pytest.raises(JobError) as info:
        d.secrets(d.Options(config=str(cfg)), cluster=cluster, out=io.StringIO())
    assert str(info.value) == line
    assert kube.writes == []
    kube.namespaces.add(NS)
    assert passes(cfg, cluster)[1] == f"preflight: ok    namespace {NS}"


def test_a_tenant_that_may_not_read_namespaces_gets_a_warning_and_the_write_names_a_missing_one(
    ready, kube, cluster
):
    kube.deny = {("get", "", "namespaces")}
    cfg = ready()
    assert (
        f"preflight: warn  namespace {NS}: could not be checked (not allowed to get namespaces, as in many "
        "tenants); a missing one is named at the first write"
    ) in passes(cfg, cluster)
    kube.namespaces.discard(NS)
    # The server's own answer to a write in a namespace that does not exist, as one line.
    with pytest.raises(JobError) as info:
        d.secrets(d.Options(config=str(cfg)), cluster=cluster, out=io.StringIO())
    assert str(info.value) == missing_namespace_line(NS)
    assert kube.writes == []


# -- the StorageClass


def test_a_storage_class_that_does_not_exist(ready, kube, cluster):
    fails, _ = refused(ready(lambda r: r["volume"].update(storage_class="fast-rwx")), cluster, kube)
    assert fails == [
        "StorageClass/fast-rwx: not in the cluster (classes: block-nvme-ord1 (default), shared-hdd-ord1); "
        "set volume.storage_class to one that gives ReadWriteMany"
    ]


def test_a_single_node_provisioner_cannot_give_read_write_many(ready, kube, cluster):
    kube.put_cluster_object(storage_class("gp3", "ebs.csi.aws.com"))
    fails, _ = refused(ready(lambda r: r["volume"].update(storage_class="gp3")), cluster, kube)
    assert fails == [
        "StorageClass/gp3: provisioner ebs.csi.aws.com (AWS EBS) gives volumes one node mounts at a time, "
        "not ReadWriteMany (volume.access_mode); set volume.storage_class to a shared-filesystem class "
        "(NFS, CephFS, EFS, Filestore, Azure Files)"
    ]
    # An operator's prefix is the same provisioner.
    fails, _ = refused(ready(lambda r: r["volume"].update(storage_class="block-nvme-ord1")), cluster, kube)
    assert fails[0].startswith(
        "StorageClass/block-nvme-ord1: provisioner rook-ceph.rbd.csi.ceph.com (Ceph RBD)"
    )

    def one_node(raw):
        raw["volume"].update(storage_class="gp3", access_mode="ReadWriteOnce")
        raw["train"]["nodes"] = 1

    assert "preflight: ok    StorageClass/gp3 (ebs.csi.aws.com, ReadWriteOnce)" in passes(
        ready(one_node), cluster
    )


def test_an_unknown_provisioner_is_a_warning(ready, kube, cluster):
    kube.put_cluster_object(storage_class("vendor-fs", "fs.vendor.example.com"))
    lines = passes(ready(lambda r: r["volume"].update(storage_class="vendor-fs")), cluster)
    assert (
        "preflight: warn  StorageClass/vendor-fs: provisioner fs.vendor.example.com: not known whether it "
        "gives ReadWriteMany volumes; if PersistentVolumeClaim/finetune-gpt-neox stays Pending, set "
        "volume.storage_class to a shared-filesystem class"
    ) in lines


def test_no_default_storage_class(ready, kube, cluster):
    """A config without `volume.storage_class` means the default class: the claim is rendered without
    storageClassName (the API server's DefaultStorageClass admission fills it in), and preflight checks
    that a default class exists and gives the access mode."""
    cfg = ready(lambda r: r["volume"].pop("storage_class"))
    _, _, plan = d.load(d.Options(config=str(cfg)))
    assert "storageClassName" not in plan.pvc["spec"]
    kube.put_cluster_object(storage_class("block-nvme-ord1", "rook-ceph.rbd.csi.ceph.com"))  # no default
    fails, _ = refused(cfg, cluster, kube)
    assert fails == [
        "no default StorageClass in the cluster (classes: block-nvme-ord1, shared-hdd-ord1); "
        "set volume.storage_class"
    ]
    volume = load_config(cfg).volume
    kube.put_cluster_object(storage_class("shared-hdd-ord1", "rook-ceph.cephfs.csi.ceph.com", default=True))
    report = Report(io.StringIO())
    check_storage(cluster, volume, report)
    assert report.failures == []
    assert report.out.getvalue() == (
        "preflight: ok    default StorageClass shared-hdd-ord1 (rook-ceph.cephfs.csi.ceph.com, ReadWriteMany)\n"
    )


def test_a_class_without_provisioner_needs_a_pre_made_volume(ready, kube, cluster):
    kube.put_cluster_object(storage_class("static-nfs", "kubernetes.io/no-provisioner"))
    cfg = ready(lambda r: r["volume"].update(storage_class="static-nfs"))
    fails, _ = refused(cfg, cluster, kube)
    assert fails == [
        "StorageClass/static-nfs: provisions nothing (kubernetes.io/no-provisioner) and no Available "
        "PersistentVolume of it gives ReadWriteMany; ask an admin for one, or set volume.storage_class to a "
        "class that provisions"
    ]
    kube.put_cluster_object(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": "nfs-1"},
            "spec": {"storageClassName": "static-nfs", "accessModes": ["ReadWriteMany"]},
            "status": {"phase": "Available"},
        }
    )
    lines = passes(cfg, cluster)
    assert (
        "preflight: ok    StorageClass/static-nfs (pre-made PersistentVolume nfs-1, ReadWriteMany)" in lines
    )


def test_a_bound_claim_of_ours_skips_the_class_check(ready, kube, cluster):
    kube.objects[("PersistentVolumeClaim", "finetune-gpt-neox")] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "finetune-gpt-neox", "resourceVersion": "1"},
        "spec": {"storageClassName": "shared-hdd-ord1", "accessModes": ["ReadWriteMany"]},
        "status": {"phase": "Bound"},
    }
    kube.remove_cluster_object("StorageClass", "shared-hdd-ord1")  # gone since: the volume is made
    lines = passes(ready(), cluster)
    assert (
        "preflight: ok    volume finetune-gpt-neox (PersistentVolumeClaim/finetune-gpt-neox bound, storage "
        "class shared-hdd-ord1)"
    ) in lines
    assert not any("StorageClass/" in line for line in lines)
    fails, _ = refused(ready(lambda r: r["volume"].update(storage_class="other")), cluster, kube)
    assert fails == [
        "PersistentVolumeClaim/finetune-gpt-neox: exists with storage class 'shared-hdd-ord1', "
        "volume.storage_class says 'other'; a claim's class cannot change: set volume.storage_class: "
        "shared-hdd-ord1 (or `invoke teardown --volume` deletes the claim and its data)"
    ]


# -- the engine's CRDs and the runtime


def test_trainjob_on_the_clusters_runtime_passes(ready, cluster):
    lines = passes(ready(engine="trainjob"), cluster)
    assert "preflight: ok    CRDs trainer.kubeflow.org/v1alpha1 (TrainJob, ClusterTrainingRuntime)" in lines
    assert "preflight: ok    CRDs jobset.x-k8s.io/v1alpha2 (JobSet)" in lines
    assert "preflight: ok    ClusterTrainingRuntime/torch-distributed (torch policy)" in lines


def test_a_runtime_that_does_not_exist(ready, kube, cluster):
    fails, _ = refused(
        ready(lambda r: r["train"].update(runtime="torch-custom"), engine="trainjob"), cluster, kube
    )
    assert fails == [
        "ClusterTrainingRuntime/torch-custom: not in the cluster (runtimes: deepspeed-distributed, "
        "torch-distributed); set train.runtime to one with the torch policy (Trainer ships "
        "torch-distributed), or train.own_runtime: true"
    ]


def test_a_runtime_without_the_torch_policy(ready, kube, cluster):
    kube.put_cluster_object(cluster_training_runtime("mpi-custom", {"mpi": {"numProcPerNode": 8}}))
    fails, _ = refused(
        ready(lambda r: r["train"].update(runtime="mpi-custom"), engine="trainjob"), cluster, kube
    )
    assert fails == [
        "ClusterTrainingRuntime/mpi-custom: has no torch policy (spec.mlPolicy: mpi); the trainer starts "
        "with torchrun: set train.runtime to one with the torch policy (Trainer ships torch-distributed), "
        "or train.own_runtime: true"
    ]


def test_own_runtime_needs_no_cluster_runtime(ready, kube, cluster):
    kube.remove_cluster_object("ClusterTrainingRuntime", "torch-distributed")
    lines = passes(ready(lambda r: r["train"].update(own_runtime=True), engine="trainjob"), cluster)
    assert "preflight: ok    CRDs trainer.kubeflow.org/v1alpha1 (TrainJob, TrainingRuntime)" in lines
    assert not any("ClusterTrainingRuntime" in line for line in lines)


def test_crds_not_served(ready, kube, cluster):
    kube.remove_crds("trainer.kubeflow.org")
    assert cluster.served("TrainJob") is False and cluster.served("JobSet") is True
    fails, _ = refused(ready(engine="trainjob"), cluster, kube)
    assert fails == [
        "TrainJob, ClusterTrainingRuntime (trainer.kubeflow.org/v1alpha1): not served by this cluster (no "
        "CRD); install Kubeflow Trainer v2 (its CRDs and controller) or set train.engine to jobset"
    ]  # and no runtime line: what is not served cannot be read
    kube.remove_crds("jobset.x-k8s.io")
    fails, _ = refused(ready(), cluster, kube)
    assert fails == [
        "JobSet (jobset.x-k8s.io/v1alpha2): not served by this cluster (no CRD); install JobSet "
        "(kubernetes-sigs/jobset: its CRDs and controller) or set train.engine"
    ]


# -- permissions


def test_may_create_jobs_but_not_trainjobs(ready, kube, cluster):
    kube.deny = {("create", "trainer.kubeflow.org", "trainjobs")}
    cfg = ready(engine="trainjob")
    fails, _ = refused(cfg, cluster, kube)
    assert fails == [
        f"not allowed to create trainjobs.trainer.kubeflow.org in namespace {NS} (to apply TrainJob/{TRAIN}); "
        + RBAC_FIX
    ]
    reviews = [json.loads(b) for m, p, b in kube.requests if p.endswith("/selfsubjectaccessreviews")]
    asked = [tuple(r["spec"]["resourceAttributes"].values()) for r in reviews]
    config = load_config(cfg)
    assert (
        len(asked) == len(set(asked)) == len(deploy_access(build_plan(config, load_lock(config.lock_path))))
    )
    # Without preflight the server dry run of the whole plan meets the same rule before anything is applied.
    with pytest.raises(JobError) as info:
        d.deploy(
            d.Options(config=str(cfg), poll=0.01, skip_preflight=True),
            cluster=cluster,
            master=None,
            out=io.StringIO(),
        )
    assert str(info.value).startswith(
        f"server dry run: 1 of 8 objects refused (TrainJob/{TRAIN}); nothing was applied"
    )
    assert kube.writes == []


def test_every_missing_verb_is_a_line(ready, kube, cluster):
    kube.deny = {("*", "batch", "jobs"), ("get", "", "pods/log")}
    fails, _ = refused(ready(), cluster, kube)
    assert [f.split(" (")[0] for f in fails] == [
        f"not allowed to {verb} jobs.batch in namespace {NS}"
        for verb in ("get", "create", "patch", "list", "watch")
    ]
    assert all(f.endswith(RBAC_FIX) for f in fails)


def test_optional_permissions_are_warnings(ready, kube, cluster):
    """Logs only enrich a failure's report (the probe's verdict is its termination message) and delete
    only serves --retry-failed and teardown: without them deploy still runs, with a warning each."""
    kube.deny = {("get", "", "pods/log"), ("delete", "batch", "jobs")}
    log = io.StringIO()
    d.deploy(d.Options(config=str(ready()), poll=0.01), cluster=cluster, master=None, out=log)
    warnings = [line for line in log.getvalue().splitlines() if "not allowed to" in line]
    assert [w.split(" (")[0] for w in warnings] == [
        f"preflight: warn  not allowed to get pods/log in namespace {NS}",
        f"preflight: warn  not allowed to delete jobs.batch in namespace {NS}",
    ]
    assert "preflight: FAIL" not in log.getvalue()


def test_access_reviews_that_cannot_be_made_are_a_warning(ready, kube, cluster):
    kube.deny = {("create", "authorization.k8s.io", "selfsubjectaccessreviews")}
    lines = passes(ready(), cluster)
    assert any(
        line.startswith("preflight: warn  permissions: could not be checked (access review (get ")
        and "selfsubjectaccessreviews.authorization.k8s.io is forbidden" in line
        for line in lines
    )


def test_the_stand_ins_rbac_answers_requests_and_reviews_alike(kube, cluster):
    """The rule table answers a real request with the server's 403 and a review with the same verdict."""
    kube.deny = {("patch", "", "configmaps")}
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"a": "1"}}
    with pytest.raises(JobError) as info:
        cluster.apply(cm)
    assert str(info.value) == (
        'apply ConfigMap/settings: Kubernetes API answered 403 configmaps "settings" is forbidden: User '
        f'"tester" cannot patch resource "configmaps" in API group "" in the namespace "{NS}"'
    )
    assert cluster.access_review("patch", "ConfigMap") == (False, "")
    assert cluster.access_review("get", "ConfigMap")[0] is True
    kube.deny = {("list", "storage.k8s.io", "storageclasses")}
    with pytest.raises(JobError) as info:
        cluster.list("StorageClass")
    assert str(info.value) == (
        "list StorageClass: Kubernetes API answered 403 storageclasses.storage.k8s.io is forbidden: User "
        '"tester" cannot list resource "storageclasses" in API group "storage.k8s.io" at the cluster scope'
    )
    assert cluster.access_review("list", "StorageClass") == (False, "")
    assert kube.writes == []


# -- the bucket, with the keys the pods use


@pytest.fixture
def iam_keys(s3):
    """Keys of an IAM user allowed s3:*, with moto enforcing authentication from then on (any other key
    is refused); moto's switch is process-wide, so it is turned off again afterwards."""
    url, _ = s3
    iam = boto3.client("iam", endpoint_url=url, **KEYS)
    iam.create_user(UserName="pods")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="pods", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="pods")["AccessKey"]
    requests.post(f"{url}/moto-api/reset-auth", data=b"0", timeout=30).raise_for_status()
    try:
        yield key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        requests.post(f"{url}/moto-api/reset-auth", data=b"inf", timeout=30).raise_for_status()


def test_the_bucket_is_checked_with_the_secrets_keys(ready, kube, cluster, iam_keys, secret_env, monkeypatch):
    cfg = ready()  # the environment's keys are the tests', which the enforcing server refuses
    put_secret(kube, *iam_keys)
    ok = (
        f"preflight: ok    bucket model-checkpoints (exists, checked with the keys of Secret/{SECRET}, as the "
        "pods will use them)"
    )
    lines = passes(cfg, cluster)
    assert ok in lines
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    lines = passes(cfg, cluster)  # no keys in this shell at all
    assert ok in lines
    put_secret(kube, iam_keys[0], "not-the-key")
    fails, _ = refused(cfg, cluster, kube)
    assert fails == [
        f"bucket model-checkpoints: not accessible with the keys of Secret/{SECRET}, as the pods will use "
        "them (403)"
    ]
    # The Secret cannot be read: the local keys are used, and it says so; here there are none.
    kube.deny = {("get", "", "secrets")}
    log = io.StringIO()
    with pytest.raises(JobError):
        d.deploy(d.Options(config=str(cfg), poll=0.01), cluster=cluster, master=None, out=log)
    text = log.getvalue()
    assert (
        f"preflight: warn  Secret/{SECRET}: could not be read (Secret/{SECRET}: Kubernetes API answered 403 "
        f'secrets "{SECRET}" is forbidden: User "tester" cannot get resource "secrets" in API group "" in '
        f'the namespace "{NS}"); the bucket is checked with the local AWS credentials'
    ) in text
    assert (
        "preflight: FAIL  bucket model-checkpoints: no credentials to check it with (the local AWS "
        f"credentials, not the pods' Secret/{SECRET}: none are set); set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, or run `invoke secrets` so the pods' are read"
    ) in text
    assert f"preflight: FAIL  not allowed to get secrets in namespace {NS}" in text
    assert kube.writes == []
    for value in (*iam_keys, *secret_env.values()):
        assert value not in text and value not in "\n".join(lines)
