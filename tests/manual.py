"""What the documentation promises, for the tests that check the code keeps to it."""

from __future__ import annotations

import re
from pathlib import Path

ERRORS = Path(__file__).resolve().parent.parent / "docs" / "errors.md"
"""The page "Errors and what they mean"."""


def errors_table() -> list[tuple[str, str]]:
    """The rows of the tables of "Errors and what they mean": (message, what to do)."""
    rows = re.findall(r"^\| `(.+?)` \| (.+?) \|$", ERRORS.read_text(), re.M)
    assert rows, "no rows in the tables of docs/errors.md"
    return rows


def assert_listed(message: str) -> None:
    """A row of the Errors page shows `message`: the row's message, where `...` stands for any
    text, is found in it."""
    for shown, _ in errors_table():
        pattern = ".*".join(re.escape(part) for part in shown.split("..."))
        if re.search(pattern, message, re.S):
            return
    raise AssertionError(f"docs/errors.md has no row for this message:\n{message}")
