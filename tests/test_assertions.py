"""The assertion helpers: matching rules and the messages a failing assertion prints."""

from __future__ import annotations

import functools
from typing import Any
from unittest.mock import ANY

import pytest
from dirty_equals import IsStr
from starlette.background import BackgroundTask
from starlette.testclient import TestClient

import apps
import manual
import pytest_bgtasks
from apps import async_job, boom, sync_job
from pytest_bgtasks import BackgroundTaskCapture, ExpectedTask, TaskStatus, task

SEE = "See https://pytest-bgtasks.github.io/pytest-bgtasks/assertions/#matching"

SIGNUP_SITE = apps.site("starlette")


def send_welcome_email(email: str, subject: str = "Welcome") -> None:
    pass


def audit(event: str) -> None:
    pass


def schedule(*calls: tuple[Any, ...]) -> None:
    """Create tasks outside any request: each `(func, *args)` becomes a PENDING record."""
    for func, *args in calls:
        BackgroundTask(func, *args)


def signup(*calls: tuple[Any, ...]) -> None:
    """`POST /work` on an app that adds `calls` and runs them."""
    app = apps.starlette_app(*((func, tuple(args)) for func, *args in calls))
    with TestClient(app) as client:
        client.post("/work")


# -- matching --------------------------------------------------------------------------------


def test_no_arguments_match_any_call(bgtasks: BackgroundTaskCapture) -> None:
    schedule((send_welcome_email, "a@b.com", "Hi"))
    assert bgtasks.assert_task_added(send_welcome_email) is bgtasks.tasks[0]
    bgtasks.assert_task_added(task(send_welcome_email))


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("a@b.com",), {}),
        ((), {"email": "a@b.com"}),
        (("a@b.com", "Welcome"), {}),
        ((), {"email": "a@b.com", "subject": "Welcome"}),
    ],
    ids=["positional", "keyword", "default-given", "all-keywords"],
)
def test_arguments_match_after_binding_to_the_signature(
    bgtasks: BackgroundTaskCapture, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    schedule((send_welcome_email, "a@b.com"))
    bgtasks.assert_task_added(send_welcome_email, *args, **kwargs)
    pytest_bgtasks.assert_task_added(send_welcome_email, *args, **kwargs)


def spread(first: int, *rest: int, flag: bool = False) -> None:
    pass


def options(first: int, **extra: int) -> None:
    pass


def test_star_args_and_star_kwargs_bind_across_call_shapes(
    bgtasks: BackgroundTaskCapture,
) -> None:
    BackgroundTask(spread, 1, 2, 3, flag=False)
    BackgroundTask(options, 1, x=2)
    bgtasks.assert_task_added(spread, 1, 2, 3)  # `flag` left at its default
    bgtasks.assert_task_not_added(spread, 1, 2)
    bgtasks.assert_task_not_added(spread, 1, 2, 4)
    bgtasks.assert_task_added(options, first=1, x=2)
    bgtasks.assert_task_not_added(options, first=1, x=3)
    bgtasks.assert_task_not_added(options, first=1, y=2)
    bgtasks.assert_task_not_added(options, first=1)


class Retrying:
    """A decorator written as a class, as retry libraries write them: the instance takes the
    function's `__name__`, while its own name is `Retrying.__call__`."""

    def __init__(self, func: Any) -> None:
        functools.update_wrapper(self, func)
        self.func = func

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)


def test_a_name_matches_the_task_name_its_last_part_or_the_function_name(
    bgtasks: BackgroundTaskCapture,
) -> None:
    schedule(
        (apps.Notifier(), "x"), (apps.Mailer("m").send, "a@b.com"), (Retrying(audit), "signup")
    )
    notifier, mailer, retrying = bgtasks.tasks
    assert [notifier.name, mailer.name, retrying.name] == [
        "Notifier.__call__",
        "Mailer.send",
        "Retrying.__call__",
    ]
    assert bgtasks.assert_task_added("Notifier.__call__") is notifier
    # A method named by its class binds its arguments without `self`.
    assert bgtasks.assert_task_added(task("Mailer.send", "a@b.com")) is mailer
    assert bgtasks.assert_task_added("send", to="a@b.com") is mailer
    bgtasks.assert_task_not_added(task("Mailer.send", "x@y.z"))
    # Only the function's name says `audit`; the callable met first has no `__name__`.
    assert bgtasks.assert_task_added("audit", "signup") is retrying
    assert bgtasks.assert_task_count(0, "Retrying") == []


