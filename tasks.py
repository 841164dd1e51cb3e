"""neox-pipeline's invoke collection: thin tasks over `images/`, `k8s/` and the local pipeline.

invoke base                      # a Debian base image from the host's apt mirror (no registry needed)
invoke lock [--names A,B]         # pin every package each image installs, with sha256 (images/*/*.lock)
invoke build [--names A,B]        # build images in dependency order (content-addressed, skipped when unchanged)
invoke push --registry HOST/NS   # push, read digests back, write images.lock.json
invoke deploy -c FILE            # Kubernetes Jobs, then the training engine (see k8s/)
invoke status|logs|teardown|export -c FILE
invoke local                     # the whole pipeline on this machine (see local/)

Every task answers `--help`; no task has positional arguments. Short flags mean one thing across
tasks (`-c` config, `-o` out, `-n` namespace) and nothing else gets one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from invoke import Collection, Exit, Task, task

from images.build import (
    ImageError,
    build_images,
    cache_refs,
    docker_client,
    git_revision,
    image_size,
    prune_stale_images,
)
from images.catalog import DEFAULT_BASE_IMAGE, LOCAL_BASE_IMAGE, by_name
from images.push import check_registry, push_cache, push_image, write_lock
from jobs.cli import JobError

ROOT = Path(__file__).resolve().parent
DEFAULT_LOCK = ROOT / "images.lock.json"
SHORT_FLAGS = {"config": "c", "out": "o", "namespace": "n"}


class NeoxTask(Task):
    """Options only (no positionals, so `--help` is never taken as a value), and the few short flags
    of SHORT_FLAGS instead of invoke's first-free-letter ones."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("positional", [])
        kwargs["auto_shortflags"] = False
        super().__init__(*args, **kwargs)

    def arg_opts(self, name, default, taken_names):
        opts = super().arg_opts(name, default, taken_names)
        if name in SHORT_FLAGS:
            opts["names"].append(SHORT_FLAGS[name])
        return opts


def neox_task(*args, **kwargs):
    return task(*args, klass=NeoxTask, **kwargs)


def _log(line: str) -> None:
    print(line, flush=True)


def _run(prog: str, body: Callable[[], object]):
    """The one place that turns a tooling error (every one is a jobs.cli.JobError: images', stages',
    the cluster's) into one line and a non-zero exit for a task; returns what `body` returned."""
    try:
        return body()
    except JobError as exc:
        raise Exit(f"{prog}: error: {exc}", code=1) from None
    except KeyboardInterrupt:
        raise Exit(f"{prog}: interrupted", code=130) from None


def _base_image(c, client, base_image: str | None) -> str:
    from images.base import resolve_base_image

    return resolve_base_image(client, base_image or c.config.get("neox", {}).get("base_image"), log=_log)


@neox_task(
    help={
        "mirror": "Debian mirror URL (default: the first one in the host's apt sources)",
        "tag": "image tag",
    }
)
def base(c, mirror=None, tag=LOCAL_BASE_IMAGE):
    """Make a Debian bookworm base image from the package mirror (debootstrap + docker import)."""
    from images.base import make_base_image

    _run("base", lambda: make_base_image(mirror=mirror, tag=tag, log=_log))


def _names(names: str | None) -> list[str] | None:
    return [n.strip() for n in names.split(",") if n.strip()] if names else None


def _build(c, client, names: str | None, base_image: str | None, build_arg: list[str] | None, **options):
    """build_images with the options every task shares (names, base image, build args)."""
    return build_images(
        ROOT,
        _names(names),
        base_image=_base_image(c, client, base_image),
        client=client,
        log=_log,
        build_args=_build_args(build_arg),
        **options,
    )


def _build_args(pairs: list[str] | None) -> dict[str, str]:
    args = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ImageError(f"--build-arg {pair!r} must be KEY=VALUE")
        args[key] = value
    return args


@neox_task(help={"names": "comma-separated images to lock, e.g. trainer (default: every image with extras)"})
def lock(c, names=None):
    """Resolve each image's pyproject pins with pip and write its lock files: every package, dependencies
    too, pinned with its sha256 (the Dockerfiles install them with --require-hashes)."""
    from images.lock import write_locks

    _run("lock", lambda: write_locks(ROOT, _names(names), log=_log))


