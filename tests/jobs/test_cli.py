"""The helpers every job shares: atomic writes, the error-to-exit-code mapping, progress lines."""

import io
import json
import os
import stat
from pathlib import Path

import pytest

from jobs.cli import (
    OWNER,
    JobError,
    Progress,
    atomic_dir,
    remove_temporary,
    run_main,
    stale_temporaries,
    write_json_atomic,
)


def test_atomic_dir_replaces_on_success_and_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "b").write_text("2")
        raise RuntimeError("half-written")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["a"]


def test_a_killed_runs_temporary_folder_is_found_and_only_it(tmp_path):
    """A process killed inside atomic_dir leaves `.out.XXXX` with its owner file; stale_temporaries names
    it (dead pid, this host) and not a live writer's, another host's or an unmarked folder."""
    import socket
    import subprocess
    import sys

    out = tmp_path / "model"
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys\nfrom jobs.cli import atomic_dir\n"
            f"with atomic_dir({str(out)!r}) as tmp:\n    (tmp / 'shard').write_text('x')\n    os._exit(9)",
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert killed.returncode == 9
    (left,) = tmp_path.glob(".model.*")
    assert json.loads((left / OWNER).read_text())["host"] == socket.gethostname()
    with atomic_dir(out) as mine:  # a live writer's folder (this process)
        other = tmp_path / ".model.other"
        other.mkdir()
        (other / OWNER).write_text(json.dumps({"pid": 1, "host": "another-node"}))
        (tmp_path / ".model.unmarked").mkdir()
        assert [d for d, _ in stale_temporaries(out)] == [left]
        assert mine.exists()
    remove_temporary(left)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.other", ".model.unmarked", "model"]
    assert not (out / OWNER).exists()  # the finished folder carries no owner file


def test_json_is_written_atomically_and_readable_by_others(tmp_path):
    path = tmp_path / "stats.json"
    write_json_atomic(path, {"b": 1, "a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]


def test_run_main_maps_job_errors_to_one_line_and_exit_1(capsys):
    def fails():
        raise JobError("input.jsonl:3: invalid JSON")

    assert run_main("jobs.x", fails) == 1
    assert capsys.readouterr().err == "jobs.x: error: input.jsonl:3: invalid JSON\n"
    assert run_main("jobs.x", lambda: None) == 0


def test_progress_logs_plain_lines_off_a_terminal():
    stream = io.StringIO()
    progress = Progress(
        "jobs.x",
        lambda done, total, rate, eta: f"{done:.0f}/{total:.0f}",
        total=10,
        stream=stream,
        log_interval=0,
    )
    progress.advance(4)
    progress.close()
    assert stream.getvalue() == "jobs.x: 4/10\n"
