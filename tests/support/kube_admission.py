"""Admission as a cluster with Kubeflow Trainer v2.3 installed answers it, for the API server
stand-in (tests/support/kube.py): Trainer's validating webhooks for TrainJobs and TrainingRuntimes,
and the API server's own pod-template resource rules for Jobs, with their messages and Status codes.
A webhook refusal is a 403 whose message is `admission webhook "NAME" denied the request: ERRORS`,
the ERRORS being Kubernetes field errors (`PATH: Invalid value: VALUE: DETAIL`), several joined as
`[e1, e2]`, as controller-runtime aggregates them.

What the TrainJob validator checks, after kubeflow/trainer v2.3 (pkg/webhooks/trainjob_webhook.go,
pkg/runtime/core/*trainingruntime.go and the jobset and torch plugins' Validate):
- the runtimeRef names a runtime kind Trainer registers, and that runtime exists (a
  ClusterTrainingRuntime is cluster-scoped, a TrainingRuntime lives in the TrainJob's namespace);
- every runtimePatches entry: its manager is a domain-prefixed path (apimachinery's
  IsDomainPrefixedPath), its replicated jobs and containers exist in the runtime's template, and it sets
  no env on the node or initializer containers; on update, patches change only while suspended;
- on a runtime with the torch policy: numProcPerNode is an int or auto/cpu/gpu, and trainer.env sets
  none of the PET_* variables the torch plugin owns.
The TrainingRuntime validator: a replicated job labelled with a trainjob ancestor has one replica and
the container that ancestor needs (`node` for the trainer).

Not modelled: the CRD schemas and their CEL rules (k8s/validate.py holds objects to the schemas
before anything is sent), runtime snapshots, elastic and MPI policies."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass

GROUP = "trainer.kubeflow.org"
TRAINJOB_WEBHOOK = "validator.trainjob.trainer.kubeflow.org"
TRAININGRUNTIME_WEBHOOK = "validator.trainingruntime.trainer.kubeflow.org"
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
ANCESTOR_CONTAINERS = {
    "trainer": "node",
    "model-initializer": "model-initializer",
    "dataset-initializer": "dataset-initializer",
}
RESERVED_CONTAINERS = ("dataset-initializer", "model-initializer", "node")
TORCH_RESERVED_ENVS = (
    "PET_NNODES",
    "PET_NPROC_PER_NODE",
    "PET_NODE_RANK",
    "PET_MASTER_ADDR",
    "PET_MASTER_PORT",
)

# Trainer v2.3's default `torch-distributed` ClusterTrainingRuntime (manifests/base/runtimes), as a
# cluster with Trainer installed serves it.
TORCH_DISTRIBUTED = {
    "apiVersion": f"{GROUP}/v1alpha1",
    "kind": "ClusterTrainingRuntime",
    "metadata": {
        "name": "torch-distributed",
        "labels": {"trainer.kubeflow.org/framework": "torch"},
        "resourceVersion": "1",
    },
    "spec": {
        "mlPolicy": {"numNodes": 1, "torch": {}},
        "template": {
            "spec": {
                "replicatedJobs": [
                    {
                        "name": "node",
                        "template": {
                            "metadata": {"labels": {ANCESTOR_LABEL: "trainer"}},
                            "spec": {
                                "template": {
                                    "spec": {
                                        "containers": [
                                            {
                                                "name": "node",
                                                "image": "pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime",
                                            }
                                        ]
                                    }
                                }
                            },
                        },
                    }
                ]
            }
        },
    },
}


def torch_distributed() -> dict:
    return copy.deepcopy(TORCH_DISTRIBUTED)


@dataclass(frozen=True)
class Denial:
    code: int
    message: str
    reason: str


# -- apimachinery's field errors, as they print


def _value(v) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, int | float):
        return str(v)
    return json.dumps(v, separators=(",", ":"))


def invalid(path: str, value, detail: str) -> str:
    return f"{path}: Invalid value: {_value(value)}: {detail}"


def forbidden(path: str, detail: str) -> str:
    return f"{path}: Forbidden: {detail}"


def required(path: str, detail: str) -> str:
    return f"{path}: Required value: {detail}"


def aggregate(errors: list[str]) -> str:
    return errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"


_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_HTTP_PATH = re.compile(r"^[A-Za-z0-9/\-._~%!$&'()*+,;=:]+$")


def domain_prefixed_path_errors(path: str, value: str) -> list[str]:
    """apimachinery's validation.IsDomainPrefixedPath."""
    if not value:
        return [required(path, "")]
    host, slash, rest = value.partition("/")
    if not slash or not host or not rest:
        return [invalid(path, value, 'must be a domain-prefixed path (such as "acme.io/foo")')]
    errors = []
    if len(host) > 253:
        errors.append(invalid(path, host, "must be no more than 253 characters"))
    if not _DNS1123_SUBDOMAIN.match(host):
        errors.append(
            invalid(
                path,
                host,
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
                "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex "
                "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
            )
        )
    if not _HTTP_PATH.match(rest):
        errors.append(
            invalid(
                path, rest, "Invalid path (regex used for validation is '[A-Za-z0-9/\\-._~%!$&'()*+,;=:]+')"
            )
        )
    return errors


