"""Checks run before anything is applied: what would stop the run from ever starting. Every failure is
one line naming the config key to change (or the command to run); all are printed, then one error.

- the cluster answers, and the namespace exists (`namespace`; a tenant that may not read namespaces
  gets a warning: the first write would tell);
- the engine's CRDs are served (API discovery): Kubeflow Trainer v2 and JobSet for `trainjob`, JobSet
  for `jobset`; for `trainjob` the runtime `train.runtime` exists and has the torch policy, unless
  `train.own_runtime` renders ours;
- the volume's StorageClass exists (`volume.storage_class`, or a default class when none is named) and
  gives `volume.access_mode`, judged from its provisioner (a warning where the provisioner is unknown);
  a bound claim of ours is already provisioned, so only its class and access modes are compared;
- every verb on every kind deploy touches is allowed: one SelfSubjectAccessReview per (verb, kind), sent
  concurrently, from the table below and the plan's objects;
- the checkpoint bucket exists and can be written with the keys the pods will use (Secret
  `checkpoints.secret`), or, when that cannot be read, with the local credentials, saying which;
- every pinned image exists in its registry at its digest; the Determined master answers."""

from __future__ import annotations

import base64
import os
import re
import sys
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TextIO

import botocore.exceptions
import requests

from jobs import remote
from jobs.cli import JobError
from k8s.cluster import KINDS, TERMINAL, ApiError, Cluster, missing_namespace_line
from k8s.config import PipelineConfig, Volume
from k8s.determined_api import Master
from k8s.plan import Plan, build_plan

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


LOCAL_CREDENTIALS = "the local AWS credentials"  # boto3's chain: the environment, ~/.aws, a role


def check_bucket(
    bucket: str,
    endpoint_url: str | None,
    prefix: str = "",
    create: bool = False,
    keys: dict[str, str] | None = None,
    creds: str = LOCAL_CREDENTIALS,
) -> str:
    """The bucket exists (or is created) and a probe object can be written and removed with `keys`
    (boto3's arguments; None: the local credential chain); `creds` names them in every line."""
    # a check answers quickly or says why: few retries, short timeouts
    s3 = remote.s3_client(
        endpoint_url, keys=keys, retries={"max_attempts": 2}, connect_timeout=10, read_timeout=30
    )
    try:
        s3.head_bucket(Bucket=bucket)
        note = "exists"
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise JobError(f"bucket {bucket}: not accessible with {creds} ({code})") from exc
        if not create:
            raise JobError(
                f"bucket {bucket}: does not exist at {endpoint_url or 'AWS'} (pass --create-bucket)"
            ) from exc
        try:
            s3.create_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError as exc2:
            raise JobError(
                f"bucket {bucket}: could not create it with {creds} ({exc2.response['Error'].get('Code')})"
            ) from exc2
        note = "created"
    except botocore.exceptions.NoCredentialsError as exc:  # only the local chain can have none
        raise JobError(
            f"bucket {bucket}: no credentials to check it with ({creds}: none are set); set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run `invoke secrets` so the pods' are read"
        ) from exc
    except botocore.exceptions.EndpointConnectionError as exc:
        raise JobError(f"bucket {bucket}: {type(exc).__name__} at {endpoint_url or 'AWS'}") from exc
    key = f"{prefix.strip('/') + '/' if prefix.strip('/') else ''}.neox-pipeline-preflight-{uuid.uuid4().hex[:8]}"
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=b"preflight\n")
        s3.delete_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise JobError(f"bucket {bucket}: {creds} cannot write to it ({code})") from exc
    return note


_REF = re.compile(r"^(?P<host>[^/]+)/(?P<repo>[^@]+)@(?P<digest>sha256:[0-9a-f]{64})$")


def registry_scheme(host: str) -> str:
    insecure = {h.strip() for h in os.environ.get("NEOX_INSECURE_REGISTRIES", "").split(",") if h.strip()}
    return "http" if host.split(":")[0] in ("127.0.0.1", "localhost") or host in insecure else "https"


