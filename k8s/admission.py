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


def dry_run_objects(plan: Plan, cluster: Cluster) -> tuple[list[dict], list[str]]:
    """What the dry run sends (the plan in apply order) and why anything is left out: a training object
    already running (deploy reports it, or refuses a different spec), or a TrainJob naming a runtime
    of ours that does not exist yet (a dry run stores nothing, so its webhook could not find it)."""
    train = plan.train_object
    if train is None:
        return plan.objects, []
    key = f"{train['kind']}/{train['metadata']['name']}"
    left_out = None
    if cluster.get(train["kind"], train["metadata"]["name"]) is not None:
        left_out = f"{key} not sent: it exists, deploy follows it"
    else:
        ref = (train.get("spec") or {}).get("runtimeRef") or {}
        ours = {(o["kind"], o["metadata"]["name"]) for o in plan.train[:-1]}
        if (ref.get("kind"), ref.get("name")) in ours and cluster.get(ref["kind"], ref["name"]) is None:
            left_out = (
                f"{key} not sent: its {ref['kind']}/{ref['name']} is new, and a dry run stores nothing "
                "for its webhook to find; the runtime itself is checked"
            )
    if left_out is None:
        return plan.objects, []
    return [o for o in plan.objects if o is not train], [left_out]


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
    objects, left_out = dry_run_objects(plan, cluster)
    for line in left_out:
        print(f"deploy: server dry run: {line}", file=out)
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
