"""The key table of controller/config_keys.py against the section types and the documentation.

The table is the one place a key is written: these tests fail when a default drifts from the
section type's own default, when a section field has no key, or when docs/configuration.md and
the table disagree about a key, its kind or its default.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from controller.config import DERIVED_FIELDS, SECTIONS, Config
from controller.config_keys import KEYS, KNOWN_KEYS, Key

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
SETTINGS = [key for key in KEYS if key.default is not None]
# Read before the table is walked (they need the colours), or derived from other keys: no default.
COLOUR_KEYS = {"active", "upstream.<colour>", "preview.colour", "scale.<colour>", "scale.after"}


def doc_rows() -> dict[str, list[str]]:
    """Return the cells of every row of the tables under the docs' "## Keys", by key."""
    section = DOCS.read_text().split("\n## Keys\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue  # prose, or a table's head
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        name = cells[0].strip("`")
        assert name not in rows, f"{name} has two rows in {DOCS.name}"
        rows[name] = cells
    return rows


def test_names_are_unique_and_known_keys_follow_the_table() -> None:
    assert len(set(KNOWN_KEYS)) == len(KEYS)
    assert tuple(key.name for key in KEYS) == KNOWN_KEYS


@pytest.mark.parametrize("key", SETTINGS, ids=lambda key: key.name)
def test_default_text_parses_to_the_section_default(key: Key) -> None:
    if key.section:
        expected = getattr(SECTIONS[key.section](), key.field)
    else:
        expected = Config.__dataclass_fields__[key.field].default
    assert key.kind.parse(key.default or "") == expected


def test_every_section_field_is_set_by_exactly_one_key() -> None:
    targets = [key.target for key in KEYS]
    assert len(set(targets)) == len(targets)
    for name, section in SECTIONS.items():
        assert dataclasses.is_dataclass(section), name
        for field in dataclasses.fields(section):
            if field.init:
                assert f"{name}.{field.name}" in targets, f"no key sets Config.{name}.{field.name}"
    for field in dataclasses.fields(Config):
        if field.name not in SECTIONS and field.name not in DERIVED_FIELDS:
            assert field.name in targets, f"no key sets Config.{field.name}"


def test_the_docs_have_a_row_for_every_key_and_no_other() -> None:
    assert sorted(doc_rows()) == sorted(KNOWN_KEYS)


@pytest.mark.parametrize("key", KEYS, ids=lambda key: key.name)
def test_the_docs_give_each_key_its_kind_and_default(key: Key) -> None:
    _, kind, default, *_ = doc_rows()[key.name]
    assert kind == key.kind.name
    if key.default is None:
        assert key.name in COLOUR_KEYS
        assert default.startswith(("required", "see below")), default
    elif key.default == "":
        assert default.startswith("empty"), default
    else:
        assert default == f"`{key.default}`"


def test_every_key_has_a_doc_line() -> None:
    assert all(key.doc and len(key.doc) <= 80 for key in KEYS)
