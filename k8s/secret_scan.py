"""Credentials must never be rendered: this finds values in any input (the pipeline config, the NeoX
configs, the experiment base, every rendered object) that look like one, so deploy can refuse them
with one line naming where they were and point to `invoke secrets`.

What counts:
- a value under a key that names a credential (`secret`, `password`, `token`, `access_key`, ...);
- an environment variable set in place (`NAME=VALUE`, `{name: NAME, value: VALUE}`) whose NAME holds
  KEY, SECRET, TOKEN, PASSWORD or CREDENTIAL: Determined's `environment_variables`, a pod's `env`;
- a value of a known key shape (AWS key ids, Hugging Face, GitHub, Slack tokens, private keys), a URL
  with user info (`https://user:pass@`, `https://TOKEN@`) or with signed-URL / token query parameters;
- a value of one of the credentials in this process's environment (SECRET_ENV)."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

# Keys whose value is the NAME of a Secret, or of a key in one, never a secret itself.
_SECRET_NAME_KEYS = {"secret", "secretName", "secretRef", "key"}
_SECRET_WORDS = {"secret", "password", "passwd", "token", "credentials"}
_SECRET_PAIRS = ("access_key", "secret_key", "api_key", "private_key", "session_token")
_SECRET_ENV_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSW(OR)?D|CREDENTIAL", re.I)
_ENV_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*)=(.+)$", re.S)
_SECRET_VALUE_RES = (
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),  # Hugging Face token
    re.compile(r"\b(ghp|gho|ghs|ghu|github_pat)_[A-Za-z0-9_]{20,}\b"),
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"),  # Slack
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
)
# Query parameters that carry a signature or a token (S3/GCS presigned URLs, Azure SAS, bearer tokens).
_SIGNED_PARAMS = {
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
    "signature",
    "sig",
    "token",
    "access_token",
    "api_key",
    "apikey",
    "key",
    "auth",
    "password",
}
# Environment variables whose values must never be written anywhere.
SECRET_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "HF_TOKEN",
    "DET_PASS",
    "DET_SESSION_TOKEN",
    "REGISTRY_PASSWORD",
    "WANDB_API_KEY",
)


def secret_values_in_env() -> list[str]:
    return [v for k in SECRET_ENV if len(v := os.environ.get(k, "")) >= 6]


def _secret_key(key: str) -> bool:
    norm = re.sub(r"[-.\s]+", "_", key.lower())
    return bool(_SECRET_WORDS & set(norm.split("_"))) or any(p in norm for p in _SECRET_PAIRS)


def _url_carries_credential(value: str) -> bool:
    if "://" not in value:
        return False
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        return False
    if parts.scheme in ("http", "https", "s3", "ftp", "git") and "@" in parts.netloc:
        return True  # user info: user:password@ or TOKEN@
    return any(k.lower() in _SIGNED_PARAMS and v for k, v in parse_qsl(parts.query, keep_blank_values=True))


def secret_value(value: str, env_values: list[str] | None = None) -> bool:
    """Whether a string looks like, or holds, a credential."""
    env_values = secret_values_in_env() if env_values is None else env_values
    if (m := _ENV_ASSIGNMENT.match(value)) and _SECRET_ENV_NAME.search(m[1]) and m[2].strip():
        return True
    if any(r.search(value) for r in _SECRET_VALUE_RES) or _url_carries_credential(value):
        return True
    return any(s in value for s in env_values)


def find_secret(data: Any, where: str = "") -> str | None:
    """The dotted path of the first value that looks like a credential, or None."""
    env_values = secret_values_in_env()
    stack = [(where, data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            env_name = value.get("name")
            if (
                isinstance(env_name, str)
                and isinstance(value.get("value"), str)
                and value["value"]
                and _SECRET_ENV_NAME.search(env_name)
            ):  # a pod's env entry set in place
                return f"{path}.value" if path else "value"
            for k, v in value.items():
                key = str(k)
                sub = f"{path}.{key}" if path else key
                if isinstance(v, str) and v and key not in _SECRET_NAME_KEYS and _secret_key(key):
                    return sub
                stack.append((sub, v))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, str) and secret_value(value, env_values):
            return path or "<top>"
    return None


SECRET_HELP = (
    "put it in a Kubernetes Secret (`invoke secrets` fills them from the environment) and give only its name"
)
