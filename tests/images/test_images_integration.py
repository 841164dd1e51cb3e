"""Integration tests of the three shipped images on a real Docker engine and a real registry.

Builds run through the project's own builder on the local base image (`invoke base`), the
same Dockerfiles CI and users build. Containers run through testcontainers (Ryuk disabled:
its image cannot be pulled here; each test removes its containers)."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import pytest
import requests

from images.build import ImageError, build_images
from images.catalog import CATALOG, by_name
from images.context import host_ca_bundle
from images.push import push_image, write_lock

pytestmark = pytest.mark.integration

SHIPPED = [s.name for s in CATALOG if s.shipped]
CLIENT_TIMEOUT = 900  # seconds for one engine call, sized for the slowest container here
HELP_COMMAND = {
    "fetcher": ["--help"],
    "preprocessor": ["--help"],
    "trainer": ["python", "-m", "trainer.train", "--help"],
}


def run_container(
    image: str, command: list[str], entrypoint: str | None = None, volumes: dict | None = None, **kwargs
) -> tuple[int, str]:
    """Run a container to completion with testcontainers; return (exit code, logs). The client waits up
    to CLIENT_TIMEOUT for each engine call (docker-py's default 60 s is too short on a loaded 2-core
    machine while the trainer image imports torch and DeepSpeed)."""
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(image, docker_client_kw={"timeout": CLIENT_TIMEOUT}).with_command(command)
    for host, mount in (volumes or {}).items():
        container = container.with_volume_mapping(host, mount["bind"], mount["mode"])
    if entrypoint is not None:
        kwargs["entrypoint"] = entrypoint
    if kwargs:
        container = container.with_kwargs(**kwargs)
    container.start()
    try:
        wrapped = container.get_wrapped_container()
        try:
            code = wrapped.wait(timeout=CLIENT_TIMEOUT)["StatusCode"]
        except requests.exceptions.ConnectionError as exc:  # docker-py's read timeout
            raise AssertionError(f"{image} {command}: no exit within {CLIENT_TIMEOUT} s") from exc
        logs = wrapped.logs().decode(errors="replace")
    finally:
        container.stop()
    return code, logs


@pytest.mark.parametrize("name", SHIPPED)
def test_entrypoint_help_runs_as_non_root(built_images, name):
    ref = built_images[name].ref
    code, logs = run_container(ref, HELP_COMMAND[name])
    assert code == 0, logs[-2000:]
    assert "usage" in logs.lower()
    code, uid = run_container(ref, ["-c", "import os; print(os.getuid(), os.getgid())"], entrypoint="python")
    assert (code, uid.split()) == (0, ["1000", "1000"])


def test_images_carry_oci_labels(built_images, docker_engine):
    for name in SHIPPED:
        labels = docker_engine.images.get(built_images[name].ref).labels
        for key in ("source", "revision", "created"):
            assert labels.get(f"org.opencontainers.image.{key}"), (name, key)


def test_unchanged_images_are_not_rebuilt(built_images, docker_engine, base_image):
    root = Path(__file__).resolve().parents[2]
    again = build_images(root, None, base_image=base_image, client=docker_engine, log=lambda line: None)
    assert all(image.reused for image in again.values())
    assert {n: i.image_id for n, i in again.items()} == {n: i.image_id for n, i in built_images.items()}


def test_prune_untags_older_images_of_built_repositories_only(built_images, docker_engine, base_image):
    """`invoke build --prune`: an older fetcher image goes; the current images and other repositories stay."""
    import uuid

    from images.build import prune_stale_images

    stale = f"{built_images['fetcher'].repository}:stale{uuid.uuid4().hex[:8]}"
    docker_engine.images.get(base_image).tag(stale)  # any image other than the current fetcher
    lines: list[str] = []
    removed = prune_stale_images(docker_engine, built_images, log=lines.append)
    tags = {t for image in docker_engine.images.list() for t in image.tags}
    assert stale not in tags and removed >= 1, lines
    assert base_image in tags and all(image.ref in tags for image in built_images.values())


def test_build_failure_names_image_and_step(tmp_path, docker_engine, base_image):
    from images.catalog import ImageSpec

    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = []\n')
    (tmp_path / "Dockerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo building\nRUN exit 3\n"
    )
    broken = (ImageSpec("broken", "Dockerfile", ()),)
    with pytest.raises(
        ImageError, match=r"image 'broken' failed at Step \d+/\d+ : RUN exit 3: .*returned a non-zero code: 3"
    ):
        build_images(
            tmp_path,
            ["broken"],
            base_image=base_image,
            client=docker_engine,
            log=lambda line: None,
            catalog=broken,
            force=True,
        )


def test_push_pins_digests_that_pull_back_identical(built_images, docker_engine, registry, tmp_path):
    lock = tmp_path / "images.lock.json"
    refs = {
        name: push_image(docker_engine, built_images[name], f"{registry}/neox", log=lambda line: None)
        for name in ("fetcher", "preprocessor")
    }
    write_lock(lock, refs)
    pinned = json.loads(lock.read_text())["images"]
    for name, ref in pinned.items():
        assert re.fullmatch(rf"{re.escape(registry)}/neox/{name}@sha256:[0-9a-f]{{64}}", ref)
        docker_engine.images.remove(f"{registry}/neox/{name}:{built_images[name].tag}")
        pulled = docker_engine.images.pull(ref)
        assert pulled.id == built_images[name].image_id


def test_push_to_registry_refusing_credentials_fails_clearly(
    built_images, docker_engine, auth_registry, tmp_path
):
    lock = tmp_path / "images.lock.json"
    lock.write_text('{"images": {}}\n')
    with pytest.raises(
        ImageError, match=r"push of .*fetcher.* failed: .*(no basic auth credentials|unauthorized)"
    ):
        push_image(docker_engine, built_images["fetcher"], f"{auth_registry}/neox", log=lambda line: None)
    assert lock.read_text() == '{"images": {}}\n'


def test_push_to_unreachable_registry_fails_clearly(built_images, docker_engine, unused_port):
    with pytest.raises(
        ImageError, match=r"push of 127\.0\.0\.1:\d+/neox/fetcher:.* failed: .*connection refused"
    ):
        push_image(
            docker_engine,
            built_images["fetcher"],
            f"127.0.0.1:{unused_port}/neox",
            log=lambda line: None,
            attempts=2,
        )


def _extra_ca_blocks(image_bundle: bytes) -> list[bytes]:
    """PEM blocks the host trusts beyond the distribution's own bundle: what must never ship."""
    host = host_ca_bundle()
    if host is None:
        return []
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", host.read_bytes(), re.S)
    return [b for b in blocks if b not in image_bundle]


