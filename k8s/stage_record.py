"""The stage record: where the pipeline stands, kept in the ConfigMap `<instance>-stages` so it outlives
the Jobs (their TTL deletes them, and with them the pods whose logs or status said how they ended).

One key per stage (probe-weights, fetch-weights, fetch-data, preprocess, train), each a JSON object:
{"job": the object's name (its spec hash is part of it), "spec": the hash, "outcome": Complete|Failed,
"at": UTC time, "reason": why it failed, "log": its last log lines when they were readable,
"verdict": the probe's answer}. A re-deploy reads it before touching a stage: a Complete entry for the
same name is never run again, a Failed one is reported (and retried only when asked)."""

from __future__ import annotations

import datetime
import json

from k8s import render
from k8s.cluster import Cluster
from k8s.config import PipelineConfig

STEP = "stages"  # its app.kubernetes.io/component label


def record_name(cfg: PipelineConfig) -> str:
    return f"{cfg.instance}-stages"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class StageRecord:
    """The record as read once from the cluster; `put` and `drop` write it back (server-side apply)."""

    def __init__(self, cluster: Cluster, cfg: PipelineConfig) -> None:
        self.cluster = cluster
        self.cfg = cfg
        live = cluster.get("ConfigMap", record_name(cfg)) or {}
        self.entries: dict[str, dict] = {}
        for stage, text in (live.get("data") or {}).items():
            try:
                entry = json.loads(text)
            except ValueError:  # an entry someone edited into nonsense counts as never recorded
                continue
            if isinstance(entry, dict):
                self.entries[stage] = entry

    def get(self, stage: str, name: str | None = None) -> dict | None:
        """The stage's entry; with `name`, only when it is about that very object (same spec)."""
        entry = self.entries.get(stage)
        if entry is None or (name is not None and entry.get("job") != name):
            return None
        return entry

    def complete(self, stage: str, name: str) -> dict | None:
        entry = self.get(stage, name)
        return entry if entry and entry.get("outcome") == "Complete" else None

    def put(self, stage: str, name: str, outcome: str, **extra) -> dict:
        entry = {"job": name, "spec": name.rsplit("-", 1)[-1], "outcome": outcome, "at": now()}
        entry.update({k: v for k, v in extra.items() if v is not None})
        self.entries[stage] = entry
        self._save()
        return entry

    def drop(self, stages) -> list[str]:
        gone = [s for s in stages if self.entries.pop(s, None) is not None]
        if gone:
            self._save()
        return gone

    def _save(self) -> None:
        data = {stage: json.dumps(entry, sort_keys=True) for stage, entry in sorted(self.entries.items())}
        self.cluster.apply(render.config_map(self.cfg, record_name(self.cfg), data, STEP), force=True)
