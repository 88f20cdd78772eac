"""Every touch of Starlette and FastAPI internals lives in this module.

One execution choke point exists in every supported version: `BackgroundTask.__call__`.
Creation is seen in `BackgroundTask.__init__` (every task) and `BackgroundTasks.__init__`
(every batch: a task's batch is the one that holds it). The outermost `Starlette.__call__` of a
request says which request scheduled a task and when that request is over. Exceptions that an
exception handler turns into a response are seen where Starlette looks the handler up.

The patches are installed by `install()` at the first capture of a session and removed by
`uninstall()`; while no capture is active they only check one global and call the original.

`# pragma: no mutate block` keeps mutmut's trampolines ("Mutation testing" in the README) off
the functions that `install()` copies by their code and those that count frames from their own.
"""

from __future__ import annotations

import contextvars
import copy
import functools
import sys
import traceback
import types
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from starlette import background
from starlette.applications import Starlette

try:  # Starlette >= 0.28
    from starlette import _exception_handler as _handler_module
except ImportError:  # pragma: no cover - Starlette 0.27
    _handler_module = None  # type: ignore[assignment]  # the module is missing there
from starlette.middleware import exceptions as _exceptions_middleware

if TYPE_CHECKING:
    from ._records import Site

BackgroundTask = background.BackgroundTask
BackgroundTasks = background.BackgroundTasks

_FRAMEWORK_MODULES = ("starlette.", "fastapi.", "pytest_bgtasks.")
_LIBRARY_MODULES = (
    *_FRAMEWORK_MODULES,
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


class Scope(Protocol):
    """The capture's view of one request, filled in while it runs."""

    status: int | None
    error: BaseException | None

    def note_handled(self, exc: BaseException) -> None: ...


class Receiver(Protocol):
    """What the patches report to while a capture is active."""

    def task_created(self, task: Any, site: Site | None, scope: Any) -> None: ...

    def batch_created(self, batch: Any, scope: Any) -> None: ...

    def task_called(self, task: Any) -> Awaitable[None]: ...

    def request_started(self, kind: str, method: str, path: str) -> Any: ...

    def request_finished(self, scope: Any) -> None: ...


_receiver: Receiver | None = None
_current_scope: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "pytest_bgtasks_request", default=None
)
_originals: dict[tuple[object, str], Any] = {}
_wrappers: dict[tuple[object, str], Any] = {}


def set_receiver(receiver: Receiver | None) -> None:
    """Route what the patches see to `receiver`; None makes them inert."""
    global _receiver
    _receiver = receiver


def current_scope() -> Any:
    return _current_scope.get()


# -- the patches ---------------------------------------------------------------------------------


def _task_init(self: Any, func: Any, *args: Any, **kwargs: Any) -> None:  # pragma: no mutate block
    _originals[BackgroundTask, "__init__"](self, func, *args, **kwargs)
    receiver = _receiver
    if receiver is not None:
        receiver.task_created(self, _call_site(), _current_scope.get())


def _batch_init(self: Any, *args: Any, **kwargs: Any) -> None:  # pragma: no mutate block
    _originals[BackgroundTasks, "__init__"](self, *args, **kwargs)
    receiver = _receiver
    if receiver is not None:
        receiver.batch_created(self, _current_scope.get())


async def _task_call(self: Any) -> None:  # pragma: no mutate block
    receiver = _receiver
    if receiver is None:
        await _originals[BackgroundTask, "__call__"](self)
    else:
        await receiver.task_called(self)


async def _app_call(
    self: Any, scope: Any, receive: Any, send: Any
) -> None:  # pragma: no mutate block
    original = _originals[Starlette, "__call__"]
    receiver = _receiver
    if (
        receiver is None
        or scope["type"] not in ("http", "websocket")
        or _current_scope.get() is not None
    ):
        await original(self, scope, receive, send)
        return
    request = receiver.request_started(
        scope["type"], scope.get("method", "WEBSOCKET"), scope.get("path", "")
    )
    token = _current_scope.set(request)

    async def watched_send(message: Any) -> None:
        if message["type"] == "http.response.start":
            request.status = message["status"]
        await send(message)

    try:
        await original(self, scope, receive, watched_send)
    except BaseException as exc:
        request.error = exc
        raise
    finally:
        _current_scope.reset(token)
        receiver.request_finished(request)


