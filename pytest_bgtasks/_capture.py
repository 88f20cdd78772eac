"""The capture: records every background task scheduled while it is active, decides what
happens to each one (run, defer, skip, fail, replace) and answers the assertions.

Nothing here imports pytest, and Starlette is touched only through `_starlette`. The plugin
imports this module when a test first uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import sys
from collections.abc import Callable, Coroutine, Generator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import anyio

from . import _messages, _starlette
from ._matching import (
    ExpectedTask,
    arguments_match,
    call_shape,
    callable_name,
    expected_task,
    mismatches,
    same_function,
    task,
)
from ._recorder import DeferredRun, close_coroutine, deferred_run, is_cancellation, recorder
from ._records import TaskRecord, TaskStatus

if TYPE_CHECKING:
    from types import TracebackType

Mode = Literal["run", "defer", "skip"]
MODES: tuple[Mode, ...] = ("run", "defer", "skip")
MAX_GENERATIONS = 100
"""How deep `run_deferred()` follows tasks that schedule tasks before it stops."""


class SimulatedTaskError(Exception):
    """Raised in a task's place by `bgtasks.fail(func)` when no exception is given."""


def _active_capture(caller: str) -> BackgroundTaskCapture:
    controller: BackgroundTaskCapture | None = recorder.controller()
    if controller is None:
        raise RuntimeError(
            f"{caller} needs an active background task capture: request the `bgtasks` or "
            "`bg_client` fixture (or mark the test with @pytest.mark.bgtasks)."
        )
    return controller


