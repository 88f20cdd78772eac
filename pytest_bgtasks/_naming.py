"""How tasks and calls read in messages and reprs: names, calls as source, argument reprs."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

_MAX_ARG_REPR = 200
_partial = functools.partial

NAMERS: list[Callable[[object], str | None]] = []
"""Ways sources name the callables of their framework (a Celery task object by its function's
name), tried before the generic ones; a source adds its own when installed."""


def call_shape(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """The call as Starlette will make it: a `functools.partial` becomes its function,
    its own arguments first. The result shares `args` and `kwargs` when there is no partial:
    do not change them."""
    if type(func) is not _partial and not isinstance(func, _partial):
        return func, args, kwargs
    kwargs = dict(kwargs)
    while isinstance(func, _partial):
        args = func.args + args
        kwargs = {**func.keywords, **kwargs}
        func = func.func
    return func, args, kwargs


def callable_name(func: object) -> str:
    """A short readable name: `send_welcome_email`, `Mailer.send`, `Notifier.__call__`."""
    while isinstance(func, _partial):
        func = func.func
    if inspect.iscoroutine(func):
        return f"<coroutine object {_short(func.__qualname__)}>"
    for namer in NAMERS:
        named = namer(func)
        if named is not None:
            return named
    if inspect.ismethod(func):
        func = func.__func__
    qualname = getattr(func, "__qualname__", None)
    if isinstance(qualname, str) and (inspect.isroutine(func) or inspect.isclass(func)):
        return _short(qualname)
    if callable(func):
        return f"{_short(type(func).__qualname__)}.__call__"
    return truncate(repr(func))


def target_name(target: object) -> str:
    """A target as messages show it: a name as it is, a function by `callable_name`."""
    return target if isinstance(target, str) else callable_name(target)


def format_call(func: object, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """The call as source: `send_welcome_email('a@b.com', subject='Hi')`."""
    func, args, kwargs = call_shape(func, args, dict(kwargs))
    return f"{callable_name(func)}({', '.join(_format_arguments(args, kwargs))})"


def _format_arguments(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[str]:
    return [arg_repr(value) for value in args] + [
        f"{name}={arg_repr(value)}" for name, value in kwargs.items()
    ]


def arg_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as exc:
        text = f"<{type(value).__name__} object; repr() raised {type(exc).__name__}>"
    return truncate(text)


def truncate(text: str) -> str:
    if len(text) <= _MAX_ARG_REPR:
        return text
    return text[: _MAX_ARG_REPR - 3] + "..."


def _short(qualname: str) -> str:
    return qualname.rpartition("<locals>.")[2]


def describe_value(value: object) -> str:
    return f"{arg_repr(value)} ({type(value).__name__})"