def _lookup_exception_handler(*args: Any) -> Any:  # pragma: no mutate block
    # Starlette >= 0.28: `_lookup_exception_handler(handlers, exc)`;
    # 0.27: the method `ExceptionMiddleware._lookup_exception_handler(self, exc)`.
    key: tuple[object, str] = (_handler_module, "_lookup_exception_handler")
    if key not in _originals:  # pragma: no cover - Starlette 0.27
        key = (_exceptions_middleware.ExceptionMiddleware, "_lookup_exception_handler")
    handler = _originals[key](*args)
    scope = _current_scope.get()
    if handler is not None and scope is not None:
        scope.note_handled(args[-1])
    return handler


def _targets() -> list[tuple[object, str, Any]]:
    targets: list[tuple[object, str, Any]] = [
        (BackgroundTask, "__init__", _task_init),
        (BackgroundTask, "__call__", _task_call),
        (BackgroundTasks, "__init__", _batch_init),
        (Starlette, "__call__", _app_call),
    ]
    if _handler_module is not None:
        targets.append((_handler_module, "_lookup_exception_handler", _lookup_exception_handler))
    else:  # pragma: no cover - Starlette 0.27
        targets.append(
            (
                _exceptions_middleware.ExceptionMiddleware,
                "_lookup_exception_handler",
                _lookup_exception_handler,
            )
        )
    return targets


def install() -> bool:
    """Install the patches that are not in place; False when all of them were."""
    newly = False
    for owner, name, wrapper in _targets():
        current = _attribute(owner, name)
        if _holds(current, _wrappers.get((owner, name))):
            continue
        newly = True
        if getattr(current, _MARK, False):
            # Left by an earlier import of this module (pytester drops modules between
            # in-process runs): replace it rather than stack a second one on it.
            current = current.__wrapped__
        _originals[owner, name] = current
        patched = _wrap(current, wrapper)
        _wrappers[owner, name] = patched
        setattr(owner, name, patched)
    return newly


def _attribute(owner: object, name: str) -> Any:
    return owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)


def _holds(current: Any, ours: Any) -> bool:
    """Whether our patch is `current`, or under the wrappers others put on top of it."""
    for _ in range(32):
        if current is None or current is ours:
            return current is not None
        current = getattr(current, "__wrapped__", None)
    return False


_MARK = "__pytest_bgtasks_patch__"


def _wrap(original: Any, wrapper: Any) -> Any:
    """A copy of `wrapper` (same code, no extra call) that looks like `original` and is
    marked as ours."""
    patched = types.FunctionType(
        wrapper.__code__, wrapper.__globals__, wrapper.__name__, wrapper.__defaults__
    )
    functools.update_wrapper(patched, original)
    setattr(patched, _MARK, True)
    return patched


def uninstall() -> None:
    """Put back every original that is still ours to put back.

    When another library wrapped one of our patches since, ours stays under it, inert.
    """
    set_receiver(None)
    for (owner, name), original in list(_originals.items()):
        if _attribute(owner, name) is _wrappers[owner, name]:
            setattr(owner, name, original)
            del _originals[owner, name]
            del _wrappers[owner, name]


def calling_batch(task: Any) -> Any:
    """The `BackgroundTasks` whose `__call__` (Starlette's, or FastAPI's) is running `task` now,
    found up the stack: the batch of a task whose batch was made before the capture started."""
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "__call__":
            batch = frame.f_locals.get("self")
            if isinstance(batch, BackgroundTasks) and any(item is task for item in batch.tasks):
                return batch
        frame = frame.f_back
    return None


