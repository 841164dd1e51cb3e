"""Validation before anything is applied: every Kubernetes object against the OpenAPI schema of the
cluster's Kubernetes version, or the newest kubernetes-validate ships when the cluster's is newer or
not known (a dry run asks no cluster) (strict: unknown fields are errors; the schemas ship inside the
package, so this works offline); TrainJob and JobSet objects against the `openAPIV3Schema` of the
CRD they target (Kubeflow Trainer v2.3.0, JobSet v0.12.0, vendored in k8s/crds/ without their
descriptions, held strict the same way); and the experiment config against Determined's own JSON
schemas with their custom keywords implemented as jsonschema validators (FORMATS.md section 5).
CEL rules (`x-kubernetes-validations`) are the API server's to run; the one every object meets
(an RFC 1035 name of at most 63 characters) is checked here."""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import referencing

from jobs.cli import JobError


def shipped_versions() -> list[str]:
    """The Kubernetes minor versions whose schemas kubernetes-validate ships, oldest first."""
    seen = {".".join(v.split(".")[:2]) for v in kubernetes_validate.utils.all_versions()}
    return sorted(seen, key=lambda v: tuple(int(p) for p in v.split(".")))


def schema_version(cluster_version: str | None) -> tuple[str, str]:
    """(the schema version to validate against, why): the cluster's minor version when shipped, else
    the newest shipped (the cluster is newer, or not known) or the oldest (the cluster is older)."""
    shipped = shipped_versions()
    newest = shipped[-1]
    m = re.match(r"^v?(\d+)\.(\d+)", cluster_version or "")
    if m is None:
        return newest, f"Kubernetes {newest} schema, the newest shipped (cluster version not known)"
    want = f"{int(m.group(1))}.{int(m.group(2))}"
    if want in shipped:
        return want, f"Kubernetes {want} schema, the cluster's ({cluster_version})"
    key = tuple(int(p) for p in want.split("."))
    if key > tuple(int(p) for p in newest.split(".")):
        return newest, f"Kubernetes {newest} schema, the newest shipped (the cluster runs {cluster_version})"
    return shipped[
        0
    ], f"Kubernetes {shipped[0]} schema, the oldest shipped (the cluster runs {cluster_version})"


KUBERNETES_VERSION = shipped_versions()[-1]  # what a dry run, asking no cluster, validates against
EXPCONF_URL = "http://determined.ai/schemas/expconf/v0/experiment.json"
# Determined's expconf schemas are not shipped here: `--schemas DIR` or this variable names them.
SCHEMAS_ENV = "NEOX_DETERMINED_SCHEMAS"


