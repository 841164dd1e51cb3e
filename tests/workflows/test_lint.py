"""The whole tree passes ruff's lint and format checks (the rules in pyproject.toml), as the ci
workflow's lint job checks them: a file left unformatted fails here, not only on GitHub."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")


@pytest.fixture(scope="module")
def ruff() -> str:
    if RUFF is None:
        pytest.fail("ruff is not installed: pip install -e '.[dev]' installs it")
    return RUFF


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_the_whole_tree_passes_ruff(ruff, args):
    proc = subprocess.run([ruff, *args, "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_ruff_format_catches_an_unformatted_file(ruff, tmp_path):
    """Guards the test above: the formatter really reads the files it is given."""
    (tmp_path / "bad.py").write_text("x = {  'a':1 }\n")
    proc = subprocess.run(
        [ruff, "format", "--check", "--no-cache", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
