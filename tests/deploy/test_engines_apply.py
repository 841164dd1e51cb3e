"""Deploy with the Kubernetes-native engines against the API server stand-in (tests/support/kube.py,
through the official client over TLS): no API server, Kubeflow Trainer or JobSet controller can run
here, so the stand-in plays their part (indexed pods, conditions) as tests/support/kube.py describes. The flow is
the one a cluster sees: Jobs first, then the TrainJob/JobSet, followed to its end; status, logs by node
rank, teardown, and a second deploy that changes nothing."""

from __future__ import annotations

import hashlib
import io
import json

import pytest

from jobs.cli import JobError
from k8s import deploy as d

ENGINES = {"trainjob": "TrainJob", "jobset": "JobSet"}


def _opts(config_file, **kw):
    return d.Options(config=str(config_file), skip_preflight=True, poll=0.01, **kw)


def _verdict() -> str:
    return json.dumps({"weights_verified": True, "reason": "all files present", "files": 3}) + "\n"


@pytest.fixture(params=sorted(ENGINES))
def engine_config(request, make_config):
    engine = request.param
    path = make_config(
        lambda r: (
            r.update(train={"engine": engine, "nodes": 3, "gpus_per_node": 8}),
            r.pop("determined_master"),
        )
    )
    return engine, ENGINES[engine], path


def _secrets(config_file, cluster):
    d.secrets(_opts(config_file), cluster=cluster, out=io.StringIO())


def test_deploy_runs_the_jobs_then_the_engine_to_completion_and_again_changes_nothing(
    engine_config, kube, cluster, secret_env
):
    engine, kind, config = engine_config
    _secrets(config, cluster)
    kube.outcomes["probe-weights"] = ("Complete", _verdict())
    log = io.StringIO()
    res = d.deploy(_opts(config), cluster=cluster, master=None, out=log)
    name = "gpt-neox-20b-finetune-train"
    assert res.train == f"{kind}/{name}" and res.train_state == "Complete"
    assert res.applied[f"{kind}/{name}"] == "created" and res.experiment_id is None
    text = log.getvalue()
    assert f"deploy: {kind}/{name}: 3 nodes x 8 processes ({engine} engine)" in text
    assert f"deploy: {kind}/{name} succeeded" in text
    # Applied after the preprocess Job finished, as the last object.
    writes = [w for w in kube.writes if w[0] == "create"]
    assert writes[-1] == ("create", kind, name)
    assert [k for _, k, _ in writes].index("Job") < [k for _, k, _ in writes].index(kind)
    pods = kube.pods("app.kubernetes.io/component=train")
    assert sorted(p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] for p in pods) == [
        "0",
        "1",
        "2",
    ]

    before = list(kube.writes)
    log2 = io.StringIO()
    res2 = d.deploy(_opts(config), cluster=cluster, master=None, out=log2)
    assert kube.writes == before and set(res2.applied.values()) == {"unchanged"}
    assert f"deploy: {kind}/{name} unchanged (complete)" in log2.getvalue() and res2.train_state == "Complete"


def test_a_failed_run_reports_its_pod_log_and_is_not_restarted_blindly(
    engine_config, kube, cluster, secret_env
):
    engine, kind, config = engine_config
    _secrets(config, cluster)
    kube.outcomes["probe-weights"] = ("Complete", _verdict())
    kube.outcomes["train"] = ("Failed", "trainer.train: error: config key 'train-iters' must be positive\n")
    log = io.StringIO()
    with pytest.raises(JobError, match=f"{kind}/gpt-neox-20b-finetune-train"):
        d.deploy(_opts(config), cluster=cluster, master=None, out=log)
    assert "config key 'train-iters' must be positive" in log.getvalue()
    before = list(kube.writes)
    with pytest.raises(JobError, match=r"failed earlier .*`invoke deploy --retry-failed` starts it again"):
        d.deploy(_opts(config), cluster=cluster, master=None, out=io.StringIO())
    assert kube.writes == before  # nothing rerun blindly
    kube.outcomes["train"] = ("Complete", "trainer.train: done\n")
    log = io.StringIO()
    res = d.deploy(_opts(config, retry_failed=True), cluster=cluster, master=None, out=log)
    assert res.train_state == "Complete" and res.applied[res.train] == "created"
    assert f"deploy: {kind}/gpt-neox-20b-finetune-train failed earlier (FailedJobs" in log.getvalue()
    assert ("delete", kind, "gpt-neox-20b-finetune-train") in kube.writes[len(before) :]
    # the data stages were not run again
    assert not [w for w in kube.writes[len(before) :] if w[1] == "Job"]
    assert (
        "PersistentVolumeClaim",
        "finetune-gpt-neox",
    ) in kube.objects  # the volume and its checkpoints stay


