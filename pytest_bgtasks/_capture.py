"""The capture: the public object that records background tasks while it is active, holds the
rules and the mode, runs held tasks, and answers assertions and teardown findings.

Nothing here imports pytest or names a framework. The plugin imports this module when a test
first uses it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import pytest_bgtasks._findings as _findings
import pytest_bgtasks._messages as _messages
import pytest_bgtasks._state as _state

from ._closest import closest
from ._lifecycle import TaskRecord, TaskStatus
from ._matching import (
    ExpectedTask,
    Matcher,
    Target,
    check_fits,
    expected_call,
    expected_task,
)
from ._naming import describe_value, target_name
from ._runner import Rule, Runner, check_count, check_seconds, check_timeout
from ._settings import Mode, check_mode

if TYPE_CHECKING:
    from types import TracebackType

    from ._findings import Finding


class SimulatedTaskError(Exception):
    """Raised in a task's place by `bgtasks.fail(func)` when no exception is given."""


def _active_capture(caller: str) -> BackgroundTaskCapture:
    state = _state.current()
    runner = state.innermost_runner() if state is not None else None
    if runner is None:
        raise RuntimeError(_messages.no_capture(caller))
    capture: BackgroundTaskCapture = runner.owner
    return capture


class TaskLog:
    """The records of a capture, in scheduling order, and assertions over them.

    `bgtasks` is one; so is the block of `with bgtasks.capture() as block:`.
    """

    _runner: Runner | None = None

    def __init__(self) -> None:
        self._records: list[TaskRecord] = []
        self._active = False

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

    def findings(self) -> list[Finding]:
        """What teardown would report: tasks dropped or run again, failures the test never
        saw, tasks that did nothing, deferred tasks left unrun. Which of them fail a test is
        up to the marker and ini settings (the plugin); here they are all."""
        return _findings.findings(self._records)

    # -- assertions ------------------------------------------------------------------------

    def assert_task_added(self, func: Target, /, *args: Any, **kwargs: Any) -> TaskRecord:
        """The first task matching `func(*args, **kwargs)`; AssertionError if none was added."""
        __tracebackhide__ = True
        expected = expected_call("assert_task_added()", func, args, kwargs)
        found = Matcher(expected).first(self._records)
        if found is None:
            records = self.tasks
            raise AssertionError(
                _messages.missing(expected, "was added", records, closest(expected, records))
            )
        return found

    def assert_task_not_added(self, func: Target, /, *args: Any, **kwargs: Any) -> None:
        """AssertionError if any task matching `func(*args, **kwargs)` was added."""
        __tracebackhide__ = True
        expected = expected_call("assert_task_not_added()", func, args, kwargs)
        found = Matcher(expected).select(self._records)
        if found:
            raise AssertionError(_messages.unexpected(expected, found, 0))

    def assert_task_ran(self, func: Target, /, *args: Any, **kwargs: Any) -> TaskRecord:
        """The first matching task that ran to completion."""
        __tracebackhide__ = True
        return self._assert_status("assert_task_ran()", TaskStatus.RAN, "ran", func, args, kwargs)

    def assert_task_failed(self, func: Target, /, *args: Any, **kwargs: Any) -> TaskRecord:
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
        expected = expected_call(caller, func, args, kwargs)
        found = Matcher(expected).select(self._records)
        for record in found:
            if record.status is status:
                return record
        records = self.tasks
        hint = _messages.matching_hint(found[0]) if found else closest(expected, records)
        raise AssertionError(_messages.missing(expected, outcome, records, hint))

    def assert_task_count(self, expected: int, func: Target | None = None) -> list[TaskRecord]:
        """Exactly `expected` tasks were added (that match `func`, a function, its name or
        `task(...)`, when given). Returns them."""
        __tracebackhide__ = True
        check_count(expected, "assert_task_count()", "a count >= 0", 0)
        wanted = None if func is None else expected_task(func, "assert_task_count()")
        found = self.tasks if wanted is None else Matcher(wanted).select(self._records)
        if len(found) != expected:
            raise AssertionError(_messages.unexpected(wanted, found, expected))
        return found

    def assert_no_tasks(self) -> None:
        """No background task was added at all."""
        __tracebackhide__ = True
        self.assert_task_count(0)

    def assert_tasks_in_order(self, *expected: Target) -> list[TaskRecord]:
        """Each of `expected` (a function, its name, or `task(...)`) was added, in this relative
        order; other tasks may come between. Returns the records matched."""
        __tracebackhide__ = True
        if not expected:
            raise TypeError("assert_tasks_in_order() expects at least one task.")
        wanted = [expected_task(item, "assert_tasks_in_order()") for item in expected]
        for item in wanted:
            check_fits(item, "assert_tasks_in_order()")
        records = self.tasks
        matched: list[TaskRecord] = []
        position = 0
        for item in wanted:
            matcher = Matcher(item)
            found = matcher.first(records[position:])
            if found is None:
                earlier = matcher.first(records[:position])
                raise AssertionError(_messages.out_of_order(wanted, matched, earlier, records))
            matched.append(found)
            position = records.index(found, position) + 1
        return matched

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {_messages.count(len(self._records))}>"


