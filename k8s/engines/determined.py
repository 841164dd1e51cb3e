"""The Determined engine: the train stage's job spec as an experiment config built on the guide's
`finetune-gpt-neox.yml` (or a minimal base), with the rewritten NeoX configs in its context directory.
Determined's own launcher (`determined.launch.deepspeed`) starts the trial on every slot, so the spec's
argv is not used; its image, Secret keys, volume, width (slots) and length (the searcher) are."""

from __future__ import annotations

import copy

from jobs.spec import JobSpec
from k8s import render
from k8s.config import PipelineConfig
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


def pod_spec(cfg: PipelineConfig, spec: JobSpec) -> dict:
    """The Pod that Determined merges into every trial container: the volume, and S3 keys by reference."""
    env = [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        for name, secret, key in spec.secret_keys
    ]
    pod: dict = {
        # Determined's multi-pod DeepSpeed launch starts sshd in each task container, which needs root
        # and its capabilities, so this engine cannot take the non-root context of the other pods;
        # it still gets no API token and the runtime's default seccomp profile.
        "automountServiceAccountToken": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": CONTAINER,
                "env": env,
                "volumeMounts": [{"name": VOLUME, "mountPath": str(cfg.mount)}],
                # the node's CPU and memory share (train.cpu / train.memory); Determined sets the GPUs
                "resources": {
                    part: {k: v for k, v in values.items() if k in ("cpu", "memory")}
                    for part, values in render.resources(spec).items()
                },
            }
        ],
        "volumes": [{"name": VOLUME, "persistentVolumeClaim": {"claimName": cfg.volume.name}}],
    }
    if cfg.experiment.node_selector:
        pod["nodeSelector"] = dict(cfg.experiment.node_selector)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": labels(cfg, "trainer")}, "spec": pod}


def experiment_config(
    cfg: PipelineConfig, spec: JobSpec, images: dict[str, str], base: dict | None, conf_files: list[str]
) -> dict:
    exp = copy.deepcopy(base if base is not None else _MINIMAL_BASE)
    e = cfg.experiment
    exp["name"] = e.name
    hp = exp.setdefault("hyperparameters", {}) or {}
    hp["conf_dir"] = CONF_DIR
    hp["conf_file"] = list(conf_files)
    exp["hyperparameters"] = hp
    env = exp.setdefault("environment", {}) or {}
    env["image"] = {"cuda": images[spec.image]}  # replaces the guide's legacy `gpu:` key
    env["force_pull_image"] = False  # pinned by digest: the cached layer is the right one
    env["pod_spec"] = pod_spec(cfg, spec)
    exp["environment"] = env
    res = exp.setdefault("resources", {}) or {}
    res["slots_per_trial"] = e.slots
    if e.resource_pool:
        res["resource_pool"] = e.resource_pool
    exp["resources"] = res
    ck = cfg.checkpoints
    storage = {"type": "s3", "bucket": ck.bucket}
    if ck.endpoint_url:
        storage["endpoint_url"] = ck.endpoint_url
    if ck.prefix:
        storage["prefix"] = ck.prefix
    exp["checkpoint_storage"] = storage  # no keys: boto3 reads them from the env the Secret fills
    searcher = dict(exp.get("searcher") or {})
    searcher.update(
        {
            "name": "single",
            "metric": e.metric or searcher.get("metric", "lm_loss"),
            "smaller_is_better": e.smaller_is_better,
            "max_length": {"batches": e.max_batches},
        }
    )
    exp["searcher"] = searcher
    if e.validation_period_batches:
        exp["min_validation_period"] = {"batches": e.validation_period_batches}
    exp["entrypoint"] = list(ENTRYPOINT)
    return exp
