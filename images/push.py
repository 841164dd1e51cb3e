"""`invoke push`: push built images to a registry and pin them by digest in images.lock.json.

The Docker SDK does not raise on a failed push: the engine reports it inside the JSON stream
(`errorDetail`), so every event is checked. Transient failures are retried with backoff. After
the push each manifest is read back from the registry (through the engine's distribution
endpoint, which handles the registry's auth) and its digest recorded.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from images.build import OCI, BuiltImage, ImageError
from images.digests import existing_pins, write_pins
from jobs.retry import Backoff

_TRANSIENT = re.compile(
    r"timeout|timed out|connection reset|connection refused|temporar|503|502|504|EOF|broken pipe|i/o",
    re.I,
)
_AUTH = re.compile(r"unauthorized|authentication required|denied|401|403", re.I)
_REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(:\d+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # the registry's tag grammar
_PRERELEASE = re.compile(r"^v?\d+\.\d+\.\d+-[0-9A-Za-z.-]+$")  # semver with a pre-release part


class PushError(ImageError):
    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def check_registry(registry: str) -> str:
    """`HOST[:PORT]/NAMESPACE`, without scheme or trailing slash."""
    registry = registry.strip().rstrip("/")
    if "://" in registry or not _REGISTRY.match(registry) or "/" not in registry:
        raise ImageError(f"--registry {registry!r} must look like HOST[:PORT]/NAMESPACE (no scheme)")
    return registry


def check_tags(tags: Iterable[str], version: str | None = None) -> list[str]:
    """The extra tags, each valid; `latest` is refused beside a pre-release (a pre-release tag or
    the image's version label), so a release candidate can never move what `latest` pulls."""
    tags = list(tags)
    for tag in tags:
        if not _TAG.match(tag):
            raise ImageError(
                f"--tag {tag!r} is not a valid image tag ([A-Za-z0-9_][A-Za-z0-9_.-], at most 128)"
            )
    if "latest" in tags:
        prerelease = next((t for t in [version or "", *tags] if _PRERELEASE.match(t)), None)
        if prerelease:
            raise ImageError(f"--tag latest refused: {prerelease} is a pre-release")
    return tags


def stream_push(events: Iterator[dict], log: Callable[[str], None]) -> str | None:
    """Consume a push stream; raise PushError on an in-band error, return the pushed digest."""
    digest = None
    last_status: dict[str, str] = {}
    for event in events:
        if "errorDetail" in event or "error" in event:
            message = ((event.get("errorDetail") or {}).get("message") or event.get("error") or "").strip()
            message = message or "the registry rejected the push"
            raise PushError(message, transient=bool(_TRANSIENT.search(message)) and not _AUTH.search(message))
        aux = event.get("aux")
        if isinstance(aux, dict) and aux.get("Digest"):
            digest = aux["Digest"]
        status, layer = event.get("status"), event.get("id")
        # Each layer's state changes are logged, not every byte count.
        if status and layer:
            if last_status.get(layer) != status:
                last_status[layer] = status
                log(f"{layer}: {status}")
        elif status:
            log(status)
    return digest


def push_tag(
    client,
    repository: str,
    tag: str,
    log: Callable[[str], None],
    attempts: int = 4,
    auth_config: dict | None = None,
) -> None:
    """Push one local tag, retrying transient failures with exponential backoff and jitter."""
    backoff = Backoff(attempts - 1, base=2.0)
    for attempt in range(1, attempts + 1):
        try:
            events = client.api.push(repository, tag=tag, stream=True, decode=True, auth_config=auth_config)
            stream_push(events, log)
            return
        except PushError as exc:
            if not exc.transient or attempt == attempts:
                raise PushError(f"push of {repository}:{tag} failed: {exc}", exc.transient) from exc
            delay = backoff.delay()
            log(f"transient push error ({exc}); retry {attempt}/{attempts - 1} in {delay:.1f}s")
            time.sleep(delay)
        except Exception as exc:  # requests/docker transport errors: engine or registry unreachable
            if attempt == attempts:
                raise ImageError(f"push of {repository}:{tag} failed: {exc}") from exc
            time.sleep(backoff.delay())


def push_image(
    client,
    image: BuiltImage,
    registry: str,
    extra_tags: Iterable[str] = (),
    log: Callable[[str], None] = print,
    attempts: int = 4,
    auth_config: dict | None = None,
) -> str:
    """Tag `image` as REGISTRY/<name>:<content tag> (+ extra tags), push, return `repo@digest`."""
    repository = f"{registry}/{image.name}"
    version = (client.images.get(image.image_id).labels or {}).get(f"{OCI}.version")
    tags = [image.tag, *check_tags(extra_tags, version)]
    for tag in tags:
        client.api.tag(image.image_id, repository, tag)
    for tag in tags:
        push_tag(client, repository, tag, lambda line: log(f"[{image.name}] {line}"), attempts, auth_config)
    return f"{repository}@{registry_digest(client, f'{repository}:{image.tag}', auth_config)}"


def push_cache(client, refs: Iterable[str], log: Callable[[str], None] = print) -> int:
    """Push the stage-cache images `invoke build --cache-from` tagged locally; returns how many."""
    pushed = 0
    for ref in refs:
        repository, _, tag = ref.rpartition(":")
        try:
            client.images.get(ref)
        except Exception:
            continue  # not built with --cache-from on this host
        push_tag(client, repository, tag, lambda line, r=ref: log(f"[{r}] {line}"))
        pushed += 1
    return pushed


def registry_digest(client, ref: str, auth_config: dict | None = None) -> str:
    """The manifest digest the registry serves for `ref`."""
    try:
        data = client.images.get_registry_data(ref, auth_config=auth_config)
    except Exception as exc:
        raise ImageError(f"could not read {ref} back from the registry: {exc}") from exc
    digest = data.id
    if not digest.startswith("sha256:"):
        raise ImageError(f"registry returned an unexpected digest {digest!r} for {ref}")
    return digest


def write_lock(path: Path, refs: dict[str, str]) -> None:
    """Merge `refs` into the lock file (other images' pins are kept), atomically (images/digests.py)."""
    try:
        existing = existing_pins(path)
    except (OSError, ValueError) as exc:
        raise ImageError(f"lock file {path} is not valid JSON: {exc}") from exc
    write_pins(path, {**existing, **refs})
