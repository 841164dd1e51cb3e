"""A miniature of the slim checkpoint layout for the fetcher's tests, and a check that a copy matches it."""

from __future__ import annotations

import hashlib
from pathlib import Path

from jobs.fetch.staging import PartState, staging_dir

BIG = 24 << 20  # large enough for many ranged chunks (4 MiB minimum chunk)
BIG_FILE = "global_step150000/layer_00-model_00-model_states.pt"  # the big file's path in the tree


def make_tree(root: Path, big: int = BIG, seed: int = 0) -> dict[str, bytes]:
    """A miniature of the slim checkpoint layout: one big file, some small ones, nested folders."""
    rnd = __import__("random").Random(seed)
    files = {
        "20B_tokenizer.json": b'{"version": "1.0"}\n' * 50,
        "configs/20B.yml": b"hidden-size: 6144\n",
        "latest": b"global_step150000",
        "global_step150000/layer_00-model_00-model_states.pt": rnd.randbytes(big),
        "global_step150000/mp_rank_00_model_states.pt": rnd.randbytes(300_000),
        "global_step150000/name with space.pt": rnd.randbytes(5_000),
        "empty.txt": b"",
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


def assert_same_tree(dest: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        got = (dest / rel).read_bytes()
        assert len(got) == len(data) and hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), rel
    extra = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()} - set(files)
    assert extra <= {"fetch-manifest.json", "fetch-stats.json"}, extra


def staged_bytes(dest, skip_in_place: bool = False) -> int:
    """Bytes the sidecars record; with skip_in_place, not those of files already renamed into place
    (a kill between a file's rename and its sidecar's removal leaves both)."""
    total = 0
    for side in staging_dir(dest).rglob("*.part.json"):
        rel = side.relative_to(staging_dir(dest)).as_posix()[: -len(".part.json")]
        if skip_in_place and (dest / rel).exists():
            continue
        state = PartState.load(side)
        total += sum(c.done for c in state.chunks) if state else 0
    return total