def _overlay_layer_dirs(image) -> list[Path] | None:
    """The image's layer folders when the engine is a local overlay2 one we can read, else None."""
    driver = image.attrs.get("GraphDriver") or {}
    data = driver.get("Data") or {}
    if driver.get("Name") != "overlay2" or "UpperDir" not in data:
        return None
    dirs = [Path(data["UpperDir"]), *(Path(d) for d in data.get("LowerDir", "").split(":") if d)]
    return dirs if all(d.is_dir() for d in dirs) else None


def _files_in_dirs(dirs: list[Path]) -> list[tuple[str, bytes | None]]:
    out = []
    for root in dirs:
        for path in root.rglob("*"):
            small = path.is_file() and not path.is_symlink() and path.stat().st_size < 4_000_000
            out.append((path.relative_to(root).as_posix(), path.read_bytes() if small else None))
    return out


class _ChunkStream(io.RawIOBase):
    """A read-only file over an iterator of byte chunks, so a saved image streams through tarfile."""

    def __init__(self, chunks):
        self._chunks, self._rest = iter(chunks), b""

    def readable(self):
        return True

    def readinto(self, buffer):
        while not self._rest:
            self._rest = next(self._chunks, b"")
            if not self._rest:
                return 0
        n = min(len(buffer), len(self._rest))
        buffer[:n], self._rest = self._rest[:n], self._rest[n:]
        return n


