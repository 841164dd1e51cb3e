"""The invoke tasks pass their options through to the library (run as a user would, in a subprocess)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def invoke(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_build_passes_build_args_and_names_through():
    proc = invoke("build", "-n", "fetcher", "--build-arg", "TORCH_VERSION=2.11.0")
    assert proc.returncode == 1
    assert "build arg 'TORCH_VERSION' is not declared by any image being built" in proc.stderr
    proc = invoke("build", "-n", "nope")
    assert proc.returncode == 1 and "unknown image 'nope'" in proc.stderr
    proc = invoke("build", "--build-arg", "novalue")
    assert proc.returncode == 1 and "must be KEY=VALUE" in proc.stderr


def test_push_checks_the_registry_argument_before_anything_else():
    proc = invoke("push", "--registry", "http://127.0.0.1:5000/ns")
    assert proc.returncode == 1 and "must look like HOST[:PORT]/NAMESPACE" in proc.stderr


def test_local_rejects_an_unknown_gpus_choice():
    proc = invoke("local", "--gpus", "maybe")
    assert proc.returncode == 1 and "--gpus must be auto, yes or no" in proc.stderr