CRD_DIR = Path(__file__).with_name("crds")
CRD_FILES = {
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): "trainjob-v1alpha1.json",
    ("trainer.kubeflow.org/v1alpha1", "TrainingRuntime"): "trainingruntime-v1alpha1.json",
    ("jobset.x-k8s.io/v1alpha2", "JobSet"): "jobset-v1alpha2.json",
}
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def strict_schema(schema: Any) -> Any:
    """An OpenAPI v3 structural schema with unknown fields made errors: every object that lists its
    properties and neither allows extra ones nor preserves unknown fields gets additionalProperties false."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@lru_cache(maxsize=4)
def crd_validator(file_name: str) -> jsonschema.Draft7Validator:
    crd = json.loads((CRD_DIR / file_name).read_text())
    schema = strict_schema(crd["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked by name below
    return jsonschema.Draft7Validator(schema)


def validate_custom(obj: dict) -> None:
    name = f"{obj.get('kind', '?')}/{obj.get('metadata', {}).get('name', '?')}"
    file_name = CRD_FILES.get((obj.get("apiVersion"), obj.get("kind")))
    if file_name is None:
        raise JobError(f"{name}: no CRD schema for {obj.get('apiVersion')} {obj.get('kind')}")
    errors = sorted(crd_validator(file_name).iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.absolute_path) or "<top>"
        raise JobError(f"{name}: {where}: {err.message} (CRD {file_name.removesuffix('.json')}, strict)")
    meta_name = obj["metadata"].get("name", "")
    if not _DNS_1035.match(meta_name) or len(meta_name) > 63:
        raise JobError(f"{name}: metadata.name must be an RFC 1035 label of at most 63 characters")


def validate_k8s(obj: dict, version: str = KUBERNETES_VERSION) -> None:
    name = f"{obj.get('kind', '?')}/{obj.get('metadata', {}).get('name', '?')}"
    if (obj.get("apiVersion"), obj.get("kind")) in CRD_FILES:
        validate_custom(obj)
        return
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path) or "<top>"
        raise JobError(f"{name}: {where}: {exc.message} (Kubernetes {version} schema, strict)") from exc
    except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as exc:
        raise JobError(f"{name}: no Kubernetes {version} schema for it ({exc})") from exc


# Determined's custom keywords. Semantics follow determined/common/schemas/extensions.py.


def _disallow_properties(validator, disallowed: dict, instance: Any, schema: dict):
    if validator.is_type(instance, "object"):
        for prop in instance:
            if prop in disallowed:
                yield jsonschema.ValidationError(disallowed[prop])


def _union_key_matches(key: str | None, instance: Any) -> bool:
    if key in (None, "never"):
        return False
    if key == "always":
        return True
    kind, arg = key.split(":", 1)
    if kind == "not":
        return not _union_key_matches(arg, instance)
    if kind == "const":
        name, value = arg.split("=", 1)
        return isinstance(instance, dict) and instance.get(name) == value
    if kind == "singleproperty":
        return isinstance(instance, dict) and list(instance) == [arg]
    if kind == "type":
        return isinstance(instance, list if arg == "array" else dict)
    if kind == "hasattr":
        return isinstance(instance, dict) and arg in instance
    raise ValueError(f"invalid unionKey: {key}")


def _union(validator, union: dict, instance: Any, schema: dict):
    """Exactly one item must match; on failure, report the errors of the item whose unionKey says the
    instance was meant for it (better messages than oneOf), else the default message."""
    chosen, matched = None, 0
    for i, item in enumerate(union["items"]):
        errors = list(validator.descend(instance, item, schema_path=i))
        if not errors:
            matched += 1
        elif chosen is None and _union_key_matches(item.get("unionKey"), instance):
            chosen = errors
    if matched == 1:
        return
    if matched > 1:
        yield jsonschema.ValidationError("more than one alternative of a union matched")
    elif chosen:
        yield from chosen
    else:
        yield jsonschema.ValidationError(union.get("defaultMessage", "union failed to validate"))


def _checks(validator, checks: dict, instance: Any, schema: dict):
    for message, sub in checks.items():
        if any(True for _ in validator.descend(instance, sub)):
            yield jsonschema.ValidationError(message)


def _optional_ref(validator, ref: str, instance: Any, schema: dict):
    if instance is not None:
        yield from validator.descend(instance, {"$ref": ref}, schema_path="optionalRef")


def _compare_properties(validator, compare: dict, instance: Any, schema: dict):
    if not validator.is_type(instance, "object"):
        return

    def get(path: str):
        obj = instance
        for key in path.split("."):
            if not isinstance(obj, dict):
                return None
            obj = obj.get(key)
        return obj

    a, b = get(compare["a"]), get(compare["b"])
    if a is None or b is None:
        return
    if compare["type"] == "a<b":
        if a >= b:
            yield jsonschema.ValidationError(f"{compare['a']} must be less than {compare['b']}")
    elif compare["type"] == "a<=b":
        if a > b:
            yield jsonschema.ValidationError(f"{compare['a']} must be less than or equal to {compare['b']}")
    elif compare["type"] == "a_is_subdir_of_b":
        a_norm, b_norm = os.path.normpath(a), os.path.normpath(b)
        if (a_norm.startswith(b_norm) if os.path.isabs(a_norm) else not a_norm.startswith("..")) is False:
            yield jsonschema.ValidationError(f"{compare['a']} must be a subdirectory of {compare['b']}")
    else:
        raise ValueError(f"unknown comparison {compare['type']}")


def _eventually_required(validator, keys: list, instance: Any, schema: dict):
    if validator.is_type(instance, "object"):
        for key in keys:
            if key not in instance:
                yield jsonschema.ValidationError(f"{key} is a required property")


def _eventually(validator, sub: dict, instance: Any, schema: dict):
    yield from validator.descend(instance, sub, schema_path="eventually")


def _ignore(validator, value, instance, schema):
    return iter(())


@lru_cache(maxsize=4)
def _expconf_validator(schema_dir: str, complete: bool):
    resources = []
    for path in sorted(Path(schema_dir).glob("*.json")):
        schema = json.loads(path.read_text())
        # Without `$schema` each resource is read with the validator below, keeping the custom keywords.
        schema.pop("$schema", None)
        resources.append(
            (
                schema["$id"],
                referencing.Resource.from_contents(
                    schema, default_specification=referencing.jsonschema.DRAFT7
                ),
            )
        )
    if not resources:
        raise JobError(f"Determined schemas: none found in {schema_dir} (set {SCHEMAS_ENV})")
    registry = referencing.Registry().with_resources(resources)
    keywords = {
        "disallowProperties": _disallow_properties,
        "union": _union,
        "checks": _checks,
        "optionalRef": _optional_ref,
        "compareProperties": _compare_properties,
        # Required only once the master has merged its defaults (the "complete" config).
        "eventuallyRequired": _eventually_required if complete else _ignore,
        "eventually": _eventually if complete else _ignore,
    }
    cls = jsonschema.validators.extend(jsonschema.Draft7Validator, keywords)
    return cls(registry.contents(EXPCONF_URL), registry=registry)


def schemas_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """Where Determined's schemas are: `explicit`, else $NEOX_DETERMINED_SCHEMAS, else None (skipped)."""
    where = explicit or os.environ.get(SCHEMAS_ENV)
    if not where:
        return None
    if not Path(where).is_dir():
        raise JobError(
            f"Determined schemas: {where} is not a folder (from {'--schemas' if explicit else SCHEMAS_ENV})"
        )
    return Path(where)


def expconf_errors(
    config: dict, schema_dir: str | os.PathLike | None = None, complete: bool = False
) -> list[str]:
    where = schemas_dir(schema_dir)
    if where is None:
        raise JobError(f"Determined schemas: none given (--schemas DIR or {SCHEMAS_ENV})")
    validator = _expconf_validator(str(where), complete)
    out = []
    for err in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in err.absolute_path) or "<top>"
        out.append(f"{where}: {err.message}")
    return out


def validate_experiment(config: dict, schema_dir: str | os.PathLike | None = None) -> str | None:
    """Check the experiment config; returns a note when Determined's schemas were not given (then only
    its pod_spec, a Kubernetes Pod, is checked)."""
    note = None
    if schemas_dir(schema_dir) is None:
        note = (
            f"Determined schema validation skipped: give --schemas DIR or set {SCHEMAS_ENV} "
            "(Determined's expconf v0 JSON schemas)"
        )
    elif errors := expconf_errors(config, schema_dir):
        raise JobError(f"experiment config: {errors[0]} (Determined expconf v0 schema)")
    # The pod_spec is a Kubernetes Pod: hold it to the same strict schema as the rest.
    pod = (config.get("environment") or {}).get("pod_spec")
    if pod:
        validate_k8s({**pod, "metadata": {**pod.get("metadata", {}), "name": "determined-trial"}})
    return note
