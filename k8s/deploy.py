"""The deploy flow as library functions (the invoke tasks only parse options and call these):
render -> validate -> preflight -> apply -> wait -> train, plus secrets, status, logs and teardown.
Nothing is applied unless rendering, validation and preflight all passed.

The train stage runs on the configured engine: a Determined experiment is submitted to the master;
a TrainJob or JobSet is applied like the Jobs before it and followed by its conditions. A second
deploy with the same config changes nothing and reports where the pipeline stands."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

from jobs.cli import JobError
from k8s import admission, progress, render, stages
from k8s.cluster import (
    PROGRESS_EVERY,
    Cluster,
    default_credentials,
    failed_reason,
    job_state,
    missing_namespace_line,
)
from k8s.config import IMAGES, NAME_PATTERN, PipelineConfig, load_config, load_lock
from k8s.determined_api import Master, read_context
from k8s.engines import kubernetes_engine
from k8s.plan import REPO_ROOT, Plan, build_plan, write_context, write_plan
from k8s.preflight import run_preflight
from k8s.stage_record import StageRecord
from k8s.stage_run import StageRunner, delete_and_wait
from k8s.validate import validate_k8s

JOB_TIMEOUT = 24 * 3600


@dataclass
class Options:
    config: str
    lock: str | None = None
    out: str | None = None
    dry_run: bool = False
    create_bucket: bool = False
    skip_preflight: bool = False
    kubeconfig: str | None = None
    context: str | None = None
    schemas: str | None = None
    namespace: str | None = None  # overrides the config's
    force_conflicts: bool = False  # server-side apply takes fields other managers own
    poll: float = 5.0
    job_timeout: float = JOB_TIMEOUT
    wait_train: bool = True  # follow a TrainJob/JobSet to its end (Determined runs are followed in its UI)
    retry_failed: bool = False  # run a stage (or training run) again whose unchanged spec failed before
    stall_timeout: float = progress.STALL_TIMEOUT  # give up on pods that stay Pending this long
    controller_timeout: float = progress.CONTROLLER_TIMEOUT  # give up on an object no controller acts on
    progress_every: float = PROGRESS_EVERY


@dataclass
class Result:
    applied: dict[str, str] = field(default_factory=dict)  # "Kind/name" -> created|configured|unchanged
    skipped: list[str] = field(default_factory=list)
    experiment_id: int | None = None
    experiment_url: str | None = None
    train: str | None = None  # "TrainJob/name" or "JobSet/name"
    train_state: str | None = None
    summary: dict | None = None


def config(opts: Options) -> PipelineConfig:
    """The pipeline config, with --namespace in place of its own when given."""
    cfg = load_config(opts.config)
    if opts.namespace and opts.namespace != cfg.namespace:
        if not re.match(NAME_PATTERN, opts.namespace) or len(opts.namespace) > 63:
            raise JobError(f"--namespace {opts.namespace!r}: not a Kubernetes namespace name")
        cfg = replace(cfg, raw={**cfg.raw, "namespace": opts.namespace})
    return cfg


def unpinned_images() -> dict[str, str]:
    """What a dry run without a lock file shows: the images by the git tag `invoke push` gives them."""
    from images.build import git_revision

    return {name: f"neox-pipeline/{name}:git-{git_revision(REPO_ROOT)}" for name in IMAGES}


def load(opts: Options) -> tuple[PipelineConfig, dict[str, str], Plan]:
    cfg = config(opts)
    lock = Path(opts.lock or cfg.lock_path)
    unpinned = not lock.exists() and opts.dry_run
    images = unpinned_images() if unpinned else load_lock(lock)
    plan = build_plan(cfg, images, opts.schemas)
    if unpinned:
        plan.warnings.insert(
            0,
            f"no lock file {lock}: images shown by tag, NOT pinned by digest; "
            "`invoke push` writes it, and a real deploy needs it",
        )
    return cfg, images, plan


def waiter(cluster: Cluster, opts: Options, out: TextIO):
    """cluster.wait with the options' timeouts: (kind, name) -> the finished object."""

    def wait(kind: str, name: str) -> dict:
        return cluster.wait(
            kind,
            name,
            opts.job_timeout,
            out=out,
            progress_every=opts.progress_every,
            stall_timeout=opts.stall_timeout,
            controller_timeout=opts.controller_timeout,
        )

    return wait


