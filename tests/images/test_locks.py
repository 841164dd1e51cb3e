"""The lock files (images/<name>/*.lock, `invoke lock`): complete, hashed, in step with pyproject, and
the only thing the Dockerfiles install from. No network: the resolver is pip's report, given here."""

import dataclasses
import re
import shutil
from pathlib import Path

import pytest

from images.catalog import CATALOG, ImageSpec, LockLayer, by_name
from images.context import make_context
from images.lock import (
    LockError,
    check_lock,
    inputs,
    layers,
    pinned,
    read_lock,
    write_locks,
)

ROOT = Path(__file__).resolve().parents[2]
LOCKED = [s for s in CATALOG if s.extras]
HASHED_LINE = re.compile(r"^[a-z0-9-]+==\S+ --hash=sha256:[0-9a-f]{64}(  # requested)?$")


@pytest.mark.parametrize("spec", LOCKED, ids=lambda s: s.name)
def test_each_lock_requests_exactly_its_extras_pins_at_the_pyproject_versions(spec):
    want = pinned(inputs(ROOT, spec))
    requested = {
        item.name: item.version for rel in spec.lock_files for item in read_lock(ROOT / rel) if item.requested
    }
    assert requested == want
    check_lock(ROOT, spec)  # and no package is locked twice


@pytest.mark.parametrize("spec", LOCKED, ids=lambda s: s.name)
def test_every_lock_line_is_one_exact_pin_with_its_sha256(spec):
    for rel in spec.lock_files:
        body = [ln for ln in (ROOT / rel).read_text().splitlines() if ln and not ln.startswith("#")]
        assert body, rel
        for line in body:
            assert HASHED_LINE.match(line), f"{rel}: {line}"


def test_the_trainer_lock_puts_the_heavy_part_first_and_the_light_rest_last():
    spec = by_name()["trainer"]
    files = {Path(rel).name: {i.name: i for i in read_lock(ROOT / rel)} for rel in spec.lock_files}
    heavy, light = files["toolchain.lock"], files["requirements.lock"]
    assert {"torch", "triton", "nvidia-nccl-cu13", "nvidia-cuda-nvcc", "ninja", "pydantic"} <= set(heavy)
    # nvidia-ml-py: what DeepSpeed's setup.py adds when it builds for CUDA, pinned beside it
    assert set(files["deepspeed.lock"]) == {"deepspeed", "nvidia-ml-py"}
    assert {"boto3", "botocore", "determined", "tensorboard", "safetensors"} <= set(light)
    assert not any(name.startswith("nvidia-") or name in {"torch", "triton"} for name in light)


def test_a_lock_behind_pyproject_is_refused_naming_the_package(tmp_path):
    shutil.copytree(ROOT / "images", tmp_path / "images", ignore=shutil.ignore_patterns("__pycache__"))
    text = (ROOT / "pyproject.toml").read_text()
    assert '"boto3==1.44.8"' in text
    (tmp_path / "pyproject.toml").write_text(text.replace('"boto3==1.44.8"', '"boto3==1.44.7"'))
    with pytest.raises(
        LockError, match=r"image 'fetcher': lock is stale \(boto3 is 1\.44\.7 in the inputs, 1\.44\.8 in "
    ):
        check_lock(tmp_path, by_name()["fetcher"])
    (tmp_path / "images" / "fetcher" / "requirements.lock").unlink()
    with pytest.raises(LockError, match=r"requirements\.lock is missing .*run `invoke lock`"):
        check_lock(tmp_path, by_name()["fetcher"])
    with pytest.raises(
        Exception, match=r"lock file images/fetcher/requirements\.lock is missing: run `invoke lock`"
    ):
        make_context(tmp_path, dataclasses.replace(by_name()["fetcher"], context=()))


