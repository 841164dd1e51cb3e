"""One stage across deploys: run its Job once per spec, whatever happened since. The stage record
(k8s/stage_record.py) answers first, so a stage that completed is never run again, even after its Job
expired; a Job that finished while no one watched is recorded; a failed one is reported with its
reason and last log lines, and run again only when the user asks (`--retry-failed`): the failed Job is
deleted with its pods and created again under the same name. Training objects (TrainJob/JobSet) are
retried the same way by k8s/deploy.py's start_training."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from jobs.cli import JobError, human_duration
from k8s import progress
from k8s.cluster import Cluster, failed_reason, job_state
from k8s.stage_record import StageRecord

LOG_LINES = 10  # last log lines kept in the record for a failed stage
COMPONENT_LABEL = "app.kubernetes.io/component"
GONE_TIMEOUT = 300.0  # how long a deleted object may take to go (its pods' grace periods)


def stage_of(obj: dict) -> str:
    return (obj["metadata"].get("labels") or {}).get(COMPONENT_LABEL, obj["metadata"]["name"])


def delete_and_wait(cluster: Cluster, kind: str, name: str, timeout: float = GONE_TIMEOUT) -> None:
    """Delete with Foreground propagation (the object stays until its pods or child objects are gone)
    and wait until it is gone, so the same name can be created again without meeting the old one."""
    cluster.delete(kind, name, propagation="Foreground")
    deadline = time.monotonic() + timeout
    while cluster.get(kind, name) is not None:
        if time.monotonic() > deadline:
            raise JobError(f"{kind}/{name}: still being deleted after {human_duration(timeout)}")
        time.sleep(0.5)


def probe_verdict(cluster: Cluster, job: dict, out: TextIO) -> dict:
    """The probe's answer, without needing log access: its termination message (the kubelet keeps
    it in the pod's status), else the JSON line in its log, else "unknown" (which means fetching)."""
    pods = cluster.pods_of("Job", job["metadata"]["name"], owner=job)
    if not pods:
        return {"weights_verified": False, "reason": "probe pod gone"}
    texts = [progress.termination_message(pods[-1])]
    if texts[0] is None:
        texts.append(cluster.try_log(pods[-1]["metadata"]["name"], 20, out))
    for text in texts:
        for line in reversed((text or "").splitlines()):
            if '"weights_verified"' in line:
                try:
                    verdict = json.loads(line)
                except ValueError:
                    break
                if isinstance(verdict, dict):
                    return verdict
    return {"weights_verified": False, "reason": "probe gave no readable verdict"}


@dataclass
class StageRunner:
    cluster: Cluster
    record: StageRecord
    out: TextIO
    apply: Callable[[dict], object]  # deploy's apply: prints and counts what it did
    wait: Callable[[str, str], dict]  # (kind, name) -> the finished object; raises on failure
    applied: dict[str, str]  # "Kind/name" -> what happened, for deploy's summary
    retry_failed: bool = False

    def run(self, job: dict) -> dict:
        """The stage's record entry once its Job completed (run now, or earlier)."""
        stage, name = stage_of(job), job["metadata"]["name"]
        key = f"Job/{name}"
        if (entry := self.record.complete(stage, name)) is not None:
            self._unchanged(key, f"complete since {entry['at']}")
            return entry
        live = self.cluster.get("Job", name)
        if live is not None and job_state(live) == "Complete":  # ended while no one watched
            self._unchanged(key, "complete")
            return self._record(stage, live, "Complete")
        failed = self.record.get(stage, name)
        failed = failed if failed and failed.get("outcome") == "Failed" else None
        if live is not None and job_state(live) == "Failed" and failed is None:  # failed while no one watched
            failed = self._record(stage, live, "Failed", quiet=True)
        if failed is not None:
            self._failed_earlier(key, failed, live)
        self.apply(job)
        try:
            done = self.wait("Job", name)
        except JobError:
            live = self.cluster.get("Job", name)
            if live is not None and job_state(live) == "Failed":
                self._record(stage, live, "Failed", quiet=True)
            raise
        return self._record(stage, done, "Complete")

    def _unchanged(self, key: str, why: str) -> None:
        self.applied[key] = "unchanged"
        print(f"deploy: {key} unchanged ({why})", file=self.out)

    def _failed_earlier(self, key: str, entry: dict, live: dict | None) -> None:
        """Say what failed and why; go on only with --retry-failed, deleting the failed Job first."""
        reason = entry.get("reason") or "Failed"
        print(f"deploy: {key} failed at {entry.get('at', '?')}: {reason}", file=self.out)
        for line in entry.get("log") or []:
            print(f"  | {line}", file=self.out)
        if not self.retry_failed:
            raise JobError(
                f"{key}: failed earlier ({reason}); once the cause is fixed, `invoke deploy --retry-failed` "
                "runs it again (completed stages are kept)"
            )
        print(f"deploy: {key}: --retry-failed: deleting the failed Job and running it again", file=self.out)
        if live is not None:
            delete_and_wait(self.cluster, "Job", key.split("/", 1)[1])

    def _record(self, stage: str, job: dict, outcome: str, quiet: bool = False) -> dict:
        name = job["metadata"]["name"]
        extra: dict = {}
        if outcome == "Failed":
            extra["reason"] = failed_reason(job)
            pods = self.cluster.pods_of("Job", name, owner=job)
            failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"] or pods
            if failed:
                if (ended := progress.terminated(failed[-1])) is not None:
                    extra["reason"] += f"; pod {failed[-1]['metadata']['name']} ended: {ended}"
                log = self.cluster.try_log(
                    failed[-1]["metadata"]["name"], LOG_LINES, None if quiet else self.out
                )
                extra["log"] = log.rstrip("\n").splitlines()[-LOG_LINES:] if log else None
        elif stage == "probe-weights":
            extra["verdict"] = probe_verdict(self.cluster, job, self.out)
        return self.record.put(stage, name, outcome, **extra)
