"""neox-pipeline's invoke collection: thin tasks over `images/`, `k8s/` and the local pipeline.

invoke base                      # a Debian base image from the host's apt mirror (no registry needed)
invoke build [-n NAME,NAME...]   # build images in dependency order (content-addressed, skipped when unchanged)
invoke push --registry HOST/NS   # push, read digests back, write images.lock.json
invoke deploy --config FILE      # Kubernetes Jobs + Determined experiment (see k8s/)
invoke local                     # the whole pipeline on this machine (see local/)
"""

from __future__ import annotations

import json
from pathlib import Path

from invoke import Collection, Exit, task

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
from k8s import tasks as k8s_tasks

ROOT = Path(__file__).resolve().parent
DEFAULT_LOCK = ROOT / "images.lock.json"


def _log(line: str) -> None:
    print(line, flush=True)


def _fail(exc: Exception) -> Exit:
    return Exit(f"error: {exc}", code=1)


def _base_image(c, client, base_image: str | None) -> str:
    from images.base import resolve_base_image

    return resolve_base_image(client, base_image or c.config.get("neox", {}).get("base_image"), log=_log)


@task(
    help={
        "mirror": "Debian mirror URL (default: the first one in the host's apt sources)",
        "tag": "image tag",
    }
)
def base(c, mirror=None, tag=LOCAL_BASE_IMAGE):
    """Make a Debian bookworm base image from the package mirror (debootstrap + docker import)."""
    from images.base import make_base_image

    try:
        make_base_image(mirror=mirror, tag=tag, log=_log)
    except ImageError as exc:
        raise _fail(exc) from exc


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
            raise Exit(f"error: --build-arg {pair!r} must be KEY=VALUE", code=1)
        args[key] = value
    return args


@task(
    positional=[],
    iterable=["build_arg"],
    help={
        "names": "comma-separated images to build, e.g. trainer,fetcher (default: all shipped images)",
        "base-image": f"base image (default {DEFAULT_BASE_IMAGE}, or {LOCAL_BASE_IMAGE} from `invoke base` when that cannot be pulled)",
        "force": "rebuild even when the content tag exists",
        "build-arg": "KEY=VALUE for an ARG an image's Dockerfile declares (repeatable), e.g. TORCH_VERSION=2.11.0",
        "cache-from": "registry prefix whose <name>:main images seed the layer cache",
        "prune": "afterwards untag older images of the built repositories so the engine frees their layers",
    },
)
def build(c, names=None, base_image=None, force=False, build_arg=None, cache_from=None, prune=False):
    """Build images in dependency order; unchanged images are found by content tag and not rebuilt."""
    try:
        client = docker_client()
        built = _build(c, client, names, base_image, build_arg, force=force, cache_from=cache_from)
    except ImageError as exc:
        raise _fail(exc) from exc
    for image in built.values():
        state = "reused" if image.reused else f"built in {image.seconds:.0f}s"
        _log(f"{image.ref}  {image_size(client, image.ref) / 1e6:.0f} MB  {state}")
    if prune:
        _log(f"pruned {prune_stale_images(client, built, log=_log)} stale image(s)")


@task(
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
def push(c, registry, names=None, lock=None, base_image=None, tag=None, with_cache=False, build_arg=None):
    """Push built images, read each manifest back and record name -> registry/ns/name@sha256 in the lock file."""
    lock_path = Path(lock) if lock else DEFAULT_LOCK
    try:
        registry = check_registry(registry)
        client = docker_client()
        built = _build(c, client, names, base_image, build_arg)
        revision = git_revision(ROOT)
        refs = {}
        for image in built.values():
            if not _is_shipped(image.name):
                continue
            refs[image.name] = push_image(
                client, image, registry, extra_tags=[f"git-{revision}", *(tag or [])], log=_log
            )
            _log(f"{image.name}: {refs[image.name]}")
            if with_cache:
                push_cache(client, cache_refs(registry, by_name()[image.name]), log=_log)
        write_lock(lock_path, refs)
    except ImageError as exc:
        raise _fail(exc) from exc
    _log(f"wrote {lock_path}: {json.dumps(refs)}")


def _is_shipped(name: str) -> bool:
    return by_name()[name].shipped


@task(
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
):
    """Run the whole pipeline on this machine in Docker: fetch, preprocess, fine-tune, export, generate."""
    from local.containers import StageError
    from local.pipeline import LocalOptions, LocalPipeline

    choice = {"auto": None, "yes": True, "no": False}
    if gpus not in choice:
        raise Exit(f"error: --gpus must be auto, yes or no, not {gpus!r}", code=1)
    opts = LocalOptions(
        clean=clean, gpus=choice[gpus], corpus=list(corpus or []), tokenizer=tokenizer, weights=weights
    )
    if workdir:
        opts.workdir = Path(workdir)
    if config:
        opts.configs = [Path(p) for p in config]
    if train_iters:
        opts.train_iters = int(train_iters)
    try:
        client = docker_client()
        built = _build(c, client, None, base_image, None)
        images = {name: image.ref for name, image in built.items()}
        summary = LocalPipeline(opts, images, client, log=_log).run()
    except (ImageError, StageError) as exc:
        raise _fail(exc) from exc
    _log("")
    _log("invoke local: done")
    for name, stage in summary["stages"].items():
        took = "reused" if stage["reused"] else f"{stage['seconds']:.1f}s"
        _log(f"  {name:<11} {took}")
    _log(
        f"  lm_loss     {summary['first_loss']:.3f} -> {summary['final_loss']:.3f} over {summary['iterations']} iterations"
    )
    _log(f"  checkpoints {summary['checkpoints']} (and s3://{summary['bucket']} while it ran)")
    _log(f"  HF model    {summary['hf_model']}")
    _log(f"  loss curve  {summary['loss_curve']}")
    _log(f"  generated   {summary['generated']}")


ns = Collection(base, build, push, local)
for deploy_task in (
    k8s_tasks.deploy,
    k8s_tasks.secrets,
    k8s_tasks.status,
    k8s_tasks.logs,
    k8s_tasks.teardown,
    k8s_tasks.export,
):
    ns.add_task(deploy_task)
ns.configure({"neox": {"base_image": None}})