@neox_task(
    positional=[],
    iterable=["build_arg", "label"],
    help={
        "names": "comma-separated images to build, e.g. trainer,fetcher (default: all shipped images)",
        "base-image": f"base image (default {DEFAULT_BASE_IMAGE}, or {LOCAL_BASE_IMAGE} from `invoke base` when that cannot be pulled)",
        "force": "rebuild even when the content tag exists",
        "build-arg": "KEY=VALUE for an ARG an image's Dockerfile declares (repeatable), e.g. TORCH_VERSION=2.11.0",
        "cache-from": "registry prefix whose <name>:main images seed the layer cache",
        "prune": "afterwards untag older images of the built repositories so the engine frees their layers",
        "label": "KEY=VALUE label for the shipped images (repeatable), e.g. org.opencontainers.image.version=1.2.0",
    },
)
def build(
    c, names=None, base_image=None, force=False, build_arg=None, cache_from=None, prune=False, label=None
):
    """Build images in dependency order; unchanged images are found by content tag and not rebuilt."""
    from images.build import parse_labels

    def body():
        labels = parse_labels(label)
        client = docker_client()
        return client, _build(
            c, client, names, base_image, build_arg, force=force, cache_from=cache_from, labels=labels
        )

    client, built = _run("build", body)
    for image in built.values():
        state = "reused" if image.reused else f"built in {image.seconds:.0f}s"
        _log(f"{image.ref}  {image_size(client, image.ref) / 1e6:.0f} MB  {state}")
    if prune:
        _log(f"pruned {prune_stale_images(client, built, log=_log)} stale image(s)")


@neox_task(
    iterable=["tag", "build_arg"],
    help={
        "registry": "HOST[:PORT]/NAMESPACE to push to",
        "tag": "extra tag to push besides the content tag and git-<revision> (repeatable), e.g. 1.2.0",
        "build-arg": "KEY=VALUE the images were built with (see `invoke build`)",
        "with-cache": "also push the build-stage caches made by `invoke build --cache-from` with this registry",
        "names": "comma-separated images to push (default: all shipped images)",
        "lock": f"lock file to write (default {DEFAULT_LOCK.name})",
        "base-image": "base image reference the images were built on",
    },
)
def push(
    c, registry=None, names=None, lock=None, base_image=None, tag=None, with_cache=False, build_arg=None
):
    """Push built images, read each manifest back and record name -> registry/ns/name@sha256 in the lock file."""
    lock_path = Path(lock) if lock else DEFAULT_LOCK
    if not registry:
        raise Exit("push: error: --registry HOST[:PORT]/NAMESPACE is required", code=2)

    def body():
        target = check_registry(registry)
        client = docker_client()
        built = _build(c, client, names, base_image, build_arg)
        revision = git_revision(ROOT)
        refs = {}
        for image in built.values():
            if not _is_shipped(image.name):
                continue
            refs[image.name] = push_image(
                client, image, target, extra_tags=[f"git-{revision}", *(tag or [])], log=_log
            )
            _log(f"{image.name}: {refs[image.name]}")
            if with_cache:
                push_cache(client, cache_refs(target, by_name()[image.name]), log=_log)
        write_lock(lock_path, refs)
        return refs

    refs = _run("push", body)
    _log(f"wrote {lock_path}: {json.dumps(refs)}")


def _is_shipped(name: str) -> bool:
    return by_name()[name].shipped


@neox_task(
    iterable=["corpus", "config"],
    help={
        "workdir": "host folder standing in for the shared volume (default out/local)",
        "weights": "fetcher SOURCE for real weights (https://, s3://, hf://, path); default: a tiny random GPT-NeoX",
        "corpus": "corpus file/URL for the preprocessor (repeatable); default: a generated sample",
        "tokenizer": "tokenizer.json for --corpus",
        "config": "NeoX YAML file(s) (repeatable; default local/neox-tiny.yml)",
        "train-iters": "override the config's train-iters",
        "clean": "start over: delete the workdir first",
        "gpus": "auto (default: when the engine has the NVIDIA runtime), yes or no",
        "base-image": "base image to build on (see `invoke build`)",
        "nodes": "train as N trainer containers (one process each) through trainer.launch, as a JobSet would",
        "lora": "also fine-tune with LoRA adapters from the same weights (default on; --no-lora skips it)",
    },
)
def local(
    c,
    workdir=None,
    weights=None,
    corpus=None,
    tokenizer=None,
    config=None,
    train_iters=None,
    clean=False,
    gpus="auto",
    base_image=None,
    nodes=1,
    lora=True,
):
    """Run the whole pipeline on this machine in Docker: fetch, preprocess, fine-tune, export, generate."""
    from local.pipeline import LocalOptions, LocalPipeline

    choice = {"auto": None, "yes": True, "no": False}
    if gpus not in choice:
        raise Exit(f"local: error: --gpus must be auto, yes or no, not {gpus!r}", code=1)
    opts = LocalOptions(
        clean=clean, gpus=choice[gpus], corpus=list(corpus or []), tokenizer=tokenizer, weights=weights
    )
    if workdir:
        opts.workdir = Path(workdir)
    if config:
        opts.configs = [Path(p) for p in config]
    if train_iters:
        opts.train_iters = int(train_iters)
    if int(nodes) < 1:
        raise Exit(f"local: error: --nodes must be at least 1, not {nodes}", code=1)
    opts.nodes = int(nodes)
    opts.lora = lora

    def body():
        client = docker_client()
        built = _build(c, client, None, base_image, None)
        images = {name: image.ref for name, image in built.items()}
        return LocalPipeline(opts, images, client, log=_log).run()

    summary = _run("local", body)
    _log("")
    _log("invoke local: done")
    for name, stage in summary["stages"].items():
        took = "reused" if stage["reused"] else f"{stage['seconds']:.1f}s"
        _log(f"  {name:<11} {took}")
    _log(
        f"  lm_loss     {summary['first_loss']:.3f} -> {summary['final_loss']:.3f} over {summary['iterations']} iterations"
    )
    if "lora" in summary:
        lora_run = summary["lora"]
        _log(
            f"  LoRA        lm_loss {lora_run['first_loss']:.3f} -> {lora_run['final_loss']:.3f}, "
            f"adapters (PEFT) {lora_run['adapter']}"
        )
    _log(f"  checkpoints {summary['checkpoints']} (and s3://{summary['bucket']} while it ran)")
    _log(f"  HF model    {summary['hf_model']}")
    _log(f"  loss curve  {summary['loss_curve']}")
    _log(f"  generated   {summary['generated']}")