def connect(cfg: PipelineConfig, opts: Options) -> tuple[Cluster, Master | None]:
    """The cluster, and the Determined master when the config trains on Determined."""
    master = Master(cfg["determined_master"]) if cfg.train.engine == "determined" else None
    return Cluster(default_credentials(opts.kubeconfig, opts.context), cfg.namespace), master


def deploy(
    opts: Options, cluster: Cluster | None = None, master: Master | None = None, out: TextIO | None = None
) -> Result:
    out = out or sys.stderr
    cfg, images, plan = load(opts)
    result = Result()
    for note in plan.notes:
        print(f"deploy: NeoX path rewritten: {note}", file=out)
    for warning in plan.warnings:
        print(f"deploy: warning: {warning}", file=out)
    if opts.out:
        result.summary = write_plan(plan, opts.out, images)
        what = "and the experiment config " if plan.experiment is not None else ""
        print(f"deploy: wrote {len(plan.objects)} manifests {what}to {opts.out}", file=out)
    if opts.dry_run:
        print(f"deploy: objects valid against the {plan.schema}", file=out)
        return result
    if cluster is None or (master is None and plan.experiment is not None):
        cluster, master = connect(cfg, opts)
    if plan.experiment is None:
        master = None  # the Kubernetes-native engines need no Determined master
    if not opts.skip_preflight:
        run_preflight(cfg, images, cluster, master, create_bucket=opts.create_bucket, out=out, plan=plan)
    secret = cfg.checkpoints.secret
    if cluster.get("Secret", secret) is None:
        raise JobError(f"Secret/{secret}: not in namespace {cfg.namespace}; run `invoke secrets` first")
    admission.server_dry_run(plan, cluster, out, force=opts.force_conflicts)  # the server's word first

    def apply(obj: dict) -> None:
        what, live = cluster.apply(obj, force=opts.force_conflicts)
        key = f"{obj['kind']}/{obj['metadata']['name']}"
        result.applied[key] = what
        print(f"deploy: {key} {what}", file=out)
        return live

    apply(plan.pvc)
    for cm in plan.config_maps:
        apply(cm)
    record = StageRecord(cluster, cfg)  # where each stage stands, beyond its Job's TTL
    runner = StageRunner(
        cluster, record, out, apply, waiter(cluster, opts, out), result.applied, opts.retry_failed
    )
    for job in data_stages(plan, record, runner, result, out):
        runner.run(job)
    if plan.experiment is not None:
        result.experiment_id, result.experiment_url = submit(cfg, plan, cluster, master, out, apply)
        where = f"experiment {result.experiment_id} at {result.experiment_url}"
    else:
        result.train, result.train_state = start_training(cfg, plan, cluster, opts, out, apply, record)
        where = f"{result.train} {result.train_state}"
    counts = {
        w: sum(1 for v in result.applied.values() if v == w) for w in ("created", "configured", "unchanged")
    }
    print(
        f"deploy: done: {len(result.applied)} objects applied ({counts['created']} created, "
        f"{counts['configured']} configured, {counts['unchanged']} unchanged), {where}",
        file=out,
    )
    return result


def data_stages(plan: Plan, record: StageRecord, runner: StageRunner, result: Result, out: TextIO) -> list:
    """The Jobs still to run after the probe: the weights fetch only when neither the record (its Job
    with this spec completed) nor the probe (the volume holds verified weights) says they are there."""
    weights_job, *data_jobs = plan.fetch
    rest = [*data_jobs, plan.preprocess]
    weights = weights_job["metadata"]["name"]
    if (fetched := record.complete("fetch-weights", weights)) is not None:
        result.skipped.append(f"Job/{plan.probe['metadata']['name']}")
        print(f"deploy: weights on the volume: Job/{weights} fetched them ({fetched['at']})", file=out)
        return [weights_job, *rest]
    verdict = runner.run(plan.probe).get("verdict") or {}
    if verdict.get("weights_verified"):
        result.skipped.append(f"Job/{weights}")
        print(
            f"deploy: weights already on the volume ({verdict.get('files')} files); skipping the fetch",
            file=out,
        )
        return rest
    print(f"deploy: weights not on the volume yet ({verdict.get('reason', 'unknown')}); fetching", file=out)
    return [weights_job, *rest]