# -- running tasks as Starlette runs them --------------------------------------------------------


async def run_task(
    task: Any,
    func: Callable[..., Any] | None = None,
    on_return: Callable[[Any], None] | None = None,
) -> None:  # pragma: no mutate block
    """Run `task` through Starlette's own `BackgroundTask.__call__`.

    With `func`, that callable runs in the task's place with the task's arguments (sync in the
    threadpool, async on the loop, decided as Starlette decides it). `on_return` receives what a
    sync callable returned, so a coroutine that nobody awaits can be reported.
    """
    original = _originals.get((BackgroundTask, "__call__"), BackgroundTask.__call__)
    if func is None and (task.is_async or on_return is None):
        await original(task)
        return
    runner = copy.copy(task)
    if func is not None:
        runner.func = func
        runner.is_async = is_async_callable(func)
    if not runner.is_async and on_return is not None:
        runner.func = _reporting_return(runner.func, on_return)
    await original(runner)


def _reporting_return(func: Callable[..., Any], on_return: Callable[[Any], None]) -> Any:
    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        result = func(*args, **kwargs)
        on_return(result)
        return result

    return call


def is_async_callable(func: Any) -> bool:
    from starlette._utils import is_async_callable as starlette_is_async_callable

    return bool(starlette_is_async_callable(func))


# -- where things happened -----------------------------------------------------------------------


_sites: dict[tuple[int, int], Site] = {}
"""One (code, instruction offset) tuple per call site, shared by its records: a record keeps
one object fewer alive, and the line number is worked out only when a message shows it."""
_in_framework: dict[types.CodeType, bool] = {}
"""Whether a function's code belongs to Starlette, FastAPI or this plugin, by code object."""


def _call_site() -> Site | None:  # pragma: no mutate block
    """Where the task being created comes from: the code and instruction of the app that created
    it, outside Starlette and FastAPI."""
    frame: types.FrameType | None = sys._getframe(2)  # what called BackgroundTask(...)
    while frame is not None:
        code = frame.f_code
        inside = _in_framework.get(code)
        if inside is None:
            module = frame.f_globals.get("__name__", "")
            inside = _in_framework[code] = module.startswith(_FRAMEWORK_MODULES)
        if not inside:
            offset = frame.f_lasti
            site = _sites.get((id(code), offset))
            if site is None:  # the first task from this line: the tuple keeps `code` alive
                site = _sites[id(code), offset] = (code, offset)
            return site
        frame = frame.f_back
    return None  # pragma: no cover - the test itself is always on the stack


def reached_caller(exc: BaseException, *, raised_in_request: bool) -> bool:
    """Whether `exc` went past the app (or, for a task run outside any request, past the
    plugin's runner) to code other than the framework and client libraries: the test, or
    a helper it called, saw it.

    A traceback lists the outermost frame first: the frames before the boundary are where
    the exception went after leaving it. One that never left the boundary (caught by an
    exception handler or a middleware inside the app) has no boundary frame at all.
    """
    boundary = _app_call.__code__ if raised_in_request else run_task.__code__
    reached = False
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        if frame.f_code is boundary:
            return reached
        reached = reached or not _is_library(frame)
    return False


def task_frames(exc: BaseException) -> traceback.StackSummary:
    """The traceback of a task's exception from the task's own code on: the frames of the
    app, Starlette and the threadpool that led to it are left out."""
    entries = list(traceback.walk_tb(exc.__traceback__))
    start = 0
    for position, (frame, _) in enumerate(entries):
        if frame.f_code is run_task.__code__:
            start = position + 1
    while start < len(entries) and _is_library(entries[start][0]):
        start += 1
    if start == len(entries):  # raised inside the framework itself: show all of it
        start = 0
    return traceback.StackSummary.extract(entries[start:])


def _is_library(frame: Any) -> bool:
    module = frame.f_globals.get("__name__", "")
    return bool((module + ".").startswith(_LIBRARY_MODULES))
