"""Which checkpoints count: complete.json written last, resume choice, moving aside, pruning (no DeepSpeed:
folders laid out as DeepSpeed and trainer.train leave them)."""

from __future__ import annotations

import json

import pytest

from tests.support.trainer import make
from trainer import checkpoint as ck


def test_marker_lists_every_file_with_its_size(tmp_path):
    tag = make(tmp_path, 4, size=37)
    (tag / ".model_config.json.x.tmp").write_text("{")  # an interrupted atomic write: not part of it
    marker = json.loads((tag / ck.COMPLETE).read_text())
    assert marker["iteration"] == 4 and marker["world_size"] == 1 and marker["tag"] == "global_step4"
    assert marker["files"] == {
        "model_config.json": (tag / ck.MODEL_CONFIG).stat().st_size,
        "mp_rank_00_model_states.pt": 37,
        "zero_pp_rank_0_mp_rank_00_optim_states.pt": 37,
    }
    assert ck.checkpoint_state(tag) == ("complete", "")
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"short")  # damaged after the fact
    assert ck.checkpoint_state(tag)[0] == "incomplete"


def test_resume_skips_the_tag_latest_names_when_it_is_incomplete(tmp_path):
    make(tmp_path, 4)
    make(tmp_path, 8, "flagged")  # killed between DeepSpeed's `latest` and complete.json
    (tmp_path / "latest").write_text("global_step8")
    tag, notes = ck.choose_checkpoint(tmp_path)
    assert tag == "global_step4"
    assert notes == [
        f"incomplete checkpoint {tmp_path / 'global_step8'}, the one 'latest' names, left as is "
        f"(no complete.json: the run stopped while saving)"
    ]


def test_resume_takes_the_newest_complete_one_and_reports_newer_incomplete_ones(tmp_path):
    for step in (2, 6):
        make(tmp_path, step)
    make(tmp_path, 10, "incomplete")  # killed inside DeepSpeed's save: no model_config.json at all
    (tmp_path / "global_step12").mkdir()
    tag, notes = ck.choose_checkpoint(tmp_path)
    assert tag == "global_step6" and len(notes) == 2
    assert (
        all("left as is" in n for n in notes) and "global_step10" in notes[0] and "global_step12" in notes[1]
    )


def test_latest_naming_a_complete_checkpoint_wins_so_editing_it_rolls_back(tmp_path):
    for step in (2, 4):
        make(tmp_path, step)
    (tmp_path / "latest").write_text("global_step2")
    assert ck.choose_checkpoint(tmp_path) == ("global_step2", [])


def test_checkpoints_written_before_markers_still_resume(tmp_path):
    make(tmp_path, 3, "legacy")
    (tmp_path / "latest").write_text("global_step3")
    assert ck.choose_checkpoint(tmp_path) == ("global_step3", [])
    assert ck.checkpoint_state(tmp_path / "global_step3")[0] == "legacy"


def test_a_slim_checkpoint_in_the_save_folder_is_not_ours(tmp_path):
    slim = tmp_path / "global_step150000"  # the guide: load and save are one folder
    slim.mkdir()
    (slim / "layer_00-model_00-model_states.pt").write_bytes(b"x")
    (tmp_path / "latest").write_text("global_step150000")
    assert ck.choose_checkpoint(tmp_path) == (None, [])
    make(tmp_path, 50)
    (tmp_path / "latest").write_text("global_step50")
    assert ck.choose_checkpoint(tmp_path) == ("global_step50", [])
    assert ck.stale_checkpoints(tmp_path, 1) == []
    assert ck.slim_tag_dir(tmp_path) == slim  # still found for fine-tuning although `latest` moved on


def test_set_aside_renames_and_never_deletes(tmp_path):
    tag = make(tmp_path, 8, "flagged")
    moved = ck.set_aside(tag)
    assert not tag.exists() and moved.name.startswith("global_step8.incomplete-")
    assert (moved / "mp_rank_00_model_states.pt").read_bytes() == b"m" * 100
    again = ck.set_aside(make(tmp_path, 8, "flagged"))
    assert again != moved and again.exists() and moved.exists()
    assert ck.set_aside(make(tmp_path, 8)).name.startswith("global_step8.replaced-")
    assert ck.scan(tmp_path) == {}  # set-aside folders are not checkpoints


def test_pruning_counts_only_complete_checkpoints(tmp_path):
    for step in (2, 4, 6):
        make(tmp_path, step)
    make(tmp_path, 8, "flagged")
    make(tmp_path, 10, "incomplete")
    (tmp_path / "latest").write_text("global_step8")
    # the incomplete 8 and 10 neither count nor go; the newest complete (6) stays
    assert [p.name for p in ck.stale_checkpoints(tmp_path, 1)] == ["global_step2", "global_step4"]
    assert [p.name for p in ck.stale_checkpoints(tmp_path, 2)] == ["global_step2"]
    assert ck.stale_checkpoints(tmp_path, 3) == []
    # one being mirrored stays for a later round
    assert [p.name for p in ck.stale_checkpoints(tmp_path, 1, busy={tmp_path / "global_step2"})] == [
        "global_step4"
    ]


def test_pruning_keeps_the_one_latest_names(tmp_path):
    for step in (2, 10, 4, 8, 6):
        make(tmp_path, step)
    (tmp_path / "global_stepX").mkdir()  # not a checkpoint of ours: never touched
    (tmp_path / "latest").write_text("global_step4\n")  # e.g. a resumed run that went back
    assert [p.name for p in ck.stale_checkpoints(tmp_path, 2)] == ["global_step2", "global_step6"]
    assert ck.stale_checkpoints(tmp_path, 10) == []


def test_a_removal_cut_short_is_named_as_such_and_finished_later(tmp_path):
    tag = make(tmp_path, 2)
    ck.remove_checkpoint(tag)
    assert not tag.exists() and not (tmp_path / "global_step2.removing").exists()
    left = make(tmp_path, 4)
    left.rename(tmp_path / "global_step4.removing")  # as if killed inside the removal
    assert ck.scan(tmp_path) == {}
    assert [p.name for p in ck.finish_removals(tmp_path)] == ["global_step4.removing"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("state", ["flagged", "incomplete"])
def test_export_refuses_an_incomplete_tag_folder(tmp_path, state):
    from jobs.cli import JobError
    from trainer.export import find_checkpoint

    tag = make(tmp_path, 8, state)
    if state == "incomplete":
        (tag / ck.COMPLETE).write_text(json.dumps({"files": {"gone.pt": 3}}))
    with pytest.raises(JobError, match=r"global_step8: incomplete checkpoint"):
        find_checkpoint(tag)
    make(tmp_path, 4)
    (tmp_path / "latest").write_text("global_step8")
    assert find_checkpoint(tmp_path) == (tmp_path, "global_step4")
