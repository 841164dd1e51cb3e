"""The stand-in API server's front (tests/support/kube.py), what the real server does before a
namespaced handler runs: authorization (tests/support/kube_rbac.py), SelfSubjectAccessReviews, API
discovery, namespaces, and the cluster-scoped kinds preflight reads.

- Namespaces: `namespaces` is the set that exists (default: the tests' namespace and the system ones);
  GET /api/v1/namespaces/NAME answers the Namespace or 404 `namespaces "NAME" not found`. A request in a
  namespace that does not exist is answered as the real server answers it: a write with that same 404
  (the NamespaceLifecycle admission plugin), a read of one object with the object's 404, a list with no
  items.
- Cluster-scoped kinds, GET and list: StorageClasses (storage.k8s.io/v1), PersistentVolumes and
  ClusterTrainingRuntimes (trainer.kubeflow.org/v1alpha1), held in `cluster_objects[(kind, name)]`;
  by default the classes `shared-hdd-ord1` (CephFS, ReadWriteMany) and `block-nvme-ord1` (Ceph RBD, the
  default class) and Trainer's `torch-distributed` (torch policy) and `deepspeed-distributed` (MPI).
- CRDs: `crds` holds the kinds of the custom resources installed (TrainJob, TrainingRuntime,
  ClusterTrainingRuntime, JobSet); `remove_crds(group)` uninstalls a group. A kind not installed is
  not served: its routes and its group's discovery (GET /apis/GROUP/VERSION) answer 404, as when no
  CRD defines it.
- Discovery: GET /api/v1 and /apis/GROUP/VERSION list the resources served there (APIResourceList)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

from tests.support.kube_rbac import ACCESS_REVIEW, Rbac, request_info

TEST_NAMESPACE = "tenant-finetune"
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
# (group, version, plural) -> kind: the cluster-scoped kinds the stand-in serves besides namespaces.
CLUSTER_ROUTES = {
    ("storage.k8s.io", "v1", "storageclasses"): "StorageClass",
    ("", "v1", "persistentvolumes"): "PersistentVolume",
    ("trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes"): "ClusterTrainingRuntime",
}
CLUSTER_SCOPED = {**CLUSTER_ROUTES, ("", "v1", "namespaces"): "Namespace"}  # every cluster-scoped route
CLUSTER_CRDS = {"ClusterTrainingRuntime"}  # the cluster-scoped kinds that come from a CRD
DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def storage_class(name: str, provisioner: str, default: bool = False) -> dict:
    meta = {"name": name, "resourceVersion": "1"}
    if default:
        meta["annotations"] = {DEFAULT_CLASS: "true"}
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": meta,
        "provisioner": provisioner,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }


def cluster_training_runtime(name: str, policy: dict) -> dict:
    """A ClusterTrainingRuntime as Trainer ships them: `policy` is the mlPolicy besides numNodes."""
    framework = next(iter(policy), "torch")
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "ClusterTrainingRuntime",
        "metadata": {
            "name": name,
            "resourceVersion": "1",
            "labels": {"trainer.kubeflow.org/framework": framework},
        },
        "spec": {
            "mlPolicy": {"numNodes": 1, **policy},
            "template": {"spec": {"replicatedJobs": [{"name": "node", "template": {"spec": {}}}]}},
        },
    }


class ClusterScope(Rbac):
    """Mixed into FakeKube (which supplies `routes`, `objects`, `lock` and `status`)."""

    def init_cluster_scope(self, crd_kinds: set[str]) -> None:
        self.init_rbac()
        self.namespaces: set[str] = {TEST_NAMESPACE, *SYSTEM_NAMESPACES}
        self.crds: set[str] = set(crd_kinds) | CLUSTER_CRDS
        self.crd_kinds = frozenset(self.crds)  # every kind a CRD would define, installed or not
        self.cluster_objects: dict[tuple[str, str], dict] = {}
        for obj in (
            storage_class("shared-hdd-ord1", "rook-ceph.cephfs.csi.ceph.com"),
            storage_class("block-nvme-ord1", "rook-ceph.rbd.csi.ceph.com", default=True),
            cluster_training_runtime("torch-distributed", {"torch": {"numProcPerNode": "auto"}}),
            cluster_training_runtime("deepspeed-distributed", {"mpi": {"numProcPerNode": 1}}),
        ):
            self.put_cluster_object(obj)

    # -- helpers tests use
    def put_cluster_object(self, obj: dict) -> None:
        self.cluster_objects[(obj["kind"], obj["metadata"]["name"])] = obj

    def remove_cluster_object(self, kind: str, name: str) -> None:
        self.cluster_objects.pop((kind, name), None)

    def remove_crds(self, group: str) -> None:
        """Uninstall the CRDs of `group` (e.g. "trainer.kubeflow.org")."""
        self.crds -= {kind for (g, _, _), kind in self._scope_routes().items() if g == group}

    # -- the front
    def _scope_routes(self) -> dict[tuple[str, str, str], str]:
        return {**self.routes, **CLUSTER_SCOPED}

    def _scope_served(self, kind: str) -> bool:
        return kind not in self.crd_kinds or kind in self.crds

    def front(self, method: str, url, body: bytes):
        """The answer of what runs before the namespaced handlers, or None to go on to them."""
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        info = request_info(method, url.path, query)
        routes = self._scope_routes()
        kind = routes.get((info.group, info.version, info.resource))
        creates = (
            method == "PATCH"
            and kind is not None
            and not info.subresource
            and (kind, info.name) not in self.objects
        )
        if (denied := self.rbac_authorize(info, creates)) is not None:
            return denied
        if not info.is_resource:
            return self._scope_discovery(url.path)
        if (info.group, info.resource) == ACCESS_REVIEW and method == "POST":
            return self.rbac_review(json.loads(body or b"{}"))
        if kind is None or not self._scope_served(kind):
            return self.status(404, f"the server could not find the requested resource ({url.path})")
        if kind == "Namespace":
            return self._scope_namespace(info)
        if (info.group, info.version, info.resource) in CLUSTER_ROUTES:
            return self._scope_get(kind, info, method)
        if info.namespace and info.namespace not in self.namespaces:
            return self._scope_missing_namespace(info, method, query)
        return None

    def _scope_missing(self, info, name: str):
        return self.status(
            404,
            f'{info.qualified} "{name}" not found',
            "NotFound",
            {"name": name, "group": info.group, "kind": info.resource},
        )

    @staticmethod
    def _scope_list(kind: str, api_version: str, items: list[dict]):
        return (
            200,
            {"kind": f"{kind}List", "apiVersion": api_version, "metadata": {}, "items": items},
            "application/json",
        )

    def _scope_namespace(self, info):
        if not info.name:
            items = [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}
                for n in sorted(self.namespaces)
            ]
            return self._scope_list("Namespace", "v1", items)
        if info.name not in self.namespaces:
            return self._scope_missing(info, info.name)
        ns = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": info.name, "labels": {"kubernetes.io/metadata.name": info.name}},
            "status": {"phase": "Active"},
        }
        return 200, ns, "application/json"

    def _scope_get(self, kind: str, info, method: str):
        if method != "GET":
            return self.status(405, f"method {method} not allowed")
        api_version = f"{info.group}/{info.version}" if info.group else info.version
        if not info.name:
            items = [o for (k, _), o in sorted(self.cluster_objects.items()) if k == kind]
            return self._scope_list(kind, api_version, items)
        obj = self.cluster_objects.get((kind, info.name))
        return (200, obj, "application/json") if obj is not None else self._scope_missing(info, info.name)

    def _scope_missing_namespace(self, info, method: str, query: dict):
        if method in ("POST", "PUT", "PATCH"):  # NamespaceLifecycle refuses writes
            return self.status(
                404,
                f'namespaces "{info.namespace}" not found',
                "NotFound",
                {"name": info.namespace, "kind": "namespaces"},
            )
        if info.name:
            return self._scope_missing(info, info.name)
        if query.get("watch") in ("true", "1"):
            return None  # a watch of nothing: the handler's own watch finds no objects of its own
        kind = self.routes[(info.group, info.version, info.resource)]
        return self._scope_list(kind, f"{info.group}/{info.version}" if info.group else info.version, [])

    def _scope_discovery(self, path: str):
        parts = [p for p in path.strip("/").split("/") if p]
        if parts[:1] == ["api"] and len(parts) == 2:
            group, version = "", parts[1]
        elif parts[:1] == ["apis"] and len(parts) == 3:
            group, version = parts[1], parts[2]
        else:
            return None  # /version and the rest: the handlers'
        resources = [
            {
                "name": plural,
                "singularName": kind.lower(),
                "namespaced": (g, v, plural) not in CLUSTER_SCOPED,
                "kind": kind,
                "verbs": _VERBS,
            }
            for (g, v, plural), kind in sorted(self._scope_routes().items())
            if (g, v) == (group, version) and self._scope_served(kind)
        ]
        if group == ACCESS_REVIEW[0] and version == "v1":
            resources.append(
                {
                    "name": ACCESS_REVIEW[1],
                    "singularName": "selfsubjectaccessreview",
                    "namespaced": False,
                    "kind": "SelfSubjectAccessReview",
                    "verbs": ["create"],
                }
            )
        if not resources:
            return self.status(404, "the server could not find the requested resource")
        return (
            200,
            {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version,
                "resources": resources,
            },
            "application/json",
        )
