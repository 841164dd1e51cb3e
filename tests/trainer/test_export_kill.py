"""trainer.export killed (SIGKILL) at several moments: the rerun removes the temporary folder the killed run
left beside --out (one line), and leaves exactly one folder at --out; temporary folders it cannot prove are
its own (another host's, a running export's, no owner file) stay. Real runs: a tiny checkpoint of
trainer.train (DeepSpeed's CPU accelerator), exports as subprocesses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from jobs.cli import OWNER
from tests.support.trainer import env, trainer_cmd, write_config


@pytest.fixture(scope="module")
def ckpt(corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("export-kill")
    cfg = write_config(
        d / "run.yml", corpus, **{"train-iters": 2, "eval-interval": 1000, "save": str(d / "ckpt")}
    )
    proc = subprocess.run(trainer_cmd(cfg), env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return d / "ckpt"


def export_cmd(ckpt, out):
    return [sys.executable, "-m", "trainer.export", "--checkpoint", str(ckpt), "--out", str(out)]


def temporaries(out):
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*"))


def kill_when(cmd, ready, timeout=300):
    """Start `cmd`, SIGKILL it as soon as `ready()` holds (polled every millisecond); its exit code."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.001)
    return proc.wait(timeout=60)


def test_a_killed_export_leaves_nothing_behind_after_the_rerun(ckpt, tmp_path):
    out = tmp_path / "hf"

    def temp_with(name):
        return lambda: any((tmp_path / t / name).exists() for t in temporaries(out))

    moments = {
        "the temporary folder exists": lambda: bool(temporaries(out)),
        "the weights are half written or written": temp_with("model.safetensors"),
        "the config is written": temp_with("config.json"),
    }
    removed = 0
    for what, ready in moments.items():
        rc = kill_when(export_cmd(ckpt, out), ready)
        left = temporaries(out)
        rerun = subprocess.run(export_cmd(ckpt, out), capture_output=True, text=True, timeout=300)
        lines = [x for x in rerun.stdout.splitlines() if "removed" in x]
        if rc == -signal.SIGKILL and left:
            removed += 1
            assert len(lines) == 1 and lines[0].startswith(
                f"trainer.export: removed {tmp_path / left[0]}, left by "
            ), (
                what,
                rerun.stdout,
            )
            assert rerun.returncode == 0, (what, rerun.stderr)
        assert temporaries(out) == [], what
        assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["hf"], what
        assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
        assert not (out / OWNER).exists()
        for p in list(tmp_path.iterdir()):  # the next moment starts from an empty place
            subprocess.run(["rm", "-rf", str(p)], check=True)
    assert removed >= 1  # at least one kill landed while the folder was being written (the tiny one is quick)


def test_temporaries_not_provably_ours_stay(ckpt, tmp_path):
    out = tmp_path / "hf"
    others = {
        ".hf.otherhost": {"pid": 1, "host": "another-pod"},  # may be running there
        ".hf.running": {"pid": os.getpid(), "host": socket.gethostname()},  # this pytest: alive
        ".hf.work": None,  # trainer.export's own --work default, no owner file: not a temporary
    }
    for name, owner in others.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"x")
        if owner:
            (tmp_path / name / OWNER).write_text(json.dumps(owner))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / ".hf.dead1234"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 10)
    (stale / OWNER).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    proc = subprocess.run(export_cmd(ckpt, out), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert [x for x in proc.stdout.splitlines() if "removed" in x] == [
        f"trainer.export: removed {stale}, left by an export to {out} that was stopped (pid {dead.pid})"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*others, "hf", "hf-export-stats.json"])
