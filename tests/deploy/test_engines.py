"""The training engines as rendered: the same pipeline config with `train.engine` set to `trainjob` or
`jobset` gives a TrainJob (Kubeflow Trainer v2.3.0) or a JobSet (v0.12.0) that validates in strict mode
against the CRD it targets, with the launch contract of FORMATS section 7 in its pods."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from jobs.cli import JobError
from k8s import deploy as d
from k8s.config import load_config, load_lock
from k8s.plan import build_plan, write_plan
from k8s.validate import CRD_DIR, validate_custom

SHARED = Path(__file__).parents[3] / "shared"
UPSTREAM = {
    "trainjob-v1alpha1.json": SHARED
    / "schemas"
    / "kubeflow-trainer-v2.3.0"
    / "trainer.kubeflow.org_trainjobs.yaml",
    "trainingruntime-v1alpha1.json": SHARED
    / "schemas"
    / "kubeflow-trainer-v2.3.0"
    / "trainer.kubeflow.org_trainingruntimes.yaml",
    "jobset-v1alpha2.json": SHARED / "schemas" / "jobset-v0.12.0" / "jobset.x-k8s.io_jobsets.yaml",
}
RUNTIME = SHARED / "schemas" / "kubeflow-trainer-v2.3.0" / "runtime-torch-distributed.yaml"


def _plan(make_config, engine, edit=None):
    def change(raw):
        raw["train"] = {"engine": engine}
        if edit:
            edit(raw)

    path = make_config(change)
    cfg = load_config(path)
    return cfg, build_plan(cfg, load_lock(cfg.path.parent / cfg.raw["lock_file"]))


def _strip(x):
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k != "description"}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


@pytest.mark.parametrize("name", sorted(UPSTREAM))
def test_vendored_crd_schema_is_upstreams(name):
    """k8s/crds/ holds the upstream CRDs' openAPIV3Schema (descriptions dropped), so deploy validates
    offline; this holds it to the copy in ../shared."""
    if not UPSTREAM[name].is_file():
        pytest.skip(f"{UPSTREAM[name]} not present (../shared is only beside CI's and developers' clones)")
    crd = yaml.safe_load(UPSTREAM[name].read_text())
    vendored = json.loads((CRD_DIR / name).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == vendored["version"])
    assert vendored["group"] == crd["spec"]["group"] and vendored["kind"] == crd["spec"]["names"]["kind"]
    assert vendored["plural"] == crd["spec"]["names"]["plural"] and vendored["scope"] == crd["spec"]["scope"]
    assert vendored["openAPIV3Schema"] == _strip(version["schema"]["openAPIV3Schema"])


def test_trainjob_from_the_guides_scale(make_config):
    cfg, plan = _plan(make_config, "trainjob")
    assert plan.experiment is None and [o["kind"] for o in plan.train] == ["TrainJob"]
    tj = plan.train_object
    validate_custom(tj)
    spec = tj["spec"]
    assert spec["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "torch-distributed",
    }
    t = spec["trainer"]
    assert (t["numNodes"], t["numProcPerNode"]) == (12, 8)  # the guide's 96 A40 slots
    assert t["image"].endswith("@sha256:" + "1" * 64)
    assert t["command"] == ["python", "-m", "trainer.launch", "--"]
    assert t["args"][:2] == ["--config", "/etc/neox/determined-cluster.yml"]
    assert (
        "train-iters=100" in t["args"]
        and "lr-decay-iters=100" in t["args"]
        and "eval-interval=50" in t["args"]
    )
    assert t["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    env = {e["name"]: e for e in t["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "checkpoint-s3-credentials", "key": "AWS_SECRET_ACCESS_KEY"}
    }
    assert env["NEOX_CHECKPOINT_MIRROR"]["value"] == f"s3://model-checkpoints/gpt-neox-20b/{cfg.instance}"
    assert not any(k.startswith("PET_") for k in env)  # the torch plugin sets those
    (patch,) = spec["runtimePatches"]
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = rjob["template"]["spec"]["template"]["spec"]
    assert rjob["name"] == "node" and pod["containers"][0]["name"] == "node"
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert {"/mnt/finetune-gpt-neox", "/etc/neox", "/dev/shm", "/tmp"} <= set(mounts)
    assert pod["containers"][0]["securityContext"]["runAsNonRoot"] is True
    assert pod["nodeSelector"] == {"gpu.nvidia.com/class": "A40"}
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["finetune-gpt-neox"]


def test_trainjob_names_the_runtime_the_config_gives(make_config):
    _, plan = _plan(
        make_config,
        "trainjob",
        lambda r: r["train"].update(
            runtime="neox-torch", runtime_kind="TrainingRuntime", nodes=2, gpus_per_node=4
        ),
    )
    spec = plan.train_object["spec"]
    assert spec["runtimeRef"]["name"] == "neox-torch" and spec["runtimeRef"]["kind"] == "TrainingRuntime"
    assert (spec["trainer"]["numNodes"], spec["trainer"]["numProcPerNode"]) == (2, 4)


def test_trainjob_container_is_the_one_torch_distributed_runs():
    """Our runtime patch targets the replicated job and container that Trainer's own runtime defines."""
    if not RUNTIME.is_file():
        pytest.skip(f"{RUNTIME} not present (../shared is only beside CI's and developers' clones)")
    runtime = yaml.safe_load(RUNTIME.read_text())
    (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    from k8s.engines import trainjob

    assert job["name"] == trainjob.NODE
    assert [c["name"] for c in job["template"]["spec"]["template"]["spec"]["containers"]] == [trainjob.NODE]
    assert "torch" in runtime["spec"]["mlPolicy"]


def test_jobset_has_indexed_nodes_restart_policy_and_rendezvous(make_config):
    cfg, plan = _plan(make_config, "jobset", lambda r: r["train"].update(max_restarts=5))
    js = plan.train_object
    validate_custom(js)
    name = js["metadata"]["name"]
    spec = js["spec"]
    assert spec["failurePolicy"] == {"maxRestarts": 5, "restartStrategy": "Recreate"}
    assert spec["network"] == {
        "enableDNSHostnames": True,
        "publishNotReadyAddresses": True,
        "subdomain": name,
    }
    (rjob,) = spec["replicatedJobs"]
    job = rjob["template"]["spec"]
    assert rjob["replicas"] == 1 and job["completionMode"] == "Indexed"
    assert job["parallelism"] == job["completions"] == 12
    pod = job["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["PET_NNODES"] == "12" and env["PET_NPROC_PER_NODE"] == "8"
    assert env["PET_MASTER_ADDR"] == f"{name}-node-0-0.{name}" and env["PET_MASTER_PORT"] == "29500"
    assert "PET_NODE_RANK" not in env  # each pod takes JOB_COMPLETION_INDEX
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    # The pod template is a Pod as Kubernetes' own schema sees it, strictly.
    from k8s.validate import validate_k8s

    validate_k8s({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"}, "spec": job})


@pytest.mark.parametrize("engine", ["trainjob", "jobset"])
def test_unknown_field_in_an_engine_object_is_an_error(make_config, engine):
    _, plan = _plan(make_config, engine)
    obj = json.loads(json.dumps(plan.train_object))
    obj["spec"]["trainerr"] = {}
    with pytest.raises(JobError, match=r"spec: Additional properties are not allowed \('trainerr'"):
        validate_custom(obj)


@pytest.mark.parametrize("engine", ["trainjob", "jobset"])
def test_dry_run_writes_the_engine_object_and_no_experiment(make_config, engine, tmp_path):
    cfg, plan = _plan(make_config, engine)
    out = tmp_path / "rendered"
    summary = write_plan(plan, out, {})
    kind = "TrainJob" if engine == "trainjob" else "JobSet"
    assert summary["engine"] == engine and summary["objects"][-1] == f"{kind}/{cfg.instance}-train"
    assert not (out / "experiment").exists()
    files = sorted((out / "kubernetes").glob(f"*-{kind.lower()}-*.yaml"))
    assert len(files) == 1 and yaml.safe_load(files[0].read_text())["kind"] == kind
    # The configs the pods mount are in the ConfigMap, with their paths on the volume.
    cm = next(o for o in plan.config_maps if o["metadata"]["name"].endswith("-configs"))
    assert "experiment.yaml" not in cm["data"]
    assert "/mnt/finetune-gpt-neox/data/enron/enron_text_document" in cm["data"]["determined-cluster.yml"]


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda r: r.update(train={"engine": "kubeflow"}), "train.engine: 'kubeflow' is not one of"),
        (
            lambda r: r.update(train={"engine": "jobset", "gpus_per_node": 8, "processes_per_node": 4}),
            "train.processes_per_node 4 does not match train.gpus_per_node 8",
        ),
        (
            lambda r: r.update(train={"engine": "trainjob", "runtime": "deepspeed-distributed"}),
            "train.runtime 'deepspeed-distributed' launches through MPI",
        ),
        (
            lambda r: r.update(train={"engine": "jobset", "gpus_per_node": 7}),
            "experiment.slots 96 is not a multiple of train.gpus_per_node 7",
        ),
        (
            lambda r: r.update(train={"engine": "jobset", "nodes": 0}),
            "train.nodes: 0 is less than the minimum of 1",
        ),
    ],
)
def test_bad_train_settings_one_line_nothing_applied(make_config, edit, expected, kube, cluster, secret_env):
    path = make_config(edit)
    with pytest.raises(JobError, match="^config .*" + expected.replace("(", r"\(").replace(")", r"\)")):
        d.deploy(
            d.Options(config=str(path), skip_preflight=True), cluster=cluster, master=None, out=io.StringIO()
        )
    assert kube.requests == []


def test_engines_need_no_determined_master(make_config):
    path = make_config(lambda r: (r.pop("determined_master"), r.update(train={"engine": "jobset"})))
    assert load_config(path).train.engine == "jobset"
    path = make_config(lambda r: r.pop("determined_master"), name="det.yaml")
    with pytest.raises(JobError, match="determined_master is required with train.engine determined"):
        load_config(path)


def test_trainjob_with_its_own_runtime_has_the_hardened_pod_and_restart_policy(make_config):
    cfg, plan = _plan(make_config, "trainjob", lambda r: r["train"].update(own_runtime=True, max_restarts=4))
    runtime, tj = plan.train
    validate_custom(runtime)
    validate_custom(tj)
    assert runtime["kind"] == "TrainingRuntime" and runtime["metadata"]["name"] == f"{cfg.instance}-torch"
    assert tj["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "TrainingRuntime",
        "name": f"{cfg.instance}-torch",
    }
    assert "runtimePatches" not in tj["spec"] and tj["spec"]["trainer"]["numNodes"] == 12
    spec = runtime["spec"]
    assert spec["mlPolicy"] == {"numNodes": 12, "torch": {}}
    assert spec["template"]["spec"]["failurePolicy"] == {"maxRestarts": 4}
    (rjob,) = spec["template"]["spec"]["replicatedJobs"]
    assert rjob["name"] == "node"
    assert rjob["template"]["metadata"]["labels"] == {
        "trainer.kubeflow.org/trainjob-ancestor-step": "trainer"
    }
    assert rjob["template"]["spec"]["backoffLimit"] == 0
    pod = rjob["template"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"] is True
    assert [c["name"] for c in pod["containers"]] == ["node"]
    from k8s.validate import validate_k8s

    validate_k8s({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": pod})


def test_own_runtime_and_a_named_runtime_do_not_mix(make_config):
    path = make_config(lambda r: r.update(train={"engine": "trainjob", "own_runtime": True, "runtime": "x"}))
    with pytest.raises(JobError, match="train.own_runtime renders its own runtime; drop train.runtime"):
        load_config(path)
