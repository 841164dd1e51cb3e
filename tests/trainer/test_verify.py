"""Content-verified checkpoints: complete.json records each file's sha256; resume checks the chosen checkpoint
and falls back to the previous complete one in one line (or refuses); the S3 mirror, `invoke export`'s
download (k8s.export.download, through the fetcher) and trainer.export check the same hashes. Damage is
bytes flipped with the size kept (bit rot, a bad copy): sizes alone do not see it. The training runs are
real (DeepSpeed's CPU accelerator, gloo, as subprocesses); S3 is moto's server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time

import pytest

from jobs.cli import JobError
from tests.support.trainer import env, make, trainer_cmd, write_config
from trainer import checkpoint as ck

MODEL = "mp_rank_00_model_states.pt"
OPTIM = "zero_pp_rank_0_mp_rank_00_optim_states.pt"


def flip(path, n=4096):
    """Invert n bytes in the middle of the file; its size stays."""
    data = bytearray(path.read_bytes())
    size = len(data)
    mid = size // 2
    n = min(n, size - mid)
    data[mid : mid + n] = bytes(b ^ 0xFF for b in data[mid : mid + n])
    path.write_bytes(bytes(data))
    assert path.stat().st_size == size


# ---- the record and the choice (folders laid out as trainer.train leaves them) --------------------------


def test_the_marker_records_every_files_sha256(tmp_path):
    tag = make(tmp_path, 4, size=37)
    marker = json.loads((tag / ck.COMPLETE).read_text())
    assert set(marker["sha256"]) == set(marker["files"]) == {MODEL, OPTIM, ck.MODEL_CONFIG}
    for rel, digest in marker["sha256"].items():
        assert digest == hashlib.sha256((tag / rel).read_bytes()).hexdigest()
    # what another rank hashed where it wrote the file is taken as it is
    again = ck.mark_complete(tag, 4, 2, hashes={OPTIM: "ab" * 32})
    assert again["sha256"][OPTIM] == "ab" * 32 and again["sha256"][MODEL] == marker["sha256"][MODEL]


def test_a_damaged_file_falls_back_to_the_previous_complete_checkpoint(tmp_path):
    for step in (2, 4, 6):
        make(tmp_path, step)
    flip(tmp_path / "global_step6" / OPTIM, 10)
    assert ck.checkpoint_state(tmp_path / "global_step6") == ("complete", "")  # sizes agree
    lines = []
    assert ck.intact_resume((str(tmp_path), "global_step6", False), lines.append) == (
        str(tmp_path),
        "global_step4",
        False,
    )
    assert lines == [
        f"warning: checkpoint {tmp_path / 'global_step6'}: {OPTIM} does not match its sha256 in "
        f"complete.json (damaged since it was saved); falling back to global_step4"
    ]
    lines.clear()
    assert ck.intact_resume((str(tmp_path), "global_step4", False), lines.append)[1] == "global_step4"
    assert lines == []  # a clean checkpoint: not a word


def test_no_intact_checkpoint_left_is_refused_in_one_line(tmp_path):
    make(tmp_path, 2)
    flip(tmp_path / "global_step2" / MODEL, 1)
    with pytest.raises(JobError) as err:
        ck.intact_resume((str(tmp_path), "global_step2", False), print)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(
        f"checkpoint {tmp_path / 'global_step2'}: {MODEL} does not match its sha256 in complete.json"
    )
    assert "--no-verify" in str(err.value) and "verify-checkpoints: false" in str(err.value)


def test_checkpoints_without_hashes_resume_and_say_they_were_not_verified(tmp_path):
    tag = make(tmp_path, 2)
    marker = json.loads((tag / ck.COMPLETE).read_text())
    del marker["sha256"]  # complete.json as trainer.train wrote it before content hashes
    (tag / ck.COMPLETE).write_text(json.dumps(marker))
    make(tmp_path, 3, "legacy")
    for t in ("global_step2", "global_step3"):
        lines = []
        assert ck.intact_resume((str(tmp_path), t, False), lines.append)[1] == t
        assert lines == [
            f"note: checkpoint {tmp_path / t} predates content hashes in complete.json; not content-verified"
        ]


# ---- real training runs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(corpus, tmp_path_factory):
    """4 iterations, checkpoints at 2 and 4."""
    d = tmp_path_factory.mktemp("saved")
    cfg = write_config(
        d / "run.yml",
        corpus,
        **{"train-iters": 4, "save-interval": 2, "eval-interval": 1000, "save": str(d / "ckpt")},
    )
    proc = subprocess.run(trainer_cmd(cfg), env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return d / "ckpt"


def resume(corpus, save, tmp_path, *extra):
    """The same run started again on a copy of `save` (train-iters 4: from step 4 nothing is left to do)."""
    ckpt = tmp_path / "ckpt"
    if not ckpt.exists():
        shutil.copytree(save, ckpt)
    cfg = write_config(
        tmp_path / "run.yml", corpus, **{"train-iters": 4, "save-interval": 2, "save": str(ckpt)}
    )
    return subprocess.run(
        trainer_cmd(cfg, extra=extra), env=env(), capture_output=True, text=True, timeout=600
    )


def lines_of(proc, *words):
    return [x for x in (proc.stdout + proc.stderr).splitlines() if any(w in x for w in words)]


def test_the_trainer_records_hashes_of_what_it_wrote(saved):
    for step in (2, 4):
        tag = saved / f"global_step{step}"
        marker = json.loads((tag / ck.COMPLETE).read_text())
        assert {MODEL, OPTIM, ck.MODEL_CONFIG} <= set(marker["sha256"])
        assert ck.verify_checkpoint(tag) is None


def test_damaged_model_states_fall_back_to_the_previous_checkpoint(corpus, saved, tmp_path):
    shutil.copytree(saved, tmp_path / "ckpt")
    flip(tmp_path / "ckpt" / "global_step4" / MODEL)
    proc = resume(corpus, saved, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert lines_of(proc, "warning", "sha256") == [
        f"trainer.train: warning: checkpoint {tmp_path / 'ckpt' / 'global_step4'}: {MODEL} does not match its "
        f"sha256 in complete.json (damaged since it was saved); falling back to global_step2"
    ]
    assert f"resumed from {tmp_path / 'ckpt'}/global_step2 at iteration 2" in proc.stdout
    assert "iter 3/4" in proc.stdout and "nan" not in proc.stdout
    # the damaged folder is kept, under a name that says so; the new step 4 is intact
    assert [p.name.split("-")[0] for p in (tmp_path / "ckpt").glob("global_step4.*")] == [
        "global_step4.replaced"
    ]
    assert ck.verify_checkpoint(tmp_path / "ckpt" / "global_step4") is None


def test_damaged_optimizer_states_with_nothing_intact_to_fall_back_to_is_one_line(corpus, saved, tmp_path):
    shutil.copytree(saved, tmp_path / "ckpt")
    flip(tmp_path / "ckpt" / "global_step4" / OPTIM)
    flip(tmp_path / "ckpt" / "global_step2" / MODEL)
    proc = resume(corpus, saved, tmp_path)
    assert proc.returncode == 1
    assert lines_of(proc, "warning") == [
        f"trainer.train: warning: checkpoint {tmp_path / 'ckpt' / 'global_step4'}: {OPTIM} does not match its "
        f"sha256 in complete.json (damaged since it was saved); falling back to global_step2"
    ]
    errors = lines_of(proc, "error")
    assert len(errors) == 1 and errors[0].startswith(
        f"trainer.train: error: checkpoint {tmp_path / 'ckpt' / 'global_step2'}: {MODEL} does not match"
    )
    # --no-verify: the user knows; the newest resumes unchecked
    proc = resume(corpus, saved, tmp_path, "--no-verify")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {tmp_path / 'ckpt'}/global_step4 at iteration 4" in proc.stdout
    assert lines_of(proc, "warning", "sha256") == []


def test_a_clean_checkpoint_resumes_with_no_extra_message(corpus, saved, tmp_path):
    proc = resume(corpus, saved, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {tmp_path / 'ckpt'}/global_step4 at iteration 4" in proc.stdout
    assert lines_of(proc, "warning", "sha256", "verif", "note: checkpoint") == []


def test_verification_time_of_the_tiny_checkpoint(saved, record_property):
    tag = saved / "global_step4"
    size = sum(p.stat().st_size for p in tag.iterdir() if p.is_file())
    t0 = time.perf_counter()
    assert ck.verify_checkpoint(tag) is None
    seconds = time.perf_counter() - t0
    record_property("verify_seconds", seconds)
    record_property("verify_bytes", size)
    print(f"verified {tag.name}: {size} bytes in {seconds * 1000:.1f} ms")
    assert seconds < 30  # a few MB: milliseconds, even on a loaded machine


# ---- copies: trainer.export, the mirror, the download of `invoke export` --------------------------------


def test_export_refuses_a_damaged_checkpoint_in_one_line(saved, tmp_path):
    shutil.copytree(saved, tmp_path / "ckpt")
    flip(tmp_path / "ckpt" / "global_step4" / OPTIM)  # the fp32 master weights export reads at ZeRO 1
    cmd = [
        sys.executable,
        "-m",
        "trainer.export",
        "--checkpoint",
        str(tmp_path / "ckpt"),
        "--out",
        str(tmp_path / "hf"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"trainer.export: error: --checkpoint {tmp_path / 'ckpt' / 'global_step4'}: {OPTIM} does not match its "
        f"sha256 in complete.json (damaged since it was saved); nothing written (restore it, or export "
        f"unchecked with --no-verify)"
    ]
    assert not (tmp_path / "hf").exists() and [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_the_mirror_never_uploads_a_file_damaged_since_the_save(s3, tmp_path):
    from tests.support.trainer import objects
    from trainer.mirror import Mirror

    tag = make(tmp_path, 4)
    flip(tag / MODEL, 5)
    lines = []
    m = Mirror("s3://ckpt/run", log=lines.append)
    m.submit(tag)
    m.close()
    assert m.failed == ["global_step4"]
    assert [x for x in lines if "warning" in x] == [
        f"warning: mirroring global_step4 to s3://ckpt/run failed (JobError: {MODEL} does not match its sha256 "
        f"in complete.json (damaged since it was saved)); training continues, the local checkpoint is complete"
    ]
    assert "run/global_step4/complete.json" not in objects(s3) and "run/latest" not in objects(s3)


def test_a_copy_from_the_bucket_is_checked_against_what_the_trainer_wrote(s3, tmp_path):
    """`invoke export --local`'s download (the fetcher) checks complete.json's hashes as it downloads."""
    from k8s.export import download
    from trainer.mirror import Mirror

    tag = make(tmp_path / "save", 4, size=3000)
    m = Mirror("s3://ckpt/run", log=print)
    m.submit(tag)
    m.close()
    assert m.uploaded == ["global_step4"]
    sums = json.loads((tag / ck.COMPLETE).read_text())["sha256"]
    head = s3.head_object(Bucket="ckpt", Key=f"run/global_step4/{MODEL}")
    assert head["Metadata"]["sha256"] == sums[MODEL]  # the object says what the trainer wrote
    files, _ = download("s3://ckpt/run/global_step4", tmp_path / "good", None)
    assert files == 4 and ck.verify_checkpoint(tmp_path / "good") is None
    # the bucket's copy goes bad (same size): the download is refused, naming the file
    flip(tag / MODEL)
    s3.put_object(Bucket="ckpt", Key=f"run/global_step4/{MODEL}", Body=(tag / MODEL).read_bytes())
    with pytest.raises(JobError) as err:
        download("s3://ckpt/run/global_step4", tmp_path / "bad", None)
    assert f"checksum mismatch for {MODEL} (sha256 expected {sums[MODEL]}" in str(err.value)
    assert not (tmp_path / "bad" / MODEL).exists()


def test_two_ranks_hash_their_own_shards_and_share_the_check(corpus, tmp_path):
    """Rank 1's optimizer shard is hashed by rank 1 when saved; on resume the ranks split the files, and
    damage only rank 1 hashes is seen by both (they fall back together, one line from rank 0)."""
    save = tmp_path / "ckpt"
    cfg = write_config(
        tmp_path / "run.yml",
        corpus,
        **{"train-iters": 4, "save-interval": 2, "eval-interval": 1000, "save": str(save)},
    )
    proc = subprocess.run(trainer_cmd(cfg, nproc=2), env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shard = "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    assert shard in json.loads((save / "global_step4" / ck.COMPLETE).read_text())["sha256"]
    flip(save / "global_step4" / shard)
    proc = subprocess.run(trainer_cmd(cfg, nproc=2), env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert lines_of(proc, "warning", "sha256") == [
        f"trainer.train: warning: checkpoint {save / 'global_step4'}: {shard} does not match its sha256 in "
        f"complete.json (damaged since it was saved); falling back to global_step2"
    ]
    assert f"resumed from {save}/global_step2 at iteration 2" in proc.stdout
