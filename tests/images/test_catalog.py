"""Unit tests of the image catalog, build order, content tags and the engine's stream handling."""

from pathlib import Path

import pytest

from images.build import ImageError, build_order, stream_build
from images.catalog import CATALOG, ImageSpec
from images.context import CA_BUNDLE_PATH, content_tag, extras_requirements, make_context
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
    (tmp_path / "requirements.lock").write_text(f"a==2 --hash=sha256:{'0' * 64}  # requested\n")
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname="x"\ndependencies=[]\n[project.optional-dependencies]\na=["b==1", "a==2"]\nc=["d==3"]\n'
    )
    return tmp_path


SPEC = ImageSpec("demo", "Dockerfile", ("pkg",), extras=("a",))


def test_context_holds_named_files_the_lock_and_no_caches(tmp_path):
    ctx = make_context(_tree(tmp_path), SPEC, ca_bundle=None)
    names = [n for n, _ in ctx.files]
    assert names == sorted(["Dockerfile", "pkg/mod.py", "requirements.lock", CA_BUNDLE_PATH])
    assert dict(ctx.files)["requirements.lock"] == (tmp_path / "requirements.lock").read_bytes()
    assert extras_requirements(tmp_path, ("a",)) == "a==2\nb==1\n"


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


# --- labels and tags -------------------------------------------------------------------------------

OCI_KEYS = (
    "title",
    "description",
    "source",
    "version",
    "licenses",
    "revision",
    "created",
    "base.name",
    "base.digest",
)
DEBIAN = "debian:bookworm-slim@sha256:" + "b" * 64


def test_labels_carry_every_oci_key_and_the_resolved_base():
    from images.build import BaseImage, image_labels

    spec = next(s for s in CATALOG if s.name == "trainer")
    labels = image_labels(
        spec,
        content_tag="0123abcd",
        base=BaseImage("debian:bookworm-slim", "sha256:" + "b" * 64),
        version="0.1.0",
        licenses="Apache-2.0",
        revision="abc123",
        created="2026-01-01T00:00:00Z",
    )
    assert all(labels.get(f"org.opencontainers.image.{key}") for key in OCI_KEYS), labels
    assert labels["org.opencontainers.image.title"] == "neox-pipeline trainer"
    assert labels["org.opencontainers.image.description"] == spec.description
    assert labels["org.opencontainers.image.base.name"] == "debian:bookworm-slim"
    assert labels["org.opencontainers.image.base.digest"] == "sha256:" + "b" * 64
    assert labels["neox-pipeline.content-tag"] == "0123abcd"


def test_ci_labels_override_defaults_but_never_the_base_or_content():
    from images.build import BaseImage, image_labels

    extra = {
        "org.opencontainers.image.version": "1.2.0-rc.1",
        "org.opencontainers.image.revision": "f" * 40,
        "org.opencontainers.image.base.digest": "sha256:forged",
        "neox-pipeline.content-tag": "forged",
    }
    labels = image_labels(
        CATALOG[1],
        content_tag="real",
        base=BaseImage("b", "sha256:real"),
        version="0.1.0",
        licenses="Apache-2.0",
        revision="short",
        created="t",
        extra=extra,
    )
    assert labels["org.opencontainers.image.version"] == "1.2.0-rc.1"
    assert labels["org.opencontainers.image.revision"] == "f" * 40
    assert labels["org.opencontainers.image.base.digest"] == "sha256:real"
    assert labels["neox-pipeline.content-tag"] == "real"


def test_base_digest_is_the_pinned_one_else_the_registrys_else_the_local_image_id():
    from images.build import base_identity

    pinned = base_identity(DEBIAN, ["debian@sha256:other"], "sha256:id")
    assert (pinned.name, pinned.digest) == ("debian:bookworm-slim", "sha256:" + "b" * 64)
    pulled = base_identity("127.0.0.1:5000/ns/base:1", ["127.0.0.1:5000/ns/base@sha256:reg"], "sha256:id")
    assert (pulled.name, pulled.digest) == ("127.0.0.1:5000/ns/base:1", "sha256:reg")
    local = base_identity("neox-pipeline/base:bookworm", [], "sha256:id")  # made by `invoke base`
    assert (local.name, local.digest) == ("neox-pipeline/base:bookworm", "sha256:id")
    other_repo = base_identity("mine/base:1", ["theirs/base@sha256:reg"], "sha256:id")
    assert other_repo.digest == "sha256:id"


def test_licence_label_default_is_pyprojects_and_the_license_file_is_that_licence():
    from images.build import project_metadata

    version, licence = project_metadata(ROOT)
    assert licence == "Apache-2.0" and version
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:3] == ["Apache", "License", "Version"] and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_label_arguments_are_checked():
    from images.build import parse_labels

    assert parse_labels(["org.opencontainers.image.version=1.2.0", "a.b=x=y"]) == {
        "org.opencontainers.image.version": "1.2.0",
        "a.b": "x=y",
    }
    for bad in ("novalue", "=x", "Upper.Case=1"):
        with pytest.raises(ImageError, match="must be KEY=VALUE"):
            parse_labels([bad])
    with pytest.raises(ImageError, match="base.digest is set by the builder"):
        parse_labels(["org.opencontainers.image.base.digest=sha256:x"])


def test_tags_are_checked_and_latest_never_goes_beside_a_pre_release():
    from images.push import check_tags

    assert check_tags(["1.2.0", "1.2", "latest"], version="1.2.0") == ["1.2.0", "1.2", "latest"]
    assert check_tags(["1.2.0-rc.1"], version="1.2.0-rc.1") == ["1.2.0-rc.1"]
    with pytest.raises(ImageError, match="latest refused: 1.2.0-rc.1 is a pre-release"):
        check_tags(["1.2.0-rc.1", "latest"])
    with pytest.raises(ImageError, match="latest refused: 2.0.0-beta is a pre-release"):
        check_tags(["latest"], version="2.0.0-beta")
    for bad in ("-x", "a/b", "x" * 129, "with space"):
        with pytest.raises(ImageError, match="is not a valid image tag"):
            check_tags([bad])


def test_requested_labels_land_on_the_image_and_a_change_rebuilds_it(tmp_path, docker_engine, base_image):
    """Through the real engine: a one-line image on the base gets every OCI label and the base's
    digest; the same content with another version label is rebuilt, without labels it is reused."""
    from images.build import build_images

    root = _tree(tmp_path)
    (root / "pyproject.toml").write_text('[project]\nname="x"\nversion="9.9.9"\nlicense="Apache-2.0"\n')
    catalog = (ImageSpec("labels-demo", "Dockerfile", (), description="label test"),)

    def build(**labels):
        return build_images(
            root,
            None,
            base_image=base_image,
            client=docker_engine,
            log=lambda line: None,
            catalog=catalog,
            labels=labels or None,
        )["labels-demo"]

    first = build(**{"org.opencontainers.image.version": "1.2.0"})
    labels = docker_engine.images.get(first.image_id).labels
    assert all(labels.get(f"org.opencontainers.image.{key}") for key in OCI_KEYS), labels
    assert labels["org.opencontainers.image.version"] == "1.2.0"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.base.name"] == base_image.split("@")[0]
    assert labels["org.opencontainers.image.base.digest"].startswith("sha256:")
    again = build(**{"org.opencontainers.image.version": "1.3.0"})
    assert (again.tag, again.reused) == (first.tag, False)
    assert docker_engine.images.get(again.image_id).labels["org.opencontainers.image.version"] == "1.3.0"
    assert build().reused
