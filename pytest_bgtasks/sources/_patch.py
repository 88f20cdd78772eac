"""Patching with a record of what was there: install over whatever is in place, find our own
patch under other libraries' wrappers rather than stack a second one, put back only what is
still ours, and leave a patch someone wrapped since in place, inert."""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

MARK = "__pytest_bgtasks_patch__"
SEARCH_DEPTH = 32
"""How many wrappers deep a patch is looked for under others' wrappers."""


class Slot:
    """What one installed patch calls: its source while installed, None when inert. It names
    its patch too: a wrapper made with `functools.wraps` copies the mark, not the identity."""

    __slots__ = ("patch", "source")

    def __init__(self, source: Any) -> None:
        self.source = source
        self.patch: Any = None


class Patches:
    """The attributes one source replaced."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.installed: dict[tuple[object, str], tuple[Any, Any, Slot]] = {}
        """(owner, name) -> (our patch, what it replaced, its slot)."""

    def original(self, owner: object, name: str) -> Any:
        return self.installed[owner, name][1]

    def install(
        self, owner: object, name: str, make: Callable[[Any, Slot], Callable[..., Any]]
    ) -> bool:
        """Patch `owner.name` with `make(original, slot)`, unless a patch of ours is in place
        already (found, it calls this source from now on). True when newly patched."""
        current = attribute(owner, name)
        known = self.installed.get((owner, name))
        if known is not None and current is known[0]:
            return False
        found = find_patch(current.fget if isinstance(current, property) else current)
        if found is not None:
            slot = getattr(found, MARK)
            slot.source = self.source
            original = found.__wrapped__
            if isinstance(current, property):
                original = property(original)
                found = current
            if found is current or known is None:
                self.installed[owner, name] = (found, original, slot)
            return False
        slot = Slot(self.source)
        getter: Any = current.fget if isinstance(current, property) else current
        function = make(getter, slot)
        functools.update_wrapper(function, getter)
        function.__module__ = make.__module__  # ours: Celery tells a custom __call__ by it
        setattr(function, MARK, slot)
        slot.patch = function
        patch = property(function) if isinstance(current, property) else function
        setattr(owner, name, patch)
        self.installed[owner, name] = (patch, current, slot)
        return True

    def uninstall(self) -> None:
        for (owner, name), (patch, original, slot) in self.installed.items():
            slot.source = None
            if attribute(owner, name) is patch:
                setattr(owner, name, original)
        self.installed.clear()


def attribute(owner: object, name: str) -> Any:
    return owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)


def find_patch(current: Any) -> Any:
    """A patch of ours at `current` or under the wrappers on top of it: followed through
    `__wrapped__` and through the functions a wrapper keeps in its closure."""
    level = [current]
    visited: set[int] = set()
    for _ in range(SEARCH_DEPTH):
        below: list[Any] = []
        for item in level:
            if id(item) in visited:
                continue
            visited.add(id(item))
            if isinstance(item, types.FunctionType) and _is_patch(item):
                return item
            wrapped = getattr(item, "__wrapped__", None)
            if wrapped is not None:
                below.append(wrapped)
            for cell in getattr(item, "__closure__", None) or ():
                try:
                    content = cell.cell_contents
                except ValueError:  # an empty cell
                    continue
                if isinstance(content, types.FunctionType):
                    below.append(content)
        if not below:
            return None
        level = below
    return None


def _is_patch(item: types.FunctionType) -> bool:
    """A patch of ours (its Slot, maybe of an earlier import of this module, names it)."""
    return getattr(getattr(item, MARK, None), "patch", None) is item
