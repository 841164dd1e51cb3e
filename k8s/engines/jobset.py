"""The JobSet engine (jobset.x-k8s.io/v1alpha2, for clusters without Kubeflow Trainer): one replicated
job `node` of N indexed pods, DNS hostnames under a headless service the JobSet controller creates
(named after the JobSet), and a failure policy that recreates every pod of the set (`maxRestarts`).

Each pod is `<jobset>-node-0-<index>.<jobset>` (FORMATS section 7), so rank 0 and the rendezvous
address are known before anything runs: every node gets the same PET_* variables and takes its node
rank from the Indexed Job's JOB_COMPLETION_INDEX (`trainer.launch` reads both)."""

from __future__ import annotations

from jobs.spec import JobSpec, launch_env
from k8s import render
from k8s.config import PipelineConfig

KIND = "JobSet"
API_VERSION = "jobset.x-k8s.io/v1alpha2"
REPLICATED_JOB = "node"


def name(cfg: PipelineConfig) -> str:
    return f"{cfg.instance}-train"


def master_addr(jobset: str) -> str:
    return f"{jobset}-{REPLICATED_JOB}-0-0.{jobset}"


def render_objects(cfg: PipelineConfig, spec: JobSpec, images: dict[str, str]) -> list[dict]:
    t = cfg.train
    js_name = name(cfg)
    extra = launch_env(spec.nodes, spec.procs_per_node, master_addr(js_name))
    c = render.container(cfg, spec, images[spec.image], name="node", extra_env=extra)
    c["ports"] = [{"name": "rendezvous", "containerPort": int(extra["PET_MASTER_PORT"])}]
    pod = render.pod_spec(cfg, spec, [c])
    job_spec = {
        "parallelism": spec.nodes,
        "completions": spec.nodes,
        "completionMode": "Indexed",
        "backoffLimit": 0,  # a failed pod fails the Job; the JobSet's failure policy restarts them all
        "template": {"metadata": {"labels": render.labels(cfg, "train")}, "spec": pod},
    }
    if t.deadline_seconds:
        job_spec["activeDeadlineSeconds"] = t.deadline_seconds
    obj = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": render.meta(cfg, js_name, "train"),
        "spec": {
            "failurePolicy": {"maxRestarts": t.max_restarts, "restartStrategy": "Recreate"},
            "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True, "subdomain": js_name},
            "successPolicy": {"operator": "All"},
            "replicatedJobs": [
                {
                    "name": REPLICATED_JOB,
                    "replicas": 1,
                    "template": {"metadata": {"labels": render.labels(cfg, "train")}, "spec": job_spec},
                }
            ],
        },
    }
    # The spec's digest lets a second deploy tell "same run" from "a different run under this name".
    obj["metadata"]["annotations"] = {"neox-pipeline/spec-sha256": render.spec_hash(obj["spec"])}
    return [obj]
