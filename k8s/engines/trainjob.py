"""The Kubeflow Trainer engine (trainer.kubeflow.org/v1alpha1 `TrainJob`, Trainer v2.3): the spec's
image, command, env, width and resources go in `spec.trainer`; the runtime supplies the JobSet around
it, and its torch plugin gives each node PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR
and PET_MASTER_PORT, which `trainer.launch` reads.

Two ways to get the runtime:
- the cluster's (default `torch-distributed`, a ClusterTrainingRuntime): what `spec.trainer` cannot
  carry (the shared volume, the configs, /dev/shm, the security context, node selection) goes in as a
  `runtimePatches` entry for the runtime's `node` job and container (v2.3's field; v2.2 replaced
  podTemplateOverrides with it), owned by `train.patch_manager` (a DOMAIN/NAME path, as Trainer's
  webhook requires). Patches cannot set the pod's service-account token or the JobSet's
  failure policy: those stay the runtime's;
- `train.own_runtime`: a namespaced TrainingRuntime `<run>-torch` rendered here with the torch policy
  and our whole pod (no service-account token, the restricted security context) and a JobSet failure
  policy of `train.max_restarts`, so the TrainJob needs no patches."""

from __future__ import annotations

from jobs.spec import JobSpec
from k8s import render
from k8s.config import PipelineConfig

KIND = "TrainJob"
API_VERSION = "trainer.kubeflow.org/v1alpha1"
NODE = "node"  # the replicated job and container name of Trainer's runtimes
ANCESTOR = {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}  # how the controller finds the trainer


def name(cfg: PipelineConfig) -> str:
    return f"{cfg.instance}-train"


def runtime_name(cfg: PipelineConfig) -> str:
    return f"{cfg.instance}-torch"


def _runtime(cfg: PipelineConfig, spec: JobSpec, container: dict, pod: dict) -> dict:
    """Our TrainingRuntime: Trainer's torch-distributed runtime with our pod in place of its image's."""
    node = {k: v for k, v in container.items() if k in ("name", "image", "volumeMounts", "securityContext")}
    template_pod = {**pod, "containers": [node]}
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainingRuntime",
        "metadata": {
            **render.meta(cfg, runtime_name(cfg), "train"),
            "labels": {**render.labels(cfg, "train"), "trainer.kubeflow.org/framework": "torch"},
        },
        "spec": {
            "mlPolicy": {"numNodes": spec.nodes, "torch": {}},
            "template": {
                "spec": {
                    "failurePolicy": {"maxRestarts": cfg.train.max_restarts},
                    "replicatedJobs": [
                        {
                            "name": NODE,
                            "template": {
                                "metadata": {"labels": dict(ANCESTOR)},
                                # a failed pod fails its Job at once; the failure policy then recreates every
                                # node together (one node alone could not rejoin a static rendezvous)
                                "spec": {
                                    "backoffLimit": 0,
                                    "template": {
                                        "metadata": {"labels": render.labels(cfg, "train")},
                                        "spec": template_pod,
                                    },
                                },
                            },
                        }
                    ],
                }
            },
        },
    }


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
    objects = []
    if t.own_runtime:
        runtime = _runtime(cfg, spec, c, pod)
        objects.append(runtime)
        ref = {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime", "name": runtime_name(cfg)}
        body = {"runtimeRef": ref, "trainer": trainer}
    else:
        pod_patch = {
            "securityContext": pod["securityContext"],
            "volumes": pod["volumes"],
            "containers": [
                {"name": NODE, "volumeMounts": c["volumeMounts"], "securityContext": c["securityContext"]}
            ],
        }
        if "nodeSelector" in pod:
            pod_patch["nodeSelector"] = pod["nodeSelector"]
        ref = {"apiGroup": "trainer.kubeflow.org", "kind": t.runtime_kind, "name": t.runtime}
        body = {
            "runtimeRef": ref,
            "trainer": trainer,
            "runtimePatches": [
                {
                    "manager": t.patch_manager,
                    "trainingRuntimeSpec": {
                        "template": {
                            "spec": {
                                "replicatedJobs": [
                                    {
                                        "name": NODE,
                                        "template": {
                                            "spec": {
                                                "template": {
                                                    "metadata": {"labels": render.labels(cfg, "train")},
                                                    "spec": pod_patch,
                                                }
                                            }
                                        },
                                    }
                                ]
                            }
                        }
                    },
                }
            ],
        }
    if t.deadline_seconds:
        body["activeDeadlineSeconds"] = t.deadline_seconds
    obj = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": render.meta(cfg, name(cfg), "train"),
        "spec": body,
    }
    # The digest of what runs (the runtime included) tells "same run" from "a different run under this name".
    obj["metadata"]["annotations"] = {
        "neox-pipeline/spec-sha256": render.spec_hash([o["spec"] for o in objects] + [body])
    }
    return [*objects, obj]