def test_no_wait_then_status_logs_by_rank_and_a_changed_spec_is_refused_while_it_runs(
    engine_config, make_config, kube, cluster, secret_env
):
    engine, kind, config = engine_config
    _secrets(config, cluster)
    kube.outcomes["probe-weights"] = ("Complete", _verdict())
    kube.job_polls = 4  # each object takes a few reads: the run is still going when deploy returns
    log = io.StringIO()
    res = d.deploy(_opts(config, wait_train=False), cluster=cluster, master=None, out=log)
    assert res.train_state == "Running"  # what the object's status says, read back
    assert f"deploy: {kind}/gpt-neox-20b-finetune-train: Running: 1 jobs running" in log.getvalue()
    kube.job_polls = 10**6  # the run goes on
    out = io.StringIO()
    report = d.status(_opts(config), cluster=cluster, out=out)
    assert report["engine"] == engine and report["train"]["state"] in ("Running", "Pending")
    assert len(report["train"]["pods"]) == 3
    assert f"train    {kind}/gpt-neox-20b-finetune-train" in out.getvalue()
    as_json = io.StringIO()
    d.status(_opts(config), cluster=cluster, out=as_json, as_json=True)
    assert json.loads(as_json.getvalue())["train"]["kind"] == kind

    node1 = next(
        p["metadata"]["name"]
        for p in kube.pods("app.kubernetes.io/component=train")
        if p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] == "1"
    )
    kube.logs[node1] = "trainer.launch: node 1 of 3, 8 processes per node\n"
    out = io.StringIO()
    assert d.logs(_opts(config), rank=1, cluster=cluster, out=out) == 1
    assert f"==> pod {node1}" in out.getvalue() and "node 1 of 3" in out.getvalue()
    with pytest.raises(JobError, match=r"^logs: --rank 7: out of range; train.nodes is 3 \(ranks 0-2\)$"):
        d.logs(_opts(config), rank=7, cluster=cluster, out=io.StringIO())

    changed = make_config(
        lambda r: (
            r.update(train={"engine": engine, "nodes": 3, "gpus_per_node": 8}),
            r.pop("determined_master"),
            r["experiment"].update(max_batches=200),
        ),
        name="changed.yaml",
    )
    before = list(kube.writes)
    with pytest.raises(
        JobError, match=r"already running with a different spec; wait for it or `invoke teardown --training`"
    ):
        d.deploy(_opts(changed), cluster=cluster, master=None, out=io.StringIO())
    assert [w for w in kube.writes if w[1] == kind] == [w for w in before if w[1] == kind]


def test_export_runs_a_job_in_the_cluster_on_the_volume(engine_config, kube, cluster, secret_env):
    """Export before training ran is one line and no Job; after the run completed, a Job on the volume."""
    engine, kind, config = engine_config
    with pytest.raises(JobError) as info:
        d.export(_opts(config), cluster=cluster, out=io.StringIO())
    assert str(info.value) == (
        f"export: no complete checkpoint: {kind}/gpt-neox-20b-finetune-train does not exist (training has "
        "not run); `invoke deploy` first, or name one with --checkpoint s3://..."
    )
    assert kube.writes == []
    _secrets(config, cluster)
    kube.outcomes["probe-weights"] = ("Complete", _verdict())
    d.deploy(_opts(config), cluster=cluster, master=None, out=io.StringIO())
    log = io.StringIO()
    dest = d.export(_opts(config), cluster=cluster, out=log)
    assert dest == "/mnt/finetune-gpt-neox/export/gpt-neox-20b-finetune/hf"
    (job,) = [o for (k, _), o in kube.objects.items() if k == "Job" and "-export-" in o["metadata"]["name"]]
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["python"] and c["args"] == [
        "-m",
        "trainer.export",
        "--checkpoint",
        "/mnt/finetune-gpt-neox/checkpoints/gpt-neox-20b-finetune",
        "--out",
        dest,
    ]
    assert c["image"].endswith("@sha256:" + "1" * 64)
    assert "Hugging Face model folder at /mnt/finetune-gpt-neox/export/" in log.getvalue()


