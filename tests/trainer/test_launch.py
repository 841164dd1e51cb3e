"""`python -m trainer.launch`, the entry every engine runs on each node (FORMATS section 7): the
engine's variables read and checked, then real torchrun on CPU ranks: two "nodes" on this machine
train like one process, a killed node resumes from the last checkpoint, SIGTERM reaches the workers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.cli import JobError
from tests.support.trainer import clean_env, free_port, losses, write_config
from trainer.launch import World, world_from_env

TRAINJOB = {
    "PET_NNODES": "4", "PET_NPROC_PER_NODE": "8", "PET_NODE_RANK": "2", "JOB_COMPLETION_INDEX": "2",
    "PET_MASTER_ADDR": "ft-node-0-0.ft", "PET_MASTER_PORT": "29500", "NVIDIA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7",
}  # fmt: skip
JOBSET = {"PET_NNODES": "2", "PET_NPROC_PER_NODE": "1", "PET_MASTER_ADDR": "ft-node-0-0.ft",
          "PET_MASTER_PORT": "29400", "JOB_COMPLETION_INDEX": "1"}  # fmt: skip
# what the variables mean to this process: none of the machine's own may leak into a test
# iterations 1-12, a checkpoint every 4: the kill comes after the first and the run resumes from it
KEYS = {"train-iters": 12, "save-interval": 4, "lr-decay-iters": 12, "zero_optimization": {"stage": 1}}
TIMEOUT = 600  # a training run of a tiny model on a loaded 2-core machine: mostly imports


# ---- the environment, read directly -----------------------------------------------------------------


def test_trainjob_variables_give_the_node_its_place():
    world = world_from_env(TRAINJOB)
    assert world == World(4, 2, 8, "ft-node-0-0.ft", 29500, "trainjob")
    assert world.world_size == 32
    assert world.describe() == (
        "trainer.launch: node 2 of 4, 8 processes per node, world 32, master ft-node-0-0.ft:29500 (from trainjob)"
    )


def test_jobset_takes_the_node_rank_from_the_indexed_job():
    assert world_from_env(JOBSET) == World(2, 1, 1, "ft-node-0-0.ft", 29400, "jobset")


def test_auto_is_the_gpu_count_or_one_cpu_process_said_so():
    env = {**JOBSET, "PET_NPROC_PER_NODE": "auto"}
    assert world_from_env(env, gpus=4).nproc_per_node == 4
    assert world_from_env(env, gpus=4).notes == ()
    cpu = world_from_env(env, gpus=0)
    assert cpu.nproc_per_node == 1 and cpu.world_size == 2
    assert any("no GPU" in note for note in cpu.notes)


def test_no_engine_variables_is_one_node_on_this_machine():
    world = world_from_env({}, gpus=0)
    assert (world.nnodes, world.node_rank, world.nproc_per_node) == (1, 0, 1)
    assert (world.master_addr, world.master_port, world.source) == ("127.0.0.1", 29500, "env")
    assert any("single-node" in note for note in world.notes)


def test_gpu_lists_that_name_no_devices_are_no_request():
    for value in ("all", "none", "void", ""):
        assert world_from_env({**TRAINJOB, "NVIDIA_VISIBLE_DEVICES": value}).nproc_per_node == 8


def test_torchrun_gets_a_static_rendezvous_without_restarts_around_trainer_train():
    argv = world_from_env(JOBSET).torchrun_argv(["--config", "a.yml"])
    assert argv[:3] == [sys.executable, "-m", "torch.distributed.run"]
    joined = " ".join(argv)
    for part in ("--nnodes 2", "--node-rank 1", "--nproc-per-node 1", "--rdzv-backend static",
                 "--master-addr ft-node-0-0.ft", "--master-port 29400", "--max-restarts 0"):  # fmt: skip
        assert part in joined
    assert argv[-4:] == ["-m", "trainer.train", "--config", "a.yml"]


BAD = [
    ({"PET_NNODES": "0"}, "PET_NNODES is '0'"),
    ({"PET_NNODES": "two"}, "PET_NNODES is 'two'"),
    ({"PET_NNODES": None}, "PET_NNODES is not set"),
    ({"PET_NODE_RANK": "2", "JOB_COMPLETION_INDEX": None}, "PET_NODE_RANK is 2 but PET_NNODES is 2"),
    ({"JOB_COMPLETION_INDEX": "5"}, "JOB_COMPLETION_INDEX is 5 but PET_NNODES is 2"),
    ({"PET_NODE_RANK": "0"}, "PET_NODE_RANK is 0 but JOB_COMPLETION_INDEX is 1"),
    ({"JOB_COMPLETION_INDEX": None}, "neither PET_NODE_RANK nor JOB_COMPLETION_INDEX"),
    ({"PET_NODE_RANK": "-1", "JOB_COMPLETION_INDEX": None}, "PET_NODE_RANK is '-1'"),
    ({"PET_MASTER_ADDR": None}, "PET_MASTER_ADDR is not set"),
    ({"PET_MASTER_PORT": "http"}, "PET_MASTER_PORT is 'http'"),
    ({"PET_MASTER_PORT": "65536"}, "PET_MASTER_PORT is '65536'"),
    ({"PET_NPROC_PER_NODE": "0"}, "PET_NPROC_PER_NODE is '0'"),
    ({"PET_NPROC_PER_NODE": "gpu"}, "PET_NPROC_PER_NODE is 'gpu'"),
    ({"PET_NPROC_PER_NODE": "4", "NVIDIA_VISIBLE_DEVICES": "0,1"}, "NVIDIA_VISIBLE_DEVICES asks for 2 GPUs"),
    (
        {"PET_NPROC_PER_NODE": "4", "CUDA_VISIBLE_DEVICES": "GPU-a,GPU-b,GPU-c"},
        "CUDA_VISIBLE_DEVICES asks for 3",
    ),
    (
        {"PET_NPROC_PER_NODE": "4", "NEOX_GPUS_PER_NODE": "8"},
        "PET_NPROC_PER_NODE is 4 but NEOX_GPUS_PER_NODE",
    ),
    ({"PET_NPROC_PER_NODE": "auto", "NEOX_GPUS_PER_NODE": "8"}, "asks for 8 GPUs, but 0 are visible"),
]


@pytest.mark.parametrize(("change", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_variables_are_refused_naming_the_variable(change, message):
    env = {**JOBSET, **change}
    env = {k: v for k, v in env.items() if v is not None}
    with pytest.raises(JobError) as err:
        world_from_env(env, gpus=0)
    assert message in str(err.value)


def test_engine_variables_without_pet_nnodes_are_refused():
    with pytest.raises(JobError, match="PET_NNODES is not set but PET_MASTER_ADDR is"):
        world_from_env({"PET_MASTER_ADDR": "h"}, gpus=0)
    with pytest.raises(JobError, match="JOB_COMPLETION_INDEX is 3 but PET_NNODES is not set"):
        world_from_env({"JOB_COMPLETION_INDEX": "3"}, gpus=0)


# ---- the module as the engines run it ---------------------------------------------------------------


def launch_cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "trainer.launch", "--", "--config", str(config)]


@pytest.mark.parametrize(
    ("change", "variable"),
    [
        ({"PET_NODE_RANK": "2", "JOB_COMPLETION_INDEX": "2"}, "PET_NODE_RANK"),
        ({"PET_MASTER_ADDR": ""}, "PET_MASTER_ADDR"),
    ],
)
def test_bad_environment_is_one_line_and_exit_2_before_torchrun(tmp_path, change, variable):
    env = clean_env(**{**JOBSET, **change})
    proc = subprocess.run(
        launch_cmd(tmp_path / "never-read.yml"), env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stdout == ""  # not even the node line: nothing was started
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"trainer.launch: error: {variable} ")


def node_env(port: int, rank: int, style: str) -> dict:
    env = clean_env(
        PET_NNODES="2", PET_NPROC_PER_NODE="1", PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(port)
    )
    # the torch plugin gives the rank itself; our JobSet leaves it to the Indexed Job
    env["PET_NODE_RANK" if style == "trainjob" else "JOB_COMPLETION_INDEX"] = str(rank)
    return env


def start_nodes(config: Path, port: int, style: str, logs: Path, attempt: str = "") -> list[subprocess.Popen]:
    """Two launch processes as two pods: each in its own session, output to a file (no pipe to fill)."""
    procs = []
    for rank in (0, 1):
        out = open(logs / f"node{rank}{attempt}.log", "w")  # noqa: SIM115 (the child holds it)
        procs.append(subprocess.Popen(launch_cmd(config), env=node_env(port, rank, style), stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True))  # fmt: skip
        out.close()
    return procs


def wait_all(procs: list[subprocess.Popen], what: str, timeout: float = TIMEOUT) -> list[int]:
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            for q in procs:
                if q.poll() is None:  # a reaped pid may already be someone else's
                    kill_tree(q.pid)
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
    return [p.returncode for p in procs]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts each worker in a session of its own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_tree(pid: int) -> None:
    """What the kubelet does to a dead pod: every process of it goes, at once."""
    for p in [pid, *descendants(pid)]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def tail(logs: Path, rank: int, attempt: str = "") -> str:
    return (logs / f"node{rank}{attempt}.log").read_text()[-3000:]


def node_line(log: Path) -> str:
    return log.read_text().splitlines()[0]


@pytest.fixture(scope="module")
def one_process(corpus, tmp_path_factory):
    """The reference: one process, no engine variables, twice the accumulation (same global batch)."""
    d = tmp_path_factory.mktemp("one")
    cfg = write_config(d / "one.yml", corpus, save=str(d / "ckpt"), gradient_accumulation_steps=4, **KEYS)
    env = clean_env(MASTER_PORT=str(free_port()))
    proc = subprocess.run(launch_cmd(cfg), env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0].startswith(
        "trainer.launch: node 0 of 1, 1 processes per node, world 1, "
    )
    assert proc.stdout.splitlines()[0].endswith("(from env)")
    return losses(d / "ckpt")


@pytest.fixture(scope="module")
def two_nodes(corpus, tmp_path_factory):
    """Two launch processes as two TrainJob nodes of one CPU process each, uninterrupted."""
    d = tmp_path_factory.mktemp("two")
    cfg = write_config(d / "two.yml", corpus, save=str(d / "ckpt"), gradient_accumulation_steps=2, **KEYS)
    port = free_port()
    procs = start_nodes(cfg, port, "trainjob", d)
    rcs = wait_all(procs, "two nodes to finish 12 iterations")
    assert rcs == [0, 0], (d / "node0.log").read_text()[-3000:] + (d / "node1.log").read_text()[-3000:]
    for rank in (0, 1):
        assert node_line(d / f"node{rank}.log") == (
            f"trainer.launch: node {rank} of 2, 1 processes per node, world 2, master 127.0.0.1:{port} (from trainjob)"
        )
    assert "2 data-parallel ranks" in (d / "node0.log").read_text()
    return losses(d / "ckpt")


def test_two_nodes_train_like_one_process_with_the_same_global_batch(one_process, two_nodes):
    assert sorted(one_process) == sorted(two_nodes) == list(range(1, 13))
    assert one_process[12] < one_process[1] - 0.5  # the weights moved, so equal losses mean equal updates
    for it, loss in one_process.items():
        assert two_nodes[it] == pytest.approx(loss, rel=1e-5), it


def test_a_killed_node_and_a_jobset_restart_resume_from_the_last_checkpoint(corpus, tmp_path, two_nodes):
    save = tmp_path / "ckpt"
    cfg = write_config(tmp_path / "run.yml", corpus, save=str(save), gradient_accumulation_steps=2, **KEYS)
    port = free_port()
    procs = start_nodes(cfg, port, "jobset", tmp_path)
    try:
        deadline = time.monotonic() + TIMEOUT
        # rank 0 logs this once the save is over (every rank's part written)
        while f"saved checkpoint {save}/global_step4" not in (tmp_path / "node0.log").read_text():
            ended = [rank for rank, p in enumerate(procs) if p.poll() is not None]
            assert not ended, f"node {ended[0]} ended before the first checkpoint:\n" + tail(
                tmp_path, ended[0]
            )
            assert time.monotonic() < deadline, "timed out waiting for the checkpoint global_step4"
            time.sleep(0.02)
        kill_tree(procs[1].pid)  # node 1's pod dies
        # the JobSet's failure policy deletes the other pods too (SIGTERM), then recreates them all
        procs[0].send_signal(signal.SIGTERM)
        rcs = wait_all(procs, "both nodes to stop after node 1 was killed", timeout=180)
    finally:
        for p in procs:
            if p.poll() is None:
                kill_tree(p.pid)
    assert rcs[0] != 0 and rcs[1] == -signal.SIGKILL
    assert not (save / "global_step12").exists(), "the kill came too late: the run had finished"

    before = len((save / "metrics.jsonl").read_text().splitlines())
    procs = start_nodes(cfg, port, "jobset", tmp_path, attempt="-restart")
    rcs = wait_all(procs, "the restarted nodes to finish")
    log0 = (tmp_path / "node0-restart.log").read_text()
    assert rcs == [0, 0], log0[-3000:] + (tmp_path / "node1-restart.log").read_text()[-3000:]
    assert node_line(tmp_path / "node1-restart.log").endswith(f"master 127.0.0.1:{port} (from jobset)")
    resumed = re.search(rf"resumed from {re.escape(str(save))}/global_step(\d+) at iteration (\d+)\n", log0)
    assert resumed, "the restarted run did not resume from a checkpoint:\n" + log0[-3000:]
    resumed_from = int(resumed[2])
    assert resumed[1] == resumed[2] and resumed_from in (4, 8)
    lines = [json.loads(x) for x in (save / "metrics.jsonl").read_text().splitlines()[before:]]
    got = {m["iteration"]: m["lm_loss"] for m in lines if m["kind"] == "train"}
    assert sorted(got) == list(range(resumed_from + 1, 13))
    for it, loss in got.items():
        assert loss == pytest.approx(two_nodes[it], rel=1e-5), it


def test_sigterm_to_the_launch_process_reaches_the_workers(corpus, tmp_path):
    """Kubernetes stops a pod with SIGTERM to its main process; the workers (own sessions) must stop too."""
    save = tmp_path / "ckpt"
    cfg = write_config(
        tmp_path / "long.yml", corpus, save=str(save), **{"train-iters": 100000, "log-interval": 1}
    )
    log = open(tmp_path / "node.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(launch_cmd(cfg), env=clean_env(MASTER_PORT=str(free_port())), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    log.close()
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (save / "metrics.jsonl").exists():
            assert proc.poll() is None, (tmp_path / "node.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "timed out waiting for the first training iteration"
            time.sleep(0.1)
        workers = descendants(proc.pid)
        assert workers, "torchrun has no worker processes"
        proc.send_signal(signal.SIGTERM)  # to the launch process only, as the kubelet does to PID 1
        rc = wait_all([proc], "the launch process to stop after SIGTERM", timeout=120)[0]
        deadline = time.monotonic() + 60
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if alive(w)], "workers outlived the SIGTERM to the launch process"
        assert rc != 0
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