def _files_in_saved_image(image) -> list[tuple[str, bytes | None]]:
    out = []
    with tarfile.open(fileobj=io.BufferedReader(_ChunkStream(image.save(named=False))), mode="r|*") as saved:
        for member in saved:
            data = saved.extractfile(member) if member.isfile() else None
            if data is None or not (member.name.endswith("layer.tar") or member.name.startswith("blobs/")):
                continue
            try:
                with tarfile.open(fileobj=data, mode="r|*") as layer:
                    for f in layer:
                        content = layer.extractfile(f).read() if f.isreg() and f.size < 4_000_000 else None
                        out.append((f.name.removeprefix("./"), content))
            except tarfile.ReadError:
                continue  # a config or manifest blob, not a layer
    return out


def _layer_files(image) -> list[tuple[str, bytes | None]]:
    """(path, content for small files) of every file in every layer of an image.

    A local overlay2 engine's layer folders are read in place: saving the 6 GB trainer image
    would need that much free disk twice (the engine's export folder and the archive)."""
    dirs = _overlay_layer_dirs(image)
    return _files_in_dirs(dirs) if dirs else _files_in_saved_image(image)


@pytest.mark.parametrize("name", SHIPPED)
def test_no_ca_bundle_or_credential_in_any_layer(built_images, docker_engine, name):
    image = docker_engine.images.get(built_images[name].ref)
    files = _layer_files(image)
    names = {path for path, _ in files}
    assert "opt/venv/bin/python" in names  # the scan really walked the layers
    assert not any(path.endswith("ca-bundle.crt") or path.startswith(".build") for path in names)
    image_bundle = next((c for p, c in files if p.endswith("etc/ssl/certs/ca-certificates.crt") and c), b"")
    extra = _extra_ca_blocks(image_bundle)
    for path, content in files:
        if content:
            assert not any(block in content for block in extra), f"{path} holds the host's extra CA"
    history = json.dumps(image.history())
    config = json.dumps(image.attrs["Config"])
    for text in (history, config):
        assert "ca-bundle" not in text
        assert not re.search(r"(AWS_SECRET_ACCESS_KEY|HF_TOKEN|PASSWORD)=\S", text)


def test_layer_scan_reads_the_same_files_in_place_as_from_a_saved_image(built_images, docker_engine):
    """Both ways the CA scan reads layers (overlay2 folders in place, a streamed `docker save`) agree."""
    image = docker_engine.images.get(built_images["fetcher"].ref)
    dirs = _overlay_layer_dirs(image)
    if dirs is None:
        pytest.skip("the engine is not a local overlay2 one: only the saved-image scan applies")

    def real(files):  # whiteouts mark deletions differently in the two forms; "." is the root
        return [(p, c) for p, c in files if ".wh." not in p and p != "."]

    in_place, saved = real(_files_in_dirs(dirs)), real(_files_in_saved_image(image))
    saved_paths = {p for p, _ in saved}
    in_place_read = {(p, c) for p, c in in_place if c is not None}
    saved_read = {(p, c) for p, c in saved if c is not None}
    assert saved_paths <= {p for p, _ in in_place} and saved_read <= in_place_read
    # Read only in place: hard links, whose content the archive carries once, under the first name.
    assert {p for p, _ in in_place_read - saved_read} <= saved_paths
    assert "opt/app/jobs/cli.py" in {p for p, _ in saved_read}


def test_catalog_names_match_images(built_images):
    assert set(built_images) == set(by_name()) and all(built_images[n].ref for n in SHIPPED)


SHARED = Path(__file__).resolve().parents[3] / "shared"


