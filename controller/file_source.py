"""The local config file source: load it, watch it for edits, and switch `active` in it.

The file is the desired config; the process never writes it. A decision of the process (a
refused switch, a rollback) is kept in its memory (`recorded_decision`): it holds until the file
says something else (any change of a value, such as a new `revision:`), and is gone when the
process restarts, which then serves what the file says. `bluegreen switch` writes the file.

The file holds the flat keys of `controller.config` (or a whole ConfigMap manifest). It is
watched by polling `os.stat`, which notices in-place writes, editors that save by renaming a new
file over the old one, and Kubernetes volume updates (a symlink swap), on every platform and with
no extra dependency. A config is handed over only when the whole file is valid; otherwise the
error is reported and the last good config stays in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import yaml

from controller.config import Config, ConfigError, config_from_document, parse_config
from controller.decision import ServedDecision
from controller.state import utc_now
from controller.yaml_edit import with_active

logger = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]
# What identifies one version of the file on disk; None while it cannot be stat'ed.
_Signature = tuple[int, int, int, int] | None


class StrictLoader(yaml.SafeLoader):
    """safe_load's loader, except that a key given twice is an error rather than last-wins."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        """Construct a mapping as SafeLoader does, raising ConstructorError for a repeated key."""
        seen: set[object] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        f"found the key {key!r} twice; keep only one",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def content_version(raw: bytes) -> str:
    """Return the version label of file content: the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(raw).hexdigest()[:12]


def parse_config_bytes(raw: bytes, source: str) -> Config:
    """Parse and validate the bytes of a config file; errors are ConfigErrors naming `source`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"not UTF-8 text (bad byte at offset {error.start})", source=source
        ) from None
    try:
        doc = yaml.load(text, Loader=StrictLoader)  # a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as error:
        raise ConfigError(_yaml_problem(error), source=source) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"invalid YAML: {error}", source=source) from None
    if doc is None:
        raise ConfigError(
            "the file is empty; it needs at least active: and two upstream.<colour>: keys",
            source=source,
        )
    try:
        return parse_config(config_from_document(doc))
    except ConfigError as error:
        raise error.with_source(source) from None


