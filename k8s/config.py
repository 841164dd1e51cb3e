"""The user's pipeline config (`pipeline.yaml`): its schema, loading, and the checks that give one
clear line per mistake (unknown keys, wrong types, secret values). After validation each section is a
frozen dataclass that owns its defaults; callers read attributes, never `.get(key, default)`."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema

from images.digests import IMAGES, load_lock
from jobs.cli import JobError
from k8s.secret_scan import SECRET_HELP, find_secret
from trainer.neox_yaml import read_yaml

__all__ = ["IMAGES", "ENGINES", "NAME_PATTERN", "PipelineConfig", "load_config", "load_lock", "load_neox"]

# Training engines: Determined (the guide's), Kubeflow Trainer v2 and plain JobSet (Kubernetes-native).
ENGINES = ("determined", "trainjob", "jobset")
# Kubeflow Trainer's runtimes that launch through the MPI plugin: no PET_* variables, so not torchrun.
MPI_RUNTIMES = ("deepspeed-distributed", "mlx-distributed")
# Who owns our `runtimePatches` entry on a TrainJob. Trainer's webhook wants a domain-prefixed path
# (DOMAIN/NAME, as Kubernetes' managedBy fields); the SDK uses trainer.kubeflow.org/kubeflow-sdk.
PATCH_MANAGER = "neox-pipeline.io/deploy"
_DOMAIN_PATH = re.compile(
    r"^(?=[^/]{1,253}/)"  # the domain: an RFC 1123 subdomain
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
    r"/[A-Za-z0-9/\-._~%!$&'()*+,;=:]+$"  # the path: what a URL path may carry
)
# A training node's share when train.cpu / train.memory are not given: per GPU (per process on a
# CPU-only node). Sized for 8-GPU nodes with 64+ cores and 512 GiB+; /dev/shm comes on top of memory.
CPU_PER_GPU, MEMORY_PER_GPU = 6, "48Gi"
CPU_PER_PROCESS, MEMORY_PER_PROCESS = 1, "4Gi"

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # an RFC 1123 label: namespaces, Secrets, claims
_NAME = {"type": "string", "pattern": NAME_PATTERN, "maxLength": 63}
_SOURCE = {"type": "string", "pattern": r"^(https?://|s3://|hf://)\S+$"}  # what the fetcher takes
_REL_PATH = {"type": "string", "minLength": 1, "pattern": r"^(?!/)(?!.*(^|/)\.\.(/|$)).+$"}
_QUANTITY = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|M|G|T|P)?$"}
_POS_INT = {"type": "integer", "minimum": 1}
_RESOURCES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "cpu": _QUANTITY,
        "memory": _QUANTITY,
        "cpu_limit": _QUANTITY,
        "memory_limit": _QUANTITY,
        "backoff_limit": {"type": "integer", "minimum": 0},
        "deadline_seconds": _POS_INT,
        "ttl_seconds": {"type": "integer", "minimum": 0},
    },
}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["namespace", "volume", "weights", "dataset", "checkpoints", "neox_configs", "experiment"],
    "properties": {
        "namespace": _NAME,
        "lock_file": {"type": "string"},
        "determined_master": {"type": "string", "pattern": r"^https?://[^\s/@]+(/.*)?$"},
        "volume": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "size", "mount_path"],
            "properties": {
                "name": _NAME,
                "size": _QUANTITY,
                "storage_class": {"type": "string", "minLength": 1},
                "access_mode": {
                    "enum": ["ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod", "ReadOnlyMany"]
                },
                "mount_path": {"type": "string", "pattern": r"^/[^\s]*$"},
            },
        },
        "weights": {
            "type": "object",
            "additionalProperties": False,
            "required": ["source", "dest"],
            "properties": {
                "source": _SOURCE,
                "dest": _REL_PATH,
                "connections": _POS_INT,
                "checksums": {"type": "string"},
                "include": {"type": "array", "items": {"type": "string"}},
                "exclude": {"type": "array", "items": {"type": "string"}},
                "endpoint_url": {"type": "string"},
                "secret": _NAME,
                "resources": _RESOURCES,
            },
        },
        "dataset": {
            "type": "object",
            "additionalProperties": False,
            "required": ["inputs", "tokenizer", "output_prefix"],
            "properties": {
                "source": _SOURCE,
                "dir": _REL_PATH,
                "inputs": {"type": "array", "minItems": 1, "items": _REL_PATH},
                "tokenizer": _REL_PATH,
                "output_prefix": _REL_PATH,
                "jsonl_key": {"type": "string", "pattern": r"^[A-Za-z0-9_]+$"},
                "append_eod": {"type": "boolean"},
                "workers": _POS_INT,
                "secret": _NAME,
                "resources": _RESOURCES,
            },
        },
        "checkpoints": {
            "type": "object",
            "additionalProperties": False,
            "required": ["bucket", "secret"],
            "properties": {
                "bucket": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"},
                "endpoint_url": {"type": "string", "pattern": r"^https?://[^\s/@]+(/.*)?$"},
                "prefix": {"type": "string"},
                "secret": _NAME,
            },
        },
        "neox_configs": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "experiment_base": {"type": "string"},
        "train": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "engine": {"enum": list(ENGINES)},
                "nodes": _POS_INT,
                "gpus_per_node": {"type": "integer", "minimum": 0},
                "processes_per_node": _POS_INT,
                "cpu": _QUANTITY,
                "memory": _QUANTITY,
                "shm_size": _QUANTITY,
                "patch_manager": {"type": "string", "minLength": 1, "maxLength": 253},
                "runtime": _NAME,
                "runtime_kind": {"enum": ["ClusterTrainingRuntime", "TrainingRuntime"]},
                "own_runtime": {"type": "boolean"},
                "max_restarts": {"type": "integer", "minimum": 0},
                "mirror_checkpoints": {"type": "boolean"},
                "deadline_seconds": _POS_INT,
            },
        },
        "experiment": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "slots", "max_batches"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "slots": _POS_INT,
                "node_selector": {"type": "object", "additionalProperties": {"type": "string"}},
                "resource_pool": {"type": "string"},
                "max_batches": _POS_INT,
                "validation_period_batches": _POS_INT,
                "metric": {"type": "string"},
                "smaller_is_better": {"type": "boolean"},
                "project_id": _POS_INT,
                "save_dir": _REL_PATH,
            },
        },
    },
}


def _describe(err: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in err.absolute_path) or "<top>"
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        return f"unknown key {extra[0]!r} in {where}" if where != "<top>" else f"unknown key {extra[0]!r}"
    if err.validator == "required":
        return f"{where}: {err.message}"
    if err.validator == "pattern":
        return f"{where}: {err.instance!r} is not a valid value"
    return f"{where}: {err.message}"


@dataclass(frozen=True)
class Volume:
    name: str
    size: str
    mount_path: str
    storage_class: str | None = None  # None: the cluster's default StorageClass provisions it
    access_mode: str = "ReadWriteMany"


@dataclass(frozen=True)
class Weights:
    source: str
    dest: str
    connections: int | None = None
    checksums: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    endpoint_url: str | None = None
    secret: str | None = None
    resources: dict | None = None


@dataclass(frozen=True)
class Dataset:
    inputs: tuple[str, ...]
    tokenizer: str
    output_prefix: str
    source: str | None = None
    dir: str | None = None
    jsonl_key: str = "text"
    append_eod: bool = True
    workers: int = 8
    secret: str | None = None
    resources: dict | None = None


@dataclass(frozen=True)
class Checkpoints:
    bucket: str
    secret: str
    endpoint_url: str | None = None
    prefix: str = ""


@dataclass(frozen=True)
class Experiment:
    name: str
    slots: int
    max_batches: int
    node_selector: dict | None = None
    resource_pool: str | None = None
    validation_period_batches: int | None = None
    metric: str | None = None  # None: the experiment base's, else lm_loss
    smaller_is_better: bool = True
    project_id: int | None = None
    save_dir: str | None = None


def _section(cls: type, raw: dict) -> Any:
    """A validated section as its dataclass (lists as tuples, so the whole config stays frozen)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


