"""Rewrite the `active:` line of a YAML config file, leaving every other byte as it was.

A switch or a rollback with a local file must not reformat the file a person wrote: quoting,
comments and key order stay. So this edits the one line with a regular expression instead of
loading and dumping the YAML. Pure code; controller/file_source.py does the file I/O.
"""

from __future__ import annotations

import re

from controller.config import ConfigError
from controller.values import check_colour

_ACTIVE_LINE = re.compile(
    r"""(?P<head>(?P<indent>[ ]*)(?:active|"active"|'active')[ \t]*:)"""
    r"""(?P<space>[ \t]*)(?P<value>"[^"\r\n]*"|'[^'\r\n]*'|[^\s#][^#\r\n]*?)?"""
    r"""(?P<tail>[ \t]*(?:\#[^\r\n]*)?\r?\n?)"""
)
_DATA_LINE = re.compile(r"""(?:data|"data"|'data')[ \t]*:[ \t]*(?:\#[^\r\n]*)?\r?\n?""")


def with_active(text: str, colour: str) -> str:
    """Return YAML `text` with its `active:` value set to `colour`, all else byte for byte.

    The line rewritten is the top-level `active:` of a flat file, or else the `active:` directly
    under a ConfigMap manifest's top-level `data:`. Quoting and trailing comments are kept.
    Raises ConfigError when `colour` is not a colour name or there is not exactly one such line.
    """
    try:
        check_colour(colour)
    except ValueError as error:
        raise ConfigError(f"active: {error}") from None
    lines = text.splitlines(keepends=True)
    found = [i for i, line in enumerate(lines) if _active_match(line, "")]
    if not found:
        found = _active_lines_under_data(lines)
    if len(found) != 1:
        why = "no" if not found else f"{len(found)}"
        raise ConfigError(
            f"active: found {why} 'active:' lines at the top level or directly under data:; "
            "write exactly one line such as 'active: blue'"
        )
    index = found[0]
    match = _active_match(lines[index], None)
    assert match is not None  # found above
    value = match["value"] or ""
    quote = value[0] if value[:1] in {'"', "'"} else ""
    space = match["space"] or " "
    lines[index] = f"{match['head']}{space}{quote}{colour}{quote}{match['tail']}"
    return "".join(lines)


def _active_match(line: str, indent: str | None) -> re.Match[str] | None:
    match = _ACTIVE_LINE.fullmatch(line)
    if match is None or (indent is not None and match["indent"] != indent):
        return None
    return match


def _active_lines_under_data(lines: list[str]) -> list[int]:
    found: list[int] = []
    inside = False
    child_indent: str | None = None
    for i, line in enumerate(lines):
        content = line.strip()
        if not content or content.startswith("#"):
            continue
        indent = line[: len(line) - len(line.lstrip(" "))]
        if not indent:
            inside = _DATA_LINE.fullmatch(line) is not None
            child_indent = None
            continue
        if not inside:
            continue
        if child_indent is None:
            child_indent = indent  # the first key under data: sets the indentation of the rest
        if _active_match(line, child_indent):
            found.append(i)
    return found