def _yaml_problem(error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = " ".join(part for part in (error.context, error.problem) if part)
    return f"invalid YAML at {where}{what or 'syntax error'}"


def _read_bytes(path: StrPath) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError("the file does not exist", source=os.fspath(path)) from None
    except OSError as error:
        raise ConfigError(
            f"cannot read the file: {error.strerror or error}", source=os.fspath(path)
        ) from None


def _load(path: StrPath) -> tuple[Config, str]:
    raw = _read_bytes(path)
    return parse_config_bytes(raw, os.fspath(path)), content_version(raw)


def load_config_file(path: StrPath) -> Config:
    """Read and validate the config file at `path`; any fault raises one ConfigError."""
    return _load(path)[0]


class FileSource:
    """Watches one config file and hands over each new valid version of it.

    `on_config(config, version)` is called on the loop with every new valid content, within
    about one poll interval of the write. `on_error(error)` is called once for each change that
    leaves the file missing, unreadable or invalid for at least one more poll. Neither is called
    when nothing changed (a touch, or a save of identical content). After an error, a return to
    the previous good content is handed over again, so the consumer can clear its error state.
    """

    def __init__(
        self,
        path: StrPath,
        on_config: Callable[[Config, str], None],
        on_error: Callable[[ConfigError], None],
        poll_interval: float = 0.05,
    ) -> None:
        self.path = Path(path)
        self.on_config = on_config
        self.on_error = on_error
        self.poll_interval = poll_interval
        self._looked = False
        self._signature: _Signature = None
        self._error_pending = False
        # What was last handed over: ("config", version) or ("error", message).
        self._last: tuple[str, str] | None = None
        self._decision: ServedDecision | None = None  # in memory only: see the module doc

    async def load_initial(self) -> tuple[Config, str]:
        """Load the file as the starting config; raise ConfigError if it is invalid.

        `run` then reports only later changes.
        """
        signature = self._stat()
        config, version = await asyncio.to_thread(_load, self.path)
        self._looked = True
        self._signature = signature
        self._last = ("config", version)
        logger.info("config loaded path=%s version=%s active=%s", self.path, version, config.active)
        return config, version

    @property
    def label(self) -> str:
        """`file:PATH`, for /status and the logs."""
        return f"file:{self.path}"

    @property
    def decides(self) -> bool:
        """Always: the one process reading a file makes its own decisions."""
        return True

    async def start(self) -> None:
        """Load the file and hand it over; raise ConfigError if it is invalid (fatal at start)."""
        config, version = await self.load_initial()
        self.on_config(config, version)

    def recorded_switches(self) -> list[dict[str, str]]:
        """None: a file keeps no switch history, so every change of `active` reads as manual."""
        return []

    def recorded_decision(self) -> ServedDecision | None:
        """The process's decision on the file's current config, kept in memory."""
        return self._decision

    def record_decision(self, decision: ServedDecision, event: str) -> None:
        """Keep the decision in memory; the file (the desired config) is not written."""
        self._decision = decision.stamped(f"pid {os.getpid()}", utc_now())
        logger.info(
            "holding colour=%s serving=%s until %s changes reason=%r",
            decision.desired,
            decision.served,
            self.path,
            decision.reason,
        )

    def record_switch(self, previous: str, active: str) -> None:
        """Nothing: a file keeps no history (`bluegreen rollback` needs a ConfigMap)."""

    async def resign(self) -> None:
        """Nothing to give up: no Lease."""

    async def close(self) -> None:
        """Nothing to release."""

    async def run(self) -> None:
        """Poll the file until cancelled, handing over each change as described on the class."""
        logger.info("watching config path=%s poll_interval=%s", self.path, self.poll_interval)
        while True:
            await self.check()
            await asyncio.sleep(self.poll_interval)

    async def check(self) -> None:
        """Look at the file once and hand over what changed since the last look."""
        signature = self._stat()
        changed = not self._looked or signature != self._signature
        if not changed and not self._error_pending:
            return
        self._looked = True
        self._signature = signature
        try:
            config, version = await asyncio.to_thread(_load, self.path)
        except ConfigError as error:
            if changed:
                # An editor writing in place, or renaming the old file away before writing the
                # new one, leaves a moment where the file is empty, half written or missing.
                # Only a fault that is still there one poll later is reported.
                self._error_pending = True
                return
            self._error_pending = False
            self._hand_over_error(error)
            return
        self._error_pending = False
        self._hand_over_config(config, version)

    def _stat(self) -> _Signature:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)

    def _hand_over_config(self, config: Config, version: str) -> None:
        if self._last == ("config", version):
            return
        self._last = ("config", version)
        logger.info(
            "config changed path=%s version=%s active=%s", self.path, version, config.active
        )
        if self._decision is not None and not self._decision.applies_to(config):
            # A new desired config: the same one coming back later is a new switch.
            self._decision = None
        try:
            self.on_config(config, version)
        except Exception:
            # A consumer bug must not stop the watch; later edits still need handing over.
            logger.exception("on_config failed path=%s version=%s", self.path, version)

    def _hand_over_error(self, error: ConfigError) -> None:
        if self._last == ("error", str(error)):
            return
        self._last = ("error", str(error))
        # Not logged here: the consumer logs the rejection once (controller/process.py), and a
        # second line for the same problem is what a rejected config must not produce.
        try:
            self.on_error(error)
        except Exception:
            logger.exception("on_error failed path=%s", self.path)


def write_active(path: StrPath, colour: str) -> tuple[str, str]:
    """Make `colour` the active colour in the config file; return (previous, new) active.

    The file must be valid before and after; only its `active:` value changes, comments and
    layout stay. The new content replaces the old atomically (a reader sees one or the other,
    never a mix) and keeps the file's mode. Nothing is written when `colour` is already active.
    Raises ConfigError for an invalid file or an unknown colour, OSError if writing fails.
    """
    # A Kubernetes-mounted or symlinked file is edited at its target, so the link stays.
    target = os.path.realpath(path)
    source = os.fspath(path)
    raw = _read_bytes(target)
    current = parse_config_bytes(raw, source)
    if colour not in current.upstreams:
        raise ConfigError(
            f"active: {colour!r} is not one of the colours; known colours: "
            f"{', '.join(current.colours)}",
            source=source,
        )
    if current.active == colour:
        logger.info("switch not needed path=%s active=%s", source, colour)
        return colour, colour
    try:
        new_raw = with_active(raw.decode("utf-8"), colour).encode("utf-8")
    except ConfigError as error:
        raise error.with_source(source) from None
    updated = parse_config_bytes(new_raw, source)
    if updated.active != colour:
        raise ConfigError(
            f"active: rewriting the active: line did not make {colour!r} active; edit it by hand",
            source=source,
        )
    _replace_atomically(target, new_raw)
    logger.info(
        "switched path=%s from=%s to=%s version=%s",
        source,
        current.active,
        colour,
        content_version(new_raw),
    )
    return current.active, colour


def _replace_atomically(path: str, data: bytes) -> None:
    directory = os.path.dirname(path) or "."
    mode = stat.S_IMODE(os.stat(path).st_mode)
    # Same directory, so os.replace is a rename within one filesystem and therefore atomic.
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable; not every platform can open a directory, which is fine.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