class BackgroundTaskCapture(TaskLog):
    """The `bgtasks` fixture: records background tasks and controls what happens to them.

    Active from fixture set-up to teardown. Outside pytest it works as a context manager.
    """

    def __init__(self, mode: Mode = "run") -> None:
        super().__init__()
        self._control = Runner(check_mode(mode), self)
        self._runner = self._control

    # -- lifetime --------------------------------------------------------------------------

    def start(self) -> None:
        """Start recording (the fixture does this)."""
        state = _state.acquire(self)
        try:
            state.push(self)
        except RuntimeError:
            _state.release(self)
            raise

    def stop(self) -> None:
        """Stop recording; the records stay."""
        state = _state.current()
        if state is not None and self._active:
            state.pop(self)
            _state.release(self)

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
        state = _state.current()
        if state is None or not self._active:
            raise RuntimeError("bgtasks.capture() needs the capture to be active.")
        block = TaskLog()
        _state.acquire(block)
        state.push(block)
        try:
            yield block
        finally:
            state.pop(block)
            _state.release(block)

    # -- what happens to tasks -------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        """What happens to a task no rule matches: "run", "defer" or "skip"."""
        return self._control.mode

    @mode.setter
    def mode(self, value: Mode) -> None:
        self._control.mode = check_mode(value)

    def fail(
        self,
        target: Target,
        exc: BaseException | type[BaseException] | None = None,
        *,
        times: int | None = None,
        propagate: bool = False,
    ) -> None:
        """Matching tasks raise `exc` instead of running (a `SimulatedTaskError` when None).

        `times=n` fails only the first n matching runs. The failure is recorded and stops
        later tasks of the response, but does not reach the client unless `propagate=True`.
        """
        expected = _rule_target(target, "bgtasks.fail()")
        if exc is None:
            exc = SimulatedTaskError(f"{target_name(expected.func)} failed (bgtasks.fail)")
        elif isinstance(exc, type) and issubclass(exc, BaseException):
            exc = exc()
        elif not isinstance(exc, BaseException):
            raise TypeError(
                f"bgtasks.fail() expects an exception instance or class, got {describe_value(exc)}."
            )
        if times is not None:
            check_count(times, "bgtasks.fail()", "times= to be a positive int", 1)
        self._control.add(Rule("fail", expected, exception=exc, times=times, propagate=propagate))

    def skip(self, target: Target) -> None:
        """Matching tasks are recorded and never run."""
        self._control.add(Rule("skip", _rule_target(target, "bgtasks.skip()")))

    def defer(self, target: Target) -> None:
        """Matching tasks are held until `run_deferred()`."""
        self._control.add(Rule("defer", _rule_target(target, "bgtasks.defer()")))

    def replace(self, target: Target, fake: Callable[..., Any]) -> None:
        """`fake(*args, **kwargs)` runs instead of matching tasks (sync or async)."""
        expected = _rule_target(target, "bgtasks.replace()")
        if not callable(fake):
            raise TypeError(
                f"bgtasks.replace() expects a callable to run instead of "
                f"{target_name(expected.func)}, got {describe_value(fake)}."
            )
        self._control.add(Rule("replace", expected, fake=fake))

    # -- deferred tasks --------------------------------------------------------------------

    def run_deferred(
        self, only: Target | None = None, *, limit: int | None = None, timeout: float | None = None
    ) -> list[TaskRecord]:
        """Run held tasks now, in FIFO order, including tasks they schedule.

        `only` (a function, its name, or `task(...)`) runs only matching ones, `limit` at most
        that many, `timeout` (seconds) bounds each task. Each task runs on the event loop of
        the client that scheduled it while that client is open, else on a new one. Returns
        the records run. In async tests use `await bgtasks.arun_deferred()`.
        """
        __tracebackhide__ = True
        selector, seconds = _deferred_args(only, limit, timeout, "run_deferred()")
        return self._control.run_deferred(selector, limit, seconds)

    async def arun_deferred(
        self, only: Target | None = None, *, limit: int | None = None, timeout: float | None = None
    ) -> list[TaskRecord]:
        """`run_deferred()` for async tests: runs held tasks on the running event loop (a task
        held on another client's loop that still runs, on that one)."""
        __tracebackhide__ = True
        selector, seconds = _deferred_args(only, limit, timeout, "arun_deferred()")
        return await self._control.arun_deferred(selector, limit, seconds)

    def wait(self, timeout: float = 10.0) -> list[TaskRecord]:
        """Block until no task sent to a worker (mode "worker") is still running, and return
        every record. A TimeoutError names those still running after `timeout` seconds."""
        __tracebackhide__ = True
        seconds = check_seconds(timeout, "bgtasks.wait()")  # always bounded: wait() must end
        state = _state.current()
        for source in state.sources.values() if state is not None else ():
            source.wait(self._records, seconds)
        still = [record for record in self._records if record.running]
        if still:
            raise TimeoutError(_messages.still_running(still, seconds))
        return self.tasks

    def report(self) -> str:
        """The "Captured background tasks" section of a failing test's report."""
        return _messages.report_section(self.tasks)