def check_image(ref: str, timeout: float = 15.0) -> None:
    """HEAD the manifest by digest (Docker Registry HTTP API v2), following a Bearer token challenge."""
    m = _REF.match(ref)
    if not m:
        raise JobError(f"image {ref}: expected REGISTRY/REPOSITORY@sha256:DIGEST")
    host, repo, digest = m["host"], m["repo"], m["digest"]
    url = f"{registry_scheme(host)}://{host}/v2/{repo}/manifests/{digest}"
    headers = {"Accept": MANIFEST_TYPES}
    auth = None
    if os.environ.get("REGISTRY_USERNAME"):
        auth = (os.environ["REGISTRY_USERNAME"], os.environ.get("REGISTRY_PASSWORD", ""))
    try:
        resp = requests.head(url, headers=headers, timeout=timeout, auth=auth)
        challenge = resp.headers.get("WWW-Authenticate", "")
        if resp.status_code == 401 and challenge.lower().startswith("bearer"):
            params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
            realm = params.pop("realm", "")
            params.setdefault("scope", f"repository:{repo}:pull")
            tok = requests.get(realm, params=params, auth=auth, timeout=timeout)
            if tok.status_code == 200:
                body = tok.json()
                headers["Authorization"] = f"Bearer {body.get('token') or body.get('access_token')}"
                resp = requests.head(url, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise JobError(f"image {ref}: registry {host} unreachable ({type(exc).__name__})") from exc
    if resp.status_code == 404:
        raise JobError(f"image {ref}: not in registry {host} at that digest (run `invoke push`)")
    if resp.status_code in (401, 403):
        raise JobError(
            f"image {ref}: registry {host} refused access ({resp.status_code}); set REGISTRY_USERNAME/"
            "REGISTRY_PASSWORD"
        )
    if resp.status_code != 200:
        raise JobError(f"image {ref}: registry {host} answered {resp.status_code}")
    served = resp.headers.get("Docker-Content-Digest")
    if served and served != digest:
        raise JobError(f"image {ref}: registry served digest {served}")


class Report:
    """Preflight's lines as they come (ok, warn, FAIL), and the failures for the one error at the end."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.failures: list[str] = []

    def ok(self, label: str, note: str | None = None) -> None:
        print(f"preflight: ok    {label}{f' ({note})' if note else ''}", file=self.out)

    def warn(self, line: str) -> None:
        print(f"preflight: warn  {line}", file=self.out)

    def fail(self, line: str) -> None:
        self.failures.append(line)
        print(f"preflight: FAIL  {line}", file=self.out)

    def run(self, check: Callable, *args):
        """Run a check that prints its own lines; an answer it did not expect (a 500, a timeout) is
        one more failure, so the other checks still run."""
        try:
            return check(*args)
        except JobError as exc:
            self.fail(str(exc))
            return None

    def attempt(self, label: str, fn: Callable[[], str | None]) -> bool:
        """Run one check that returns a note or raises JobError; whether it passed."""
        try:
            note = fn()
        except JobError as exc:
            self.fail(str(exc))
            return False
        self.ok(label, note)
        return True


def _forbidden(exc: Exception) -> bool:
    return isinstance(exc, ApiError) and exc.status == 403


# -- the namespace


def check_namespace(cluster: Cluster, cfg: PipelineConfig, report: Report) -> bool | None:
    """Whether the namespace exists; None when we may not read namespaces (then a warning, no failure)."""
    exists = cluster.namespace_exists()
    if exists:
        report.ok(f"namespace {cfg.namespace}")
    elif exists is None:
        report.warn(
            f"namespace {cfg.namespace}: could not be checked (not allowed to get namespaces, as in many "
            "tenants); a missing one is named at the first write"
        )
    else:
        report.fail(missing_namespace_line(cfg.namespace, str(cfg.path)))
    return exists


# -- the engine's CRDs and the runtime

# What to install when a group is not served.
INSTALL = {
    "trainer.kubeflow.org": "install Kubeflow Trainer v2 (its CRDs and controller) or set train.engine to jobset",
    "jobset.x-k8s.io": "install JobSet (kubernetes-sigs/jobset: its CRDs and controller) or set train.engine",
}


def engine_kinds(cfg: PipelineConfig) -> list[str]:
    """The custom resources the engine needs served: its own kind, the runtime's, and JobSet (Trainer
    runs each TrainJob as a JobSet)."""
    t = cfg.train
    if t.engine == "trainjob":
        return ["TrainJob", "TrainingRuntime" if t.own_runtime else t.runtime_kind, "JobSet"]
    if t.engine == "jobset":
        return ["JobSet"]
    return []


def check_crds(cluster: Cluster, cfg: PipelineConfig, report: Report) -> bool:
    """API discovery of each group the engine needs; one line per group that lacks a kind."""
    by_group: dict[str, list[str]] = {}
    for kind in engine_kinds(cfg):
        by_group.setdefault(KINDS[kind].group, []).append(kind)
    served = True
    for group, kinds in by_group.items():
        missing = [k for k in kinds if not cluster.served(k)]
        version = KINDS[kinds[0]].version
        if missing:
            served = False
            why = (
                " (Kubeflow Trainer runs each TrainJob as a JobSet)"
                if group == "jobset.x-k8s.io" and cfg.train.engine == "trainjob"
                else ""
            )
            report.fail(
                f"{', '.join(missing)} ({group}/{version}): not served by this cluster (no CRD){why}; "
                f"{INSTALL[group]}"
            )
        else:
            report.ok(f"CRDs {group}/{version}", ", ".join(kinds))
    return served


def _names(cluster: Cluster, kind: str) -> str:
    """The names of what exists of `kind`, for a hint; "" when they cannot be listed."""
    try:
        return ", ".join(sorted(o["metadata"]["name"] for o in cluster.list(kind)))
    except JobError:
        return ""


def check_runtime(cluster: Cluster, cfg: PipelineConfig, report: Report) -> None:
    """The runtime the TrainJob names exists and launches with torchrun (the torch policy)."""
    kind, name = cfg.train.runtime_kind, cfg.train.runtime
    what = f"{kind}/{name}"
    fix = "set train.runtime to one with the torch policy (Trainer ships torch-distributed), or train.own_runtime: true"
    try:
        runtime = cluster.get(kind, name)
    except ApiError as exc:
        if not _forbidden(exc):
            raise
        report.warn(f"{what}: could not be checked (not allowed to get {KINDS[kind].plural})")
        return
    if runtime is None:
        where = "the cluster" if kind == "ClusterTrainingRuntime" else f"namespace {cfg.namespace}"
        names = _names(cluster, kind)
        report.fail(f"{what}: not in {where}{f' (runtimes: {names})' if names else ''}; {fix}")
        return
    policy = (runtime.get("spec") or {}).get("mlPolicy") or {}
    if "torch" not in policy:
        others = ", ".join(k for k in policy if k != "numNodes") or "none"
        report.fail(
            f"{what}: has no torch policy (spec.mlPolicy: {others}); the trainer starts with torchrun: {fix}"
        )
        return
    report.ok(what, "torch policy")


# -- the volume's StorageClass

DEFAULT_CLASS = (
    "storageclass.kubernetes.io/is-default-class",
    "storageclass.beta.kubernetes.io/is-default-class",
)
NO_PROVISIONER = "kubernetes.io/no-provisioner"
SHARED_MODES = ("ReadWriteMany", "ReadOnlyMany")  # modes only a shared filesystem gives
# Provisioners whose (filesystem) volumes one node mounts at a time: never ReadWriteMany. A name also
# matches with an operator's prefix (rook-ceph.rbd.csi.ceph.com).
SINGLE_NODE = {
    "ebs.csi.aws.com": "AWS EBS",
    "kubernetes.io/aws-ebs": "AWS EBS",
    "pd.csi.storage.gke.io": "GCE persistent disk",
    "kubernetes.io/gce-pd": "GCE persistent disk",
    "disk.csi.azure.com": "Azure disk",
    "kubernetes.io/azure-disk": "Azure disk",
    "cinder.csi.openstack.org": "OpenStack Cinder",
    "kubernetes.io/cinder": "OpenStack Cinder",
    "rbd.csi.ceph.com": "Ceph RBD",
    "kubernetes.io/rbd": "Ceph RBD",
    "dobs.csi.digitalocean.com": "DigitalOcean block storage",
    "linodebs.csi.linode.com": "Linode block storage",
    "rancher.io/local-path": "local path",
    "openebs.io/local": "OpenEBS local",
    "topolvm.io": "TopoLVM",
}
# Provisioners of shared filesystems: ReadWriteMany.
SHARED = {
    "efs.csi.aws.com",
    "fsx.csi.aws.com",
    "filestore.csi.storage.gke.io",
    "file.csi.azure.com",
    "kubernetes.io/azure-file",
    "nfs.csi.k8s.io",
    "k8s-sigs.io/nfs-subdir-external-provisioner",
    "cephfs.csi.ceph.com",
    "kubernetes.io/cephfs",
    "driver.longhorn.io",
}


def _known(provisioner: str, table) -> str | None:
    for name in table:
        if provisioner == name or provisioner.endswith("." + name):
            return name
    return None


def _is_default(sc: dict) -> bool:
    annotations = (sc.get("metadata") or {}).get("annotations") or {}
    return any(annotations.get(a) == "true" for a in DEFAULT_CLASS)


def _class_list(classes: list[dict]) -> str:
    return ", ".join(
        sc["metadata"]["name"] + (" (default)" if _is_default(sc) else "")
        for sc in sorted(classes, key=lambda c: c["metadata"]["name"])
    )


def _classes(cluster: Cluster) -> list[dict] | None:
    """The cluster's StorageClasses; None when we may not list them."""
    try:
        return cluster.list("StorageClass")
    except ApiError as exc:
        if not _forbidden(exc):
            raise
        return None


