"""The Determined seam (against the local stand-in, see tests/support/kube.py) and `invoke export` (against an
S3-compatible server on 127.0.0.1)."""

from __future__ import annotations

import io
import sys

import pytest

from jobs.cli import JobError
from k8s.config import load_config
from k8s.determined_api import read_context, salt_and_hash
from k8s.export import export


def test_context_honours_detignore_and_size_limit(tmp_path):
    root = tmp_path / "ctx"
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "a.yml").write_text("x: 1\n")
    (root / "weights").mkdir()
    (root / "weights" / "big.pt").write_bytes(b"\0" * 4096)
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "m.pyc").write_bytes(b"\0")
    (root / ".detignore").write_text("*.pt\n")
    files = read_context(root)
    assert {f["path"] for f in files} == {"configs", "configs/a.yml", "weights"}
    assert all(f["type"] in (ord("0"), ord("5")) and f["mtime"].isdigit() for f in files)
    (root / ".detignore").write_text("")
    with pytest.raises(JobError, match=r"larger than the master's limit of 1.0 KB \(at weights/big.pt\)"):
        read_context(root, limit=1000)


def test_login_uses_sdk_hash_and_bad_password_is_one_line(det, master, monkeypatch):
    assert salt_and_hash("") == ""  # the SDK sends an empty password as is
    monkeypatch.setenv("DET_PASS", "wrong")
    monkeypatch.delenv("DET_SESSION_TOKEN", raising=False)
    with pytest.raises(
        JobError, match="login as determined: Determined master answered 401 invalid credentials"
    ):
        master.login()
    master.login(password="det-pass-123")
    exp_id = master.create_experiment({"name": "x"}, [])
    assert master.experiment(exp_id)["state"] == "STATE_ACTIVE"


def test_export_latest_checkpoint_of_an_experiment(make_config, s3, det, master, tmp_path):
    url, client = s3
    client.create_bucket(Bucket="model-checkpoints")
    uuid = "0b3c1f5e-1111-2222-3333-444455556666"
    for key, body in {
        "metadata.json": b"{}",
        "mp_rank_00_model_states.pt": b"w" * 100,
        "configs/20B.yml": b"a: 1\n",
    }.items():
        client.put_object(Bucket="model-checkpoints", Key=f"gpt-neox-20b/{uuid}/{key}", Body=body)
    client.put_object(Bucket="model-checkpoints", Key="gpt-neox-20b/other/stray.pt", Body=b"x")
    master.login()
    exp_id = master.create_experiment({"name": "x"}, [])
    det.checkpoints[exp_id] = [{"uuid": uuid, "state": "STATE_COMPLETED"}]
    cfg = load_config(make_config(lambda r: r["checkpoints"].update(endpoint_url=url)))
    # Stands in for `python -m trainer.export` (another helper's program): records what it was given.
    fake = tmp_path / "fake_export.py"
    fake.write_text(
        "import sys, pathlib, os\n"
        "a = sys.argv; ck = pathlib.Path(a[a.index('--checkpoint') + 1]); "
        "out = pathlib.Path(a[a.index('--out') + 1]); out.mkdir(parents=True)\n"
        "(out / 'files.txt').write_text('\\n'.join(sorted(str(p.relative_to(ck)) "
        "for p in ck.rglob('*') if p.is_file())))\n"
    )
    log = io.StringIO()
    hf = export(
        cfg,
        tmp_path / "model",
        experiment_id=exp_id,
        master=master,
        command=(sys.executable, str(fake)),
        stream=log,
    )
    assert hf == tmp_path / "model" / "hf"
    # The checkpoint's files (not the stray one beside it), plus the fetcher's manifest and stats.
    assert (hf / "files.txt").read_text().split() == [
        "configs/20B.yml",
        "fetch-manifest.json",
        "fetch-stats.json",
        "metadata.json",
        "mp_rank_00_model_states.pt",
    ]
    assert "downloaded 3 files" in log.getvalue()


def test_export_errors_are_one_line(make_config, s3, tmp_path):
    url, client = s3
    client.create_bucket(Bucket="model-checkpoints")
    cfg = load_config(make_config(lambda r: r["checkpoints"].update(endpoint_url=url)))
    with pytest.raises(JobError, match="nothing-here"):
        export(cfg, tmp_path / "m", checkpoint="s3://model-checkpoints/nothing-here")
    with pytest.raises(JobError, match="expected s3://BUCKET/PREFIX"):
        export(cfg, tmp_path / "m", checkpoint="https://x/y")
    with pytest.raises(JobError, match="exactly one of"):
        export(cfg, tmp_path / "m")
    client.put_object(Bucket="model-checkpoints", Key="ck/a.pt", Body=b"x")
    failing = (
        sys.executable,
        "-c",
        "import sys; print('export: error: no model_states', file=sys.stderr); sys.exit(1)",
    )
    with pytest.raises(JobError, match=r"failed \(export: error: no model_states\)"):
        export(cfg, tmp_path / "m", checkpoint="s3://model-checkpoints/ck", command=failing)
