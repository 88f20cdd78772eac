"""What happens when a task would run: the rules and the mode decide, the source executes, the
record is told the outcome. Held tasks wait in a queue for `run_deferred()`, each with its
context and the event loop it was scheduled on.

To add a rule: a method on `BackgroundTaskCapture` that appends a `Rule` with a new action,
and a branch for the action in `Runner.dispatch` (in a response) and `Runner._run_held` (in
`run_deferred()`). To add a mode: a value of `Mode`, and what `dispatch` does with it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import inspect
import math
import sys
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Literal

import anyio

import pytest_bgtasks._messages as _messages

from ._lifecycle import Request, TaskRecord, TaskStatus, current_request, running
from ._matching import ExpectedTask, Matcher
from ._settings import Mode

Action = Literal["fail", "skip", "defer", "replace"]
ACTIONS: tuple[Action, ...] = ("fail", "skip", "defer", "replace")
RUNNING: tuple[Action, ...] = ("fail", "skip", "replace")
"""The rules a held task being run obeys: it is not held again."""
MAX_GENERATIONS = 100
"""How deep `run_deferred()` follows tasks that schedule tasks before it stops."""


def check_count(value: object, caller: str, what: str, minimum: int) -> int:
    """An int (not a bool) of at least `minimum`: a TypeError for what is not an int, a
    ValueError for one too small. `what` says what is expected: "a count >= 0"."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{caller} expects {what}, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{caller} expects {what}, got {value!r}.")
    return value


def check_timeout(value: object, caller: str) -> float | None:
    """None (no bound), or what `check_seconds` accepts."""
    return None if value is None else check_seconds(value, caller)


