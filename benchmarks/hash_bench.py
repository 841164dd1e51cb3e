"""What content-verifying a checkpoint costs per GiB (issue 29): the trainer's own `hash_files` (sha256,
files hashed on threads) over files in the page cache, against the other strong hashes hashlib has.
Usage: python benchmarks/hash_bench.py [--gib 2] [--files 2] [--dir /tmp] [--out results.json]"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from trainer.checkpoint import hash_files

BLOCK = 8 << 20


def digest(path: Path, name: str) -> str:
    h = hashlib.new(name)
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(BLOCK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def timed(fn) -> float:
    fn()  # warm: the files are in the page cache, as right after a save
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=2.0, help="total size of the files")
    p.add_argument("--files", type=int, default=2)
    p.add_argument("--dir", default=tempfile.gettempdir())
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="hash-bench-", dir=args.dir))
    size = int(args.gib * (1 << 30) / args.files)
    paths = []
    for i in range(args.files):
        path = work / f"shard{i}.pt"
        with open(path, "wb") as f:
            for _ in range(0, size, BLOCK):
                f.write(os.urandom(min(BLOCK, size - f.tell())))
        paths.append(path)
    gib = sum(p.stat().st_size for p in paths) / (1 << 30)
    rows = {"sha256, hash_files (threads)": timed(lambda: hash_files(paths))}
    for name in ("sha256", "blake2b", "md5"):
        rows[f"{name}, one thread"] = timed(lambda name=name: [digest(p, name) for p in paths])
    with ThreadPoolExecutor(len(paths)) as pool:
        rows["blake2b, threads"] = timed(lambda: list(pool.map(lambda p: digest(p, "blake2b"), paths)))
    for path in paths:
        path.unlink()
    work.rmdir()
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "load": os.getloadavg()[0],
        "gib": round(gib, 3),
        "files": args.files,
        "s_per_gib": {k: round(v / gib, 3) for k, v in rows.items()},
    }
    for k, v in result["s_per_gib"].items():
        print(f"hash_bench: {k:30s} {v:.3f} s/GiB")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