def test_a_name_binds_each_function_it_matches_to_that_function_s_signature(
    bgtasks: BackgroundTaskCapture,
) -> None:
    class Courier:
        def send(self, address: str) -> None:
            pass

    schedule((apps.Mailer("m").send, "a@b.com"), (Courier().send, "a@b.com"))
    mailer, courier = bgtasks.tasks
    assert bgtasks.assert_task_count(1, task("send", to="a@b.com")) == [mailer]
    assert bgtasks.assert_task_count(1, task("send", address="a@b.com")) == [courier]


def test_the_free_functions_pass_on_every_argument(bgtasks: BackgroundTaskCapture) -> None:
    bgtasks.fail(audit)
    signup((send_welcome_email, "a@b.com"))
    signup((audit, "signup"))
    helpers = [
        (pytest_bgtasks.assert_task_added, send_welcome_email, "email", "a@b.com"),
        (pytest_bgtasks.assert_task_ran, send_welcome_email, "email", "a@b.com"),
        (pytest_bgtasks.assert_task_failed, audit, "event", "signup"),
    ]
    for helper, func, name, value in helpers:
        helper(func, value)
        helper(func, **{name: value})
        with pytest.raises(AssertionError):
            helper(func, "other")
        with pytest.raises(AssertionError):
            helper(func, **{name: "other"})
    pytest_bgtasks.assert_task_not_added(send_welcome_email, "other")
    pytest_bgtasks.assert_task_not_added(send_welcome_email, email="other")
    with pytest.raises(AssertionError):
        pytest_bgtasks.assert_task_not_added(send_welcome_email, email="a@b.com")


def test_the_same_object_matches_itself_by_position_or_keyword(
    bgtasks: BackgroundTaskCapture,
) -> None:
    # NaN is not equal to itself; as in a tuple or a dict, the same object still matches.
    nan = float("nan")
    schedule((send_welcome_email, nan))
    bgtasks.assert_task_added(send_welcome_email, nan)
    bgtasks.assert_task_added(send_welcome_email, email=nan)
    bgtasks.assert_task_added(send_welcome_email, nan, subject="Welcome")
    bgtasks.assert_task_not_added(send_welcome_email, float("nan"))


def test_every_argument_must_match(bgtasks: BackgroundTaskCapture) -> None:
    schedule((send_welcome_email, "a@b.com", "Hi"))
    bgtasks.assert_task_not_added(send_welcome_email, "a@b.com")  # subject differs from default
    bgtasks.assert_task_not_added(send_welcome_email, "b@b.com", "Hi")
    bgtasks.assert_task_added(send_welcome_email, "a@b.com", subject="Hi")


def test_any_and_dirty_equals_matchers(bgtasks: BackgroundTaskCapture) -> None:
    schedule((send_welcome_email, "a@b.com", "Hi"))
    bgtasks.assert_task_added(send_welcome_email, ANY, subject="Hi")
    bgtasks.assert_task_added(send_welcome_email, IsStr(regex=r".+@b\.com"), ANY)
    bgtasks.assert_task_not_added(send_welcome_email, IsStr(regex=r".+@c\.com"), ANY)


def test_calls_that_do_not_bind_compare_as_given(bgtasks: BackgroundTaskCapture) -> None:
    schedule((len, "abc"))  # a builtin: its signature is known, but try one that is not
    schedule((dict, ["not", "bindable"]))
    bgtasks.assert_task_added(len, "abc")
    bgtasks.assert_task_added(dict, ["not", "bindable"])
    bgtasks.assert_task_not_added(dict, ["other"])


def test_a_partial_expected_call_adds_its_own_arguments_first(
    bgtasks: BackgroundTaskCapture,
) -> None:
    schedule((send_welcome_email, "a@b.com", "Hi"))
    bgtasks.assert_task_added(functools.partial(send_welcome_email, "a@b.com"), "Hi")
    bgtasks.assert_task_added(task(functools.partial(send_welcome_email, subject="Hi"), "a@b.com"))
    # As a target (of a count, an order, a rule), a partial is the call it makes.
    bgtasks.assert_task_count(1, functools.partial(send_welcome_email, "a@b.com", subject="Hi"))
    bgtasks.assert_task_count(0, functools.partial(send_welcome_email, "a@b.com"))


