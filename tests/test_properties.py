"""Properties of matching and of records, checked by hypothesis on generated calls.

Each example schedules real tasks: a `BackgroundTaskCapture` used as a context manager and a
hand-built Starlette `BackgroundTasks`, as an app would build one outside a request. Settings are
modest and derandomized, so every run checks the same examples.
"""

from __future__ import annotations

import functools
import inspect
import keyword
import math
from collections.abc import Callable
from typing import Any
from unittest.mock import ANY

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.background import BackgroundTasks

from pytest_bgtasks import BackgroundTaskCapture, TaskStatus, task

CHECKS = settings(max_examples=60, derandomize=True, deadline=None, database=None)


# -- task functions with the shapes of signature that matching deals with ---------------------


def send_email(email: object, subject: object = "Welcome", footer: object = None) -> None:
    pass


def audit(event: object, /, level: object = 1, *, actor: object = "system") -> None:
    pass


def notify(*targets: object, **options: object) -> None:
    pass


def ping() -> None:
    pass


FUNCTIONS: list[Callable[..., None]] = [send_email, audit, notify, ping]

# Values an app passes: scalars (NaN often: it is not equal to itself), and containers.
scalars = st.one_of(
    st.just(math.nan),
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=4),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=3), inner, max_size=3),
    ),
    max_leaves=6,
)
names = st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True).filter(
    lambda name: not keyword.iskeyword(name)
)


def schedule(func: Callable[..., Any], *args: Any, **kwargs: Any) -> BackgroundTaskCapture:
    """A capture that recorded `func(*args, **kwargs)` scheduled on a hand-built batch."""
    with BackgroundTaskCapture() as capture:
        BackgroundTasks().add_task(func, *args, **kwargs)
    return capture


def matches(capture: BackgroundTaskCapture, func: Any, *args: Any, **kwargs: Any) -> bool:
    """Whether `assert_task_added(func, *args, **kwargs)` finds the capture's one record."""
    try:
        found = capture.assert_task_added(func, *args, **kwargs)
    except AssertionError:
        return False
    assert found is capture.tasks[0]
    return True


Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


