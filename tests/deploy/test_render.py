"""Rendering and validation: the example config and the guide's files render to objects that pass the
Kubernetes 1.30 schema in strict mode and Determined's own expconf schemas; bad input gives one line."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs.cli import JobError
from k8s import render
from k8s.config import load_config, load_lock
from k8s.plan import build_plan, write_plan
from k8s.validate import KUBERNETES_VERSION, expconf_errors, validate_experiment, validate_k8s

REPO = Path(__file__).resolve().parents[2]
SEED = Path(__file__).resolve().parents[2] / "configs"  # the guide's files, as ../shared/seed has them


@pytest.fixture
def plan(config_file, lock_file):
    cfg = load_config(config_file)
    images = load_lock(lock_file)
    return cfg, images, build_plan(cfg, images)


def test_every_object_passes_strict_kubernetes_schema(plan):
    cfg, images, p = plan
    kinds = [o["kind"] for o in p.objects]
    assert kinds == ["PersistentVolumeClaim", "ConfigMap", "ConfigMap", "Job", "Job", "Job", "Job"]
    for obj in p.objects:
        validate_k8s(obj, KUBERNETES_VERSION)
    # Strict mode is on: an unknown field anywhere is an error.
    bad = copy.deepcopy(p.preprocess)
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(JobError, match=r"Job/.*preprocess.*imagePullPolicyy.*strict"):
        validate_k8s(bad)


def test_jobs_are_pinned_non_root_bounded_and_reference_secrets(plan):
    cfg, images, p = plan
    for job in [p.probe, *p.fetch, p.preprocess]:
        spec = job["spec"]
        assert (
            spec["backoffLimit"] >= 0
            and spec["activeDeadlineSeconds"] > 0
            and spec["ttlSecondsAfterFinished"] > 0
        )
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
        (c,) = pod["containers"]
        assert "@sha256:" in c["image"] and c["image"] in images.values()
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert set(c["resources"]) == {"requests", "limits"}
        assert {"name": "shared", "mountPath": "/mnt/finetune-gpt-neox"} in c["volumeMounts"]
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "finetune-gpt-neox"
        assert all("value" not in e or e["name"] in ("PYTHONUNBUFFERED", "HOME") for e in c.get("env", []))
    weights = p.fetch[0]["spec"]["template"]["spec"]["containers"][0]
    assert weights["args"][:2] == [
        "https://the-eye.eu/public/AI/models/GPT-NeoX-20B/slim_weights/",
        "/mnt/finetune-gpt-neox/20B_checkpoints",
    ]
    pre = p.preprocess["spec"]["template"]["spec"]["containers"][0]["args"]
    assert pre[pre.index("--output-prefix") + 1] == "/mnt/finetune-gpt-neox/data/enron/enron"
    assert (
        "--append-eod" in pre and "command" not in p.preprocess["spec"]["template"]["spec"]["containers"][0]
    )
    assert p.pvc["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "storageClassName": "shared-hdd-ord1",
        "resources": {"requests": {"storage": "1000Gi"}},
    }


def test_guide_files_accepted_as_they_are(plan):
    cfg, images, p = plan
    (name,) = p.neox
    assert name == "determined-cluster.yml"
    neox = p.neox[name]
    assert neox["vocab-file"] == "/mnt/finetune-gpt-neox/20B_checkpoints/20B_tokenizer.json"
    assert neox["data-path"] == "/mnt/finetune-gpt-neox/data/enron/enron_text_document"
    assert neox["load"] == "/mnt/finetune-gpt-neox/20B_checkpoints"
    assert neox["save"].startswith("/mnt/finetune-gpt-neox/")
    assert neox["zero_optimization"]["allgather_partitions"] is True  # the guide's Python-style `True`
    assert neox["num-layers"] == 44
    exp = p.experiment
    assert exp["hyperparameters"]["conf_dir"] == "configs" and exp["hyperparameters"]["conf_file"] == [name]
    assert exp["entrypoint"] == [
        "python3",
        "-m",
        "determined.launch.deepspeed",
        "--trial",
        "trainer.determined:NeoXTrial",
    ]
    assert exp["environment"]["image"] == {"cuda": images["trainer"]}
    assert exp["resources"]["slots_per_trial"] == 96
    assert exp["searcher"]["max_length"] == {"batches": 100} and exp["min_validation_period"] == {
        "batches": 50
    }
    assert exp["checkpoint_storage"] == {
        "type": "s3",
        "bucket": "model-checkpoints",
        "prefix": "gpt-neox-20b",
        "endpoint_url": "https://object.ord1.coreweave.com",
    }
    container = exp["environment"]["pod_spec"]["spec"]["containers"][0]
    assert container["name"] == "determined-container"
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]} == {"checkpoint-s3-credentials"}
    # a node's share (8 GPUs x 6 CPUs, 48Gi), /dev/shm on top; Determined itself sets the GPUs
    assert container["resources"] == {
        "requests": {"cpu": "48", "memory": "400Gi"},
        "limits": {"cpu": "48", "memory": "400Gi"},
    }
    assert exp["profiling"]["end_after_batch"] == 100  # carried over from the guide's base


def test_guide_experiment_file_passes_determineds_schemas(plan, determined_schemas):
    validate_experiment(plan[2].experiment)
    # The guide's experiment file itself passes Determined's schemas unchanged.
    assert expconf_errors(yaml.safe_load((SEED / "finetune-gpt-neox.yml").read_text())) == []


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda e: e["checkpoint_storage"].update(type="s4"),
            "is not an object where object",
        ),  # union defaultMessage
        (lambda e: e["checkpoint_storage"].update(prefix="a/../b"), "prefix cannot contain /../"),  # checks
        (
            lambda e: e["environment"]["pod_spec"]["spec"]["containers"][0].update(image="x"),
            "container Image is not configurable",
        ),  # disallowProperties
        (lambda e: e["profiling"].update(begin_on_batch=500), "begin_on_batch must be less than or equal"),
        (lambda e: e["resources"].update(slots_per_trial="many"), "is not of type"),  # through optionalRef
        (lambda e: e["searcher"].update(name="bayes"), ""),
    ],
)
def test_determined_custom_keywords_are_enforced(plan, mutate, message, determined_schemas):
    exp = copy.deepcopy(plan[2].experiment)
    mutate(exp)
    errors = expconf_errors(exp)
    assert errors and message in " ".join(errors)
    with pytest.raises(JobError, match="experiment config"):
        validate_experiment(exp)


def test_optional_ref_accepts_null(plan, determined_schemas):
    exp = copy.deepcopy(plan[2].experiment)
    exp["checkpoint_storage"] = None  # cluster default
    exp["profiling"] = None
    assert expconf_errors(exp) == []


def test_dry_run_tree_is_kustomize_ready(plan, tmp_path):
    cfg, images, p = plan
    out = tmp_path / "rendered"
    summary = write_plan(p, out, images)
    kust = yaml.safe_load((out / "kubernetes" / "kustomization.yaml").read_text())
    assert len(kust["resources"]) == len(p.objects)
    for name in kust["resources"]:
        validate_k8s(yaml.safe_load((out / "kubernetes" / name).read_text()))
    assert (out / "experiment" / "context" / "configs" / "determined-cluster.yml").is_file()
    assert yaml.safe_load((out / "experiment" / "experiment.yaml").read_text()) == p.experiment
    assert json.loads((out / "render.json").read_text())["objects"] == summary["objects"]
    assert not list(tmp_path.glob(".rendered.*"))  # the temporary tree was renamed into place


def test_job_names_follow_their_spec(config_file, lock_file, tmp_path):
    cfg = load_config(config_file)
    images = load_lock(lock_file)
    a = build_plan(cfg, images)
    b = build_plan(cfg, images)
    assert a.preprocess["metadata"]["name"] == b.preprocess["metadata"]["name"]
    images2 = {**images, "preprocessor": images["preprocessor"].replace("3" * 64, "4" * 64)}
    c = build_plan(cfg, images2)
    assert c.preprocess["metadata"]["name"] != a.preprocess["metadata"]["name"]
    assert all(len(o["metadata"]["name"]) <= 63 for o in c.objects)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda r: r.update(colour="blue"), "unknown key 'colour'"),
        (lambda r: r["volume"].update(sise="1Ti"), "unknown key 'sise' in volume"),
        (lambda r: r["volume"].update(size="lots"), "volume.size: 'lots' is not a valid value"),
        (lambda r: r["experiment"].update(slots=0), "experiment.slots"),
        (
            lambda r: r["checkpoints"].update(secret_key="abcdefghijkl"),
            "checkpoints.secret_key holds a secret value",
        ),
        (
            lambda r: r["checkpoints"].update(endpoint_url="https://AKIAABCDEFGHIJKLMNOP:pw@s3.example"),
            "checkpoints.endpoint_url holds a secret value",
        ),
        (lambda r: r["experiment"]["node_selector"].update(x="AKIAABCDEFGHIJKLMNOP"), "holds a secret value"),
        (lambda r: r.pop("volume"), "'volume' is a required property"),
        (
            lambda r: r.update(neox_configs=["/nonexistent/x.yml"]),
            "neox_configs: /nonexistent/x.yml does not exist",
        ),
    ],
)
def test_bad_config_one_clear_line(make_config, edit, expected):
    path = make_config(edit)
    with pytest.raises(JobError) as info:
        load_config(path)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_secret_from_environment_in_config_is_refused(make_config, secret_env):
    path = make_config(lambda r: r["experiment"].update(name=f"run-{secret_env['AWS_SECRET_ACCESS_KEY']}"))
    with pytest.raises(JobError, match="experiment.name holds a secret value"):
        load_config(path)


def test_lock_file_problems(tmp_path):
    path = tmp_path / "lock.json"
    path.write_text(
        json.dumps(
            {
                "images": {
                    "trainer": "r/ns/trainer@sha256:" + "a" * 64,
                    "fetcher": "r/ns/fetcher@sha256:" + "b" * 64,
                }
            }
        )
    )
    with pytest.raises(JobError, match="no entry for image 'preprocessor'"):
        load_lock(path)
    path.write_text(
        json.dumps({"images": {"trainer": "r/ns/trainer:latest", "fetcher": "x", "preprocessor": "y"}})
    )
    with pytest.raises(JobError, match="'fetcher' is not pinned by digest"):
        load_lock(path)
    with pytest.raises(JobError, match="cannot read"):
        load_lock(tmp_path / "missing.json")


def test_invoke_dry_run_and_bad_input_exit_codes(config_file, lock_file, make_config, tmp_path, secret_env):
    """Through invoke itself, as `invoke deploy --config F --lock L --dry-run --out DIR` runs."""
    invoke = [sys.executable, "-m", "invoke"]
    out = tmp_path / "out"
    ok = subprocess.run(
        [
            *invoke,
            "deploy",
            "--config",
            str(config_file),
            "--lock",
            str(lock_file),
            "--dry-run",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert ok.returncode == 0, ok.stderr
    assert (out / "render.json").is_file() and "wrote 7 manifests" in ok.stderr
    bad = make_config(lambda r: r["volume"].update(sise="1Ti"), name="bad.yaml")
    fail = subprocess.run(
        [*invoke, "deploy", "--config", str(bad), "--dry-run", "--out", str(tmp_path / "out2")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert fail.returncode == 1
    assert fail.stderr.strip().splitlines() == [f"deploy: error: config {bad}: unknown key 'sise' in volume"]
    assert not (tmp_path / "out2").exists()
    for text in (ok.stdout, ok.stderr, fail.stdout, fail.stderr):
        assert not any(v in text for v in secret_env.values())


def test_rendered_files_hold_no_secret_values(plan, tmp_path, secret_env):
    cfg, images, p = plan
    out = tmp_path / "r"
    write_plan(p, out, images)
    for f in out.rglob("*"):
        if f.is_file():
            text = f.read_text()
            assert not any(v in text for v in secret_env.values()), f


def test_probe_script(tmp_path):
    """The probe runs inside the fetcher image with only the standard library: run it the same way,
    on a manifest written by the fetcher's own Manifest class."""
    from jobs.fetch.manifest import Manifest

    dest = tmp_path / "w"
    dest.mkdir()
    source = "https://host.example/slim_weights/"

    def probe(src=source):
        r = subprocess.run(
            [sys.executable, str(render.PROBE_SCRIPT), str(dest), src], capture_output=True, text=True
        )
        assert r.returncode == 0
        return json.loads(r.stdout.strip().splitlines()[-1])

    assert probe() == {"weights_verified": False, "reason": "no fetch-manifest.json"}
    (dest / "latest").write_text("global_step150000")
    m = Manifest(dest, source)
    m.record("latest", 17, "0" * 64, None, source + "latest")
    m.save(complete=False)
    assert probe()["reason"] == "the last fetch did not complete"
    m.save(complete=True)
    assert probe() == {"weights_verified": True, "reason": "all files present", "files": 1, "bytes": 17}
    assert "another source" in probe("s3://other/bucket")["reason"]
    (dest / "latest").write_text("short")
    assert "manifest says 17" in probe()["reason"]
    (dest / "latest").unlink()
    assert probe()["reason"] == "missing latest"


