"""The developer's tools say what CI says: pre-commit runs bin/check's linters, as it runs them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def hooks() -> list[dict[str, Any]]:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    return [hook for repo in config["repos"] for hook in repo["hooks"]]


def test_every_pre_commit_hook_is_a_command_of_bin_check() -> None:
    check = (ROOT / "bin" / "check").read_text().splitlines()
    entries = {hook["id"]: hook["entry"] for hook in hooks()}
    assert set(entries) == {"ruff", "ruff-format", "mypy", "lint-imports"}
    for hook_id, entry in entries.items():
        command = entry.removesuffix(" --force-exclude")
        assert command.startswith(".venv/bin/"), (hook_id, entry)
        runs = [line for line in check if line in (command, f"{command} .")]
        assert runs, f"{hook_id}: bin/check does not run {command!r}"


def test_whole_tree_tools_do_not_get_file_names() -> None:
    # mypy and lint-imports check the packages pyproject.toml names; given only the staged
    # files, mypy would miss errors a change causes elsewhere.
    for hook in hooks():
        if hook["id"] in {"mypy", "lint-imports"}:
            assert hook["pass_filenames"] is False, hook["id"]
