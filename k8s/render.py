"""The Kubernetes building blocks of one deployment: labels, the shared volume's PVC, ConfigMaps, and a
job spec (jobs/spec.py) as a container, a pod and a batch/v1 Job. Plain dicts, written as plain YAML
that kustomize can overlay. The training engines (k8s/engines/) build their objects from the same
container and pod.

Job names carry a short hash of their spec: Job templates are immutable, so a changed spec (a new image
digest, other arguments) becomes a new Job, and an unchanged one re-applies as a no-op."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from jobs.spec import JobSpec
from k8s.config import PipelineConfig

FIELD_MANAGER = "neox-pipeline"
PART_OF = "neox-pipeline"
UID = 1000  # user `neox` in every image
VOLUME = "shared"
CONFIGS_VOLUME = "neox-configs"
CONFIG_DIR = "/etc/neox"  # where train pods mount the rewritten NeoX configs (a ConfigMap)
PROBE_SCRIPT = Path(__file__).with_name("weights_probe.py")
PROBE_DIR = "/probe"

# Job policy per stage: retries, how long it may run, how long the finished Job stays for `invoke logs`.
# The TTL only bounds how long its pods' logs stay readable: where the pipeline stands (each stage's
# outcome, the probe's verdict) is in the stage record (k8s/stage_record.py), which has none, so a
# re-deploy after a Job expired still runs nothing that completed. A day for the probe (its verdict is
# recorded), a week for the stages whose logs someone may want to read after a weekend.
_JOB_POLICY = {
    "probe-weights": {"backoff_limit": 0, "deadline_seconds": 1800, "ttl_seconds": 86400},
    "fetch-weights": {"backoff_limit": 3, "deadline_seconds": 6 * 3600, "ttl_seconds": 7 * 86400},
    "fetch-data": {"backoff_limit": 3, "deadline_seconds": 6 * 3600, "ttl_seconds": 7 * 86400},
    "preprocess": {"backoff_limit": 2, "deadline_seconds": 12 * 3600, "ttl_seconds": 7 * 86400},
    "export": {"backoff_limit": 1, "deadline_seconds": 12 * 3600, "ttl_seconds": 7 * 86400},
}
# The same restricted security context on every container and pod we render (the train pods too).
CONTAINER_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": UID,
    "runAsGroup": UID,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": UID,
    "runAsGroup": UID,
    "fsGroup": UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def labels(cfg: PipelineConfig, step: str | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
        "app.kubernetes.io/instance": cfg.instance,
    }
    if step:
        out["app.kubernetes.io/component"] = step
    return out


def selector(cfg: PipelineConfig, step: str | None = None) -> str:
    sel = f"app.kubernetes.io/part-of={PART_OF},app.kubernetes.io/instance={cfg.instance}"
    return sel + (f",app.kubernetes.io/component={step}" if step else "")


def meta(cfg: PipelineConfig, name: str, step: str | None = None) -> dict:
    return {"name": name, "namespace": cfg.namespace, "labels": labels(cfg, step)}


def spec_hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def pvc(cfg: PipelineConfig) -> dict:
    vol = cfg.volume
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": meta(cfg, vol.name, "volume"),
        "spec": {
            "accessModes": [vol.access_mode],
            # left out, the API server's DefaultStorageClass admission fills in the cluster's default
            **({"storageClassName": vol.storage_class} if vol.storage_class else {}),
            "resources": {"requests": {"storage": vol.size}},
        },
    }


def config_map(cfg: PipelineConfig, name: str, files: dict[str, str], step: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(cfg, name, step), "data": dict(files)}


def probe_config_map(cfg: PipelineConfig) -> dict:
    return config_map(cfg, f"{cfg.instance}-probe", {PROBE_SCRIPT.name: PROBE_SCRIPT.read_text()}, "probe")


def configs_config_map_name(cfg: PipelineConfig) -> str:
    return f"{cfg.instance}-configs"


# ---- a job spec as a container and a pod ----------------------------------------------------------


def resources(spec: JobSpec) -> dict:
    r = spec.resources
    requests = {k: v for k, v in (("cpu", r.cpu), ("memory", r.memory)) if v}
    limits = {k: v for k, v in (("cpu", r.cpu_limit or r.cpu), ("memory", r.memory_limit or r.memory)) if v}
    if r.gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(r.gpus)
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def env(spec: JobSpec, extra: dict[str, str] | None = None) -> list[dict]:
    """Plain values, then single Secret keys by reference: credentials never appear as values."""
    out = [
        {"name": k, "value": v}
        for k, v in {"PYTHONUNBUFFERED": "1", "HOME": "/tmp", **dict(spec.env), **(extra or {})}.items()
    ]
    out += [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        for name, secret, key in spec.secret_keys
    ]
    return out


def mounts(cfg: PipelineConfig, spec: JobSpec) -> list[dict]:
    out = [{"name": VOLUME, "mountPath": str(cfg.mount)}, {"name": "tmp", "mountPath": "/tmp"}]
    if spec.files:
        out.append({"name": CONFIGS_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True})
    if spec.stage == "train":
        out.append({"name": "dshm", "mountPath": "/dev/shm"})  # NCCL and data loaders need more than 64 MB
    return out


def volumes(cfg: PipelineConfig, spec: JobSpec) -> list[dict]:
    out = [
        {"name": VOLUME, "persistentVolumeClaim": {"claimName": cfg.volume.name}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if spec.files:
        out.append({"name": CONFIGS_VOLUME, "configMap": {"name": configs_config_map_name(cfg)}})
    if spec.stage == "train":
        out.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": cfg.train.shm_size}})
    return out


def container(
    cfg: PipelineConfig,
    spec: JobSpec,
    image: str,
    name: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> dict:
    c = {"name": name or spec.stage, "image": image}
    if spec.command:
        c["command"] = list(spec.command)
    c.update({"args": list(spec.args), "env": env(spec, extra_env)})
    if spec.secret_env:  # whole Secrets, by reference
        c["envFrom"] = [{"secretRef": {"name": s}} for s in spec.secret_env]
    if res := resources(spec):
        c["resources"] = res
    c["volumeMounts"] = mounts(cfg, spec)
    c["securityContext"] = dict(CONTAINER_SECURITY)
    return c


def pod_spec(cfg: PipelineConfig, spec: JobSpec, containers: list[dict], extra_volumes: tuple = ()) -> dict:
    pod = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # no stage talks to the Kubernetes API
        "securityContext": dict(POD_SECURITY),
        "containers": containers,
        "volumes": [*volumes(cfg, spec), *extra_volumes],
    }
    if cfg.experiment.node_selector and spec.stage == "train":
        pod["nodeSelector"] = dict(cfg.experiment.node_selector)
    return pod


def job(
    cfg: PipelineConfig,
    spec: JobSpec,
    images: dict[str, str],
    extra: tuple = (),
    container_extra: dict | None = None,
) -> dict:
    """A batch/v1 Job running `spec` once. `extra`: (volume, mount) pairs only this Job needs;
    `container_extra`: fields only its container has."""
    policy = _JOB_POLICY[spec.stage]
    c = container(cfg, spec, images[spec.image])
    c["volumeMounts"] += [m for _, m in extra]
    c.update(container_extra or {})
    job_spec = {
        "backoffLimit": policy["backoff_limit"],
        "activeDeadlineSeconds": policy["deadline_seconds"],
        "ttlSecondsAfterFinished": policy["ttl_seconds"],
        "template": {
            "metadata": {"labels": labels(cfg, spec.stage)},
            "spec": pod_spec(cfg, spec, [c], tuple(v for v, _ in extra)),
        },
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta(cfg, f"{cfg.instance}-{spec.stage}-{spec_hash(job_spec)}", spec.stage),
        "spec": job_spec,
    }


def probe_job(cfg: PipelineConfig, spec: JobSpec, images: dict[str, str]) -> dict:
    cm = probe_config_map(cfg)["metadata"]["name"]
    vol = (
        {"name": "probe", "configMap": {"name": cm}},
        {"name": "probe", "mountPath": PROBE_DIR, "readOnly": True},
    )
    return job(cfg, spec, images, extra=(vol,), container_extra=TERMINATION_MESSAGE)


# The probe's verdict travels in its termination message (the kubelet keeps it in the pod's status), so
# reading it needs no pods/log access; the log has it too.
TERMINATION_MESSAGE = {"terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}


def dump_yaml(obj: dict) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, width=120)
