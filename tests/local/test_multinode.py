"""The multi-node train stage on the real Docker engine with the real trainer image: two containers as
two nodes of one CPU process each (gloo), each started with the environment of the JobSet pod template
that deploy renders, only the addresses rewritten to loopback (host networking). No Kubernetes API
server can run here, so the local backend plays the JobSet controller: Indexed-Job completion indexes,
and on a failure every node stopped and recreated (`failurePolicy.maxRestarts`)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from jobs import spec as js
from jobs.indexed_dataset import IndexedDatasetWriter, dtype_for_vocab
from local.containers import MOUNT, STAGE_LABEL, Runner, StageError
from tests.support.net import free_port
from tests.support.trainer import BASE

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]

# the trainer tests' tiny model, one micro-batch a step and the plain GELU; 12 iterations, saved every 4
TINY = {
    **{k: v for k, v in BASE.items() if k not in ("bias-gelu-fusion", "gradient_accumulation_steps")},
    "train-iters": 12,
    "lr-decay-iters": 12,
    "save-interval": 4,
}
SECRET = "node-secret-never-logged-7f3a"  # moto takes any keys
TIMEOUT = 900  # two trainer containers importing torch and DeepSpeed on a loaded 2-core machine


@pytest.fixture(scope="module")
def trainer_image(docker_engine):
    from images.build import build_images
    from images.catalog import LOCAL_BASE_IMAGE

    base = os.environ.get("NEOX_BASE_IMAGE", LOCAL_BASE_IMAGE)
    try:
        docker_engine.images.get(base)
    except Exception:  # noqa: BLE001 - docker's NotFound or an engine error: either way no base here
        pytest.skip(f"base image {base} is not in the local engine (`invoke base` makes it)")
    return build_images(ROOT, ["trainer"], base_image=base, client=docker_engine, log=lambda line: None)[
        "trainer"
    ].ref


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    """The shared volume: a learnable tiny corpus (x -> 3x + 1 mod 512) and the NeoX config."""
    vol = tmp_path_factory.mktemp("volume")
    rng = np.random.default_rng(0)
    with IndexedDatasetWriter(vol / "data" / "tiny_text_document", dtype_for_vocab(512)) as w:
        for _ in range(300):
            x = [int(rng.integers(0, 512))]
            for _ in range(int(rng.integers(20, 80)) - 1):
                x.append((x[-1] * 3 + 1) % 512)
            w.add_document(x)
    (vol / "tiny.yml").write_text(yaml.safe_dump(TINY))
    return vol


def rendered_node_env(tmp_path: Path, nodes: int) -> dict[str, str]:
    """The container environment of the JobSet that `invoke deploy` renders for `nodes` CPU nodes."""
    from k8s.config import load_config, load_lock
    from k8s.plan import build_plan

    raw = yaml.safe_load((ROOT / "pipeline.example.yaml").read_text())
    raw.pop("experiment_base")
    raw["neox_configs"] = [str(ROOT / "local" / "neox-tiny.yml")]
    raw["train"] = {"engine": "jobset", "nodes": nodes, "gpus_per_node": 0, "processes_per_node": 1}
    raw["lock_file"] = str(tmp_path / "images.lock.json")
    (tmp_path / "images.lock.json").write_text(
        json.dumps(
            {
                "images": {
                    n: f"registry.invalid/neox/{n}@sha256:{'0' * 64}"
                    for n in ("fetcher", "preprocessor", "trainer")
                }
            }
        )
    )
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "pipeline.yaml")
    plan = build_plan(cfg, load_lock(raw["lock_file"]))
    (container,) = plan.train_object["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert container["command"] == list(js.LAUNCH)
    # Secret references (the S3 keys of the checkpoint mirror) have no Kubernetes to resolve them here.
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    # The S3 keys come by reference from the checkpoint Secret; name them as the kubelet would fill them.
    refs = [e["name"] for e in container["env"] if "valueFrom" in e]
    assert refs == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    return env


def node_envs(rendered: dict[str, str], nodes: int, port: int, s3: str | None = None) -> list[dict[str, str]]:
    """What each pod of the Indexed Job sees, with the addresses rewritten to loopback: the master, and
    the S3 endpoint of the checkpoint mirror (moto here, the Secret's keys moto's own), or no mirror."""
    assert rendered["PET_MASTER_ADDR"].endswith("-node-0-0." + rendered["PET_MASTER_ADDR"].split(".", 1)[1])
    base = {**rendered, "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    if s3:
        base.update(
            AWS_ENDPOINT_URL=s3,
            AWS_ACCESS_KEY_ID="AKIDNODETEST",
            AWS_SECRET_ACCESS_KEY=SECRET,
            AWS_DEFAULT_REGION="us-east-1",
        )
    else:
        base.pop("NEOX_CHECKPOINT_MIRROR")
        base.pop("AWS_ENDPOINT_URL")
    return [{**base, "JOB_COMPLETION_INDEX": str(i)} for i in range(nodes)]


def train_args(save: str, **overrides) -> list[str]:
    return list(
        js.train_args(
            [f"{MOUNT}/tiny.yml"],
            {"data-path": f"{MOUNT}/data/tiny_text_document", "save": save, **overrides},
        )
    )


def losses(path: Path) -> dict[int, float]:
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    return {m["iteration"]: m["lm_loss"] for m in lines if m["kind"] == "train"}


@pytest.fixture(scope="module")
def one_process(docker_engine, trainer_image, volume):
    """The reference: one container, one process, twice the accumulation (the same global batch)."""
    runner = Runner(docker_engine, volume, log=lambda line: None)
    runner.prepare_volume()
    runner.run(
        "one",
        trainer_image,
        ["-m", "trainer.train", *train_args(f"{MOUNT}/one", gradient_accumulation_steps=4)],
        ["python"],
        {"OMP_NUM_THREADS": "1"},
    )
    return losses(volume / "one" / "metrics.jsonl")


def test_two_containers_as_two_nodes_train_like_one_process(
    docker_engine, trainer_image, volume, one_process, tmp_path
):
    from local.s3 import LocalS3

    rendered = rendered_node_env(tmp_path, nodes=2)
    assert (rendered["PET_NNODES"], rendered["PET_NPROC_PER_NODE"]) == ("2", "1")
    bucket, prefix = rendered["NEOX_CHECKPOINT_MIRROR"].removeprefix("s3://").split("/", 1)
    lines: list[str] = []
    runner = Runner(docker_engine, volume, log=lines.append)
    runner.prepare_volume()
    with LocalS3() as s3:
        s3.create_bucket(bucket)
        logs = runner.run_nodes(
            "train",
            trainer_image,
            train_args(f"{MOUNT}/two", gradient_accumulation_steps=2),
            list(js.LAUNCH),
            node_envs(rendered, 2, free_port(), s3=s3.endpoint),
        )
        keys = {
            o["Key"]
            for page in s3.client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])
        }
        latest = s3.client.get_object(Bucket=bucket, Key=f"{prefix}/latest")["Body"].read().decode().strip()
    # Every complete checkpoint is in the bucket, marker included; the newest is what `latest` names.
    for step in (4, 8, 12):
        assert f"{prefix}/global_step{step}/complete.json" in keys, sorted(keys)[:20]
    assert latest == "global_step12"
    assert not any(SECRET in line for line in lines)  # the Secret's key never reaches a log
    assert logs[1].splitlines()[0].startswith("trainer.launch: node 1 of 2, 1 processes per node, world 2")
    assert logs[1].splitlines()[0].endswith("(from jobset)")
    got = losses(volume / "two" / "metrics.jsonl")
    assert sorted(got) == sorted(one_process) == list(range(1, 13))
    assert one_process[12] < one_process[1] - 0.5  # the weights moved: equal losses mean equal updates
    for it, loss in one_process.items():
        assert got[it] == pytest.approx(loss, rel=1e-5), it


def test_a_killed_node_container_and_a_restart_of_the_set_resume_exactly(
    docker_engine, trainer_image, volume, one_process, tmp_path
):
    rendered = rendered_node_env(tmp_path, nodes=2)
    save = volume / "restart"
    args = train_args(f"{MOUNT}/restart", gradient_accumulation_steps=2)
    runner = Runner(docker_engine, volume, log=lambda line: None)
    runner.prepare_volume()
    port = free_port()
    failure: list[BaseException] = []

    def first_attempt():
        try:
            runner.run_nodes("attempt1", trainer_image, args, list(js.LAUNCH), node_envs(rendered, 2, port))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            failure.append(exc)

    thread = threading.Thread(target=first_attempt, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not (save / "global_step4" / "complete.json").exists():  # the checkpoint counts once marked
        assert thread.is_alive(), f"the run ended before its first checkpoint: {failure}"
        assert time.monotonic() < deadline, "timed out waiting for the checkpoint global_step4"
        time.sleep(0.1)
    (victim,) = docker_engine.containers.list(filters={"label": f"{STAGE_LABEL}=attempt1-node1"})
    victim.kill()  # node 1's pod is lost; the backend stops node 0, as the JobSet's policy deletes it
    thread.join(TIMEOUT)
    assert not thread.is_alive(), "the other node was not stopped after node 1 was killed"
    assert failure and isinstance(failure[0], StageError) and "failed" in str(failure[0])
    assert not (save / "global_step12").exists()

    before = len((save / "metrics.jsonl").read_text().splitlines())
    logs = runner.run_nodes("attempt2", trainer_image, args, list(js.LAUNCH), node_envs(rendered, 2, port))
    resumed = [line for line in logs[0].splitlines() if "resumed from" in line]
    assert len(resumed) == 1, logs[0][-3000:]
    start = int(resumed[0].rsplit("at iteration ", 1)[1].split()[0])
    assert start in (4, 8)
    lines = [json.loads(x) for x in (save / "metrics.jsonl").read_text().splitlines()[before:]]
    after = {m["iteration"]: m["lm_loss"] for m in lines if m["kind"] == "train"}
    assert sorted(after) == list(range(start + 1, 13))
    for it, loss in after.items():
        assert loss == pytest.approx(one_process[it], rel=1e-5), it
