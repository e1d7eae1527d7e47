"""What every image promises, read from images/*.Dockerfile (no builder needed): a pullable base by
default, several stages, only its daemon's extra, a non-root user, ``python -m <daemon>``, the
version in its labels and tags, and never ``latest``. tests/deploy/test_images.py builds and runs two."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.__main__ import DAEMONS
from devstack.images import BY_NAME, IMAGES, REPO_ROOT, ImageSpec, build_command, debian_mirror, project_version
from trainer.config import Settings as TrainerSettings

IMAGES_DIR = REPO_ROOT / "images"
REQUIREMENTS = IMAGES_DIR / "requirements.py"

# The extras each image installs, and the daemon packages it copies besides carmesh/ and kit/.
EXPECTED = {
    "gateway": (["gateway"], ["gateway"]),
    "registry_gateway": (["registry"], ["registry_gateway"]),
    "detector": (["detector"], ["detector"]),
    "detector-gpu": (["detector-gpu"], ["detector"]),
    "ingestor": (["ingestor"], ["ingestor"]),
    "feature_service": (["feature"], ["feature_service"]),
    "tracker": (["tracker"], ["tracking", "tracker"]),
    # The TFJob workers run `python -m trainer_worker` in the trainer's image.
    "trainer": (["trainer", "trainer-worker"], ["trainer", "trainer_worker"]),
    "trainer-gpu": (["trainer", "trainer-gpu"], ["trainer", "trainer_worker"]),
}


def requirement_names(*extras: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, str(REQUIREMENTS), str(REPO_ROOT / "pyproject.toml"), *extras],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {re.split(r"[\[<>=~!;\s]", line, maxsplit=1)[0].lower() for line in out.splitlines() if line}


def test_every_daemon_has_an_image_and_every_dockerfile_is_listed() -> None:
    assert {spec.module for spec in IMAGES if not spec.gpu} == set(DAEMONS)
    assert {path.name for path in IMAGES_DIR.glob("*.Dockerfile")} == {f"{name}.Dockerfile" for name in BY_NAME}
    assert set(EXPECTED) == set(BY_NAME)


@pytest.mark.parametrize("spec", IMAGES, ids=lambda spec: spec.name)
def test_dockerfile_keeps_the_image_rules(spec: ImageSpec) -> None:
    text = spec.dockerfile.read_text()
    assert "latest" not in text
    assert re.search(r"^ARG BASE=python:3\.11-slim-bookworm$", text, re.MULTILINE)
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert len(stages) >= 2 and stages[0] == "${BASE}" and stages[-1] == "${BASE}", stages
    final = text[text.rindex("\nFROM ") :]
    assert re.search(r"^USER 10001:10001$", final, re.MULTILINE)
    assert f'ENTRYPOINT ["python", "-m", "{spec.module}"]' in final
    assert 'org.opencontainers.image.version="${VERSION}"' in final
    assert 'VOLUME ["/var/lib/carmesh"]' in final and "HOME=/tmp" in final
    extras, packages = EXPECTED[spec.name]
    assert f"/src/pyproject.toml {' '.join(extras)} > /src/requirements.txt" in text
    copied = re.findall(r"^COPY (\w+) /src/\1$", text, re.MULTILINE)
    assert sorted(copied) == sorted(["carmesh", "kit", *packages])


def test_gpu_images_never_install_a_cpu_twin_and_cpu_images_no_gpu_build() -> None:
    for spec in IMAGES:
        names = requirement_names(*EXPECTED[spec.name][0])
        if spec.name == "detector-gpu":
            assert "onnxruntime-gpu" in names and "onnxruntime" not in names
        elif spec.name == "trainer-gpu":
            assert "tensorflow" in names and "tensorflow-cpu" not in names
        else:
            assert not names & {"onnxruntime-gpu", "tensorflow"}, spec.name


def test_requirements_follow_the_projects_own_extras() -> None:
    worker = requirement_names("trainer-worker")
    assert {"grpcio", "mlflow", "tensorflow-cpu"} <= worker  # base + carmesh[trainer] + its own
    assert requirement_names("gateway") == requirement_names()  # the gateway needs only the base
    done = subprocess.run(
        [sys.executable, str(REQUIREMENTS), str(REPO_ROOT / "pyproject.toml"), "no-such-extra"],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "no extra 'no-such-extra'" in done.stderr


def test_tags_carry_the_version_and_the_build_passes_it(tmp_path: Path) -> None:
    version = project_version()
    assert BY_NAME["detector"].tag(version) == f"carmesh/detector:{version}"
    assert BY_NAME["detector-gpu"].tag(version) == f"carmesh/detector:{version}-gpu"
    assert (
        BY_NAME["registry_gateway"].tag(version, "registry.example/ml")
        == f"registry.example/ml/registry-gateway:{version}"
    )
    argv = build_command(
        "docker", BY_NAME["gateway"], "carmesh/gateway:1.2.3", "python:3.11-slim-bookworm", "1.2.3", "abc"
    )
    assert argv[:2] == ["docker", "build"] and "VERSION=1.2.3" in argv and argv[-1] == str(REPO_ROOT)
    assert "--layers" in build_command("buildah", BY_NAME["gateway"], "t", "b", "1.2.3", "abc")


def test_debian_mirror_is_read_from_apt_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    assert debian_mirror(tmp_path) == "http://deb.debian.org/debian"
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list").write_text("deb [arch=amd64] http://other.example/debian bookworm main\n")
    assert debian_mirror(tmp_path) == "http://other.example/debian"


def test_dockerignore_lets_in_only_what_images_copy() -> None:
    lines = [line for line in (REPO_ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert lines[0] == "*"
    allowed = {line[1:] for line in lines if line.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "README.md",
        "images/requirements.py",
        "carmesh",
        "kit",
        *DAEMONS,
        "trainer_worker",
        "tracking",
        "tracker",
    }


def test_the_trainer_renders_tfjobs_with_its_versioned_image() -> None:
    assert TrainerSettings(mesh_plaintext=True).tfjob_image == BY_NAME["trainer"].tag(project_version())


def test_push_refuses_an_image_that_was_not_built(tmp_path: Path) -> None:
    """`make push` tags and pushes what `make images` built; nothing is built behind the user's back."""
    from devstack.images import ImageError, find_engine, push

    try:
        engine = find_engine()
    except ImageError as exc:
        pytest.skip(str(exc))
    spec = dataclasses.replace(BY_NAME["gateway"], repository="never-built-here")
    with pytest.raises(ImageError, match="is not built here"):
        push(spec, engine=engine, version="0.0.0-test", registry="registry.invalid/carmesh")
