"""Starlette's BackgroundTasks as a source: every touch of Starlette and FastAPI internals.

One execution choke point exists in every supported version: `BackgroundTask.__call__` (and
the `__call__` of a subclass that runs its function itself). Creation is seen in
`BackgroundTask.__init__` (every task) and `BackgroundTasks.__init__` (every batch: a task's
batch is the one that holds it). The outermost `Starlette.__call__` of a request says which
request scheduled a task and when that request is over. Exceptions the endpoint raised are seen
where Starlette looks up their handler.

Starlette's modules are looked up when the source is installed, never bound at import: a
session that imports Starlette afresh (pytester's in-process runs) gets its own classes patched.
"""

from __future__ import annotations

import contextvars
import importlib
import sys
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest_bgtasks._messages as _messages

from .._lifecycle import Request, Site, TaskRecord, TaskRequest, TaskStatus, current_request
from .._naming import callable_name
from ._patch import Patches, Slot
from ._starlette_tasks import close_coroutine, did_nothing, kept_back, misuse, swapped

if TYPE_CHECKING:
    from .._state import State

_FRAMEWORK = ("starlette.", "fastapi.", "pytest_bgtasks.")

_NO_INITS: frozenset[types.CodeType] = frozenset()

_executing: contextvars.ContextVar[object] = contextvars.ContextVar(
    "pytest_bgtasks_executing", default=None
)
"""The task object being run: a subclass's `__call__` that calls `super().__call__()` reaches
`BackgroundTask.__call__` with it, which then only runs it."""


def create(state: State) -> StarletteSource:
    return StarletteSource(state)


class StarletteRequest(Request):
    """A request as Starlette runs it."""

    __slots__ = ("batches", "kind", "raised", "scope")

    kind: str
    """The ASGI scope's type, "http" or "websocket" (set by `request_started`, as the scope)."""
    scope: object
    """The ASGI scope: a mounted app gets the same one, another request a new one."""

    def __init__(self, info: TaskRequest, captures: tuple[Any, ...]) -> None:
        super().__init__(info, captures)
        self.batches: list[Any] = []
        """The `BackgroundTasks` made while it ran (FastAPI makes one for each request)."""
        self.raised: list[BaseException] = []
        """Exceptions the endpoint raised before the response started."""