def test_task_reprs_and_equality() -> None:
    expected = task(send_welcome_email, "a@b.com", subject="Hi")
    assert repr(expected) == "task(send_welcome_email, 'a@b.com', subject='Hi')"
    assert expected.call == "send_welcome_email('a@b.com', subject='Hi')"
    assert task(audit).call == "audit(...)"
    assert expected == task(send_welcome_email, "a@b.com", subject="Hi")
    assert expected != task(send_welcome_email, "a@b.com")
    assert expected != (send_welcome_email, "a@b.com")
    with pytest.raises(TypeError) as error:
        task(42)  # type: ignore[arg-type]  # the misuse under test
    assert str(error.value) == "task() expects the task function or its name first, got 42 (int)."
    manual.assert_listed(str(error.value))
    assert repr(task("send_welcome_email", "a@b.com")) == "task('send_welcome_email', 'a@b.com')"
    long_name = "send_" * 50  # a name is shown whole, unlike a long argument
    assert repr(task(long_name)) == f"task({long_name!r})"


NOT_A_TASK = "expects a task function, its name, or task(func, *args, **kwargs), got 42 (int)."


@pytest.mark.parametrize("on", ["capture", "module"], ids=["method", "free-function"])
@pytest.mark.parametrize(
    ("helper", "arguments", "message"),
    [
        ("assert_task_added", (42,), f"assert_task_added() {NOT_A_TASK}"),
        ("assert_task_not_added", (42,), f"assert_task_not_added() {NOT_A_TASK}"),
        ("assert_task_ran", (42,), f"assert_task_ran() {NOT_A_TASK}"),
        ("assert_task_failed", (42,), f"assert_task_failed() {NOT_A_TASK}"),
        ("assert_task_count", (1, 42), f"assert_task_count() {NOT_A_TASK}"),
        ("assert_tasks_in_order", (audit, 42), f"assert_tasks_in_order() {NOT_A_TASK}"),
        (
            "assert_task_added",
            (send_welcome_email("a@b.com"),),  # the call's result, not the function
            "assert_task_added() expects a task function, its name, or task(func, *args, **kwargs), got None (NoneType).",
        ),
        (
            "assert_task_ran",
            (task(audit), "x"),
            "assert_task_ran() takes either task(...) or a function and its arguments.",
        ),
        ("assert_task_count", (-1.5,), "assert_task_count() expects a count >= 0, got -1.5."),
        ("assert_task_count", ("1",), "assert_task_count() expects a count >= 0, got '1'."),
        ("assert_tasks_in_order", (), "assert_tasks_in_order() expects at least one task."),
        (
            "assert_tasks_in_order",
            (audit, ExpectedTask(send_welcome_email, (), {"subject": "Hi"})),  # not by task()
            "assert_tasks_in_order(): send_welcome_email(subject='Hi') does not fit "
            "send_welcome_email(email, subject='Welcome'): missing a required argument: "
            "'email'. To match any value of an argument, pass unittest.mock.ANY for it.",
        ),
    ],
    ids=[
        "added",
        "not-added",
        "ran",
        "failed",
        "count",
        "in-order",
        "a-call-result",
        "task-and-arguments",
        "fractional-count",
        "count-as-text",
        "in-order-empty",
        "in-order-cannot-fit",
    ],
)
def test_helpers_reject_what_is_not_a_task(
    bgtasks: BackgroundTaskCapture,
    on: str,
    helper: str,
    arguments: tuple[Any, ...],
    message: str,
) -> None:
    with pytest.raises(TypeError) as error:
        getattr(bgtasks if on == "capture" else pytest_bgtasks, helper)(*arguments)
    assert str(error.value) == message
    manual.assert_listed(message)


# -- messages --------------------------------------------------------------------------------


def test_task_added_message_lists_everything_and_the_closest(
    bgtasks: BackgroundTaskCapture,
) -> None:
    signup((send_welcome_email, "b@b.com"), (audit, "signup"))

    with pytest.raises(AssertionError) as failure:
        pytest_bgtasks.assert_task_added(send_welcome_email, "a@b.com")

    assert str(failure.value) == (
        "No background task matching send_welcome_email('a@b.com') was added.\n"
        "2 background tasks were added:\n"
        f"- send_welcome_email('b@b.com') [ran] POST /work  ({SIGNUP_SITE})\n"
        f"- audit('signup') [ran] POST /work  ({SIGNUP_SITE})\n"
        "Closest: send_welcome_email: arg 'email' expected 'a@b.com', got 'b@b.com'"
        f"\n{SEE}"
    )


