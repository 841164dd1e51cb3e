"""One description of each pipeline stage, as data: what to run (image, argv, env), what it needs
(Secrets by name, the shared volume, resources) and how wide (nodes x processes per node).

Backends turn the same `JobSpec` into containers on the local engine (`local/`), a Kubernetes Job, a
Kubeflow `TrainJob`, a `JobSet` or a Determined experiment (`k8s/`). The argv builders below are the
only place a stage's command line is spelt, so the local run and the cluster run cannot drift apart.

Paths in a spec are paths on the shared volume as the containers see it (`mount`); the backend decides
what the volume is (a host folder, a PersistentVolumeClaim).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# What each image runs when a spec gives no command (the images' own ENTRYPOINTs).
FETCHER, PREPROCESSOR, TRAINER = "fetcher", "preprocessor", "trainer"
LAUNCH = ("python", "-m", "trainer.launch", "--")  # the trainer image's multi-node entry (FORMATS section 7)
MASTER_PORT = 29500


@dataclass(frozen=True)
class Resources:
    cpu: str | None = None
    memory: str | None = None
    cpu_limit: str | None = None
    memory_limit: str | None = None
    gpus: int = 0  # per node


@dataclass(frozen=True)
class JobSpec:
    stage: str  # fetch-weights, fetch-data, preprocess, train, export, probe-weights
    image: str  # an image name of the catalog; backends resolve it to a reference
    args: tuple[str, ...]
    command: tuple[str, ...] | None = None  # replaces the image's entrypoint
    env: tuple[tuple[str, str], ...] = ()
    secret_env: tuple[str, ...] = ()  # Secrets whose keys become environment variables
    secret_keys: tuple[tuple[str, str, str], ...] = ()  # (env name, Secret name, key) for single keys
    resources: Resources = field(default_factory=Resources)
    nodes: int = 1
    procs_per_node: int = 1
    files: tuple[tuple[str, str], ...] = ()  # (path in the container, text): configs the stage reads

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    def argv(self) -> list[str]:
        return [*(self.command or ()), *self.args]


def fetch_args(
    source: str,
    dest: str,
    connections: int | None = None,
    checksums: str | None = None,
    include: list[str] | tuple = (),
    exclude: list[str] | tuple = (),
    endpoint_url: str | None = None,
) -> tuple[str, ...]:
    """`python -m jobs.fetch SOURCE DEST [options]`, the fetcher image's entrypoint arguments."""
    args = [source, dest]
    if connections:
        args += ["--connections", str(connections)]
    if checksums:
        args += ["--checksums", checksums]
    for g in include or ():
        args += ["--include", g]
    for g in exclude or ():
        args += ["--exclude", g]
    if endpoint_url:
        args += ["--endpoint-url", endpoint_url]
    return tuple(args)


def preprocess_args(
    inputs: list[str],
    tokenizer: str,
    output_prefix: str,
    jsonl_key: str = "text",
    append_eod: bool = True,
    workers: int | None = None,
) -> tuple[str, ...]:
    """`python -m jobs.preprocess ...`, the preprocessor image's entrypoint arguments."""
    args = ["--input", *inputs, "--tokenizer", tokenizer, "--output-prefix", output_prefix]
    if jsonl_key != "text":
        args += ["--jsonl-key", jsonl_key]
    if append_eod:
        args.append("--append-eod")
    if workers:
        args += ["--workers", str(workers)]
    return tuple(args)


def train_paths(
    tokenizer: str,
    data_path: str,
    load: str,
    save: str,
    log_dir: str | None = None,
    tensorboard_dir: str | None = None,
) -> dict[str, str]:
    """The NeoX keys that point a training run at the shared volume (the one place they are named)."""
    paths = {"vocab-file": tokenizer, "data-path": data_path, "load": load, "save": save}
    if log_dir:
        paths["log-dir"] = log_dir
    if tensorboard_dir:
        paths["tensorboard-dir"] = tensorboard_dir
    return paths


def train_args(configs: list[str], overrides: dict[str, object] | None = None) -> tuple[str, ...]:
    """`trainer.train` arguments: the NeoX files merged in order, then `--override key=value`s."""
    args = ["--config", *configs]
    if overrides:
        args += ["--override", *(f"{k}={v}" for k, v in overrides.items())]
    return tuple(args)


def export_args(checkpoint: str, out: str) -> tuple[str, ...]:
    """`python -m trainer.export`: a checkpoint of ours to a Hugging Face folder."""
    return ("-m", "trainer.export", "--checkpoint", checkpoint, "--out", out)


def launch_env(
    nodes: int, procs_per_node: int, master_addr: str, port: int = MASTER_PORT, node_rank: int | None = None
) -> dict[str, str]:
    """The torchrun variables a Kubernetes engine gives each node (FORMATS section 7). Kubeflow's torch
    plugin sets these itself; the JobSet backend and the local backend render the same ones, leaving the
    node rank to `JOB_COMPLETION_INDEX` where the engine provides it."""
    env = {
        "PET_NNODES": str(nodes),
        "PET_NPROC_PER_NODE": str(procs_per_node),
        "PET_MASTER_ADDR": master_addr,
        "PET_MASTER_PORT": str(port),
    }
    if node_rank is not None:
        env["PET_NODE_RANK"] = str(node_rank)
    return env
