"""What the README promises, for the tests that check the code keeps to it."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def errors_table() -> list[tuple[str, str]]:
    """The rows of "Errors and what they mean": (message, what to do)."""
    section = README.read_text().split("\n## Errors and what they mean\n", 1)[1].split("\n## ")[0]
    rows = re.findall(r"^\| `(.+?)` \| (.+?) \|$", section, re.M)
    assert rows, "no rows in the README's Errors table"
    return rows


def assert_listed(message: str) -> None:
    """A row of the README's Errors table shows `message`: the row's message, where `...`
    stands for any text, is found in it."""
    for shown, _ in errors_table():
        pattern = ".*".join(re.escape(part) for part in shown.split("..."))
        if re.search(pattern, message, re.S):
            return
    raise AssertionError(f"The README's Errors table has no row for this message:\n{message}")
