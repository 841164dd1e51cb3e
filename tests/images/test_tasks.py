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
    proc = invoke("build", "--names", "fetcher", "--build-arg", "TORCH_VERSION=2.11.0")
    assert proc.returncode == 1
    assert "build arg 'TORCH_VERSION' is not declared by any image being built" in proc.stderr
    proc = invoke("build", "--names", "nope")
    assert proc.returncode == 1 and "unknown image 'nope'" in proc.stderr
    proc = invoke("build", "--build-arg", "novalue")
    assert proc.returncode == 1 and "must be KEY=VALUE" in proc.stderr


def test_push_checks_the_registry_argument_before_anything_else():
    proc = invoke("push", "--registry", "http://127.0.0.1:5000/ns")
    assert proc.returncode == 1 and "must look like HOST[:PORT]/NAMESPACE" in proc.stderr


def test_local_rejects_an_unknown_gpus_choice():
    proc = invoke("local", "--gpus", "maybe")
    assert proc.returncode == 1 and "--gpus must be auto, yes or no" in proc.stderr


def test_every_task_answers_help_and_short_flags_mean_one_thing():
    """`invoke TASK --help` for every task `invoke --list` shows; no option takes -h; the only short
    flags are -c (config), -o (out) and -n (namespace), each meaning the same everywhere."""
    import re

    listing = invoke("--list")
    assert listing.returncode == 0, listing.stderr
    names = re.findall(r"^  ([a-z][a-z-]*)\s", listing.stdout, flags=re.M)
    assert {"build", "push", "local", "deploy", "status", "logs", "teardown", "export"} <= set(names)
    allowed = {"-c": "--config", "-o": "--out", "-n": "--namespace"}
    for name in names:
        proc = invoke(name, "--help")
        assert proc.returncode == 0, (name, proc.stdout, proc.stderr)
        assert "Options:" in proc.stdout and "Positional arguments" not in proc.stdout, name
        for short, long in re.findall(
            r"^\s+(-[a-zA-Z])(?:[ =][A-Z]+)?, (--[a-z-]+)", proc.stdout, flags=re.M
        ):
            assert allowed.get(short) == long, (name, short, long)
        assert not re.search(r"^\s+-h[ ,]", proc.stdout, flags=re.M), name


def test_cluster_tasks_without_config_say_so():
    for name in ("deploy", "status", "logs", "teardown", "secrets", "export"):
        proc = invoke(name)
        assert proc.returncode == 2, (name, proc.stderr)
        assert (
            proc.stderr.strip().splitlines()[-1]
            == f"{name}: error: --config FILE is required (see pipeline.example.yaml)"
        )


def test_lock_names_an_unknown_image_before_resolving_anything():
    proc = invoke("lock", "--names", "nope")
    assert proc.returncode == 1
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("lock: error: unknown image 'nope'; the catalog has: python")
    )
