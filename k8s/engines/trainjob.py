"""The Kubeflow Trainer engine (trainer.kubeflow.org/v1alpha1 `TrainJob`, Trainer v2.3): the spec's
image, command, env, width and resources go in `spec.trainer`; the runtime (default the cluster's
`torch-distributed` ClusterTrainingRuntime) supplies the JobSet around it, and its torch plugin gives
each node PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR and PET_MASTER_PORT, which
`trainer.launch` reads. What `spec.trainer` cannot carry (the shared volume, the configs, /dev/shm,
the security context, node selection) goes in as a `runtimePatches` entry for the runtime's `node`
job and container, the v2.3 field (v2.2 replaced podTemplateOverrides with it)."""

from __future__ import annotations

from jobs.spec import JobSpec
from k8s import render
from k8s.config import PipelineConfig

KIND = "TrainJob"
API_VERSION = "trainer.kubeflow.org/v1alpha1"
NODE = "node"  # the replicated job and container name of Trainer's runtimes


def name(cfg: PipelineConfig) -> str:
    return f"{cfg.instance}-train"


def render_objects(cfg: PipelineConfig, spec: JobSpec, images: dict[str, str]) -> list[dict]:
    t = cfg.train
    c = render.container(cfg, spec, images[spec.image], name=NODE)
    pod = render.pod_spec(cfg, spec, [c])
    trainer = {
        "image": c["image"],
        "command": c["command"],
        "args": c["args"],
        "env": c["env"],
        "numNodes": spec.nodes,
        "numProcPerNode": spec.procs_per_node,
    }
    if "resources" in c:
        trainer["resourcesPerNode"] = c["resources"]
    pod_patch = {
        "securityContext": pod["securityContext"],
        "volumes": pod["volumes"],
        "containers": [{"name": NODE, "volumeMounts": c["volumeMounts"], "securityContext": c["securityContext"]}],
    }
    if "nodeSelector" in pod:
        pod_patch["nodeSelector"] = pod["nodeSelector"]
    obj = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": render.meta(cfg, name(cfg), "train"),
        "spec": {
            "runtimeRef": {"apiGroup": "trainer.kubeflow.org", "kind": t.runtime_kind, "name": t.runtime},
            "trainer": trainer,
            "runtimePatches": [{
                "manager": render.FIELD_MANAGER,
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
                    "name": NODE,
                    "template": {"spec": {"template": {
                        "metadata": {"labels": render.labels(cfg, "train")},
                        "spec": pod_patch,
                    }}},
                }]}}},
            }],
        },
    }
    if t.deadline_seconds:
        obj["spec"]["activeDeadlineSeconds"] = t.deadline_seconds
    obj["metadata"]["annotations"] = {"neox-pipeline/spec-sha256": render.spec_hash(obj["spec"])}
    return [obj]
