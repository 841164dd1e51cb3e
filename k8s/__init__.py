"""Kubernetes manifests and the Determined experiment: render, validate, apply, wait, submit."""