def test_probe_writes_its_verdict_as_the_termination_message(tmp_path, capsys, lock_file, config_file):
    """The verdict goes to the kubelet's termination-log file as well as stdout, and the probe's
    container names that file, so deploy can read the verdict from the pod's status."""
    import importlib.util

    from k8s.config import load_config, load_lock
    from k8s.plan import build_plan

    spec = importlib.util.spec_from_file_location("weights_probe", render.PROBE_SCRIPT)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    log = tmp_path / "termination-log"
    log.write_text("")  # the kubelet mounts it; the probe never creates one
    probe.report({"weights_verified": True, "files": 2}, str(log))
    assert json.loads(log.read_text()) == {"weights_verified": True, "files": 2}
    assert json.loads(capsys.readouterr().out) == {"weights_verified": True, "files": 2}
    probe.report({"weights_verified": False}, str(tmp_path / "absent"))
    assert not (tmp_path / "absent").exists()
    plan = build_plan(load_config(config_file), load_lock(lock_file))
    (c,) = plan.probe["spec"]["template"]["spec"]["containers"]
    assert c["terminationMessagePath"] == probe.TERMINATION_LOG == "/dev/termination-log"
    assert plan.probe["spec"]["ttlSecondsAfterFinished"] == 86400


def test_invoke_deploy_unreachable_cluster_and_master(make_config, lock_file, tmp_path, secret_env):
    """`invoke deploy` with nothing answering: one line per failed check, one error line, exit 1."""
    cfg = make_config(
        lambda r: (
            r["checkpoints"].update(endpoint_url="http://127.0.0.1:9"),
            r.update(determined_master="http://127.0.0.1:9"),
        )
    )
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "current-context": "c",
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
                "clusters": [{"name": "k", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
            }
        )
    )
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "AWS_DEFAULT_REGION": "us-east-1"}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    r = subprocess.run(
        [sys.executable, "-m", "invoke", "deploy", "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    fails = [line for line in lines if line.startswith("preflight: FAIL")]
    assert any("Kubernetes API http://127.0.0.1:9: unreachable" in line for line in fails)
    assert any("Determined master http://127.0.0.1:9: unreachable" in line for line in fails)
    assert any("bucket model-checkpoints" in line for line in fails)
    assert lines[-1].startswith("deploy: error: preflight: 6 check(s) failed, nothing applied")
    assert not any(v in r.stderr + r.stdout for v in secret_env.values())


def test_experiment_validation_is_skipped_with_one_warning_without_schemas(
    config_file, lock_file, monkeypatch
):
    monkeypatch.delenv("NEOX_DETERMINED_SCHEMAS", raising=False)
    cfg = load_config(config_file)
    p = build_plan(cfg, load_lock(lock_file))
    assert p.experiment is not None
    assert p.warnings == [
        "Determined schema validation skipped: give --schemas DIR or set NEOX_DETERMINED_SCHEMAS "
        "(Determined's expconf v0 JSON schemas)"
    ]
    with pytest.raises(JobError, match="Determined schemas: /nope is not a folder"):
        build_plan(cfg, load_lock(lock_file), "/nope")


def test_dry_run_into_a_folder_with_files_keeps_them(plan, tmp_path):
    cfg, images, p = plan
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(JobError, match=r"mine: exists and is not empty; name a new folder"):
        write_plan(p, out, images)
    assert [f.name for f in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".mine")] == []


def test_fresh_clone_renders_with_nothing_beside_it(tmp_path):
    """`git clone` + `invoke deploy --config pipeline.example.yaml --dry-run --out DIR` with no ../shared
    and no images.lock.json: images shown by tag and marked unpinned, one warning each, exit 0."""
    clone = tmp_path / "clone" / "neox-pipeline"  # no shared/ beside it
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    for name in subprocess.run(
        ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines():
        path = name[3:]  # the work in progress too, so the test checks this tree, not the last commit
        if (REPO / path).is_file() and not path.startswith(".."):
            (clone / path).parent.mkdir(parents=True, exist_ok=True)
            (clone / path).write_bytes((REPO / path).read_bytes())
    assert not (clone / "images.lock.json").exists() and not (clone.parent / "shared").exists()
    env = {k: v for k, v in os.environ.items() if k != "NEOX_DETERMINED_SCHEMAS"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "invoke",
            "deploy",
            "-c",
            "pipeline.example.yaml",
            "--dry-run",
            "-o",
            str(tmp_path / "rendered"),
        ],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("deploy: warning:")]
    assert (
        len(warnings) == 2
        and "NOT pinned by digest" in warnings[0]
        and "schema validation skipped" in warnings[1]
    )
    summary = json.loads((tmp_path / "rendered" / "render.json").read_text())
    assert all(":git-" in ref and "@sha256" not in ref for ref in summary["images"].values())
    real = subprocess.run(
        [sys.executable, "-m", "invoke", "deploy", "-c", "pipeline.example.yaml"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert real.returncode == 1 and "images.lock.json: cannot read" in real.stderr.splitlines()[-1]
