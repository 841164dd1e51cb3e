"""`python -m jobs.fetch SOURCE DEST [...]`: parses arguments and nothing else."""

from __future__ import annotations

import argparse

from jobs.cli import run_main

from .fetch import PROG, Options, fetch, summary_line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.fetch",
        description="Parallel, resumable, verified download of model weights into DEST.",
    )
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="https://... (a file or a directory listing), s3://bucket/prefix, "
        "hf://org/repo[@revision], hf://datasets/org/repo[@revision], or a local path",
    )
    p.add_argument("dest", metavar="DEST", help="folder to fill (staging data lives in DEST/.fetch-staging)")
    p.add_argument(
        "--connections",
        type=int,
        default=16,
        metavar="N",
        help="parallel connections, shared by files and ranged chunks (default 16)",
    )
    p.add_argument(
        "--checksums", metavar="FILE", help="sha256sum/md5sum-style list, paths relative to SOURCE"
    )
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="only files whose relative path or name matches (repeatable)",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="skip files whose relative path or name matches (repeatable)",
    )
    p.add_argument(
        "--endpoint-url", metavar="URL", help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)"
    )
    p.add_argument(
        "--allow-redirect-host",
        action="append",
        default=[],
        metavar="HOST",
        help="follow https:// redirects to this other host (repeatable; * for any). Credentials "
        "are never sent along a redirect",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="re-hash files already in DEST instead of trusting their size and the manifest",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    opts = Options(
        connections=args.connections,
        checksums=args.checksums,
        include=args.include,
        exclude=args.exclude,
        endpoint_url=args.endpoint_url,
        verify=args.verify,
        redirect_hosts=args.allow_redirect_host,
    )

    def body() -> int:
        print(f"{PROG}: {summary_line(fetch(args.source, args.dest, opts))}")
        return 0

    return run_main(PROG, body, sigterm_unwinds=True)  # a stopped pod flushes its resume sidecars
