"""Compile the fused-kernel extension ahead of time (the trainer image runs this).

    python -m trainer.kernels.build --out /opt/neox/kernels [--arch-list "8.0 8.6 8.9 9.0+PTX"] [--jobs N]

Writes ``neox_fused_kernels.so`` and ``build-info.json`` (arch list, source hash) into --out; point
``NEOX_KERNELS_DIR`` there at run time (``/opt/neox/kernels`` is the default). Needs nvcc (CUDA_HOME),
ninja and torch; no GPU.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from jobs.cli import JobError, human_duration, run_main
from trainer.kernels import loader

PROG = "trainer.kernels.build"


def build(out: Path, arch_list: str, jobs: int, verbose: bool, keep_objects: bool = False) -> dict:
    if loader.nvcc_path() is None:
        raise JobError("nvcc not found: set CUDA_HOME to a CUDA toolkit")
    os.environ["MAX_JOBS"] = str(jobs)
    start = time.monotonic()
    try:
        module = loader.build(out, arch_list, verbose=verbose)
    except Exception as exc:  # compiler output is already on stderr; give the one line that names it
        raise JobError(
            f"compiling {loader.CSRC} for {arch_list!r} failed: {str(exc).strip().splitlines()[-1]}"
        ) from exc
    missing = [
        f
        for f in ("rotary_fwd", "layer_norm_fwd", "cross_entropy_fwd", "kernel_image")
        if not hasattr(module, f)
    ]
    if missing:
        raise JobError(f"built module lacks {missing}")
    if not keep_objects:  # the image ships only the module and its build-info.json
        for f in list(out.glob("*.o")) + [
            out / "build.ninja",
            out / ".ninja_deps",
            out / ".ninja_log",
            out / "lock",
        ]:
            f.unlink(missing_ok=True)
    return {
        "out": str(out),
        "arch_list": arch_list,
        "seconds": time.monotonic() - start,
        "source_hash": loader.source_hash(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the .so and build-info.json")
    p.add_argument(
        "--arch-list",
        default=os.environ.get("TORCH_CUDA_ARCH_LIST") or loader.IMAGE_ARCH_LIST,
        help="TORCH_CUDA_ARCH_LIST syntax (default: $TORCH_CUDA_ARCH_LIST or %(default)s)",
    )
    p.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")), help="parallel compiles")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--keep-objects", action="store_true", help="keep object files for a faster rebuild")
    args = p.parse_args(argv)

    def body() -> int:
        stats = build(args.out, args.arch_list, args.jobs, args.verbose, args.keep_objects)
        print(
            f"{PROG}: built {loader.EXT_NAME} for {stats['arch_list']} into {stats['out']} "
            f"in {human_duration(stats['seconds'])}"
        )
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