def test_message_when_nothing_was_added(bgtasks: BackgroundTaskCapture) -> None:
    with pytest.raises(AssertionError) as failure:
        bgtasks.assert_task_added(audit)
    assert str(failure.value) == (
        f"No background task matching audit(...) was added.\nNo background tasks were added.\n{SEE}"
    )


def test_closest_names_every_differing_argument(bgtasks: BackgroundTaskCapture) -> None:
    schedule((send_welcome_email, "b@b.com", "Hi"), (send_welcome_email, "a@b.com", "Hi"))
    with pytest.raises(
        AssertionError,
        match=r"\nClosest: send_welcome_email: arg 'subject' expected 'Yo', got 'Hi'\nSee https://pytest-bgtasks\.github\.io/pytest-bgtasks/assertions/#matching$",
    ):
        bgtasks.assert_task_added(send_welcome_email, "a@b.com", "Yo")
    with pytest.raises(
        AssertionError,
        match=r"arg 'email' expected 'c', got 'b@b.com'; arg 'subject' expected 'Yo', got 'Hi'\nSee https://pytest-bgtasks\.github\.io/pytest-bgtasks/assertions/#matching$",
    ):
        bgtasks.assert_task_added(send_welcome_email, "c", "Yo")


def test_a_count_below_zero_is_a_value_error(bgtasks: BackgroundTaskCapture) -> None:
    with pytest.raises(ValueError, match="count") as error:
        bgtasks.assert_task_count(-1)
    assert str(error.value) == "assert_task_count() expects a count >= 0, got -1."
    manual.assert_listed(str(error.value))


def test_an_expected_call_that_cannot_fit_is_a_type_error(bgtasks: BackgroundTaskCapture) -> None:
    schedule((send_welcome_email, "a@b.com"))
    with pytest.raises(TypeError) as error:
        bgtasks.assert_task_added(send_welcome_email, "a@b.com", to="x")
    assert str(error.value) == (
        "assert_task_added(): send_welcome_email('a@b.com', to='x') does not fit "
        "send_welcome_email(email, subject='Welcome'): no parameter named 'to'."
    )


def test_an_expected_task_made_by_hand_that_cannot_fit_is_a_type_error_too(
    bgtasks: BackgroundTaskCapture,
) -> None:
    schedule((send_welcome_email, "a@b.com"))
    by_hand = ExpectedTask(send_welcome_email, ("a@b.com",), {"to": "x"})  # not task(): unchecked
    for assertion in (bgtasks.assert_task_added, bgtasks.assert_task_not_added):
        with pytest.raises(TypeError) as error:
            assertion(by_hand)
        assert str(error.value) == (
            f"{assertion.__name__}(): send_welcome_email('a@b.com', to='x') does not fit "
            "send_welcome_email(email, subject='Welcome'): no parameter named 'to'."
        )


def test_closest_without_a_signature_compares_positions_and_keywords(
    bgtasks: BackgroundTaskCapture,
) -> None:
    schedule((dict, ["a"]))
    with pytest.raises(
        AssertionError,
        match=r"Closest: dict: arg 0 expected \['b'\], got \['a'\]\nSee https://pytest-bgtasks\.github\.io/pytest-bgtasks/assertions/#matching$",
    ):
        bgtasks.assert_task_added(dict, ["b"])
    with pytest.raises(
        AssertionError,
        match=r"Closest: dict: positional args expected \(\), got \(\['a'\],\); kwarg 'x' expected 1, not given\nSee https://pytest-bgtasks\.github\.io/pytest-bgtasks/assertions/#matching$",
    ):
        bgtasks.assert_task_added(dict, x=1)


def test_a_task_added_with_arguments_that_do_not_fit_is_compared_as_given(
    bgtasks: BackgroundTaskCapture,
) -> None:
    schedule((send_welcome_email, "a@b.com", "Hi", "extra"))  # fails once it runs
    bgtasks.assert_task_added(send_welcome_email)
    with pytest.raises(AssertionError) as failure:
        bgtasks.assert_task_added(send_welcome_email, "a@b.com", "Hi")
    assert str(failure.value).endswith(
        "\nClosest: send_welcome_email: positional args expected ('a@b.com', 'Hi'), "
        f"got ('a@b.com', 'Hi', 'extra')\n{SEE}"
    )


