"""The cluster's word before the first stage: the server-side dry run of the whole plan, Kubeflow
Trainer v2.3's admission rules as the API server stand-in enforces them (tests/support/kube_admission.py;
no API server or Trainer webhook can run here, so the stand-in answers as they do, with their Status
and messages, through the official client over TLS), and the schema of the cluster's version."""

from __future__ import annotations

import copy
import io
import json

import pytest

from jobs.cli import JobError
from k8s import admission
from k8s import deploy as d
from k8s.cluster import ApiError
from k8s.config import load_config, load_lock
from k8s.plan import build_plan
from k8s.validate import schema_version
from tests.support import kube_admission

TRAINJOB = "TrainJob/gpt-neox-20b-finetune-train"
DENIED = 'admission webhook "validator.trainjob.trainer.kubeflow.org" denied the request: '


def _opts(config_file, **kw):
    return d.Options(config=str(config_file), skip_preflight=True, poll=0.01, **kw)


def _engine(engine, **train):
    def edit(raw):
        raw["train"] = {"engine": engine, "nodes": 2, "gpus_per_node": 8, **train}
        raw.pop("determined_master")

    return edit


def _plan(make_config, edit):
    cfg = load_config(make_config(edit))
    return cfg, build_plan(cfg, load_lock(cfg.path.parent / cfg.raw["lock_file"]))


def _verdict() -> str:
    return json.dumps({"weights_verified": True, "reason": "all files present", "files": 3}) + "\n"


def _secrets(config, cluster):
    d.secrets(_opts(config), cluster=cluster, out=io.StringIO())


# -- the runtimePatches manager


def test_the_default_trainjob_passes_trainers_webhook(make_config, kube, cluster):
    """The default mode (the cluster's torch-distributed + runtimePatches) as Trainer v2.3 admits it."""
    _, plan = _plan(make_config, _engine("trainjob"))
    tj = plan.train_object
    (patch,) = tj["spec"]["runtimePatches"]
    assert patch["manager"] == "neox-pipeline.io/deploy"
    assert kube_admission.trainjob_errors(kube.admission_view(), tj, None) == []
    what, live = cluster.apply(tj, dry_run=True)
    assert what == "created" and live["spec"]["runtimePatches"][0]["manager"] == "neox-pipeline.io/deploy"
    assert kube.writes == [] and ("TrainJob", tj["metadata"]["name"]) not in kube.objects


def test_the_stand_in_refuses_a_manager_without_a_domain_as_trainer_does(make_config, kube, cluster):
    """The rule the real webhook applied: this is the line a real Trainer v2.3 answered."""
    _, plan = _plan(make_config, _engine("trainjob"))
    tj = copy.deepcopy(plan.train_object)
    tj["spec"]["runtimePatches"][0]["manager"] = "neox-pipeline"
    with pytest.raises(ApiError) as info:
        cluster.apply(tj)
    assert info.value.status == 403
    assert str(info.value) == (
        f"apply {TRAINJOB}: Kubernetes API answered 403 {DENIED}spec.runtimePatches.manager: Invalid value: "
        '"neox-pipeline": must be a domain-prefixed path (such as "acme.io/foo")'
    )
    assert kube.writes == []


@pytest.mark.parametrize(
    "manager, ok",
    [
        ("neox-pipeline.io/deploy", True),
        ("trainer.kubeflow.org/kubeflow-sdk", True),
        ("neox-pipeline", False),
        ("example.com/", False),
        ("Example.com/neox", False),
        ("example.com/has space", False),
    ],
)
def test_domain_prefixed_path_as_apimachinery_checks_it(manager, ok):
    assert (kube_admission.domain_prefixed_path_errors("m", manager) == []) is ok


def test_patch_manager_is_configurable_and_checked_in_the_config(make_config, kube, cluster):
    _, plan = _plan(make_config, _engine("trainjob", patch_manager="ml.example.com/neox"))
    assert plan.train_object["spec"]["runtimePatches"][0]["manager"] == "ml.example.com/neox"
    path = make_config(_engine("trainjob", patch_manager="neox"), name="bad.yaml")
    with pytest.raises(
        JobError, match=r"train.patch_manager 'neox': must be a domain-prefixed path DOMAIN/NAME"
    ):
        d.deploy(_opts(path), cluster=cluster, master=None, out=io.StringIO())
    assert kube.requests == []


# -- the other Trainer rules the stand-in enforces, each one able to fail


def _trainjob(make_config):
    _, plan = _plan(make_config, _engine("trainjob"))
    return copy.deepcopy(plan.train_object)


