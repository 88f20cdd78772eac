"""What the capture knows about one background task, and every change of what became of it.

`TaskRecord` owns its task's lifecycle: each status change below is one of its methods, and no
other module assigns a status. "Waiting" is PENDING before anything called the task; "running"
is PENDING while it runs.

    created ──► PENDING (waiting) ──start()──► PENDING (running) ──ran()────────► RAN
                   │                                │             ──failed()─────► FAILED
                   │                                │             ──did_nothing()► FAILED
                   │                                └─────────────cancelled()────► CANCELLED
                   ├──hold()──► DEFERRED ──start(), by run_deferred()──► PENDING (running) ...
                   ├──skip()──► SKIPPED
                   ├──stop()──► NOT_RUN or CANCELLED   (an earlier task of its batch failed or
                   │                                    was cancelled)
                   └──settle()─► DROPPED or CANCELLED  (its request ended without calling it)
    DROPPED, NOT_RUN ──start()──► PENDING (running) ...  (a later response ran its batch after all)

A task object that runs again after it ran (a response reused across requests) gets a new
record, `again_of` the first. Nothing here knows a framework: the sources say what happened.
"""

from __future__ import annotations

import contextvars
import enum
import os
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from ._naming import format_call

if TYPE_CHECKING:
    from .sources import Source


class TaskStatus(str, enum.Enum):
    """What became of a background task."""

    PENDING = "pending"
    """Scheduled; its response has not finished yet (or it is running now)."""
    RAN = "ran"
    """Ran to completion (or a `replace` fake did)."""
    FAILED = "failed"
    """Raised, for real or through `bgtasks.fail()`, or never did its work (see `problem`)."""
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


class CallSite(NamedTuple):
    """Where the app scheduled a task: the file's absolute path and the line."""

    file: str
    line: int


Site = tuple[types.CodeType, int]
"""Where a task was created, as the source saw it: the app's code object and the offset of the
calling instruction (the line is worked out only when it is shown)."""


def line_at(code: types.CodeType, offset: int) -> int:
    """The source line of the instruction at `offset` in `code`, as a frame's `f_lineno` says."""
    for start, end, line in code.co_lines():
        if start <= offset < end and line is not None:
            return line
    return code.co_firstlineno


def display_path(filename: str, root: str) -> str:
    """A file's path relative to `root`, or as it is when it lies outside."""
    if os.path.splitdrive(filename)[0] != os.path.splitdrive(root)[0]:
        return filename
    relative = os.path.relpath(filename, root)
    return filename if relative.startswith(os.pardir) else relative


class Request:
    """One request while it runs, as the core sees it: the captures active when it began,
    the records made in it, and what escaped it. Sources add what they need in subclasses."""

    __slots__ = ("after", "captures", "error", "error_traceback", "info", "records", "status")

    def __init__(self, info: TaskRequest, captures: tuple[Any, ...]) -> None:
        self.info = info
        self.captures = captures
        """The captures active when the request began: its tasks belong to those that are
        still active, never to a capture a later test started."""
        self.records: list[TaskRecord] = []
        self.status: int | None = None
        """The status of the response sent, once it started."""
        self.error: BaseException | None = None
        """What the request raised, as it left the app."""
        self.error_traceback: types.TracebackType | None = None
        """Where it left the app: frames before this one in its traceback are past the app."""
        self.after: list[Callable[[], None]] = []
        """What runs once the request is over: work another source holds until then (Celery
        tasks sent by the endpoint, as a worker would pick them up)."""


class Details:
    """What only some records need, kept apart so that the common record stays small: a
    capture may hold many, and the garbage collector visits every slot of every one. Unset
    fields read as the class defaults."""

    exception: BaseException | None = None
    reason: str | None = None
    problem: str | None = None
    simulated: bool = False
    did_nothing: bool = False
    """Failed without raising: `exception` was made to report `problem`."""
    failed_in: Request | None = None
    """The request that was running the task when it failed (none for `run_deferred()`): a
    task dropped by one request may run in another's batch."""
    raised_at: types.TracebackType | None = None
    """Where the runner caught the task's exception: the task's own frames follow it, what the
    exception went through afterwards comes before it."""
    excused: bool = False
    """A drop that is the framework working as designed (the endpoint raised)."""
    again_of: TaskRecord | None = None
    """For a task object that ran a second time: its first record."""
    parent: TaskRecord | None = None
    """The task that was running when this one was scheduled."""
    children: list[TaskRecord] | None = None
    generation: int = 0
    """How many tasks scheduled this one, one inside the other."""
    held: tuple[contextvars.Context, Any] | None = None
    """While deferred: the context it was scheduled with, and its event loop."""
    passed_over: bool = False
    """Stopped by a simulated failure earlier in its batch, which will still call it."""
    task_id: str | None = None
    options: dict[str, Any] | None = None
    retries: int = 0