def check_seconds(value: object, caller: str) -> float:
    """A number of seconds > 0 (not a bool, not NaN): a TypeError or ValueError naming `caller`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{caller} expects timeout= to be a number of seconds > 0, got {value!r}.")
    if not value > 0 or math.isnan(value):
        raise ValueError(f"{caller} expects timeout= to be a number of seconds > 0, got {value!r}.")
    return float(value)


class Rule:
    """One of `fail`, `skip`, `defer`, `replace`, for the tasks its target matches."""

    __slots__ = ("action", "exception", "fake", "matcher", "propagate", "times", "used")

    def __init__(
        self,
        action: Action,
        target: ExpectedTask,
        *,
        exception: BaseException | None = None,
        times: int | None = None,
        propagate: bool = False,
        fake: Callable[..., Any] | None = None,
    ) -> None:
        self.action = action
        self.matcher = Matcher(target)
        self.exception = exception
        self.times = times
        self.propagate = propagate
        self.fake = fake
        self.used = 0

    def applies(self, record: TaskRecord) -> bool:
        return (self.times is None or self.used < self.times) and self.matcher(record)


class Runner:
    """The mode and rules of one capture, and its queue of held tasks."""

    def __init__(self, mode: Mode, owner: Any) -> None:
        self.mode: Mode = mode
        self.owner = owner
        """The capture this runner decides for."""
        self.rules: list[Rule] = []
        self.queue: collections.deque[TaskRecord] = collections.deque()
        """Held tasks in FIFO order; a task stopped while held stays here until passed."""
        self.loops: dict[int, Loop] = {}
        """One `Loop` per event loop met, by id (the `Loop` keeps its loop, so the id stays
        its own): held tasks of one loop share it."""

    def add(self, rule: Rule) -> None:
        self.rules.append(rule)

    def rule_for(self, record: TaskRecord, actions: tuple[Action, ...] = ACTIONS) -> Rule | None:
        """The last rule added, of `actions`, that matches."""
        for rule in reversed(self.rules):
            if rule.action not in actions:
                continue
            if rule.applies(record):
                rule.used += 1
                return rule
        return None

    @property
    def held(self) -> list[TaskRecord]:
        return [record for record in self.queue if record.status is TaskStatus.DEFERRED]

    # -- a response calls a task -----------------------------------------------------------

    async def dispatch(self, record: TaskRecord) -> None:
        """Its response calls the task: the rules and the mode decide, then it is done."""
        __tracebackhide__ = True
        if record._details.passed_over:
            record.pass_by()
            return
        record.start()
        rule = self.rule_for(record) if self.rules else None
        action = rule.action if rule is not None else self.mode
        if action == "defer":
            self.hold(record)
        elif action == "skip":
            record.skip()
        else:
            await self.execute(record, rule, deferred=False)

    def hold(self, record: TaskRecord, context: contextvars.Context | None = None) -> None:
        record.hold(context or contextvars.copy_context(), current_loop(self.loops))
        self.queue.append(record)

    async def execute(self, record: TaskRecord, rule: Rule | None, *, deferred: bool) -> None:
        """Run the task (or what a rule puts in its place) and record what became of it."""
        __tracebackhide__ = True
        if rule is not None and rule.action == "fail":
            assert rule.exception is not None  # fail() always sets one
            record.failed(rule.exception, simulated=True)
            # Starlette's batch goes on calling its tasks when nothing was raised.
            _stop_after(record, rule.exception, passed_over=not (deferred or rule.propagate))
            if rule.propagate:
                raise rule.exception
            return
        fake = rule.fake if rule is not None and rule.action == "replace" else None
        token = running.set(record)
        try:
            problem = await record._source.execute(record, fake)
        except BaseException as exc:
            # Inside a request the app stands between the task and the test; a held task run
            # by run_deferred() still carries its request's context, but runs outside it.
            _raised(record, exc, None if deferred else current_request.get(), exc.__traceback__)
            raise
        finally:
            running.reset(token)
        if problem is not None:
            record.did_nothing(problem)
        elif record.running and not record._source.records_outcomes:
            record.ran()

    # -- run_deferred() --------------------------------------------------------------------

    def run_deferred(
        self, only: ExpectedTask | None, limit: int | None, timeout: float | None
    ) -> list[TaskRecord]:
        __tracebackhide__ = True
        if running_loop() is not None:
            raise RuntimeError(
                "bgtasks.run_deferred() was called from a running event loop; "
                "in async tests use `await bgtasks.arun_deferred()`."
            )
        run = _DeferredRun(self, only, limit, timeout)
        while (loop := run.next_loop()) is not None:
            if not loop.run_from_thread(run.segment):
                anyio.run(run.segment, backend=loop.backend)
        return run.finish()

    async def arun_deferred(
        self, only: ExpectedTask | None, limit: int | None, timeout: float | None
    ) -> list[TaskRecord]:
        __tracebackhide__ = True
        run = _DeferredRun(self, only, limit, timeout)
        here = current_loop(self.loops)
        while (loop := run.next_loop()) is not None:
            if loop is here or not loop.alive():
                await run.segment()
            else:
                await anyio.to_thread.run_sync(loop.run_from_thread, run.segment)
        return run.finish()


class _DeferredRun:
    """One call of `run_deferred()`: held tasks in FIFO order, run in segments, each on the
    event loop the tasks of the segment were held on."""

    def __init__(
        self, runner: Runner, only: ExpectedTask | None, limit: int | None, timeout: float | None
    ) -> None:
        self.runner = runner
        self.only = Matcher(only) if only is not None else None
        self.limit = limit
        self.timeout = timeout
        self.ran: list[TaskRecord] = []
        self.first_error: BaseException | None = None

    def _next(self) -> TaskRecord | None:
        if self.limit is not None and len(self.ran) >= self.limit:
            return None
        queue = self.runner.queue
        while queue and queue[0].status is not TaskStatus.DEFERRED:
            queue.popleft()  # stopped, or run, since it was held
        for record in queue:
            if record.status is TaskStatus.DEFERRED and (self.only is None or self.only(record)):
                generation = record._details.generation
                if generation > MAX_GENERATIONS:
                    raise RuntimeError(_messages.endless(record, generation))
                return record
        return None

    def next_loop(self) -> Loop | None:
        """The event loop of the next task to run, or None when none is left."""
        record = self._next()
        return None if record is None else _held_on(record)

    async def segment(self) -> None:
        """Run the next tasks, as long as they were held on the same event loop."""
        __tracebackhide__ = True
        loop = self.next_loop()
        while (record := self._next()) is not None and _held_on(record) is loop:
            await self._run_held(record)

    async def _run_held(self, record: TaskRecord) -> None:
        __tracebackhide__ = True
        runner = self.runner
        held = record._details.held
        assert held is not None
        context = held[0]
        context.run(current_request.set, None)  # it runs now, outside any request
        record.start()
        self.ran.append(record)
        actions: tuple[Action, ...] = ("skip",) if record._source.runs_rules else RUNNING
        rule = runner.rule_for(record, actions)
        if rule is not None and rule.action == "skip":
            record.skip()
            return
        try:
            with anyio.fail_after(self.timeout) if self.timeout else contextlib.nullcontext():
                await _InContext(context, runner.execute(record, rule, deferred=True))
        except TimeoutError:
            record.cancelled(f"cancelled: did not finish within timeout={self.timeout:g}s")
            raise TimeoutError(_messages.timed_out(record, self.timeout)) from None
        except BaseException as exc:
            if exc is not record.exception:  # not the task failing (a cancellation): at once
                raise
            self.first_error = self.first_error or exc
        finally:
            children = record._details.children
            if children:
                for child in children:
                    if child.waiting:
                        runner.hold(child, context.copy())

    def finish(self) -> list[TaskRecord]:
        __tracebackhide__ = True
        if self.first_error is not None:
            raise self.first_error
        return self.ran


def _held_on(record: TaskRecord) -> Loop:
    """The event loop a held task was held on."""
    held = record._details.held
    assert held is not None  # every held record has one
    loop: Loop = held[1]
    return loop


class _InContext:
    """Awaits a coroutine with every step of it run in `context`: a held task runs with the
    context variables it was scheduled with, in the task that runs it."""

    __slots__ = ("context", "coroutine")

    def __init__(self, context: contextvars.Context, coroutine: Coroutine[Any, Any, None]):
        self.context = context
        self.coroutine = coroutine

    def __await__(self) -> Generator[Any, Any, None]:
        __tracebackhide__ = True
        run, coroutine = self.context.run, self.coroutine
        send: Any = coroutine.send
        value: Any = None
        while True:
            try:
                yielded = run(send, value)
            except StopIteration:
                return
            try:
                value = yield yielded
                send = coroutine.send
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # thrown in by the event loop (a cancellation)
                value = exc
                send = coroutine.throw


def _raised(
    record: TaskRecord,
    exc: BaseException,
    failed_in: Request | None,
    at: types.TracebackType | None,
) -> None:
    close_coroutine(record.func)
    if is_cancellation(exc):
        record.cancelled("cancelled while running")
        record._source.stop_after(
            record, TaskStatus.CANCELLED, "never started: an earlier task was cancelled"
        )
    else:
        record.failed(exc, failed_in=failed_in, raised_at=at)
        _stop_after(record, exc)


def _stop_after(record: TaskRecord, exc: BaseException, *, passed_over: bool = False) -> None:
    record._source.stop_after(
        record,
        TaskStatus.NOT_RUN,
        f"not run: an earlier task of its response failed, {record.call} raised {exc!r}",
        passed_over=passed_over,
    )


def close_coroutine(value: object) -> None:
    """A coroutine object that nobody will await (given to add_task, or returned by a sync
    task): the plugin reports it, so close it rather than leave Python to warn "never awaited"
    at some later garbage collection, in whichever test that happens to be."""
    if inspect.iscoroutine(value):
        value.close()


def is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, asyncio.CancelledError):
        return True
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(exc, trio.Cancelled)


# -- event loops -------------------------------------------------------------------------------


_Job = Callable[[], Awaitable[None]]


class Loop:
    """An event loop a task was held on: a way to run a job there from another thread while
    it runs, and the backend to run it on afresh once it is gone."""

    __slots__ = ("backend", "handle")

    handle: Any

    def __init__(self, backend: str, handle: Any) -> None:
        self.backend = backend
        self.handle = handle
        """The asyncio loop, or trio's token for its run."""

    def alive(self) -> bool:
        if self.handle is None:
            return False
        if self.backend == "asyncio":
            loop: asyncio.AbstractEventLoop = self.handle
            return loop.is_running() and not loop.is_closed()
        return True  # a trio token: its run's end is found when a job is sent to it

    def run_from_thread(self, job: Callable[[], Awaitable[None]]) -> bool:
        """Run `job` on this loop and wait for it; False when the loop is gone."""
        __tracebackhide__ = True
        if self.backend == "asyncio":
            if not self.alive():
                return False

            async def call() -> None:
                __tracebackhide__ = True
                await job()

            loop: asyncio.AbstractEventLoop = self.handle
            asyncio.run_coroutine_threadsafe(call(), loop).result()
            return True
        if self.handle is None:
            return False
        trio = sys.modules["trio"]
        try:
            trio.from_thread.run(job, trio_token=self.handle)
        except trio.RunFinishedError:
            self.handle = None
            return False
        return True


def running_loop() -> object | None:
    """The event loop running in this thread, asyncio's or trio's, if any."""
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


def current_loop(known: dict[int, Loop]) -> Loop:
    """The event loop running now, as one of `known` (a `Loop` with no handle outside any)."""
    try:
        handle: Any = asyncio.get_running_loop()
        backend = "asyncio"
    except RuntimeError:
        trio = sys.modules.get("trio")
        try:
            handle = trio.lowlevel.current_trio_token() if trio is not None else None
        except RuntimeError:
            handle = None
        backend = "trio" if handle is not None else "asyncio"
    loop = known.get(id(handle))
    if loop is None or loop.handle is not handle:
        loop = known[id(handle)] = Loop(backend, handle)
    return loop