def test_a_missing_cluster_runtime_is_refused_at_admission(make_config, kube, cluster):
    kube.remove_cluster_object("ClusterTrainingRuntime", "torch-distributed")
    with pytest.raises(ApiError, match="403") as info:
        cluster.apply(_trainjob(make_config))
    assert (
        f'{DENIED}spec.RuntimeRef: Invalid value: {{"name":"torch-distributed","apiGroup":"trainer.kubeflow.org",'
        '"kind":"ClusterTrainingRuntime"}: clustertrainingruntimes.trainer.kubeflow.org "torch-distributed" '
        "not found: specified clusterTrainingRuntime must be created before the TrainJob is created"
    ) in str(info.value)


def test_reserved_torch_envs_and_unknown_patch_targets_are_refused_together(make_config, kube, cluster):
    tj = _trainjob(make_config)
    tj["spec"]["trainer"]["env"].append({"name": "PET_MASTER_ADDR", "value": "x"})
    rjob = tj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    rjob["template"]["spec"]["template"]["spec"]["containers"][0]["name"] = "trainer"
    with pytest.raises(ApiError) as info:
        cluster.apply(tj)
    msg = str(info.value)
    assert msg.count("Invalid value") == 2 and f"{DENIED}[spec.runtimePatches: Invalid value: " in msg
    assert "must not have container that doesn't exist in the runtime job node" in msg
    assert msg.endswith("must not have reserved envs, invalid envs configured: [PET_MASTER_ADDR]]")
    assert kube.writes == []


def test_runtime_patches_change_only_while_suspended(make_config, kube, cluster):
    tj = _trainjob(make_config)
    cluster.apply(tj)
    changed = copy.deepcopy(tj)
    changed["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "template"
    ]["spec"]["template"]["metadata"]["labels"]["extra"] = "x"
    with pytest.raises(ApiError, match="RuntimePatches can only be modified when the TrainJob is suspended"):
        cluster.apply(changed)
    assert cluster.apply(tj)[0] == "unchanged"  # the same patches again are admitted


def test_own_runtime_passes_and_a_runtime_without_the_node_container_is_refused(make_config, kube, cluster):
    _, plan = _plan(make_config, _engine("trainjob", own_runtime=True))
    runtime, tj = plan.train
    assert cluster.apply(runtime)[0] == "created" and cluster.apply(tj)[0] == "created"
    bad = copy.deepcopy(runtime)
    bad["metadata"]["name"] = "broken-torch"
    bad["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"][
        "containers"
    ][0]["name"] = "trainer"
    with pytest.raises(ApiError, match="must contain the required container for the ancestor: trainer"):
        cluster.apply(bad)


def test_job_requests_above_their_limits_are_invalid(make_config, kube, cluster):
    _, plan = _plan(make_config, _engine("jobset"))
    job = copy.deepcopy(plan.preprocess)
    job["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "requests": {"cpu": "8", "nvidia.com/gpu": "1"},
        "limits": {"cpu": "2"},
    }
    with pytest.raises(ApiError, match="422") as info:
        cluster.apply(job)
    msg = str(info.value)
    assert "resources.limits: Required value: Limit must be set for non overcommitable resources" in msg
    assert 'resources.requests: Invalid value: "8": must be less than or equal to cpu limit of 2' in msg


# -- dryRun=All


def test_the_stand_in_honours_dry_run_as_an_api_server_does(make_config, kube, cluster):
    _, plan = _plan(make_config, _engine("jobset"))
    cm, job = plan.config_maps[0], plan.preprocess
    assert cluster.apply(cm, dry_run=True)[0] == "created"
    assert kube.objects.get(("ConfigMap", cm["metadata"]["name"])) is None and kube.writes == []
    kube.job_polls = 10**6  # the Job keeps running: only a write could move its resourceVersion
    cluster.apply(job)
    rv = kube.objects[("Job", job["metadata"]["name"])]["metadata"]["resourceVersion"]
    writes = list(kube.writes)
    # An unchanged re-apply of an immutable Job is fine; a changed template is refused, as for real.
    assert cluster.apply(job, dry_run=True)[0] == "unchanged"
    changed = copy.deepcopy(job)
    changed["spec"]["template"]["spec"]["containers"][0]["args"].append("--more")
    with pytest.raises(ApiError, match="spec.template: Invalid value: field is immutable"):
        cluster.apply(changed, dry_run=True)
    assert kube.writes == writes
    assert kube.objects[("Job", job["metadata"]["name"])]["metadata"]["resourceVersion"] == rv
    assert any("dryRun=All" in p for m, p, _ in kube.requests if m == "PATCH")


