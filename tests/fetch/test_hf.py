"""The fetcher against a stand-in for the Hugging Face Hub: a small HTTP server on 127.0.0.1
(tests/support/servers.py HubServer) that answers the model-info API with files metadata and
`resolve/<rev>/<file>` with the headers huggingface_hub checks. It stands in for the hub, which is
not reachable here; HF_ENDPOINT points huggingface_hub at it. Xet is not involved: the stand-in
never offers it (HF_HUB_DISABLE_XET=1 is set anyway)."""

from __future__ import annotations

import json

import pytest

from jobs.cli import JobError
from jobs.fetch import fetch
from jobs.fetch.cli import main
from tests.support.servers import HubServer
from tests.support.trees import assert_same_tree, make_tree

REPO = "EleutherAI/tiny-neox"
TOKEN = "hf_test_secret_token"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    files = make_tree(root, big=6 << 20, seed=1)
    files.pop("empty.txt")
    (root / "empty.txt").unlink()
    with HubServer(root, REPO, token=TOKEN) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        yield srv, files


def test_repo_exact_bytes_pinned_to_one_commit(hub, dest, capsys):
    srv, files = hub
    assert main([f"hf://{REPO}", str(dest), "--connections", "4"]) == 0
    assert_same_tree(dest, files)
    manifest = json.loads((dest / "fetch-manifest.json").read_text())
    assert manifest["revision"] == srv.commit
    resolves = [p for m, p, _ in srv.requests if "/resolve/" in p]
    assert resolves and all(f"/resolve/{srv.commit}/" in p for p in resolves)
    assert any(r for m, p, r in srv.requests if "layer_00" in p and r)  # ranged chunks
    out = capsys.readouterr()
    text = out.out + out.err + (dest / "fetch-stats.json").read_text() + json.dumps(manifest)
    assert TOKEN not in text
    assert fetch(f"hf://{REPO}@main", dest)["bytes_moved"] == 0


def test_lfs_sha256_and_git_blob_id_are_checked(hub, dest):
    srv, files = hub
    big = srv.root / "global_step150000/layer_00-model_00-model_states.pt"
    data = bytearray(big.read_bytes())
    data[-1] ^= 1
    big.write_bytes(bytes(data))  # the served bytes no longer match the published sha256
    with pytest.raises(JobError, match="checksum mismatch for .*layer_00.*sha256 expected.*LFS sha256"):
        fetch(f"hf://{REPO}", dest)
    assert not (dest / "global_step150000/layer_00-model_00-model_states.pt").exists()
    big.write_bytes(files["global_step150000/layer_00-model_00-model_states.pt"])
    (srv.root / "latest").write_bytes(b"global_step150001")  # same size, other git blob
    with pytest.raises(JobError, match="checksum mismatch for latest .*git-sha1.*git blob id"):
        fetch(f"hf://{REPO}", dest / "fresh")


def test_missing_repo_revision_and_bad_token(hub, dest, monkeypatch):
    srv, files = hub
    with pytest.raises(JobError, match="hf://EleutherAI/nope: repository not found"):
        fetch("hf://EleutherAI/nope", dest)
    with pytest.raises(JobError, match="revision not found"):
        fetch(f"hf://{REPO}@v9", dest)
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(JobError, match=f"hf://{REPO}"):
        fetch(f"hf://{REPO}", dest)


def test_stand_in_answers_huggingface_hub_itself(hub, tmp_path):
    """The stand-in's fidelity: huggingface_hub's own hf_hub_download accepts its replies."""
    from huggingface_hub import hf_hub_download

    srv, files = hub
    path = hf_hub_download(
        REPO,
        "global_step150000/mp_rank_00_model_states.pt",
        endpoint=srv.url,
        token=TOKEN,
        cache_dir=tmp_path / "cache",
    )
    assert open(path, "rb").read() == files["global_step150000/mp_rank_00_model_states.pt"]


def test_dataset_repository(tmp_path, dest, monkeypatch):
    """hf://datasets/org/repo: the datasets API and resolve paths; huggingface_hub accepts the replies too."""
    from huggingface_hub import hf_hub_download

    root = tmp_path / "dataset"
    root.mkdir()
    files = {"data/train-00000.jsonl": b'{"text": "a"}\n' * 5000, "README.md": b"# a corpus\n"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    with HubServer(root, "someone/corpus", repo_type="dataset") as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        stats = fetch("hf://datasets/someone/corpus@main", dest)
        assert_same_tree(dest, files)
        assert stats["bytes_moved"] == sum(map(len, files.values()))
        assert all(
            p.startswith(("/api/datasets/", "/datasets/someone/corpus/resolve/")) for _, p, _ in srv.requests
        )
        path = hf_hub_download(
            "someone/corpus", "README.md", repo_type="dataset", endpoint=srv.url, cache_dir=tmp_path / "cache"
        )
        assert open(path, "rb").read() == files["README.md"]
        with pytest.raises(JobError, match="hf://datasets/someone/nope: repository not found"):
            fetch("hf://datasets/someone/nope", dest / "x")


@pytest.mark.parametrize("url", ["hf://datasets/only-one-part", "hf://a/b/c", "hf://"])
def test_malformed_hub_urls_name_the_forms(url, dest):
    with pytest.raises(JobError, match=r"expected hf://org/repo\[@revision\] or hf://datasets/org/repo"):
        fetch(url, dest)
