"""Export a checkpoint of ours to a Hugging Face folder: `python -m trainer.export --checkpoint DIR --out DIR`.

DIR is a `save` folder of trainer.train (`latest` + TAG/), a tag folder itself, or a Determined
checkpoint directory holding one (NeoXTrial saves a DeepSpeed checkpoint into it). Weights come
from the fp32 master copy for ZeRO stages 1-3 (DeepSpeed's zero_to_fp32) and from the module state
at stage 0 (bf16 for a `fused-optimizer-step` run, whose fp32 masters stay in its optimizer state). The output loads with `transformers.GPTNeoXForCausalLM.from_pretrained`.

Only complete checkpoints are exported (trainer.checkpoint: `complete.json`, or a folder written before
markers existed); for a `save` folder that is the one `latest` names if complete, else the newest
complete one. `--out` must not exist or be an empty folder: an existing one is never replaced.

Before converting, every file is checked against the sha256 complete.json records (`--no-verify` skips it;
checkpoints written before content hashes, and Determined's, are exported with a note). The folder is
written under a temporary name beside `--out` holding an owner file (pid, host); a rerun removes such
folders of exports that were killed (same host, pid gone), one line each, and nothing else.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from jobs.cli import JobError, human_bytes, remove_temporary, run_main, stale_temporaries, write_json_atomic
from trainer import checkpoint, model_card

PROG = "trainer.export"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def find_checkpoint(path: str | Path) -> tuple[Path, str]:
    """(folder with `latest`, tag) of our checkpoint at or directly under `path`."""
    path = Path(path)
    if not path.exists():
        raise JobError(f"--checkpoint {path}: does not exist")
    if (path / checkpoint.MODEL_CONFIG).is_file() or (path / checkpoint.COMPLETE).is_file():
        state, why = checkpoint.checkpoint_state(path)
        if state not in checkpoint.COMPLETE_STATES:
            raise JobError(f"--checkpoint {path}: incomplete checkpoint ({why})")
        return path.parent, path.name
    for candidate in (path, *sorted(p for p in path.iterdir() if p.is_dir())):
        tag = checkpoint.ds_checkpoint_tag(candidate)
        if tag:
            return candidate, tag
    raise JobError(
        f"--checkpoint {path}: no complete checkpoint of trainer.train here "
        f"(TAG/complete.json, or latest -> TAG/model_config.json)"
    )


def check_out(out: Path) -> None:
    """Never replace what is there: a file or a non-empty folder at --out is refused."""
    if out.is_dir() and any(out.iterdir()):
        raise JobError(
            f"--out {out}: folder exists and is not empty; name a new folder (nothing was written)"
        )
    if out.exists() and not out.is_dir():
        raise JobError(f"--out {out}: exists and is not a folder")


def load_state(folder: Path, tag: str) -> dict[str, torch.Tensor]:
    tag_dir = folder / tag
    if any(tag_dir.glob("*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return dict(get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=tag))
    files = sorted(tag_dir.glob("mp_rank_*_model_states.pt"))
    if not files:
        raise JobError(f"{tag_dir}: no mp_rank_00_model_states.pt")
    return torch.load(files[0], map_location="cpu", weights_only=False)["module"]


def clean_temporaries(*outs: Path) -> None:
    """Remove the temporary folders that killed exports to these places left (only provably ours)."""
    for out in outs:
        for tmp, pid in stale_temporaries(out):
            remove_temporary(tmp)
            print(f"{PROG}: removed {tmp}, left by an export to {out} that was stopped (pid {pid})")


def verify(folder: Path, tag: str) -> None:
    """The checkpoint's files against the sha256 its complete.json records, before anything is written."""
    tag_dir = folder / tag
    if checkpoint.recorded_hashes(tag_dir) is None:
        print(
            f"{PROG}: note: {tag_dir} predates content hashes in {checkpoint.COMPLETE}; not content-verified"
        )
        return
    damage = checkpoint.verify_checkpoint(tag_dir)
    if damage:
        raise JobError(
            f"--checkpoint {tag_dir}: {damage}; nothing written (restore it, or export unchecked with --no-verify)"
        )


