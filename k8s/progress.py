"""What a workload (Job, JobSet, TrainJob) is doing while deploy waits on it, in words a user can act
on: its pods by phase, why a Pending pod is Pending (the scheduler's PodScheduled=False message, a
volume not bound, an image that cannot be pulled), restarts as they happen, and when to give up:
no change for `stall_timeout` while something is not running, or no controller acting on the object
within `controller_timeout`. Reads the objects only; cluster.Cluster.wait prints and raises."""

from __future__ import annotations

from dataclasses import dataclass, field

from jobs.cli import JobError, human_duration

STALL_TIMEOUT = 30 * 60.0  # no change in the pods for this long while some are not running: give up
CONTROLLER_TIMEOUT = 5 * 60.0  # no status and no pods for this long: no controller is acting on it
IMAGE_ERRORS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
CONFIG_ERRORS = {"CreateContainerConfigError", "CreateContainerError"}
# Who acts on each kind, for the error that says none did.
CONTROLLERS = {
    "Job": "the Job controller (kube-controller-manager)",
    "JobSet": "the JobSet controller (jobset-controller-manager, jobset-system)",
    "TrainJob": "the Kubeflow Trainer controller manager (kubeflow-trainer-controller-manager, "
    "kubeflow-system)",
}


@dataclass
class Snapshot:
    line: str  # the progress line after "deploy: KIND/NAME: "
    fingerprint: tuple  # changes whenever anything moved (phases, ready, counts, restarts)
    picked_up: bool  # the controller has acted: a status, or pods
    all_running: bool  # every pod Running or done: a quiet long run is not a stall
    pending: list[str] = field(default_factory=list)  # why pods wait, one reason each
    restarts: int = 0
    failed_nodes: dict[int, str] = field(default_factory=dict)  # node index -> why it ended


def _status(obj: dict) -> dict:
    return obj.get("status") or {}


def _child_jobs(kind: str, status: dict) -> list[dict]:
    return status.get("replicatedJobsStatus" if kind == "JobSet" else "jobsStatus") or []


def _ready(pod: dict) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in _status(pod).get("conditions") or []
    )


def node_index(pod: dict) -> int | None:
    meta = pod.get("metadata") or {}
    key = "batch.kubernetes.io/job-completion-index"
    value = (meta.get("labels") or {}).get(key) or (meta.get("annotations") or {}).get(key)
    return int(value) if value is not None and str(value).isdigit() else None


def terminated(pod: dict) -> str | None:
    """How the pod's container ended: "OOMKilled (exit code 137): message"."""
    for cs in _status(pod).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if term:
            text = f"{term.get('reason') or 'terminated'} (exit code {term.get('exitCode', '?')})"
            return text + (f": {term['message'].strip()}" if (term.get("message") or "").strip() else "")
    reason = _status(pod).get("reason")  # Evicted, DeadlineExceeded: the kubelet's own
    return f"{reason}: {_status(pod).get('message', '')}".rstrip(": ") if reason else None


def termination_message(pod: dict) -> str | None:
    """What the container wrote to its terminationMessagePath, as the kubelet keeps it in the status."""
    for cs in _status(pod).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or {}
        if (term.get("message") or "").strip():
            return term["message"]
    return None


def pending_reason(pod: dict, claim_phase) -> str:
    """Why a Pending pod waits. `claim_phase(name)` is the phase of a PersistentVolumeClaim."""
    status = _status(pod)
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in IMAGE_ERRORS:
            return f"image pull failed: {reason}: {waiting.get('message', '').strip()}".rstrip(": ")
        if reason in CONFIG_ERRORS:
            return f"{reason}: {waiting.get('message', '').strip()}".rstrip(": ")
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in (pod.get("spec") or {}).get("volumes") or []
        if (v.get("persistentVolumeClaim") or {}).get("claimName")
    ]
    for claim in claims:
        phase = claim_phase(claim)
        if phase not in (None, "Bound"):
            return f"volume not bound: PersistentVolumeClaim/{claim} is {phase}"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return f"unschedulable: {cond.get('message') or cond.get('reason') or 'no node fits'}"
    if any(
        c.get("type") == "PodScheduled" and c.get("status") == "True" for c in status.get("conditions") or []
    ):
        return "scheduled, starting its containers"
    return "waiting to be scheduled"


