"""The fetcher against nginx (Debian) on 127.0.0.1: autoindex listings, per-connection rate limits,
a location without range support, plus a small Python server for 5xx replies and resets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.cli import JobError
from jobs.fetch import Options, fetch
from jobs.fetch.cli import main
from tests.support.servers import FileServer
from tests.support.trees import assert_same_tree


def test_listing_exact_bytes_and_manifest(nginx, weights, dest):
    root, files = weights
    stats = fetch(f"{nginx.url}/", dest, Options(connections=8))
    assert_same_tree(dest, files)
    manifest = json.loads((dest / "fetch-manifest.json").read_text())
    assert manifest["complete"] is True
    assert {f["path"]: f["size"] for f in manifest["files"]} == {k: len(v) for k, v in files.items()}
    assert stats["bytes_moved"] == sum(map(len, files.values()))
    # index pages are never saved; ranged chunks were used for the big file
    ranged = [r for r in nginx.log() if r[3] and "layer_00" in r[2]]
    assert len(ranged) >= 4
    assert not (dest / ".fetch-staging").exists()
    assert json.loads((dest / "fetch-stats.json").read_text())["ok"] is True


def test_second_run_transfers_nothing(nginx, weights, dest):
    fetch(f"{nginx.url}/", dest, Options(connections=8))
    before = len(nginx.log())
    stats = fetch(f"{nginx.url}/", dest, Options(connections=8))
    assert stats["bytes_moved"] == 0 and stats["files_fetched"] == 0
    gets = [r for r in nginx.log()[before:] if r[1] == "GET" and not r[2].endswith("/")]
    assert gets == []  # only listings and HEADs


def test_verify_refetches_a_corrupted_file(nginx, weights, dest):
    root, files = weights
    fetch(f"{nginx.url}/", dest, Options(connections=4))
    victim = dest / "global_step150000/mp_rank_00_model_states.pt"
    data = bytearray(victim.read_bytes())
    data[10] ^= 0xFF  # same size: only --verify notices
    victim.write_bytes(bytes(data))
    assert fetch(f"{nginx.url}/", dest, Options(connections=4))["files_fetched"] == 0
    stats = fetch(f"{nginx.url}/", dest, Options(connections=4, verify=True))
    assert stats["files_fetched"] == 1
    assert_same_tree(dest, files)


def test_single_file_and_include_exclude(nginx, weights, dest):
    root, files = weights
    fetch(f"{nginx.url}/configs/20B.yml", dest)
    assert (dest / "20B.yml").read_bytes() == files["configs/20B.yml"]
    d2 = dest / "sub"
    fetch(f"{nginx.url}/", d2, Options(include=["*.pt"], exclude=["*space*"]))
    got = sorted(p.relative_to(d2).as_posix() for p in d2.rglob("*.pt"))
    assert got == [
        "global_step150000/layer_00-model_00-model_states.pt",
        "global_step150000/mp_rank_00_model_states.pt",
    ]


def test_rate_limited_connections_run_in_parallel(nginx, weights, dest):
    # /slow/ is limited to 4 MB/s per connection: 8 connections must beat one by a wide margin.
    root, files = weights
    stats = fetch(
        f"{nginx.url}/slow/global_step150000/layer_00-model_00-model_states.pt", dest, Options(connections=8)
    )
    one_conn_s = len(files["global_step150000/layer_00-model_00-model_states.pt"]) / 4e6
    assert stats["seconds"] < one_conn_s / 3, stats


def test_no_range_support_falls_back_to_one_stream(nginx, weights, dest):
    root, files = weights
    before = len(nginx.log())
    fetch(f"{nginx.url}/norange/", dest, Options(connections=8))
    assert_same_tree(dest, files)
    big = [r for r in nginx.log()[before:] if "layer_00" in r[2] and r[1] == "GET"]
    assert all(r[0] == 200 for r in big)
    # one full body, not one per chunk: the fetcher planned a single stream from HEAD's headers
    assert sum(r[4] for r in big) == len(files["global_step150000/layer_00-model_00-model_states.pt"])


def test_404_fails_at_once_naming_the_url(nginx, dest, capsys):
    url = f"{nginx.url}/no/such/file.pt"
    assert main([url, str(dest)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and url in err[0] and "404" in err[0]


def test_403_and_empty_listing(nginx, weights, dest, tmp_path):
    with pytest.raises(JobError, match="403"):
        fetch(f"{nginx.url}/deny/x", dest)
    (weights[0] / "emptydir").mkdir(exist_ok=True)
    try:
        with pytest.raises(JobError, match="no files"):
            fetch(f"{nginx.url}/emptydir/", dest)
    finally:
        (weights[0] / "emptydir").rmdir()


def test_checksum_mismatch_is_not_renamed_into_place(nginx, weights, dest, tmp_path, capsys):
    root, files = weights
    import hashlib

    sums = tmp_path / "SHA256SUMS"
    lines = [f"{hashlib.sha256(d).hexdigest()}  {p}" for p, d in files.items() if p != "configs/20B.yml"]
    lines.append(f"{'0' * 64}  configs/20B.yml")
    sums.write_text("\n".join(lines) + "\n")
    rc = main([f"{nginx.url}/", str(dest), "--checksums", str(sums)])
    err = capsys.readouterr().err
    assert rc == 1 and "checksum mismatch for configs/20B.yml" in err and str(sums) in err
    assert not (dest / "configs/20B.yml").exists()
    assert not list((dest / ".fetch-staging").rglob("20B.yml*"))
    # every other file was verified and moved into place, and is recorded for the re-run
    assert (dest / "latest").read_bytes() == files["latest"]
    manifest = json.loads((dest / "fetch-manifest.json").read_text())
    assert manifest["complete"] is False and "configs/20B.yml" not in {f["path"] for f in manifest["files"]}


def test_md5_checksums_accepted(nginx, weights, dest, tmp_path):
    import hashlib

    root, files = weights
    sums = tmp_path / "MD5SUMS"
    sums.write_text("".join(f"{hashlib.md5(d).hexdigest()} *./{p}\n" for p, d in files.items()))
    fetch(f"{nginx.url}/", dest, Options(checksums=str(sums)))
    assert_same_tree(dest, files)


@pytest.fixture
def fast_backoff(monkeypatch):
    from jobs import retry

    monkeypatch.setattr(retry.Backoff, "base", 0.02)


def test_retries_on_5xx_and_resets(weights, dest, fast_backoff):
    root, files = weights
    with FileServer(root) as srv:
        srv.faults = {"503": 6, "reset": 4}
        stats = fetch(
            f"{srv.url}/global_step150000/layer_00-model_00-model_states.pt", dest, Options(connections=4)
        )
        assert srv.faults == {"503": 0, "reset": 0}
        assert stats["retries"] >= 10
    big = files["global_step150000/layer_00-model_00-model_states.pt"]
    assert (dest / "layer_00-model_00-model_states.pt").read_bytes() == big


def test_gives_up_when_errors_persist(weights, dest, fast_backoff):
    root, files = weights
    with FileServer(root) as srv:
        srv.faults = {"503": 10_000}
        srv.fault_match = "latest"
        with pytest.raises(JobError, match=r"latest.*503|503.*latest"):
            fetch(f"{srv.url}/latest", dest)


def test_local_source(weights, dest):
    root, files = weights
    stats = fetch(str(root), dest, Options(connections=4))
    assert_same_tree(dest, files)
    assert fetch(str(root), dest)["bytes_moved"] == 0 and stats["files_total"] == len(files)


def test_unknown_scheme_and_missing_path(dest, capsys):
    assert main(["ftp://x/y", str(dest)]) == 1
    assert main([str(Path("/nonexistent/weights")), str(dest)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert "ftp://x/y" in err[0] and "/nonexistent/weights" in err[1]
