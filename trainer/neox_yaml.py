"""NeoX YAML files as gpt-neox reads them: read, normalise keys, merge, override, report unknown keys.

Torch-free on purpose: the deploy tooling (k8s/) reads the same files and must not pull in the model.
gpt-neox spells keys with `-` or `_` interchangeably; we normalise to `_`. Several files merge in order
(a later file wins). PyYAML's safe loader also accepts the guide's JSON-like files (`True`, trailing
commas).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from jobs.cli import JobError


def normalise(key: str) -> str:
    return key.replace("-", "_")


def yaml_number(value: Any) -> Any:
    """PyYAML (YAML 1.1) reads `1e-5` as a string; take such strings as the number they spell."""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def read_yaml(path: str | os.PathLike, what: str = "config file") -> dict:
    """One mapping from one file; every failure is one JobError naming `what` and the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise JobError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise JobError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise JobError(f"{what} {path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise JobError(f"{what} {path}: expected a mapping of keys, got {type(data).__name__}")
    return data


def set_key(raw: dict, key: str, value: Any, what: str = "--override") -> None:
    """Set `key` (dotted keys reach into nested sections) in a normalised mapping."""
    *parents, last = [normalise(key.split(".")[0]), *key.split(".")[1:]]
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise JobError(f"{what} {key!r}: {p} is not a mapping")
    node[last] = value


def set_spelt(conf: dict, key: str, value: Any) -> tuple[str, Any]:
    """Set a top-level `key` in a file's own mapping, in whichever spelling the file uses; returns
    (key used, old value)."""
    for k in conf:
        if normalise(k) == normalise(key):
            old = conf[k]
            conf[k] = value
            return k, old
    conf[key] = value
    return key, None


def apply_override(raw: dict, item: str) -> None:
    """`key=value`, the value parsed as YAML."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise JobError(f"--override {item!r}: expected key=value")
    set_key(raw, key, yaml_number(yaml.safe_load(value)) if value else None)


Origins = dict[str, tuple[str, str]]  # {normalised key: (spelling, where it was set)}


def merge(files: Iterable[str | os.PathLike], overrides: Iterable[str] = ()) -> tuple[dict, Origins]:
    """The files merged in order (a later file wins), then the `key=value` overrides."""
    raw: dict = {}
    origins: Origins = {}
    for f in files:
        for k, v in read_yaml(f).items():
            raw[normalise(k)] = v
            origins[normalise(k)] = (k, str(f))
    for item in overrides:
        apply_override(raw, item)
        key = item.partition("=")[0].split(".")[0]
        origins.setdefault(normalise(key), (key, "--override"))
    return raw, origins


def unknown_keys_error(unknown: Iterable[str], known: Iterable[str], origins: Origins, what: str) -> JobError:
    """One line naming every unknown key, where it was set, and the closest known key (as spelt there)."""
    known = sorted(known)
    parts = []
    for key in sorted(unknown):
        spelt, where = origins.get(key, (key, ""))
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = ""
        if close:
            hint = f" (did you mean {close[0].replace('_', '-') if '-' in spelt else close[0]!r}?)"
        parts.append((f"{spelt!r}" + (f" in {where}" if where else ""), hint))
    if len(parts) == 1:
        return JobError(f"config key {parts[0][0]} is {what}{parts[0][1]}")
    return JobError(f"config keys {what}: " + ", ".join(name + hint for name, hint in parts))
