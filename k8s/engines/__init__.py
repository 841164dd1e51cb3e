"""Training engines: each turns the train stage's job spec into what its controller runs.

- `determined`: an experiment submitted to the Determined master (engines/determined.py);
- `trainjob`: a Kubeflow Trainer v2 TrainJob (engines/trainjob.py);
- `jobset`: a JobSet (engines/jobset.py).
The Kubernetes-native ones are applied like every other object and followed by their conditions;
adding one is a module with `KIND`, `API_VERSION`, `name(cfg)` and `render_objects(cfg, spec, images)`."""

from __future__ import annotations

from types import ModuleType

from k8s.engines import jobset, trainjob

KUBERNETES_ENGINES: dict[str, ModuleType] = {"trainjob": trainjob, "jobset": jobset}


def kubernetes_engine(engine: str) -> ModuleType | None:
    """The module of a Kubernetes-native engine, or None for Determined."""
    return KUBERNETES_ENGINES.get(engine)
