"""Everything one deployment would apply, rendered and validated in one place, and its dry-run
output: one YAML file per object plus a kustomization, the experiment config and its context
directory (the rewritten NeoX configs), and a JSON summary beside them."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from jobs.cli import JobError, atomic_dir, write_json_atomic
from k8s import render
from k8s.config import PipelineConfig, find_secret, secret_values_in_env
from k8s.experiment import CONF_DIR, experiment_config, neox_configs
from k8s.validate import KUBERNETES_VERSION, validate_experiment, validate_k8s

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Plan:
    pvc: dict
    config_maps: list[dict]
    probe: dict
    fetch: list[dict]  # weights first, then data when the dataset has a source
    preprocess: dict
    experiment: dict
    neox: dict[str, dict]
    notes: list[str] = field(default_factory=list)

    @property
    def objects(self) -> list[dict]:
        """In apply order: the volume, the configs, then the Jobs in the order they run."""
        return [self.pvc, *self.config_maps, self.probe, *self.fetch, self.preprocess]


def build_plan(cfg: PipelineConfig, images: dict[str, str], schema_dir: str | os.PathLike | None = None) -> Plan:
    neox, notes = neox_configs(cfg)
    base = None
    if cfg.base_path is not None:
        base = yaml.safe_load(cfg.base_path.read_text()) or {}
        if not isinstance(base, dict):
            raise JobError(f"experiment_base {cfg.base_path}: expected a mapping at the top")
    experiment = experiment_config(cfg, images, base, list(neox))
    configs_cm = render.config_map(cfg, f"{cfg.instance}-configs",
                                   {**{n: render.dump_yaml(c) for n, c in neox.items()},
                                    "experiment.yaml": render.dump_yaml(experiment)}, "configs")
    fetch = [render.fetch_weights_job(cfg, images)]
    if (data_job := render.fetch_data_job(cfg, images)) is not None:
        fetch.append(data_job)
    plan = Plan(pvc=render.pvc(cfg), config_maps=[configs_cm, render.probe_config_map(cfg)],
                probe=render.probe_job(cfg, images), fetch=fetch, preprocess=render.preprocess_job(cfg, images),
                experiment=experiment, neox=neox, notes=notes)
    for obj in plan.objects:
        validate_k8s(obj)
    validate_experiment(experiment, schema_dir)
    # Last guard: nothing rendered may carry a credential, whatever path it came in by.
    for obj in [*plan.objects, experiment]:
        if (where := find_secret(obj)) is not None:
            raise JobError(f"{obj.get('kind', 'experiment')} {obj.get('metadata', {}).get('name', '')}: "
                           f"{where} holds a secret value; refusing to render it")
    return plan


def _filename(i: int, obj: dict) -> str:
    return f"{i:02d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


def write_context(plan: Plan, dest: Path) -> Path:
    """The experiment's context directory: the NeoX configs under configs/, and the repo's .detignore."""
    (dest / CONF_DIR).mkdir(parents=True, exist_ok=True)
    for name, conf in plan.neox.items():
        (dest / CONF_DIR / name).write_text(render.dump_yaml(conf))
    if (REPO_ROOT / ".detignore").is_file():
        shutil.copyfile(REPO_ROOT / ".detignore", dest / ".detignore")
    return dest


def write_plan(plan: Plan, out: str | os.PathLike, images: dict[str, str]) -> dict:
    """Write the dry-run tree into `out` (built under a temporary name, then renamed into place)."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        k8s_dir = tmp / "kubernetes"
        k8s_dir.mkdir()
        files = []
        for i, obj in enumerate(plan.objects):
            name = _filename(i, obj)
            (k8s_dir / name).write_text(render.dump_yaml(obj))
            files.append(name)
        (k8s_dir / "kustomization.yaml").write_text(render.dump_yaml({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": files}))
        exp_dir = tmp / "experiment"
        write_context(plan, exp_dir / "context")
        (exp_dir / "experiment.yaml").write_text(render.dump_yaml(plan.experiment))
        summary = {
            "kubernetes_version": KUBERNETES_VERSION,
            "objects": [f"{o['kind']}/{o['metadata']['name']}" for o in plan.objects],
            "images": images,
            "neox_configs": sorted(plan.neox),
            "rewritten": plan.notes,
        }
        write_json_atomic(tmp / "render.json", summary)
        _check_no_secrets(tmp)
    return summary


def _check_no_secrets(root: Path) -> None:
    values = secret_values_in_env()
    for path in root.rglob("*"):
        if path.is_file() and any(v in path.read_text(errors="replace") for v in values):
            raise JobError(f"{path.name}: a credential from the environment ended up in a rendered file")
