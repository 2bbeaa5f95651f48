"""The local file source against real temporary files and a real event loop."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.config import Config, ConfigError
from controller.file_source import (
    FileSource,
    content_version,
    load_config_file,
    write_active,
)

POLL = 0.01
FLAT = """\
# Which colour serves users.
active: blue  # flip to green after testing
upstream.blue: http://myapp-blue:80   # v1
upstream.green: http://myapp-green:80 # v2

health.interval: 2s
"""
CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: bluegreen
  annotations:
    active: not-this-one
data:
  # the switch
  active: "blue"
  upstream.blue: http://myapp-blue:80
  upstream.green: http://myapp-green:80
"""


class Recorder:
    """Collects what a FileSource hands over, with the loop time of each call."""

    def __init__(self) -> None:
        self.configs: asyncio.Queue[tuple[Config, str, float]] = asyncio.Queue()
        self.errors: asyncio.Queue[tuple[ConfigError, float]] = asyncio.Queue()

    def on_config(self, config: Config, version: str) -> None:
        self.configs.put_nowait((config, version, time.perf_counter()))

    def on_error(self, error: ConfigError) -> None:
        self.errors.put_nowait((error, time.perf_counter()))

    async def next_config(self) -> tuple[Config, str, float]:
        return await asyncio.wait_for(self.configs.get(), timeout=2)

    async def next_error(self) -> tuple[ConfigError, float]:
        return await asyncio.wait_for(self.errors.get(), timeout=2)

    async def assert_quiet(self, polls: int = 10) -> None:
        await asyncio.sleep(POLL * polls)
        assert self.configs.empty(), self.configs.get_nowait()
        assert self.errors.empty(), self.errors.get_nowait()


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "bluegreen.yaml"
    path.write_text(FLAT)
    return path


@pytest.fixture
async def watched(config_path: Path) -> AsyncIterator[tuple[FileSource, Recorder]]:
    """A FileSource whose initial config is loaded and whose watch loop runs."""
    recorder = Recorder()
    source = FileSource(config_path, recorder.on_config, recorder.on_error, poll_interval=POLL)
    config, version = await source.load_initial()
    assert (config.active, version) == ("blue", content_version(FLAT.encode()))
    task = asyncio.create_task(source.run())
    await asyncio.sleep(POLL * 2)  # the loop has taken its first look
    yield source, recorder
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# Blocking file operations on purpose: each test needs the file changed at a known instant, and
# the watcher under test must cope with whatever the loop sees next.
def write(path: Path, text: str) -> None:
    path.write_text(text)


def remove(path: Path) -> None:
    path.unlink()


def replace_file(path: Path, text: str) -> None:
    """Save the way editors do: write a new file beside it, then rename it over the old one."""
    temp = path.with_name(path.name + ".swp")
    temp.write_text(text)
    os.replace(temp, path)


# --- load_config_file --------------------------------------------------------------------------


