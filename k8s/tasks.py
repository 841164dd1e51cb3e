"""The deploy tasks for invoke: option parsing only, the work is in k8s.deploy and k8s.export.
The root `tasks.py` adds them to its collection (`ns.add_task(k8s.tasks.deploy)` ...)."""

from __future__ import annotations

from collections.abc import Callable

from invoke import Exit, task

from jobs.cli import JobError
from k8s import deploy as _deploy
from k8s import export as _export
from k8s.config import load_config

_COMMON = {
    "config": "the pipeline config (see pipeline.example.yaml)",
    "kubeconfig": "kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or the in-cluster service account)",
    "context": "kubeconfig context to use (default: its current context)",
}


def _run(prog: str, body: Callable[[], object]) -> None:
    """The one place that turns a JobError into one line and a non-zero exit for a task."""
    try:
        body()
    except JobError as exc:
        raise Exit(f"{prog}: error: {exc}", code=1) from None
    except KeyboardInterrupt:
        raise Exit(f"{prog}: interrupted", code=130) from None


@task(help={**_COMMON, "lock": "images.lock.json (default: the config's lock_file)",
            "dry_run": "only render and validate; write everything under --out",
            "out": "folder for the rendered manifests and experiment config",
            "create_bucket": "create the checkpoint bucket when it does not exist",
            "skip_preflight": "skip the bucket/registry/cluster/master checks",
            "schemas": "folder of Determined's expconf JSON schemas"})
def deploy(c, config, lock=None, dry_run=False, out=None, create_bucket=False, skip_preflight=False,
           kubeconfig=None, context=None, schemas=None):
    """Render, validate, preflight, apply, wait for the Jobs, submit the Determined experiment."""
    if dry_run and not out:
        raise Exit("deploy: error: --dry-run needs --out DIR", code=2)
    opts = _deploy.Options(config=config, lock=lock, out=out, dry_run=dry_run, create_bucket=create_bucket,
                           skip_preflight=skip_preflight, kubeconfig=kubeconfig, context=context, schemas=schemas)
    _run("deploy", lambda: _deploy.deploy(opts))


@task(help={**_COMMON})
def secrets(c, config, kubeconfig=None, context=None):
    """Create the Secrets the config names from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and HF_TOKEN)."""
    _run("secrets", lambda: _deploy.secrets(_deploy.Options(config=config, kubeconfig=kubeconfig, context=context)))


@task(help={**_COMMON})
def status(c, config, kubeconfig=None, context=None):
    """The volume, each Job and the experiment of this deployment."""
    _run("status", lambda: _deploy.status(_deploy.Options(config=config, kubeconfig=kubeconfig, context=context)))


@task(help={**_COMMON, "step": "probe-weights, fetch-weights, fetch-data or preprocess (default: all)",
            "tail": "lines per pod"})
def logs(c, config, step=None, tail=100, kubeconfig=None, context=None):
    """Print the logs of this deployment's Job pods."""
    _run("logs", lambda: _deploy.logs(_deploy.Options(config=config, kubeconfig=kubeconfig, context=context),
                                      step=step, tail=int(tail)))


@task(help={**_COMMON, "volume": "also delete the shared volume (weights and data on it are lost)",
            "secrets": "also delete the Secrets"})
def teardown(c, config, volume=False, secrets=False, kubeconfig=None, context=None):
    """Delete this deployment's Jobs and ConfigMaps; keeps the volume unless --volume."""
    opts = _deploy.Options(config=config, kubeconfig=kubeconfig, context=context)
    _run("teardown", lambda: _deploy.teardown(opts, volume=volume, secrets_too=secrets))


@task(help={"config": _COMMON["config"], "experiment": "experiment ID: export its latest completed checkpoint",
            "checkpoint": "s3://BUCKET/PREFIX/UUID of a checkpoint", "out": "output folder"})
def export(c, config, out, experiment=None, checkpoint=None):
    """Download a finished checkpoint and write a Hugging Face model folder (OUT/hf)."""
    _run("export", lambda: _export.export(load_config(config), out,
                                          experiment_id=int(experiment) if experiment else None,
                                          checkpoint=checkpoint))
