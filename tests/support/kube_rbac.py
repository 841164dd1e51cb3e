"""What the stand-in API server (tests/support/kube.py) makes of a request before any handler runs, as
the real one does: the request's attributes (its RequestInfo: verb, API group, resource, subresource,
namespace, name), and authorization against a rule table, answered with a 403 Forbidden Status in the
server's own words, and SelfSubjectAccessReviews answered from the same table.

The table (`Rbac.allow`, `Rbac.deny`) holds (verb, group, resource) triples, resource as
"plural" or "plural/subresource", "*" matching anything: a request is allowed when `allow` is None
(everything, the default) or matches it, and `deny` does not. Discovery and /version are open to every
authenticated user (system:discovery), and so is creating a SelfSubjectAccessReview (system:basic-user)
unless `deny` names it. A server-side apply that creates its object needs `create` besides `patch`, as
the real patch handler checks; that refusal carries the authorizer's reason, which RBAC leaves empty."""

from __future__ import annotations

from dataclasses import dataclass

ACCESS_REVIEW = ("authorization.k8s.io", "selfsubjectaccessreviews")


@dataclass(frozen=True)
class RequestInfo:
    """A request as the API server's RequestInfoFactory reads its URL."""

    verb: str
    group: str = ""
    version: str = ""
    resource: str = ""  # the plural; "" for a non-resource request (discovery, /version)
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    @property
    def is_resource(self) -> bool:
        return bool(self.resource)

    @property
    def qualified(self) -> str:
        """How Status messages name the resource: "jobs.batch", "secrets"."""
        return f"{self.resource}.{self.group}" if self.group else self.resource


_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


def request_info(method: str, path: str, query: dict) -> RequestInfo:
    parts = [p for p in path.strip("/").split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        rest = []
    if not rest:  # /version, /api, /apis, /apis/GROUP/VERSION: non-resource
        return RequestInfo(verb=method.lower())
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 2:
        namespace = rest[1]
        if len(rest) > 2:  # /namespaces/NS/PLURAL/...; else the namespace object itself
            rest = rest[2:]
    resource, name, sub = rest[0], rest[1] if len(rest) > 1 else "", rest[2] if len(rest) > 2 else ""
    if method in _VERBS:
        verb = _VERBS[method]
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    elif name:
        verb = "get"
    else:
        verb = "watch" if query.get("watch") in ("true", "1") else "list"
    return RequestInfo(verb, group, version, resource, sub, namespace, name)


def _matches(rules: set, verb: str, group: str, resource: str) -> bool:
    return any(v in ("*", verb) and g in ("*", group) and r in ("*", resource) for v, g, r in rules)


class Rbac:
    """Mixed into FakeKube: `allow`, `deny` and `user` (the name Status messages give the caller)."""

    allow: set[tuple[str, str, str]] | None
    deny: set[tuple[str, str, str]]
    user: str

    def init_rbac(self, user: str = "tester") -> None:
        self.allow = None
        self.deny = set()
        self.user = user

    def rbac_allowed(self, verb: str, group: str, resource: str, subresource: str = "") -> bool:
        full = f"{resource}/{subresource}" if subresource else resource
        if _matches(self.deny, verb, group, full):
            return False
        if (group, resource) == ACCESS_REVIEW and verb == "create":
            return True
        return self.allow is None or _matches(self.allow, verb, group, full)

    def rbac_forbidden(self, info: RequestInfo, verb: str | None = None, from_handler: bool = False):
        """The 403 the server sends: from the authorization filter (the reason names user, verb and
        resource), or from a handler's own check such as apply's create (RBAC gives no reason)."""
        verb = verb or info.verb
        resource = f"{info.resource}/{info.subresource}" if info.subresource else info.resource
        if from_handler:
            why = ""
        else:
            where = f'in the namespace "{info.namespace}"' if info.namespace else "at the cluster scope"
            why = (
                f'User "{self.user}" cannot {verb} resource "{resource}" in API group "{info.group}" {where}'
            )
        named = f' "{info.name}"' if info.name else ""
        return self.status(
            403,
            f"{info.qualified}{named} is forbidden: {why}",
            "Forbidden",
            {"name": info.name, "group": info.group, "kind": info.resource},
        )

    def rbac_review(self, review: dict):
        """POST selfsubjectaccessreviews: the same table's answer, as the server fills `status`."""
        spec = review.get("spec") or {}
        attrs = spec.get("resourceAttributes")
        if attrs is None:  # nonResourceAttributes: discovery and the like are open
            allowed = True
        else:
            allowed = self.rbac_allowed(
                attrs.get("verb", ""),
                attrs.get("group", ""),
                attrs.get("resource", ""),
                attrs.get("subresource", ""),
            )
        status = {"allowed": allowed}
        if allowed:
            status["reason"] = (
                f'RBAC: allowed by RoleBinding "deployer" of Role "deployer" to User "{self.user}"'
            )
        return (
            201,
            {
                "kind": "SelfSubjectAccessReview",
                "apiVersion": "authorization.k8s.io/v1",
                "metadata": {"creationTimestamp": None},
                "spec": spec,
                "status": status,
            },
            "application/json",
        )

    def rbac_authorize(self, info: RequestInfo, creates: bool):
        """None when the request may go on; else the 403. `creates`: an apply of an object that does not
        exist yet, which also needs `create`."""
        if not info.is_resource:
            return None
        if not self.rbac_allowed(info.verb, info.group, info.resource, info.subresource):
            return self.rbac_forbidden(info)
        if creates and not self.rbac_allowed("create", info.group, info.resource):
            return self.rbac_forbidden(info, "create", from_handler=True)
        return None
