"""Container images of the daemons (``images/*.Dockerfile``), built with docker, podman or buildah.

``python -m devstack.images build [--engine E] [--base B] [NAME ...]`` (``make images``) builds
each named image (all by default) and prints its tag, build time and size. Tags carry the project
version from pyproject.toml (``carmesh/detector:0.2.0``, ``carmesh/detector:0.2.0-gpu``); nothing
is ever tagged ``latest``.

``--base local`` builds on a Debian base made here by debootstrap (``localhost/carmesh-base``,
built once and reused), for machines that cannot pull ``python:3.11-slim-bookworm``: no registry
is reachable from this project's machines, and no Docker engine runs there (buildah does).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BASE = "python:3.11-slim-bookworm"
LOCAL_BASE = "localhost/carmesh-base:bookworm"
REPOSITORY_PREFIX = "carmesh"
ENGINES = ("docker", "buildah", "podman")
# pip inside RUN steps must trust what the host trusts (a proxy may sign with its own CA).
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SUITE = "bookworm"
_DEBOOTSTRAP_TIMEOUT_S = 900


class ImageError(RuntimeError):
    """An image that cannot be built, or no engine to build it with."""


@dataclass(frozen=True)
class ImageSpec:
    """One image: ``images/<name>.Dockerfile``, pushed as ``carmesh/<repository>:<version>[-gpu]``."""

    name: str
    repository: str
    module: str
    gpu: bool = False

    @property
    def dockerfile(self) -> Path:
        return REPO_ROOT / "images" / f"{self.name}.Dockerfile"

    def tag(self, version: str, prefix: str = REPOSITORY_PREFIX) -> str:
        return f"{prefix}/{self.repository}:{version}{'-gpu' if self.gpu else ''}"


IMAGES: tuple[ImageSpec, ...] = (
    ImageSpec("gateway", "gateway", "gateway"),
    ImageSpec("registry_gateway", "registry-gateway", "registry_gateway"),
    ImageSpec("detector", "detector", "detector"),
    ImageSpec("ingestor", "ingestor", "ingestor"),
    ImageSpec("feature_service", "feature-service", "feature_service"),
    ImageSpec("tracker", "tracker", "tracker"),
    ImageSpec("trainer", "trainer", "trainer"),
    ImageSpec("detector-gpu", "detector", "detector", gpu=True),
    ImageSpec("trainer-gpu", "trainer", "trainer", gpu=True),
)
BY_NAME = {spec.name: spec for spec in IMAGES}


@dataclass(frozen=True)
class Built:
    spec: ImageSpec
    tag: str
    seconds: float
    size: str


def project_version(root: Path = REPO_ROOT) -> str:
    return str(tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"])


def git_revision(root: Path = REPO_ROOT) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _works(argv: Sequence[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def find_engine(preferred: str | None = None) -> str:
    """``preferred`` if given, else docker when its daemon answers, else buildah, else podman."""
    if preferred:
        if preferred not in ENGINES:
            raise ImageError(f"unknown engine {preferred!r}: one of {', '.join(ENGINES)}")
        if shutil.which(preferred) is None:
            raise ImageError(f"{preferred} is not installed")
        return preferred
    # The docker client alone is not enough: this project's machines have it without a daemon.
    if shutil.which("docker") and _works(["docker", "info"]):
        return "docker"
    for engine in ("buildah", "podman"):
        if shutil.which(engine):
            return engine
    raise ImageError("no image builder: install docker, podman or buildah (make setup installs buildah and podman)")


def image_exists(engine: str, ref: str) -> bool:
    argv = [engine, "inspect", "--type", "image", ref] if engine == "buildah" else [engine, "image", "inspect", ref]
    return _works(argv)


def image_size(engine: str, ref: str) -> str:
    """The size the engine reports (e.g. ``587 MB``)."""
    if engine == "buildah":
        argv = ["buildah", "images", "--format", "{{.Size}}", ref]
    else:
        argv = [engine, "image", "ls", "--format", "{{.Size}}", ref]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "?"


def image_config(ref: str) -> dict[str, object]:
    """The OCI config of a local image (buildah): Entrypoint, User, Labels, Env, WorkingDir..."""
    out = subprocess.run(
        ["buildah", "inspect", "--type", "image", ref], capture_output=True, text=True, timeout=60, check=True
    )
    config = json.loads(out.stdout)["OCIv1"]["config"]
    return dict(config)


def build_command(engine: str, spec: ImageSpec, tag: str, base: str, version: str, revision: str) -> list[str]:
    args = [
        *("--file", str(spec.dockerfile), "--tag", tag),
        *("--build-arg", f"BASE={base}", "--build-arg", f"VERSION={version}", "--build-arg", f"REVISION={revision}"),
    ]
    if engine == "docker":
        return ["docker", "build", *args, str(REPO_ROOT)]
    mounts = []
    if HOST_CA_BUNDLE.is_file():
        mounts = ["--volume", f"{HOST_CA_BUNDLE}:/etc/ssl/certs/ca-certificates.crt:ro"]
    # --layers: buildah and podman keep each step as a cached layer only when asked; --force-rm:
    # a failed step would otherwise leave its working container behind.
    verb = ["buildah", "bud"] if engine == "buildah" else ["podman", "build"]
    return [*verb, "--layers", "--force-rm", *mounts, *args, str(REPO_ROOT)]


def build_env(engine: str) -> dict[str, str]:
    env = dict(os.environ)
    if engine == "docker":
        env.setdefault("DOCKER_BUILDKIT", "1")  # RUN --mount=type=cache needs BuildKit
    else:
        # Where containers cannot be run (no rlimits for crun/runc), RUN steps still run in a chroot.
        env.setdefault("BUILDAH_ISOLATION", "chroot")
    return env


def build(
    spec: ImageSpec,
    *,
    engine: str,
    base: str = DEFAULT_BASE,
    version: str | None = None,
    prefix: str = REPOSITORY_PREFIX,
    log: Path | None = None,
) -> Built:
    """Builds one image; its output goes to ``log`` (else to stderr). Raises :class:`ImageError`."""
    version = version or project_version()
    tag = spec.tag(version, prefix)
    argv = build_command(engine, spec, tag, base, version, git_revision())
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(log.open("ab")) if log is not None else None
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT if out else None, env=build_env(engine))
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        where = f"; its output is in {log}" if log else ""
        raise ImageError(f"building {tag} with {engine} failed (exit {proc.returncode}){where}")
    return Built(spec, tag, seconds, image_size(engine, tag))


def debian_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The Debian archive this machine's apt uses (a reachable mirror), else deb.debian.org."""
    texts = []
    for path in [sources_dir / "sources.list", *sorted((sources_dir / "sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            texts.append(path.read_text())
    for text in texts:
        for match in re.finditer(r"^URIs:\s*(\S+)\s*$\s*^Suites:\s*([^\n]*)$", text, re.MULTILINE):
            if DEBIAN_SUITE in match.group(2).split() and match.group(1).rstrip("/").endswith("/debian"):
                return match.group(1)
        for match in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s", text, re.MULTILINE):
            if match.group(2) == DEBIAN_SUITE and match.group(1).rstrip("/").endswith("/debian"):
                return match.group(1)
    return DEBIAN_MIRROR


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    """One builder of the local base at a time (tests and `make images` may race)."""
    path = Path(tempfile.gettempdir()) / f"{name}.lock"
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_local_base(ref: str = LOCAL_BASE, mirror: str | None = None, log: Path | None = None) -> bool:
    """Makes ``ref`` (Debian bookworm minbase with python3, venv and CA certificates) unless it
    exists, with debootstrap straight into a buildah working container. Returns whether it built.
    Needs root (debootstrap), buildah and debootstrap."""
    if image_exists("buildah", ref):
        return False
    with _lock("carmesh-image-base"):
        if image_exists("buildah", ref):  # built by whoever held the lock
            return False
        for tool in ("buildah", "debootstrap"):
            if shutil.which(tool) is None:
                raise ImageError(f"{tool} is not installed (make setup installs it)")
        container = _run(["buildah", "from", "scratch"]).strip()
        try:
            root = Path(_run(["buildah", "mount", container]).strip())
            argv = [
                *("debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates"),
                *(DEBIAN_SUITE, str(root), mirror or debian_mirror()),
            ]
            with contextlib.ExitStack() as stack:
                out = stack.enter_context(log.open("ab")) if log is not None else subprocess.DEVNULL
                done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=_DEBOOTSTRAP_TIMEOUT_S)
            if done.returncode != 0:
                raise ImageError(f"debootstrap failed (exit {done.returncode}); see {log or 'its output'}")
            # Package lists and downloaded .debs: 90 MB no image needs.
            for cache in ("var/cache/apt", "var/lib/apt/lists"):
                for entry in (root / cache).glob("*"):
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
            _run(["buildah", "commit", "--rm", container, ref])
        except BaseException:
            subprocess.run(["buildah", "rm", container], capture_output=True, timeout=120)
            raise
    return True


def _run(argv: Sequence[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise ImageError(f"{' '.join(argv)} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout


def push(spec: ImageSpec, *, engine: str, version: str, registry: str) -> str:
    """Tags the locally built image of ``spec`` for ``registry`` and pushes it; returns the pushed tag."""
    local = spec.tag(version)
    if not image_exists(engine, local):
        raise ImageError(f"{local} is not built here: run `make images IMAGES={spec.name}` first")
    remote = spec.tag(version, registry.rstrip("/"))
    for argv in ([engine, "tag", local, remote], [engine, "push", remote]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise ImageError(f"{' '.join(argv[:2])} {remote} failed: {done.stderr.strip()[-500:]}")
    return remote


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.images", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build_parser = sub.add_parser("build", help="build images (all unless named)")
    build_parser.add_argument("names", nargs="*", metavar="NAME", help=f"of: {', '.join(BY_NAME)}")
    build_parser.add_argument("--engine", choices=ENGINES, help="default: docker if its daemon answers, else buildah")
    build_parser.add_argument(
        "--base", default=DEFAULT_BASE, help=f"base image (default {DEFAULT_BASE}; 'local': {LOCAL_BASE} made here)"
    )
    build_parser.add_argument("--prefix", default=REPOSITORY_PREFIX, help="registry/namespace of the tags")
    sub.add_parser("base", help=f"make {LOCAL_BASE} with debootstrap (buildah) unless it exists")
    sub.add_parser("list", help="the images and their tags")
    push_parser = sub.add_parser("push", help="tag the built images for --registry and push them (all unless named)")
    push_parser.add_argument("names", nargs="*", metavar="NAME", help=f"of: {', '.join(BY_NAME)}")
    push_parser.add_argument("--registry", required=True, help="registry/namespace, e.g. ghcr.io/carmesh")
    push_parser.add_argument("--engine", choices=ENGINES, help="default: docker if its daemon answers, else buildah")
    args = parser.parse_args(argv)
    version = project_version()
    try:
        if args.command == "list":
            for spec in IMAGES:
                print(f"{spec.name:18} {spec.tag(version)}")
            return 0
        if args.command == "base":
            print(f"{LOCAL_BASE}: {'built' if ensure_local_base() else 'exists'}")
            return 0
        unknown = [name for name in args.names if name not in BY_NAME]
        if unknown:
            parser.error(f"unknown image(s) {', '.join(unknown)}: of {', '.join(BY_NAME)}")
        engine = find_engine(args.engine)
        if args.command == "push":
            for spec in [BY_NAME[name] for name in args.names] or list(IMAGES):
                print(f"pushed {push(spec, engine=engine, version=version, registry=args.registry)}", flush=True)
            return 0
        base = args.base
        if base == "local":
            if engine != "buildah":
                raise ImageError("--base local is made with buildah: add --engine buildah")
            started = time.monotonic()
            if ensure_local_base():
                print(f"{LOCAL_BASE}: built in {time.monotonic() - started:.0f} s", flush=True)
            base = LOCAL_BASE
        for spec in [BY_NAME[name] for name in args.names] or list(IMAGES):
            print(f"building {spec.tag(version, args.prefix)} with {engine} on {base}", flush=True)
            built = build(spec, engine=engine, base=base, version=version, prefix=args.prefix)
            print(f"{built.tag}: {built.seconds:.0f} s, {built.size}", flush=True)
    except ImageError as exc:
        print(f"images: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
