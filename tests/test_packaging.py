"""The image's install steps, without a Docker engine: build, install clean, run, stop.

The fixture repeats what the Dockerfile does. It copies into a build directory exactly what the
build stage COPYs, filtered by .dockerignore as the Docker daemon would filter the context, runs
`pip wheel` on it (the project and every dependency, into one wheel directory like /wheels),
creates a clean venv without pip and installs `bluegreen` from that directory with `--no-index`.
The tests then run the console script from that venv, outside the repository, and check the
Dockerfile's own text: its final stage is what Kubernetes will run.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.support.colours import ColourApp
from tests.support.net import free_port
from tests.support.waiting import wait_until_ready

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
VERSION: str = PYPROJECT["project"]["version"]


# --- the Dockerfile and .dockerignore, read as Docker reads them ----------------------------


@dataclass
class Stage:
    """One FROM ... section of a Dockerfile: its base, name and instructions in order."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, arguments)

    def arguments(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]


def dockerfile_stages(text: str) -> list[Stage]:
    """Split a Dockerfile into stages; comments go, backslash continuations are joined."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue  # a comment, also inside a continued instruction
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        if whole:
            logical.append(whole)
    assert not pending, "the Dockerfile ends inside a continued line"
    stages: list[Stage] = []
    for instruction in logical:
        keyword, _, args = instruction.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            words = [w for w in words if not w.startswith("--platform=")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif keyword != "ARG" or stages:
            assert stages, f"{instruction!r} comes before the first FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


def copy_sources(stage: Stage) -> list[str]:
    """The build-context paths a stage COPYs (not those copied from another stage)."""
    sources: list[str] = []
    for args in stage.arguments("COPY"):
        words = args.split()
        if any(word.startswith("--from=") for word in words):
            continue
        paths = [word for word in words if not word.startswith("--")]
        sources.extend(paths[:-1])
    return sources


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Translate a .dockerignore pattern (Go filepath.Match plus `**`) into a regex."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


class DockerIgnore:
    """The exclusion rules of a .dockerignore: the last matching pattern wins, and a pattern
    that matches a parent directory matches everything under it (as Docker's patternmatcher)."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for line in text.splitlines():
            pattern = line.strip()
            if not pattern or pattern.startswith("#"):
                continue
            negated = pattern.startswith("!")
            pattern = os.path.normpath(pattern.removeprefix("!").strip()).lstrip("/")
            self.rules.append((negated, _pattern_regex(pattern)))

    def ignored(self, path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        excluded = False
        for negated, regex in self.rules:
            if any(regex.fullmatch(prefix) for prefix in prefixes):
                excluded = not negated
        return excluded


STAGES = dockerfile_stages((REPO / "Dockerfile").read_text(encoding="utf-8"))
IGNORE = DockerIgnore((REPO / ".dockerignore").read_text(encoding="utf-8"))


def build_context(destination: Path) -> None:
    """Copy what the build stage COPYs from the repository, minus what .dockerignore drops."""
    for source in copy_sources(STAGES[0]):
        root = REPO / source
        assert root.exists(), f"the Dockerfile copies {source}, which does not exist"
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            relative = path.relative_to(REPO).as_posix()
            if not IGNORE.ignored(relative):
                target = destination / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)


# --- the fixture: wheels, then a clean venv -------------------------------------------------


@dataclass(frozen=True)
class Installed:
    """The built wheel directory and the clean venv bluegreen was installed into."""

    wheels: Path
    venv: Path
    workdir: Path  # outside the repository, so nothing imports from the source tree

    @property
    def wheel(self) -> Path:
        (wheel,) = self.wheels.glob("bluegreen-*.whl")
        return wheel

    @property
    def bluegreen(self) -> Path:
        return self.venv / "bin" / "bluegreen"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would point Python at the repository or .venv,
    nor choose the pure-Python build (bin/test's pure pass sets BLUEGREEN_PURE), plus `extra`."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "BLUEGREEN_PURE"}
    return {key: value for key, value in os.environ.items() if key not in drop} | extra


def run(
    command: list[str | Path],
    cwd: Path,
    env: dict[str, str] | None = None,
    with_stderr: bool = False,
) -> str:
    """Run `command` to success; its stdout (and stderr with `with_stderr`)."""
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + (result.stderr if with_stderr else "")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Build the wheels the way the build stage does and install them into a clean venv."""
    base = tmp_path_factory.mktemp("packaging")
    context, wheels, venv, workdir = (base / n for n in ("context", "wheels", "venv", "work"))
    workdir.mkdir()
    build_context(context)
    # Build stage: `pip wheel --wheel-dir /wheels .` (the project and all its dependencies),
    # compiling the proxy with mypyc in pip's isolated build environment.
    run([sys.executable, "-m", "pip", "wheel", "--wheel-dir", wheels, context], cwd=workdir)
    install_clean(venv, wheels, workdir)
    return Installed(wheels, venv, workdir)


def install_clean(
    venv: Path, wheels: Path, workdir: Path, requirement: str | Path = "bluegreen"
) -> None:
    """The final stage: a venv with no pip (the image keeps none: the installed program must not
    need pip or setuptools at run time), `requirement` installed from `wheels` alone."""
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=workdir)
    python = venv / "bin" / "python"
    pip: list[str | Path] = [sys.executable, "-m", "pip", "--python", python, "install"]
    run([*pip, "--no-index", "--find-links", wheels, requirement], cwd=workdir)


# --- what was built and installed -----------------------------------------------------------


def test_wheel_holds_the_packages_their_data_and_nothing_else(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
        metadata = wheel.read(f"bluegreen-{VERSION}.dist-info/METADATA").decode()
        entry_points = wheel.read(f"bluegreen-{VERSION}.dist-info/entry_points.txt").decode()
    # Compiled: a wheel for this interpreter and platform, with each compiled module's shim and
    # the shared library beside the sources, which stay for the pure-Python fallback.
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    assert re.fullmatch(rf"bluegreen-{VERSION}-{tag}-{tag}-\w+\.whl", installed.wheel.name)
    for needed in ("proxy/status.html", "proxy/py.typed", "controller/py.typed"):
        assert needed in names
    assert "controller/cli.py" in names and "proxy/server.py" in names
    extensions = {name.split(".", 1)[0] for name in names if name.endswith(".so")}
    assert {"proxy/hotpath__mypyc", "proxy/server", "proxy/downstream"} <= extensions, extensions
    assert "proxy/__init__" not in extensions and "proxy/admin" not in extensions
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"proxy", "controller", f"bluegreen-{VERSION}.dist-info"}, tops
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]
    assert not [n for n in names if re.search(r"(^|/)(tests?|benchmarks|conftest)(/|\.py$)", n)]
    assert "bluegreen = controller.cli:main" in entry_points
    assert "kubectl-bluegreen = controller.cli:kubectl_plugin" in entry_points
    assert f"\nVersion: {VERSION}\n" in metadata
    assert "\nLicense-Expression: Apache-2.0\n" in metadata


def test_clean_venv_runs_the_installed_program(installed: Installed) -> None:
    config = (installed.venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in config
    assert not (installed.venv / "bin" / "pip").exists()
    out = run([installed.bluegreen, "--version"], cwd=installed.workdir)
    python = ".".join(map(str, sys.version_info[:3]))
    assert out.strip() == f"bluegreen {VERSION} (compiled, Python {python})"
    # The run-time switch: the same installation, the sources instead of the compiled modules.
    pure = run(
        [installed.bluegreen, "--version"], cwd=installed.workdir, env=clean_env(BLUEGREEN_PURE="1")
    )
    assert pure.strip() == f"bluegreen {VERSION} (pure Python, Python {python})"
    revision = run(
        [installed.bluegreen, "--version"],
        cwd=installed.workdir,
        env=clean_env(BLUEGREEN_REVISION="0123abc"),
    )
    assert revision.strip() == f"bluegreen {VERSION} (compiled, Python {python}, revision 0123abc)"
    where = run(
        [
            installed.venv / "bin" / "python",
            "-c",
            "import proxy, controller; print(proxy.__file__)",
        ],
        cwd=installed.workdir,
    )
    site_packages = installed.venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    assert Path(where.strip()).is_relative_to(site_packages), where


def build_project_wheel(installed: Installed, name: str, **env: str) -> tuple[Path, str]:
    """Build only bluegreen's wheel from the build context, with `env`, into a new directory.

    With .venv's build requirements (no isolated environment: quicker, and the same pinned
    mypy). Returns the wheel and the build's output (-v: where setup.py says what it built).
    """
    context, wheels = installed.workdir / name / "context", installed.workdir / name / "wheels"
    build_context(context)
    pip_wheel: list[str | Path] = [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps"]
    output = run(
        [*pip_wheel, "--no-build-isolation", "--wheel-dir", wheels, context],
        cwd=installed.workdir,
        env=clean_env(**env),
        with_stderr=True,
    )
    (wheel,) = wheels.glob("bluegreen-*.whl")
    return wheel, output


def test_pure_build_when_asked_for_at_build_time(installed: Installed) -> None:
    wheel, output = build_project_wheel(installed, "pure", BLUEGREEN_PURE="1")
    assert "BLUEGREEN_PURE is set" in output, output
    assert wheel.name == f"bluegreen-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        assert not [name for name in archive.namelist() if name.endswith(".so")]


def test_pure_fallback_when_the_compiler_fails(installed: Installed) -> None:
    # `false` stands for a machine without a working C compiler: every compile fails.
    wheel, output = build_project_wheel(installed, "no-compiler", CC="false")
    assert "compiled proxy could not be built" in output, output
    venv = installed.workdir / "no-compiler" / "venv"
    install_clean(venv, installed.wheels, installed.workdir, wheel)
    out = run([venv / "bin" / "bluegreen", "--version"], cwd=installed.workdir)
    assert "(pure Python, Python " in out, out


@pytest.fixture
async def bluegreen_run(
    installed: Installed, colours: dict[str, ColourApp], tmp_path: Path
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int, int, Path]]:
    """`bluegreen run` from the clean venv on a config file naming the two colour apps."""
    config = tmp_path / "bluegreen.yaml"
    config.write_text(
        f"active: blue\nupstream.blue: {colours['blue'].url}\n"
        f"upstream.green: {colours['green'].url}\nhealth.interval: 500ms\nhealth.timeout: 250ms\n"
    )
    port, admin_port = free_port(), free_port()
    log = tmp_path / "bluegreen.log"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            str(installed.bluegreen),
            "run",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{port}",
            "--admin-listen",
            f"127.0.0.1:{admin_port}",
            cwd=installed.workdir,
            env=clean_env(),
            stdout=sink,
            stderr=sink,
        )
    try:
        yield process, port, admin_port, log
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_installed_proxy_routes_and_stops_cleanly_on_sigterm(
    bluegreen_run: tuple[asyncio.subprocess.Process, int, int, Path],
) -> None:
    process, port, admin_port, log = bluegreen_run
    proxy, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    async with aiohttp.ClientSession() as session:
        await wait_until_ready(
            admin, lambda: process.returncode is not None, lambda: log.read_text(errors="replace")
        )
        async with session.get(proxy + "/") as response:
            assert response.status == 200
            assert response.headers["X-Bluegreen-Colour"] == "blue"
            assert await response.text() == "hello from blue\n"
        async with session.get(proxy + "/", headers={"X-Bluegreen-Preview": "1"}) as response:
            assert response.headers["X-Bluegreen-Colour"] == "green"
        # The status page is package data: it must have come with the wheel.
        async with session.get(admin + "/status", params={"format": "html"}) as response:
            assert response.status == 200
            assert "<title>bluegreen status</title>" in await response.text()
        async with session.get(admin + "/status", params={"format": "json"}) as response:
            assert json.loads(await response.text())["active"] == "blue"
        async with session.get(admin + "/metrics") as response:
            build_info = [
                line
                for line in (await response.text()).splitlines()
                if line.startswith("bluegreen_build_info{")
            ]
        assert len(build_info) == 1 and 'compiled="true"' in build_info[0], build_info
        assert f'version="{VERSION}"' in build_info[0], build_info
        # The session's idle keep-alive connections stay open: they must not hold up the exit
        # (the default --shutdown-grace is 25 s).
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), timeout=10)
        took = time.monotonic() - started
    output = log.read_text()
    assert code == 0, output
    assert took < 5, f"SIGTERM took {took:.1f} s\n{output}"
    assert "shutting down" in output and "stopped" in output, output


# --- the Dockerfile's text -------------------------------------------------------------------


def test_dockerfile_final_stage_is_slim_non_root_and_runs_bluegreen() -> None:
    assert len(STAGES) >= 2, "multi-stage: a build stage and a final one"
    build, final = STAGES[0], STAGES[-1]
    # Same interpreter in both stages, so the cp311 wheels built in one install in the other.
    assert build.base == final.base == "python:3.11-slim-bookworm"
    base_python = re.fullmatch(r"python:(\d+)\.(\d+)-slim-\w+", final.base)
    assert base_python is not None, final.base
    minimum = PYPROJECT["project"]["requires-python"].removeprefix(">=").split(".")
    assert tuple(map(int, base_python.groups())) >= tuple(map(int, minimum))

    users = final.arguments("USER")
    assert users, "the final stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"} and user == "10001", users
    entrypoints = final.arguments("ENTRYPOINT")
    assert entrypoints, "the final stage sets ENTRYPOINT"
    # Exec form (a JSON array): bluegreen is PID 1 and receives SIGTERM itself, no shell between.
    assert json.loads(entrypoints[-1]) == ["bluegreen", "run"]
    assert not final.arguments("HEALTHCHECK"), "Kubernetes ignores HEALTHCHECK; probes do this"

    final_runs = " ".join(final.arguments("RUN"))
    for compiler in ("build-essential", "gcc", "g++", "clang", "make ", "apt-get install"):
        assert compiler not in final_runs, f"{compiler!r} in the final stage"
    assert "build-essential" in " ".join(build.arguments("RUN")), "compilers stay in build"
    # The image must run the compiled proxy: its build stops if the fallback was taken.
    assert 'bluegreen --version | grep -F "(compiled,"' in final.arguments("RUN")
    # The final stage installs from the build stage's wheels only, never from an index.
    assert "--no-index" in final_runs and "from=build" in final_runs
    assert not [a for a in final.arguments("COPY") if "/wheels" in a], "no layer keeps /wheels"

    labels = " ".join(final.arguments("LABEL"))
    for key in ("title", "description", "licenses", "source", "version", "revision"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in labels
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert f"VERSION={VERSION}" in final.arguments("ARG"), "ARG VERSION defaults to pyproject's"


def test_dockerignore_keeps_the_context_to_what_the_build_copies() -> None:
    copied = copy_sources(STAGES[0])
    assert set(copied) == {"pyproject.toml", "setup.py", "README.md", "proxy", "controller"}
    for path in copied:
        assert not IGNORE.ignored(path), path
    for path in ("proxy/status.html", "proxy/py.typed", "controller/cli.py"):
        assert not IGNORE.ignored(path), path
    for path in (
        ".venv",
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "benchmarks/run.py",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/x",
        ".pytest_cache/v",
        "proxy/__pycache__/server.cpython-311.pyc",
        "proxy/server.cpython-311-x86_64-linux-gnu.so",  # an in-place build of the checkout
        "proxy/hotpath__mypyc.cpython-311-x86_64-linux-gnu.so",
        "controller/cli.pyc",
        "bluegreen.egg-info/PKG-INFO",
        "deploy/base/rbac.yaml",
        "kubeconfig",
    ):
        assert IGNORE.ignored(path), path


def test_dockerignore_matcher_follows_docker_semantics() -> None:
    rules = DockerIgnore("*\n!keep\nkeep/**/*.tmp\n# comment\n/abs\n")
    assert rules.ignored("other") and rules.ignored("other/deep/file")
    assert not rules.ignored("keep/a.py") and not rules.ignored("keep/sub/b.py")
    assert rules.ignored("keep/a.tmp") and rules.ignored("keep/sub/b.tmp")
    assert rules.ignored("abs")


def test_the_in_place_build_uses_the_pinned_mypy() -> None:
    # bin/setup compiles in place with .venv's mypy (the test extra), a wheel build with the
    # [build-system] one: the two pins must name the same version, or they generate other C.
    def pin(requirements: list[str]) -> str:
        (mypy,) = [r.split("#")[0].strip() for r in requirements if r.startswith("mypy")]
        return mypy

    build = pin(PYPROJECT["build-system"]["requires"])
    assert build.startswith("mypy==")
    assert pin(PYPROJECT["project"]["optional-dependencies"]["test"]) == build


def test_the_build_environment_holds_every_library_the_compiled_modules_import() -> None:
    # mypyc type-checks proxy/ in pip's isolated build environment, which holds only
    # [build-system] requires. A library missing there is Any to mypy, so `mypy --strict` in
    # .venv passes while the wheel build fails (a `no-any-return` once stopped the image build).
    pure = {"__init__.py", "admin.py"}  # setup.py's PURE_MODULES
    imported: set[str] = set()
    for path in sorted((REPO / "proxy").glob("*.py")):
        if path.name in pure:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    distributions = importlib.metadata.packages_distributions()
    third_party = {
        distributions[name][0].lower().replace("_", "-")
        for name in imported - sys.stdlib_module_names - {"proxy"}
    }
    requires = {
        re.split(r"[<>=!~; \[]", requirement, maxsplit=1)[0].lower()
        for requirement in PYPROJECT["build-system"]["requires"]
    }
    assert third_party, "the compiled modules import no library: is the module list right?"
    assert third_party <= requires, f"add to [build-system] requires: {third_party - requires}"