def test_closest_points_at_a_same_named_but_different_function(
    bgtasks: BackgroundTaskCapture,
) -> None:
    def audit(event: str) -> None:  # shadows the module's audit
        pass

    schedule((audit, "x"))
    with pytest.raises(AssertionError) as failure:
        bgtasks.assert_task_added(globals()["audit"], "x")
    assert str(failure.value).endswith(
        "Closest: audit('x') (#0) calls a different function object with the same name "
        f"'audit': is it imported from another module, or wrapped?\n{SEE}"
    )


def test_not_added_message_lists_the_matches(bgtasks: BackgroundTaskCapture) -> None:
    signup((audit, "signup"), (audit, "login"))
    with pytest.raises(AssertionError) as failure:
        pytest_bgtasks.assert_task_not_added(audit)
    assert str(failure.value) == (
        "Expected no background tasks matching audit(...), but 2 were added:\n"
        f"- audit('signup') [ran] POST /work  ({SIGNUP_SITE})\n"
        f"- audit('login') [ran] POST /work  ({SIGNUP_SITE})"
        f"\n{SEE}"
    )


def test_task_ran_and_failed(bgtasks: BackgroundTaskCapture) -> None:
    with pytest.raises(ZeroDivisionError):
        signup((audit, "x"), (boom, "now"), (sync_job, "later"))

    assert pytest_bgtasks.assert_task_ran(audit).status is TaskStatus.RAN
    record = pytest_bgtasks.assert_task_failed(boom, "now")
    assert isinstance(record.exception, ZeroDivisionError)

    with pytest.raises(AssertionError) as failure:
        bgtasks.assert_task_ran(sync_job, "later")
    assert str(failure.value) == (
        "No background task matching sync_job('later') ran.\n"
        "3 background tasks were added:\n"
        f"- audit('x') [ran] POST /work  ({SIGNUP_SITE})\n"
        f"- boom('now') [failed] POST /work  ({SIGNUP_SITE})\n"
        "    raised: ZeroDivisionError('boom now')\n"
        f"- sync_job('later') [not run] POST /work  ({SIGNUP_SITE})\n"
        "    not run: an earlier task of its response failed, boom('now') raised "
        "ZeroDivisionError('boom now')\n"
        "The matching task #2 was not run: an earlier task of its response failed, "
        "boom('now') raised ZeroDivisionError('boom now')."
        f"\n{SEE}"
    )
    with pytest.raises(AssertionError, match=r"The matching task #0 ran without raising\.\nSee "):
        bgtasks.assert_task_failed(audit)
    with pytest.raises(
        AssertionError,
        match=r"The matching task #1 failed: it raised ZeroDivisionError\('boom now'\)\.\nSee ",
    ):
        bgtasks.assert_task_ran(boom)


def test_task_failed_message_when_no_call_matches(bgtasks: BackgroundTaskCapture) -> None:
    signup((send_welcome_email, "a@b.com"))
    with pytest.raises(AssertionError) as failure:
        bgtasks.assert_task_failed(send_welcome_email, "x@y.z")
    assert str(failure.value) == (
        "No background task matching send_welcome_email('x@y.z') failed.\n"
        "1 background task was added:\n"
        f"- send_welcome_email('a@b.com') [ran] POST /work  ({SIGNUP_SITE})\n"
        "Closest: send_welcome_email: arg 'email' expected 'x@y.z', got 'a@b.com'"
        f"\n{SEE}"
    )


@pytest.mark.bgtasks(mode="defer")
def test_a_deferred_match_says_how_to_run_it(bgtasks: BackgroundTaskCapture) -> None:
    signup((audit, "x"))
    with pytest.raises(
        AssertionError,
        match=r"The matching task #0 is deferred: run it with bgtasks.run_deferred\(\) \(await bgtasks.arun_deferred\(\) in async tests\)\.\nSee ",
    ):
        bgtasks.assert_task_ran(audit)
    bgtasks.run_deferred()
    bgtasks.assert_task_ran(audit)


