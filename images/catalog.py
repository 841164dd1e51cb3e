"""The image catalog: every image the product ships, declared as data.

Plays the role of a `docker-bake.hcl`: one common definition (labels, the base) and a short
entry per image. `images.build` walks it in dependency order; nothing here runs anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# The public base every chain starts from, pinned by digest. `invoke base` builds an
# equivalent one (Debian bookworm, minbase) from the host's package mirror for hosts that
# cannot reach a container registry; pass it with `invoke build --base-image`.
DEFAULT_BASE_IMAGE = (
    "debian:bookworm-slim@sha256:b55e2651b71408015f8068dd74e1d04404a8fa607dd2cfe284b4824c11f4d9bd"
)
LOCAL_BASE_IMAGE = "neox-pipeline/base:bookworm"

# Local repository prefix for built images: neox-pipeline/<name>:<content-hash>.
REPOSITORY_PREFIX = "neox-pipeline"
SOURCE_URL = "https://github.com/neox-pipeline/neox-pipeline"

# The GPU generations the trainer's compiled code covers: the file the kernels' loader reads too.
TORCH_CUDA_ARCH_LIST = (
    (Path(__file__).resolve().parents[1] / "trainer/csrc/arch-list.txt").read_text().strip()
)


@dataclass(frozen=True)
class LockLayer:
    """One `pip install --require-hashes` of an image: the lock file `file` (beside its Dockerfile)
    holds what `roots` (and the names pinned in `root_files`) need, dependencies included, that no
    earlier layer holds, less `exclude`. A layer without roots holds all that is left."""

    file: str
    roots: tuple[str, ...] = ()
    root_files: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageSpec:
    """One image: where its Dockerfile is, which repository files enter its build context,
    which pyproject extras it installs, its build args, and the catalog image it builds on
    (whose tag is passed as BASE_IMAGE) or None for the public/local base."""

    name: str
    dockerfile: str
    context: tuple[str, ...]
    extras: tuple[str, ...] = ()
    build_args: dict[str, str] = field(default_factory=dict)
    parent: str | None = None
    cache_stages: tuple[str, ...] = ()  # Dockerfile stages published as layer cache for CI builds
    shipped: bool = True
    description: str = ""
    lock_layers: tuple[LockLayer, ...] = (LockLayer("requirements.lock"),)  # see images/lock.py
    lock_inputs: tuple[str, ...] = ()  # requirement files resolved with the extras
    lock_sdists: tuple[str, ...] = ()  # packages allowed as a source archive (built in the Dockerfile)

    @property
    def lock_files(self) -> tuple[str, ...]:
        """The lock files of the image, in install order, relative to the repository root."""
        folder = self.dockerfile.rsplit("/", 1)[0] + "/" if "/" in self.dockerfile else ""
        return tuple(folder + layer.file for layer in self.lock_layers) if self.extras else ()


CATALOG: tuple[ImageSpec, ...] = (
    ImageSpec(
        name="python",
        dockerfile="images/python/Dockerfile",
        context=(),
        shipped=False,
        description="Debian's Python 3.11, an empty virtualenv path and the non-root user; parent of the others",
    ),
    ImageSpec(
        name="fetcher",
        dockerfile="images/fetcher/Dockerfile",
        context=("jobs",),
        extras=("fetch",),
        parent="python",
        cache_stages=("deps",),
        description="python -m jobs.fetch: parallel, resumable, verified weight download",
    ),
    ImageSpec(
        name="preprocessor",
        dockerfile="images/preprocessor/Dockerfile",
        context=("jobs",),
        extras=("preprocess",),
        parent="python",
        cache_stages=("deps",),
        description="python -m jobs.preprocess: corpus to GPT-NeoX indexed dataset",
    ),
    ImageSpec(
        name="trainer",
        dockerfile="images/trainer/Dockerfile",
        context=("jobs", "trainer", "images/trainer/build-requirements.txt"),
        extras=("trainer", "determined"),
        build_args={"TORCH_CUDA_ARCH_LIST": TORCH_CUDA_ARCH_LIST},
        parent="python",
        cache_stages=("toolchain", "deepspeed", "venv", "kernels", "deps"),
        description="GPT-NeoX fine-tuning: torch (CUDA 13), DeepSpeed with prebuilt ops, fused kernels",
        # The heavy, rarely changing part first (the stages DeepSpeed's ops and the kernels build on),
        # then DeepSpeed alone (an sdist built with its ops), then the light rest in its own stage.
        lock_layers=(
            LockLayer(
                "toolchain.lock",
                roots=("torch", "deepspeed"),
                root_files=("images/trainer/build-requirements.txt",),
                exclude=("deepspeed",),
            ),
            LockLayer(
                "deepspeed.lock",
                roots=("deepspeed",),
                root_files=("images/trainer/deepspeed-requirements.txt",),
            ),
            LockLayer("requirements.lock"),
        ),
        lock_inputs=("images/trainer/build-requirements.txt", "images/trainer/deepspeed-requirements.txt"),
        lock_sdists=("deepspeed",),
    ),
)


def by_name(catalog: tuple[ImageSpec, ...] = CATALOG) -> dict[str, ImageSpec]:
    return {spec.name: spec for spec in catalog}
