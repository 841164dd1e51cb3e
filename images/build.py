"""The generic builder: walks the catalog in dependency order and builds each image through the
Docker SDK, streaming the engine's output, skipping images whose content tag already exists."""

from __future__ import annotations

import functools
import io
import re
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from images.catalog import (
    CATALOG,
    DEFAULT_BASE_IMAGE,
    REPOSITORY_PREFIX,
    SOURCE_URL,
    ImageSpec,
    by_name,
)
from images.context import ContextError, content_tag, host_ca_bundle, make_context
from images.lock import check_lock
from jobs.cli import JobError


class ImageError(JobError):
    """A build, push or engine failure: the message is the one line shown to the user."""


OCI = "org.opencontainers.image"
CONTENT_TAG_LABEL = "neox-pipeline.content-tag"
# Set from what the builder resolved; a --label cannot claim another base or content.
_BUILDER_LABELS = (f"{OCI}.base.name", f"{OCI}.base.digest", CONTENT_TAG_LABEL)
_LABEL_KEY = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*$")


@dataclass(frozen=True)
class BaseImage:
    """The image a chain starts from, as the OCI base labels name it."""

    name: str  # the reference built on, without a digest
    digest: str  # its manifest digest, or the image ID of an image that never came from a registry


def base_identity(ref: str, repo_digests: Iterable[str], image_id: str) -> BaseImage:
    """Name and digest of the base `ref`: the pinned digest when the reference has one, else the
    registry's digest the engine recorded when it pulled the image, else (an image made locally by
    `invoke base`, never pulled) its image ID, the only digest it has."""
    name, _, pinned = ref.partition("@")
    if pinned:
        return BaseImage(name, pinned)
    repository = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
    for entry in repo_digests:
        repo, _, digest = entry.partition("@")
        if repo == repository or repo.endswith(f"/{repository}"):
            return BaseImage(name, digest)
    return BaseImage(name, image_id)