def fits(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether `func(*args, **kwargs)` binds to func's signature."""
    try:
        inspect.signature(func).bind(*args, **kwargs)
    except TypeError:
        return False
    return True


def assert_does_not_fit(
    capture: BackgroundTaskCapture, func: Any, *args: Any, **kwargs: Any
) -> None:
    """An expected call that no call of `func` could be is a TypeError, not a silent miss."""
    with pytest.raises(TypeError, match=r"^assert_task_added\(\): .* does not fit "):
        capture.assert_task_added(func, *args, **kwargs)


@st.composite
def calls(draw: st.DrawFn) -> Call:
    """Any call of one of FUNCTIONS: with arguments that fit its signature, or not."""
    func = draw(st.sampled_from(FUNCTIONS))
    args = tuple(draw(st.lists(values, max_size=4)))
    kwargs = draw(st.dictionaries(names, values, max_size=3))
    return func, args, kwargs


# -- properties ------------------------------------------------------------------------------


@CHECKS
@given(calls())
def test_any_call_matches_itself(call: Call) -> None:
    func, args, kwargs = call
    capture = schedule(func, *args, **kwargs)
    (record,) = capture.tasks
    assert record.func is func
    assert (record.args, record.kwargs) == (args, kwargs)
    assert matches(capture, func)  # no arguments: any call of func
    if not fits(func, args, kwargs):
        if args or kwargs:  # with none, it is the expected call of any arguments
            assert_does_not_fit(capture, func, *args, **kwargs)
        return
    assert matches(capture, func, *args, **kwargs)
    assert matches(capture, task(func, *args, **kwargs))
    other = other_function(func)
    if fits(other, args, kwargs):
        assert not matches(capture, other, *args, **kwargs)
    elif args or kwargs:
        assert_does_not_fit(capture, other, *args, **kwargs)
    with pytest.raises(AssertionError, match=r"^Expected no background tasks matching "):
        capture.assert_task_not_added(func, *args, **kwargs)


def other_function(func: Callable[..., Any]) -> Callable[..., Any]:
    return FUNCTIONS[(FUNCTIONS.index(func) + 1) % len(FUNCTIONS)]


SEND_EMAIL = ("email", "subject", "footer")
SEND_EMAIL_DEFAULTS = ("Welcome", None)  # of subject and footer


def split_call(given_values: list[Any], positional: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """send_email's arguments: the first `positional` values by position, the others by the
    name of their parameter."""
    args = tuple(given_values[:positional])
    kwargs = dict(zip(SEND_EMAIL[positional:], given_values[positional:], strict=False))
    return args, kwargs


@CHECKS
@given(st.lists(values, min_size=1, max_size=3), st.data())
def test_a_call_matches_however_its_arguments_are_passed(
    given_values: list[Any], data: st.DataObject
) -> None:
    """`f(a)` matches `f(email=a)`: send_email's arguments, split at random between positional
    and keyword on each side, match. Spelling out a default matches leaving it out. Any one
    argument changed to a value it is not equal to makes a call that does not match."""
    split = st.integers(0, len(given_values))
    actual_args, actual_kwargs = split_call(given_values, data.draw(split, label="actual"))
    capture = schedule(send_email, *actual_args, **actual_kwargs)

    args, kwargs = split_call(given_values, data.draw(split, label="expected"))
    assert matches(capture, send_email, *args, **kwargs)

    full = given_values + list(SEND_EMAIL_DEFAULTS[len(given_values) - 1 :])
    full_args, full_kwargs = split_call(full, data.draw(st.integers(0, 3), label="with defaults"))
    assert matches(capture, send_email, *full_args, **full_kwargs)

    changed = list(given_values)
    changed[data.draw(st.integers(0, len(given_values) - 1), label="changed")] = Unequal()
    other_args, other_kwargs = split_call(changed, data.draw(split, label="other"))
    assert not matches(capture, send_email, *other_args, **other_kwargs)


class Unequal:
    """Equal to nothing, itself included."""

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return "Unequal()"


@CHECKS
@given(calls(), st.data())
def test_any_matches_anything_in_any_position(call: Call, data: st.DataObject) -> None:
    """`ANY` in place of any set of the positional and keyword arguments still matches. It
    stands for one argument: for a function taking `*targets`, where no default can fill a
    gap, it neither makes up for a missing argument nor absorbs an extra one."""
    func, args, kwargs = call
    capture = schedule(func, *args, **kwargs)
    if not fits(func, args, kwargs):  # ANY stands for a value: it makes no call fit
        if args or kwargs:
            assert_does_not_fit(capture, func, *[ANY] * len(args), **dict.fromkeys(kwargs, ANY))
        return
    positions = data.draw(st.sets(st.integers(0, len(args) - 1)) if args else st.just(set()))
    keys = data.draw(st.sets(st.sampled_from(sorted(kwargs))) if kwargs else st.just(set()))
    wild_args = tuple(ANY if n in positions else value for n, value in enumerate(args))
    wild_kwargs = {name: ANY if name in keys else value for name, value in kwargs.items()}
    assert matches(capture, func, *wild_args, **wild_kwargs)
    assert matches(capture, func, *[ANY] * len(args), **dict.fromkeys(kwargs, ANY))
    if func is notify:  # *targets: every call fits
        assert not matches(capture, notify, *wild_args, ANY, **wild_kwargs)
        if args and (len(args) > 1 or kwargs):  # with no arguments at all, any call matches
            assert not matches(capture, notify, *wild_args[:-1], **wild_kwargs)


# -- assert_tasks_in_order against a reference model -------------------------------------------

LOG_FUNCTIONS = [send_email, audit, notify]
Entry = tuple[Callable[..., Any], int]
Expected = tuple[Callable[..., Any], "int | None"]
"""An expected item: a function with one argument, or None for any arguments."""


def model_matches(item: Expected, entry: Entry) -> bool:
    func, arg = item
    return func is entry[0] and (arg is None or arg == entry[1])


def model_in_order(expected: list[Expected], log: list[Entry]) -> bool:
    """Whether `expected` is a subsequence of `log`: an exhaustive search, not a greedy one."""

    @functools.cache
    def fits(item: int, start: int) -> bool:
        if item == len(expected):
            return True
        return any(
            model_matches(expected[item], log[position]) and fits(item + 1, position + 1)
            for position in range(start, len(log))
        )

    return fits(0, 0)


def model_earliest(expected: list[Expected], log: list[Entry]) -> list[int]:
    """Where each expected item is found when each takes the earliest entry that fits."""
    found, start = [], 0
    for item in expected:
        position = next(p for p in range(start, len(log)) if model_matches(item, log[p]))
        found.append(position)
        start = position + 1
    return found


@CHECKS
@given(
    st.lists(st.tuples(st.sampled_from(LOG_FUNCTIONS), st.integers(0, 2)), max_size=8),
    st.lists(
        st.tuples(st.sampled_from(LOG_FUNCTIONS), st.none() | st.integers(0, 2)),
        min_size=1,
        max_size=4,
    ),
)
def test_tasks_in_order_agrees_with_a_subsequence_model(
    log: list[Entry], expected: list[Expected]
) -> None:
    """On a random log of calls, `assert_tasks_in_order` passes exactly when the expected items
    are a subsequence of the log, and then returns the earliest records that fit."""
    with BackgroundTaskCapture() as capture:
        batch = BackgroundTasks()
        for func, arg in log:
            batch.add_task(func, arg)
    wanted = [func if arg is None else task(func, arg) for func, arg in expected]

    if model_in_order(expected, log):
        matched = capture.assert_tasks_in_order(*wanted)
        assert [record.index for record in matched] == model_earliest(expected, log)
    else:
        with pytest.raises(AssertionError) as failure:
            capture.assert_tasks_in_order(*wanted)
        assert str(failure.value).startswith(
            "Background tasks were not added in the expected order.\n"
        )


# -- repr ------------------------------------------------------------------------------------

# Literals whose repr evaluates back to an equal value, small enough not to be shortened.
literals = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=6),
        st.binary(max_size=3),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=2),
        st.tuples(inner),
        st.dictionaries(st.text(max_size=2), inner, max_size=2),
    ),
    max_leaves=3,
)


