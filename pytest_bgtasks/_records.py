"""What the capture knows about one background task: `TaskRecord`, `TaskStatus`, `TaskRequest`."""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from ._matching import callable_name, format_call

if TYPE_CHECKING:
    import contextvars

    from ._recorder import RequestScope


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


class TaskRecord:
    """One background task an app scheduled, and what became of it.

    Its repr reads like the call: `send_welcome_email('a@b.com') [ran] POST /signup`.
    """

    __slots__ = (
        "_again_of",
        "_batch",
        "_context",
        "_excused",
        "_generation",
        "_in_request",
        "_resume",
        "_scope",
        "_site",
        "_started",
        "_task",
        "args",
        "exception",
        "func",
        "index",
        "kwargs",
        "problem",
        "reason",
        "request",
        "simulated",
        "status",
    )

    func: Callable[..., Any]
    """The callable given to `add_task` or `BackgroundTask`."""
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    status: TaskStatus
    exception: BaseException | None
    """What the task raised (the real exception, or the one `fail()` injected)."""
    request: TaskRequest | None
    """Method and path of the request that scheduled it; None outside a request."""
    index: int
    """Position in scheduling order, starting at 0."""
    reason: str | None
    """Why it was dropped, not run or cancelled; None otherwise."""
    problem: str | None
    """A misuse of the API found at the call site (a coroutine object given to `add_task`...)."""
    simulated: bool
    """True when `exception` was injected by `bgtasks.fail()`."""

    def __init__(
        self,
        task: Any,
        *,
        index: int,
        site: tuple[str, int] | None,
        scope: RequestScope | None,
        generation: int = 0,
    ) -> None:
        self._task = task
        self.func = task.func
        self.args = tuple(task.args)
        self.kwargs = dict(task.kwargs)
        self.status = TaskStatus.PENDING
        self.exception = None
        self.request = scope.request if scope is not None else None
        self.index = index
        self.reason = None
        self.problem = None
        self.simulated = False
        self._site = site
        self._scope = scope
        self._batch: Any = None
        self._again_of: TaskRecord | None = None
        self._started = False
        self._excused = False
        self._generation = generation
        self._in_request = False
        self._context: contextvars.Context | None = None
        self._resume: Any = None

    @property
    def name(self) -> str:
        """The task function's name: `send_welcome_email`, `Mailer.send`."""
        return callable_name(self.func)

    @property
    def added_at(self) -> str | None:
        """Where the app scheduled it, as "file.py:LINE" (relative to the working directory)."""
        if self._site is None:
            return None
        filename, line = self._site
        same_drive = os.path.splitdrive(filename)[0] == os.path.splitdrive(os.getcwd())[0]
        relative = os.path.relpath(filename) if same_drive else filename
        return f"{filename if relative.startswith(os.pardir) else relative}:{line}"

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
            notes = [f"raised {type(self.exception).__name__}: {self.problem}"]
        elif self.exception is not None:
            how = "simulated by bgtasks.fail()" if self.simulated else "raised"
            notes.insert(0, f"{how}: {self.exception!r}")
        return text + "".join(f"\n    {note}" for note in notes)
