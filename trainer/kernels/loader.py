"""Find, build and check the CUDA extension behind the fused kernels.

Order: ``NEOX_KERNELS=0`` turns the kernels off; a prebuilt extension in ``NEOX_KERNELS_DIR`` (the trainer
image builds one with ``python -m trainer.kernels.build``, default ``/opt/neox/kernels``) is used when
its sources match this checkout; otherwise, with nvcc present, the extension is compiled just in time
into a cache folder. Whatever loads must hold machine code or PTX for the running GPU, checked on a real
kernel of the module; otherwise the references run and ``status()`` says why.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import importlib.util
import json
import os
from pathlib import Path

import torch

EXT_NAME = "neox_fused_kernels"
CSRC = Path(__file__).resolve().parent.parent / "csrc"
SOURCES = ["bindings.cpp", "arch.cu", "bias_gelu.cu", "rotary.cu", "layer_norm.cu", "softmax.cu", "adamw.cu"]
HEADERS = ["common.h"]
DEFAULT_PREBUILT = "/opt/neox/kernels"
BUILD_INFO = "build-info.json"
# what the trainer image compiles for (A100, A40, L40/4090, H100/H200 + PTX): one file, which
# images/catalog.py hands to the image build too
IMAGE_ARCH_LIST = (CSRC / "arch-list.txt").read_text().strip()
KERNELS = ["bias_gelu", "rotary", "layer_norm", "cross_entropy", "causal_softmax"]


def source_hash() -> str:
    """Identity of the sources and the torch they build against: a prebuilt module must match it."""
    h = hashlib.sha256(torch.__version__.encode())
    for name in SOURCES + HEADERS:
        h.update(name.encode())
        h.update((CSRC / name).read_bytes())
    return h.hexdigest()[:16]


def cuda_home() -> str | None:
    """A CUDA toolkit with nvcc and the headers torch's own headers include. torch guesses from `which nvcc`,
    which a wrapper script in /usr/local/bin turns into /usr/local (no headers); so check each candidate."""
    from torch.utils import cpp_extension

    candidates = [
        os.environ.get("CUDA_HOME"),
        os.environ.get("CUDA_PATH"),
        cpp_extension.CUDA_HOME,
        "/usr/local/cuda",
    ]
    try:  # the pip wheels (nvidia-cuda-nvcc and friends) unpack a toolkit here
        import nvidia

        candidates += [str(Path(p) / "cu13") for p in nvidia.__path__]
    except ImportError:
        pass
    for c in candidates:
        # torch's CUDA headers include cusparse.h and cublas_v2.h: a compiler-only toolkit cannot build
        if (
            c
            and (Path(c) / "bin" / "nvcc").exists()
            and all(
                (Path(c) / "include" / h).exists() for h in ("cuda_runtime.h", "cusparse.h", "cublas_v2.h")
            )
        ):
            return c
    return None


def nvcc_path() -> str | None:
    home = cuda_home()
    return str(Path(home) / "bin" / "nvcc") if home else None


def build(out_dir: str | os.PathLike, arch_list: str, verbose: bool = False):
    """Compile the extension into out_dir for arch_list (TORCH_CUDA_ARCH_LIST syntax); return the module."""
    from torch.utils import cpp_extension

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    home = cuda_home()
    if home is None:
        raise RuntimeError("no CUDA toolkit (nvcc and headers) found: set CUDA_HOME")
    cpp_extension.CUDA_HOME = home  # torch read its guess at import; use the toolkit checked above
    os.environ["CUDA_HOME"] = home
    old = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    os.environ.setdefault("MAX_JOBS", "2")
    try:
        module = cpp_extension.load(
            name=EXT_NAME,
            sources=[str(CSRC / s) for s in SOURCES],
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3", "--expt-relaxed-constexpr", "-lineinfo"],
            build_directory=str(out),
            with_cuda=True,
            verbose=verbose,
        )
    finally:
        if old is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = old
    info = {
        "arch_list": arch_list,
        "source_hash": source_hash(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "module": f"{EXT_NAME}.so",
    }
    tmp = out / f".{BUILD_INFO}.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(out / BUILD_INFO)
    return module


def _import_from(path: Path):
    loader = importlib.machinery.ExtensionFileLoader(EXT_NAME, str(path))
    spec = importlib.util.spec_from_file_location(EXT_NAME, str(path), loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _read_info(folder: Path) -> dict | None:
    try:
        return json.loads((folder / BUILD_INFO).read_text())
    except (OSError, ValueError):
        return None


def _cache_dir(arch_list: str) -> Path:
    root = os.environ.get("NEOX_KERNELS_CACHE") or Path.home() / ".cache" / "neox-pipeline" / "kernels"
    tag = arch_list.replace(" ", "_").replace("+", "p").replace(";", "_")
    return Path(root) / f"{source_hash()}-{tag}"


def _device_arch() -> str:
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


@functools.cache
def load() -> tuple[object | None, dict]:
    """(module or None, details). Never raises: a failure leaves the references in place."""
    info: dict = {"active": False, "source": None}
    if os.environ.get("NEOX_KERNELS", "1").lower() in ("0", "off", "false", "no"):
        info["reason"] = "turned off by NEOX_KERNELS"
        return None, info
    if not torch.cuda.is_available():
        info["reason"] = "no CUDA device"
        return None, info
    info["gpu"] = torch.cuda.get_device_name()
    info["capability"] = _device_arch()
    module, reasons = None, []
    prebuilt = Path(os.environ.get("NEOX_KERNELS_DIR", DEFAULT_PREBUILT))
    so = prebuilt / f"{EXT_NAME}.so"
    if so.exists():
        built = _read_info(prebuilt) or {}
        if built.get("source_hash") != source_hash():
            reasons.append(f"prebuilt {so} was built from other sources or torch; ignored")
        else:
            try:
                module = _import_from(so)
                info.update(source=f"prebuilt {so}", arch_list=built.get("arch_list"))
            except (ImportError, OSError) as exc:
                reasons.append(f"prebuilt {so} failed to load: {exc}")
    if module is None and nvcc_path():
        arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST") or _device_arch()
        folder = _cache_dir(arch_list)
        try:
            module = build(folder, arch_list, verbose=os.environ.get("NEOX_KERNELS_VERBOSE") == "1")
            info.update(source=f"jit {folder}", arch_list=arch_list)
        except Exception as exc:  # a compiler failure must not stop training: the references still work
            reasons.append(
                f"JIT build failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc!r}"
            )
    elif module is None:
        reasons.append("no prebuilt extension and no nvcc for a JIT build")
    if module is not None:
        try:
            sass, ptx, seen = module.kernel_image(torch.cuda.current_device())
            info["image"] = {"sass": sass, "ptx": ptx, "cuda_arch": seen}
        except RuntimeError as exc:
            reasons.append(
                f"compiled for {info.get('arch_list')}, not this GPU (sm_{info['capability']}): {exc}"
            )
            module = None
    info["active"] = module is not None
    info["reason"] = "; ".join(reasons) if reasons else ("ok" if module is not None else "unavailable")
    return module, info


def status() -> dict:
    module, info = load()
    out = dict(info)
    out["kernels"] = {k: ("fused" if module is not None else "reference") for k in KERNELS}
    return out


def summary() -> str:
    """One line for the trainer's start-up log."""
    s = status()
    if s["active"]:
        img = s["image"]
        return (
            f"fused kernels on ({s['source']}; GPU sm_{s['capability']} runs sm_{img['sass']} code, "
            f"compiled for {s['arch_list']}): {', '.join(KERNELS)}"
        )
    return f"fused kernels off ({s['reason']}): PyTorch references for {', '.join(KERNELS)}"