_SECTIONS = {
    "volume": Volume,
    "weights": Weights,
    "dataset": Dataset,
    "checkpoints": Checkpoints,
    "experiment": Experiment,
}


@dataclass(frozen=True)
class TrainSettings:
    """`train:` resolved: which engine runs the train stage and how wide. Without `nodes`, the
    Determined `experiment.slots` decide (96 slots at 8 GPUs per node = 12 nodes)."""

    engine: str = "determined"
    nodes: int = 1
    gpus_per_node: int = 8
    processes_per_node: int = 8
    cpu: str | None = None  # per node, resolved: train.cpu or the share of its GPUs
    memory: str | None = None  # per node, resolved: train.memory (or the share) plus shm_size
    shm_size: str = "16Gi"
    patch_manager: str = PATCH_MANAGER
    runtime: str = "torch-distributed"
    runtime_kind: str = "ClusterTrainingRuntime"
    own_runtime: bool = False  # trainjob: render a namespaced TrainingRuntime of ours and use it
    max_restarts: int = 3
    mirror_checkpoints: bool = True
    deadline_seconds: int | None = None


def train_settings(raw: dict, where: str) -> TrainSettings:
    t = dict(raw.get("train") or {})
    slots = raw["experiment"]["slots"]
    gpus = t.get("gpus_per_node", min(slots, 8))
    if "nodes" in t:
        nodes = t["nodes"]
    elif gpus and slots % gpus:
        raise JobError(
            f"config {where}: experiment.slots {slots} is not a multiple of train.gpus_per_node "
            f"{gpus}; set train.nodes"
        )
    else:
        nodes = slots // gpus if gpus else 1
    procs = t.get("processes_per_node", gpus or 1)
    if gpus and procs != gpus:
        raise JobError(
            f"config {where}: train.processes_per_node {procs} does not match train.gpus_per_node "
            f"{gpus} (one process per GPU)"
        )
    runtime = t.get("runtime", "torch-distributed")
    if t.get("own_runtime") and ("runtime" in t or "runtime_kind" in t):
        raise JobError(
            f"config {where}: train.own_runtime renders its own runtime; drop train.runtime and "
            f"train.runtime_kind"
        )
    if t.get("engine") == "trainjob" and runtime in MPI_RUNTIMES:
        raise JobError(
            f"config {where}: train.runtime {runtime!r} launches through MPI; the trainer starts "
            f"with torchrun, so name a runtime with the torch policy (default torch-distributed)"
        )
    manager = t.get("patch_manager", PATCH_MANAGER)
    if not _DOMAIN_PATH.match(manager):
        raise JobError(
            f"config {where}: train.patch_manager {manager!r}: must be a domain-prefixed path "
            f"DOMAIN/NAME such as example.com/neox (Kubeflow Trainer refuses anything else)"
        )
    cpu, memory = node_requests(gpus, procs, t.get("cpu"), t.get("memory"), t.get("shm_size", "16Gi"))
    fields = {
        k: v
        for k, v in t.items()
        if k not in ("nodes", "gpus_per_node", "processes_per_node", "cpu", "memory")
    }
    return TrainSettings(
        nodes=nodes, gpus_per_node=gpus, processes_per_node=procs, cpu=cpu, memory=memory, **fields
    )


