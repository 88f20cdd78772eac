"""What teardown complains about, read from the records: one function per check.

Each returns a `Finding` (or None): what kind it is, the records concerned, and the message.
`plugin.py` decides, by the marker and ini settings, which findings fail the test and which
only warn; outside pytest, `BackgroundTaskCapture.findings()` returns them all.
"""

from __future__ import annotations

import dataclasses
import traceback
import types
from collections.abc import Callable, Sequence
from typing import Literal

import pytest_bgtasks._messages as _messages

from ._lifecycle import TaskRecord, TaskStatus

FindingKind = Literal[
    "dropped", "ran_again", "hidden_failure", "did_nothing", "unrun", "unfinished"
]
"""`dropped` and `ran_again` are checked by `on_dropped`; `hidden_failure` and `did_nothing`
by `allow_failures`; `unrun` and `unfinished` by `assert_all_run`."""

LIBRARY_MODULES = (
    "pytest_bgtasks.",
    "anyio.",
    "asyncio.",
    "concurrent.",
    "contextlib",
    "threading",
    "httpx.",
    "httpx2.",
    "httpcore.",
    "httpcore2.",
    "sniffio.",
    "trio.",
    "outcome.",
    "uvicorn.",
    "h11.",
    "exceptiongroup.",
)
"""Modules whose frames are neither the app's nor the test's: the plugin, the event loops,
the clients and servers. Each source adds its framework's."""


@dataclasses.dataclass(frozen=True)
class Finding:
    """Something teardown reports: a silent drop, a failure nobody saw, a task left unrun."""

    kind: FindingKind
    records: tuple[TaskRecord, ...]
    message: str

    def __str__(self) -> str:
        return self.message


def dropped(records: Sequence[TaskRecord]) -> Finding | None:
    """Tasks added that their response never carried, and not for an excuse (the endpoint
    raised, the request was cancelled)."""
    found = [r for r in records if r.status is TaskStatus.DROPPED and not r._details.excused]
    return Finding("dropped", tuple(found), _messages.dropped(found)) if found else None


def ran_again(records: Sequence[TaskRecord]) -> Finding | None:
    """Task objects that ran a second time: a response reused across requests."""
    found = [r for r in records if r._details.again_of is not None]
    return Finding("ran_again", tuple(found), _messages.ran_again(found)) if found else None


def hidden_failures(records: Sequence[TaskRecord]) -> Finding | None:
    """Tasks that raised for real where the test could not see it: the client or a middleware
    hid the exception."""
    found = [
        r
        for r in records
        if r.status is TaskStatus.FAILED
        and not r._details.simulated
        and not r._details.did_nothing
        and r._details.exception is not None
        and not seen(r)
    ]
    if not found:
        return None
    frames = [task_frames(r) for r in found]
    message = _messages.unseen_failures(found, frames, found[0]._source.root)
    return Finding("hidden_failure", tuple(found), message)


def did_nothing(records: Sequence[TaskRecord]) -> Finding | None:
    """Tasks that returned without doing their work (a sync function returned a coroutine)."""
    found = [r for r in records if r.status is TaskStatus.FAILED and r._details.did_nothing]
    return Finding("did_nothing", tuple(found), _messages.did_nothing(found)) if found else None


def unrun(records: Sequence[TaskRecord]) -> Finding | None:
    """Deferred tasks nobody ran."""
    found = [r for r in records if r.status is TaskStatus.DEFERRED]
    return Finding("unrun", tuple(found), _messages.unrun_deferred(found)) if found else None


def unfinished(records: Sequence[TaskRecord]) -> Finding | None:
    """Tasks still running: sent to a worker that has not finished them."""
    found = [r for r in records if r.running]
    return Finding("unfinished", tuple(found), _messages.unfinished(found)) if found else None


CHECKS: tuple[Callable[[Sequence[TaskRecord]], Finding | None], ...] = (
    dropped,
    ran_again,
    hidden_failures,
    did_nothing,
    unrun,
    unfinished,
)


def findings(records: Sequence[TaskRecord]) -> list[Finding]:
    if not records:  # most tests: nothing to check
        return []
    return [finding for check in CHECKS if (finding := check(records)) is not None]


# -- did the test see it? ---------------------------------------------------------------------


def seen(record: TaskRecord) -> bool:
    """Whether the test saw the task's exception: it went past the app (or past the runner, for
    a task run outside any request) to the test's code, itself or inside what left the app (an
    ExceptionGroup, the RuntimeError it caused)."""
    details = record._details
    exc = details.exception
    assert exc is not None
    library = record._source.library
    request = details.failed_in
    if request is not None:
        escaped = request.error
        return (
            escaped is not None
            and contains(escaped, exc)
            and reached_caller(escaped, request.error_traceback, library)
        )
    return reached_caller(exc, details.raised_at, library)


def reached_caller(
    exc: BaseException, boundary: types.TracebackType | None, library: tuple[str, ...]
) -> bool:
    """Whether `exc` went past `boundary` (where it left the app, or the runner) to code other
    than the framework and client libraries: the test, or a helper it called, saw it.

    A traceback lists the outermost frame first: the frames before the boundary are where the
    exception went after leaving it. One that never reached the boundary has none of it.
    """
    if boundary is None:
        return False
    reached = False
    tb = exc.__traceback__
    while tb is not None:
        if tb is boundary:
            return reached
        reached = reached or not is_library(tb.tb_frame, library)
        tb = tb.tb_next
    return False


def contains(outer: BaseException, inner: BaseException) -> bool:
    """Whether `inner` is `outer`, or inside it: its cause, context, or a group's members."""
    pending = [outer]
    visited: set[int] = set()
    while pending:
        exc = pending.pop()
        if exc is inner:
            return True
        if id(exc) in visited:
            continue
        visited.add(id(exc))
        pending += [e for e in (exc.__cause__, exc.__context__) if e is not None]
        pending += list(getattr(exc, "exceptions", ()))
    return False


def task_frames(record: TaskRecord) -> traceback.StackSummary:
    """The traceback of a task's exception from the task's own code on: the frames of the
    app, the framework and the threadpool that led to it are left out."""
    exc = record._details.exception
    assert exc is not None
    library = record._source.library
    start = record._details.raised_at
    tb = start.tb_next if start is not None else exc.__traceback__
    entries: list[tuple[types.FrameType, int]] = list(traceback.walk_tb(tb))
    while entries and is_library(entries[0][0], library):
        entries.pop(0)
    if not entries:  # raised inside the framework itself: show all of it
        entries = list(traceback.walk_tb(exc.__traceback__))
    return traceback.StackSummary.extract(entries)


def is_library(frame: types.FrameType, library: tuple[str, ...]) -> bool:
    module = str(frame.f_globals.get("__name__")) + "."  # "None." for none: no library
    return module.startswith(LIBRARY_MODULES) or module.startswith(library)