def check_storage(cluster: Cluster, volume: Volume, report: Report) -> None:
    """The claim deploy applies can be provisioned with its access mode. `volume.storage_class` empty
    means the cluster's default class, as a claim without storageClassName gets."""
    try:
        pvc = cluster.get("PersistentVolumeClaim", volume.name)
    except ApiError as exc:
        if not _forbidden(exc):
            raise
        pvc = None  # the access review names the missing permission
    if pvc is not None and (pvc.get("status") or {}).get("phase") == "Bound":
        _check_bound_claim(pvc, volume, report)  # provisioned already: its class matters no more
        return
    found = _storage_class(cluster, volume, report)
    if found is not None:
        _check_access_mode(cluster, *found, volume, report)


def _check_bound_claim(pvc: dict, volume: Volume, report: Report) -> None:
    """A claim's class and access modes cannot change: the config must say what it has."""
    claim, spec = f"PersistentVolumeClaim/{volume.name}", pvc.get("spec") or {}
    live, modes = spec.get("storageClassName"), spec.get("accessModes") or []
    if volume.storage_class and live != volume.storage_class:
        report.fail(
            f"{claim}: exists with storage class {live!r}, volume.storage_class says "
            f"{volume.storage_class!r}; a claim's class cannot change: set volume.storage_class: {live} "
            "(or `invoke teardown --volume` deletes the claim and its data)"
        )
    elif volume.access_mode not in modes:
        report.fail(
            f"{claim}: exists with access modes {', '.join(modes)}, volume.access_mode says "
            f"{volume.access_mode}; set volume.access_mode to one of them"
        )
    else:
        report.ok(f"volume {volume.name}", f"{claim} bound, storage class {live}")


