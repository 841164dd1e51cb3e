"""Day 2 on a cluster, against the API server stand-in (tests/support/kube.py, through the official
client over TLS): no API server, scheduler, kubelet or Trainer/JobSet controller can run here, so the
stand-in plays their bad days as scripted per stage: a failed Job, Job TTLs on its own clock, Pending
pods with the scheduler's message, image pull errors, a kubelet that cannot serve logs, a CRD with no
controller, JobSet restarts. Each test asserts the line the user sees, the error, and what was (not)
applied."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from jobs.cli import JobError
from k8s import deploy as d

RUN = "gpt-neox-20b-finetune"
TRAIN = f"{RUN}-train"
GPU_MESSAGE = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available."


def _opts(config_file, **kw):
    kw.setdefault("progress_every", 0.5)
    return d.Options(config=str(config_file), skip_preflight=True, poll=0.01, **kw)


def _verdict(ok: bool) -> str:
    reason = "all files present" if ok else "no fetch-manifest.json"
    return json.dumps({"weights_verified": ok, "reason": reason, "files": 3}) + "\n"


@pytest.fixture(params=["jobset", "trainjob"])
def engine(request):
    return request.param


@pytest.fixture
def config(make_config, engine, cluster, secret_env):
    path = make_config(
        lambda r: (
            r.update(train={"engine": engine, "nodes": 3, "gpus_per_node": 8}),
            r.pop("determined_master"),
        )
    )
    d.secrets(_opts(path), cluster=cluster, out=io.StringIO())
    return path


@pytest.fixture
def jobset_config(make_config, cluster, secret_env):
    path = make_config(
        lambda r: (
            r.update(train={"engine": "jobset", "nodes": 3, "gpus_per_node": 8}),
            r.pop("determined_master"),
        )
    )
    d.secrets(_opts(path), cluster=cluster, out=io.StringIO())
    return path


def _job(kube, stage: str) -> str:
    (name,) = [n for (k, n) in kube.objects if k == "Job" and f"-{stage}-" in n]
    return name


def _record(kube) -> dict:
    """The stage record as the cluster holds it."""
    (cfg_name,) = [n for (k, n) in kube.objects if k == "ConfigMap" and n == f"{RUN}-stages"]
    return {k: json.loads(v) for k, v in kube.objects[("ConfigMap", cfg_name)]["data"].items()}


# -- failed stages


def test_a_failed_stage_is_reported_on_redeploy_and_rerun_only_with_retry_failed(
    jobset_config, kube, cluster
):
    config = jobset_config
    kube.outcomes["probe-weights"] = ("Complete", _verdict(True))
    kube.outcomes["fetch-data"] = (
        "Failed",
        "fetch: GET https://host.example/enron.jsonl: 503 Service Unavailable\n",
    )
    with pytest.raises(JobError, match=r"^Job/.*-fetch-data-\w+ failed: BackoffLimitExceeded"):
        d.deploy(_opts(config), cluster=cluster, out=io.StringIO())
    fetch_data = _job(kube, "fetch-data")
    assert _record(kube)["fetch-data"]["outcome"] == "Failed"

    # Re-deploy, cause not fixed and no flag: what failed and why, nothing run.
    before = list(kube.writes)
    log = io.StringIO()
    with pytest.raises(JobError) as info:
        d.deploy(_opts(config), cluster=cluster, out=log)
    shown = io.StringIO()
    report = d.status(_opts(config), cluster=cluster, out=shown)
    assert report["stages"]["fetch-data"]["outcome"] == "Failed" and "preprocess" not in report["stages"]
    assert "stage    fetch-data: Failed at " in shown.getvalue()
    assert f"({fetch_data}): BackoffLimitExceeded" in shown.getvalue()
    assert str(info.value) == (
        f"Job/{fetch_data}: failed earlier (BackoffLimitExceeded (Job has reached the specified backoff "
        f"limit); pod {fetch_data}-x1 ended: Error (exit code 1)); once the cause is fixed, "
        "`invoke deploy --retry-failed` runs it again (completed stages are kept)"
    )
    assert "  | fetch: GET https://host.example/enron.jsonl: 503 Service Unavailable" in log.getvalue()
    assert kube.writes == before

    # The cause fixed: --retry-failed deletes the failed Job, runs it again, then the rest; the probe is
    # not run again.
    kube.outcomes["fetch-data"] = ("Complete", "fetch: done\n")
    log = io.StringIO()
    res = d.deploy(_opts(config, retry_failed=True), cluster=cluster, out=log)
    assert res.train_state == "Complete"
    assert (
        f"deploy: Job/{fetch_data}: --retry-failed: deleting the failed Job and running it again"
        in log.getvalue()
    )
    new = kube.writes[len(before) :]
    assert ("delete", "Job", fetch_data) in new and ("create", "Job", fetch_data) in new
    assert not [w for w in new if w[1] == "Job" and "-probe-weights-" in w[2]]
    assert ("create", "JobSet", TRAIN) in new
    assert _record(kube)["fetch-data"]["outcome"] == "Complete"


def test_redeploy_after_the_jobs_ttl_expired_changes_nothing_and_knows_the_weights_are_there(
    config, kube, cluster, engine
):
    kube.outcomes["probe-weights"] = ("Complete", _verdict(False))  # so the weights are fetched
    d.deploy(_opts(config), cluster=cluster, out=io.StringIO())
    kube.advance_clock(8 * 86400)  # past every Job's ttlSecondsAfterFinished
    assert not [n for (k, n) in kube.objects if k == "Job"]
    before = list(kube.writes)
    log = io.StringIO()
    res = d.deploy(_opts(config), cluster=cluster, out=log)
    assert kube.writes == before  # nothing created again, the record not even rewritten
    text = log.getvalue()
    assert "deploy: weights on the volume: Job/gpt-neox-20b-finetune-fetch-weights-" in text
    assert "weights not on the volume yet" not in text
    assert "-preprocess-" in text and "unchanged (complete since " in text
    assert res.train_state == "Complete"
    assert _record(kube)["probe-weights"]["verdict"]["reason"] == "no fetch-manifest.json"  # kept


def test_the_probe_verdict_is_kept_after_its_job_expired(config, kube, cluster):
    kube.outcomes["probe-weights"] = ("Complete", _verdict(True))
    d.deploy(_opts(config), cluster=cluster, out=io.StringIO())
    kube.advance_clock(2 * 86400)  # the probe's day is over; the others' week is not
    assert not [n for (k, n) in kube.objects if k == "Job" and "-probe-weights-" in n]
    before = list(kube.writes)
    log = io.StringIO()
    d.deploy(_opts(config), cluster=cluster, out=log)
    assert kube.writes == before
    assert "deploy: weights already on the volume (3 files); skipping the fetch" in log.getvalue()


# -- logs are a nicety


@pytest.mark.parametrize("status", [500, 403])
def test_an_unreadable_probe_log_does_not_stop_deploy_the_verdict_comes_from_the_termination_message(
    jobset_config, kube, cluster, status
):
    kube.outcomes["probe-weights"] = ("Complete", _verdict(True))
    kube.log_failures["*"] = status
    kube.termination_messages["probe-weights"] = _verdict(True)
    log = io.StringIO()
    res = d.deploy(_opts(jobset_config), cluster=cluster, out=log)
    assert res.train_state == "Complete"
    assert "deploy: weights already on the volume (3 files); skipping the fetch" in log.getvalue()
    assert not any("-fetch-weights-" in n for (k, n) in kube.objects if k == "Job")


def test_a_failed_stage_whose_log_is_forbidden_still_fails_by_its_status(jobset_config, kube, cluster):
    kube.outcomes["probe-weights"] = ("Complete", _verdict(True))
    kube.outcomes["preprocess"] = ("Failed", "never readable\n")
    kube.log_failures["preprocess"] = 403
    log = io.StringIO()
    with pytest.raises(JobError, match=r"^Job/.*-preprocess-\w+ failed: BackoffLimitExceeded"):
        d.deploy(_opts(jobset_config), cluster=cluster, out=log)
    assert "deploy: warning: log of pod " in log.getvalue()
    assert 'cannot get resource "pods/log"' in log.getvalue() and "going by its status" in log.getvalue()
    assert "never readable" not in log.getvalue()


def test_no_termination_message_and_no_log_means_fetching_not_an_abort(jobset_config, kube, cluster):
    kube.outcomes["probe-weights"] = ("Complete", _verdict(True))
    kube.log_failures["probe-weights"] = 500
    log = io.StringIO()
    res = d.deploy(_opts(jobset_config), cluster=cluster, out=log)
    assert res.train_state == "Complete"
    assert "weights not on the volume yet (probe gave no readable verdict); fetching" in log.getvalue()


# -- waiting tells the truth


def test_pending_pods_name_the_schedulers_reason_and_a_stall_gives_up(jobset_config, kube, cluster):
    kube.outcomes["probe-weights"] = ("Complete", _verdict(True))
    kube.unschedulable["preprocess"] = GPU_MESSAGE
    log = io.StringIO()
    with pytest.raises(JobError) as info:
        d.deploy(_opts(jobset_config, stall_timeout=2), cluster=cluster, out=log)
    job = _job(kube, "preprocess")
    assert str(info.value) == (
        f"Job/{job}: no progress for 0:02: unschedulable: {GPU_MESSAGE}; fix that and `invoke deploy` again "
        "picks it up (--stall-timeout waits longer)"
    )
    assert f"deploy: Job/{job}: pods 1 Pending (Pending: unschedulable: {GPU_MESSAGE})" in log.getvalue()
    assert ("JobSet", TRAIN) not in kube.objects


def test_an_image_pull_error_is_named(jobset_config, kube, cluster):
    kube.outcomes["probe-weights"] = ("Complete", _verdict(True))
    message = 'Back-off pulling image "127.0.0.1:5999/neox/fetcher@sha256:2222": not found'
    kube.image_errors["fetch-data"] = ("ImagePullBackOff", message)
    log = io.StringIO()
    with pytest.raises(
        JobError, match=f"no progress for 0:0.: image pull failed: ImagePullBackOff: {message}"
    ):
        d.deploy(_opts(jobset_config, stall_timeout=1.5), cluster=cluster, out=log)
    assert f"(Pending: image pull failed: ImagePullBackOff: {message})" in log.getvalue()


def test_an_unbound_volume_is_named(jobset_config, kube, cluster):
    kube.outcomes["probe-weights"] = ("Complete", _verdict(True))
    kube.pvc_phase = "Pending"  # as with a StorageClass that does not exist
    kube.event(
        "PersistentVolumeClaim",
        "finetune-gpt-neox",
        "ProvisioningFailed",
        'storageclass.storage.k8s.io "fast-ssd" not found',
    )
    log = io.StringIO()
    with pytest.raises(JobError) as info:
        d.deploy(_opts(jobset_config, stall_timeout=1.5), cluster=cluster, out=log)
    probe = _job(kube, "probe-weights")
    assert str(info.value).startswith(f"Job/{probe}: no progress for 0:0") and str(info.value).endswith(
        ": volume not bound: PersistentVolumeClaim/finetune-gpt-neox is Pending (ProvisioningFailed: "
        'storageclass.storage.k8s.io "fast-ssd" not found); fix that and '
        "`invoke deploy` again picks it up (--stall-timeout waits longer)"
    )


def test_a_training_object_no_controller_picks_up_is_an_error_naming_the_controller(
    config, kube, cluster, engine
):
    kind = {"jobset": "JobSet", "trainjob": "TrainJob"}[engine]
    kube.outcomes["probe-weights"] = ("Complete", _verdict(True))
    kube.no_controller.add(kind)
    log = io.StringIO()
    with pytest.raises(JobError) as info:
        d.deploy(_opts(config, controller_timeout=2), cluster=cluster, out=log)
    who = {
        "JobSet": "the JobSet controller (jobset-controller-manager, jobset-system)",
        "TrainJob": "the Kubeflow Trainer controller manager (kubeflow-trainer-controller-manager, kubeflow-system)",
    }[kind]
    assert str(info.value) == (
        f"{kind}/{TRAIN}: no controller has picked it up after 0:02 (no status, no pods); is {who} running? "
        "(--controller-timeout waits longer)"
    )
    assert f"deploy: {kind}/{TRAIN}: not picked up by a controller yet (no status, no pods)" in log.getvalue()


def test_no_wait_reports_the_objects_real_state(config, kube, cluster, engine):
    kind = {"jobset": "JobSet", "trainjob": "TrainJob"}[engine]
    kube.outcomes["probe-weights"] = ("Complete", _verdict(True))
    kube.no_controller.add(kind)
    log = io.StringIO()
    res = d.deploy(_opts(config, wait_train=False), cluster=cluster, out=log)
    assert res.train_state == "Pending"
    assert (
        f"deploy: {kind}/{TRAIN}: Pending: not picked up by a controller yet (no status, no pods)"
        in log.getvalue()
    )
    assert "Running" not in log.getvalue().split(f"{kind}/{TRAIN} created")[1]


def test_jobset_restarts_are_reported_as_they_happen(jobset_config, kube, cluster):
    kube.outcomes["probe-weights"] = ("Complete", _verdict(True))
    kube.restart_plan["train"] = [(1, "OOMKilled", 137), (2, "Error", 1)]
    log = io.StringIO()
    res = d.deploy(_opts(jobset_config), cluster=cluster, out=log)
    assert res.train_state == "Complete"
    lines = [line for line in log.getvalue().splitlines() if ": restart " in line]
    assert lines == [
        f"deploy: JobSet/{TRAIN}: restart 1 of 3 (failurePolicy.maxRestarts): node 1 failed: OOMKilled (exit code 137)",
        f"deploy: JobSet/{TRAIN}: restart 2 of 3 (failurePolicy.maxRestarts): node 2 failed: Error (exit code 1)",
    ]
    assert log.getvalue().index(lines[1]) < log.getvalue().index(f"deploy: JobSet/{TRAIN} succeeded")


# -- teardown of parts


def test_teardown_failed_and_training_keep_the_completed_stages(jobset_config, kube, cluster):
    config = jobset_config
    kube.outcomes["probe-weights"] = ("Complete", _verdict(True))
    kube.outcomes["preprocess"] = ("Failed", "preprocess: error: tokenizer.json: not found\n")
    with pytest.raises(JobError):
        d.deploy(_opts(config), cluster=cluster, out=io.StringIO())
    preprocess = _job(kube, "preprocess")
    fetch_data = _job(kube, "fetch-data")
    out = io.StringIO()
    gone = d.teardown(_opts(config), failed=True, cluster=cluster, out=out)
    assert gone == [f"Job/{preprocess}"]
    assert ("Job", fetch_data) in kube.objects and (
        "PersistentVolumeClaim",
        "finetune-gpt-neox",
    ) in kube.objects
    assert "forgot the failed preprocess stage" in out.getvalue()
    assert out.getvalue().splitlines()[-1] == (
        "teardown: 1 failed objects deleted; kept the completed stages and PersistentVolumeClaim/finetune-gpt-neox"
    )
    kube.outcomes["preprocess"] = ("Complete", "done\n")
    before = list(kube.writes)
    res = d.deploy(_opts(config), cluster=cluster, out=io.StringIO())  # no flag needed: it was removed
    assert res.train_state == "Complete"
    created = [w for w in kube.writes[len(before) :] if w[0] == "create"]
    assert [(k, n) for _, k, n in created if k != "ConfigMap"] == [("Job", preprocess), ("JobSet", TRAIN)]

    gone = d.teardown(_opts(config), training=True, cluster=cluster, out=io.StringIO())
    assert gone == [f"JobSet/{TRAIN}"]
    assert ("Job", preprocess) in kube.objects and "train" not in _record(kube)
    with pytest.raises(JobError, match="drop --volume/--secrets"):
        d.teardown(_opts(config), training=True, volume=True, cluster=cluster, out=io.StringIO())


# -- export and logs refuse what does not exist


def test_export_waits_for_the_run_with_wait(jobset_config, kube, cluster):
    kube.outcomes["probe-weights"] = ("Complete", _verdict(True))
    kube.job_polls = 4  # each object takes a few reads: the run is still going after deploy returns
    d.deploy(_opts(jobset_config, wait_train=False), cluster=cluster, out=io.StringIO())
    with pytest.raises(JobError) as info:
        d.export(_opts(jobset_config), cluster=cluster, out=io.StringIO())
    assert str(info.value) == (
        f"export: JobSet/{TRAIN} is still running: its final checkpoint does not exist yet; "
        "`invoke export --wait` waits for the run, --checkpoint s3://... names one"
    )
    assert not any("-export-" in n for (k, n) in kube.objects if k == "Job")
    log = io.StringIO()
    d.export(_opts(jobset_config), cluster=cluster, out=log, wait=True)
    assert f"export: waiting for JobSet/{TRAIN} to finish" in log.getvalue()
    assert "export: Hugging Face model folder at" in log.getvalue()


def test_logs_validates_step_and_rank(jobset_config, cluster):
    with pytest.raises(JobError) as info:
        d.logs(_opts(jobset_config), step="bogus", cluster=cluster, out=io.StringIO())
    assert str(info.value) == (
        "logs: --step 'bogus': not a step of this pipeline (one of: probe-weights, fetch-weights, fetch-data, "
        "preprocess, train, export)"
    )
    with pytest.raises(JobError) as info:
        d.logs(_opts(jobset_config), rank=9, cluster=cluster, out=io.StringIO())
    assert str(info.value) == "logs: --rank 9: out of range; train.nodes is 3 (ranks 0-2)"


def test_invoke_logs_rank_x_is_one_line(jobset_config):
    """Through invoke, as a user types it: no traceback."""
    from tests.deploy.conftest import REPO

    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "logs", "-c", str(jobset_config), "--rank", "x"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "logs: error: --rank 'x': expected a whole number from 0"


def test_a_job_whose_pods_cannot_be_created_says_why_not_that_a_controller_is_missing(
    jobset_config, kube, cluster
):
    quota = (
        'pods "gpt-neox-20b-finetune-preprocess-x1" is forbidden: exceeded quota: team-quota, '
        "requested: requests.cpu=8, used: requests.cpu=60, limited: requests.cpu=64"
    )
    kube.outcomes["probe-weights"] = ("Complete", _verdict(True))
    kube.pod_create_errors["preprocess"] = quota
    with pytest.raises(JobError) as info:
        d.deploy(_opts(jobset_config, controller_timeout=1.5), cluster=cluster, out=io.StringIO())
    job = _job(kube, "preprocess")
    assert str(info.value) == (
        f"Job/{job}: no pods after 0:0{str(info.value).split('after 0:0')[1][0]}: FailedCreate: {quota}; "
        "fix that and `invoke deploy` again picks it up"
    )
    assert ("JobSet", TRAIN) not in kube.objects


def test_a_trainjobs_restarts_are_read_from_the_jobset_the_trainer_made(kube, cluster):
    """A TrainJob's status has no restart count; the JobSet the Trainer controller made for it has."""
    from tests.deploy.test_cluster import _jobset, _trainjob

    kube.job_polls = 10**6
    cluster.apply(_trainjob("tj", "train", nodes=2))
    kube.no_controller.add("JobSet")  # the stand-in's TrainJob plays the JobSet's pods itself
    cluster.apply(_jobset("tj", "train", nodes=2))
    with kube.lock:
        kube.objects[("JobSet", "tj")]["status"] = {"restarts": 2}
    snap = cluster.snapshot("TrainJob", "tj", cluster.get("TrainJob", "tj"))
    assert snap.restarts == 2 and snap.line.endswith("; 2 restarts")