SPEC_ANNOTATION = "neox-pipeline/spec-sha256"


def start_training(
    cfg: PipelineConfig, plan: Plan, cluster: Cluster, opts: Options, out: TextIO, apply, record=None
) -> tuple[str, str]:
    """Apply the TrainJob/JobSet once per distinct spec and follow it. The same spec again is a no-op
    that reports the run's state; a different spec while one runs under the name is refused (both
    would write the same checkpoints), so is re-running a failed one unless `--retry-failed`, which
    deletes it (its controller removes the pods) and creates it again: training resumes from the last
    complete checkpoint."""
    obj = plan.train_object
    kind, name = obj["kind"], obj["metadata"]["name"]
    key = f"{kind}/{name}"
    spec = obj["metadata"]["annotations"][SPEC_ANNOTATION]
    live = cluster.get(kind, name)
    if live is not None:
        state = cluster.state(kind, live)
        same = (live["metadata"].get("annotations") or {}).get(SPEC_ANNOTATION) == spec
        if not same and state not in ("Complete", "Failed"):
            raise JobError(
                f"{key}: already {state.lower()} with a different spec; wait for it or "
                f"`invoke teardown --training`, then deploy again (training resumes from its last complete "
                "checkpoint)"
            )
        if not same:
            raise JobError(
                f"{key}: a finished run ({state}) with a different spec is in the way; "
                f"`invoke teardown --training` removes it (checkpoints on the volume stay), then deploy again"
            )
        if state == "Failed" and not opts.retry_failed:
            raise JobError(
                f"{key}: failed earlier ({failed_reason(live)}); `invoke logs` shows why; "
                "`invoke deploy --retry-failed` starts it again from the last complete checkpoint"
            )
        if state == "Failed":
            print(
                f"deploy: {key} failed earlier ({failed_reason(live)}); --retry-failed: starting it again",
                file=out,
            )
            delete_and_wait(cluster, kind, name)
            live = None
        else:
            print(f"deploy: {key} unchanged ({state.lower()})", file=out)
            if state == "Complete" or not opts.wait_train:
                return key, state
    if live is None:
        for extra in plan.train[:-1]:  # a runtime of ours, before the TrainJob that names it
            apply(extra)
        apply(obj)
    engine = kubernetes_engine(plan.engine)
    print(
        f"deploy: {key}: {obj['spec'].get('trainer', {}).get('numNodes') or cfg.train.nodes} nodes x "
        f"{cfg.train.processes_per_node} processes ({engine.__name__.rsplit('.', 1)[-1]} engine)",
        file=out,
    )
    if not opts.wait_train:
        now = cluster.get(kind, name) or obj
        state = cluster.state(kind, now)
        print(f"deploy: {key}: {state}: {cluster.snapshot(kind, name, now).line}", file=out)
        print("deploy: not waiting; follow it with `invoke status` and `invoke logs --follow`", file=out)
        return key, state
    try:
        done = waiter(cluster, opts, out)(kind, name)
    except JobError:
        if (
            record is not None
            and (ended := cluster.get(kind, name))
            and cluster.state(kind, ended) == "Failed"
        ):
            record.put("train", name, "Failed", spec=spec, reason=failed_reason(ended))
        raise
    if record is not None:
        record.put("train", name, "Complete", spec=spec)
    return key, cluster.state(kind, done)


def submit(
    cfg: PipelineConfig, plan: Plan, cluster: Cluster, master: Master, out: TextIO, apply
) -> tuple[int, str]:
    """Create the experiment once per distinct config: a ConfigMap records what was submitted, so a
    second deploy of the same config points at the running experiment instead of starting another."""
    digest = hashlib.sha256(json.dumps([plan.experiment, plan.neox], sort_keys=True).encode()).hexdigest()
    record_name = f"{cfg.instance}-experiment"
    record = cluster.get("ConfigMap", record_name)
    if record and record.get("data", {}).get("config-sha256") == digest:
        exp_id = int(record["data"]["experiment-id"])
        url = master.experiment_url(exp_id)
        print(f"deploy: experiment {exp_id} already submitted with this config: {url}", file=out)
        return exp_id, url
    master.login()
    with tempfile.TemporaryDirectory(prefix="neox-context-") as tmp:
        context = read_context(write_context(plan, Path(tmp)))
    exp_id = master.create_experiment(plan.experiment, context, cfg.experiment.project_id)
    url = master.experiment_url(exp_id)
    apply(
        render.config_map(
            cfg,
            record_name,
            {"experiment-id": str(exp_id), "config-sha256": digest, "url": url},
            "experiment",
        )
    )
    print(f"deploy: submitted experiment {exp_id}: {url}", file=out)
    return exp_id, url