def snapshot(kind: str, obj: dict, pods: list[dict], claim_phase) -> Snapshot:
    status = _status(obj)
    phases: dict[str, int] = {}
    pending: list[str] = []
    failed_nodes: dict[int, str] = {}
    for pod in pods:
        phase = _status(pod).get("phase") or "Pending"
        phases[phase] = phases.get(phase, 0) + 1
        if phase == "Pending":
            reason = pending_reason(pod, claim_phase)
            if reason not in pending:
                pending.append(reason)
        elif phase == "Failed" and (i := node_index(pod)) is not None:
            failed_nodes[i] = terminated(pod) or "Failed"
    order = ("Pending", "Running", "Succeeded", "Failed")
    pod_part = ", ".join(f"{phases[p]} {p}" for p in order if phases.get(p)) or "no pods yet"
    if pending:
        pod_part += f" (Pending: {'; '.join(pending)})"
    restarts = int(status.get("restarts") or 0)
    if kind == "Job":
        line = f"pods {pod_part}, {status.get('failed', 0)} failed attempts"
        counts: tuple = tuple(status.get(k, 0) for k in ("active", "ready", "succeeded", "failed"))
    else:
        jobs = _child_jobs(kind, status)
        c = {k: sum(j.get(k) or 0 for j in jobs) for k in ("active", "ready", "succeeded", "failed")}
        line = (
            f"{c['active']} jobs running, {c['succeeded']} succeeded, {c['failed']} failed; pods {pod_part}"
        )
        counts = tuple(c.values())
        if restarts:
            line += f"; {restarts} restarts"
    picked_up = bool(pods) or bool(status)
    if not picked_up:
        line = "not picked up by a controller yet (no status, no pods)"
    fingerprint = (
        counts,
        restarts,
        tuple(sorted((p["metadata"]["name"], _status(p).get("phase"), _ready(p)) for p in pods)),
    )
    all_running = bool(pods) and all(
        (_status(p).get("phase") or "Pending") in ("Running", "Succeeded") for p in pods
    )
    return Snapshot(line, fingerprint, picked_up, all_running, pending, restarts, failed_nodes)


class Tracker:
    """Follows the snapshots of one wait: says when something moved, reports restarts, and gives up
    on a stall or a missing controller (JobError naming what to do)."""

    def __init__(
        self, kind: str, name: str, obj: dict, start: float, stall_timeout: float, controller_timeout: float
    ) -> None:
        self.kind, self.name, self.obj = kind, name, obj
        self.start = self.changed_at = start
        self.stall_timeout = stall_timeout
        self.controller_timeout = controller_timeout
        self.fingerprint: tuple | None = None
        self.restarts: int | None = None
        self.failed_nodes: dict[int, str] = {}

    @property
    def what(self) -> str:
        return f"{self.kind}/{self.name}"

    def max_restarts(self) -> int | None:
        policy = ((self.obj.get("spec") or {}).get("failurePolicy")) or {}
        return policy.get("maxRestarts")

    def update(self, snap: Snapshot, now: float, obj: dict) -> list[str]:
        """Take a snapshot in; returns lines to print (restarts as they happen)."""
        self.obj = obj
        lines = []
        if snap.fingerprint != self.fingerprint:
            self.fingerprint, self.changed_at = snap.fingerprint, now
        seen_before = dict(self.failed_nodes)
        self.failed_nodes.update(snap.failed_nodes)
        if self.restarts is not None and snap.restarts > self.restarts:
            limit = self.max_restarts()
            of = f" of {limit} (failurePolicy.maxRestarts)" if limit is not None else ""
            why = {**seen_before, **snap.failed_nodes} or self.failed_nodes
            nodes = (
                "; ".join(f"node {i} failed: {r}" for i, r in sorted(why.items()))
                or "the failed node's pod is gone"
            )
            lines.append(f"restart {snap.restarts}{of}: {nodes}")
            self.failed_nodes = {}
        self.restarts = snap.restarts
        return lines

    def check(self, snap: Snapshot, now: float, last_event=lambda: None) -> None:
        """Give up on a stall or a missing controller; `last_event()` is the object's newest Warning
        event, which tells a controller that runs but cannot create pods (a quota) from none at all."""
        if not snap.picked_up and now - self.start >= self.controller_timeout:
            if (event := last_event()) is not None:
                raise JobError(
                    f"{self.what}: no pods after {human_duration(now - self.start)}: {event}; fix that and "
                    "`invoke deploy` again picks it up"
                )
            raise JobError(
                f"{self.what}: no controller has picked it up after {human_duration(now - self.start)} "
                f"(no status, no pods); is {CONTROLLERS.get(self.kind, 'its controller')} running? "
                "(--controller-timeout waits longer)"
            )
        if snap.picked_up and not snap.all_running and now - self.changed_at >= self.stall_timeout:
            why = "; ".join(snap.pending) or snap.line
            raise JobError(
                f"{self.what}: no progress for {human_duration(now - self.changed_at)}: {why}; "
                "fix that and `invoke deploy` again picks it up (--stall-timeout waits longer)"
            )

    def next_deadline(self, now: float) -> float:
        """When `check` could next give up (the wait's watch returns by then)."""
        return min(self.start + self.controller_timeout, self.changed_at + self.stall_timeout)
