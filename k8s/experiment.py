"""The Determined experiment: the NeoX config(s) with their paths pointed at the shared volume, and
the experiment config built on the guide's `finetune-gpt-neox.yml` (or a minimal base)."""

from __future__ import annotations

import copy

from k8s.config import PipelineConfig, load_neox
from k8s.render import VOLUME, labels

TRIAL = "trainer.determined:NeoXTrial"
ENTRYPOINT = ["python3", "-m", "determined.launch.deepspeed", "--trial", TRIAL]
CONF_DIR = "configs"  # inside the experiment's context directory
CONTAINER = "determined-container"  # Determined merges pod_spec mounts and env into this container

_MINIMAL_BASE = {
    "hyperparameters": {"search_world_size": False},
    "max_restarts": 0,
    "environment": {"environment_variables": ["NCCL_SOCKET_IFNAME=ens,eth,ib"]},
}


def _norm(key: str) -> str:
    return key.replace("-", "_")


def _set(conf: dict, key: str, value) -> tuple[str, object]:
    """Set `key` whichever spelling (`-` or `_`) the file uses; returns (key used, old value)."""
    for k in conf:
        if _norm(k) == _norm(key):
            old = conf[k]
            conf[k] = value
            return k, old
    conf[key] = value
    return key, None


def neox_configs(cfg: PipelineConfig) -> tuple[dict[str, dict], list[str]]:
    """{file name: rewritten NeoX config}, and one note per path that was rewritten."""
    paths = {
        "vocab-file": cfg.on_volume(cfg["dataset"]["tokenizer"]),
        "data-path": cfg.data_path,
        "load": cfg.on_volume(cfg["weights"]["dest"]),
        "save": cfg.on_volume(cfg["experiment"].get("save_dir") or f"checkpoints/{cfg.instance}"),
    }
    out: dict[str, dict] = {}
    notes = []
    for i, path in enumerate(cfg.neox_paths):
        conf = load_neox(path)
        # All path keys go into the first file; a later file (which overrides earlier ones in
        # gpt-neox) has only the path keys it already names rewritten.
        present = {_norm(k) for k in conf}
        for key, value in paths.items():
            if i > 0 and _norm(key) not in present:
                continue
            used, old = _set(conf, key, value)
            if old != value:
                notes.append(f"{path.name}: {used}: {old!r} -> {value!r}")
        name = path.name if path.suffix in (".yml", ".yaml") else f"{path.name}.yml"
        if name in out:
            name = f"{i}-{name}"
        out[name] = conf
    return out, notes


def pod_spec(cfg: PipelineConfig) -> dict:
    """The Pod that Determined merges into every trial container: the volume, and S3 keys by reference."""
    secret = cfg["checkpoints"]["secret"]
    env = [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
           for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
    spec: dict = {
        "containers": [{
            "name": CONTAINER,
            "env": env,
            "volumeMounts": [{"name": VOLUME, "mountPath": str(cfg.mount)}],
        }],
        "volumes": [{"name": VOLUME, "persistentVolumeClaim": {"claimName": cfg["volume"]["name"]}}],
    }
    if cfg["experiment"].get("node_selector"):
        spec["nodeSelector"] = dict(cfg["experiment"]["node_selector"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": labels(cfg, "trainer")}, "spec": spec}


def experiment_config(cfg: PipelineConfig, images: dict[str, str], base: dict | None,
                      conf_files: list[str]) -> dict:
    exp = copy.deepcopy(base if base is not None else _MINIMAL_BASE)
    e = cfg["experiment"]
    exp["name"] = e["name"]
    hp = exp.setdefault("hyperparameters", {}) or {}
    hp["conf_dir"] = CONF_DIR
    hp["conf_file"] = list(conf_files)
    exp["hyperparameters"] = hp
    env = exp.setdefault("environment", {}) or {}
    env["image"] = {"cuda": images["trainer"]}  # replaces the guide's legacy `gpu:` key
    env["force_pull_image"] = False  # pinned by digest: the cached layer is the right one
    env["pod_spec"] = pod_spec(cfg)
    exp["environment"] = env
    res = exp.setdefault("resources", {}) or {}
    res["slots_per_trial"] = e["slots"]
    if e.get("resource_pool"):
        res["resource_pool"] = e["resource_pool"]
    exp["resources"] = res
    ck = cfg["checkpoints"]
    storage = {"type": "s3", "bucket": ck["bucket"]}
    if ck.get("endpoint_url"):
        storage["endpoint_url"] = ck["endpoint_url"]
    if ck.get("prefix"):
        storage["prefix"] = ck["prefix"]
    exp["checkpoint_storage"] = storage  # no keys: boto3 reads them from the env the Secret fills
    searcher = dict(exp.get("searcher") or {})
    searcher.update({"name": "single", "metric": e.get("metric", searcher.get("metric", "lm_loss")),
                     "smaller_is_better": e.get("smaller_is_better", True),
                     "max_length": {"batches": e["max_batches"]}})
    exp["searcher"] = searcher
    if e.get("validation_period_batches"):
        exp["min_validation_period"] = {"batches": e["validation_period_batches"]}
    exp["entrypoint"] = list(ENTRYPOINT)
    return exp
