"""Training pods request CPU and memory per node, so the scheduler places them on nodes that have
them and the kubelet never treats them as BestEffort: the node's share by default (per GPU, or per
process on CPU-only nodes), `train.cpu` / `train.memory` to override, the memory-backed /dev/shm
(`train.shm_size`) counted in the memory. The QoS class is computed as the kubelet does
(tests/support/kube_admission.qos_class)."""

from __future__ import annotations

import pytest
from kubernetes.utils.quantity import parse_quantity

from k8s.config import load_config, load_lock
from k8s.plan import build_plan
from tests.support.kube_admission import qos_class


def _plan(make_config, engine, **train):
    def edit(raw):
        raw["train"] = {"engine": engine, "nodes": 2, **train}
        raw.pop("determined_master")

    cfg = load_config(make_config(edit))
    return cfg, build_plan(cfg, load_lock(cfg.path.parent / cfg.raw["lock_file"]))


def _node_pod(plan) -> dict:
    """The training pod as the controller builds it: for a TrainJob, the runtime's `node` container
    with the TrainJob's resourcesPerNode (Trainer copies it there) and the patched volumes."""
    obj = plan.train_object
    if obj["kind"] == "JobSet":
        return obj["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    trainer = obj["spec"]["trainer"]
    if "runtimePatches" in obj["spec"]:
        rjob = obj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][
            0
        ]
        pod = dict(rjob["template"]["spec"]["template"]["spec"])
    else:
        runtime = plan.train[0]
        pod = dict(
            runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
        )
    return {**pod, "containers": [{"name": "node", "resources": trainer["resourcesPerNode"]}]}


def _shm(pod) -> str:
    (vol,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
    assert vol["emptyDir"]["medium"] == "Memory"
    return vol["emptyDir"]["sizeLimit"]


@pytest.mark.parametrize("engine, own_runtime", [("trainjob", False), ("trainjob", True), ("jobset", False)])
def test_default_requests_are_the_nodes_share_and_count_the_shm(make_config, engine, own_runtime):
    extra = {"own_runtime": True} if own_runtime else {}
    _, plan = _plan(make_config, engine, gpus_per_node=8, **extra)
    pod = _node_pod(plan)
    res = pod["containers"][0]["resources"]
    assert res["requests"]["cpu"] == "48" and res["requests"]["memory"] == "400Gi"  # 8 x (6, 48Gi) + 16Gi
    assert res["limits"]["memory"] == res["requests"]["memory"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == "8"
    assert parse_quantity(res["requests"]["memory"]) >= parse_quantity(_shm(pod)) == parse_quantity("16Gi")
    assert qos_class(pod) == "Guaranteed"


@pytest.mark.parametrize("engine", ["trainjob", "jobset"])
def test_train_cpu_and_memory_override_the_share_and_shm_comes_on_top(make_config, engine):
    _, plan = _plan(make_config, engine, gpus_per_node=8, cpu="90", memory="900Gi", shm_size="32Gi")
    pod = _node_pod(plan)
    res = pod["containers"][0]["resources"]
    assert (res["requests"]["cpu"], res["requests"]["memory"]) == ("90", "932Gi")
    assert _shm(pod) == "32Gi" and qos_class(pod) != "BestEffort"


def test_a_cpu_only_node_gets_a_share_per_process(make_config):
    _, plan = _plan(make_config, "jobset", gpus_per_node=0, processes_per_node=4, shm_size="1Gi")
    res = _node_pod(plan)["containers"][0]["resources"]
    assert res["requests"] == {"cpu": "4", "memory": "17Gi"} and "nvidia.com/gpu" not in res["limits"]


def test_qos_class_as_the_kubelet_computes_it():
    gpu_only = {"containers": [{"name": "node", "resources": {"limits": {"nvidia.com/gpu": "8"}}}]}
    assert qos_class(gpu_only) == "BestEffort"  # what the issue saw: only the GPU requested
    burstable = {"containers": [{"name": "n", "resources": {"requests": {"memory": "1Gi"}}}]}
    assert qos_class(burstable) == "Burstable"
    limits_only = {"containers": [{"name": "n", "resources": {"limits": {"cpu": "2", "memory": "1Gi"}}}]}
    assert qos_class(limits_only) == "Guaranteed"  # requests default to the limits
