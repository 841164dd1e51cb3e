"""The deploy flow as library functions (the invoke tasks only parse options and call these):
render -> validate -> preflight -> apply -> wait -> submit, plus secrets, status, logs and teardown.
Nothing is applied unless rendering, validation and preflight all passed."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from jobs.cli import JobError
from k8s import render
from k8s.cluster import Cluster, default_credentials, job_state
from k8s.config import PipelineConfig, load_config, load_lock
from k8s.determined_api import Master, read_context
from k8s.plan import Plan, build_plan, write_context, write_plan
from k8s.preflight import run_preflight

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
    poll: float = 5.0
    job_timeout: float = JOB_TIMEOUT


@dataclass
class Result:
    applied: dict[str, str] = field(default_factory=dict)  # "Kind/name" -> created|configured|unchanged
    skipped: list[str] = field(default_factory=list)
    experiment_id: int | None = None
    experiment_url: str | None = None
    summary: dict | None = None


def load(opts: Options) -> tuple[PipelineConfig, dict[str, str], Plan]:
    cfg = load_config(opts.config)
    lock = opts.lock or str(cfg.path.parent / cfg.raw.get("lock_file", "images.lock.json"))
    images = load_lock(lock)
    return cfg, images, build_plan(cfg, images, opts.schemas)


def connect(cfg: PipelineConfig, opts: Options) -> tuple[Cluster, Master]:
    return (Cluster(default_credentials(opts.kubeconfig, opts.context), cfg.namespace),
            Master(cfg["determined_master"]))


def deploy(opts: Options, cluster: Cluster | None = None, master: Master | None = None,
           out: TextIO | None = None) -> Result:
    out = out or sys.stderr
    cfg, images, plan = load(opts)
    result = Result()
    for note in plan.notes:
        print(f"deploy: NeoX path rewritten: {note}", file=out)
    if opts.out:
        result.summary = write_plan(plan, opts.out, images)
        print(f"deploy: wrote {len(plan.objects)} manifests and the experiment config to {opts.out}", file=out)
    if opts.dry_run:
        return result
    if cluster is None or master is None:
        cluster, master = connect(cfg, opts)
    if not opts.skip_preflight:
        run_preflight(cfg, images, cluster, master, create_bucket=opts.create_bucket, out=out)
    secret = cfg["checkpoints"]["secret"]
    if cluster.get("Secret", secret) is None:
        raise JobError(f"Secret/{secret}: not in namespace {cfg.namespace}; run `invoke secrets` first")

    def apply(obj: dict) -> None:
        what, live = cluster.apply(obj)
        key = f"{obj['kind']}/{obj['metadata']['name']}"
        result.applied[key] = what
        print(f"deploy: {key} {what}", file=out)
        return live

    apply(plan.pvc)
    for cm in plan.config_maps:
        apply(cm)
    apply(plan.probe)
    cluster.wait_job(plan.probe["metadata"]["name"], opts.job_timeout, opts.poll, out)
    verdict = probe_verdict(cluster, plan.probe["metadata"]["name"])
    weights_job, *data_jobs = plan.fetch
    if verdict.get("weights_verified"):
        result.skipped.append(f"Job/{weights_job['metadata']['name']}")
        print(f"deploy: weights already on the volume ({verdict.get('files')} files); skipping the fetch", file=out)
        jobs = [*data_jobs, plan.preprocess]
    else:
        print(f"deploy: weights not on the volume yet ({verdict.get('reason', 'unknown')}); fetching", file=out)
        jobs = [weights_job, *data_jobs, plan.preprocess]
    for job in jobs:
        apply(job)
        cluster.wait_job(job["metadata"]["name"], opts.job_timeout, opts.poll, out)
    result.experiment_id, result.experiment_url = submit(cfg, plan, cluster, master, out, apply)
    counts = {w: sum(1 for v in result.applied.values() if v == w) for w in ("created", "configured", "unchanged")}
    print(f"deploy: done: {len(result.applied)} objects applied ({counts['created']} created, "
          f"{counts['configured']} configured, {counts['unchanged']} unchanged), "
          f"experiment {result.experiment_id} at {result.experiment_url}", file=out)
    return result


def probe_verdict(cluster: Cluster, job: str) -> dict:
    pods = cluster.job_pods(job)
    if not pods:
        return {"weights_verified": False, "reason": "probe pod gone"}
    for line in reversed(cluster.pod_log(pods[-1]["metadata"]["name"], 20).splitlines()):
        if '"weights_verified"' in line:
            try:
                return json.loads(line)
            except ValueError:
                break
    return {"weights_verified": False, "reason": "probe printed no verdict"}


def submit(cfg: PipelineConfig, plan: Plan, cluster: Cluster, master: Master, out: TextIO, apply) -> tuple[int, str]:
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
    exp_id = master.create_experiment(plan.experiment, context, cfg["experiment"].get("project_id"))
    url = master.experiment_url(exp_id)
    apply(render.config_map(cfg, record_name, {"experiment-id": str(exp_id), "config-sha256": digest,
                                               "url": url}, "experiment"))
    print(f"deploy: submitted experiment {exp_id}: {url}", file=out)
    return exp_id, url


def secret_manifest(cfg: PipelineConfig, env: dict[str, str] | None = None) -> list[dict]:
    """The Secrets the config names, filled from the environment (never written to disk)."""
    env = os.environ if env is None else env
    wanted = {cfg["checkpoints"]["secret"]: ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    for section, keys in (("weights", ("HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")),
                          ("dataset", ("HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))):
        if (name := cfg[section].get("secret")) and name not in wanted:
            wanted[name] = keys
    out = []
    for name, keys in wanted.items():
        data = {k: base64.b64encode(env[k].encode()).decode() for k in keys if env.get(k)}
        if name == cfg["checkpoints"]["secret"] and len(data) < 2:
            raise JobError(f"Secret/{name}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment")
        if not data:
            raise JobError(f"Secret/{name}: none of {', '.join(keys)} is set in the environment")
        out.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": name, "namespace": cfg.namespace, "labels": render.labels(cfg, "secret")},
                    "data": data})
    return out


def secrets(opts: Options, cluster: Cluster | None = None, out: TextIO | None = None) -> dict[str, str]:
    out = out or sys.stderr
    cfg = load_config(opts.config)
    cluster = cluster or connect(cfg, opts)[0]
    done = {}
    for secret in secret_manifest(cfg):
        what, _ = cluster.apply(secret)
        name = secret["metadata"]["name"]
        done[name] = what
        print(f"secrets: Secret/{name} {what} (keys: {', '.join(sorted(secret['data']))})", file=out)
    return done


def status(opts: Options, cluster: Cluster | None = None, master: Master | None = None,
           out: TextIO | None = None) -> dict:
    out = out or sys.stdout
    cfg = load_config(opts.config)
    if cluster is None or master is None:
        cluster, master = connect(cfg, opts)
    report: dict = {}
    pvc = cluster.get("PersistentVolumeClaim", cfg["volume"]["name"])
    report["volume"] = pvc.get("status", {}).get("phase", "?") if pvc else "absent"
    print(f"volume   {cfg['volume']['name']}: {report['volume']}", file=out)
    report["jobs"] = {}
    for job in sorted(cluster.list("Job", render.selector(cfg)),
                      key=lambda j: j["metadata"].get("creationTimestamp", "")):
        name, state = job["metadata"]["name"], job_state(job)
        report["jobs"][name] = state
        print(f"job      {name}: {state}", file=out)
    record = cluster.get("ConfigMap", f"{cfg.instance}-experiment")
    if record:
        exp_id = int(record["data"]["experiment-id"])
        try:
            master.login()
            state = master.experiment(exp_id).get("state", "?")
        except JobError as exc:
            state = f"unknown ({exc})"
        report["experiment"] = {"id": exp_id, "state": state}
        print(f"experiment {exp_id}: {state} {master.experiment_url(exp_id)}", file=out)
    return report


def logs(opts: Options, step: str | None = None, tail: int = 100, cluster: Cluster | None = None,
         out: TextIO | None = None) -> int:
    out = out or sys.stdout
    cfg = load_config(opts.config)
    cluster = cluster or connect(cfg, opts)[0]
    sel = render.selector(cfg) + (f",app.kubernetes.io/component={step}" if step else "")
    pods = sorted(cluster.list("Pod", sel), key=lambda p: p["metadata"].get("creationTimestamp", ""))
    if not pods:
        raise JobError(f"no pods{f' for step {step}' if step else ''} of {cfg.instance} in {cfg.namespace}")
    for pod in pods:
        name = pod["metadata"]["name"]
        print(f"==> pod {name} ({pod.get('status', {}).get('phase', '?')})", file=out)
        print(cluster.pod_log(name, tail).rstrip("\n"), file=out)
    return len(pods)


def teardown(opts: Options, volume: bool = False, secrets_too: bool = False, cluster: Cluster | None = None,
             out: TextIO | None = None) -> list[str]:
    """Delete this deployment's Jobs and ConfigMaps; the volume (and its weights) only when asked."""
    out = out or sys.stderr
    cfg = load_config(opts.config)
    cluster = cluster or connect(cfg, opts)[0]
    sel = render.selector(cfg)
    gone = []
    for kind in ("Job", "ConfigMap"):
        for obj in cluster.list(kind, sel):
            if cluster.delete(kind, obj["metadata"]["name"]):
                gone.append(f"{kind}/{obj['metadata']['name']}")
    if secrets_too:
        for secret in {cfg["checkpoints"]["secret"], cfg["weights"].get("secret"), cfg["dataset"].get("secret")} - {None}:
            if cluster.delete("Secret", secret):
                gone.append(f"Secret/{secret}")
    if volume and cluster.delete("PersistentVolumeClaim", cfg["volume"]["name"]):
        gone.append(f"PersistentVolumeClaim/{cfg['volume']['name']}")
    for g in gone:
        print(f"teardown: deleted {g}", file=out)
    kept = "" if volume else f"; kept PersistentVolumeClaim/{cfg['volume']['name']} (pass --volume to delete it)"
    print(f"teardown: {len(gone)} objects deleted{kept}", file=out)
    return gone
