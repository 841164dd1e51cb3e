"""Unit tests of the image catalog, build order, content tags and the engine's stream handling."""

from pathlib import Path

import pytest

from images.build import ImageError, build_order, stream_build
from images.catalog import CATALOG, ImageSpec
from images.context import CA_BUNDLE_PATH, REQUIREMENTS_PATH, content_tag, extras_requirements, make_context
from images.push import PushError, check_registry, stream_push, write_lock

ROOT = Path(__file__).resolve().parents[2]


def test_default_order_puts_parents_first_and_skips_nothing_shipped():
    order = [s.name for s in build_order()]
    assert order[0] == "python"
    assert set(order) == {s.name for s in CATALOG}
    for spec in CATALOG:
        if spec.parent:
            assert order.index(spec.parent) < order.index(spec.name)


def test_order_of_one_image_includes_its_parent_only():
    assert [s.name for s in build_order(["fetcher"])] == ["python", "fetcher"]


def test_order_rejects_unknown_names_and_cycles():
    with pytest.raises(ImageError, match="unknown image 'nope'"):
        build_order(["nope"])
    cyclic = (ImageSpec("a", "x", (), parent="b"), ImageSpec("b", "y", (), parent="a"))
    with pytest.raises(ImageError, match="cycle"):
        build_order(["a"], cyclic)


def _tree(tmp_path: Path, text: str = "print(1)\n") -> Path:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(text)
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"junk")
    (tmp_path / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n")
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname="x"\ndependencies=[]\n[project.optional-dependencies]\na=["b==1", "a==2"]\nc=["d==3"]\n'
    )
    return tmp_path


SPEC = ImageSpec("demo", "Dockerfile", ("pkg",), extras=("a",))


def test_context_holds_named_files_requirements_and_no_caches(tmp_path):
    ctx = make_context(_tree(tmp_path), SPEC, ca_bundle=None)
    names = [n for n, _ in ctx.files]
    assert names == sorted(["Dockerfile", "pkg/mod.py", REQUIREMENTS_PATH, CA_BUNDLE_PATH])
    assert dict(ctx.files)[REQUIREMENTS_PATH] == b"a==2\nb==1\n"


def test_tag_is_stable_and_changes_with_every_input(tmp_path):
    root = _tree(tmp_path)
    base = content_tag(make_context(root, SPEC), {"X": "1"}, "sha256:p")
    assert base == content_tag(make_context(root, SPEC), {"X": "1"}, "sha256:p")
    assert base != content_tag(make_context(root, SPEC), {"X": "2"}, "sha256:p")
    assert base != content_tag(make_context(root, SPEC), {"X": "1"}, "sha256:q")
    (root / "pkg" / "mod.py").write_text("print(2)\n")
    assert base != content_tag(make_context(root, SPEC), {"X": "1"}, "sha256:p")


def test_tag_ignores_the_ca_bundle_and_other_images_extras(tmp_path):
    root = _tree(tmp_path)
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    plain = content_tag(make_context(root, SPEC), {}, None)
    assert plain == content_tag(make_context(root, SPEC, ca_bundle=ca), {}, None)
    text = (root / "pyproject.toml").read_text().replace('"d==3"', '"d==4"')
    (root / "pyproject.toml").write_text(text)
    assert plain == content_tag(make_context(root, SPEC), {}, None)


def test_context_errors_name_the_missing_thing(tmp_path):
    root = _tree(tmp_path)
    with pytest.raises(Exception, match="Dockerfile nope/Dockerfile not found"):
        make_context(root, ImageSpec("demo", "nope/Dockerfile", ()))
    with pytest.raises(Exception, match="'missing' does not exist"):
        make_context(root, ImageSpec("demo", "Dockerfile", ("missing",)))
    with pytest.raises(Exception, match="no extra named 'zz'"):
        extras_requirements(root, ("zz",))