def secret_manifest(cfg: PipelineConfig, env: dict[str, str] | None = None) -> list[dict]:
    """The Secrets the config names, filled from the environment (never written to disk)."""
    env = os.environ if env is None else env
    wanted = {cfg.checkpoints.secret: ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    for section, keys in (
        ("weights", ("HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")),
        ("dataset", ("HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")),
    ):
        if (name := cfg[section].get("secret")) and name not in wanted:
            wanted[name] = keys
    out = []
    for name, keys in wanted.items():
        data = {k: base64.b64encode(env[k].encode()).decode() for k in keys if env.get(k)}
        if name == cfg.checkpoints.secret and len(data) < 2:
            raise JobError(
                f"Secret/{name}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment"
            )
        if not data:
            raise JobError(f"Secret/{name}: none of {', '.join(keys)} is set in the environment")
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {
                    "name": name,
                    "namespace": cfg.namespace,
                    "labels": render.labels(cfg, "secret"),
                },
                "data": data,
            }
        )
    return out


def secrets(opts: Options, cluster: Cluster | None = None, out: TextIO | None = None) -> dict[str, str]:
    out = out or sys.stderr
    cfg = config(opts)
    manifests = secret_manifest(cfg)  # the environment's keys first: no cluster call for a local mistake
    cluster = cluster or connect(cfg, opts)[0]
    if cluster.namespace_exists() is False:  # None: we may not read namespaces; the apply would tell
        raise JobError(missing_namespace_line(cfg.namespace, str(cfg.path)))
    done = {}
    for secret in manifests:
        what, _ = cluster.apply(secret)
        name = secret["metadata"]["name"]
        done[name] = what
        print(f"secrets: Secret/{name} {what} (keys: {', '.join(sorted(secret['data']))})", file=out)
    return done


def status(
    opts: Options,
    cluster: Cluster | None = None,
    master: Master | None = None,
    out: TextIO | None = None,
    as_json: bool = False,
) -> dict:
    """Where the pipeline stands; `as_json` prints the report as one JSON object instead of lines."""
    stream = out or sys.stdout
    out = io.StringIO() if as_json else stream
    cfg = config(opts)
    if cluster is None or (master is None and cfg.train.engine == "determined"):
        cluster, master = connect(cfg, opts)
    report: dict = {"engine": cfg.train.engine}
    pvc = cluster.get("PersistentVolumeClaim", cfg.volume.name)
    report["volume"] = pvc.get("status", {}).get("phase", "?") if pvc else "absent"
    print(f"volume   {cfg.volume.name}: {report['volume']}", file=out)
    report["jobs"] = {}
    for job in sorted(
        cluster.list("Job", render.selector(cfg)), key=lambda j: j["metadata"].get("creationTimestamp", "")
    ):
        name, state = job["metadata"]["name"], job_state(job)
        report["jobs"][name] = state
        print(f"job      {name}: {state}", file=out)
    # the stage record outlives the Jobs (their TTL): where each stage stands, and why one failed
    report["stages"] = StageRecord(cluster, cfg).entries
    for stage, entry in report["stages"].items():
        why = f": {entry['reason']}" if entry.get("outcome") == "Failed" and entry.get("reason") else ""
        print(
            f"stage    {stage}: {entry.get('outcome')} at {entry.get('at')} ({entry.get('job')}){why}",
            file=out,
        )
    if (engine := kubernetes_engine(cfg.train.engine)) is not None:
        name = engine.name(cfg)
        live = cluster.get(engine.KIND, name)
        state = cluster.state(engine.KIND, live) if live else "absent"
        pods = sorted(cluster.list("Pod", render.selector(cfg, "train")), key=_node_index) if live else []
        restarts = (live or {}).get("status", {}).get("restarts", 0)
        report["train"] = {
            "kind": engine.KIND,
            "name": name,
            "state": state,
            "restarts": restarts,
            "pods": {p["metadata"]["name"]: p.get("status", {}).get("phase", "?") for p in pods},
        }
        print(
            f"train    {engine.KIND}/{name}: {state}" + (f" ({restarts} restarts)" if restarts else ""),
            file=out,
        )
        for pod in pods:
            print(
                f"  node {_node_index(pod)}  {pod['metadata']['name']}: {pod.get('status', {}).get('phase', '?')}",
                file=out,
            )
    record = cluster.get("ConfigMap", f"{cfg.instance}-experiment")
    if record and master is not None:
        exp_id = int(record["data"]["experiment-id"])
        try:
            master.login()
            state = master.experiment(exp_id).get("state", "?")
        except JobError as exc:
            state = f"unknown ({exc})"
        report["experiment"] = {"id": exp_id, "state": state, "url": master.experiment_url(exp_id)}
        print(f"experiment {exp_id}: {state} {master.experiment_url(exp_id)}", file=out)
    if as_json:
        print(json.dumps(report, sort_keys=True), file=stream)
    return report


COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def _node_index(pod: dict) -> int:
    """The node rank of a train pod: its Indexed Job completion index (label, or annotation on older
    clusters); pods without one sort last."""
    meta = pod.get("metadata", {})
    value = (meta.get("labels") or {}).get(COMPLETION_INDEX) or (meta.get("annotations") or {}).get(
        COMPLETION_INDEX
    )
    return int(value) if value is not None and str(value).isdigit() else 1 << 30


def pipeline_steps(cfg: PipelineConfig) -> list[str]:
    """The steps whose pods `invoke logs --step` can show, in the order they run."""
    steps = ["probe-weights", "fetch-weights"] + (["fetch-data"] if cfg.dataset.source else [])
    steps.append("preprocess")
    if kubernetes_engine(cfg.train.engine) is not None:
        steps.append("train")
    return [*steps, "export"]


def logs(
    opts: Options,
    step: str | None = None,
    tail: int = 100,
    cluster: Cluster | None = None,
    out: TextIO | None = None,
    rank: int | None = None,
    follow: bool = False,
) -> int:
    """The logs of this deployment's pods; for the train step only node `rank`'s (default 0). With
    `follow`, the one pod that matters (the newest of the step, or the train pod of `rank`) is streamed
    until it ends."""
    out = out or sys.stdout
    cfg = config(opts)
    steps = pipeline_steps(cfg)
    if step is not None and step not in steps:
        raise JobError(f"logs: --step {step!r}: not a step of this pipeline (one of: {', '.join(steps)})")
    if rank is not None:
        if kubernetes_engine(cfg.train.engine) is None:
            raise JobError("logs: --rank: the determined engine's trials are followed in Determined's UI")
        if not 0 <= rank < cfg.train.nodes:
            raise JobError(
                f"logs: --rank {rank}: out of range; train.nodes is {cfg.train.nodes} "
                f"(ranks 0-{cfg.train.nodes - 1})"
            )
    cluster = cluster or connect(cfg, opts)[0]
    if rank is not None and step is None:
        step = "train"
    pods = sorted(
        cluster.list("Pod", render.selector(cfg, step)),
        key=lambda p: p["metadata"].get("creationTimestamp", ""),
    )
    if step == "train":
        want = 0 if rank is None else rank
        nodes = {_node_index(p) for p in pods}
        pods = [p for p in pods if _node_index(p) == want]
        if not pods and nodes:
            raise JobError(f"no train pod of node rank {want} (nodes: {', '.join(map(str, sorted(nodes)))})")
    if not pods:
        raise JobError(f"no pods{f' for step {step}' if step else ''} of {cfg.instance} in {cfg.namespace}")
    if follow:
        pods = pods[-1:]
    for pod in pods:
        name = pod["metadata"]["name"]
        print(f"==> pod {name} ({pod.get('status', {}).get('phase', '?')})", file=out)
        if follow:
            cluster.follow_log(name, out, tail_lines=tail)
        else:
            print(cluster.pod_log(name, tail).rstrip("\n"), file=out)
    return len(pods)


