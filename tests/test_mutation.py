"""The mutation-testing setup's list of surviving mutants stays in step with the code. (The
mutation run itself is not part of the suite: see docs/maintainers/mutation.md.)"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

SURVIVORS = Path(__file__).resolve().parent.parent / "mutation" / "equivalent.md"
NAME = re.compile(
    r"^(?P<module>pytest_bgtasks(?:\.\w+)*?)\."
    r"x(?:_(?P<function>\w+)|ǁ(?P<cls>\w+)ǁ(?P<method>\w+))__mutmut_\d+$"
)


def listed() -> list[str]:
    return re.findall(r"^\| `([^`]+)` \|", SURVIVORS.read_text(), re.M)


def test_every_listed_survivor_names_a_mutant_of_a_function_that_exists() -> None:
    names = listed()
    assert names
    assert len(names) == len(set(names))
    for name in names:
        match = NAME.match(name)
        assert match, name
        owner: object = importlib.import_module(match["module"])
        if match["cls"]:
            owner = getattr(owner, match["cls"])
        assert callable(getattr(owner, match["function"] or match["method"])), name
