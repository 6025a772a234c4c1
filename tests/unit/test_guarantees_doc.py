"""docs/guarantees.md names the test behind each row (``tests/...py::test_name``), and every test it names exists: a
renamed or deleted test cannot leave a guarantee pointing at nothing."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "guarantees.md"
ROOT = DOC.parents[1]
#: A test named in the doc: a file, or a file and one of its test functions (a parameter id may follow).
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+)(?:\[[^\]`]*\])?)?`")
#: Sections whose bullets state limits rather than guarantees: a test is named where one measures the limit.
LIMITS = "## Known limits"


@cache
def functions_in(path: str) -> frozenset[str]:
    tree = ast.parse((ROOT / path).read_text())
    return frozenset(
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    )


def rows(text: str) -> list[tuple[str, str]]:
    """(section heading, row) for each row of a table and each bullet (with its continuation lines)."""
    found: list[tuple[str, str]] = []
    section = ""
    bullet: list[str] | None = None
    for line in text.splitlines():
        if bullet is not None and (line.startswith("  ") and line.strip()):
            bullet.append(line)
            continue
        if bullet is not None:
            found.append((section, " ".join(bullet)))
            bullet = None
        if line.startswith("#"):
            section = line
        elif line.startswith("- "):
            bullet = [line]
        elif line.startswith("|") and not set(line) <= set("|- ") and not line.startswith("| fault |"):
            found.append((section, line))
    if bullet is not None:
        found.append((section, " ".join(bullet)))
    return found


def test_every_test_the_doc_names_exists() -> None:
    text = DOC.read_text()
    references = REFERENCE.findall(text)
    assert len(references) > 50
    missing = [
        f"{path}::{name}" if name else path
        for path, name in references
        if not (ROOT / path).is_file() or (name and name not in functions_in(path))
    ]
    assert not missing, missing


def test_every_row_names_the_test_behind_it() -> None:
    unnamed = [
        row[:120]
        for section, row in rows(DOC.read_text())
        if section != LIMITS and not any(name for _, name in REFERENCE.findall(row))
    ]
    assert not unnamed, unnamed


def test_tests_are_named_by_their_path_only() -> None:
    """``test_kill.py`` or a bare ``test_...`` name leaves the reader (and this check) guessing which file."""
    loose = [token for token in re.findall(r"`([^`\n]+)`", DOC.read_text()) if re.match(r"test_\w", token)]
    assert not loose, loose
