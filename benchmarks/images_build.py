"""Image build benchmark: no-op rebuild of all images, rebuild after editing one trainer Python
file, and image sizes. Cold build times come from a build log (`invoke build` prints each
image's time); this script measures what happens on top of an existing build.

    python benchmarks/images_build.py [--base-image neox-pipeline/base:bookworm] [--cold]

--cold first rebuilds every image ignoring the engine's layer cache and reports each image's time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the build tooling runs from the checkout, not the wheel

from images.base import resolve_base_image  # noqa: E402
from images.build import build_images, docker_client, image_size  # noqa: E402

EDITED = ROOT / "trainer" / "train.py"  # outside the kernels stage, like most edits


def timed_build(client, base: str) -> tuple[float, dict]:
    start = time.monotonic()
    built = build_images(ROOT, None, base_image=base, client=client, log=lambda line: None)
    return time.monotonic() - start, built


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-image")
    parser.add_argument(
        "--cold", action="store_true", help="first rebuild everything without the layer cache"
    )
    args = parser.parse_args()
    client = docker_client()
    base = resolve_base_image(client, args.base_image)
    cold = {}
    if args.cold:
        built = build_images(ROOT, None, base_image=base, client=client, log=lambda line: None, no_cache=True)
        cold = {name: round(image.seconds, 1) for name, image in built.items()}
    timed_build(client, base)  # make sure everything exists first
    noop, built = timed_build(client, base)
    original = EDITED.read_text()
    try:
        EDITED.write_text(original + "\n# benchmark edit\n")
        edit, after = timed_build(client, base)
    finally:
        EDITED.write_text(original)
    restore, _ = timed_build(client, base)
    result = {
        "cold_build_s": cold,
        "noop_rebuild_s": round(noop, 2),
        "one_file_edit_rebuild_s": round(edit, 2),
        "rebuilt_after_edit": sorted(n for n, i in after.items() if not i.reused),
        "restore_rebuild_s": round(restore, 2),
        "sizes_mb": {n: round(image_size(client, i.ref) / 1e6) for n, i in built.items()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