class StarletteSource:
    """The interception of Starlette's background tasks."""

    name = "starlette"
    library: tuple[str, ...] = ("starlette.", "fastapi.")
    runs_rules = False
    records_outcomes = False

    def __init__(self, state: State) -> None:
        self.state = state
        background = importlib.import_module("starlette.background")
        self.BackgroundTask: type[Any] = background.BackgroundTask
        self.BackgroundTasks: type[Any] = background.BackgroundTasks
        self.Starlette: type[Any] = importlib.import_module("starlette.applications").Starlette
        self.is_async_callable: Callable[[Any], bool] = importlib.import_module(
            "starlette._utils"
        ).is_async_callable
        self.handler_owners = self._handler_owners()
        """Where Starlette looks up exception handlers (a module, or a class in 0.27)."""
        self.patches = Patches(self)
        self.records: dict[int, TaskRecord] = {}
        """Record of each task object seen while capturing, by id (the record keeps its task,
        so the id stays its own)."""
        self.batches: list[Any] = []
        """The `BackgroundTasks` made outside any request while capturing."""
        self.calls: dict[type[Any], Any] = {}
        """For each task class met: the `__call__` that runs its tasks, unpatched."""
        self.watched: set[type[Any]] = set()
        """Task subclasses with a `__call__` of their own, patched too."""
        self.base_call: Any = None
        """`BackgroundTask.__call__` as it was before the patch: what runs a plain task."""
        self.inits: dict[type[Any], frozenset[types.CodeType]] = {}
        """For each task subclass met: the code of its own `__init__` methods."""
        self.framework: dict[types.CodeType, bool] = {}
        """Whether a function's code belongs to Starlette, FastAPI or this plugin."""
        self.sites: dict[tuple[int, int], Site] = {}
        """One (code, instruction offset) tuple per call site, shared by its records."""

    @property
    def root(self) -> str:
        return self.state.root

    # -- installing ------------------------------------------------------------------------

    def install(self) -> None:
        patches = self.patches
        patches.install(self.BackgroundTask, "__init__", self._task_init)
        patches.install(self.BackgroundTask, "__call__", self._task_call)
        patches.install(self.BackgroundTasks, "__init__", self._batch_init)
        patches.install(self.Starlette, "__call__", self._app_call)
        for owner in self.handler_owners:
            patches.install(owner, "_lookup_exception_handler", self._lookup)
        for cls in self.watched:
            patches.install(cls, "__call__", self._task_call)
        self.calls = {}
        self.base_call = patches.original(self.BackgroundTask, "__call__")

    @staticmethod
    def _handler_owners() -> list[object]:
        try:  # Starlette >= 0.28
            return [importlib.import_module("starlette._exception_handler")]
        except ImportError:  # Starlette 0.27: a method of ExceptionMiddleware
            module = importlib.import_module("starlette.middleware.exceptions")
            return [module.ExceptionMiddleware]

    def uninstall(self) -> None:
        self.reset()
        self.patches.uninstall()
        self.calls.clear()
        self.watched.clear()
        self.inits.clear()
        self.framework.clear()
        self.sites.clear()

    def activate(self) -> None:
        """A capture starts, and none was active: nothing to prepare."""

    def wait(self, records: list[TaskRecord], timeout: float) -> None:
        """BackgroundTasks run within their request: none is left to wait for."""

    def reset(self) -> None:
        for record in self.records.values():
            close_coroutine(record.func)
        self.records = {}
        self.batches = []

    # -- the patches: thin shims made once; their work is in methods, called (and tested) ---

    @staticmethod
    def _task_init(original: Any, slot: Slot) -> Callable[..., None]:  # pragma: no mutate block
        def __init__(self: Any, func: Any, *args: Any, **kwargs: Any) -> None:
            __tracebackhide__ = True
            original(self, func, *args, **kwargs)
            source = slot.source
            if source is not None and source.state.captures:
                source.created(self)

        return __init__

    @staticmethod
    def _batch_init(original: Any, slot: Slot) -> Callable[..., None]:  # pragma: no mutate block
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            __tracebackhide__ = True
            original(self, *args, **kwargs)
            source = slot.source
            if source is not None and source.state.captures:
                source.batch_made(self)

        return __init__

    @staticmethod
    def _task_call(original: Any, slot: Slot) -> Callable[..., Any]:  # pragma: no mutate block
        async def __call__(self: Any) -> None:
            __tracebackhide__ = True
            source = slot.source
            if source is None or not source.state.captures or _executing.get() is self:
                await original(self)
            else:
                await source.called(self, original)

        return __call__

    @staticmethod
    def _app_call(original: Any, slot: Slot) -> Callable[..., Any]:  # pragma: no mutate block
        async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
            __tracebackhide__ = True
            source = slot.source
            if source is None:
                await original(self, scope, receive, send)
            else:
                await source.serve(original, self, scope, receive, send)

        return __call__

    @staticmethod
    def _lookup(original: Any, slot: Slot) -> Callable[..., Any]:  # pragma: no mutate block
        # Starlette >= 0.28: `_lookup_exception_handler(handlers, exc)`;
        # 0.27: the method `ExceptionMiddleware._lookup_exception_handler(self, exc)`.
        def _lookup_exception_handler(*args: Any) -> Any:
            __tracebackhide__ = True
            handler = original(*args)
            if slot.source is not None:
                slot.source.looked_up(args[-1])
            return handler

        return _lookup_exception_handler

    def batch_made(self, batch: Any) -> None:
        """A `BackgroundTasks` was made while a capture is active: a task's batch is the one
        that holds it."""
        request = current_request.get()
        if isinstance(request, StarletteRequest):
            request.batches.append(batch)
        else:
            self.batches.append(batch)

    async def called(self, task: Any, original: Any) -> None:
        """A response (or anything else) calls a task while a capture is active."""
        __tracebackhide__ = True
        record = self.records.get(id(task))
        if record is None or record._called:
            record = self.record_for_call(task, record)
        runner = self.state.controller(record) if record is not None else None
        if runner is None or record is None:
            await original(task)
        else:
            await runner.dispatch(record)

    async def serve(self, original: Any, app: Any, scope: Any, receive: Any, send: Any) -> None:
        """The outermost `Starlette.__call__` of a request: which request schedules what is
        scheduled meanwhile, and how it ended."""
        __tracebackhide__ = True
        outer = current_request.get()
        mounted = isinstance(outer, StarletteRequest) and outer.scope is scope
        if scope["type"] not in ("http", "websocket") or mounted:
            await original(app, scope, receive, send)
            return
        request = self.request_started(scope)
        token = current_request.set(request)

        async def watched_send(message: Any) -> None:
            __tracebackhide__ = True
            if message["type"] == "http.response.start":
                request.status = message["status"]
            await send(message)

        try:
            await original(app, scope, receive, watched_send)
        except BaseException as exc:
            request.error = exc
            request.error_traceback = exc.__traceback__  # where it leaves the app
            raise
        finally:
            current_request.reset(token)
            self.request_finished(request)

    def looked_up(self, exc: BaseException) -> None:
        """Starlette looked up a handler for an exception: the endpoint raised it, unless a
        task did (after the response started)."""
        request = current_request.get()
        if (
            isinstance(request, StarletteRequest)
            and request.status is None
            and not any(record._details.exception is exc for record in request.records)
        ):
            request.raised.append(exc)

    # -- what the patches see --------------------------------------------------------------

    def created(self, task: Any) -> None:
        """A `BackgroundTask` was made while a capture is active."""
        cls: type[Any] = task.__class__
        func = task.func
        site = self._call_site(_NO_INITS if cls is self.BackgroundTask else self._inits(cls))
        record = self.state.new_record(
            self, task, func, task.args, task.kwargs, site, current_request.get()
        )
        if record is None:
            return
        self.records[id(task)] = record
        if cls is not self.BackgroundTask:
            self._watch(cls)
        if type(func) is not types.FunctionType:
            problem = misuse(func)
            if problem is not None:
                record.note_problem(problem)

    def request_started(self, scope: Any) -> StarletteRequest:
        info = TaskRequest(scope.get("method", "WEBSOCKET"), scope["path"])
        request = self.state.request_started(info, StarletteRequest)
        assert isinstance(request, StarletteRequest)  # made by the class given
        request.kind = scope["type"]
        request.scope = scope
        return request

    def request_finished(self, request: StarletteRequest) -> None:
        for record in request.records:
            if record.waiting and record._source is self:
                self._settle(record, request)
        self.state.request_finished(request)

    def record_for_call(self, task: Any, known: TaskRecord | None) -> TaskRecord | None:
        """The record of a task called that has none ready: made before the capture (`known`
        is None), or called a second time (a response reused across requests)."""
        site = known._site if known is not None else None
        request = current_request.get()
        new = self.state.new_record(self, task, task.func, task.args, task.kwargs, site, request)
        if new is None:
            return None
        self.records[id(task)] = new
        if known is not None:
            new.ran_before(known, _messages.ran_before(known))
        return new

    # -- running tasks as Starlette runs them ----------------------------------------------

    def task_name(self, record: TaskRecord) -> str:
        return callable_name(record.func)

    async def execute(self, record: TaskRecord, fake: Callable[..., Any] | None) -> str | None:
        """Run the task through its class's own `__call__` (Starlette's, or a subclass's)."""
        __tracebackhide__ = True
        task = record._handle
        cls: type[Any] = task.__class__
        original = self._call_of(cls)
        if fake is None and task.is_async and original is self.base_call:
            await original(task)  # the common case: nothing to swap, nothing returned
            return None
        returned: list[Any] = []
        runner = swapped(task, fake, self.is_async_callable, returned.append)
        if original is self.base_call:
            await original(runner)
        else:  # a subclass's own __call__, which may call BackgroundTask.__call__ in turn
            token = _executing.set(runner)
            try:
                await original(runner)
            finally:
                _executing.reset(token)
                kept_back(task, runner)
        return did_nothing(record, returned[0]) if returned else None

    def _call_of(self, cls: type[Any]) -> Any:
        call = self.calls.get(cls)
        if call is None:
            for owner in cls.__mro__:
                if (owner, "__call__") in self.patches.installed:
                    call = self.patches.original(owner, "__call__")
                    break
            self.calls[cls] = call
        return call

    def _watch(self, cls: type[Any]) -> None:
        """A task of a subclass: patch its own `__call__`, so that a subclass that runs its
        function itself is seen running it."""
        if cls in self.calls or issubclass(cls, self.BackgroundTasks):
            return
        for owner in cls.__mro__:
            if owner is self.BackgroundTask:
                break
            if "__call__" in owner.__dict__ and owner not in self.watched:
                self.watched.add(owner)
                self.patches.install(owner, "__call__", self._task_call)
        self._call_of(cls)

    def stop_after(
        self, record: TaskRecord, status: TaskStatus, reason: str, *, passed_over: bool = False
    ) -> list[TaskRecord]:
        """Later tasks of the record's batch will not run (Starlette stops at a failure)."""
        # The batch running it now first: a task dropped by one request may run in another's.
        batch = _calling_batch(record._handle, self.BackgroundTasks) or self._batch_of(record)
        if batch is None:
            return []
        tasks = list(batch.tasks)
        # Both ways of finding the batch look for one that holds the task.
        position = next(i for i, item in enumerate(tasks) if item is record._handle)
        stopped: list[TaskRecord] = []
        for item in tasks[position + 1 :]:
            later = self.records.get(id(item))
            if later is None:
                continue
            if later.status is TaskStatus.DEFERRED or later.waiting:
                later.stop(status, reason, passed_over=passed_over)
                stopped.append(later)
        return stopped

    def _batch_of(self, record: TaskRecord) -> Any:
        """The `BackgroundTasks` that holds the record's task, among those made while a capture
        is active: in the task's request, or outside any request. None for a task given to a
        response on its own, or added to a batch made before the capture started."""
        request = record._request
        made = request.batches if isinstance(request, StarletteRequest) else []
        for batches in (made, self.batches):
            for batch in reversed(batches):
                if any(item is record._handle for item in batch.tasks):
                    return batch
        return None

    # -- a request ends --------------------------------------------------------------------

    def _settle(self, record: TaskRecord, request: StarletteRequest) -> None:
        """A task of a finished request that nothing ever called: why not?"""
        error = request.error
        if request.kind == "websocket":
            record.settle(TaskStatus.DROPPED, _messages.NEVER_RUN_WEBSOCKET)
        elif error is not None and _is_cancellation(error):
            record.settle(TaskStatus.CANCELLED, _messages.NEVER_STARTED_CANCELLED)
        elif error is not None:
            record.settle(TaskStatus.DROPPED, _messages.request_raised(error), excused=True)
        elif request.raised:
            reason = _messages.endpoint_raised(request.raised[-1], request.status)
            record.settle(TaskStatus.DROPPED, reason, excused=True)
        else:
            self._not_carried(record, request)

    def _not_carried(self, record: TaskRecord, request: StarletteRequest) -> None:
        started = [other for other in request.records if other._called]
        batch = self._batch_of(record)
        if batch is not None and any(self._batch_of(other) is batch for other in started):
            reason = _messages.ADDED_AFTER_THE_RESPONSE
        elif started:  # none of them from its batch
            reason = _messages.carried_instead(started[0])
        elif request.status is not None and request.status >= 400:
            # An error response that carried nothing of the request: an exception handler's
            # answer (a status handler's, which Starlette looks up where nothing is seen).
            record.settle(
                TaskStatus.DROPPED, _messages.error_response(request.status), excused=True
            )
            return
        else:
            reason = _messages.NOT_CARRIED
        record.settle(TaskStatus.DROPPED, reason)

    # -- where things happened -------------------------------------------------------------

    def _call_site(self, skipped: frozenset[types.CodeType]) -> Site | None:
        """Where the task being created comes from: the code and instruction of the app that
        created it, outside Starlette, FastAPI, this plugin and the task's own `__init__`
        methods (`skipped`)."""
        framework = self.framework
        try:  # what called the patch (frame 2, ours): Starlette's `add_task`, or the app
            frame: types.FrameType | None = sys._getframe(3)
        except ValueError:  # nothing did: a raw thread started on the task class itself
            return None
        while frame is not None:
            code = frame.f_code
            inside = framework.get(code)
            if inside is None:
                module = str(frame.f_globals.get("__name__", "")) + "."
                inside = framework[code] = module.startswith(_FRAMEWORK)
            if not (inside or (skipped and code in skipped)):  # (hashing a code is slow)
                offset = frame.f_lasti
                site = self.sites.get((id(code), offset))
                if site is None:  # the first task from this line: the tuple keeps `code` alive
                    site = self.sites[id(code), offset] = (code, offset)
                return site
            frame = frame.f_back
        return None  # no frame of the app: all of the stack is Starlette, FastAPI or ours

    def _inits(self, cls: type[Any]) -> frozenset[types.CodeType]:
        codes = self.inits.get(cls)
        if codes is None:
            codes = self.inits[cls] = frozenset(
                owner.__dict__["__init__"].__code__
                for owner in cls.__mro__[: cls.__mro__.index(self.BackgroundTask)]
                if isinstance(owner.__dict__.get("__init__"), types.FunctionType)
            )
        return codes


def _calling_batch(task: Any, batch_class: type[Any]) -> Any:
    """The `BackgroundTasks` whose `__call__` (Starlette's, or FastAPI's) is running `task` now,
    found up the stack: it may be none the capture saw made, or another request's."""
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "__call__":
            batch: Any = frame.f_locals.get("self")
            if isinstance(batch, batch_class) and any(item is task for item in batch.tasks):
                return batch
        frame = frame.f_back
    return None


def _is_cancellation(exc: BaseException) -> bool:
    from .._runner import is_cancellation

    return is_cancellation(exc)