def visible_shape(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


@CHECKS
@given(
    st.sampled_from([send_email, notify]),
    st.lists(literals, max_size=3),
    st.dictionaries(names, literals, max_size=2),
    st.integers(0, 3),
)
def test_a_records_repr_reads_as_the_call_it_makes(
    func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], bound: int
) -> None:
    """The visible shape of a call is the function's name, its positional arguments in order
    and its keyword arguments in order, as Starlette will make the call (a `functools.partial`
    shows as the function it wraps, its own arguments first). The repr up to ` [status]` is
    Python source for that shape: evaluated with the name bound to a function that returns
    what it is given, it gives back equal arguments, in the same order."""
    partial_args, call_args = args[:bound], args[bound:]
    scheduled: Callable[..., Any] = functools.partial(func, *partial_args) if bound else func
    (record,) = schedule(scheduled, *call_args, **kwargs).tasks

    text = repr(record)
    suffix = f" [{TaskStatus.PENDING}]"
    assert text.endswith(suffix)  # scheduled outside a request: no method and path follow
    source = text.removesuffix(suffix)
    assert source == record.call
    assert source.startswith(f"{func.__name__}(")
    shape = eval(source, {func.__name__: visible_shape})
    assert shape == (tuple(args), kwargs)
    assert list(shape[1]) == list(kwargs)