def node_requests(gpus: int, procs: int, cpu: str | None, memory: str | None, shm: str) -> tuple[str, str]:
    """A training node's CPU and memory request: as given, else its share (per GPU, or per process on
    CPU-only nodes). The memory-backed /dev/shm counts against the pod's memory, so it is added."""
    from kubernetes.utils.quantity import parse_quantity

    if cpu is None:
        cpu = str(gpus * CPU_PER_GPU if gpus else procs * CPU_PER_PROCESS)
    if memory is None:
        memory = _bytes_quantity(
            parse_quantity(MEMORY_PER_GPU) * gpus if gpus else parse_quantity(MEMORY_PER_PROCESS) * procs
        )
    return cpu, _bytes_quantity(parse_quantity(memory) + parse_quantity(shm))


def _bytes_quantity(n) -> str:
    """A byte count as Kubernetes writes it: the largest binary suffix that divides it."""
    n = int(n)
    for suffix, size in (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if n and n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


@dataclass(frozen=True)
class PipelineConfig:
    """The validated config; `raw` keeps the file's mapping, `path` where it came from."""

    raw: dict
    path: Path
    neox_paths: tuple[Path, ...] = field(default=())
    base_path: Path | None = None
    train: TrainSettings = field(default_factory=TrainSettings)
    volume: Volume = field(init=False)
    weights: Weights = field(init=False)
    dataset: Dataset = field(init=False)
    checkpoints: Checkpoints = field(init=False)
    experiment: Experiment = field(init=False)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if not f.init:  # frozen: set once, here, from the validated mapping
                object.__setattr__(self, f.name, _section(_SECTIONS[f.name], self.raw[f.name]))

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    @property
    def namespace(self) -> str:
        return self.raw["namespace"]

    @property
    def mount(self) -> PurePosixPath:
        return PurePosixPath(self.volume.mount_path)

    @property
    def lock_path(self) -> Path:
        """The image-digest lock file (images/digests.py), beside the config unless absolute."""
        return self.path.parent / self.raw.get("lock_file", "images.lock.json")

    def on_volume(self, rel: str) -> str:
        return str(self.mount / rel)

    @property
    def data_path(self) -> str:
        return self.on_volume(f"{self.dataset.output_prefix}_{self.dataset.jsonl_key}_document")

    @property
    def instance(self) -> str:
        """A label-safe name for this deployment (labels and object names derive from it)."""
        name = re.sub(r"[^a-z0-9-]+", "-", self.experiment.name.lower()).strip("-")
        return name[:40].rstrip("-") or "neox"


def load_config(path: str | os.PathLike) -> PipelineConfig:
    path = Path(path)
    raw = read_yaml(path, "config")
    # Secrets first: a credential pasted under an unknown key must be named as a secret, not as a typo.
    if (where := find_secret(raw)) is not None:
        raise JobError(f"config {path}: {where} holds a secret value; {SECRET_HELP}")
    errors = sorted(jsonschema.Draft7Validator(SCHEMA).iter_errors(raw), key=lambda e: list(e.absolute_path))
    if errors:
        raise JobError(f"config {path}: {_describe(errors[0])}")
    base = path.parent
    neox = tuple((base / p).resolve() for p in raw["neox_configs"])
    for p in neox:
        if not p.is_file():
            raise JobError(f"config {path}: neox_configs: {p} does not exist")
    exp_base = (base / raw["experiment_base"]).resolve() if raw.get("experiment_base") else None
    if exp_base is not None and not exp_base.is_file():
        raise JobError(f"config {path}: experiment_base: {exp_base} does not exist")
    train = train_settings(raw, str(path))
    if train.engine == "determined" and not raw.get("determined_master"):
        raise JobError(f"config {path}: determined_master is required with train.engine determined")
    multi_node = train.nodes > 1 if train.engine != "determined" else raw["experiment"]["slots"] > 8
    cfg = PipelineConfig(raw=raw, path=path, neox_paths=neox, base_path=exp_base, train=train)
    if cfg.volume.access_mode != "ReadWriteMany" and multi_node:
        raise JobError(f"config {path}: volume.access_mode must be ReadWriteMany for a multi-node run")
    return cfg


def load_neox(path: Path) -> dict:
    """A NeoX YAML as gpt-neox reads it (PyYAML, so the guide's `True` and trailing commas pass)."""
    data = read_yaml(path, "NeoX config")
    if (where := find_secret(data)) is not None:
        raise JobError(f"NeoX config {path}: {where} holds a secret value; {SECRET_HELP}")
    return data
