"""What a Starlette task is given, and what it returns: the misuse Starlette itself says
nothing about (a coroutine object given to `add_task`, a sync function that returns a
coroutine or a generator, which Starlette drops)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest_bgtasks._messages as _messages

from .._lifecycle import TaskRecord
from .._naming import callable_name


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
