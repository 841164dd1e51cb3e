"""The local backend: a job spec (jobs/spec.py) as containers of the local Docker engine, the way a
Kubernetes Job or JobSet would run it: the image's own entrypoint unless the spec names a command,
the shared volume mounted, host networking, logs streamed to the terminal and to a file, and a failure
reported with its exit code and log tail. A spec of N nodes runs as N containers at once, each with
the environment the JobSet backend renders (master 127.0.0.1, the node's JOB_COMPLETION_INDEX)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from jobs.cli import JobError
from jobs.spec import JobSpec, launch_env

MOUNT = "/mnt/finetune"
STAGE_LABEL = "neox-pipeline.local/stage"  # which stage (and node) a container runs
WORKDIR_LABEL = "neox-pipeline.local/workdir"
WAIT_TIMEOUT = 600  # seconds for the engine to report an exit once the log stream ended (loaded machine)


class StageError(JobError):
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

    def run_spec(self, spec: JobSpec, images: dict[str, str], port: int | None = None) -> str:
        """Run a job spec to completion on the local engine; return (node 0's) logs."""
        command = list(spec.command) if spec.command else None
        if spec.nodes == 1:
            return self.run(spec.stage, images[spec.image], list(spec.args), command, dict(spec.env))
        if port is None:
            raise ValueError("a multi-node spec needs a rendezvous port")
        envs = [
            {
                **dict(spec.env),
                **launch_env(spec.nodes, spec.procs_per_node, "127.0.0.1", port),
                "JOB_COMPLETION_INDEX": str(i),
            }
            for i in range(spec.nodes)
        ]
        return self.run_nodes(spec.stage, images[spec.image], list(spec.args), command, envs)[0]

    def run(
        self,
        stage: str,
        image: str,
        args: list[str],
        entrypoint: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> str:
        """Run to completion; return the logs. Raises StageError on a non-zero exit."""
        return self.run_nodes(stage, image, args, entrypoint, [env or {}])[0]

    def run_nodes(
        self,
        stage: str,
        image: str,
        args: list[str],
        entrypoint: list[str] | None,
        envs: list[dict[str, str]],
    ) -> list[str]:
        """One container per entry of `envs`, all at once (the nodes of one job); when one fails the
        others are stopped, as a JobSet's failure policy would. Returns each node's logs."""
        from docker.errors import APIError

        names = [stage] if len(envs) == 1 else [f"{stage}-node{i}" for i in range(len(envs))]
        containers = []
        try:
            for name, env in zip(names, envs, strict=True):
                try:
                    containers.append(
                        self._start(image, args, entrypoint, self._environment(env), self._devices(), name)
                    )
                except APIError as exc:
                    raise StageError(
                        f"stage {name!r}: the engine did not start its container: {exc.explanation or exc}"
                    ) from exc
            results: list[tuple[int, list[str]] | None] = [None] * len(containers)
            threads = [
                threading.Thread(target=self._follow, args=(c, n, results, i, containers), daemon=True)
                for i, (c, n) in enumerate(zip(containers, names, strict=True))
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            for c in containers:
                c.remove(force=True)
        failed = [(n, r) for n, r in zip(names, results, strict=True) if r is None or r[0] != 0]
        if failed:
            name, result = failed[0]
            code, lines = result if result else (-1, [])
            tail = "\n".join(lines[-25:])
            raise StageError(f"stage {name!r} failed (exit {code}); full log: {self._log_file(name)}\n{tail}")
        return ["\n".join(r[1]) for r in results]

    def _environment(self, env: dict[str, str]) -> dict[str, str]:
        environment = {"HOME": "/tmp", **self.env, **env}
        if not self.gpus:
            environment.update({"CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu"})
        return environment

    def _devices(self):
        from docker.types import DeviceRequest

        return [DeviceRequest(count=-1, capabilities=[["gpu"]])] if self.gpus else None

    def _log_file(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def _follow(self, container, name: str, results: list, index: int, everyone: list) -> None:
        log_file = self._log_file(name)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        lines: list[str] = []
        try:
            with open(log_file, "w") as out:
                for raw in container.logs(stream=True, follow=True):
                    for line in raw.decode(errors="replace").splitlines():
                        lines.append(line)
                        out.write(line + "\n")
                        self.log(f"[{name}] {line}")
            code = container.wait(timeout=WAIT_TIMEOUT)["StatusCode"]
        except Exception as exc:  # the engine lost the container: count it as a failure of this node
            lines.append(f"(lost the container: {type(exc).__name__}: {exc})")
            code = -1
        results[index] = (code, lines)
        if code != 0:  # a failed node fails the job: stop the others instead of letting them hang
            for other in everyone:
                if other is not container:
                    try:
                        other.kill()
                    except Exception:  # noqa: BLE001 - already gone
                        pass

    def _start(
        self, image: str, args: list[str], entrypoint, environment: dict, device_requests, name: str = "stage"
    ):
        """Create, then start: a container the engine refuses to start is removed, not left behind."""
        container = self.client.containers.create(
            image,
            args,
            labels={STAGE_LABEL: name, WORKDIR_LABEL: str(self.workdir)},
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