def project_metadata(root: Path) -> tuple[str, str]:
    """The version and SPDX licence expression pyproject.toml declares (the label defaults)."""
    with open(root / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    licence = project.get("license", "")
    if isinstance(licence, dict):  # the pre-PEP 639 table form
        licence = licence.get("text", "")
    return str(project.get("version", "")), str(licence)


def parse_labels(pairs: Iterable[str] | None) -> dict[str, str]:
    """`--label KEY=VALUE` pairs; each must be a well-formed key, and not one the builder sets itself."""
    labels: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not _LABEL_KEY.match(key):
            raise ImageError(f"--label {pair!r} must be KEY=VALUE with a lower-case dotted key")
        if key in _BUILDER_LABELS:
            raise ImageError(f"--label {key} is set by the builder from the base image and content it built")
        labels[key] = value
    return labels


def image_labels(
    spec: ImageSpec,
    *,
    content_tag: str,
    base: BaseImage,
    version: str,
    licenses: str,
    revision: str,
    created: str,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The labels an image is built with: the OCI annotation keys and the content tag; `extra`
    (CI's version, revision, source and time) overrides the defaults, never the base or content."""
    labels = {
        f"{OCI}.title": f"neox-pipeline {spec.name}",
        f"{OCI}.description": spec.description,
        f"{OCI}.source": SOURCE_URL,
        f"{OCI}.version": version,
        f"{OCI}.licenses": licenses,
        f"{OCI}.revision": revision,
        f"{OCI}.created": created,
        **{k: v for k, v in (extra or {}).items() if k not in _BUILDER_LABELS},
        f"{OCI}.base.name": base.name,
        f"{OCI}.base.digest": base.digest,
        CONTENT_TAG_LABEL: content_tag,
    }
    return labels


@dataclass(frozen=True)
class BuiltImage:
    name: str
    repository: str  # neox-pipeline/<name>
    tag: str  # the content hash
    image_id: str
    reused: bool
    seconds: float

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.tag}"


def build_order(
    names: Iterable[str] | None = None, catalog: tuple[ImageSpec, ...] = CATALOG
) -> list[ImageSpec]:
    """The requested images and their parents, parents first (catalog order among equals)."""
    specs = by_name(catalog)
    wanted = list(names) if names else [s.name for s in catalog if s.shipped]
    for name in wanted:
        if name not in specs:
            raise ImageError(f"unknown image {name!r}; the catalog has: {', '.join(specs)}")
    ordered: list[ImageSpec] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if any(s.name == name for s in ordered):
            return
        if name in visiting:
            raise ImageError(f"image {name!r}: the catalog's parents form a cycle")
        visiting.add(name)
        parent = specs[name].parent
        if parent is not None:
            if parent not in specs:
                raise ImageError(f"image {name!r}: parent {parent!r} is not in the catalog")
            visit(parent)
        visiting.discard(name)
        ordered.append(specs[name])

    for name in sorted(wanted, key=[s.name for s in catalog].index):
        visit(name)
    return ordered


def git_revision(root: Path) -> str:
    """The checkout's revision, with `-dirty` when it has uncommitted changes; `unknown` outside git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        rev = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{rev}-dirty" if dirty else rev


def docker_client(timeout: int = 600):
    """A Docker SDK client for the engine named by the environment (DOCKER_HOST or the local socket)."""
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except DockerException as exc:
        raise ImageError(
            f"Docker engine unreachable ({_first_line(exc)}); start dockerd or set DOCKER_HOST"
        ) from exc
    return client


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def stream_build(events: Iterator[dict], log: Callable[[str], None]) -> str:
    """Consume the engine's build stream: log output, raise on an in-band error naming the step,
    return the image ID. The classic builder reports failures inside the stream, not as HTTP errors."""
    step = "(before the first step)"
    image_id = None
    for event in events:
        if "stream" in event:
            text = event["stream"]
            for line in text.splitlines():
                if line.startswith("Step "):
                    step = line.strip()
                if line.strip():
                    log(line.rstrip())
        if "aux" in event and isinstance(event["aux"], dict) and "ID" in event["aux"]:
            image_id = event["aux"]["ID"]
        if "error" in event or "errorDetail" in event:
            detail = event.get("errorDetail") or {}
            message = (detail.get("message") or event.get("error") or "unknown error").strip()
            raise ImageError(f"{step}: {message.splitlines()[-1] if message else message}")
    if image_id is None:
        raise ImageError(f"{step}: the engine ended the build without an image ID")
    return image_id


def _find_image(client, ref: str):
    from docker.errors import ImageNotFound

    try:
        return client.images.get(ref)
    except ImageNotFound:
        return None


def build_images(
    root: Path,
    names: Iterable[str] | None = None,
    base_image: str = DEFAULT_BASE_IMAGE,
    client=None,
    log: Callable[[str], None] = print,
    catalog: tuple[ImageSpec, ...] = CATALOG,
    force: bool = False,
    build_args: dict[str, str] | None = None,
    cache_from: str | None = None,
    no_cache: bool = False,
    labels: dict[str, str] | None = None,
) -> dict[str, BuiltImage]:
    """Build the requested images (and their parents) in dependency order.

    An image is rebuilt only when its content tag is missing locally (or `force`). Stops at the
    first failure with ImageError naming the image and failing step. `build_args` override the
    catalog's (each key must be declared by some image's Dockerfile as an ARG); `cache_from` is a
    registry prefix whose `<name>:main` images and stage caches seed the layer cache (pulled when
    reachable; the stages are rebuilt and tagged there for `invoke push --with-cache`);
    `no_cache` also ignores the engine's layer cache (cold builds, for benchmarks). `labels`
    (`parse_labels`) go on the shipped images over the defaults of `image_labels`; a shipped image
    whose labels differ from them is rebuilt (only its label step: the layers are cached).
    """
    order = build_order(names, catalog)
    overrides = dict(build_args or {})
    _check_overrides(root, order, overrides)
    client = client or docker_client()
    revision = git_revision(root)
    version, licenses = project_metadata(root)
    ca_bundle = host_ca_bundle()
    base_found = _find_image(client, base_image)
    if base_found is None:
        raise ImageError(
            f"base image {base_image} is not in the local engine; pull it, or run `invoke base` "
            "and pass --base-image"
        )
    base = base_identity(base_image, base_found.attrs.get("RepoDigests") or (), base_found.id)
    built: dict[str, BuiltImage] = {}
    for spec in order:
        start = time.monotonic()
        # Labels the caller asked for go on shipped images only: on the parent they would change
        # its ID and so every child's cache key, rebuilding all of them for a version string.
        requested = dict(labels or {}) if spec.shipped else {}
        if spec.parent is None:
            parent_ref, parent_id = base_image, base_found.id
        else:
            parent = built[spec.parent]
            parent_ref, parent_id = parent.ref, parent.image_id
        declared = _declared_args(root / spec.dockerfile)
        build_args = {
            **spec.build_args,
            **{k: v for k, v in overrides.items() if k in declared},
            "BASE_IMAGE": parent_ref,
        }
        try:
            check_lock(root, spec)  # a lock behind pyproject fails here, not as a wrong image
            context = make_context(root, spec, ca_bundle)
        except ContextError as exc:
            raise ImageError(str(exc)) from exc
        tag = content_tag(context, build_args, parent_id)
        repository = f"{REPOSITORY_PREFIX}/{spec.name}"
        existing = None if force or no_cache else _find_image(client, f"{repository}:{tag}")
        if existing is not None and any((existing.labels or {}).get(k) != v for k, v in requested.items()):
            log(f"[{spec.name}] {repository}:{tag} exists with other labels; building it with these")
            existing = None
        if existing is not None:
            client.api.tag(existing.id, repository, f"git-{revision}")
            built[spec.name] = BuiltImage(
                spec.name, repository, tag, existing.id, True, time.monotonic() - start
            )
            log(f"[{spec.name}] up to date: {repository}:{tag}")
            continue
        log(f"[{spec.name}] building {repository}:{tag} on {parent_ref}")
        build = functools.partial(
            _engine_build,
            client,
            context,
            build_args,
            image_labels(
                spec,
                content_tag=tag,
                base=base,
                version=version,
                licenses=licenses,
                revision=revision,
                created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                extra=requested,
            ),
            no_cache,
            lambda line, n=spec.name: log(f"[{n}] {line}"),
        )
        cache: list[str] = []
        if cache_from:
            # The last published image and its build stages (pushed by `invoke push --with-cache`) seed
            # the classic builder's cache; each stage is built and tagged too, for the next run.
            refs = [f"{cache_from}/{spec.name}:main", *cache_refs(cache_from, spec)]
            cache = [ref for ref in refs if _pull_cache(client, ref, log)]
        try:
            for stage, ref in (
                zip(spec.cache_stages, cache_refs(cache_from, spec), strict=True) if cache_from else ()
            ):
                build(ref, cache, stage)
            image_id = build(f"{repository}:{tag}", cache, None)
        except ImageError as exc:
            raise ImageError(f"image {spec.name!r} failed at {exc}") from exc
        client.api.tag(image_id, repository, f"git-{revision}")
        built[spec.name] = BuiltImage(spec.name, repository, tag, image_id, False, time.monotonic() - start)
        log(f"[{spec.name}] built {repository}:{tag} in {time.monotonic() - start:.1f}s")
    return built


def cache_refs(prefix: str, spec: ImageSpec) -> list[str]:
    """Where an image's build stages are kept as layer cache: PREFIX/<name>-cache:<stage>."""
    return [f"{prefix}/{spec.name}-cache:{stage}" for stage in spec.cache_stages]


def _engine_build(client, context, build_args, labels, no_cache, log, tag, cache, target) -> str:
    """One classic-builder build of `context` (up to `target` when given); returns the image ID."""
    events = client.api.build(
        fileobj=_as_file(context.to_tar()),
        custom_context=True,
        dockerfile=context.dockerfile,
        tag=tag,
        target=target,
        buildargs=build_args,
        labels=labels,
        cache_from=cache,
        network_mode="host",  # package mirrors and test servers listen on the host's loopback
        rm=True,
        forcerm=True,
        nocache=no_cache,
        decode=True,
    )
    return stream_build(events, log)


def _declared_args(dockerfile: Path) -> set[str]:
    if not dockerfile.is_file():
        return set()
    return set(re.findall(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)", dockerfile.read_text(), re.M))


def _check_overrides(root: Path, order: list[ImageSpec], overrides: dict[str, str]) -> None:
    declared = set().union(*(_declared_args(root / spec.dockerfile) for spec in order)) if order else set()
    unknown = sorted(set(overrides) - declared - {"BASE_IMAGE"})
    if unknown:
        raise ImageError(f"build arg {unknown[0]!r} is not declared by any image being built")
    if "BASE_IMAGE" in overrides:
        raise ImageError("BASE_IMAGE is set with --base-image, not as a build arg")


def _pull_cache(client, ref: str, log: Callable[[str], None]) -> bool:
    """Pull a previous image to seed the classic builder's cache; a miss only costs a cold build."""
    try:
        client.images.pull(ref)
    except Exception as exc:
        log(f"no cache image {ref} ({_first_line(exc)}); building without it")
        return False
    return True


def _as_file(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


def image_size(client, ref: str) -> int:
    return client.images.get(ref).attrs["Size"]


def prune_stale_images(client, built: dict[str, BuiltImage], log: Callable[[str], None]) -> int:
    """Untag every older image of the built repositories (each content change leaves one behind, the
    trainer's at 6 GB); the engine then frees the layers nothing else uses. Returns how many went."""
    from docker.errors import APIError

    keep = {image.image_id for image in built.values()}
    removed = 0
    for repository in sorted({image.repository for image in built.values()}):
        for image in client.images.list(name=repository):
            if image.id in keep:
                continue
            for tag in (t for t in image.tags if t.startswith(f"{repository}:")):
                try:
                    client.images.remove(tag)
                except APIError as exc:  # a container still uses it: leave it
                    log(f"kept {tag}: {_first_line(exc)}")
                    break
            else:
                removed += 1
                log(f"removed stale {repository} image {image.short_id}")
    return removed
