"""https:// inputs and redirects: another host is refused unless allowed (--allow-redirect-host), and
credentials never go along a redirect, also when a reset makes the input resume. Real HTTP servers on
127.0.0.1 (the fetcher tests' FileServer); "localhost" stands for another host name."""

from __future__ import annotations

import json

import pytest

from jobs.cli import JobError
from jobs.preprocess import preprocess
from jobs.preprocess.__main__ import main
from tests.support.corpus import read_docs
from tests.support.servers import FileServer

TEXTS = [f"document {i}: redirected text " * (i % 5 + 1) for i in range(3000)]


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    (root / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return root


@pytest.fixture
def fast_backoff(monkeypatch):
    from jobs import retry

    monkeypatch.setattr(retry.Backoff, "base", 0.01)


def test_a_redirect_to_another_host_is_refused_unless_allowed(served, tmp_path, tokenizer_path, tokenizer):
    with FileServer(served) as a, FileServer(served) as b:
        a.redirects = {"/c.jsonl": f"http://localhost:{b.server_address[1]}/c.jsonl?X-Amz-Signature=s3cret"}
        with pytest.raises(JobError) as err:
            preprocess([f"{a.url}/c.jsonl"], tokenizer_path, tmp_path / "refused", workers=1)
        msg = str(err.value)
        assert f"{a.url}/c.jsonl: redirects to another host (http://localhost:" in msg
        assert "pass --allow-redirect-host localhost to follow it" in msg
        assert "s3cret" not in msg  # a signed query is a secret
        assert b.requests == []  # the other host was never asked
        assert not (tmp_path / "refused_text_document.bin").exists()

        preprocess(
            [f"{a.url}/c.jsonl"], tokenizer_path, tmp_path / "ok", workers=1, redirect_hosts=["localhost"]
        )
        assert [r for r in b.requests if r[0] == "GET"]
    assert read_docs(tmp_path / "ok_text_document") == [tokenizer.encode(t).ids for t in TEXTS]


def test_cli_refuses_in_one_line_and_follows_when_allowed(served, tmp_path, tokenizer_path, capsys):
    with FileServer(served) as a, FileServer(served) as b:
        a.redirects = {"/c.jsonl": f"http://localhost:{b.server_address[1]}/c.jsonl"}
        args = ["--input", f"{a.url}/c.jsonl", "--tokenizer", str(tokenizer_path), "--workers", "1"]
        assert main([*args, "--output-prefix", str(tmp_path / "no")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--allow-redirect-host localhost" in err[0], err
        out = str(tmp_path / "yes")
        assert main([*args, "--output-prefix", out, "--allow-redirect-host", "localhost"]) == 0
        assert main([*args, "--output-prefix", out + "-any", "--allow-redirect-host", "*"]) == 0
    assert len(read_docs(tmp_path / "yes_text_document")) == len(TEXTS)


def test_credentials_never_follow_a_redirect_nor_a_resume(served, tmp_path, tokenizer_path, fast_backoff):
    """user:password@ in the URL goes to the URL given only; the redirect target (same host) never gets an
    Authorization header, also when a reset mid-body makes the input reopen (and follow again)."""
    with FileServer(served) as srv:
        srv.redirects = {"/moved.jsonl": "/c.jsonl"}
        srv.faults, srv.fault_match = {"reset": 1}, "/c.jsonl"
        host = srv.url.removeprefix("http://")
        preprocess([f"http://user:s3cret@{host}/moved.jsonl"], tokenizer_path, tmp_path / "o", workers=1)
        assert srv.faults == {"reset": 0}  # the resume happened
    asked = [h for path, h in srv.seen_headers if path == "/moved.jsonl"]
    followed = [h for path, h in srv.seen_headers if path == "/c.jsonl"]
    assert len(asked) >= 2 and all(h.get("Authorization", "").startswith("Basic ") for h in asked)
    assert len(followed) >= 2 and all("Authorization" not in h for h in followed), followed
    assert len(read_docs(tmp_path / "o_text_document")) == len(TEXTS)