def test_real_catalog_contexts_build(tmp_path):
    for spec in CATALOG:
        ctx = make_context(ROOT, spec)
        assert ctx.to_tar()[:100]  # a tar with at least one member


def test_build_stream_error_names_the_step():
    events = iter(
        [
            {"stream": "Step 1/3 : FROM base\n"},
            {"stream": "Step 2/3 : RUN false\n"},
            {
                "error": "The command '/bin/sh -c false' returned a non-zero code: 1",
                "errorDetail": {
                    "code": 1,
                    "message": "The command '/bin/sh -c false' returned a non-zero code: 1",
                },
            },
        ]
    )
    with pytest.raises(ImageError, match=r"Step 2/3 : RUN false: The command .* non-zero code: 1"):
        stream_build(events, lambda line: None)


def test_build_stream_returns_image_id():
    events = iter(
        [
            {"stream": "Step 1/1 : FROM base\n"},
            {"aux": {"ID": "sha256:abc"}},
            {"stream": "Successfully built abc\n"},
        ]
    )
    assert stream_build(events, lambda line: None) == "sha256:abc"


def test_push_stream_in_band_error_is_raised_and_classified():
    auth = iter(
        [
            {"status": "The push refers to repository [r/x]"},
            {
                "errorDetail": {"message": "unauthorized: authentication required"},
                "error": "unauthorized: ...",
            },
        ]
    )
    with pytest.raises(PushError, match="unauthorized") as info:
        stream_push(auth, lambda line: None)
    assert not info.value.transient
    flaky = iter([{"errorDetail": {"message": "received unexpected HTTP status: 503 Service Unavailable"}}])
    with pytest.raises(PushError) as info:
        stream_push(flaky, lambda line: None)
    assert info.value.transient


def test_push_stream_success_returns_digest_and_logs_layer_states_once():
    lines = []
    events = iter(
        [
            {"status": "Preparing", "id": "l1"},
            {"status": "Pushing", "id": "l1", "progressDetail": {"current": 1, "total": 9}},
            {"status": "Pushing", "id": "l1", "progressDetail": {"current": 5, "total": 9}},
            {"status": "Pushed", "id": "l1"},
            {"status": "t: digest: sha256:feed size: 5"},
            {"aux": {"Tag": "t", "Digest": "sha256:feed", "Size": 5}},
        ]
    )
    assert stream_push(events, lines.append) == "sha256:feed"
    assert lines == ["l1: Preparing", "l1: Pushing", "l1: Pushed", "t: digest: sha256:feed size: 5"]


def test_registry_argument_is_checked():
    assert check_registry("127.0.0.1:5000/neox/") == "127.0.0.1:5000/neox"
    for bad in ("http://127.0.0.1:5000/neox", "127.0.0.1:5000", "Host/UPPER"):
        with pytest.raises(ImageError, match="HOST\\[:PORT\\]/NAMESPACE"):
            check_registry(bad)


def test_lock_is_merged_and_written_atomically(tmp_path):
    lock = tmp_path / "images.lock.json"
    write_lock(lock, {"trainer": "r/ns/trainer@sha256:1"})
    write_lock(lock, {"fetcher": "r/ns/fetcher@sha256:2"})
    import json

    assert json.loads(lock.read_text()) == {
        "images": {"fetcher": "r/ns/fetcher@sha256:2", "trainer": "r/ns/trainer@sha256:1"}
    }
    assert [p.name for p in tmp_path.iterdir()] == ["images.lock.json"]


def test_unknown_build_arg_is_refused_before_the_engine_is_touched():
    from images.build import build_images

    with pytest.raises(ImageError, match="build arg 'NOPE' is not declared"):
        build_images(ROOT, ["trainer"], client=object(), build_args={"NOPE": "1"})
    with pytest.raises(ImageError, match="BASE_IMAGE is set with --base-image"):
        build_images(ROOT, ["trainer"], client=object(), build_args={"BASE_IMAGE": "x"})
