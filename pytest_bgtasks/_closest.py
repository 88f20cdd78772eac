"""The record most like an expected call that matched none: what a failing assertion shows
under the tasks it lists ("Closest: ...")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._lifecycle import TaskRecord
from ._matching import Binding, ExpectedTask, Matcher, bind, binding_of, equal
from ._naming import arg_repr, call_shape, target_name


def closest(expected: ExpectedTask, records: Sequence[TaskRecord]) -> str:
    """The record most like the expected call, argument by argument; or one of the same name
    that is a different function object."""
    matcher = Matcher(expected)
    same: list[tuple[int, TaskRecord, list[str]]] = []
    for record in records[-1000:]:
        func, args, kwargs = call_shape(record.func, record.args, record.kwargs)
        binding = matcher.binding(func, record)
        if binding is not None:
            found = mismatches(expected, binding, args, kwargs)
            same.append((len(found), record, found))
    if same:
        _, record, found = min(same, key=lambda item: item[0])
        return f"Closest: {record.name}: {'; '.join(found)}"
    name = target_name(expected.func)
    for record in records:
        if record.name == name:
            if binding_of(record.func)[0] is binding_of(expected.func)[0]:
                return (
                    f"Closest: {record.call} (#{record.index}) is the method of another object: "
                    f"pass {name} itself to match it on any object."
                )
            return (
                f"Closest: {record.call} (#{record.index}) calls a different function object "
                f"with the same name {name!r}: is it imported from another module, or wrapped?"
            )
    return ""


def mismatches(
    expected: ExpectedTask, binding: Binding, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[str]:
    """What differs between the expected call (with arguments) and an actual call of the same
    function: one entry per argument, by name when both calls fit the signature."""
    signature = binding.signature()
    want = bind(signature, expected.args, expected.kwargs) if signature is not None else None
    got = bind(signature, args, kwargs) if signature is not None else None
    if want is None or got is None:
        return _raw_mismatches(expected, args, kwargs)
    # Both calls are bound to the same signature with defaults applied: the same names.
    return [
        f"arg {name!r} expected {arg_repr(value)}, got {arg_repr(got[name])}"
        for name, value in want.items()
        if not equal(value, got[name])
    ]


def _raw_mismatches(
    expected: ExpectedTask, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[str]:
    found: list[str] = []
    if len(expected.args) != len(args):
        found.append(f"positional args expected {arg_repr(expected.args)}, got {arg_repr(args)}")
    else:
        for position, (want, got) in enumerate(zip(expected.args, args, strict=True)):
            if not equal(want, got):
                found.append(f"arg {position} expected {arg_repr(want)}, got {arg_repr(got)}")
    for name, want in expected.kwargs.items():
        if name not in kwargs:
            found.append(f"kwarg {name!r} expected {arg_repr(want)}, not given")
        elif not equal(want, kwargs[name]):
            found.append(f"kwarg {name!r} expected {arg_repr(want)}, got {arg_repr(kwargs[name])}")
    found += [
        f"unexpected kwarg {name!r}={arg_repr(value)}"
        for name, value in kwargs.items()
        if name not in expected.kwargs
    ]
    return found
