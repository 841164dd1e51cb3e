"""The pipeline config as job specs (jobs/spec.py), one per stage: derived here once, then rendered by
whichever backend runs it (a Job for fetch, preprocess and export; the training engine's object for
train). Paths are on the shared volume as every pod mounts it (`volume.mount_path`)."""

from __future__ import annotations

import copy
from pathlib import PurePosixPath

from jobs import spec as js
from k8s.config import PipelineConfig, load_neox
from k8s.render import CONFIG_DIR, PROBE_DIR, PROBE_SCRIPT, dump_yaml
from trainer.neox_yaml import normalise, set_spelt

# Requests of the small stages; `resources:` in the config replaces any of them.
_RESOURCES = {
    "probe-weights": {"cpu": "100m", "memory": "256Mi"},
    "fetch-weights": {"cpu": "2", "memory": "4Gi"},
    "fetch-data": {"cpu": "2", "memory": "4Gi"},
    "preprocess": {"cpu": "8", "memory": "16Gi"},
    "export": {"cpu": "4", "memory": "64Gi"},
}


def _resources(stage: str, given: dict | None, **extra) -> js.Resources:
    r = {**_RESOURCES[stage], **extra, **(given or {})}
    return js.Resources(
        cpu=r["cpu"], memory=r["memory"], cpu_limit=r.get("cpu_limit"), memory_limit=r.get("memory_limit")
    )


def save_dir(cfg: PipelineConfig) -> str:
    return cfg.on_volume(cfg.experiment.save_dir or f"checkpoints/{cfg.instance}")


def neox_configs(cfg: PipelineConfig) -> tuple[dict[str, dict], list[str]]:
    """{file name: NeoX config with its paths pointed at the volume}, and one note per rewritten path."""
    paths = js.train_paths(
        tokenizer=cfg.on_volume(cfg.dataset.tokenizer),
        data_path=cfg.data_path,
        load=cfg.on_volume(cfg.weights.dest),
        save=save_dir(cfg),
    )
    out: dict[str, dict] = {}
    notes = []
    for i, path in enumerate(cfg.neox_paths):
        conf = copy.deepcopy(load_neox(path))
        # All path keys go into the first file; a later file (which overrides earlier ones in
        # gpt-neox) has only the path keys it already names rewritten.
        present = {normalise(k) for k in conf}
        for key, value in paths.items():
            if i > 0 and normalise(key) not in present:
                continue
            used, old = set_spelt(conf, key, value)
            if old != value:
                notes.append(f"{path.name}: {used}: {old!r} -> {value!r}")
        name = path.name if path.suffix in (".yml", ".yaml") else f"{path.name}.yml"
        if name in out:
            name = f"{i}-{name}"
        out[name] = conf
    return out, notes


def fetch_weights(cfg: PipelineConfig) -> js.JobSpec:
    w = cfg.weights
    args = js.fetch_args(
        w.source, cfg.on_volume(w.dest), w.connections, w.checksums, w.include, w.exclude, w.endpoint_url
    )
    return js.JobSpec(
        "fetch-weights",
        js.FETCHER,
        args,
        secret_env=_secrets(w),
        resources=_resources("fetch-weights", w.resources),
    )


def fetch_data(cfg: PipelineConfig) -> js.JobSpec | None:
    d = cfg.dataset
    if not d.source:
        return None
    dest = cfg.on_volume(d.dir or str(PurePosixPath(d.inputs[0]).parent))
    args = js.fetch_args(d.source, dest)  # the schema has no dataset.connections or endpoint_url
    return js.JobSpec(
        "fetch-data",
        js.FETCHER,
        args,
        secret_env=_secrets(d),
        resources=_resources("fetch-data", d.resources),
    )


def probe_weights(cfg: PipelineConfig) -> js.JobSpec:
    """Reports (in its log, as one JSON line) whether the volume already holds verified weights."""
    args = (f"{PROBE_DIR}/{PROBE_SCRIPT.name}", cfg.on_volume(cfg.weights.dest), cfg.weights.source)
    return js.JobSpec(
        "probe-weights", js.FETCHER, args, command=("python",), resources=_resources("probe-weights", None)
    )


def preprocess(cfg: PipelineConfig) -> js.JobSpec:
    d = cfg.dataset
    args = js.preprocess_args(
        [cfg.on_volume(p) for p in d.inputs],
        cfg.on_volume(d.tokenizer),
        cfg.on_volume(d.output_prefix),
        d.jsonl_key,
        d.append_eod,
        d.workers,
    )
    return js.JobSpec(
        "preprocess",
        js.PREPROCESSOR,
        args,
        resources=_resources("preprocess", d.resources, cpu=str(d.workers)),
    )


def train(cfg: PipelineConfig, neox: dict[str, dict]) -> js.JobSpec:
    """The training run for the Kubernetes-native engines: the launch entry around trainer.train with
    the rewritten NeoX files (mounted at CONFIG_DIR), the experiment's length as overrides (as
    Determined's searcher sets it), S3 keys by reference for the checkpoint mirror."""
    e, t, ck = cfg.experiment, cfg.train, cfg.checkpoints
    overrides: dict[str, object] = {"train-iters": e.max_batches, "lr-decay-iters": e.max_batches}
    if e.validation_period_batches:
        overrides["eval-interval"] = e.validation_period_batches
    args = js.train_args([f"{CONFIG_DIR}/{name}" for name in neox], overrides)
    env = {"PYTHONUNBUFFERED": "1", "HOME": "/tmp", "NCCL_SOCKET_IFNAME": "ens,eth,ib"}
    if t.mirror_checkpoints:
        env["NEOX_CHECKPOINT_MIRROR"] = mirror_url(cfg)
        if ck.endpoint_url:
            env["AWS_ENDPOINT_URL"] = ck.endpoint_url
    keys = tuple((k, ck.secret, k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
    resources = js.Resources(cpu=t.cpu, memory=t.memory, gpus=t.gpus_per_node)
    files = tuple((f"{CONFIG_DIR}/{name}", dump_yaml(conf)) for name, conf in neox.items())
    return js.JobSpec(
        "train",
        js.TRAINER,
        args,
        command=js.LAUNCH,
        env=tuple(env.items()),
        secret_keys=keys,
        resources=resources,
        nodes=t.nodes,
        procs_per_node=t.processes_per_node,
        files=files,
    )


def mirror_url(cfg: PipelineConfig) -> str:
    """Where the trainer mirrors complete checkpoints on the Kubernetes-native engines."""
    ck = cfg.checkpoints
    prefix = "/".join(p for p in ((ck.prefix or "").strip("/"), cfg.instance) if p)
    return f"s3://{ck.bucket}/{prefix}"


def export(cfg: PipelineConfig, checkpoint: str, out: str, work: str | None = None) -> js.JobSpec:
    """trainer.export where the checkpoint is: either end may be s3:// (the checkpoint bucket's keys by
    reference), with `work` on the volume for the download."""
    args = js.export_args(checkpoint, out) + (("--work", work) if work else ())
    env = {"HOME": "/tmp"}
    keys: tuple = ()
    if checkpoint.startswith("s3://") or out.startswith("s3://"):
        ck = cfg.checkpoints
        keys = tuple((k, ck.secret, k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
        if ck.endpoint_url:
            env["AWS_ENDPOINT_URL"] = ck.endpoint_url
    return js.JobSpec(
        "export",
        js.TRAINER,
        args,
        command=("python",),
        env=tuple(env.items()),
        secret_keys=keys,
        resources=_resources("export", None),
    )


def _secrets(section) -> tuple[str, ...]:
    return (section.secret,) if section.secret else ()