def _storage_class(cluster: Cluster, volume: Volume, report: Report) -> tuple[dict, str] | None:
    """The class the claim would get, and how lines name it; None when it is missing (a failure) or
    cannot be read (a warning)."""
    wanted = volume.storage_class
    if wanted:
        label = f"StorageClass/{wanted}"
        try:
            sc = cluster.get("StorageClass", wanted)
        except ApiError as exc:
            if not _forbidden(exc):
                raise
            report.warn(f"{label}: could not be checked (not allowed to get storageclasses)")
            return None
        if sc is None:
            classes = _classes(cluster)
            known = f" (classes: {_class_list(classes)})" if classes else ""
            report.fail(
                f"{label}: not in the cluster{known}; set volume.storage_class to one that gives "
                f"{volume.access_mode}"
            )
            return None
        return sc, label
    classes = _classes(cluster)
    if classes is None:
        report.warn("default StorageClass: could not be checked (not allowed to list storageclasses)")
        return None
    defaults = sorted(
        (c for c in classes if _is_default(c)), key=lambda c: c["metadata"].get("creationTimestamp", "")
    )
    if not defaults:
        known = f" (classes: {_class_list(classes)})" if classes else ""
        report.fail(f"no default StorageClass in the cluster{known}; set volume.storage_class")
        return None
    sc = defaults[-1]  # the newest default wins, as the admission plugin picks it
    return sc, f"default StorageClass {sc['metadata']['name']}"