@pytest.mark.bgtasks(mode="skip")
def test_a_skipped_or_pending_match_says_so(bgtasks: BackgroundTaskCapture) -> None:
    signup((audit, "x"))
    schedule((sync_job, "pending"))
    with pytest.raises(
        AssertionError,
        match=r"#0 was skipped \(mode \"skip\" or bgtasks.skip\(\)\)\.\nSee ",
    ):
        bgtasks.assert_task_ran(audit)
    with pytest.raises(
        AssertionError, match=r"is still pending: its response has not finished\.\nSee "
    ):
        bgtasks.assert_task_failed(sync_job)


def test_task_count(bgtasks: BackgroundTaskCapture) -> None:
    schedule((audit, "a"), (audit, "b"), (sync_job, "c"))
    assert len(pytest_bgtasks.assert_task_count(3)) == 3
    assert [r.args for r in bgtasks.assert_task_count(2, audit)] == [("a",), ("b",)]
    bgtasks.assert_task_count(1, task(audit, "b"))
    bgtasks.assert_task_count(0, async_job)

    with pytest.raises(AssertionError) as failure:
        bgtasks.assert_task_count(1, audit)
    assert str(failure.value) == (
        "Expected 1 background task matching audit(...), but 2 were added:\n"
        f"- audit('a') [pending]  ({_here('a')})\n"
        f"- audit('b') [pending]  ({_here('a')})"
        f"\n{SEE}"
    )
    with pytest.raises(AssertionError) as failure:
        bgtasks.assert_task_count(2, sync_job)
    assert str(failure.value) == (
        "Expected 2 background tasks matching sync_job(...), but 1 was added:\n"
        f"- sync_job('c') [pending]  ({_here('a')})"
        f"\n{SEE}"
    )
    with pytest.raises(AssertionError) as failure:
        bgtasks.assert_task_count(2, async_job)
    assert str(failure.value) == (
        f"Expected 2 background tasks matching async_job(...), but 0 were added.\n{SEE}"
    )
    with pytest.raises(AssertionError) as failure:
        pytest_bgtasks.assert_task_count(4)
    assert str(failure.value).startswith("Expected 4 background tasks, but 3 were added:\n")


def _here(_: str) -> str:
    """The call site `schedule()` reports: its BackgroundTask line in this file."""
    import os

    with open(__file__) as source:
        for number, line in enumerate(source, start=1):
            if line.strip() == "BackgroundTask(func, *args)":
                return f"{os.path.relpath(__file__)}:{number}"
    raise LookupError


def test_no_tasks(bgtasks: BackgroundTaskCapture) -> None:
    pytest_bgtasks.assert_no_tasks()
    schedule((audit, "a"))
    with pytest.raises(AssertionError) as failure:
        bgtasks.assert_no_tasks()
    assert str(failure.value) == (
        f"Expected no background tasks, but 1 was added:\n- audit('a') [pending]  ({_here('a')})"
        f"\n{SEE}"
    )


def test_tasks_in_order(bgtasks: BackgroundTaskCapture) -> None:
    schedule((audit, "a"), (sync_job, "b"), (audit, "c"), (async_job, "d"))

    matched = pytest_bgtasks.assert_tasks_in_order(audit, task(audit, "c"), async_job)
    assert [record.index for record in matched] == [0, 2, 3]
    bgtasks.assert_tasks_in_order(sync_job, async_job)

    with pytest.raises(AssertionError) as failure:
        bgtasks.assert_tasks_in_order(task(audit, "c"), sync_job)
    site = _here("")
    assert str(failure.value) == (
        "Background tasks were not added in the expected order.\n"
        "Expected, in this order: audit('c'), sync_job(...)\n"
        "Found audit('c') at #2, then no sync_job(...) after it.\n"
        "sync_job('b') was added at #1, before that.\n"
        "4 background tasks were added:\n"
        f"- audit('a') [pending]  ({site})\n"
        f"- sync_job('b') [pending]  ({site})\n"
        f"- audit('c') [pending]  ({site})\n"
        f"- async_job('d') [pending]  ({site})"
        f"\n{SEE}"
    )
    with pytest.raises(AssertionError, match=r"\nNo boom\(\.\.\.\) was added\.\n"):
        bgtasks.assert_tasks_in_order(boom, audit)