def _rule_target(target: object, caller: str) -> ExpectedTask:
    expected = expected_task(target, caller)
    check_fits(expected, caller)
    return expected


def _deferred_args(
    only: object, limit: int | None, timeout: float | None, caller: str
) -> tuple[ExpectedTask | None, float | None]:
    """Checked, before any held task is taken off the queue."""
    if limit is not None:
        check_count(limit, caller, "limit= to be an int >= 0", 0)
    seconds = check_timeout(timeout, caller)
    return (None if only is None else _rule_target(only, caller)), seconds


# -- the free assertion functions: they act on the active capture ------------------------------


def assert_task_added(func: Target, /, *args: Any, **kwargs: Any) -> TaskRecord:
    """The first task matching `func(*args, **kwargs)`; AssertionError if none was added."""
    __tracebackhide__ = True
    return _active_capture("assert_task_added()").assert_task_added(func, *args, **kwargs)


def assert_task_not_added(func: Target, /, *args: Any, **kwargs: Any) -> None:
    """AssertionError if any task matching `func(*args, **kwargs)` was added."""
    __tracebackhide__ = True
    _active_capture("assert_task_not_added()").assert_task_not_added(func, *args, **kwargs)


def assert_task_ran(func: Target, /, *args: Any, **kwargs: Any) -> TaskRecord:
    """The first matching task that ran to completion."""
    __tracebackhide__ = True
    return _active_capture("assert_task_ran()").assert_task_ran(func, *args, **kwargs)


def assert_task_failed(func: Target, /, *args: Any, **kwargs: Any) -> TaskRecord:
    """The first matching task that raised; its `exception` is what it raised."""
    __tracebackhide__ = True
    return _active_capture("assert_task_failed()").assert_task_failed(func, *args, **kwargs)


def assert_task_count(expected: int, func: Target | None = None) -> list[TaskRecord]:
    """Exactly `expected` tasks were added (matching `func` when given)."""
    __tracebackhide__ = True
    return _active_capture("assert_task_count()").assert_task_count(expected, func)


def assert_no_tasks() -> None:
    """No background task was added."""
    __tracebackhide__ = True
    _active_capture("assert_no_tasks()").assert_no_tasks()


def assert_tasks_in_order(*expected: Target) -> list[TaskRecord]:
    """Each of `expected` was added, in this relative order."""
    __tracebackhide__ = True
    return _active_capture("assert_tasks_in_order()").assert_tasks_in_order(*expected)