def _check_access_mode(cluster: Cluster, sc: dict, label: str, volume: Volume, report: Report) -> None:
    """Whether the class gives the access mode, judged from its provisioner."""
    mode, provisioner = volume.access_mode, sc.get("provisioner", "")
    if mode not in SHARED_MODES:
        report.ok(label, f"{provisioner}, {mode}")
    elif provisioner == NO_PROVISIONER:
        _check_static_volumes(cluster, sc["metadata"]["name"], label, mode, report)
    elif (name := _known(provisioner, SINGLE_NODE)) is not None:
        report.fail(
            f"{label}: provisioner {provisioner} ({SINGLE_NODE[name]}) gives volumes one node mounts at a "
            f"time, not {mode} (volume.access_mode); set volume.storage_class to a shared-filesystem class "
            "(NFS, CephFS, EFS, Filestore, Azure Files)"
        )
    elif _known(provisioner, SHARED) is not None:
        report.ok(label, f"{provisioner}, {mode}")
    else:
        report.warn(
            f"{label}: provisioner {provisioner}: not known whether it gives {mode} volumes; if "
            f"PersistentVolumeClaim/{volume.name} stays Pending, set volume.storage_class to a "
            "shared-filesystem class"
        )


def _check_static_volumes(cluster: Cluster, name: str, label: str, mode: str, report: Report) -> None:
    """A class without a provisioner binds only to PersistentVolumes an admin made beforehand."""
    try:
        volumes = cluster.list("PersistentVolume")
    except ApiError as exc:
        if not _forbidden(exc):
            raise
        report.warn(
            f"{label}: provisions nothing ({NO_PROVISIONER}); the claim binds only to a pre-made "
            f"PersistentVolume with {mode}, which could not be listed (not allowed to list persistentvolumes)"
        )
        return
    free = [
        v["metadata"]["name"]
        for v in volumes
        if (v.get("spec") or {}).get("storageClassName") == name
        and (v.get("status") or {}).get("phase") == "Available"
        and mode in ((v.get("spec") or {}).get("accessModes") or [])
    ]
    if free:
        report.ok(label, f"pre-made PersistentVolume {free[0]}, {mode}")
    else:
        report.fail(
            f"{label}: provisions nothing ({NO_PROVISIONER}) and no Available PersistentVolume of it gives "
            f"{mode}; ask an admin for one, or set volume.storage_class to a class that provisions"
        )


# -- permissions

APPLY = ("get", "create", "patch")  # Cluster.apply reads the object, then applies it (a create needs both)
FOLLOW = ("list", "watch")  # Cluster.wait lists the object, then watches it
# What deploy does besides applying and following the plan's objects: (verb, kind, subresource, why,
# required: a missing optional one is a warning).
READS = (
    ("get", "Secret", "", "to check checkpoints.secret", True),
    ("list", "Pod", "", "to find a stage's pods", True),
    # deploy reads the probe's verdict from its termination message; logs only enrich a failure's report
    ("get", "Pod", "log", "to show a failed stage's log", False),
    ("delete", "Job", "", "for --retry-failed and teardown", False),
)


def deploy_access(plan: Plan) -> list[tuple[str, str, str, str, bool]]:
    """Every (verb, kind, subresource, why, required) deploy needs, in the order deploy needs them."""
    needs: dict[tuple[str, str, str], tuple[str, bool]] = {}
    for obj in plan.objects:
        kind, what = obj["kind"], f"{obj['kind']}/{obj['metadata']['name']}"
        for verb in APPLY + (FOLLOW if kind in TERMINAL else ()):
            needs.setdefault((verb, kind, ""), (f"to {'follow' if verb in FOLLOW else 'apply'} {what}", True))
    for verb, kind, sub, why, required in READS:
        needs.setdefault((verb, kind, sub), (why, required))
    return [(verb, kind, sub, why, required) for (verb, kind, sub), (why, required) in needs.items()]


def _resource(kind: str, sub: str) -> str:
    k = KINDS[kind]
    return f"{k.plural}{f'/{sub}' if sub else ''}{f'.{k.group}' if k.group else ''}"


def check_access(cluster: Cluster, plan: Plan, report: Report, workers: int = 8) -> None:
    """One SelfSubjectAccessReview per need, concurrently; one line per verb not allowed."""
    needs = deploy_access(plan)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(cluster.access_review, verb, kind, sub) for verb, kind, sub, _, _ in needs]
        try:
            answers = [f.result() for f in futures]
        except JobError as exc:
            report.warn(f"permissions: could not be checked ({exc})")
            return
    denied = 0
    for (verb, kind, sub, why, required), (allowed, _) in zip(needs, answers, strict=True):
        if allowed:
            continue
        line = f"not allowed to {verb} {_resource(kind, sub)} in namespace {cluster.namespace} ({why})"
        if required:
            denied += 1
            report.fail(
                f"{line}; ask the cluster admin for a Role that grants it, or set `namespace` to one where you may"
            )
        else:
            report.warn(line)
    if not denied:
        kinds = len({kind for _, kind, _, _, _ in needs})
        report.ok(f"permissions in namespace {cluster.namespace}", f"{len(needs)} verbs on {kinds} kinds")