def test_tasks_in_order_looks_after_the_last_match_only(bgtasks: BackgroundTaskCapture) -> None:
    schedule((audit, "a"), (sync_job, "b"), (boom,), (async_job, "d"), (send_welcome_email, "e"))
    with pytest.raises(AssertionError) as failure:
        bgtasks.assert_tasks_in_order(audit, async_job, send_welcome_email, boom)
    assert str(failure.value).splitlines()[2:4] == [
        "Found send_welcome_email('e') at #4, then no boom(...) after it.",
        "boom() was added at #2, before that.",
    ]


def test_messages_list_at_most_fifty_tasks(bgtasks: BackgroundTaskCapture) -> None:
    for number in range(60):
        BackgroundTask(audit, str(number))
    with pytest.raises(AssertionError) as failure:
        bgtasks.assert_task_added(sync_job)
    lines = str(failure.value).splitlines()
    assert lines[1] == "60 background tasks were added:"
    assert lines[2].startswith("- audit('0') [pending]")
    assert lines[51].startswith("- audit('49') [pending]")
    assert lines[52] == "... and 10 more"
    assert lines[53] == SEE
    assert len(lines) == 54

    with bgtasks.capture() as block:
        for number in range(50):
            BackgroundTask(audit, str(number))
    with pytest.raises(AssertionError) as failure:
        block.assert_task_added(sync_job)
    lines = str(failure.value).splitlines()
    assert lines[1] == "50 background tasks were added:"
    assert lines[-2].startswith("- audit('49') [pending]")


def test_closest_looks_at_the_last_thousand_tasks(bgtasks: BackgroundTaskCapture) -> None:
    # It keeps a failing assertion fast however many tasks a test schedules.
    BackgroundTask(send_welcome_email, "a@b.com", "Hi")  # closer, but 1001st from the end
    for _ in range(1000):
        BackgroundTask(send_welcome_email, "x@y.z", "Hi")
    with pytest.raises(AssertionError) as failure:
        bgtasks.assert_task_added(send_welcome_email, "a@b.com", "Yo")
    assert str(failure.value).splitlines()[-2] == (
        "Closest: send_welcome_email: arg 'email' expected 'a@b.com', got 'x@y.z'; "
        "arg 'subject' expected 'Yo', got 'Hi'"
    )


def test_long_arguments_are_shortened(bgtasks: BackgroundTaskCapture) -> None:
    schedule((audit, "x" * 500))
    (record,) = bgtasks.tasks
    assert record.call == "audit('" + "x" * 196 + "...)"
    assert len(record.call) == len("audit()") + 200
    schedule((audit, "x" * 198))  # a repr of 200 characters is shown whole
    assert bgtasks.tasks[1].call == "audit('" + "x" * 198 + "')"


def test_a_failing_repr_does_not_break_messages(bgtasks: BackgroundTaskCapture) -> None:
    class Odd:
        def __repr__(self) -> str:
            raise ValueError("no repr")

    schedule((audit, Odd()))
    assert bgtasks.tasks[0].call == "audit(<Odd object; repr() raised ValueError>)"


def test_matching_survives_a_failing_eq(bgtasks: BackgroundTaskCapture) -> None:
    class Touchy:
        def __eq__(self, other: object) -> bool:
            raise RuntimeError("do not compare me")

        __hash__ = object.__hash__

    touchy = Touchy()
    BackgroundTask(audit, touchy)
    BackgroundTask(audit, event=Touchy())
    BackgroundTask(audit, "x")
    # An __eq__ that raises means not equal, and the scan goes on to the next task.
    bgtasks.assert_task_not_added(audit, Touchy())
    bgtasks.assert_task_not_added(task("audit", event=Touchy()))
    assert bgtasks.assert_task_added(audit, "x") is bgtasks.tasks[2]
    assert bgtasks.assert_task_count(1, task("audit", "x")) == [bgtasks.tasks[2]]
    assert bgtasks.assert_task_added(task("audit", touchy)) is bgtasks.tasks[0]  # itself


def test_a_failing_eq_against_a_parameter_left_to_its_default_is_not_equal(
    bgtasks: BackgroundTaskCapture,
) -> None:
    class Touchy:
        def __eq__(self, other: object) -> bool:
            raise RuntimeError("do not compare me")

        __hash__ = object.__hash__

    BackgroundTask(send_welcome_email, "a@b.c")  # subject left to its default, "Welcome"
    bgtasks.assert_task_not_added(send_welcome_email, "a@b.c", subject=Touchy())
    bgtasks.assert_task_added(send_welcome_email, "a@b.c", subject="Welcome")