@pytest.mark.parametrize("text", [FLAT, CONFIGMAP])
def test_load_config_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    config = load_config_file(path)
    assert config.active == "blue"
    assert config.upstreams == {"blue": "http://myapp-blue:80", "green": "http://myapp-green:80"}


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "the file is empty; it needs at least active: and two upstream.<colour>: keys"),
        (b"# only a comment\n", "the file is empty"),
        (
            b"active: blue\nupstream.blue: [http://b\n",
            "invalid YAML at line 3, column 1: while parsing a flow sequence",
        ),
        (
            b"active: blue\n  upstream.blue: x\n",
            "invalid YAML at line 2, column 16: mapping values are not allowed here",
        ),
        (b"active: blue\nactive: green\n", "invalid YAML at line 2, column 1: while reading a"),
        (b"active: blue\nactive: green\n", "found the key 'active' twice; keep only one"),
        (b"a: 1\n---\nb: 2\n", "invalid YAML at line 2, column 1"),
        (b"active: \xff\n", "not UTF-8 text (bad byte at offset 8)"),
        (b"- active: blue\n", "the document is a list; expected flat keys"),
        (b"active: blue\n", "upstream.<colour>: at least two colours are needed (have: none)"),
    ],
)
def test_load_config_file_rejects(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_config_file(path)
    assert problem in caught.value.problems[0]
    assert str(caught.value).startswith(f"invalid config in {path}")


def test_load_config_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_file(tmp_path / "absent.yaml")
    assert caught.value.problems == ("the file does not exist",)


def test_load_config_file_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(FLAT + "health.timeout: soon\nrollback.enabled: maybe\n")
    with pytest.raises(ConfigError) as caught:
        load_config_file(path)
    assert [p.split(":", 1)[0] for p in caught.value.problems] == [
        "health.timeout",
        "rollback.enabled",
    ]


# --- FileSource --------------------------------------------------------------------------------


async def test_load_initial_rejects_an_invalid_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("active: red\nupstream.blue: http://b\nupstream.green: http://g\n")
    source = FileSource(path, lambda c, v: None, lambda e: None)
    with pytest.raises(ConfigError, match="active: 'red' is not one of the colours"):
        await source.load_initial()


async def test_run_hands_over_the_initial_config_without_load_initial(config_path: Path) -> None:
    recorder = Recorder()
    source = FileSource(config_path, recorder.on_config, recorder.on_error, poll_interval=POLL)
    task = asyncio.create_task(source.run())
    try:
        config, version, _ = await recorder.next_config()
        assert (config.active, version) == ("blue", content_version(FLAT.encode()))
        await recorder.assert_quiet()
    finally:
        task.cancel()


async def test_valid_edit_is_applied_quickly(config_path: Path) -> None:
    recorder = Recorder()
    # The default poll interval, as in production, so the delay measured is the real one.
    source = FileSource(config_path, recorder.on_config, recorder.on_error)
    await source.load_initial()
    task = asyncio.create_task(source.run())
    try:
        await asyncio.sleep(0.02)
        new_text = FLAT.replace("active: blue", "active: green")
        written_at = time.perf_counter()
        write(config_path, new_text)
        config, version, applied_at = await recorder.next_config()
    finally:
        task.cancel()
    delay = applied_at - written_at
    print(f"edit applied {delay * 1000:.1f} ms after the write (poll interval 50 ms)")
    assert config.active == "green"
    assert version == content_version(new_text.encode())
    assert delay < 0.5
    assert recorder.errors.empty()


async def test_identical_content_is_not_applied_again(
    config_path: Path, watched: tuple[FileSource, Recorder]
) -> None:
    _, recorder = watched
    replace_file(config_path, FLAT)  # new inode and mtime, same bytes
    os.utime(config_path)
    await recorder.assert_quiet()


async def test_invalid_edit_is_rejected_whole(
    config_path: Path, watched: tuple[FileSource, Recorder]
) -> None:
    _, recorder = watched
    # A valid switch to green together with one bad key: nothing of it may be applied.
    write(config_path, FLAT.replace("active: blue", "active: green") + "health.path: x\n")
    error, _ = await recorder.next_error()
    assert error.problems == (
        "health.path: 'x' is not a request path; it must start with '/' and have no spaces, "
        "e.g. /healthz",
    )
    assert error.source == str(config_path)
    # Reported once, not on every poll; and no config was handed over.
    await recorder.assert_quiet()
    write(config_path, FLAT.replace("active: blue", "active: green"))
    config, _, _ = await recorder.next_config()
    assert config.active == "green"


async def test_return_to_last_good_content_after_an_error_is_handed_over(
    config_path: Path, watched: tuple[FileSource, Recorder]
) -> None:
    _, recorder = watched
    write(config_path, "active: [\n")
    error, _ = await recorder.next_error()
    assert "invalid YAML at line 2, column 1" in error.problems[0]
    write(config_path, FLAT)
    config, version, _ = await recorder.next_config()
    assert (config.active, version) == ("blue", content_version(FLAT.encode()))


async def test_rename_over_is_detected_even_with_same_size_and_mtime(
    config_path: Path, watched: tuple[FileSource, Recorder]
) -> None:
    _, recorder = watched
    old = os.stat(config_path)
    new_text = FLAT.replace("active: blue ", "active: green")  # same length
    assert len(new_text) == len(FLAT)
    temp = config_path.with_name("new.yaml")
    temp.write_text(new_text)
    os.utime(temp, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(temp, config_path)
    config, _, _ = await recorder.next_config()
    assert config.active == "green"


async def test_deleted_file_keeps_last_good_and_reports_once(
    config_path: Path, watched: tuple[FileSource, Recorder]
) -> None:
    _, recorder = watched
    remove(config_path)
    error, _ = await recorder.next_error()
    assert error.problems == ("the file does not exist",)
    await recorder.assert_quiet()
    # Coming back with other content is a change like any other.
    replace_file(config_path, FLAT.replace("active: blue", "active: green"))
    config, _, _ = await recorder.next_config()
    assert config.active == "green"


@pytest.mark.parametrize("gap", ["truncated", "missing"])
async def test_short_gap_while_an_editor_saves_is_not_an_error(config_path: Path, gap: str) -> None:
    recorder = Recorder()
    source = FileSource(config_path, recorder.on_config, recorder.on_error)
    await source.load_initial()
    # Saving in place truncates then writes; some editors move the old file away first. A poll
    # can fall in between and see an empty or missing file for a moment.
    if gap == "truncated":
        write(config_path, "")
    else:
        remove(config_path)
    await source.check()
    write(config_path, FLAT.replace("active: blue", "active: green"))
    await source.check()
    config, _, _ = await recorder.next_config()
    assert config.active == "green"
    assert recorder.errors.empty()


async def test_a_fault_that_persists_for_one_poll_is_reported(config_path: Path) -> None:
    recorder = Recorder()
    source = FileSource(config_path, recorder.on_config, recorder.on_error)
    await source.load_initial()
    write(config_path, "")
    await source.check()
    assert recorder.errors.empty()
    await source.check()
    error, _ = await recorder.next_error()
    assert "the file is empty" in error.problems[0]
    await source.check()
    assert recorder.errors.empty()
    assert recorder.configs.empty()


async def test_a_failing_consumer_does_not_stop_the_watch(config_path: Path) -> None:
    seen: list[str] = []

    def on_config(config: Config, version: str) -> None:
        seen.append(config.active)
        raise RuntimeError("consumer bug")

    source = FileSource(config_path, on_config, lambda e: None, poll_interval=POLL)
    await source.check()
    write(config_path, FLAT.replace("active: blue", "active: green"))
    await source.check()
    assert seen == ["blue", "green"]


# --- write_active ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [FLAT, CONFIGMAP])
def test_write_active_switches_and_keeps_comments(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    path.chmod(0o640)
    inode = path.stat().st_ino
    assert write_active(path, "green") == ("blue", "green")
    after = path.read_text()
    assert after == text.replace("active: blue", "active: green").replace(
        'active: "blue"', 'active: "green"'
    )
    assert load_config_file(path).active == "green"
    st = path.stat()
    assert st.st_ino != inode  # replaced by rename, never rewritten in place
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]  # no temp file left


def test_write_active_twice_switches_back(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(FLAT)
    write_active(path, "green")
    assert write_active(path, "blue") == ("green", "blue")
    assert path.read_text() == FLAT


def test_write_active_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(FLAT)
    before = path.stat()
    assert write_active(path, "blue") == ("blue", "blue")
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_write_active_follows_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "real.yaml"
    target.write_text(FLAT)
    link = tmp_path / "link.yaml"
    link.symlink_to(target)
    write_active(link, "green")
    assert link.is_symlink()
    assert load_config_file(target).active == "green"


@pytest.mark.parametrize(
    ("text", "colour", "problem"),
    [
        (FLAT, "red", "active: 'red' is not one of the colours; known colours: blue, green"),
        (FLAT + "health.path: x\n", "green", "health.path: 'x' is not a request path"),
        (
            "{active: blue, upstream.blue: 'http://b', upstream.green: 'http://g'}\n",
            "green",
            "active: found no 'active:' lines",
        ),
    ],
)
def test_write_active_refuses_and_leaves_the_file(
    tmp_path: Path, text: str, colour: str, problem: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        write_active(path, colour)
    assert problem in caught.value.problems[0]
    assert caught.value.source == str(path)
    assert path.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


async def test_write_active_is_seen_by_a_running_watch(
    config_path: Path, watched: tuple[FileSource, Recorder]
) -> None:
    _, recorder = watched
    write_active(config_path, "green")
    config, _, _ = await recorder.next_config()
    assert config.active == "green"
    assert recorder.errors.empty()