def test_local_export_takes_the_newest_complete_checkpoint_from_the_mirror(make_config, s3, tmp_path):
    """`invoke export --local` on a TrainJob/JobSet run: the mirror's `latest` names the checkpoint, only
    that one is downloaded (moto stands in for the bucket), and an --out with files in it is refused."""
    import sys

    url, client = s3
    client.create_bucket(Bucket="model-checkpoints")
    prefix = "gpt-neox-20b/gpt-neox-20b-finetune"
    # complete.json as trainer.train writes it: each file's sha256, which the download is checked against
    record = json.dumps({"sha256": {"mp_rank_00_model_states.pt": hashlib.sha256(b"x").hexdigest()}})
    for step in ("global_step4", "global_step8"):
        client.put_object(
            Bucket="model-checkpoints", Key=f"{prefix}/{step}/mp_rank_00_model_states.pt", Body=b"x"
        )
        client.put_object(
            Bucket="model-checkpoints", Key=f"{prefix}/{step}/complete.json", Body=record.encode()
        )
    client.put_object(Bucket="model-checkpoints", Key=f"{prefix}/latest", Body=b"global_step8\n")
    config = make_config(
        lambda r: (
            r.update(train={"engine": "jobset"}),
            r.pop("determined_master"),
            r["checkpoints"].update(endpoint_url=url),
        )
    )
    # Stands in for `python -m trainer.export` (tested on the CPU in tests/trainer): records its input.
    fake = tmp_path / "fake_export.py"
    fake.write_text(
        "import sys, pathlib\n"
        "a = sys.argv; ck = pathlib.Path(a[a.index('--checkpoint') + 1]); "
        "out = pathlib.Path(a[a.index('--out') + 1]); out.mkdir(parents=True)\n"
        "(out / 'files.txt').write_text('\\n'.join(sorted(p.name for p in ck.rglob('*') if p.is_file())))\n"
    )
    hf = d.export(
        _opts(config, out=str(tmp_path / "model")),
        local=True,
        out=io.StringIO(),
        command=(sys.executable, str(fake)),
    )
    assert (tmp_path / "model" / "hf" / "files.txt").read_text().split() == [
        "complete.json",
        "fetch-manifest.json",
        "fetch-stats.json",
        "mp_rank_00_model_states.pt",
    ]
    assert hf == str(tmp_path / "model" / "hf")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    with pytest.raises(JobError, match="exists and holds other files"):
        d.export(
            _opts(config, out=str(mine)), local=True, out=io.StringIO(), command=(sys.executable, str(fake))
        )
    assert [p.name for p in mine.iterdir()] == ["keep.txt"]


def test_export_job_reads_a_determined_checkpoint_from_the_bucket_and_can_write_to_s3(
    config_file, kube, cluster, det, master, secret_env
):
    """A Determined run's checkpoint lives in the bucket: the export Job fetches it there (the bucket's
    keys by reference, the download on the volume) instead of this machine downloading it."""
    from k8s import render
    from k8s.config import load_config

    cluster.apply(render.pvc(load_config(config_file)))  # the volume deploy made (the work folder is on it)
    master.login()
    exp_id = master.create_experiment({"name": "x"}, [])
    det.checkpoints[exp_id] = [{"uuid": "0b3c1f5e", "state": "STATE_COMPLETED"}]
    log = io.StringIO()
    dest = d.export(
        _opts(config_file),
        experiment_id=exp_id,
        to="s3://exports/gpt-neox/run1",
        cluster=cluster,
        master=master,
        out=log,
    )
    assert dest == "s3://exports/gpt-neox/run1"
    (job,) = [o for (k, _), o in kube.objects.items() if k == "Job"]
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["args"] == [
        "-m",
        "trainer.export",
        "--checkpoint",
        "s3://model-checkpoints/gpt-neox-20b/0b3c1f5e",
        "--out",
        "s3://exports/gpt-neox/run1",
        "--work",
        "/mnt/finetune-gpt-neox/export/gpt-neox-20b-finetune/work",
    ]
    env = {e["name"]: e for e in c["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "checkpoint-s3-credentials"
    assert env["AWS_ENDPOINT_URL"]["value"] == "https://object.ord1.coreweave.com"
    assert "Hugging Face model folder at s3://exports/gpt-neox/run1" in log.getvalue()
    with pytest.raises(JobError, match=r"--to 'https://x': expected s3://BUCKET/PREFIX"):
        d.export(
            _opts(config_file),
            experiment_id=exp_id,
            to="https://x",
            cluster=cluster,
            master=master,
            out=io.StringIO(),
        )
    with pytest.raises(JobError, match="named by --experiment ID"):
        d.export(_opts(config_file), cluster=cluster, master=master, out=io.StringIO())