def _expected(
    caller: str, func: object, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> ExpectedTask:
    if isinstance(func, ExpectedTask):
        if args or kwargs:
            raise TypeError(f"{caller} takes either task(...) or a function and its arguments.")
        return func
    if not callable(func):
        expected_task(func, caller)  # raises the TypeError
    return task(func, *args, **kwargs)  # type: ignore[arg-type]


def _matches(expected: ExpectedTask, record: TaskRecord) -> bool:
    func, args, kwargs = call_shape(record.func, record.args, record.kwargs)
    return same_function(expected.func, func) and arguments_match(expected, args, kwargs)


class TaskLog:
    """The records of a capture, in scheduling order, and assertions over them.

    `bgtasks` is one; so is the block of `with bgtasks.capture() as block:`.
    """

    _controls = False

    def __init__(self) -> None:
        self._records: list[TaskRecord] = []

    @property
    def tasks(self) -> list[TaskRecord]:
        """Every task scheduled while this capture was active, in scheduling order."""
        return list(self._records)

    @property
    def deferred(self) -> list[TaskRecord]:
        """Tasks held until `run_deferred()`."""
        return self._with_status(TaskStatus.DEFERRED)

    @property
    def dropped(self) -> list[TaskRecord]:
        """Tasks that were scheduled but never carried by their response."""
        return self._with_status(TaskStatus.DROPPED)

    @property
    def failed(self) -> list[TaskRecord]:
        """Tasks that raised, for real or through `fail()`."""
        return self._with_status(TaskStatus.FAILED)

    def _with_status(self, status: TaskStatus) -> list[TaskRecord]:
        return [record for record in self._records if record.status is status]

    # -- assertions ------------------------------------------------------------------------

    def assert_task_added(
        self, func: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> TaskRecord:
        """The first task matching `func(*args, **kwargs)`; AssertionError if none was added."""
        __tracebackhide__ = True
        expected = _expected("assert_task_added()", func, args, kwargs)
        records = self.tasks
        for record in records:
            if _matches(expected, record):
                return record
        raise AssertionError(
            _messages.missing(expected, "was added", records, _closest(expected, records))
        )

    def assert_task_not_added(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        """AssertionError if any task matching `func(*args, **kwargs)` was added."""
        __tracebackhide__ = True
        expected = _expected("assert_task_not_added()", func, args, kwargs)
        found = [record for record in self.tasks if _matches(expected, record)]
        if found:
            raise AssertionError(_messages.unexpected(expected, found, 0))

    def assert_task_ran(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskRecord:
        """The first matching task that ran to completion."""
        __tracebackhide__ = True
        return self._assert_status("assert_task_ran()", TaskStatus.RAN, "ran", func, args, kwargs)

    def assert_task_failed(
        self, func: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> TaskRecord:
        """The first matching task that raised; its `exception` is what it raised."""
        __tracebackhide__ = True
        return self._assert_status(
            "assert_task_failed()", TaskStatus.FAILED, "failed", func, args, kwargs
        )

    def _assert_status(
        self,
        caller: str,
        status: TaskStatus,
        outcome: str,
        func: object,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> TaskRecord:
        __tracebackhide__ = True
        expected = _expected(caller, func, args, kwargs)
        records = self.tasks
        found = [record for record in records if _matches(expected, record)]
        for record in found:
            if record.status is status:
                return record
        hint = (
            _messages.matching_hint(found[0], str(status)) if found else _closest(expected, records)
        )
        raise AssertionError(_messages.missing(expected, outcome, records, hint))

    def assert_task_count(self, expected: int, func: object = None) -> list[TaskRecord]:
        """Exactly `expected` tasks were added (that match `func`, a function or `task(...)`,
        when given). Returns them."""
        __tracebackhide__ = True
        if isinstance(expected, bool) or not isinstance(expected, int) or expected < 0:
            raise TypeError(f"assert_task_count() expects a count >= 0, got {expected!r}.")
        wanted = None if func is None else expected_task(func, "assert_task_count()")
        found = [r for r in self.tasks if wanted is None or _matches(wanted, r)]
        if len(found) != expected:
            raise AssertionError(_messages.unexpected(wanted, found, expected))
        return found

    def assert_no_tasks(self) -> None:
        """No background task was added at all."""
        __tracebackhide__ = True
        self.assert_task_count(0)

    def assert_tasks_in_order(self, *expected: object) -> list[TaskRecord]:
        """Each of `expected` (a function, or `task(...)`) was added, in this relative order;
        other tasks may come between. Returns the records matched."""
        __tracebackhide__ = True
        if not expected:
            raise TypeError("assert_tasks_in_order() expects at least one task.")
        wanted = [expected_task(item, "assert_tasks_in_order()") for item in expected]
        records = self.tasks
        matched: list[TaskRecord] = []
        position = 0
        for item in wanted:
            for offset, record in enumerate(records[position:], start=position):
                if _matches(item, record):
                    matched.append(record)
                    position = offset + 1
                    break
            else:
                seen = records[:position]
                earlier = next((r for r in seen if _matches(item, r)), None)
                raise AssertionError(_messages.out_of_order(wanted, matched, earlier, records))
        return matched

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {_messages.count(len(self._records))}>"


def _closest(expected: ExpectedTask, records: Sequence[TaskRecord]) -> str:
    same: list[tuple[int, TaskRecord, list[str]]] = []
    for record in records[-1000:]:
        func, args, kwargs = call_shape(record.func, record.args, record.kwargs)
        if same_function(expected.func, func):
            found = mismatches(expected, args, kwargs)
            same.append((len(found), record, found))
    if same:
        _, record, found = min(same, key=lambda item: item[0])
        return f"Closest: {record.name}: {'; '.join(found)}"
    name = callable_name(expected.func)
    for record in records:
        if record.name == name:
            return (
                f"Closest: {record.call} (#{record.index}) calls a different function object "
                f"with the same name {name!r}: is it imported from another module, or wrapped?"
            )
    return ""


class _Rule:
    __slots__ = ("action", "exception", "fake", "propagate", "target", "times", "used")

    def __init__(
        self,
        action: str,
        target: ExpectedTask,
        *,
        exception: BaseException | None = None,
        times: int | None = None,
        propagate: bool = False,
        fake: Callable[..., Any] | None = None,
    ) -> None:
        self.action = action
        self.target = target
        self.exception = exception
        self.times = times
        self.propagate = propagate
        self.fake = fake
        self.used = 0

    def applies(self, record: TaskRecord) -> bool:
        return (self.times is None or self.used < self.times) and _matches(self.target, record)


class BackgroundTaskCapture(TaskLog):
    """The `bgtasks` fixture: records background tasks and controls what happens to them.

    Active from fixture set-up to teardown. Outside pytest it works as a context manager.
    """

    _controls = True

    def __init__(self, mode: Mode = "run") -> None:
        super().__init__()
        self._mode: Mode = _check_mode(mode)
        self._rules: list[_Rule] = []
        self._queue: list[TaskRecord] = []
        self._passed_over: set[TaskRecord] = set()
        """Tasks a simulated failure stopped, which the running batch will still call."""

    # -- lifetime --------------------------------------------------------------------------

    def start(self) -> None:
        """Start recording (the fixture does this)."""
        recorder.push(self)

    def stop(self) -> None:
        """Stop recording; the records stay."""
        recorder.pop(self)

    def __enter__(self) -> BackgroundTaskCapture:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @contextlib.contextmanager
    def capture(self) -> Generator[TaskLog, None, None]:
        """Record only what is scheduled inside the block:
        `with bgtasks.capture() as block: ...; block.assert_task_added(f)`."""
        if self not in recorder.logs:
            raise RuntimeError("bgtasks.capture() needs the capture to be active.")
        block = TaskLog()
        recorder.push(block)
        try:
            yield block
        finally:
            recorder.pop(block)

    # -- what happens to tasks -------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        """What happens to a task no rule matches: "run", "defer" or "skip"."""
        return self._mode

    @mode.setter
    def mode(self, value: Mode) -> None:
        self._mode = _check_mode(value)

    def fail(
        self,
        target: object,
        exc: BaseException | type[BaseException] | None = None,
        *,
        times: int | None = None,
        propagate: bool = False,
    ) -> None:
        """Matching tasks raise `exc` instead of running (a `SimulatedTaskError` when None).

        `times=n` fails only the first n matching runs. The failure is recorded and stops
        later tasks of the response, but does not reach the client unless `propagate=True`.
        """
        expected = expected_task(target, "bgtasks.fail()")
        if exc is None:
            exc = SimulatedTaskError(f"{callable_name(expected.func)} failed (bgtasks.fail)")
        elif isinstance(exc, type) and issubclass(exc, BaseException):
            exc = exc()
        elif not isinstance(exc, BaseException):
            raise TypeError(
                f"bgtasks.fail() expects an exception instance or class, got {exc!r} "
                f"({type(exc).__name__})."
            )
        if times is not None and (
            isinstance(times, bool) or not isinstance(times, int) or times < 1
        ):
            raise TypeError(f"bgtasks.fail() expects times= to be a positive int, got {times!r}.")
        self._rules.append(_Rule("fail", expected, exception=exc, times=times, propagate=propagate))

    def skip(self, target: object) -> None:
        """Matching tasks are recorded and never run."""
        self._rules.append(_Rule("skip", expected_task(target, "bgtasks.skip()")))

    def defer(self, target: object) -> None:
        """Matching tasks are held until `run_deferred()`."""
        self._rules.append(_Rule("defer", expected_task(target, "bgtasks.defer()")))

    def replace(self, target: object, fake: Callable[..., Any]) -> None:
        """`fake(*args, **kwargs)` runs instead of matching tasks (sync or async)."""
        expected = expected_task(target, "bgtasks.replace()")
        if not callable(fake):
            raise TypeError(
                f"bgtasks.replace() expects a callable to run instead of "
                f"{callable_name(expected.func)}, got {fake!r} ({type(fake).__name__})."
            )
        self._rules.append(_Rule("replace", expected, fake=fake))

    def _rule_for(self, record: TaskRecord, *, deferred: bool = False) -> _Rule | None:
        for rule in reversed(self._rules):
            if deferred and rule.action == "defer":
                continue
            if rule.applies(record):
                rule.used += 1
                return rule
        return None

    async def _dispatch(self, record: TaskRecord) -> None:
        """A response calls the task: decide its fate and carry it out."""
        if record in self._passed_over:
            # A simulated failure earlier in its batch stopped it; unstarted, it runs if the
            # batch is run again.
            self._passed_over.discard(record)
            return
        record._started = True
        if record.status is not TaskStatus.PENDING:
            # Settled as never run when an earlier response ended (its batch is reused across
            # requests): this one runs it after all.
            record.status = TaskStatus.PENDING
            record._more().reason = None
        rule = self._rule_for(record)
        action = rule.action if rule is not None else self._mode
        if action == "defer":
            self._hold(record)
        elif action == "skip":
            record.status = TaskStatus.SKIPPED
        else:
            await self._execute(record, rule)

    def _hold(self, record: TaskRecord) -> None:
        record.status = TaskStatus.DEFERRED
        record._more().held = (contextvars.copy_context(), _current_loop())
        self._queue.append(record)

    async def _execute(self, record: TaskRecord, rule: _Rule | None) -> None:
        if rule is not None and rule.action == "fail":
            assert rule.exception is not None
            stopped = self._failed(record, rule.exception, simulated=True)
            if rule.propagate:
                raise rule.exception
            if deferred_run.get() is None:  # its batch goes on: nothing raised
                self._passed_over.update(stopped)
            return
        # Inside a request the app stands between the task and the test; a held task run by
        # run_deferred() still carries its request's context, but runs outside the request.
        in_request = deferred_run.get() is None and _starlette.current_scope() is not None
        returned: list[Any] = []
        fake = rule.fake if rule is not None and rule.action == "replace" else None
        try:
            await _starlette.run_task(record._task, fake, returned.append)
        except BaseException as exc:
            close_coroutine(record.func)
            if is_cancellation(exc):
                record.status = TaskStatus.CANCELLED
                record._more().reason = "cancelled while running"
                self._stop_rest(
                    record, TaskStatus.CANCELLED, "never started: an earlier task was cancelled"
                )
            else:
                self._failed(record, exc, in_request=in_request)
            raise
        if returned and inspect.isawaitable(returned[0]):
            close_coroutine(returned[0])
            record.status = TaskStatus.FAILED
            details = record._more()
            details.problem = (
                f"{record.name} is a sync callable that returned "
                f"{callable_name(returned[0])}, which nobody awaits: Starlette runs sync tasks "
                "in a thread and drops what they return; give add_task the async function"
            )
            details.exception = TypeError(details.problem)
        else:
            record.status = TaskStatus.RAN

    def _failed(
        self,
        record: TaskRecord,
        exc: BaseException,
        *,
        simulated: bool = False,
        in_request: bool = False,
    ) -> list[TaskRecord]:
        record.status = TaskStatus.FAILED
        details = record._more()
        details.exception = exc
        details.simulated = simulated
        details.in_request = in_request
        return self._stop_rest(
            record,
            TaskStatus.NOT_RUN,
            f"not run: an earlier task of its response failed, {record.call} raised {exc!r}",
        )

    def _stop_rest(self, record: TaskRecord, status: TaskStatus, reason: str) -> list[TaskRecord]:
        """Later tasks of the record's batch will not run (Starlette stops at a failure).
        Returns the records stopped."""
        batch = recorder.batch_of(record) or _starlette.calling_batch(record._task)
        if batch is None:
            return []
        tasks = list(batch.tasks)
        # Both ways of finding the batch look for one that holds the task.
        position = next(i for i, item in enumerate(tasks) if item is record._task)
        stopped: list[TaskRecord] = []
        for item in tasks[position + 1 :]:
            later = recorder.record(item)
            if later is None:
                continue
            waiting = later.status is TaskStatus.DEFERRED or (
                later.status is TaskStatus.PENDING and not later._started
            )
            if waiting:
                if later in self._queue:
                    self._queue.remove(later)
                later.status = status
                later._more().reason = reason
                stopped.append(later)
        return stopped

    # -- deferred tasks --------------------------------------------------------------------

    def run_deferred(
        self, only: object = None, *, limit: int | None = None, timeout: float | None = None
    ) -> list[TaskRecord]:
        """Run held tasks now, in FIFO order, including tasks they schedule.

        `only` (a function or `task(...)`) runs only matching ones, `limit` at most that many,
        `timeout` (seconds) bounds each task. Returns the records run. In async tests use
        `await bgtasks.arun_deferred()`.
        """
        __tracebackhide__ = True
        if _running_loop() is not None:
            raise RuntimeError(
                "bgtasks.run_deferred() was called from a running event loop; "
                "in async tests use `await bgtasks.arun_deferred()`."
            )
        selector = self._deferred_args(only, limit, timeout, "run_deferred()")
        run = lambda: self._run_deferred(selector, limit, timeout)  # noqa: E731
        # On the event loop the first held task was deferred on, while it still runs (inside a
        # `with TestClient(app)` block), else on a new one.
        held = self._queue[0]._details.held if self._queue else None
        resume: _Resume | None = held[1] if held is not None else None
        if resume is not None:
            resumed = resume(run)
            if resumed is not None:
                return resumed
        return anyio.run(run)

    async def arun_deferred(
        self, only: object = None, *, limit: int | None = None, timeout: float | None = None
    ) -> list[TaskRecord]:
        """`run_deferred()` for async tests: runs held tasks on the running event loop."""
        __tracebackhide__ = True
        selector = self._deferred_args(only, limit, timeout, "arun_deferred()")
        return await self._run_deferred(selector, limit, timeout)

    def _deferred_args(
        self, only: object, limit: int | None, timeout: float | None, caller: str
    ) -> ExpectedTask | None:
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise TypeError(f"{caller} expects limit= to be an int >= 0, got {limit!r}.")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
        ):
            raise TypeError(
                f"{caller} expects timeout= to be a number of seconds > 0, got {timeout!r}."
            )
        return None if only is None else expected_task(only, caller)

    async def _run_deferred(
        self, only: ExpectedTask | None, limit: int | None, timeout: float | None
    ) -> list[TaskRecord]:
        ran: list[TaskRecord] = []
        first_error: BaseException | None = None
        while limit is None or len(ran) < limit:
            record = next((r for r in self._queue if only is None or _matches(only, r)), None)
            if record is None:
                break
            generation = record._details.generation
            if generation > MAX_GENERATIONS:
                raise RuntimeError(
                    f"bgtasks.run_deferred() stopped: tasks kept scheduling tasks, "
                    f"{generation} generations deep. Next would be:\n"
                    f"- {record.describe()}\n"
                    "A task that schedules itself needs a condition that ends it; "
                    "pass limit= to run a bounded number."
                )
            self._queue.remove(record)
            record.status = TaskStatus.PENDING
            run = DeferredRun(record)
            try:
                with anyio.fail_after(timeout):
                    async with anyio.create_task_group() as group:
                        group.start_soon(self._run_one, run)
            except TimeoutError:
                record.status = TaskStatus.CANCELLED
                record._more().reason = f"cancelled: did not finish within timeout={timeout}s"
                raise TimeoutError(
                    f"Deferred task {record.call} ({record.added_at}) did not finish within "
                    f"{timeout} seconds."
                ) from None
            except BaseException as exc:
                error = _unwrapped(exc, record.exception)
                # The status is the one the task left, not the PENDING set above.
                failed = record.status is TaskStatus.FAILED  # pyright: ignore[reportUnnecessaryComparison]
                if not failed or error is not record.exception:
                    raise
                first_error = first_error or error
            ran.append(record)
            for child in run.children:
                if child.status is TaskStatus.PENDING and not child._started:
                    child._started = True
                    self._hold(child)
        if first_error is not None:
            raise first_error
        return ran

    async def _run_one(self, run: DeferredRun) -> None:
        record = run.record
        assert record._details.held is not None  # held tasks always have one
        context, _ = record._details.held
        for var, value in context.items():
            var.set(value)
        deferred_run.set(run)
        rule = self._rule_for(record, deferred=True)
        if rule is not None and rule.action == "skip":
            record.status = TaskStatus.SKIPPED
            return
        await self._execute(record, rule)

    # -- teardown --------------------------------------------------------------------------

    def _verdict(
        self,
        *,
        on_dropped: Literal["fail", "warn", "ignore"] = "fail",
        allow_failures: bool = False,
        assert_all_run: bool = False,
    ) -> tuple[list[str], list[str]]:
        """The teardown verdict: (errors, warnings), each a list of messages."""
        errors: list[str] = []
        warnings: list[str] = []
        if on_dropped != "ignore":
            found = errors if on_dropped == "fail" else warnings
            dropped = [
                r
                for r in self._records
                if r.status is TaskStatus.DROPPED and not r._details.excused
            ]
            if dropped:
                found.append(_messages.dropped(dropped))
            again = [r for r in self._records if r._details.again_of is not None]
            if again:
                found.append(_messages.ran_again(again))
        if not allow_failures:
            raised: list[tuple[TaskRecord, BaseException]] = []
            idle: list[TaskRecord] = []
            for record in self._records:
                exc = record.exception
                if record.status is not TaskStatus.FAILED or record.simulated or exc is None:
                    continue
                if exc.__traceback__ is None:
                    # Never raised: made by the plugin to report a sync function that returned
                    # a coroutine, a task that did nothing.
                    idle.append(record)
                elif not _seen(record, exc):
                    raised.append((record, exc))
            if raised:
                errors.append(
                    _messages.unseen_failures(
                        [record for record, _ in raised],
                        [_starlette.task_frames(exc) for _, exc in raised],
                    )
                )
            if idle:
                errors.append(_messages.did_nothing(idle))
        if assert_all_run and self._queue:
            errors.append(_messages.unrun_deferred(list(self._queue)))
        return errors, warnings

    def _report(self) -> str:
        """The "Captured background tasks" section of a failing test's report."""
        return _messages.report_section(self.tasks)


def _seen(record: TaskRecord, exc: BaseException) -> bool:
    """Whether the test saw the task's exception: it went past the app (or past the runner,
    for a task run outside any request) to the test's code, itself or inside what left the
    app (an ExceptionGroup, the RuntimeError it caused)."""
    if _starlette.reached_caller(exc, raised_in_request=record._details.in_request):
        return True
    scope = record._scope
    escaped = scope.error if scope is not None else None
    return (
        escaped is not None
        and _contains(escaped, exc)
        and _starlette.reached_caller(escaped, raised_in_request=True)
    )


def _contains(outer: BaseException, inner: BaseException) -> bool:
    pending = [outer]
    seen: set[int] = set()
    while pending:
        exc = pending.pop()
        if exc is inner:
            return True
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        pending += [e for e in (exc.__cause__, exc.__context__) if e is not None]
        pending += list(getattr(exc, "exceptions", ()))
    return False


def _unwrapped(exc: BaseException, own: BaseException | None) -> BaseException:
    """The one exception inside the single-member exception groups a task group wrapped it in,
    down to the task's `own` exception (which may be a group itself)."""
    while exc is not own:
        inner: tuple[BaseException, ...] = tuple(getattr(exc, "exceptions", ()))
        if len(inner) != 1:
            break
        exc = inner[0]
    return exc


def _check_mode(mode: object) -> Mode:
    for known in MODES:
        if mode == known and isinstance(mode, str):
            return known
    raise ValueError(f"Unknown background task mode {mode!r}; expected one of: {', '.join(MODES)}.")


# -- event loops -------------------------------------------------------------------------------

_Job = Callable[[], Coroutine[Any, Any, "list[TaskRecord]"]]
_Resume = Callable[[_Job], "list[TaskRecord] | None"]
"""Runs a coroutine function on the event loop a task was deferred on, from another thread;
None when that loop is gone."""


def _running_loop() -> object | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            token: object = trio.lowlevel.current_trio_token()
            return token
        except RuntimeError:
            pass
    return None


def _current_loop() -> _Resume | None:
    """A way back onto the event loop running now, for `run_deferred()` in the test's thread."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:

        def resume_asyncio(func: _Job) -> list[TaskRecord] | None:
            if loop.is_closed() or not loop.is_running():
                return None
            return asyncio.run_coroutine_threadsafe(func(), loop).result()

        return resume_asyncio
    trio = sys.modules.get("trio")
    if trio is None:
        return None
    try:
        token = trio.lowlevel.current_trio_token()
    except RuntimeError:
        return None

    def resume_trio(func: _Job) -> list[TaskRecord] | None:
        try:
            result: list[TaskRecord] = trio.from_thread.run(func, trio_token=token)
        except trio.RunFinishedError:
            return None
        return result

    return resume_trio


# -- the free assertion functions: they act on the active capture ------------------------------


def assert_task_added(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskRecord:
    """The first task matching `func(*args, **kwargs)`; AssertionError if none was added."""
    __tracebackhide__ = True
    return _active_capture("assert_task_added()").assert_task_added(func, *args, **kwargs)


def assert_task_not_added(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
    """AssertionError if any task matching `func(*args, **kwargs)` was added."""
    __tracebackhide__ = True
    _active_capture("assert_task_not_added()").assert_task_not_added(func, *args, **kwargs)


def assert_task_ran(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskRecord:
    """The first matching task that ran to completion."""
    __tracebackhide__ = True
    return _active_capture("assert_task_ran()").assert_task_ran(func, *args, **kwargs)


def assert_task_failed(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskRecord:
    """The first matching task that raised; its `exception` is what it raised."""
    __tracebackhide__ = True
    return _active_capture("assert_task_failed()").assert_task_failed(func, *args, **kwargs)


def assert_task_count(expected: int, func: object = None) -> list[TaskRecord]:
    """Exactly `expected` tasks were added (matching `func` when given)."""
    __tracebackhide__ = True
    return _active_capture("assert_task_count()").assert_task_count(expected, func)


def assert_no_tasks() -> None:
    """No background task was added."""
    __tracebackhide__ = True
    _active_capture("assert_no_tasks()").assert_no_tasks()


def assert_tasks_in_order(*expected: object) -> list[TaskRecord]:
    """Each of `expected` was added, in this relative order."""
    __tracebackhide__ = True
    return _active_capture("assert_tasks_in_order()").assert_tasks_in_order(*expected)