# ---- the cluster: deploy and day 2 (the work is in k8s.deploy and k8s.export) ------------------------

_COMMON = {
    "config": "the pipeline config (see pipeline.example.yaml); required",
    "kubeconfig": "kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or the in-cluster service account)",
    "context": "kubeconfig context to use (default: its current context)",
    "namespace": "namespace to use instead of the config's",
}


def _duration(prog: str, option: str, value) -> float:
    """Seconds from "90", "90s", "30m" or "2h"; anything else is one line naming the option."""
    text = str(value).strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], None)
    number = text[:-1] if scale else text
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise Exit(f"{prog}: error: --{option} {value!r}: expected a duration such as 90s, 30m or 2h", code=2)
    return seconds


def _integer(prog: str, option: str, value, minimum: int = 0) -> int:
    try:
        number = int(str(value))
    except ValueError:
        number = None
    if number is None or number < minimum:
        raise Exit(f"{prog}: error: --{option} {value!r}: expected a whole number from {minimum}", code=2)
    return number


def _options(prog: str, config: str | None, **kw):
    from k8s import deploy as _deploy

    if not config:
        raise Exit(f"{prog}: error: --config FILE is required (see pipeline.example.yaml)", code=2)
    return _deploy.Options(config=config, **kw)


@neox_task(
    help={
        **_COMMON,
        "lock": "images.lock.json (default: the config's lock_file)",
        "dry-run": "only render and validate; write everything under --out",
        "out": "folder for the rendered manifests (must not exist, or be empty)",
        "create-bucket": "create the checkpoint bucket when it does not exist",
        "skip-preflight": "skip the bucket/registry/cluster/master checks",
        "schemas": "folder of Determined's expconf JSON schemas (or $NEOX_DETERMINED_SCHEMAS)",
        "no-wait": "apply and submit, then return: follow with `invoke status` / `invoke logs --follow`",
        "force-conflicts": "take over fields another field manager owns (server-side apply)",
        "retry-failed": "run again a stage (or training run) that failed with this same spec (completed ones are kept)",
        "stall-timeout": "give up when pods stay Pending with no change this long (default 30m; e.g. 90s, 2h)",
        "controller-timeout": "give up when no controller acts on a Job/TrainJob/JobSet this long (default 5m)",
    }
)
def deploy(
    c,
    config=None,
    lock=None,
    dry_run=False,
    out=None,
    create_bucket=False,
    skip_preflight=False,
    kubeconfig=None,
    context=None,
    namespace=None,
    schemas=None,
    no_wait=False,
    force_conflicts=False,
    retry_failed=False,
    stall_timeout="30m",
    controller_timeout="5m",
):
    """Render, validate, preflight, apply, wait for the Jobs, then start training on the configured engine."""
    from k8s import deploy as _deploy

    stall = _duration("deploy", "stall-timeout", stall_timeout)
    controller = _duration("deploy", "controller-timeout", controller_timeout)

    if dry_run and not out:
        raise Exit("deploy: error: --dry-run needs --out DIR", code=2)
    opts = _options(
        "deploy",
        config,
        lock=lock,
        out=out,
        dry_run=dry_run,
        create_bucket=create_bucket,
        skip_preflight=skip_preflight,
        kubeconfig=kubeconfig,
        context=context,
        namespace=namespace,
        schemas=schemas,
        wait_train=not no_wait,
        force_conflicts=force_conflicts,
        retry_failed=retry_failed,
        stall_timeout=stall,
        controller_timeout=controller,
    )
    _run("deploy", lambda: _deploy.deploy(opts))


