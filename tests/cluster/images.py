"""The images the test cluster runs, built here without Docker or a registry.

* A stand-in for ``python:3.11-slim-bookworm`` (the Dockerfile's base, which lives in a registry
  this machine cannot reach): Debian bookworm's own Python 3.11 made into a root filesystem by
  ``mmdebstrap --variant=minbase``, with PATH as in the official image and Debian's
  EXTERNALLY-MANAGED marker removed (the official image has neither Debian's pip policy nor its
  paths). It is a TEST FIXTURE, labelled so in the image, and never what users build on.
* ``bluegreen:0.1.0``: the project's real Dockerfile, unchanged, built by Debian's ``buildah bud``
  against that stand-in (``RUN --mount=type=bind,from=build`` included).
* ``myapp:v1`` and ``myapp:v2``: tests/cluster/myapp (answers with its version, fails on demand).
* ``pause``: the static binary build_apiserver.sh --node makes, as the pod sandbox image.

Each image is exported as an OCI archive into ``~/.cache/bluegreen/cluster-images``, keyed by a
hash of what it is built from, so a warm start only imports them (``ctr images import``, well
under a second each). buildah runs with a throw-away storage directory (vfs driver: no mounts
left behind) that is removed after every build.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MYAPP_DIR = Path(__file__).resolve().with_name("myapp")
BASE_REF = "docker.io/library/python:3.11-slim-bookworm"
# python3-dev: python:3.11-slim ships the headers, and the build stage compiles the proxy.
BASE_PACKAGES = ("python3", "python3-dev", "python3-pip", "python3-venv", "ca-certificates")
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FIXTURE_LABEL = (
    "TEST FIXTURE of bluegreen's tests/cluster: a stand-in for python:3.11-slim-bookworm made "
    "with mmdebstrap from Debian bookworm's python3; not the official image"
)
BLUEGREEN_REF = "docker.io/library/bluegreen:0.1.0"
MYAPP_VERSIONS = ("v1", "v2")
PAUSE_REF = "localhost/bluegreen-test/pause:1.20.2"
# The build context the Dockerfile sees (.dockerignore lets in only these).
CONTEXT_PATHS = (
    "Dockerfile",
    ".dockerignore",
    "pyproject.toml",
    "setup.py",
    "README.md",
    "proxy",
    "controller",
)


def images_cache() -> Path:
    """Where built image archives are kept (``$BLUEGREEN_IMAGES_CACHE`` overrides it)."""
    configured = os.environ.get("BLUEGREEN_IMAGES_CACHE")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "bluegreen" / "cluster-images"


class ImageBuildError(RuntimeError):
    """An image could not be built; the message holds the failed command and its output tail."""


@dataclass(frozen=True)
class ImageArchive:
    """One OCI archive and the image reference it holds."""

    ref: str
    path: Path


def log(message: str) -> None:
    """Progress, on stderr (stdout of `bin/cluster up` is for the shell lines only)."""
    print(f"cluster: {message}", file=sys.stderr, flush=True)


def run(argv: Sequence[str | Path], *, log_path: Path, cwd: Path | None = None) -> None:
    """Run a build command, its output appended to `log_path`; raise with the tail on failure."""
    with log_path.open("ab") as out:
        out.write(f"\n$ {' '.join(map(str, argv))}\n".encode())
        out.flush()
        result = subprocess.run(
            [str(a) for a in argv], cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False
        )
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise ImageBuildError(
            f"{' '.join(map(str, argv))} exited with {result.returncode}\n"
            f"---- last lines of {log_path} ----\n{tail}"
        )


def tree_hash(root: Path, paths: Iterable[str], *extra: str) -> str:
    """A short hash of the files under `paths` (relative to `root`) and of `extra` strings."""
    digest = hashlib.sha256()
    for item in extra:
        digest.update(item.encode() + b"\0")
    for name in sorted(paths):
        top = root / name
        files = sorted(top.rglob("*")) if top.is_dir() else [top]
        for path in files:
            # Bytecode and the in-place build's extension modules: .dockerignore keeps both out
            # of the build context, so they must not change the key either.
            if not path.is_file() or "__pycache__" in path.parts or path.suffix == ".so":
                continue
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


class Buildah:
    """buildah with a private, throw-away storage directory (removed by `close`)."""

    def __init__(self, log_path: Path) -> None:
        if shutil.which("buildah") is None:
            raise ImageBuildError("buildah is missing: run tests/cluster/install_runtime.sh")
        self.log_path = log_path
        self.dir = Path(tempfile.mkdtemp(prefix="bluegreen-buildah-"))
        self.base = [
            "buildah",
            "--root",
            str(self.dir / "root"),
            "--runroot",
            str(self.dir / "run"),
            "--storage-driver",
            "vfs",
        ]

    def __call__(self, *args: str | Path, cwd: Path | None = None) -> None:
        """Run one buildah subcommand against the private storage."""
        run([*self.base, *args], log_path=self.log_path, cwd=cwd)

    def output(self, *args: str) -> str:
        """Run one buildah subcommand and return its stdout."""
        result = subprocess.run([*self.base, *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ImageBuildError(f"buildah {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def load(self, archive: ImageArchive) -> None:
        """Make an archived image available to FROM under its reference."""
        self("pull", "--quiet", f"oci-archive:{archive.path}")
        self("tag", self.output("images", "--quiet", "--noheading").split()[-1], archive.ref)

    def push(self, image: str, archive: ImageArchive) -> None:
        """Export `image` as an OCI archive named `archive.ref`, atomically."""
        partial = archive.path.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        self("push", "--quiet", image, f"oci-archive:{partial}:{archive.ref}")
        partial.rename(archive.path)

    def close(self) -> None:
        """Remove the storage (vfs: plain directories, nothing mounted)."""
        subprocess.run(["chmod", "-R", "u+w", str(self.dir)], check=False, capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def base_image(cache: Path, log_path: Path) -> ImageArchive:
    """The stand-in for python:3.11-slim-bookworm (about 30 s cold)."""
    key = tree_hash(REPO, [], "base", BASE_REF, *BASE_PACKAGES, BASE_PATH, FIXTURE_LABEL)
    archive = ImageArchive(BASE_REF, cache / f"python-standin-{key}.tar")
    if archive.path.is_file():
        return archive
    if shutil.which("mmdebstrap") is None:
        raise ImageBuildError("mmdebstrap is missing: run tests/cluster/install_runtime.sh")
    log("building the stand-in base image with mmdebstrap (test fixture, about 30 s)")
    work = Path(tempfile.mkdtemp(prefix="bluegreen-base-"))
    buildah = Buildah(log_path)
    try:
        rootfs = work / "rootfs.tar"
        run(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--include=" + ",".join(BASE_PACKAGES),
                # Like the official slim image: what pip needs removed, no apt lists kept.
                "--customize-hook=rm -f $1/usr/lib/python3.11/EXTERNALLY-MANAGED",
                "--customize-hook=rm -rf $1/var/lib/apt/lists/* $1/var/cache/apt/*.bin",
                "bookworm",
                rootfs,
            ],
            log_path=log_path,
        )
        container = "bluegreen-standin"
        buildah("from", "--name", container, "scratch")
        buildah("add", container, rootfs, "/")
        buildah(
            "config",
            "--env",
            f"PATH={BASE_PATH}",
            "--env",
            "LANG=C.UTF-8",
            "--cmd",
            "python3",
            "--label",
            f"org.opencontainers.image.description={FIXTURE_LABEL}",
            "--label",
            "org.opencontainers.image.title=bluegreen-test-python-standin",
            container,
        )
        buildah("commit", "--quiet", container, "bluegreen-standin:latest")
        buildah.push("bluegreen-standin:latest", archive)
    finally:
        buildah.close()
        shutil.rmtree(work, ignore_errors=True)
    return archive


def build_dockerfile(
    base: ImageArchive,
    archive: ImageArchive,
    context: Path,
    log_path: Path,
    *,
    file: Path | None = None,
    build_args: Sequence[str] = (),
) -> None:
    """``buildah bud`` one Dockerfile against the stand-in base; export it to `archive`."""
    buildah = Buildah(log_path)
    try:
        buildah.load(base)
        argv: list[str | Path] = [
            "bud",
            "--quiet",
            "--pull=never",
            "--network",
            "host",
            "--isolation",
            "chroot",
            # pip and apt inside the build trust what the host trusts (its CA bundle), read-only.
            "-v",
            "/etc/ssl/certs:/etc/ssl/certs:ro",
            "--tag",
            archive.ref,
        ]
        if file is not None:
            argv += ["--file", file]
        for arg in build_args:
            argv += ["--build-arg", arg]
        buildah(*argv, context, cwd=context)
        buildah.push(archive.ref, archive)
    finally:
        buildah.close()


def bluegreen_image(base: ImageArchive, cache: Path, log_path: Path) -> ImageArchive:
    """The image from the project's Dockerfile as it is (a few minutes cold: pip, apt)."""
    key = tree_hash(REPO, CONTEXT_PATHS, base.path.name)
    archive = ImageArchive(BLUEGREEN_REF, cache / f"bluegreen-{key}.tar")
    if not archive.path.is_file():
        log("building bluegreen:0.1.0 from the Dockerfile with buildah (a few minutes cold)")
        revision = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()
        build_dockerfile(
            base,
            archive,
            REPO,
            log_path,
            build_args=["VERSION=0.1.0", f"REVISION={revision}"],
        )
    return archive


