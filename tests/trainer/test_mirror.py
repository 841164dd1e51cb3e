"""The checkpoint mirror against moto's S3 server on 127.0.0.1: every file then the marker, multipart for
big files, resuming skips what is there, a replaced checkpoint goes in full, a failure is one warning."""

from __future__ import annotations

import json

import pytest

from jobs.cli import JobError
from tests.support.trainer import SECRET, make, objects
from trainer import checkpoint as ck


def mirror_of(url, lines, **kw):
    from trainer.mirror import Mirror

    m = Mirror(url, log=lines.append, **kw)
    calls = []  # the order S3 saw uploads in (botocore's event hooks on the real client)
    for op in ("PutObject", "CreateMultipartUpload"):
        m.client.meta.events.register(
            f"before-parameter-build.s3.{op}", lambda params, _op=op, **_: calls.append((_op, params["Key"]))
        )
    return m, calls


def test_every_file_then_the_marker_then_latest(s3, tmp_path):
    tag = make(tmp_path, 4, size=11 * 1024 * 1024 + 5)  # over the 5 MiB part size: a multipart upload
    lines = []
    m, calls = mirror_of("s3://ckpt/runs/a", lines, chunk_bytes=5 * 1024 * 1024)
    m.submit(tag)
    m.close()
    assert m.uploaded == ["global_step4"] and m.failed == []
    marker = json.loads((tag / ck.COMPLETE).read_text())
    expected = {f"runs/a/global_step4/{rel}": size for rel, size in marker["files"].items()}
    expected["runs/a/global_step4/complete.json"] = (tag / ck.COMPLETE).stat().st_size
    expected["runs/a/latest"] = len("global_step4")
    assert objects(s3) == expected
    keys = [k for _, k in calls]
    assert keys[-2:] == ["runs/a/global_step4/complete.json", "runs/a/latest"]
    assert ("CreateMultipartUpload", "runs/a/global_step4/mp_rank_00_model_states.pt") in calls
    assert s3.get_object(Bucket="ckpt", Key="runs/a/latest")["Body"].read() == b"global_step4"
    assert (
        lines[-1] == "mirrored global_step4 to s3://ckpt/runs/a/global_step4 (3 files sent, 0 already there)"
    )


def test_an_interrupted_upload_resumes_sending_only_what_is_missing(s3, tmp_path):
    tag = make(tmp_path, 4)
    lines = []
    m, _ = mirror_of("s3://ckpt/p", lines)
    m.upload(tag)
    # as if the run died before the optimizer shard and the marker went up
    s3.delete_object(Bucket="ckpt", Key="p/global_step4/zero_pp_rank_0_mp_rank_00_optim_states.pt")
    s3.delete_object(Bucket="ckpt", Key="p/global_step4/complete.json")
    assert m.upload(tag) == (1, 2)
    assert "p/global_step4/complete.json" in objects(s3)
    m.close()


def test_a_checkpoint_saved_again_under_its_name_is_sent_in_full(s3, tmp_path):
    tag = make(tmp_path, 4)
    m, _ = mirror_of("s3://ckpt", [])
    m.upload(tag)
    ck.mark_complete(tag, 4, 1)  # a new save (new id), same names and sizes
    assert m.upload(tag) == (3, 0)
    assert "global_step4/complete.json" in objects(s3)  # no prefix: keys at the bucket's root
    m.close()


def test_a_failed_upload_is_one_warning_line_and_names_no_secret(s3, tmp_path):
    tag = make(tmp_path, 2)
    lines = []
    m, _ = mirror_of("s3://no-such-bucket/x", lines)
    m.submit(tag)
    m.close()
    assert m.failed == ["global_step2"] and m.uploaded == []
    warnings = [line for line in lines if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith(
        "warning: mirroring global_step2 to s3://no-such-bucket/x failed ("
    )
    assert "NoSuchBucket" in warnings[0] and "training continues" in warnings[0]
    assert not any(SECRET in line or "AKIDMIRRORTEST" in line for line in lines)


@pytest.mark.parametrize("url", ["s3:/bucket", "http://bucket/x", "bucket/prefix", "s3://"])
def test_a_malformed_url_is_refused(url):
    from trainer.mirror import parse_url

    with pytest.raises(JobError, match=r"--mirror .*: expected s3://BUCKET\[/PREFIX\]"):
        parse_url(url)


def test_mirror_settings_are_checked_before_any_heavy_work(tmp_path, capsys, monkeypatch):
    from trainer.train import main

    f = tmp_path / "c.yml"
    f.write_text(f"data-path: {tmp_path}/nope_text_document\npadded-vocab-size: 64\nseq-length: 16\n")
    assert main(["--config", str(f), "--mirror", "s3://bucket/p"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "trainer.train: error: --mirror s3://bucket/p: needs config key 'save' (the checkpoints it mirrors)"
    ]
    monkeypatch.setenv("NEOX_CHECKPOINT_MIRROR", "http://bucket/p")
    assert main(["--config", str(f), "--override", f"save={tmp_path}/ckpt"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "trainer.train: error: env NEOX_CHECKPOINT_MIRROR 'http://bucket/p': expected s3://BUCKET[/PREFIX]"
    ]
