"""Kubernetes manifests and the Determined experiment: render, validate, apply, wait, submit.

config      the user's pipeline.yaml: schema, one-line errors, secret detection, the image lock file
render      PVC, ConfigMaps and the probe/fetch/preprocess Jobs as plain dicts (kustomize-ready YAML)
experiment  the NeoX configs with paths on the shared volume, and the Determined experiment config
validate    kubernetes-validate (Kubernetes 1.30, strict) and Determined's expconf schemas
plan        everything one deployment applies, validated together; the dry-run tree
cluster     thin Kubernetes API seam (server-side apply, Job status, pod logs) over requests
determined_api  thin Determined REST seam mirroring the SDK (login, create experiment, checkpoints)
preflight   bucket, registry digests, cluster and master checks before anything is applied
deploy      the flow and the secrets/status/logs/teardown operations; export: checkpoint -> HF folder
tasks       the invoke tasks (option parsing only)
weights_probe  runs inside the fetcher image: does the volume already hold verified weights?
"""