_NO_DETAILS = Details()
_PENDING = TaskStatus.PENDING
"""Shared by every record that has no details; never written to."""


running: contextvars.ContextVar[TaskRecord | None] = contextvars.ContextVar(
    "pytest_bgtasks_running", default=None
)
"""The record whose task is running now: tasks scheduled meanwhile are its children."""

current_request: contextvars.ContextVar[Request | None] = contextvars.ContextVar(
    "pytest_bgtasks_request", default=None
)
"""The request running now, as the source that saw it begin set it."""


class TaskRecord:
    """One background task an app scheduled, and what became of it.

    Its repr reads like the call: `send_welcome_email('a@b.com') [ran] POST /signup`.
    """

    __slots__ = (
        "_called",
        "_details",
        "_handle",
        "_request",
        "_site",
        "_source",
        "args",
        "func",
        "index",
        "kwargs",
        "status",
    )

    func: Callable[..., Any]
    """The callable given to `add_task` or `BackgroundTask` (for Celery, the task object)."""
    args: tuple[Any, ...]
    """The positional arguments it is called with."""
    kwargs: dict[str, Any]
    """The keyword arguments it is called with."""
    index: int
    """Position in scheduling order, starting at 0."""
    status: TaskStatus

    def __init__(
        self,
        source: Source,
        handle: Any,
        func: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        index: int,
        site: Site | None,
        request: Request | None,
    ) -> None:
        self._source = source
        self._handle = handle
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.index = index
        self.status = _PENDING
        self._site = site
        self._request = request
        self._called = False
        self._details = _NO_DETAILS

    def _more(self) -> Details:
        """This record's own details, to write to."""
        if self._details is _NO_DETAILS:
            self._details = Details()
        return self._details

    # -- what a test reads -----------------------------------------------------------------

    @property
    def source(self) -> str:
        """Where the task came from: `"starlette"` (BackgroundTasks) or `"celery"`."""
        return self._source.name

    @property
    def request(self) -> TaskRequest | None:
        """Method and path of the request that scheduled it; None outside a request."""
        return self._request.info if self._request is not None else None

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
        """A misuse found at the call site or when it ran (a coroutine object given to
        `add_task`, a sync function that returned a coroutine...)."""
        return self._details.problem

    @property
    def simulated(self) -> bool:
        """True when `exception` was injected by `bgtasks.fail()`."""
        return self._details.simulated

    @property
    def parent(self) -> TaskRecord | None:
        """The task that was running when this one was scheduled, if any."""
        return self._details.parent

    @property
    def task_id(self) -> str | None:
        """Celery's id of the task; None for BackgroundTasks."""
        return self._details.task_id

    @property
    def options(self) -> dict[str, Any]:
        """How Celery was asked to send it (queue, countdown, eta, priority...); empty for
        BackgroundTasks."""
        return dict(self._details.options or {})

    @property
    def retries(self) -> int:
        """How many times it was retried (Celery); 0 for BackgroundTasks."""
        return self._details.retries

    @property
    def name(self) -> str:
        """The task's name: `send_welcome_email`, `Mailer.send`; Celery's task name."""
        return self._source.task_name(self)

    @property
    def call_site(self) -> CallSite | None:
        """Where the app scheduled it: the file (absolute) and the line; None when the task was
        made before the capture started, or with no frame of the app on the stack (a raw thread
        started on the task class itself)."""
        if self._site is None:
            return None
        code, offset = self._site
        return CallSite(code.co_filename, line_at(code, offset))

    @property
    def added_at(self) -> str | None:
        """Where the app scheduled it, as "file.py:LINE", relative to pytest's rootdir (or the
        working directory when the capture started, outside pytest); absolute outside it."""
        site = self.call_site
        if site is None:
            return None
        return f"{display_path(site.file, self._source.root)}:{site.line}"

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
        """One line for reports: the repr and the call site, then on lines of their own what it
        raised, why it did not run, and any misuse found."""
        text = repr(self)
        if self.added_at is not None:
            text += f"  ({self.added_at})"
        details = self._details
        notes = [note for note in (details.reason, details.problem) if note]
        if details.exception is not None and not details.did_nothing:
            how = "simulated by bgtasks.fail()" if details.simulated else "raised"
            notes.insert(0, f"{how}: {details.exception!r}")
        return text + "".join(f"\n    {note}" for note in notes)

    # -- where it stands -------------------------------------------------------------------

    @property
    def waiting(self) -> bool:
        """Scheduled, and nothing has called it yet."""
        return self.status is TaskStatus.PENDING and not self._called

    @property
    def running(self) -> bool:
        return self.status is TaskStatus.PENDING and self._called

    # -- transitions -----------------------------------------------------------------------

    def start(self) -> None:
        """It is called: by its response, or by `run_deferred()`. A task settled as never run
        when an earlier response ended runs after all (its batch outlived that request)."""
        self._called = True
        if self.status is not _PENDING:
            self.status = _PENDING
            if self._details.reason is not None:
                self._more().reason = None

    def hold(self, context: contextvars.Context, loop: Any) -> None:
        """Held for `run_deferred()`, with what it needs to run as it would have."""
        self.status = TaskStatus.DEFERRED
        self._more().held = (context, loop)

    def skip(self) -> None:
        self.status = TaskStatus.SKIPPED

    def ran(self) -> None:
        self.status = TaskStatus.RAN

    def failed(
        self,
        exc: BaseException,
        *,
        simulated: bool = False,
        failed_in: Request | None = None,
        raised_at: types.TracebackType | None = None,
    ) -> None:
        self.status = TaskStatus.FAILED
        details = self._more()
        details.exception = exc
        details.simulated = simulated
        details.failed_in = failed_in
        details.raised_at = raised_at

    def did_nothing(self, problem: str) -> None:
        """It returned without doing its work (a sync function returned a coroutine)."""
        self.status = TaskStatus.FAILED
        details = self._more()
        details.problem = problem
        details.did_nothing = True
        details.exception = TypeError(problem)

    def cancelled(self, reason: str) -> None:
        self.status = TaskStatus.CANCELLED
        self._more().reason = reason

    def stop(self, status: TaskStatus, reason: str, *, passed_over: bool) -> None:
        """An earlier task of its batch failed or was cancelled: it will not run. `passed_over`
        when its batch goes on calling it all the same (the failure was simulated). A held
        task stopped so is unstarted again: it runs if its batch runs again."""
        self.status = status
        self._called = False
        details = self._more()
        details.reason = reason
        details.passed_over = passed_over

    def settle(self, status: TaskStatus, reason: str, *, excused: bool = False) -> None:
        """Its request ended and nothing called it: DROPPED, or CANCELLED with the request."""
        self.status = status
        details = self._more()
        details.reason = reason
        details.excused = excused

    def pass_by(self) -> None:
        """Called by the batch that a simulated failure stopped (it is `passed_over`): this
        call is let by. The record stays not run; unstarted, it runs if the batch runs again."""
        self._details.passed_over = False
        self._called = False

    def scheduled_by(self, parent: TaskRecord) -> None:
        """`parent` was running when this task was scheduled (or sent it, for Celery)."""
        details = self._more()
        details.parent = parent
        details.generation = parent._details.generation + 1
        family = parent._more()
        if family.children is None:
            family.children = []
        family.children.append(self)

    def refused(self, problem: str) -> None:
        """It can never run as sent (a name no worker knows, arguments that do not bind):
        FAILED at once, with the problem."""
        self.status = TaskStatus.FAILED
        details = self._more()
        details.problem = problem
        details.did_nothing = True
        details.exception = LookupError(problem)

    def celery(self, task_id: str, options: dict[str, Any]) -> None:
        """A Celery send: its id and how it was sent."""
        details = self._more()
        details.task_id = task_id
        details.options = options

    def retried(self, retries: int) -> None:
        """Sent again for a retry: waiting to run once more."""
        self.status = _PENDING
        self._called = False
        details = self._more()
        details.retries = retries
        details.exception = None

    def note_problem(self, problem: str) -> None:
        self._more().problem = problem

    def ran_before(self, first: TaskRecord, problem: str) -> None:
        """The same task object ran before, as `first`: this record is its second run."""
        details = self._more()
        details.again_of = first
        details.problem = problem