# -- Trainer's webhooks


def _template_jobs(runtime: dict) -> dict[str, set[str]]:
    """Replicated job name -> its container and initContainer names, from a runtime's template."""
    out = {}
    for rj in (((runtime.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
        "replicatedJobs"
    ) or []:
        pod = (((rj.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
        out[rj["name"]] = {
            c["name"] for c in [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]
        }
    return out


def _without_time(patches: list) -> list:
    return [{k: v for k, v in p.items() if k != "time"} for p in patches or []]


def _runtime_ref(obj: dict) -> tuple[str, str, str]:
    ref = (obj.get("spec") or {}).get("runtimeRef") or {}
    return ref.get("apiGroup", GROUP), ref.get("kind", "ClusterTrainingRuntime"), ref.get("name", "")


def trainjob_errors(objects: dict, obj: dict, old: dict | None) -> list[str]:
    """The TrainJob validator's field errors (an empty list admits it)."""
    spec = obj.get("spec") or {}
    group, kind, name = _runtime_ref(obj)
    if group != GROUP or kind not in ("ClusterTrainingRuntime", "TrainingRuntime"):
        return [f"unsupported runtime: {kind}.{group}"]
    ref = {"name": name, "apiGroup": group, "kind": kind}
    runtime = objects.get((kind, name))
    if runtime is None:
        plural, path, what = (
            ("clustertrainingruntimes", "spec.RuntimeRef", "clusterTrainingRuntime")
            if kind == "ClusterTrainingRuntime"
            else ("trainingruntimes", "spec.runtimeRef", "trainingRuntime")
        )
        return [
            invalid(
                path,
                ref,
                f'{plural}.{GROUP} "{name}" not found: specified {what} must be created before the '
                "TrainJob is created",
            )
        ]
    errors: list[str] = []
    jobs = _template_jobs(runtime)
    patches = spec.get("runtimePatches") or []
    for patch in patches:
        errors += domain_prefixed_path_errors("spec.runtimePatches.manager", patch.get("manager", ""))
        template = ((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}
        for rj in template.get("replicatedJobs") or []:
            if rj.get("name") not in jobs:
                errors.append(
                    invalid(
                        "spec.runtimePatches",
                        patches,
                        "must not have replicated job that doesn't exist in the runtime job template",
                    )
                )
                continue
            pod = (((rj.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
            for field_name, what in (("initContainers", "initContainer"), ("containers", "container")):
                for c in pod.get(field_name) or []:
                    if c.get("name") not in jobs[rj["name"]]:
                        errors.append(
                            invalid(
                                "spec.runtimePatches",
                                patches,
                                f"must not have {what} that doesn't exist in the runtime job {rj['name']}",
                            )
                        )
                    elif what == "container" and c.get("env") and c["name"] in RESERVED_CONTAINERS:
                        errors.append(
                            invalid(
                                "spec.runtimePatches",
                                patches,
                                "must not have envs for the "
                                + ", ".join(RESERVED_CONTAINERS)
                                + " containers",
                            )
                        )
    if old is not None and _without_time(patches) != _without_time(
        (old.get("spec") or {}).get("runtimePatches")
    ):
        if not (spec.get("suspend") or (old.get("spec") or {}).get("suspend")):
            errors.append(
                forbidden(
                    "spec.runtimePatches",
                    "RuntimePatches can only be modified when the TrainJob is suspended before or after the update",
                )
            )
    trainer = spec.get("trainer")
    if ((runtime.get("spec") or {}).get("mlPolicy") or {}).get("torch") is not None and trainer:
        nproc = trainer.get("numProcPerNode")
        if isinstance(nproc, str) and nproc not in ("auto", "cpu", "gpu"):
            errors.append(
                invalid("spec.trainer.numProcPerNode", nproc, "must have an int value or [auto cpu gpu]")
            )
        reserved = sorted({e.get("name") for e in trainer.get("env") or []} & set(TORCH_RESERVED_ENVS))
        if reserved:
            errors.append(
                invalid(
                    "spec.trainer.env",
                    trainer.get("env"),
                    f"must not have reserved envs, invalid envs configured: [{' '.join(reserved)}]",
                )
            )
    return errors


def trainingruntime_errors(obj: dict) -> list[str]:
    errors = []
    base = "spec.template.spec.replicatedJobs"
    for i, rj in enumerate(
        (((obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get("replicatedJobs") or []
    ):
        ancestor = (((rj.get("template") or {}).get("metadata") or {}).get("labels") or {}).get(
            ANCESTOR_LABEL
        )
        if ancestor not in ANCESTOR_CONTAINERS:
            continue
        if rj.get("replicas", 1) != 1:
            errors.append(invalid(f"{base}[{i}].replicas", rj.get("replicas"), "always must be 1"))
        pod = (((rj.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
        containers = pod.get("containers") or []
        if not any(c.get("name") == ANCESTOR_CONTAINERS[ancestor] for c in containers):
            errors.append(
                invalid(
                    f"{base}[{i}].template.spec.template.spec.containers",
                    containers,
                    f"must contain the required container for the ancestor: {ancestor}",
                )
            )
    return errors


# -- the API server's own validation of a Job's pod template (resources)


def _quantity(q) -> float:
    from kubernetes.utils.quantity import parse_quantity

    return float(parse_quantity(q))


def resource_errors(pod: dict, path: str) -> list[str]:
    """Requests within limits; extended resources (GPUs) not overcommitted: a limit, equal to the request."""
    errors = []
    for i, c in enumerate([*(pod.get("initContainers") or []), *(pod.get("containers") or [])]):
        where = f"{path}.containers[{i}].resources"
        res = c.get("resources") or {}
        requests, limits = res.get("requests") or {}, res.get("limits") or {}
        for name, value in requests.items():
            extended = "/" in name and not name.startswith("kubernetes.io/")
            if extended and name not in limits:
                errors.append(
                    required(f"{where}.limits", "Limit must be set for non overcommitable resources")
                )
            elif extended and _quantity(value) != _quantity(limits[name]):
                errors.append(
                    invalid(
                        f"{where}.requests[{name}]", value, f"must be equal to {name} limit of {limits[name]}"
                    )
                )
            elif name in limits and _quantity(value) > _quantity(limits[name]):
                errors.append(
                    invalid(
                        f"{where}.requests",
                        value,
                        f"must be less than or equal to {name} limit of {limits[name]}",
                    )
                )
    return errors


def review(objects: dict, kind: str, obj: dict, old: dict | None) -> Denial | None:
    """What admission says to creating (`old` None) or updating `obj`: None admits it."""
    name = obj["metadata"]["name"]
    if kind == "Job":
        errors = resource_errors(
            ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}, "spec.template.spec"
        )
        if errors:
            return Denial(422, f'Job.batch "{name}" is invalid: {aggregate(errors)}', "Invalid")
        return None
    webhook, errors = None, []
    if kind == "TrainJob":
        webhook, errors = TRAINJOB_WEBHOOK, trainjob_errors(objects, obj, old)
    elif kind == "TrainingRuntime":
        webhook, errors = TRAININGRUNTIME_WEBHOOK, trainingruntime_errors(obj)
    if errors:
        return Denial(
            403, f'admission webhook "{webhook}" denied the request: {aggregate(errors)}', "Forbidden"
        )
    return None


def qos_class(pod: dict) -> str:
    """The pod's QoS class as the kubelet computes it (pkg/apis/core/helper/qos): from CPU and memory
    only; BestEffort when no container requests or limits either, Guaranteed when every container has
    both limited with requests (defaulted to the limits) equal to them, else Burstable."""
    containers = [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]
    seen, guaranteed = False, True
    for c in containers:
        res = c.get("resources") or {}
        limits = {k: v for k, v in (res.get("limits") or {}).items() if k in ("cpu", "memory")}
        requests = {
            **limits,
            **{k: v for k, v in (res.get("requests") or {}).items() if k in ("cpu", "memory")},
        }
        seen = seen or bool(requests or limits)
        if set(limits) != {"cpu", "memory"} or any(
            _quantity(requests[k]) != _quantity(limits[k]) for k in limits
        ):
            guaranteed = False
    if not seen:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"
