"""Builders for the Kubernetes objects of one deployment: the shared volume's PVC, ConfigMaps, and the
probe/fetch/preprocess Jobs. Plain dicts, written as plain YAML that kustomize can overlay.

Job names carry a short hash of their spec: Job templates are immutable, so a changed spec (a new image
digest, other arguments) becomes a new Job, and an unchanged one re-applies as a no-op."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from k8s.config import PipelineConfig

FIELD_MANAGER = "neox-pipeline"
PART_OF = "neox-pipeline"
UID = 1000  # user `neox` in every image
VOLUME = "shared"
PROBE_SCRIPT = Path(__file__).with_name("weights_probe.py")

_DEFAULTS = {
    "probe": {"cpu": "100m", "memory": "256Mi", "backoff_limit": 0, "deadline_seconds": 1800, "ttl_seconds": 600},
    "fetch": {"cpu": "2", "memory": "4Gi", "backoff_limit": 3, "deadline_seconds": 6 * 3600,
              "ttl_seconds": 7 * 86400},
    "preprocess": {"cpu": "8", "memory": "16Gi", "backoff_limit": 2, "deadline_seconds": 12 * 3600,
                   "ttl_seconds": 7 * 86400},
}


def labels(cfg: PipelineConfig, step: str | None = None) -> dict[str, str]:
    out = {"app.kubernetes.io/part-of": PART_OF, "app.kubernetes.io/managed-by": FIELD_MANAGER,
           "app.kubernetes.io/instance": cfg.instance}
    if step:
        out["app.kubernetes.io/component"] = step
    return out


def selector(cfg: PipelineConfig) -> str:
    return f"app.kubernetes.io/part-of={PART_OF},app.kubernetes.io/instance={cfg.instance}"


def _meta(cfg: PipelineConfig, name: str, step: str | None = None) -> dict:
    return {"name": name, "namespace": cfg.namespace, "labels": labels(cfg, step)}


def pvc(cfg: PipelineConfig) -> dict:
    vol = cfg["volume"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(cfg, vol["name"], "volume"),
        "spec": {
            "accessModes": [vol.get("access_mode", "ReadWriteMany")],
            "storageClassName": vol["storage_class"],
            "resources": {"requests": {"storage": vol["size"]}},
        },
    }


def config_map(cfg: PipelineConfig, name: str, files: dict[str, str], step: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(cfg, name, step), "data": dict(files)}


def probe_config_map(cfg: PipelineConfig) -> dict:
    return config_map(cfg, f"{cfg.instance}-probe", {"weights_probe.py": PROBE_SCRIPT.read_text()}, "probe")


def _resources(spec: dict, kind: str) -> tuple[dict, dict]:
    r = {**_DEFAULTS[kind], **(spec.get("resources") or {})}
    resources = {
        "requests": {"cpu": r["cpu"], "memory": r["memory"]},
        "limits": {"cpu": r.get("cpu_limit", r["cpu"]), "memory": r.get("memory_limit", r["memory"])},
    }
    return resources, r


def _job(cfg: PipelineConfig, step: str, kind: str, image: str, args: list[str], spec: dict,
         command: list[str] | None = None, secret: str | None = None, extra_volumes: tuple = ()) -> dict:
    resources, r = _resources(spec, kind)
    container = {
        "name": step,
        "image": image,
        "args": args,
        "resources": resources,
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}, {"name": "HOME", "value": "/tmp"}],
        "volumeMounts": [{"name": VOLUME, "mountPath": str(cfg.mount)}, {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if command:
        container["command"] = command
    if secret:  # credentials reach the container only by reference
        container["envFrom"] = [{"secretRef": {"name": secret}}]
    volumes = [{"name": VOLUME, "persistentVolumeClaim": {"claimName": cfg["volume"]["name"]}},
               {"name": "tmp", "emptyDir": {}}]
    for vol, mount in extra_volumes:
        volumes.append(vol)
        container["volumeMounts"].append(mount)
    pod = {
        "metadata": {"labels": labels(cfg, step)},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
            "volumes": volumes,
        },
    }
    job_spec = {
        "backoffLimit": r["backoff_limit"],
        "activeDeadlineSeconds": r["deadline_seconds"],
        "ttlSecondsAfterFinished": r["ttl_seconds"],
        "template": pod,
    }
    digest = hashlib.sha256(json.dumps(job_spec, sort_keys=True).encode()).hexdigest()[:8]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(cfg, f"{cfg.instance}-{step}-{digest}", step),
            "spec": job_spec}


def fetch_args(source: str, dest: str, spec: dict) -> list[str]:
    args = [source, dest]
    if spec.get("connections"):
        args += ["--connections", str(spec["connections"])]
    if spec.get("checksums"):
        args += ["--checksums", spec["checksums"]]
    for g in spec.get("include") or []:
        args += ["--include", g]
    for g in spec.get("exclude") or []:
        args += ["--exclude", g]
    if spec.get("endpoint_url"):
        args += ["--endpoint-url", spec["endpoint_url"]]
    return args


def probe_job(cfg: PipelineConfig, images: dict[str, str]) -> dict:
    """Reports (in its log, as one JSON line) whether the volume already holds verified weights."""
    cm = probe_config_map(cfg)["metadata"]["name"]
    vol = ({"name": "probe", "configMap": {"name": cm}}, {"name": "probe", "mountPath": "/probe", "readOnly": True})
    return _job(cfg, "probe-weights", "probe", images["fetcher"],
                ["/probe/weights_probe.py", cfg.on_volume(cfg["weights"]["dest"]), cfg["weights"]["source"]], {},
                command=["python"], extra_volumes=(vol,))


def fetch_weights_job(cfg: PipelineConfig, images: dict[str, str]) -> dict:
    w = cfg["weights"]
    return _job(cfg, "fetch-weights", "fetch", images["fetcher"],
                fetch_args(w["source"], cfg.on_volume(w["dest"]), w), w, secret=w.get("secret"))


def fetch_data_job(cfg: PipelineConfig, images: dict[str, str]) -> dict | None:
    d = cfg["dataset"]
    if not d.get("source"):
        return None
    dest = cfg.on_volume(d.get("dir") or str(Path(d["inputs"][0]).parent))
    return _job(cfg, "fetch-data", "fetch", images["fetcher"], fetch_args(d["source"], dest, d), d,
                secret=d.get("secret"))


def preprocess_job(cfg: PipelineConfig, images: dict[str, str]) -> dict:
    d = cfg["dataset"]
    args = ["--input", *(cfg.on_volume(p) for p in d["inputs"]),
            "--tokenizer", cfg.on_volume(d["tokenizer"]),
            "--output-prefix", cfg.on_volume(d["output_prefix"])]
    if d.get("jsonl_key", "text") != "text":
        args += ["--jsonl-key", d["jsonl_key"]]
    if d.get("append_eod", True):
        args.append("--append-eod")
    workers = d.get("workers", 8)
    args += ["--workers", str(workers)]
    spec = {**d, "resources": {"cpu": str(workers), **(d.get("resources") or {})}}
    return _job(cfg, "preprocess", "preprocess", images["preprocessor"], args, spec)


def dump_yaml(obj: dict) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, width=120)
