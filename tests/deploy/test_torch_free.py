"""The deploy tooling and the NeoX-YAML reader need no torch: with torch blocked in a fresh interpreter,
`k8s` and `trainer.neox_yaml` import and the example config renders (a deploy host has no torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Runs in the child: a finder first on sys.meta_path refuses torch (and what only comes with it).
_CHILD = r"""
import importlib.abc, json, sys

BLOCKED = {"torch", "deepspeed", "torchao", "triton"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Block())
try:
    import torch  # noqa: F401
    sys.exit("the torch block did not work")
except ImportError:
    pass

import k8s  # noqa: F401
from k8s.config import load_config, load_lock
from k8s.plan import build_plan, write_plan
from trainer import neox_yaml

cfg_path, out = sys.argv[1], sys.argv[2]
cfg = load_config(cfg_path)
images = load_lock(cfg.lock_path)
plan = build_plan(cfg, images)
write_plan(plan, out, images)
raw, _ = neox_yaml.merge(cfg.neox_paths, ["train-iters=7"])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({"kinds": [o["kind"] for o in plan.objects], "train_iters": raw["train_iters"],
                  "blocked_loaded": loaded}))
"""


def test_deploy_renders_the_example_config_with_torch_blocked(make_config, tmp_path):
    config = make_config()
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, str(config), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, f"rendering with torch blocked failed:\n{r.stderr[-3000:]}"
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["blocked_loaded"] == []
    assert result["train_iters"] == 7
    assert "PersistentVolumeClaim" in result["kinds"]
    assert any(out.rglob("*.yaml")), "write_plan wrote no YAML files"
