"""Expected task calls (`task(...)`) and how they match what an app scheduled."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

_MAX_ARG_REPR = 200


class ExpectedTask:
    """An expected background task call, built by `task(func, *args, **kwargs)`.

    With no arguments it matches any call of `func`; with arguments, the call's arguments
    must all match after both sides are bound to `func`'s signature.
    """

    __slots__ = ("any_args", "args", "func", "kwargs")

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]):
        self.func, self.args, self.kwargs = call_shape(func, args, kwargs)
        self.any_args = not self.args and not self.kwargs

    def __repr__(self) -> str:
        parts = [callable_name(self.func), *_format_arguments(self.args, self.kwargs)]
        return f"task({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExpectedTask):
            return NotImplemented
        return (self.func, self.args, self.kwargs) == (other.func, other.args, other.kwargs)

    __hash__ = None  # type: ignore[assignment]  # mutable arguments, like unittest.mock.call

    @property
    def call(self) -> str:
        """The expected call as source; `f(...)` when any arguments match."""
        if self.any_args:
            return f"{callable_name(self.func)}(...)"
        return format_call(self.func, self.args, self.kwargs)


def task(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> ExpectedTask:
    """An expected task call, like `unittest.mock.call`: `task(send_welcome_email, "a@b.com")`."""
    if isinstance(func, ExpectedTask) or not callable(func):
        raise TypeError(f"task() expects the task function first, got {_describe_value(func)}.")
    return ExpectedTask(func, args, kwargs)


def expected_task(target: object, caller: str) -> ExpectedTask:
    """A task function or `task(...)` as an `ExpectedTask`, or a TypeError naming `caller`."""
    if isinstance(target, ExpectedTask):
        return target
    if callable(target):
        return ExpectedTask(target, (), {})
    raise TypeError(
        f"{caller} expects a task function or task(func, *args, **kwargs), "
        f"got {_describe_value(target)}."
    )


def call_shape(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """The call as Starlette will make it: a `functools.partial` becomes its function,
    its own arguments first. The result shares `args` and `kwargs` when there is no partial:
    do not change them."""
    if not isinstance(func, functools.partial):
        return func, args, kwargs
    kwargs = dict(kwargs)
    while isinstance(func, functools.partial):
        args = func.args + args
        kwargs = {**func.keywords, **kwargs}
        func = func.func
    return func, args, kwargs


def callable_name(func: object) -> str:
    """A short readable name: `send_welcome_email`, `Mailer.send`, `Notifier.__call__`."""
    while isinstance(func, functools.partial):
        func = func.func
    if inspect.iscoroutine(func):
        return f"<coroutine object {_short(func.__qualname__)}>"
    if inspect.ismethod(func):
        func = func.__func__
    qualname = getattr(func, "__qualname__", None)
    if isinstance(qualname, str) and (inspect.isroutine(func) or inspect.isclass(func)):
        return _short(qualname)
    if callable(func):
        return f"{_short(type(func).__qualname__)}.__call__"
    return _truncate(repr(func))


def format_call(func: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The call as source: `send_welcome_email('a@b.com', subject='Hi')`."""
    func, args, kwargs = call_shape(func, args, kwargs)
    return f"{callable_name(func)}({', '.join(_format_arguments(args, kwargs))})"


def same_function(expected: object, actual: object) -> bool:
    if expected is actual:
        return True
    try:
        return bool(expected == actual)
    except Exception:
        return expected is actual


def arguments_match(expected: ExpectedTask, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a call of `expected.func` with `args`/`kwargs` (already in call shape) matches."""
    if expected.any_args:
        return True
    if len(expected.args) == len(args) and expected.kwargs.keys() == kwargs.keys():
        # Same shape: binding both to the signature would pair the same values.
        return _equal(expected.args, args) and _equal(expected.kwargs, kwargs)
    bound = _bind_both(expected, args, kwargs)
    if bound is None:
        return False
    want, got = bound
    return all(_equal(value, got[name]) for name, value in want.items())


def mismatches(expected: ExpectedTask, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
    """What differs between the expected call (with arguments) and an actual call of the same
    function: one entry per argument, by name when both calls fit the signature."""
    problem = _binding_problem(expected.func, expected.args, expected.kwargs)
    if problem is not None:
        return [f"the expected call does not fit {callable_name(expected.func)}{problem}"]
    bound = _bind_both(expected, args, kwargs)
    if bound is None:
        return _raw_mismatches(expected, args, kwargs)
    # Both calls are bound to the same signature with defaults applied: the same names.
    want, got = bound
    return [
        f"arg {name!r} expected {_arg_repr(value)}, got {_arg_repr(got[name])}"
        for name, value in want.items()
        if not _equal(value, got[name])
    ]


def _raw_mismatches(
    expected: ExpectedTask, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[str]:
    found: list[str] = []
    if len(expected.args) != len(args):
        found.append(f"positional args expected {_arg_repr(expected.args)}, got {_arg_repr(args)}")
    else:
        for position, (want, got) in enumerate(zip(expected.args, args, strict=False)):
            if not _equal(want, got):
                found.append(f"arg {position} expected {_arg_repr(want)}, got {_arg_repr(got)}")
    for name, want in expected.kwargs.items():
        if name not in kwargs:
            found.append(f"kwarg {name!r} expected {_arg_repr(want)}, not given")
        elif not _equal(want, kwargs[name]):
            found.append(
                f"kwarg {name!r} expected {_arg_repr(want)}, got {_arg_repr(kwargs[name])}"
            )
    found += [
        f"unexpected kwarg {name!r}={_arg_repr(value)}"
        for name, value in kwargs.items()
        if name not in expected.kwargs
    ]
    return found


def _equal(expected: Any, actual: Any) -> bool:
    # The expected value on the left, so unittest.mock.ANY and dirty-equals matchers decide.
    # The same object is equal to itself, as in a tuple or a dict (NaN included), so that a
    # call matches itself however its arguments are passed.
    if expected is actual:
        return True
    try:
        return bool(expected == actual)
    except Exception:
        return False


def _bind_both(
    expected: ExpectedTask, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    want = _bind(expected.func, expected.args, expected.kwargs)
    got = _bind(expected.func, args, kwargs)
    if want is None or got is None:
        return None
    return want, got


def _bind(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    signature = _signature(func)
    if signature is None:
        return None
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    return dict(bound.arguments)


def _binding_problem(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    signature = _signature(func)
    if signature is None:
        return None
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        plain = signature.replace(
            parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
            return_annotation=signature.empty,
        )
        return f"{plain}: {exc}"
    return None


def _signature(func: Any) -> inspect.Signature | None:
    try:
        return _cached_signature(func)
    except TypeError:  # unhashable callable
        return _uncached_signature(func)


def _uncached_signature(func: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):
        return None


_cached_signature = functools.lru_cache(maxsize=512)(_uncached_signature)


def _format_arguments(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[str]:
    return [_arg_repr(value) for value in args] + [
        f"{name}={_arg_repr(value)}" for name, value in kwargs.items()
    ]


def _arg_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as exc:
        text = f"<{type(value).__name__} object; repr() raised {type(exc).__name__}>"
    return _truncate(text)


def _truncate(text: str) -> str:
    if len(text) <= _MAX_ARG_REPR:
        return text
    return text[: _MAX_ARG_REPR - 3] + "..."


def _short(qualname: str) -> str:
    return qualname.rpartition("<locals>.")[2]


def _describe_value(value: object) -> str:
    return f"{_arg_repr(value)} ({type(value).__name__})"
