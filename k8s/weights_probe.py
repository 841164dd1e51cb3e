"""Does DEST already hold the weights the fetcher verified? Runs inside the fetcher image (standard
library only, mounted from a ConfigMap) and prints one JSON line, also written as the container's
termination message, that `invoke deploy` reads from the pod's status (or its log):
{"weights_verified": true|false, "reason": ..., "files": N, "bytes": N}. Usage: DEST [SOURCE].
Always exits 0 when it could look, so a "no" is an answer and not a failed Job.

The fetcher (jobs/fetch/manifest.py) writes DEST/fetch-manifest.json with `complete: true` once every
file was size- and hash-checked; here the manifest must be complete, from the configured SOURCE, and
each listed file must still exist with its recorded size (re-hashing 39 GB would cost as much as a fetch)."""

import json
import os
import sys


def _entries(manifest):
    files = manifest.get("files")
    if isinstance(files, dict):
        return [(path, (info or {}).get("size")) for path, info in files.items()]
    if isinstance(files, list):
        return [(f.get("path") or f.get("name"), f.get("size", f.get("bytes"))) for f in files]
    return None


def probe(dest, source=None):
    path = os.path.join(dest, "fetch-manifest.json")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        return {"weights_verified": False, "reason": "no fetch-manifest.json"}
    except (OSError, ValueError) as exc:
        return {"weights_verified": False, "reason": f"unreadable manifest: {exc}"}
    if manifest.get("complete") is not True:
        return {"weights_verified": False, "reason": "the last fetch did not complete"}
    if source and str(manifest.get("source", "")).rstrip("/") != source.rstrip("/"):
        return {
            "weights_verified": False,
            "reason": f"fetched from another source ({manifest.get('source')})",
        }
    entries = _entries(manifest)
    if not entries:
        return {"weights_verified": False, "reason": "manifest lists no files"}
    total = 0
    for rel, size in entries:
        if not rel or size is None:
            return {"weights_verified": False, "reason": "manifest entry without path or size"}
        full = os.path.join(dest, rel)
        try:
            actual = os.path.getsize(full)
        except OSError:
            return {"weights_verified": False, "reason": f"missing {rel}"}
        if actual != int(size):
            return {"weights_verified": False, "reason": f"{rel} has {actual} bytes, manifest says {size}"}
        total += actual
    return {"weights_verified": True, "reason": "all files present", "files": len(entries), "bytes": total}


TERMINATION_LOG = "/dev/termination-log"  # the Job's terminationMessagePath


def report(verdict, termination_log=TERMINATION_LOG):
    """The verdict as one JSON line on stdout and in the termination message, which deploy reads from
    the pod's status when the log cannot be read."""
    line = json.dumps(verdict)
    print(line, flush=True)
    if not os.path.exists(termination_log):  # outside a pod the kubelet mounted none: the log line is it
        return
    try:
        with open(termination_log, "w") as f:
            f.write(line + "\n")
    except OSError:
        pass


if __name__ == "__main__":
    report(probe(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
