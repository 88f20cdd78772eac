"""What a Starlette task is given, and what it returns: the misuse Starlette itself says
nothing about (a coroutine object given to `add_task`, a sync function that returns a
coroutine or a generator, which Starlette drops)."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import pytest_bgtasks._messages as _messages

from .._lifecycle import TaskRecord
from .._naming import call_shape, callable_name

_SWAPPED = ("func", "args", "kwargs", "is_async")
"""What `swapped()` changes on the copy it runs."""


def swapped(
    task: Any,
    fake: Callable[..., Any] | None,
    is_async: Callable[[Any], bool],
    keep: Callable[[Any], None],
) -> Any:
    """The task to run: itself, or a copy that runs `fake` in its place, or whose sync function
    hands what it returns to `keep` (Starlette would drop a coroutine it returned)."""
    if fake is None and task.is_async:
        return task
    runner = copy.copy(task)
    if fake is not None:
        runner.func = fake
        _, runner.args, runner.kwargs = call_shape(task.func, task.args, task.kwargs)
        runner.is_async = is_async(fake)
    if not runner.is_async:
        runner.func = returning(runner.func, keep)
    return runner


def kept_back(task: Any, runner: Any) -> None:
    """What a subclass's own `__call__` set on the copy it ran (a count of attempts, a result),
    set on the task itself, as it would be without the copy."""
    if runner is not task:
        state: dict[str, Any] = runner.__dict__
        for name, value in state.items():
            if name not in _SWAPPED:
                setattr(task, name, value)


def returning(func: Callable[..., Any], keep: Callable[[Any], None]) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        result = func(*args, **kwargs)
        keep(result)
        return result

    return call


def did_nothing(record: TaskRecord, returned: Any) -> str | None:
    """What Starlette drops unawaited when a sync callable returns it: a coroutine, a
    generator. None for anything else."""
    if inspect.isawaitable(returned):
        close_coroutine(returned)
        return _messages.returned_awaitable(record.name, callable_name(returned))
    if inspect.isgenerator(returned) or inspect.isasyncgen(returned):
        if inspect.isgenerator(returned):
            returned.close()
        return _messages.returned_generator(record.name, asynchronous=inspect.isasyncgen(returned))
    return None


def misuse(func: object) -> str | None:
    if inspect.iscoroutine(func):
        return _messages.coroutine_given(callable_name(func))
    if not callable(func):
        return _messages.not_callable(func)
    return None


def close_coroutine(value: object) -> None:
    if inspect.iscoroutine(value):
        value.close()
