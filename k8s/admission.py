"""The server's word on the whole plan before the first stage starts: every object deploy would apply
goes to the API server as a server-side apply with `dryRun=All`, so its schema checks, admission
webhooks (Kubeflow Trainer's, a policy engine's) and quotas answer now, not after hours of fetching.
Nothing is stored. Each refusal is one line; any refusal stops the deploy with nothing applied.

Skipped: a training object that already lives under its name (deploy reports that run or refuses a
different spec itself), and the Determined experiment (the master checks it when it is submitted)."""

from __future__ import annotations

from typing import TextIO

from jobs.cli import JobError
from k8s.cluster import ApiError, Cluster
from k8s.plan import Plan


def dry_run_objects(plan: Plan, cluster: Cluster) -> list[dict]:
    """What the dry run sends: the plan in apply order, less a training object already running."""
    train = plan.train_object
    objects = plan.objects
    if train is not None and cluster.get(train["kind"], train["metadata"]["name"]) is not None:
        objects = [o for o in objects if o is not train]
    return objects


def server_dry_run(plan: Plan, cluster: Cluster, out: TextIO, force: bool = False) -> int:
    """Dry-run apply every object; returns how many were checked, or raises after one line per refusal."""
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
