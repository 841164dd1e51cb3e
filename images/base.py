"""`invoke base`: a Debian bookworm base image made from the distribution's package mirror.

For hosts that cannot reach a container registry (CI here): debootstrap a minbase root file
system, trim what a slim image leaves out, and `docker import` it. The mirror is taken from the
host's own apt sources unless one is given, so no mirror is written into the repository.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from images.build import ImageError, docker_client
from images.catalog import DEFAULT_BASE_IMAGE, LOCAL_BASE_IMAGE

SUITE = "bookworm"
_APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
# What the slim images drop: documentation, man pages, locales other than C, apt lists.
_TRIM = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/lib/apt/lists",
    "var/cache/apt",
)


def host_mirror(sources: tuple[Path, ...] = _APT_SOURCES) -> str:
    """The first Debian main-archive mirror in the host's apt sources (one-line or deb822 format)."""
    files: list[Path] = []
    for src in sources:
        if src.is_dir():
            files += sorted(p for p in src.iterdir() if p.suffix in (".list", ".sources"))
        elif src.is_file():
            files.append(src)
    for path in files:
        text = path.read_text(errors="replace")
        # one-line format: deb [opts] URI suite components
        for m in re.finditer(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
            if "security" not in m.group(2) and "security" not in m.group(1):
                return m.group(1)
        # deb822 format: a stanza with URIs: and Suites:
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and "security" not in suites.group(1) and "security" not in uris.group(1):
                return uris.group(1)
    raise ImageError("no Debian mirror found in the host's apt sources; pass --mirror URL")


def make_base_image(
    mirror: str | None = None,
    tag: str = LOCAL_BASE_IMAGE,
    log: Callable[[str], None] = print,
    client=None,
) -> str:
    """debootstrap + `docker import`; returns the new image's ID."""
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed (apt-get install debootstrap)")
    client = client or docker_client()
    mirror = mirror or host_mirror()
    with tempfile.TemporaryDirectory(prefix="neox-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log(f"debootstrap {SUITE} (minbase) from the host's mirror into {rootfs}")
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", SUITE, str(rootfs), mirror],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["no output"]
            raise ImageError(f"debootstrap failed: {tail[0]}")
        for rel in _TRIM:
            shutil.rmtree(rootfs / rel, ignore_errors=True)
            (rootfs / rel).mkdir(parents=True, exist_ok=True)
        # apt inside the image uses the same mirror as the host.
        (rootfs / "etc/apt/sources.list").write_text(f"deb {mirror} {SUITE} main\n")
        archive = Path(tmp) / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(rootfs, arcname=".")
        log(f"importing {archive.stat().st_size / 1e6:.0f} MB as {tag}")
        repository, _, version = tag.partition(":")
        with open(archive, "rb") as f:
            client.api.import_image_from_data(
                f.read(),
                repository=repository,
                tag=version or "latest",
                changes=['CMD ["/bin/bash"]', "ENV LANG=C.UTF-8"],
            )
    image = client.images.get(tag)
    log(f"base image {tag} ({image.id[:19]}): {image.attrs['Size'] / 1e6:.0f} MB")
    return image.id


def resolve_base_image(client, requested: str | None, log: Callable[[str], None] = print) -> str:
    """The base to build on: `requested` when given; else the catalog's public base when it is
    local or can be pulled; else the local base made from the apt mirror (made now if missing)."""
    if requested:
        return requested
    for find in (client.images.get, client.images.pull):  # local first, then the registry
        try:
            find(DEFAULT_BASE_IMAGE)
            return DEFAULT_BASE_IMAGE
        except Exception as exc:
            reason = str(exc).splitlines()[0][:120]
    log(f"cannot pull {DEFAULT_BASE_IMAGE} ({reason}); using {LOCAL_BASE_IMAGE}")
    try:
        client.images.get(LOCAL_BASE_IMAGE)
    except Exception:
        make_base_image(tag=LOCAL_BASE_IMAGE, log=log, client=client)
    return LOCAL_BASE_IMAGE
