"""Expected task calls (`task(...)`) and how they match what an app scheduled.

A target is a function (any call of it), `task(func, *args, **kwargs)` (only matching calls),
or a name (`"send_welcome_email"`: tasks whose function has that name). `Matcher` compiles one
target for scanning many records: the expected call is bound to the signature once, and once
more for each shape of call it meets (how many positional arguments, which keywords), never
once per record.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeAlias, TypeVar, cast

from ._naming import (
    _format_arguments,
    call_shape,
    callable_name,
    describe_value,
    target_name,
)

_partial = functools.partial


class ExpectedTask:
    """An expected background task call, built by `task(func, *args, **kwargs)`.

    With no arguments it matches any call of `func`; with arguments, the call's arguments
    must all match after both sides are bound to `func`'s signature. `func` may be a name.
    """

    __slots__ = ("any_args", "args", "func", "kwargs")

    func: Callable[..., Any] | str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    any_args: bool

    def __init__(
        self, func: Callable[..., Any] | str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.func, self.args, self.kwargs = call_shape(func, args, kwargs)
        self.any_args = not self.args and not self.kwargs

    def __repr__(self) -> str:
        shown = repr(self.func) if isinstance(self.func, str) else callable_name(self.func)
        parts = [shown, *_format_arguments(self.args, self.kwargs)]
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
            return f"{target_name(self.func)}(...)"
        return f"{target_name(self.func)}({', '.join(_format_arguments(self.args, self.kwargs))})"


Target: TypeAlias = "Callable[..., Any] | ExpectedTask | str"
"""What assertions and rules take: a task function, `task(...)`, or a task's name."""


