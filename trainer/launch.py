"""The trainer image's one multi-node entry: `python -m trainer.launch [--] <trainer.train args>`.

Every Kubernetes engine and the local multi-node backend run this in each node's container
(FORMATS section 7). It reads the node's place in the job from the environment, checks it, prints one
line saying what it found, then becomes torchrun (exec: same process, so SIGTERM from Kubernetes
reaches torchrun, which passes it on to the workers, and the exit code is torchrun's):

- Kubeflow Trainer's torch plugin sets PET_NNODES, PET_NPROC_PER_NODE (a number or `auto`),
  PET_NODE_RANK, PET_MASTER_ADDR and PET_MASTER_PORT ("from trainjob");
- our JobSet backend renders the same but PET_NODE_RANK; the rank is the Indexed Job's
  JOB_COMPLETION_INDEX ("from jobset");
- with none of them, one node on this machine ("from env").

Missing or inconsistent values are one line naming the variable and exit 2, before torchrun starts.
Rendezvous is static (node 0 hosts the store at the master address); `--max-restarts 0` because the
engine restarts pods, and the trainer resumes from the latest checkpoint in `save`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from jobs.cli import EXIT_FAILED, JobError, run_main

PROG = "trainer.launch"
EXIT_USAGE = 2  # bad launch environment or arguments: nothing was started
DEFAULT_PORT = 29500
_ENGINE_VARS = ("PET_NNODES", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
_NO_GPU_LISTS = ("", "all", "none", "void", "-1")  # values that name no particular set of GPUs


@dataclass(frozen=True)
class World:
    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str
    master_port: int
    source: str  # trainjob | jobset | env
    notes: tuple[str, ...] = ()

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    def describe(self) -> str:
        return (
            f"{PROG}: node {self.node_rank} of {self.nnodes}, {self.nproc_per_node} processes per node, "
            f"world {self.world_size}, master {self.master_addr}:{self.master_port} (from {self.source})"
        )

    def torchrun_argv(self, train_args: list[str]) -> list[str]:
        flags = {
            "--nnodes": self.nnodes,
            "--node-rank": self.node_rank,
            "--nproc-per-node": self.nproc_per_node,
            "--rdzv-backend": "static",
            "--master-addr": self.master_addr,
            "--master-port": self.master_port,
            "--max-restarts": 0,
        }
        options = [part for flag, value in flags.items() for part in (flag, str(value))]
        return [sys.executable, "-m", "torch.distributed.run", *options, "-m", "trainer.train", *train_args]


def _int(env: Mapping[str, str], name: str, minimum: int, what: str) -> int | None:
    raw = env.get(name)
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise JobError(f"{name} is {raw!r}; it must be {what}")
    return value


def requested_gpus(env: Mapping[str, str]) -> tuple[str, int] | None:
    """(variable, count) of the GPUs the container asked for, where the environment says so."""
    hint = _int(env, "NEOX_GPUS_PER_NODE", 0, "a whole number of GPUs per node")
    if hint is not None:
        return "NEOX_GPUS_PER_NODE", hint
    for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        raw = env.get(name)
        if raw is not None and raw.strip().lower() not in _NO_GPU_LISTS:
            return name, len([d for d in raw.split(",") if d.strip()])
    return None


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def world_from_env(env: Mapping[str, str], gpus: int | None = None) -> World:
    """This node's place in the job, from the engine's variables; `gpus` stands in for
    torch.cuda.device_count() (asked only for `auto`). Raises JobError naming the variable at fault."""
    notes: list[str] = []
    nnodes = _int(env, "PET_NNODES", 1, "a positive whole number of nodes")
    pet_rank = _int(env, "PET_NODE_RANK", 0, "a node rank (0, 1, ...)")
    index = _int(env, "JOB_COMPLETION_INDEX", 0, "an Indexed Job's completion index (0, 1, ...)")
    if nnodes is None:
        present = [name for name in _ENGINE_VARS if name in env]
        if present:
            raise JobError(
                f"PET_NNODES is not set but {' and '.join(present)} {'is' if len(present) == 1 else 'are'}; "
                "the engine's variables are incomplete"
            )
        if index:
            raise JobError(
                f"JOB_COMPLETION_INDEX is {index} but PET_NNODES is not set: which job is node {index} of?"
            )
        nnodes = 1
        notes.append("no engine variables (PET_NNODES ...): a single-node run on this machine")
    if pet_rank is not None and index is not None and pet_rank != index:
        raise JobError(f"PET_NODE_RANK is {pet_rank} but JOB_COMPLETION_INDEX is {index}; they must agree")
    if pet_rank is not None:
        rank, source, rank_var = pet_rank, "trainjob", "PET_NODE_RANK"
    elif "PET_NNODES" in env and index is not None:
        rank, source, rank_var = index, "jobset", "JOB_COMPLETION_INDEX"
    elif nnodes == 1:
        rank, source, rank_var = 0, "trainjob" if "PET_NNODES" in env else "env", "PET_NODE_RANK"
    else:
        raise JobError(f"PET_NNODES is {nnodes} but neither PET_NODE_RANK nor JOB_COMPLETION_INDEX is set")
    if rank >= nnodes:
        raise JobError(f"{rank_var} is {rank} but PET_NNODES is {nnodes}; node ranks run 0 to {nnodes - 1}")

    addr = env.get("PET_MASTER_ADDR", "").strip()
    if not addr:
        if nnodes > 1:
            raise JobError(f"PET_MASTER_ADDR is not set; {nnodes} nodes need node 0's address")
        addr = "127.0.0.1"
    # a single-node run outside an engine may pick its port the plain torchrun way (MASTER_PORT)
    port_var = "PET_MASTER_PORT" if source != "env" else "MASTER_PORT"
    port = _int(env, port_var, 1, "a TCP port (1-65535)")
    if port is not None and port > 65535:
        raise JobError(f"{port_var} is {env[port_var]!r}; it must be a TCP port (1-65535)")
    port = DEFAULT_PORT if port is None else port

    asked = requested_gpus(env)
    raw_nproc = env.get("PET_NPROC_PER_NODE", "auto").strip()
    if raw_nproc == "auto":
        count = _gpu_count() if gpus is None else gpus
        if asked and asked[1] != count:
            raise JobError(
                f"PET_NPROC_PER_NODE is auto and {asked[0]} asks for {asked[1]} GPUs, but {count} are visible"
            )
        nproc = count or 1
        if not count:
            notes.append("PET_NPROC_PER_NODE auto: no GPU visible, so 1 CPU process per node")
    else:
        nproc = _int(env, "PET_NPROC_PER_NODE", 1, "a positive whole number or 'auto'")
        if asked and asked[1] and asked[1] != nproc:
            raise JobError(
                f"PET_NPROC_PER_NODE is {nproc} but {asked[0]} asks for {asked[1]} GPUs; "
                "one process drives one GPU, so they must agree"
            )
    return World(nnodes, rank, nproc, addr, port, source, tuple(notes))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]

    def body() -> int:
        if not args:
            raise JobError(
                "no trainer.train arguments; usage: python -m trainer.launch [--] --config FILE ..."
            )
        world = world_from_env(os.environ)
        print(world.describe(), flush=True)
        for note in world.notes:
            print(f"{PROG}: note: {note}", flush=True)
        sys.stderr.flush()
        argv_run = world.torchrun_argv(args)
        # become torchrun: signals sent to this process reach it (and it passes them to the workers),
        # and its exit code is the pod's
        os.execv(argv_run[0], argv_run)
        raise AssertionError("unreachable")

    # a JobError here is always bad input found before anything started: a usage error
    rc = run_main(PROG, body)
    return EXIT_USAGE if rc == EXIT_FAILED else rc


if __name__ == "__main__":
    sys.exit(main())
