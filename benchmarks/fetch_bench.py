"""Fetcher benchmark: one large file plus small ones on loopback from nginx, 20 MB/s per connection;
the fetcher vs `aria2c -x16 -s16` (alternating, repeated, medians) vs `wget -r` (one stream), then the
fetcher killed (SIGKILL) at 50% and resumed, counting every byte nginx sent.

    python benchmarks/fetch_bench.py --layout many-files   # 1536 MB + 200 x 2.5 MB (the first benchmark)
    python benchmarks/fetch_bench.py --layout one-large    # 1200 MB + 20 x 2 MB
    python benchmarks/fetch_bench.py --large-mb 1536 --small 200 --small-mb 2.5 [--skip-wget] [--skip-resume]

The throttle (--throttle): `pacing` (default) has the kernel pace each of nginx's TCP connections at the
rate (SO_MAX_PACING_RATE, benchmarks/fetch_throttle.py), the same for every request on it; `nginx` is
nginx's `limit_rate`, which lets the last sendfile burst (up to 2 MiB) of every request through free, so
a tool making more, smaller requests passes the cap (kept to compare with the earlier results). Before
the runs one new connection fetches 2 MB, 4 MiB and 40 MB and the rates are printed: the check that
the throttle holds and how much a new request gets free.

Both tools get the same connections; the fetcher crawls the autoindex listing, aria2c is given the URL list
(it cannot crawl). The fetcher verifies (sha256 of every file, fsync before rename); aria2c does neither.
The share of the connection cap is total bytes / seconds / (connections x 20 MB/s).
Needs nginx, wget, aria2c and (for pacing) a C compiler (Debian packages nginx-light or nginx, wget,
aria2, gcc). Prints a markdown table and writes JSON to --out."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file from a checkout
from benchmarks.fetch_throttle import build_shim, preloaded, probe  # noqa: E402
from tests.support.servers import Nginx  # noqa: E402

NGINX_RATE = "19532k"  # nginx k = 1024 bytes: 20.0 MB/s per connection
RATE_BYTES = {"pacing": 20_000_000, "nginx": 19532 * 1024}
PROBES = (2_000_000, 4 << 20, 40_000_000)  # one new connection each: what a request gets free
LAYOUTS = {"many-files": (1536, 200, 2.5), "one-large": (1200, 20, 2.0)}


def make_data(root: Path, large_mb: float, small: int, small_mb: float) -> dict[str, int]:
    sizes = {"global_step150000/layer_00-model_00-model_states.pt": int(large_mb * 1e6)}
    sizes.update({f"global_step150000/layer_{i:02d}-small.pt": int(small_mb * 1e6) for i in range(small)})
    for rel, size in sizes.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as f:
            left = size
            while left:
                n = min(left, 64 << 20)
                f.write(os.urandom(n))
                left -= n
    return sizes


def digest_tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith("fetch-") and ".fetch-staging" not in p.parts:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while b := f.read(8 << 20):
                    h.update(b)
            out[p.relative_to(root).as_posix()] = h.hexdigest()
    return out


def sending(port: int) -> int:
    """nginx's connections with bytes queued to send right now (/proc/net/tcp: local port, ESTABLISHED,
    tx_queue > 0): the connections a tool really keeps busy, whatever it was told."""
    n = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "01" and int(fields[4].split(":")[0], 16):
                n += 1
    return n


def timed(nginx: Nginx, cmd: list[str], **kw) -> tuple[float, int, int]:
    """Seconds, bytes nginx sent, and the most connections sending at once (sampled every 50 ms)."""
    before = nginx.bytes_sent()
    most, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            most[0] = max(most[0], sending(nginx.port))

    sampler = threading.Thread(target=sample, daemon=True)
    t = time.monotonic()
    sampler.start()
    try:
        subprocess.run(cmd, check=True, **kw)
    finally:
        secs = time.monotonic() - t
        stop.set()
        sampler.join()
    time.sleep(0.2)  # let nginx write its access log
    return secs, nginx.bytes_sent() - before, most[0]


def staged(dest: Path, sizes: dict[str, int]) -> int:
    """Bytes a killed fetch would keep: files in place plus sidecar-recorded partial bytes."""
    total = sum(s for rel, s in sizes.items() if (dest / rel).exists())
    for side in (dest / ".fetch-staging").rglob("*.part.json"):
        try:
            total += sum(c[2] for c in json.loads(side.read_text())["chunks"])
        except (OSError, ValueError, KeyError):
            pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layout", choices=sorted(LAYOUTS), default=None, help="preset sizes (else the flags)")
    ap.add_argument("--large-mb", type=float, default=1536)
    ap.add_argument("--small", type=int, default=200)
    ap.add_argument("--small-mb", type=float, default=2.5)
    ap.add_argument("--skip-resume", action="store_true")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default="benchmarks/fetch_results.json")
    ap.add_argument("--skip-wget", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--throttle", choices=("pacing", "nginx"), default="pacing")
    ap.add_argument(
        "--also-connections",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="also time the fetcher with N connections (repeatable)",
    )
    args = ap.parse_args()
    if args.layout:
        args.large_mb, args.small, args.small_mb = LAYOUTS[args.layout]
    rate = RATE_BYTES[args.throttle]
    cap = args.connections * rate

    work = Path(tempfile.mkdtemp(prefix="fetch-bench-", dir=args.workdir))
    nginx = None
    try:
        data = work / "data"
        sizes = make_data(data, args.large_mb, args.small, args.small_mb)
        total = sum(sizes.values())
        want = digest_tree(data)
        os.sync()  # the data's own writeback must not land on the first timed run
        if args.throttle == "pacing":  # nginx's sockets paced by the kernel; served from / (no limit_rate)
            with preloaded(build_shim(work), rate):
                nginx = Nginx(data, work / "nginx", rate=NGINX_RATE).start()
            base = f"{nginx.url}/"
        else:
            nginx = Nginx(data, work / "nginx", rate=NGINX_RATE).start()
            base = f"{nginx.url}/slow/"
        large = f"{base}{next(iter(sizes))}"
        probes = {n: round(n / probe(large, n) / 1e6, 1) for n in PROBES}
        print(
            f"throttle {args.throttle}: one new connection fetching "
            + ", ".join(f"{n / 1e6:.1f} MB at {r} MB/s" for n, r in probes.items())
            + f" (rate {rate / 1e6:.1f} MB/s)",
            flush=True,
        )
        loads = [os.getloadavg()[0]]
        rows: dict[str, list[tuple[float, int, int]]] = {}

        def med_rate(v: list[tuple[float, int, int]]) -> float:
            return round(total / statistics.median(s for s, _, _ in v) / 1e6, 1)

        def check(dest: Path, name: str) -> None:
            got = digest_tree(dest)
            assert got == want, f"{name}: output differs ({len(got)} files vs {len(want)})"
            shutil.rmtree(dest)

        # the fetcher and aria2c, alternating, `--repeat` times each (the machine is shared: medians)
        urls = work / "urls.txt"
        urls.write_text("".join(f"{base}{rel}\n  out={rel}\n" for rel in sizes))

        def fetcher(n: int):
            return lambda d: [sys.executable, "-m", "jobs.fetch", base, str(d), "--connections", str(n)]

        aria2c_name = f"aria2c -x{args.connections} -s{args.connections} (URL list given)"
        tools = {
            f"jobs.fetch --connections {args.connections}": fetcher(args.connections),
            # aria2c is given the URL list: it cannot crawl a listing
            aria2c_name: lambda d: [
                "aria2c",
                f"-x{args.connections}",
                f"-s{args.connections}",
                "-i",
                str(urls),
                "-d",
                str(d),
                "-q",
                "--file-allocation=none",
                "--auto-file-renaming=false",
            ],
        }
        for n in args.also_connections:  # e.g. as many as aria2c really opens (it adds -j's other downloads)
            tools[f"jobs.fetch --connections {n}"] = fetcher(n)
        for r in range(args.repeat):
            for name, cmd in list(tools.items())[:: 1 if r % 2 == 0 else -1]:  # who goes first alternates
                dest = work / "out"
                run = timed(nginx, cmd(dest), stdout=subprocess.DEVNULL)
                check(dest, name)
                rows.setdefault(name, []).append(run)
                loads.append(os.getloadavg()[0])

        if not args.skip_wget:
            dest = work / "wget"
            run = timed(
                nginx,
                [
                    "wget",
                    "-r",
                    "-np",
                    "-nH",
                    "--cut-dirs=1",
                    "-q",
                    "-R",
                    "index.html*",
                    "-P",
                    str(dest),
                    base,
                ],
            )
            check(dest, "wget")
            rows["wget -r -np (one stream)"] = [run]

        result = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cores": os.cpu_count(),
            "layout": args.layout,
            "total_bytes": total,
            "files": len(sizes),
            "workdir": str(work.parent),  # the data and every output: a disk, or tmpfs (/dev/shm)
            "throttle": args.throttle,
            "rate_per_connection_bytes": rate,
            "probe_MB_per_s": {str(n): r for n, r in probes.items()},
            "load_1min_before_and_after_each_run": loads,
            "connections": args.connections,
            "runs": {
                k: {
                    "seconds": [round(s, 2) for s, _, _ in v],
                    "median_MB_per_s": med_rate(v),
                    "share_of_cap": round(total / statistics.median(s for s, _, _ in v) / cap, 3),
                    "bytes_sent_by_nginx": [b for _, b, _ in v],
                    "most_connections_sending": [c for _, _, c in v],
                }
                for k, v in rows.items()
            },
        }
        if not args.skip_resume:
            result["resume"] = resume(nginx, base, work, sizes, total, args.connections, check)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(
            f"{result['date']}, {os.cpu_count()} CPUs, 1-min load {min(loads):.1f}-{max(loads):.1f}; "
            f"{len(sizes)} files, {total / 1e6:.0f} MB; throttle {args.throttle}, cap {args.connections} x "
            f"{rate / 1e6:.1f} MB/s = {cap / 1e6:.0f} MB/s"
        )
        print(
            "| tool | seconds (each run) | median MB/s | share of cap | most connections sending at once "
            "| max bytes sent by nginx |\n|---|---|---|---|---|---|"
        )
        for k, v in rows.items():
            r = result["runs"][k]
            print(
                f"| {k} | {', '.join(f'{s:.2f}' for s, _, _ in v)} | {r['median_MB_per_s']} | "
                f"{r['share_of_cap']:.0%} | {max(c for _, _, c in v)} | {max(b for _, b, _ in v)} |"
            )
        aria2c = statistics.median(s for s, _, _ in rows[aria2c_name])
        for k in tools:
            if k != aria2c_name:
                mine = statistics.median(s for s, _, _ in rows[k])
                print(f"{k}: throughput / aria2c's (median seconds): {aria2c / mine:.2f}x")
        if "resume" in result:
            r = result["resume"]
            print(
                f"resume after SIGKILL at {r['kept_after_kill'] / total:.0%}: nginx sent "
                f"{r['nginx_bytes_sent_both_runs']} bytes in both runs = {r['ratio_to_total']:.3f} x the data"
            )
    finally:
        if nginx:
            nginx.stop()
        shutil.rmtree(work, ignore_errors=True)


def resume(
    nginx: Nginx, base: str, work: Path, sizes: dict[str, int], total: int, connections: int, check
) -> dict:
    """SIGKILL at 50%, then re-run; nginx counts every byte it sent for both runs."""
    dest = work / "resume"
    before = nginx.bytes_sent()
    t = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.fetch", base, str(dest), "--connections", str(connections)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while staged(dest, sizes) < total / 2 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = staged(dest, sizes)
    subprocess.run(
        [sys.executable, "-m", "jobs.fetch", base, str(dest), "--connections", str(connections)], check=True
    )
    resume_secs = time.monotonic() - t
    time.sleep(0.2)
    resume_sent = nginx.bytes_sent() - before
    run2 = json.loads((dest / "fetch-stats.json").read_text())
    check(dest, "resume")

    return {
        "kept_after_kill": kept,
        "second_run_bytes_moved": run2["bytes_moved"],
        "nginx_bytes_sent_both_runs": resume_sent,
        "ratio_to_total": round(resume_sent / total, 3),
        "seconds": round(resume_secs, 1),
    }


if __name__ == "__main__":
    main()