def test_a_hand_edited_lock_line_without_hash_is_refused(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("# header\nboto3==1.44.8\n")
    with pytest.raises(LockError, match=r"requirements\.lock:2: not `name==version --hash=sha256:\.\.\.`"):
        read_lock(lock)


def test_inputs_must_be_exact_pins():
    with pytest.raises(LockError, match=r"'boto3>=1' is not pinned with =="):
        pinned(["boto3>=1"])


# ---- splitting one resolution into layers (a pip report written by hand) ----------------------


def _item(name, version, requires=(), requested=False, url=None, digest="ab" * 32):
    return {
        "metadata": {"name": name, "version": version, "requires_dist": list(requires)},
        "requested": requested,
        "download_info": {
            "url": url or f"https://files.example/{name}-{version}-py3-none-any.whl",
            "archive_info": {"hashes": {"sha256": digest}} if digest else {},
        },
    }


ENVIRONMENT = {"python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux"}
REPORT = {
    "environment": ENVIRONMENT,
    "install": [
        _item(
            "Torch",
            "2.0",
            ["cuda_toolkit[cublas]==1; platform_system == 'Linux'", "onlywin; sys_platform == 'win32'"],
            True,
        ),
        _item(
            "cuda-toolkit", "1", ["nvidia-cublas==1; extra == 'cublas'", "nvidia-nvcc==1; extra == 'nvcc'"]
        ),
        _item("nvidia-cublas", "1"),
        _item("nvidia-nvcc", "1"),  # installed for the light layer's sake only
        _item("onlywin", "1"),
        _item("deep", "0.1", ["torch", "einops"], True, url="https://files.example/deep-0.1.tar.gz"),
        _item("einops", "0.8"),
        _item("boto3", "1", ["nvidia-nvcc"], True),
    ],
}
SPLIT = ImageSpec(
    "t",
    "images/t/Dockerfile",
    (),
    extras=("x",),
    lock_layers=(
        LockLayer("heavy.lock", roots=("torch", "deep"), exclude=("deep",)),
        LockLayer("deep.lock", roots=("deep",)),
        LockLayer("rest.lock"),
    ),
    lock_sdists=("deep",),
)


def test_layers_follow_markers_and_extras_and_leave_the_rest_to_the_last():
    parts = {file: [i.name for i in items] for file, items in layers(ROOT, SPLIT, REPORT).items()}
    assert parts == {
        "heavy.lock": ["cuda-toolkit", "einops", "nvidia-cublas", "torch"],
        "deep.lock": ["deep"],
        "rest.lock": ["boto3", "nvidia-nvcc", "onlywin"],
    }
    torch = layers(ROOT, SPLIT, REPORT)["heavy.lock"][-1]
    assert torch.line() == f"torch==2.0 --hash=sha256:{'ab' * 32}  # requested"


def test_a_source_archive_or_a_missing_hash_is_refused():
    no_sdist = ImageSpec("t", "images/t/Dockerfile", (), extras=("x",))
    with pytest.raises(LockError, match=r"deep resolved to a source archive \(deep-0\.1\.tar\.gz\)"):
        layers(ROOT, no_sdist, REPORT)
    report = {"environment": ENVIRONMENT, "install": [_item("boto3", "1", digest=None)]}
    with pytest.raises(LockError, match="the index gave no sha256 for boto3"):
        layers(ROOT, no_sdist, report)


def test_write_locks_writes_every_layer_and_keeps_the_old_lock_when_resolving_fails(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname="x"\n[project.optional-dependencies]\nx=["torch==2.0", "deep==0.1", "boto3==1"]\n'
    )
    (tmp_path / "images" / "t").mkdir(parents=True)
    written = write_locks(
        tmp_path, ["t"], log=lambda line: None, resolver=lambda reqs: REPORT, catalog=(SPLIT,)
    )
    assert [p.name for p in written] == ["heavy.lock", "deep.lock", "rest.lock"]
    check_lock(tmp_path, SPLIT)
    before = (tmp_path / "images/t/rest.lock").read_text()
    assert "boto3==1 --hash=sha256:" in before

    def offline(reqs):
        raise LockError("pip could not resolve the requirements: no index")

    with pytest.raises(LockError, match="no index"):
        write_locks(tmp_path, None, log=lambda line: None, resolver=offline, catalog=(SPLIT,))
    assert (tmp_path / "images/t/rest.lock").read_text() == before
    assert sorted(p.name for p in (tmp_path / "images/t").iterdir()) == [
        "deep.lock",
        "heavy.lock",
        "rest.lock",
    ]
    with pytest.raises(LockError, match="unknown image 'nope'"):
        write_locks(tmp_path, ["nope"], log=lambda line: None, resolver=offline, catalog=(SPLIT,))


# ---- the Dockerfiles install from the locks only ----------------------------------------------


def _stages(dockerfile: Path) -> list[tuple[str, str, str]]:
    """(stage name, the stage it builds on, its text) for each FROM of a Dockerfile."""
    out = []
    for chunk in re.split(r"(?m)^(?=FROM )", dockerfile.read_text())[1:]:
        head = re.match(r"FROM (\S+)(?: AS (\S+))?", chunk)
        out.append((head[2] or "(shipped)", head[1], chunk))
    return out


@pytest.mark.parametrize("spec", LOCKED, ids=lambda s: s.name)
def test_every_pip_install_takes_a_lock_with_require_hashes(spec):
    text = (ROOT / spec.dockerfile).read_text()
    installs = re.findall(r"pip install[^\n&]*", text.replace("\\\n", " "))
    locked = [cmd for cmd in installs if "--require-hashes" in cmd]
    # The manual-dispatch overrides (empty by default) are the one way around the lock.
    assert all("$TORCH_VERSION" in cmd or "$CUDA_SERIES" in cmd for cmd in installs if cmd not in locked)
    copied = re.findall(r"^COPY (images/\S+\.lock) ", text, flags=re.M)
    assert sorted(copied) == sorted(spec.lock_files)
    used = [m for cmd in locked for m in re.findall(r"-r /tmp/(\S+\.lock)", cmd)]
    assert sorted(used) == sorted(Path(rel).name for rel in spec.lock_files)


def test_a_light_pin_reaches_only_the_deps_stage_of_the_trainer():
    """requirements.lock enters only the `deps` stage, which no build stage builds on: a change there
    reinstalls no torch and recompiles neither DeepSpeed's ops nor the kernels; the shipped stage
    copies the heavy venv before it, so that layer stays too."""
    stages = _stages(ROOT / "images/trainer/Dockerfile")
    parents = {name: parent for name, parent, _ in stages}
    holding = [name for name, _, text in stages if "requirements.lock" in text]
    assert holding == ["deps"]
    assert "deps" not in parents.values()
    for stage in ("toolchain", "deepspeed", "venv", "kernels"):
        chain, node = [], stage
        while node in parents:
            chain.append(node)
            node = parents[node]
        assert "deps" not in chain, stage
    shipped = stages[-1][2]
    order = [shipped.index(f"COPY --from={s} ") for s in ("venv", "kernels", "deps")]
    assert order == sorted(order) and shipped.index("COPY jobs ") > order[-1]