def teardown(
    opts: Options,
    volume: bool = False,
    secrets_too: bool = False,
    cluster: Cluster | None = None,
    out: TextIO | None = None,
    failed: bool = False,
    training: bool = False,
) -> list[str]:
    """Delete this deployment's Jobs and ConfigMaps; the volume (and its weights) only when asked.
    `failed` or `training` delete only the failed objects or only the training run, keeping every
    completed stage (and its record), so the next deploy goes on where the pipeline stands."""
    out = out or sys.stderr
    cfg = config(opts)
    cluster = cluster or connect(cfg, opts)[0]
    if failed or training:
        if volume or secrets_too:
            raise JobError("teardown: --failed/--training delete only those objects; drop --volume/--secrets")
        return _teardown_some(cfg, cluster, out, failed, training)
    sel = render.selector(cfg)
    gone = []
    kinds = ["Job", "ConfigMap"]
    if (engine := kubernetes_engine(cfg.train.engine)) is not None:
        kinds.insert(0, engine.KIND)  # its controller removes the pods and the headless service
        if cfg.train.own_runtime:
            kinds.insert(1, "TrainingRuntime")
    for kind in kinds:
        for obj in cluster.list(kind, sel):
            if cluster.delete(kind, obj["metadata"]["name"]):
                gone.append(f"{kind}/{obj['metadata']['name']}")
    if secrets_too:
        for secret in {cfg.checkpoints.secret, cfg.weights.secret, cfg.dataset.secret} - {None}:
            if cluster.delete("Secret", secret):
                gone.append(f"Secret/{secret}")
    if volume and cluster.delete("PersistentVolumeClaim", cfg.volume.name):
        gone.append(f"PersistentVolumeClaim/{cfg.volume.name}")
    for g in gone:
        print(f"teardown: deleted {g}", file=out)
    kept = "" if volume else f"; kept PersistentVolumeClaim/{cfg.volume.name} (pass --volume to delete it)"
    print(f"teardown: {len(gone)} objects deleted{kept}", file=out)
    return gone


def _teardown_some(
    cfg: PipelineConfig, cluster: Cluster, out: TextIO, failed: bool, training: bool
) -> list[str]:
    record = StageRecord(cluster, cfg)
    gone: list[str] = []
    if failed:
        for job in cluster.list("Job", render.selector(cfg)):
            if job_state(job) == "Failed" and cluster.delete("Job", job["metadata"]["name"]):
                gone.append(f"Job/{job['metadata']['name']}")
        stale = [s for s, e in record.entries.items() if e.get("outcome") == "Failed"]
        for stage in record.drop(stale):
            print(f"teardown: forgot the failed {stage} stage (the next deploy runs it again)", file=out)
    engine = kubernetes_engine(cfg.train.engine)
    if engine is not None:
        live = cluster.get(engine.KIND, engine.name(cfg))
        if live is not None and (training or cluster.state(engine.KIND, live) == "Failed"):
            if cluster.delete(engine.KIND, engine.name(cfg)):  # its controller removes the pods
                gone.append(f"{engine.KIND}/{engine.name(cfg)}")
        if training and cfg.train.own_runtime and cluster.delete("TrainingRuntime", engine.runtime_name(cfg)):
            gone.append(f"TrainingRuntime/{engine.runtime_name(cfg)}")
        if training or (live is not None and f"{engine.KIND}/{engine.name(cfg)}" in gone):
            record.drop(["train"])
    for g in gone:
        print(f"teardown: deleted {g}", file=out)
    what = " and ".join(w for w, on in (("failed", failed), ("training", training)) if on)
    print(
        f"teardown: {len(gone)} {what} objects deleted; kept the completed stages and "
        f"PersistentVolumeClaim/{cfg.volume.name}",
        file=out,
    )
    return gone