def test_each_shape_of_call_is_compared_against_its_own_layout(
    bgtasks: BackgroundTaskCapture,
) -> None:
    # The expected call is laid out once for each shape of call met (how many positional
    # arguments, which keywords): a call with keywords never meets the layout of one without.
    BackgroundTask(sync_job, "a")
    BackgroundTask(sync_job, "a", flag=True)
    BackgroundTask(sync_job, "b", flag=True)
    BackgroundTask(sync_job, "b")
    with_flag, plain_b = bgtasks.tasks[1], bgtasks.tasks[3]
    assert bgtasks.assert_task_added(sync_job, "a", flag=True) is with_flag
    assert bgtasks.assert_task_added(sync_job, "b") is plain_b
    # The same through a name, which binds each call to the function it names.
    assert bgtasks.assert_task_count(1, task("sync_job", "a", flag=True)) == [with_flag]
    assert bgtasks.assert_task_count(1, task("sync_job", "b")) == [plain_b]


def test_raw_comparison_names_keyword_differences(bgtasks: BackgroundTaskCapture) -> None:
    BackgroundTask(dict, ["a"], x=1, y=2)  # dict has no signature to bind to
    with pytest.raises(AssertionError) as failure:
        bgtasks.assert_task_added(dict, ["a"], x=2, y=2)
    assert str(failure.value).endswith(f"\nClosest: dict: kwarg 'x' expected 2, got 1\n{SEE}")
    with pytest.raises(
        AssertionError,
        match=r"Closest: dict: unexpected kwarg 'y'=2\nSee https://pytest-bgtasks\.github\.io/pytest-bgtasks/assertions/#matching$",
    ):
        bgtasks.assert_task_added(dict, ["a"], x=1)


def test_unhashable_and_touchy_callables_still_match(bgtasks: BackgroundTaskCapture) -> None:
    class Unhashable:  # an __eq__ without a __hash__: Python makes it unhashable
        def __eq__(self, other: object) -> bool:
            return self is other

        def __call__(self, to: str) -> None:
            pass

    class TouchyCallable:
        def __eq__(self, other: object) -> bool:
            raise RuntimeError("do not compare me")

        __hash__ = object.__hash__

        def __call__(self) -> None:
            pass

    unhashable, touchy = Unhashable(), TouchyCallable()
    schedule((unhashable, "a"), (touchy,))
    bgtasks.assert_task_added(unhashable, to="a")
    bgtasks.assert_task_added(touchy)
    bgtasks.assert_task_not_added(TouchyCallable())


def test_every_keyword_the_function_does_not_take_is_named(bgtasks: BackgroundTaskCapture) -> None:
    with pytest.raises(TypeError) as error:
        bgtasks.assert_task_added(send_welcome_email, "a@b.com", to="x", cc="y")
    assert str(error.value) == (
        "assert_task_added(): send_welcome_email('a@b.com', to='x', cc='y') does not fit "
        "send_welcome_email(email, subject='Welcome'): no parameter named 'to', 'cc'."
    )


def test_a_function_defined_in_a_function_is_not_taken_for_a_method(
    bgtasks: BackgroundTaskCapture,
) -> None:
    def notify(user: str, text: str) -> None:
        pass

    # Its qualified name has a dot ("...<locals>.notify"), but it takes no `self` to leave out.
    with pytest.raises(TypeError) as error:
        bgtasks.assert_task_added(notify, "hello")
    assert str(error.value) == (
        "assert_task_added(): notify('hello') does not fit notify(user, text): missing a "
        "required argument: 'text'. To match any value of an argument, pass unittest.mock.ANY "
        "for it."
    )


def test_a_call_that_passes_no_extra_keywords_matches_a_function_that_takes_any(
    bgtasks: BackgroundTaskCapture,
) -> None:
    def track(event: str, **properties: Any) -> None:
        pass

    schedule((track, "signup"))
    # Expected by keyword, called positionally: the call is laid out anew, with no properties.
    assert bgtasks.assert_task_added(track, event="signup") is bgtasks.tasks[0]
    bgtasks.assert_task_not_added(track, event="signup", plan="pro")
