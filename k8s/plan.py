"""Everything one deployment would apply, rendered and validated in one place, and its dry-run
output: one YAML file per object plus a kustomization, the experiment config and its context
directory (the rewritten NeoX configs, Determined engine), and a JSON summary beside them.

The stages come from k8s/stages.py as job specs; Jobs render them for fetch and preprocess, the
configured engine (k8s/engines/) for train."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from jobs.cli import JobError, atomic_dir, write_json_atomic
from k8s import render, stages
from k8s.config import PipelineConfig
from k8s.engines import kubernetes_engine
from k8s.engines.determined import CONF_DIR, experiment_config
from k8s.secret_scan import SECRET_HELP, find_secret, secret_values_in_env
from k8s.validate import schema_version, validate_experiment, validate_k8s
from trainer.neox_yaml import read_yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Plan:
    engine: str
    pvc: dict
    config_maps: list[dict]
    probe: dict
    fetch: list[dict]  # weights first, then data when the dataset has a source
    preprocess: dict
    train: list[dict]  # the Kubernetes-native engine's objects (empty for Determined)
    experiment: dict | None  # the Determined experiment config (None for the other engines)
    neox: dict[str, dict]
    notes: list[str] = field(default_factory=list)  # NeoX paths rewritten
    warnings: list[str] = field(default_factory=list)  # checks that could not run, images not pinned
    kubernetes_version: str = ""  # the schema the objects were validated against
    schema: str = ""  # which one and why, for the user

    @property
    def objects(self) -> list[dict]:
        """In apply order: the volume, the configs, the Jobs in the order they run, then the training run."""
        return [self.pvc, *self.config_maps, self.probe, *self.fetch, self.preprocess, *self.train]

    @property
    def train_object(self) -> dict | None:
        """The TrainJob or JobSet (last: a runtime of ours comes before it)."""
        return self.train[-1] if self.train else None


def _experiment_base(cfg: PipelineConfig) -> dict | None:
    if cfg.base_path is None:
        return None
    base = read_yaml(cfg.base_path, "experiment_base")
    if (where := find_secret(base)) is not None:
        raise JobError(f"experiment_base {cfg.base_path}: {where} holds a secret value; {SECRET_HELP}")
    return base


def validate_objects(plan: Plan, cluster_version: str | None) -> None:
    """Hold every object to the schema of `cluster_version` (None: not known, the newest shipped)."""
    plan.kubernetes_version, plan.schema = schema_version(cluster_version)
    for obj in plan.objects:
        validate_k8s(obj, plan.kubernetes_version)


def build_plan(
    cfg: PipelineConfig,
    images: dict[str, str],
    schema_dir: str | os.PathLike | None = None,
    cluster_version: str | None = None,
) -> Plan:
    neox, notes = stages.neox_configs(cfg)
    train_spec = stages.train(cfg, neox)
    engine = kubernetes_engine(cfg.train.engine)
    experiment, train = None, []
    files = {n: render.dump_yaml(c) for n, c in neox.items()}
    if engine is None:
        experiment = experiment_config(cfg, train_spec, images, _experiment_base(cfg), list(neox))
        files["experiment.yaml"] = render.dump_yaml(experiment)
    else:
        train = engine.render_objects(cfg, train_spec, images)
    configs_cm = render.config_map(cfg, render.configs_config_map_name(cfg), files, "configs")
    fetch = [render.job(cfg, stages.fetch_weights(cfg), images)]
    if (data_spec := stages.fetch_data(cfg)) is not None:
        fetch.append(render.job(cfg, data_spec, images))
    plan = Plan(
        engine=cfg.train.engine,
        pvc=render.pvc(cfg),
        config_maps=[configs_cm, render.probe_config_map(cfg)],
        probe=render.probe_job(cfg, stages.probe_weights(cfg), images),
        fetch=fetch,
        preprocess=render.job(cfg, stages.preprocess(cfg), images),
        train=train,
        experiment=experiment,
        neox=neox,
        notes=notes,
    )
    validate_objects(plan, cluster_version)
    if experiment is not None and (note := validate_experiment(experiment, schema_dir)):
        plan.warnings.append(note)
    # Last guard: nothing rendered may carry a credential, whatever path it came in by.
    for obj in [*plan.objects, *([experiment] if experiment else [])]:
        if (where := find_secret(obj)) is not None:
            raise JobError(
                f"{obj.get('kind', 'experiment')} {obj.get('metadata', {}).get('name', '')}: "
                f"{where} holds a secret value; refusing to render it"
            )
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
    """Write the dry-run tree into `out` (built under a temporary name, then renamed into place); an
    existing `out` with anything in it is refused, never replaced."""
    out = Path(out)
    with atomic_dir(out, replace=False) as tmp:
        k8s_dir = tmp / "kubernetes"
        k8s_dir.mkdir()
        files = []
        for i, obj in enumerate(plan.objects):
            name = _filename(i, obj)
            (k8s_dir / name).write_text(render.dump_yaml(obj))
            files.append(name)
        (k8s_dir / "kustomization.yaml").write_text(
            render.dump_yaml(
                {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": files}
            )
        )
        if plan.experiment is not None:
            exp_dir = tmp / "experiment"
            write_context(plan, exp_dir / "context")
            (exp_dir / "experiment.yaml").write_text(render.dump_yaml(plan.experiment))
        summary = {
            "engine": plan.engine,
            "kubernetes_version": plan.kubernetes_version,
            "schema": plan.schema,
            "objects": [f"{o['kind']}/{o['metadata']['name']}" for o in plan.objects],
            "images": images,
            "warnings": plan.warnings,
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