@neox_task(help={**_COMMON})
def secrets(c, config=None, kubeconfig=None, context=None, namespace=None):
    """Create the Secrets the config names from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and HF_TOKEN)."""
    from k8s import deploy as _deploy

    opts = _options("secrets", config, kubeconfig=kubeconfig, context=context, namespace=namespace)
    _run("secrets", lambda: _deploy.secrets(opts))


@neox_task(help={**_COMMON, "json": "print the report as one JSON object"})
def status(c, config=None, kubeconfig=None, context=None, namespace=None, json=False):
    """The volume, each Job, and the training run (TrainJob/JobSet and its pods, or the experiment)."""
    from k8s import deploy as _deploy

    opts = _options("status", config, kubeconfig=kubeconfig, context=context, namespace=namespace)
    _run("status", lambda: _deploy.status(opts, as_json=json))


@neox_task(
    help={
        **_COMMON,
        "step": "probe-weights, fetch-weights, fetch-data, preprocess, train or export (default: all)",
        "tail": "lines per pod (default 100)",
        "rank": "node rank of the train pods to show (default 0)",
        "follow": "keep streaming (one pod: the train pod of --rank, or the newest of --step)",
    }
)
def logs(
    c,
    config=None,
    step=None,
    tail=100,
    rank=None,
    follow=False,
    kubeconfig=None,
    context=None,
    namespace=None,
):
    """Print the logs of this deployment's pods; train pods by node rank."""
    from k8s import deploy as _deploy

    opts = _options("logs", config, kubeconfig=kubeconfig, context=context, namespace=namespace)
    lines = _integer("logs", "tail", tail, minimum=1)
    node = None if rank is None else _integer("logs", "rank", rank)
    _run("logs", lambda: _deploy.logs(opts, step=step, tail=lines, rank=node, follow=follow))


@neox_task(
    help={
        **_COMMON,
        "volume": "also delete the shared volume (weights, data and checkpoints on it are lost)",
        "secrets": "also delete the Secrets",
        "failed": "delete only the failed Jobs and training run (completed stages stay; deploy reruns the rest)",
        "training": "delete only the training run (TrainJob/JobSet and our runtime); completed stages stay",
    }
)
def teardown(
    c,
    config=None,
    volume=False,
    secrets=False,
    failed=False,
    training=False,
    kubeconfig=None,
    context=None,
    namespace=None,
):
    """Delete this deployment's Jobs, training run and ConfigMaps; keeps the volume unless --volume."""
    from k8s import deploy as _deploy

    opts = _options("teardown", config, kubeconfig=kubeconfig, context=context, namespace=namespace)
    _run(
        "teardown",
        lambda: _deploy.teardown(opts, volume=volume, secrets_too=secrets, failed=failed, training=training),
    )


@neox_task(
    help={
        **_COMMON,
        "experiment": "Determined experiment ID: export its latest completed checkpoint",
        "checkpoint": "s3://BUCKET/PREFIX/... of a checkpoint (Determined's or the mirror's)",
        "to": "s3://BUCKET/PREFIX for the Hugging Face folder (default: export/<run>/hf on the volume)",
        "out": "with --local: the folder here (must not exist, or be empty)",
        "local": "download the checkpoint and convert it here instead of in a Job in the cluster",
        "wait": "wait for the training run to finish first (instead of refusing while it runs)",
    }
)
def export(
    c,
    config=None,
    out=None,
    experiment=None,
    checkpoint=None,
    to=None,
    local=False,
    wait=False,
    kubeconfig=None,
    context=None,
    namespace=None,
):
    """Turn the run's checkpoint into a Hugging Face folder, in a Job where the checkpoint is (or --local)."""
    from k8s import deploy as _deploy

    opts = _options("export", config, out=out, kubeconfig=kubeconfig, context=context, namespace=namespace)
    _run(
        "export",
        lambda: _deploy.export(
            opts,
            experiment_id=int(experiment) if experiment else None,
            checkpoint=checkpoint,
            local=local,
            to=to,
            wait=wait,
        ),
    )


ns = Collection(base, lock, build, push, local, deploy, secrets, status, logs, teardown, export)
ns.configure({"neox": {"base_image": None}})