def test_a_webhook_refusal_in_the_dry_run_comes_before_anything_is_applied(
    make_config, kube, cluster, secret_env
):
    """The runtime named in train.runtime does not exist: before, every data stage ran first."""
    config = make_config(_engine("trainjob", runtime="torch-nightly"))
    _secrets(config, cluster)
    kube.outcomes["probe-weights"] = ("Complete", _verdict())
    before = list(kube.writes)
    log = io.StringIO()
    with pytest.raises(JobError) as info:
        d.deploy(_opts(config), cluster=cluster, master=None, out=log)
    assert str(info.value).startswith(
        f"server dry run: 1 of 8 objects refused ({TRAINJOB}); nothing was applied"
    )
    lines = [line for line in log.getvalue().splitlines() if line.startswith("deploy: refused: ")]
    assert lines == [
        f"deploy: refused: apply {TRAINJOB} (server dry run): Kubernetes API answered 403 {DENIED}"
        'spec.RuntimeRef: Invalid value: {"name":"torch-nightly","apiGroup":"trainer.kubeflow.org",'
        '"kind":"ClusterTrainingRuntime"}: clustertrainingruntimes.trainer.kubeflow.org "torch-nightly" '
        "not found: specified clusterTrainingRuntime must be created before the TrainJob is created"
    ]
    assert kube.writes == before  # no PVC, ConfigMap or Job


def test_every_refusal_is_one_line(make_config, kube, cluster, secret_env):
    def edit(raw):
        _engine("trainjob", patch_manager="ml.example.com/neox")(raw)
        raw["dataset"]["resources"] = {"cpu": "8", "cpu_limit": "2"}

    config = make_config(edit)
    _secrets(config, cluster)
    kube.remove_cluster_object("ClusterTrainingRuntime", "torch-distributed")
    log = io.StringIO()
    with pytest.raises(
        JobError, match=r"^server dry run: 3 of 8 objects refused \(Job/gpt-neox-20b-finetune-fetch-data"
    ):
        d.deploy(_opts(config), cluster=cluster, master=None, out=log)
    refused = [line for line in log.getvalue().splitlines() if line.startswith("deploy: refused: ")]
    assert len(refused) == 3  # dataset.resources is the data fetch's and the preprocessor's
    assert "Job/gpt-neox-20b-finetune-fetch-data-" in refused[0] and "answered 422" in refused[0]
    assert "Job/gpt-neox-20b-finetune-preprocess-" in refused[1] and "answered 422" in refused[1]
    assert TRAINJOB in refused[2] and "answered 403" in refused[2]


def test_a_running_trainjob_is_left_to_deploy_and_the_rest_is_still_checked(
    make_config, kube, cluster, secret_env
):
    config = make_config(_engine("trainjob"))
    _secrets(config, cluster)
    kube.outcomes["probe-weights"] = ("Complete", _verdict())
    d.deploy(_opts(config, wait_train=False), cluster=cluster, master=None, out=io.StringIO())
    cfg = load_config(config)
    plan = build_plan(cfg, load_lock(cfg.path.parent / cfg.raw["lock_file"]))
    sent, left_out = admission.dry_run_objects(plan, cluster)
    assert plan.train_object not in sent and len(sent) == len(plan.objects) - 1
    assert left_out == [f"{TRAINJOB} not sent: it exists, deploy follows it"]
    log = io.StringIO()
    assert admission.server_dry_run(plan, cluster, log) == len(plan.objects) - 1
    assert "deploy: server dry run: 7 objects admitted" in log.getvalue()


def test_own_runtime_first_deploy_checks_the_runtime_and_leaves_the_trainjob_for_after_it(
    make_config, kube, cluster, secret_env
):
    """A dry run stores nothing, so a TrainJob naming a TrainingRuntime the same deploy creates would be
    refused by Trainer's webhook (runtime not found) on a real server too: it is left out, and says so."""
    config = make_config(_engine("trainjob", own_runtime=True))
    _secrets(config, cluster)
    kube.outcomes["probe-weights"] = ("Complete", _verdict())
    log = io.StringIO()
    res = d.deploy(_opts(config), cluster=cluster, master=None, out=log)
    assert res.train_state == "Complete"
    assert (
        f"deploy: server dry run: {TRAINJOB} not sent: its TrainingRuntime/gpt-neox-20b-finetune-torch is new"
        in log.getvalue()
    )
    assert "deploy: server dry run: 8 objects admitted" in log.getvalue()  # the runtime among them


# -- the schema of the cluster's version


def test_objects_are_held_to_the_clusters_schema_version(make_config, kube, cluster, secret_env, tmp_path):
    config = make_config(_engine("jobset"))
    out = io.StringIO()
    d.deploy(_opts(config, dry_run=True, out=str(tmp_path / "r")), out=out)
    newest = schema_version(None)[0]
    assert (
        f"deploy: objects valid against the Kubernetes {newest} schema, the newest shipped" in out.getvalue()
    )
    summary = json.loads((tmp_path / "r" / "render.json").read_text())
    assert summary["kubernetes_version"] == newest
    kube.git_version = "v1.31.2"
    _secrets(config, cluster)
    kube.outcomes["probe-weights"] = ("Complete", _verdict())
    log = io.StringIO()
    d.deploy(_opts(config, wait_train=False), cluster=cluster, master=None, out=log)
    assert (
        "deploy: objects valid against the Kubernetes 1.31 schema, the cluster's (v1.31.2)" in log.getvalue()
    )
