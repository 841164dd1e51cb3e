"""The preprocessor as a process: same bytes for any --workers, nothing at the final names when killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.corpus import TRICKY_TEXTS, expected_ids, long_text, read_docs

REPO = Path(__file__).parents[2]


def _cmd(inputs, tokenizer_path, prefix, *extra):
    return [
        sys.executable,
        "-m",
        "jobs.preprocess",
        "--input",
        *map(str, inputs),
        "--tokenizer",
        str(tokenizer_path),
        "--output-prefix",
        str(prefix),
        *extra,
    ]


def _corpus(path: Path, repeats: int) -> Path:
    texts = TRICKY_TEXTS + [long_text(50_000)]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(repeats):
            for t in texts:
                f.write(json.dumps({"text": f"{i} {t}"}) + "\n")
    return path


def _run(cmd, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, **kw)


def test_identical_output_for_any_worker_count(tmp_path, tokenizer_path, tokenizer):
    src = _corpus(tmp_path / "c.jsonl", 40)
    outputs = []
    for workers, engine in ((1, "tokenizers"), (2, "tokenizers"), (1, "auto"), (3, "auto")):
        prefix = tmp_path / f"w{workers}"
        r = _run(
            _cmd([src], tokenizer_path, prefix, "--append-eod", "--workers", str(workers), "--engine", engine)
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("\n") == 1 and "documents" in r.stdout  # one summary line
        doc = Path(f"{prefix}_text_document")
        outputs.append((doc.with_suffix(".bin").read_bytes(), doc.with_suffix(".idx").read_bytes()))
        stats = json.loads(doc.with_suffix(".stats.json").read_text())
        assert stats["workers"] == workers
    assert outputs[0] == outputs[1] == outputs[2] == outputs[3]
    texts = [json.loads(line)["text"] for line in src.read_text(encoding="utf-8").splitlines()]
    assert read_docs(tmp_path / "w2_text_document") == expected_ids(tokenizer, texts, eod=True)


def _start_and_wait_for_partial(cmd, out: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        partial = [p for p in out.glob("*.bin.tmp.*") if p.stat().st_size > 0]
        if partial:
            return proc
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no partial output appeared")


def _final_files(out: Path):
    return sorted(p.name for p in out.iterdir() if ".tmp." not in p.name)


def test_killed_run_leaves_nothing_final_and_rerun_succeeds(tmp_path, tokenizer_path):
    src = _corpus(tmp_path / "big.jsonl", 300)  # ~16 MB: several seconds of work
    out = tmp_path / "out"
    out.mkdir()
    cmd = _cmd([src], tokenizer_path, out / "ds", "--workers", "1")
    proc = _start_and_wait_for_partial(cmd, out)
    proc.kill()  # SIGKILL: no cleanup code runs
    proc.communicate()
    assert _final_files(out) == []
    assert list(out.glob("*.tmp.*"))  # the dead run's partial file, at a temporary name only
    r = _run(cmd)
    assert r.returncode == 0, r.stderr
    assert _final_files(out) == [
        "ds_text_document.bin",
        "ds_text_document.idx",
        "ds_text_document.stats.json",
    ]
    assert list(out.glob("*.tmp.*")) == []  # the rerun removed the dead process's partial file


def test_sigterm_removes_partial_files(tmp_path, tokenizer_path):
    src = _corpus(tmp_path / "big.jsonl", 300)
    out = tmp_path / "out"
    out.mkdir()
    proc = _start_and_wait_for_partial(_cmd([src], tokenizer_path, out / "ds", "--workers", "1"), out)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().endswith("preprocess: interrupted")
    assert list(out.iterdir()) == []
