"""Run one pipeline step in a container of the local Docker engine, the way a Kubernetes Job
would: the image's own entrypoint, the shared volume mounted, host networking, logs streamed to
the terminal and to a file, and a failure reported with its exit code and log tail."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MOUNT = "/mnt/finetune"


class StageError(Exception):
    """A stage failed: the message names the stage and carries its log tail."""


@dataclass
class Runner:
    client: object
    workdir: Path
    log: Callable[[str], None] = print
    gpus: bool = False
    env: dict[str, str] = field(default_factory=dict)

    @property
    def user(self) -> str:
        """Containers write to the host folder as the host user; root hosts hand it to the images' uid 1000."""
        return f"{os.getuid()}:{os.getgid()}" if os.getuid() != 0 else "1000:1000"

    def prepare_volume(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.getuid() == 0:
            for path in [self.workdir, *self.workdir.rglob("*")]:
                os.lchown(path, 1000, 1000)

    def run(self, stage: str, image: str, args: list[str], entrypoint: list[str] | None = None) -> str:
        """Run to completion; return the logs. Raises StageError on a non-zero exit."""
        from docker.errors import APIError
        from docker.types import DeviceRequest

        environment = {"HOME": "/tmp", **self.env}
        device_requests = None
        if self.gpus:
            device_requests = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
        else:
            environment.update({"CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu"})
        try:
            container = self._start(image, args, entrypoint, environment, device_requests)
        except APIError as exc:
            raise StageError(
                f"stage {stage!r}: the engine did not start its container: {exc.explanation or exc}"
            ) from exc
        log_file = self.workdir / "logs" / f"{stage}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        lines: list[str] = []
        try:
            with open(log_file, "w") as out:
                for raw in container.logs(stream=True, follow=True):
                    for line in raw.decode(errors="replace").splitlines():
                        lines.append(line)
                        out.write(line + "\n")
                        self.log(f"[{stage}] {line}")
            code = container.wait()["StatusCode"]
        finally:
            container.remove(force=True)
        if code != 0:
            tail = "\n".join(lines[-25:])
            raise StageError(f"stage {stage!r} failed (exit {code}); full log: {log_file}\n{tail}")
        return "\n".join(lines)

    def _start(self, image: str, args: list[str], entrypoint, environment: dict, device_requests):
        """Create, then start: a container the engine refuses to start is removed, not left behind."""
        container = self.client.containers.create(
            image,
            args,
            entrypoint=entrypoint,
            network_mode="host",
            user=self.user,
            environment=environment,
            volumes={str(self.workdir.resolve()): {"bind": MOUNT, "mode": "rw"}},
            working_dir="/tmp",
            device_requests=device_requests,
            shm_size="1g",
        )
        try:
            container.start()
        except Exception:
            container.remove(force=True)
            raise
        return container

    def serve(self, image: str, folder: Path, port: int):
        """A static HTTP server with directory listings over `folder` (stands in for a weights host)."""
        container = self.client.containers.run(
            image,
            ["-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", "/srv"],
            entrypoint=["python"],
            detach=True,
            network_mode="host",
            user=self.user,
            volumes={str(folder.resolve()): {"bind": "/srv", "mode": "ro"}},
        )
        return container
