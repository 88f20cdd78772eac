"""What the capture knows about one background task: `TaskRecord`, `TaskStatus`, `TaskRequest`."""

from __future__ import annotations

import enum
import os
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from ._matching import callable_name, format_call

if TYPE_CHECKING:
    import contextvars

    from ._recorder import RequestScope


Site = tuple[types.CodeType, int]
"""Where a task was created: the app's code object and the offset of the calling instruction."""


def line_at(code: types.CodeType, offset: int) -> int:
    """The source line of the instruction at `offset` in `code`, as a frame's `f_lineno` says."""
    for start, end, line in code.co_lines():
        if start <= offset < end and line is not None:
            return line
    return code.co_firstlineno


def display_path(filename: str) -> str:
    """A file's path relative to the working directory, or as it is when it lies outside."""
    same_drive = os.path.splitdrive(filename)[0] == os.path.splitdrive(os.getcwd())[0]
    relative = os.path.relpath(filename) if same_drive else filename
    return filename if relative.startswith(os.pardir) else relative


class TaskStatus(str, enum.Enum):
    """What became of a background task."""

    PENDING = "pending"
    """Scheduled; its response has not finished yet."""
    RAN = "ran"
    """Ran to completion (or a `replace` fake did)."""
    FAILED = "failed"
    """Raised, for real or through `bgtasks.fail()`."""
    SKIPPED = "skipped"
    """Never run, on purpose (mode "skip" or `bgtasks.skip()`)."""
    DEFERRED = "deferred"
    """Held until `bgtasks.run_deferred()` or `await bgtasks.arun_deferred()`."""
    DROPPED = "dropped"
    """Scheduled, but its response never carried it, so nothing ever called it."""
    NOT_RUN = "not run"
    """An earlier task of the same response failed, so Starlette never reached it."""
    CANCELLED = "cancelled"
    """Cancelled while running, or never started because its request was cancelled."""

    def __str__(self) -> str:
        return self.value


class TaskRequest(NamedTuple):
    """The request that scheduled a task: `TaskRequest("POST", "/signup")`."""

    method: str
    path: str

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


class Details:
    """What only some records need (a failure, a reason, a deferral), kept apart so that the
    common record stays small: a capture may hold many, and the garbage collector visits
    every slot of every one. Unset fields read as the class defaults."""

    exception: BaseException | None = None
    reason: str | None = None
    problem: str | None = None
    simulated: bool = False
    in_request: bool = False
    """Whether a failure happened while a request ran it (not `run_deferred()`, not the test)."""
    excused: bool = False
    """A drop that is the framework working as designed (the endpoint raised)."""
    again_of: TaskRecord | None = None
    """For a task object that ran a second time: its first record."""
    generation: int = 0
    """How many deferred tasks scheduled this one, one inside the other."""
    held: tuple[contextvars.Context, Any] | None = None
    """While deferred: the context it was scheduled with, and a way back to its event loop."""


_NO_DETAILS = Details()
"""Shared by every record that has no details; never written to."""


class TaskRecord:
    """One background task an app scheduled, and what became of it.

    Its repr reads like the call: `send_welcome_email('a@b.com') [ran] POST /signup`.
    """

    __slots__ = ("_details", "_scope", "_site", "_started", "_task", "index", "status")

    status: TaskStatus
    index: int
    """Position in scheduling order, starting at 0."""

    def __init__(
        self,
        task: Any,
        index: int,
        site: Site | None,
        scope: RequestScope | None,
    ) -> None:
        self._task = task
        self.index = index
        self.status = TaskStatus.PENDING
        self._site = site
        self._scope = scope
        self._started = False
        """Whether a response (or `run_deferred()`) called it."""
        self._details = _NO_DETAILS

    def _more(self) -> Details:
        """This record's own details, to write to."""
        if self._details is _NO_DETAILS:
            self._details = Details()
        return self._details

    @property
    def func(self) -> Callable[..., Any]:
        """The callable given to `add_task` or `BackgroundTask`."""
        func: Callable[..., Any] = self._task.func
        return func

    @property
    def args(self) -> tuple[Any, ...]:
        """The positional arguments it is called with."""
        args: tuple[Any, ...] = self._task.args
        return args

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments it is called with."""
        kwargs: dict[str, Any] = self._task.kwargs
        return kwargs

    @property
    def request(self) -> TaskRequest | None:
        """Method and path of the request that scheduled it; None outside a request."""
        return self._scope.request if self._scope is not None else None

    @property
    def exception(self) -> BaseException | None:
        """What the task raised (the real exception, or the one `fail()` injected)."""
        return self._details.exception

    @property
    def reason(self) -> str | None:
        """Why it was dropped, not run or cancelled; None otherwise."""
        return self._details.reason

    @property
    def problem(self) -> str | None:
        """A misuse found at the call site (a coroutine object given to `add_task`...)."""
        return self._details.problem

    @property
    def simulated(self) -> bool:
        """True when `exception` was injected by `bgtasks.fail()`."""
        return self._details.simulated

    @property
    def name(self) -> str:
        """The task function's name: `send_welcome_email`, `Mailer.send`."""
        return callable_name(self.func)

    @property
    def added_at(self) -> str | None:
        """Where the app scheduled it, as "file.py:LINE" (relative to the working directory)."""
        if self._site is None:
            return None
        code, offset = self._site
        return f"{display_path(code.co_filename)}:{line_at(code, offset)}"

    @property
    def call(self) -> str:
        """The call this task makes, as source: `send_welcome_email('a@b.com')`."""
        return format_call(self.func, self.args, self.kwargs)

    def __repr__(self) -> str:
        text = f"{self.call} [{self.status}]"
        if self.request is not None:
            text += f" {self.request}"
        return text

    def describe(self) -> str:
        """One line for reports: the repr, the call site, and why it did not run."""
        text = repr(self)
        if self.added_at is not None:
            text += f"  ({self.added_at})"
        notes = [note for note in (self.reason, self.problem) if note]
        if self.exception is not None and str(self.exception) == self.problem:
            pass  # the plugin made the exception to report the problem: nothing more to say
        elif self.exception is not None:
            how = "simulated by bgtasks.fail()" if self.simulated else "raised"
            notes.insert(0, f"{how}: {self.exception!r}")
        return text + "".join(f"\n    {note}" for note in notes)