def require_trained(cfg: PipelineConfig, cluster: Cluster, opts: Options, wait: bool, out: TextIO) -> None:
    """Export only a finished run: its TrainJob/JobSet Complete (or recorded Complete), or, with
    `wait`, once it is. Needs no log or bucket access."""
    engine = kubernetes_engine(cfg.train.engine)
    kind, name = engine.KIND, engine.name(cfg)
    key = f"{kind}/{name}"
    live = cluster.get(kind, name)
    if live is None:
        entry = StageRecord(cluster, cfg).complete("train", name)
        if entry is not None:
            return
        raise JobError(
            f"export: no complete checkpoint: {key} does not exist (training has not run); "
            "`invoke deploy` first, or name one with --checkpoint s3://..."
        )
    state = cluster.state(kind, live)
    if state == "Failed":
        raise JobError(
            f"export: {key} failed ({failed_reason(live)}); `invoke deploy --retry-failed` resumes it, "
            "or name a checkpoint with --checkpoint s3://..."
        )
    if state != "Complete":
        if not wait:
            raise JobError(
                f"export: {key} is still {state.lower()}: its final checkpoint does not exist yet; "
                "`invoke export --wait` waits for the run, --checkpoint s3://... names one"
            )
        print(f"export: waiting for {key} to finish", file=out)
        waiter(cluster, opts, out)(kind, name)


def export(
    opts: Options,
    experiment_id: int | None = None,
    checkpoint: str | None = None,
    local: bool = False,
    to: str | None = None,
    cluster: Cluster | None = None,
    master: Master | None = None,
    out: TextIO | None = None,
    wait: bool = False,
    **local_kw,
) -> str:
    """A Hugging Face folder from the run's checkpoint. By default a Job in the cluster (trainer image)
    converts it where it is, so no checkpoint with its optimizer state crosses to this machine: the
    newest checkpoint on the volume (TrainJob/JobSet), or a Determined experiment's in the bucket; the
    folder goes to `export/<run>/hf` on the volume, or to `to` (s3://BUCKET/PREFIX). `local` downloads
    the checkpoint (the mirror's newest for TrainJob/JobSet) and converts it on this machine."""
    from k8s import export as _export

    out = out or sys.stderr
    cfg = config(opts)
    if local and not opts.out:
        raise JobError("export: --out DIR is required to export on this machine")
    # On the volume a checkpoint counts once the run is Complete; --local reads the mirror, whose
    # `latest` exists only once a checkpoint is complete (mirror_checkpoint refuses without it).
    native = kubernetes_engine(cfg.train.engine) is not None
    if checkpoint is None and experiment_id is None and native and (not local or wait):
        cluster = cluster or connect(cfg, opts)[0]
        require_trained(cfg, cluster, opts, wait, out)
    if local:
        if checkpoint is None and experiment_id is None and cfg.train.engine != "determined":
            checkpoint = _export.mirror_checkpoint(stages.mirror_url(cfg), cfg.checkpoints.endpoint_url)
        if master is None and experiment_id is not None:
            master = connect(cfg, opts)[1]
        return str(
            _export.export(
                cfg,
                opts.out,
                experiment_id=experiment_id,
                checkpoint=checkpoint,
                master=master,
                stream=out,
                **local_kw,
            )
        )
    if to is not None and not re.match(r"^s3://[^/\s]+(/\S*)?$", to):
        raise JobError(f"export: --to {to!r}: expected s3://BUCKET/PREFIX")
    if checkpoint is None:
        if experiment_id is not None:
            master = master or connect(cfg, opts)[1]
            checkpoint = _export.checkpoint_url(cfg, master, experiment_id)
        elif cfg.train.engine == "determined":
            raise JobError(
                "export: a Determined run's checkpoint is named by --experiment ID (or --checkpoint s3://...)"
            )
        else:
            checkpoint = stages.save_dir(cfg)
    lock = opts.lock or str(cfg.lock_path)
    images = load_lock(lock, ("trainer",))
    dest = to or cfg.on_volume(f"export/{cfg.instance}/hf")
    remote = checkpoint.startswith("s3://") or dest.startswith("s3://")
    work = cfg.on_volume(f"export/{cfg.instance}/work") if remote else None
    job = render.job(cfg, stages.export(cfg, checkpoint, dest, work), images)
    validate_k8s(job)
    cluster = cluster or connect(cfg, opts)[0]
    what, _ = cluster.apply(job, force=opts.force_conflicts)
    print(f"export: Job/{job['metadata']['name']} {what} ({checkpoint} -> {dest})", file=out)
    waiter(cluster, opts, out)("Job", job["metadata"]["name"])
    where = dest if to else f"{dest} on PersistentVolumeClaim/{cfg.volume.name}"
    print(f"export: Hugging Face model folder at {where}", file=out)
    return dest
