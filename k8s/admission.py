"""The cluster's word on the whole plan before the first stage starts. First the objects are held to
the OpenAPI schema of the cluster's own Kubernetes version (the plan was rendered against the newest
shipped). Then every object deploy would apply goes to the API server as a server-side apply with `dryRun=All`, so its schema checks, admission
webhooks (Kubeflow Trainer's, a policy engine's) and quotas answer now, not after hours of fetching.
Nothing is stored. Each refusal is one line; any refusal stops the deploy with nothing applied.

Skipped: a training object that already lives under its name (deploy reports that run or refuses a
different spec itself), and the Determined experiment (the master checks it when it is submitted)."""

from __future__ import annotations

from typing import TextIO

from jobs.cli import JobError
from k8s.cluster import ApiError, Cluster
from k8s.plan import Plan, validate_objects


def dry_run_objects(plan: Plan, cluster: Cluster) -> list[dict]:
    """What the dry run sends: the plan in apply order, less a training object already running."""
    train = plan.train_object
    objects = plan.objects
    if train is not None and cluster.get(train["kind"], train["metadata"]["name"]) is not None:
        objects = [o for o in objects if o is not train]
    return objects


def check_schema(plan: Plan, cluster: Cluster, out: TextIO) -> None:
    """Validate the plan against the schema of the cluster's version (its /version)."""
    try:
        version = cluster.version()
    except ApiError:  # /version is public on every cluster we know; a locked one keeps the newest
        version = None
    validate_objects(plan, version)
    print(f"deploy: objects valid against the {plan.schema}", file=out)


def server_dry_run(plan: Plan, cluster: Cluster, out: TextIO, force: bool = False) -> int:
    """Check the schema of the cluster's version, then dry-run apply every object; returns how many
    were checked, or raises after one line per refusal."""
    check_schema(plan, cluster, out)
    objects = dry_run_objects(plan, cluster)
    refused = []
    for obj in objects:
        try:
            cluster.apply(obj, force=force, dry_run=True)
        except ApiError as exc:  # the server's answer about this object; unreachable servers raise on
            refused.append(f"{obj['kind']}/{obj['metadata']['name']}")
            print(f"deploy: refused: {exc}", file=out)
    if refused:
        raise JobError(
            f"server dry run: {len(refused)} of {len(objects)} objects refused ({', '.join(refused)}); "
            "nothing was applied; fix the config or the cluster, then deploy again"
        )
    print(f"deploy: server dry run: {len(objects)} objects admitted", file=out)
    return len(objects)