def myapp_images(base: ImageArchive, cache: Path, log_path: Path) -> list[ImageArchive]:
    """``myapp:v1`` and ``myapp:v2`` (seconds: one COPY on the base)."""
    key = tree_hash(MYAPP_DIR.parent, ["myapp"], base.path.name)
    archives = []
    for version in MYAPP_VERSIONS:
        archive = ImageArchive(
            f"docker.io/library/myapp:{version}", cache / f"myapp-{version}-{key}.tar"
        )
        if not archive.path.is_file():
            log(f"building myapp:{version}")
            build_dockerfile(
                base,
                archive,
                MYAPP_DIR,
                log_path,
                file=MYAPP_DIR / "Containerfile",
                build_args=[f"VERSION={version}"],
            )
        archives.append(archive)
    return archives


def pause_image(pause_binary: Path, cache: Path, log_path: Path) -> ImageArchive:
    """The pod sandbox image: the static pause binary alone."""
    key = tree_hash(pause_binary.parent, [pause_binary.name], "pause")
    archive = ImageArchive(PAUSE_REF, cache / f"pause-{key}.tar")
    if archive.path.is_file():
        return archive
    buildah = Buildah(log_path)
    try:
        container = "bluegreen-pause"
        buildah("from", "--name", container, "scratch")
        buildah("copy", "--chmod", "0755", container, pause_binary, "/pause")
        buildah("config", "--entrypoint", '["/pause"]', "--user", "65535:65535", container)
        buildah("commit", "--quiet", container, PAUSE_REF)
        buildah.push(PAUSE_REF, archive)
    finally:
        buildah.close()
    return archive


def all_images(pause_binary: Path, log_path: Path) -> list[ImageArchive]:
    """Build whatever is missing; return every archive the cluster imports."""
    cache = images_cache()
    cache.mkdir(parents=True, exist_ok=True)
    base = base_image(cache, log_path)
    return [
        pause_image(pause_binary, cache, log_path),
        bluegreen_image(base, cache, log_path),
        *myapp_images(base, cache, log_path),
    ]