# -- the bucket, with the pods' keys


def bucket_keys(
    cluster: Cluster | None, cfg: PipelineConfig, report: Report
) -> tuple[dict[str, str] | None, str]:
    """The keys the pods will use (Secret `checkpoints.secret`) as boto3's arguments, and what to call
    them in the lines; (None, the local ones) when the Secret cannot be read, with a line saying why.
    No key is printed. `cluster` None: not reachable, or no namespace to read from."""
    name = cfg.checkpoints.secret
    local = f"{LOCAL_CREDENTIALS}, not the pods' Secret/{name}"
    if cluster is None:
        return None, local
    try:
        secret = cluster.get("Secret", name)
    except ApiError as exc:
        report.warn(
            f"Secret/{name}: could not be read ({exc}); the bucket is checked with {LOCAL_CREDENTIALS}"
        )
        return None, local
    if secret is None:
        report.fail(
            f"Secret/{name}: not in namespace {cfg.namespace} (checkpoints.secret); run `invoke secrets` first"
        )
        return None, local
    data = secret.get("data") or {}
    try:
        keys = {
            "aws_access_key_id": base64.b64decode(data["AWS_ACCESS_KEY_ID"]).decode(),
            "aws_secret_access_key": base64.b64decode(data["AWS_SECRET_ACCESS_KEY"]).decode(),
        }
        if data.get("AWS_SESSION_TOKEN"):
            keys["aws_session_token"] = base64.b64decode(data["AWS_SESSION_TOKEN"]).decode()
    except (KeyError, ValueError):
        report.fail(
            f"Secret/{name}: lacks AWS_ACCESS_KEY_ID or AWS_SECRET_ACCESS_KEY, which the pods read "
            "(checkpoints.secret); run `invoke secrets` again"
        )
        return None, local
    return keys, f"the keys of Secret/{name}, as the pods will use them"


# -- all of it


def run_preflight(
    cfg: PipelineConfig,
    images: dict[str, str],
    cluster: Cluster | None,
    master: Master | None,
    create_bucket: bool = False,
    out: TextIO | None = None,
    bucket_check: Callable[..., str] = check_bucket,
    plan: Plan | None = None,
) -> None:
    """Run every check, print each failure as one line, then fail once if any did. `plan` (what deploy
    will apply; built here when not given) decides which permissions are reviewed."""
    report = Report(out or sys.stderr)
    usable = cluster is not None and report.attempt(
        f"cluster {cluster.creds.server}", lambda: f"Kubernetes {cluster.version()}"
    )
    # Unreachable, or a namespace that does not exist: one line says so; nothing more can be told.
    usable = usable and report.run(check_namespace, cluster, cfg, report) is not False
    if usable:
        served = report.run(check_crds, cluster, cfg, report)
        if served and cfg.train.engine == "trainjob" and not cfg.train.own_runtime:
            report.run(check_runtime, cluster, cfg, report)
        report.run(check_storage, cluster, cfg.volume, report)
        report.run(check_access, cluster, plan if plan is not None else build_plan(cfg, images), report)
    ck = cfg.checkpoints
    found = report.run(bucket_keys, cluster if usable else None, cfg, report)
    keys, creds = found or (None, LOCAL_CREDENTIALS)
    report.attempt(
        f"bucket {ck.bucket}",
        lambda: (
            f"{bucket_check(ck.bucket, ck.endpoint_url, ck.prefix, create_bucket, keys=keys, creds=creds)}, "
            f"checked with {creds}"
        ),
    )
    for name, ref in images.items():
        report.attempt(f"image {name}", lambda ref=ref: check_image(ref))
    if master is not None:
        report.attempt(
            f"Determined master {master.url}", lambda: f"version {master.info().get('version', '?')}"
        )
    if report.failures:
        raise JobError(
            f"preflight: {len(report.failures)} check(s) failed, nothing applied; first: {report.failures[0]}"
        )