def test_preprocessor_image_on_a_mounted_folder_matches_the_host_run(built_images, tmp_path):
    """The image's entrypoint on a bind-mounted folder writes the same bytes as the library here."""
    tokenizer = SHARED / "data" / "20B_tokenizer.json"
    if not tokenizer.is_file():
        pytest.skip(f"{tokenizer} (the real 20B tokenizer) is not beside the repository")
    import shutil
    import subprocess
    import sys

    work = tmp_path / "vol"
    work.mkdir()
    shutil.copyfile(tokenizer, work / "tokenizer.json")
    docs = ["Hello, world!", "", "Ünïcödé 🙂 and   spaces", "def f(x):\n    return x\n" * 20]
    (work / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    work.chmod(0o777)
    args = [
        "--input",
        "/vol/corpus.jsonl",
        "--tokenizer",
        "/vol/tokenizer.json",
        "--output-prefix",
        "/vol/out",
        "--append-eod",
    ]
    code, logs = run_container(
        built_images["preprocessor"].ref, args, volumes={str(work): {"bind": "/vol", "mode": "rw"}}
    )
    assert code == 0, logs
    host = tmp_path / "host"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.preprocess",
            *[a.replace("/vol/", f"{work}/") for a in args[:4]],
            "--output-prefix",
            str(host / "out"),
            "--append-eod",
        ],
        check=True,
        capture_output=True,
    )
    for suffix in (".bin", ".idx"):
        assert (work / f"out_text_document{suffix}").read_bytes() == (
            host / f"out_text_document{suffix}"
        ).read_bytes()


