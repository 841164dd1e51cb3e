"""Report what this machine gives the trainer: GPUs, the fused kernels and their compiled archs, DeepSpeed ops.

    python -m trainer.doctor [--json FILE] [--jit-ops] [--require-kernels]

Safe without a GPU and without DeepSpeed: what is missing is reported, never raised. With
``--require-kernels`` the exit code is 1 when a GPU is present but the fused kernels are not active.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch

from jobs.cli import run_main, write_json_atomic
from trainer.kernels import loader

PROG = "trainer.doctor"


def gpus() -> list[dict]:
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append(
            {
                "index": i,
                "name": p.name,
                "capability": f"{p.major}.{p.minor}",
                "memory_gib": round(p.total_memory / 2**30, 1),
                "sms": p.multi_processor_count,
            }
        )
    return out


def nvcc() -> dict:
    path = loader.nvcc_path()
    if path is None:
        return {"path": None}
    try:
        text = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
        release = next((ln.split("release")[-1].strip() for ln in text.splitlines() if "release" in ln), "?")
    except (OSError, subprocess.SubprocessError):
        release = "?"
    return {"path": path, "release": release}


def prebuilt() -> dict:
    """The ahead-of-time build the image ships (readable without a GPU)."""
    folder = Path(os.environ.get("NEOX_KERNELS_DIR", loader.DEFAULT_PREBUILT))
    so = folder / f"{loader.EXT_NAME}.so"
    info = loader._read_info(folder) or {}
    return {
        "dir": str(folder),
        "present": so.exists(),
        "arch_list": info.get("arch_list"),
        "matches_sources": info.get("source_hash") == loader.source_hash() if info else None,
    }


def deepspeed_ops(jit: bool = False) -> dict:
    """Per DeepSpeed op: compatible here, prebuilt into the install, and whether it loads.

    Prebuilt ops are loaded; others only with jit=True, since loading them compiles (minutes)."""
    try:
        import deepspeed
        from deepspeed.git_version_info import installed_ops
        from deepspeed.ops.op_builder.all_ops import ALL_OPS
    except Exception as exc:  # not installed, or broken: say so and carry on
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
    from deepspeed.accelerator import get_accelerator

    ops = {}
    for name, builder in sorted(ALL_OPS.items()):
        entry = {"installed": bool(installed_ops.get(name))}
        try:
            entry["compatible"] = bool(builder.is_compatible(verbose=False))
        except Exception as exc:
            entry["compatible"] = False
            entry["error"] = f"{type(exc).__name__}: {exc}"
        if entry["compatible"] and (entry["installed"] or jit):
            try:
                builder.load(verbose=False)
                entry["loads"] = True
            except Exception as exc:  # a failing op is a finding, not a crash
                entry["loads"] = False
                entry["error"] = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
        ops[name] = entry
    return {
        "available": True,
        "version": deepspeed.__version__,
        "accelerator": get_accelerator()._name,
        "ops": ops,
    }


def report(jit_ops: bool = False) -> dict:
    return {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_archs": torch.cuda.get_arch_list() if torch.cuda.is_available() else [],
        "gpus": gpus(),
        "nvcc": nvcc(),
        "prebuilt": prebuilt(),
        "kernels": loader.status(),
        "deepspeed": deepspeed_ops(jit=jit_ops),
    }


def render(r: dict) -> list[str]:
    lines = [f"torch {r['torch']} (CUDA {r['torch_cuda']}), archs {' '.join(r['torch_archs']) or '-'}"]
    if r["gpus"]:
        lines += [
            f"GPU {g['index']}: {g['name']}, sm_{g['capability']}, {g['memory_gib']} GiB, {g['sms']} SMs"
            for g in r["gpus"]
        ]
    else:
        lines.append("GPU: none visible")
    n = r["nvcc"]
    lines.append(f"nvcc: {n['path']} (release {n['release']})" if n["path"] else "nvcc: not found")
    p = r["prebuilt"]
    if p["present"]:
        match = (
            "matches these sources" if p["matches_sources"] else "STALE: built from other sources or torch"
        )
        lines.append(f"prebuilt kernels: {p['dir']} for {p['arch_list']} ({match})")
    else:
        lines.append(f"prebuilt kernels: none in {p['dir']}")
    k = r["kernels"]
    lines.append(loader.summary())
    if k.get("image"):
        img = k["image"]
        lines.append(
            f"  kernel image on this GPU: SASS sm_{img['sass']}, from PTX {img['ptx']}, __CUDA_ARCH__ {img['cuda_arch']}"
        )
    d = r["deepspeed"]
    if not d["available"]:
        lines.append(f"DeepSpeed: not usable ({d['reason']})")
    else:
        lines.append(f"DeepSpeed {d['version']} (accelerator {d['accelerator']}):")
        for name, e in d["ops"].items():
            state = (
                "loads"
                if e.get("loads")
                else "FAILS to load"
                if "loads" in e
                else "compatible (JIT on first use)"
                if e["compatible"]
                else "not compatible"
            )
            extra = f" [{e['error']}]" if e.get("error") else ""
            lines.append(f"  {name}: {'prebuilt, ' if e['installed'] else ''}{state}{extra}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    p.add_argument(
        "--jit-ops", action="store_true", help="also try to JIT-build DeepSpeed ops that are not prebuilt"
    )
    p.add_argument(
        "--require-kernels",
        action="store_true",
        help="exit 1 when a GPU is present but the fused kernels are not active",
    )
    args = p.parse_args(argv)

    def body() -> int:
        r = report(jit_ops=args.jit_ops)
        for line in render(r):
            print(line)
        if args.json:
            write_json_atomic(args.json, r)
        if args.require_kernels and r["gpus"] and not r["kernels"]["active"]:
            print(
                f"{PROG}: error: GPU present but fused kernels inactive: {r['kernels']['reason']}",
                file=sys.stderr,
            )
            return 1
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