def export(
    checkpoint_dir: str | Path,
    out: str | Path,
    dtype: str = "auto",
    merge: bool = False,
    base_out: str | Path | None = None,
    verify_content: bool = True,
) -> dict:
    clean_temporaries(*(Path(p) for p in (out, base_out) if p))
    check_out(Path(out))
    if base_out:
        check_out(Path(base_out))
    folder, tag = find_checkpoint(checkpoint_dir)
    if verify_content:
        verify(folder, tag)
    from trainer import lora

    if lora.is_lora_checkpoint(folder / tag):  # adapters only: a PEFT folder, or merged full weights
        stats = lora.export_checkpoint(
            folder, tag, Path(out), dtype, merge, Path(base_out) if base_out else None, DTYPES
        )
        write_json_atomic(Path(out).parent / f"{Path(out).name}-export-stats.json", stats)
        return stats
    if merge or base_out:
        raise JobError(
            f"--checkpoint {folder / tag}: a full checkpoint, not LoRA adapters; "
            f"--merge and --base-out apply to LoRA checkpoints only"
        )
    mcfg, neox = checkpoint.read_model_config(folder / tag)
    state = {k: v for k, v in load_state(folder, tag).items() if not k.startswith("rotary.")}
    if mcfg.tied_embeddings:
        state.pop("embed_out.weight", None)
    if dtype == "auto":
        dtype = {"fp16": "float16", "bf16": "bfloat16"}.get(neox.get("precision_name", ""), "float32")
    model = checkpoint.build_model(mcfg, {k: v.float() for k, v in state.items()})
    vocab_file = (neox.get("model") or {}).get("vocab_file")
    params = sum(t.numel() for t in model.state_dict().values())
    extra = {
        "generation_config.json": model_card.generation_config(neox),
        "README.md": model_card.card(neox, str(folder / tag), checkpoint.step_of(tag), params),
    }
    checkpoint.save_hf(model, out, DTYPES[dtype], tokenizer=vocab_file, replace=False, extra_files=extra)
    size = sum(p.stat().st_size for p in Path(out).glob("*.safetensors"))
    stats = {
        "checkpoint": str(folder / tag),
        "out": str(out),
        "dtype": dtype,
        "bytes": size,
        "parameters": sum(t.numel() for t in model.state_dict().values()),
    }
    write_json_atomic(Path(out).parent / f"{Path(out).name}-export-stats.json", stats)
    return stats


def export_anywhere(
    ckpt: str,
    out: str,
    work: str | None,
    dtype: str = "auto",
    merge: bool = False,
    base_out: str | None = None,
    verify_content: bool = True,
) -> dict:
    """`export` with either end on S3 (trainer.export_remote): fetch, convert, upload."""
    from trainer import export_remote as remote

    if not (remote.is_s3(ckpt) or remote.is_s3(out)):
        return export(ckpt, out, dtype, merge, base_out, verify_content)
    if work is None:
        if remote.is_s3(out):
            raise JobError("--out s3://...: give --work DIR, a folder with room for the export")
        work = str(Path(out).parent / f".{Path(out).name}.work")
    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    local_out = work_dir / "hf" if remote.is_s3(out) else Path(out)
    if remote.is_s3(out):
        remote.split(out, "--out")
        check_out(local_out)
    source = remote.fetch_checkpoint(ckpt, work_dir) if remote.is_s3(ckpt) else ckpt
    stats = export(source, local_out, dtype, merge, base_out, verify_content)
    if remote.is_s3(out):
        remote.upload_folder(local_out, out)
        shutil.rmtree(local_out)
        stats["out"] = out
    if remote.is_s3(ckpt):
        remote.remove_download(work_dir)
        stats["checkpoint"] = ckpt
    try:
        work_dir.rmdir()  # ours, and empty once done; kept if anything else is in it
    except OSError:
        pass
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="save folder, tag folder or Determined checkpoint; or s3://BUCKET/PREFIX of one",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="Hugging Face folder to write (new, or an empty folder), or s3://BUCKET/PREFIX",
    )
    parser.add_argument(
        "--work",
        metavar="DIR",
        help="a folder of ours for an s3:// --checkpoint's download and an s3:// --out's files "
        "(default: beside a local --out; needed with an s3:// --out and an s3:// --checkpoint)",
    )
    parser.add_argument(
        "--dtype",
        choices=["auto", *DTYPES],
        default="auto",
        help="weights dtype (auto: the training precision; float32 for LoRA adapters)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="LoRA checkpoint: write the base with the adapters merged in, as a Hugging Face folder "
        "(default: a PEFT adapter folder)",
    )
    parser.add_argument(
        "--base-out",
        metavar="DIR",
        help="LoRA checkpoint: also write its base weights as a Hugging Face folder (for PEFT)",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="export without checking the checkpoint's files against the sha256 in its complete.json",
    )
    args = parser.parse_args(argv)

    def body() -> int:
        stats = export_anywhere(
            args.checkpoint, args.out, args.work, args.dtype, args.merge, args.base_out, not args.no_verify
        )
        what = f"{stats['kind']}, " if "kind" in stats else ""
        print(
            f"{PROG}: wrote {args.out} ({what}{stats['parameters'] / 1e6:.1f}M parameters, {stats['dtype']}, "
            f"{human_bytes(stats['bytes'])}) from {stats['checkpoint']}"
        )
        if stats.get("note"):
            print(f"{PROG}: note: {stats['note']}")
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