def test_fetcher_image_downloads_a_listing_into_a_mounted_folder(built_images, tmp_path, unused_port):
    """A real HTTP server with directory listings (Python's http.server) on 127.0.0.1, host networking."""
    import subprocess
    import sys

    src = tmp_path / "src" / "model"
    (src / "sub").mkdir(parents=True)
    payload = {"config.json": b'{"a": 1}', "sub/weights.bin": bytes(range(256)) * 4096}
    for name, data in payload.items():
        (src / name).write_bytes(data)
    dest = tmp_path / "dest"
    dest.mkdir()
    dest.chmod(0o777)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(unused_port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(tmp_path / "src"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import time

        time.sleep(1)
        code, logs = run_container(
            built_images["fetcher"].ref,
            [f"http://127.0.0.1:{unused_port}/model/", "/dest"],
            volumes={str(dest): {"bind": "/dest", "mode": "rw"}},
            network_mode="host",
        )
    finally:
        server.terminate()
    assert code == 0, logs
    for name, data in payload.items():
        assert (dest / name).read_bytes() == data
    manifest = json.loads((dest / "fetch-manifest.json").read_text())
    assert sorted(f["path"] for f in manifest["files"]) == sorted(payload)


def test_trainer_image_ships_prebuilt_ops_and_kernels_and_picks_the_cpu_without_a_gpu(built_images):
    ref = built_images["trainer"].ref
    code, doctor = run_container(ref, ["-m", "trainer.doctor"], entrypoint="python")
    assert code == 0, doctor
    assert "prebuilt kernels: /opt/neox/kernels for 8.0 8.6 8.9 9.0+PTX (matches these sources)" in doctor
    assert "DeepSpeed 0.19.8 (accelerator cpu)" in doctor
    assert re.search(r"fused_adam: prebuilt, loads", doctor) and re.search(
        r"cpu_adam: prebuilt, loads", doctor
    )
    code, tools = run_container(ref, ["-c", "command -v sshd && command -v pdsh"], entrypoint="/bin/sh")
    assert code == 0 and "sshd" in tools and "pdsh" in tools, tools


def test_stage_caches_from_the_registry_seed_a_build_on_a_clean_engine(
    docker_engine, base_image, registry, tmp_path
):
    """The CI image pipeline's cache: stages pushed with `--with-cache` let a host that has none of the
    layers skip the expensive step (here a RUN that writes a unique marker) on its next build."""
    import uuid

    from images.build import cache_refs
    from images.catalog import ImageSpec
    from images.push import push_cache

    marker = uuid.uuid4().hex
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = []\n')
    (tmp_path / "Dockerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE} AS deps\n"
        f"RUN echo {marker} > /marker && sleep 1\n"
        "FROM ${BASE_IMAGE}\nCOPY --from=deps /marker /marker\n"
    )
    spec = ImageSpec(f"cache{marker[:8]}", "Dockerfile", (), cache_stages=("deps",))
    prefix = f"{registry}/cachetest"
    lines: list[str] = []

    def build():
        return build_images(
            tmp_path,
            [spec.name],
            base_image=base_image,
            client=docker_engine,
            log=lines.append,
            catalog=(spec,),
            cache_from=prefix,
        )[spec.name]

    first = build()
    assert any("building without it" in line for line in lines)
    push_image(docker_engine, first, prefix, extra_tags=["main"], log=lambda line: None)
    assert push_cache(docker_engine, cache_refs(prefix, spec), log=lambda line: None) == 1

    # Forget every local layer of this image, as a fresh CI runner would have none.
    for image in docker_engine.images.list():
        if any(spec.name in t for t in image.tags):
            docker_engine.images.remove(image.id, force=True)
    lines.clear()
    second = build()
    run_step = [i for i, line in enumerate(lines) if f"RUN echo {marker}" in line]
    assert run_step and "Using cache" in lines[run_step[0] + 1], lines
    code, out = run_container(second.ref, ["/marker"], entrypoint="cat")
    assert (code, out.strip()) == (0, marker)


_TRITON_PROBE = r"""
import os
os.environ.update(TRITON_CACHE_DIR="/tmp/triton", TORCHINDUCTOR_CACHE_DIR="/tmp/inductor")
from triton.runtime.build import compile_module_from_src
src = '''#include <Python.h>
static struct PyModuleDef m = {PyModuleDef_HEAD_INIT, "neox_probe", NULL, -1, NULL};
PyMODINIT_FUNC PyInit_neox_probe(void) { return PyModule_Create(&m); }
'''
print("triton launcher build:", compile_module_from_src(src, "neox_probe").__name__)
import torch
f = torch.compile(lambda x: torch.sin(x) * 2 + 1, backend="inductor")
x = torch.randn(64)
assert torch.allclose(f(x), torch.sin(x) * 2 + 1)
print("inductor cpu: ok")
"""


def test_trainer_image_compiles_what_its_run_time_paths_build_and_ships_no_cuda_compiler(built_images):
    """The kept g++ and Python headers are used: Triton builds a C launcher against Python.h (as on a
    GPU), inductor builds CPU kernels in C++. The CUDA compiler (nvcc, from the build wheels) is gone."""
    ref = built_images["trainer"].ref
    code, out = run_container(ref, ["-c", _TRITON_PROBE], entrypoint="python")
    assert code == 0 and "triton launcher build: neox_probe" in out and "inductor cpu: ok" in out, out[-3000:]
    code, out = run_container(
        ref,
        ["-c", "command -v nvcc; ls /opt/venv/lib/python3.11/site-packages/nvidia/cu13/bin/nvcc; exit 0"],
        entrypoint="/bin/sh",
    )
    assert code == 0 and "No such file" in out and "/nvcc\n" not in out, out


def test_trainer_light_dependencies_ship_in_their_own_folder_and_import(built_images):
    """The deps stage's packages (boto3, tensorboard, determined...) sit in /opt/deps, on the venv's
    path through its .pth, consistent with the venv (pip check) and with their commands on PATH."""
    ref = built_images["trainer"].ref
    script = (
        "import boto3, determined, tensorboard, torch; "
        "print(boto3.__file__); print(torch.__file__); "
        "import subprocess, sys; subprocess.run([sys.executable, '-m', 'pip', 'check'], check=True)"
    )
    code, out = run_container(ref, ["-c", script], entrypoint="python")
    assert code == 0, out[-3000:]
    assert "/opt/deps/site-packages/boto3/" in out and "/opt/venv/lib/python3.11/site-packages/torch/" in out
    code, out = run_container(ref, ["-c", "command -v det tensorboard"], entrypoint="/bin/sh")
    assert code == 0 and "/opt/deps/bin/det" in out, out