def task(func: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> ExpectedTask:
    """An expected task call, like `unittest.mock.call`: `task(send_welcome_email, "a@b.com")`.

    `func` is the task function, or its name (`task("send_welcome_email", "a@b.com")`) for a
    task a test cannot import, such as a function defined inside the endpoint.
    """
    if isinstance(func, ExpectedTask) or not (callable(func) or isinstance(func, str)):
        raise TypeError(
            f"task() expects the task function or its name first, got {describe_value(func)}."
        )
    expected = ExpectedTask(func, args, kwargs)
    check_fits(expected, "task()")
    return expected


def expected_task(
    target: object, caller: str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
) -> ExpectedTask:
    """A target (function, name or `task(...)`) as an `ExpectedTask` (a function or name with
    `args` and `kwargs`), or a TypeError that names `caller`."""
    if isinstance(target, ExpectedTask):
        return target
    if callable(target) or isinstance(target, str):
        return ExpectedTask(target, args, kwargs or {})
    raise TypeError(
        f"{caller} expects a task function, its name, or task(func, *args, **kwargs), "
        f"got {describe_value(target)}."
    )


def expected_call(
    caller: str, target: object, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> ExpectedTask:
    """The `target, *args, **kwargs` of an assertion as one expected call."""
    if isinstance(target, ExpectedTask) and (args or kwargs):
        raise TypeError(f"{caller} takes either task(...) or a function and its arguments.")
    expected = expected_task(target, caller, args, kwargs)
    check_fits(expected, caller)  # an ExpectedTask made by hand, not by task(), too
    return expected


def check_fits(expected: ExpectedTask, caller: str) -> None:
    """A TypeError when the expected arguments cannot be a call of the function: such a target
    would never match anything, silently."""
    if expected.any_args or isinstance(expected.func, str):
        return
    problem = binding_problem(expected.func, expected.args, expected.kwargs)
    if problem is not None:
        raise TypeError(f"{caller}: {expected.call} {problem}")


def binding_problem(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """Why `func(*args, **kwargs)` cannot be a call of `func`, with what to do; None when it
    can (or when `func` has no signature to tell). A function defined in a class may be called
    as a method, without its first parameter."""
    signature = _signature(func)
    if signature is None:
        return None
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        if _is_method_function(func) and _fits(_without_first(signature), args, kwargs):
            return None
        shown = f"{target_name(func)}{_plain(signature)}"
        unknown = [name for name in kwargs if name not in signature.parameters]
        if unknown and not _takes_any_keyword(signature):
            names = ", ".join(repr(name) for name in unknown)
            return f"does not fit {shown}: no parameter named {names}."
        hint = ""
        if "missing" in str(exc):
            hint = " To match any value of an argument, pass unittest.mock.ANY for it."
        return f"does not fit {shown}: {exc}.{hint}"
    return None


def _is_method_function(func: Any) -> bool:
    """A plain function defined in a class body: `Mailer.send`."""
    return inspect.isfunction(func) and "." in func.__qualname__.rpartition("<locals>.")[2]


def _fits(signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    try:
        signature.bind(*args, **kwargs)
    except TypeError:
        return False
    return True


def _without_first(signature: inspect.Signature) -> inspect.Signature:
    return signature.replace(parameters=list(signature.parameters.values())[1:])


def _takes_any_keyword(signature: inspect.Signature) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())


def _plain(signature: inspect.Signature) -> inspect.Signature:
    return signature.replace(
        parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
        return_annotation=signature.empty,
    )


def equal(expected: Any, actual: Any) -> bool:
    """`expected == actual`, the expected value on the left so that `unittest.mock.ANY` and
    dirty-equals matchers decide; the same object is equal to itself (NaN too), as in a tuple
    or a dict; an `__eq__` that raises means not equal."""
    if expected is actual:
        return True
    try:
        return bool(expected == actual)
    except Exception:
        return False


class Call(Protocol):
    """What a matcher reads of a record."""

    @property
    def func(self) -> Any: ...

    @property
    def args(self) -> tuple[Any, ...]: ...

    @property
    def kwargs(self) -> dict[str, Any]: ...

    @property
    def name(self) -> str: ...


_C = TypeVar("_C", bound=Call)

_NO_MATCH = object()
"""A call shape that no call of the expected arguments can take."""


class Binding:
    """The signature that a call's arguments bind to: `function`'s, without its first
    parameter when the call is a bound method of it (`Mailer().send` for `Mailer.send`)."""

    __slots__ = ("function", "layouts", "without_self")

    def __init__(self, function: Any, without_self: bool) -> None:
        self.function = function
        self.without_self = without_self
        self.layouts: dict[object, Any] = {}
        """The expected arguments laid out in each call shape met."""

    def signature(self) -> inspect.Signature | None:
        signature = _signature(self.function)
        if signature is not None and self.without_self:
            signature = _without_first(signature)
        return signature


def binding_of(func: Any) -> tuple[Any, bool]:
    """The function whose signature a call of `func` binds to, and whether without `self`."""
    if inspect.ismethod(func):
        return func.__func__, True
    return func, False


class Matcher:
    """One target, compiled to test many calls quickly."""

    __slots__ = ("_bindings", "_own", "_target", "any_args", "expected")

    def __init__(self, expected: ExpectedTask) -> None:
        self.expected = expected
        self.any_args = expected.any_args
        self._target = expected.func
        self._own = Binding(expected.func, False)
        self._bindings: dict[tuple[int, bool], Binding] = {}
        """The other signatures met: methods of the target, functions a name matched."""

    def __call__(self, call: Call) -> bool:
        func, args, kwargs = call.func, call.args, call.kwargs
        if type(func) is _partial:
            func, args, kwargs = call_shape(func, args, kwargs)
        binding = self.binding(func, call)
        if binding is None:
            return False
        return self.any_args or self._arguments_match(binding, args, kwargs)

    def select(self, calls: Iterable[_C]) -> list[_C]:
        return [call for call in calls if self(call)]

    def first(self, calls: Iterable[_C]) -> _C | None:
        """The first of `calls` that matches, or None. Calls of the target itself are compared
        in place, against the expected call laid out once for each shape met (how many
        positional arguments, which keywords): most calls a test scans are of that kind."""
        target, own = self._target, self._own
        any_args, layouts = self.any_args, own.layouts
        for call in calls:
            if call.func is not target:
                if self(call):
                    return call
                continue
            if any_args:
                return call
            args, kwargs = call.args, call.kwargs
            want = layouts.get(len(args) if not kwargs else (len(args), *kwargs))
            if want is None:
                want = self._wanted(own, args, kwargs)
            if want is _NO_MATCH:
                continue
            try:
                if want[0] == args and want[1] == kwargs:  # identity first, expected on the left
                    return call
            except Exception:  # an __eq__ that raises: not equal (see _equal_args)
                continue
        return None

    def binding(self, func: Any, call: Call) -> Binding | None:
        """How a call of `func` binds when it is a call of the target: to the target's
        signature, to the signature of the function of a method the target names by its
        class (`Mailer.send` for `Mailer().send`, without `self`), or for a name target, to the
        call's own function; None when `func` is not the target."""
        target = self._target
        if func is target:
            return self._own
        if isinstance(target, str):
            if not names_match(target, call.name, func):
                return None
            return self._binding(*binding_of(func))
        if same_function(target, func):
            return self._own
        if inspect.ismethod(func) and func.__func__ is target:
            return self._binding(target, True)
        return None

    def _binding(self, function: Any, without_self: bool) -> Binding:
        key = (id(function), without_self)  # the binding keeps `function`: the id stays its own
        binding = self._bindings.get(key)
        if binding is None:
            binding = self._bindings[key] = Binding(function, without_self)
        return binding

    def _arguments_match(
        self, binding: Binding, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> bool:
        want = self._wanted(binding, args, kwargs)
        if want is _NO_MATCH:
            return False
        return _equal_args(want[0], args) and _equal_kwargs(want[1], kwargs)

    def _wanted(self, binding: Binding, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The expected call laid out as a call of `args` and `kwargs`' shape, `(args,
        kwargs)`, made once per shape; `_NO_MATCH` when no call of that shape can match."""
        key = len(args) if not kwargs else (len(args), *kwargs)
        layout = binding.layouts.get(key)
        if layout is None:
            expected = self.expected
            if (
                binding is self._own
                and len(expected.args) == len(args)
                and expected.kwargs.keys() == kwargs.keys()
            ):
                # Same shape: binding both to the signature would pair the same values.
                layout = (expected.args, expected.kwargs)
            else:
                layout = _lay_out(expected, binding, len(args), tuple(kwargs))
            binding.layouts[key] = layout
        return layout


def names_match(target: str, name: str, func: Any) -> bool:
    """A name target matches a task's name (`Mailer.send`), its last part (`send`), or its
    function's `__name__`."""
    if target == name or name.endswith(f".{target}"):
        return True
    return getattr(func, "__name__", None) == target


def _equal_args(want: tuple[Any, ...], got: tuple[Any, ...]) -> bool:
    """Element by element, identity first, expected on the left, as `equal()` compares each
    pair: a comparison that raises is one that `equal()` finds unequal, so not equal."""
    try:
        return bool(want == got)
    except Exception:
        return False


def _equal_kwargs(want: dict[str, Any], got: dict[str, Any]) -> bool:
    """As `_equal_args`, value by value."""
    if not want and not got:
        return True
    try:
        return bool(want == got)
    except Exception:
        return False


class _Slot:
    """Stands for one argument of a call shape while it is bound to the signature."""

    __slots__ = ("key",)

    def __init__(self, key: int | str) -> None:
        self.key = key


def _is_slot(value: object) -> bool:
    return isinstance(value, _Slot)


def _lay_out(
    expected: ExpectedTask, binding: Binding, positional: int, keywords: tuple[str, ...]
) -> Any:
    """The expected arguments laid out as a call with `positional` arguments and `keywords`:
    `(args, kwargs)` to compare as they are, or `_NO_MATCH` when no call of that shape can match
    (it does not bind, or a parameter it leaves to its default is expected otherwise)."""
    signature = binding.signature()
    if signature is None:
        return _NO_MATCH
    want = bind(signature, expected.args, expected.kwargs)
    got = bind(
        signature,
        tuple(_Slot(i) for i in range(positional)),
        {name: _Slot(name) for name in keywords},
    )
    if want is None or got is None:
        return _NO_MATCH
    laid_args: list[Any] = [None] * positional
    laid_kwargs: dict[str, Any] = {}
    for name, value in got.items():
        pairs = _slots_and_values(value, want[name])
        if pairs is None:
            return _NO_MATCH
        for slot, wanted in pairs:
            if isinstance(slot.key, int):
                laid_args[slot.key] = wanted
            else:
                laid_kwargs[slot.key] = wanted
    return tuple(laid_args), laid_kwargs


def _slots_and_values(value: Any, wanted: Any) -> list[tuple[_Slot, Any]] | None:
    """Pairs of (argument slot, expected value) for one parameter; None when they cannot
    match. A parameter that calls of this shape leave to its default must be expected so."""
    if isinstance(value, _Slot):
        return [(value, wanted)]
    if isinstance(value, tuple) and value and isinstance(value[0], _Slot):  # *args
        given = cast("tuple[_Slot, ...]", value)  # pragma: no mutate (for the type checkers)
        if not isinstance(wanted, tuple):
            return None
        values: tuple[Any, ...] = wanted  # pyright: ignore[reportUnknownVariableType]
        return list(zip(given, values, strict=True)) if len(values) == len(given) else None
    if isinstance(value, dict):
        named = cast("dict[str, _Slot]", value)  # pragma: no mutate (for the type checkers)
        if named and _is_slot(next(iter(named.values()))):  # **kwargs
            if not isinstance(wanted, dict):
                return None
            by_name = cast("dict[str, Any]", wanted)  # pragma: no mutate (as above)
            if by_name.keys() != named.keys():
                return None
            return [(slot, by_name[key]) for key, slot in named.items()]
    return [] if equal(wanted, value) else None


def same_function(expected: object, actual: object) -> bool:
    """An `actual` function that is not the `expected` object but equal to it (the same
    bound method made again); the caller has found them not identical."""
    try:
        return bool(expected == actual)
    except Exception:
        return False


def bind(
    signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any] | None:
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    return dict(bound.arguments)


def signature_of(func: Any) -> inspect.Signature | None:
    """`func`'s signature (looked up once per function), or None when it has none to tell."""
    return _signature(func)


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


def clear_caches() -> None:
    """Let go of the signatures looked up (and the functions they keep alive)."""
    _cached_signature.cache_clear()
