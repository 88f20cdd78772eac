"""Every message a user reads: assertion failures, teardown failures, the report section."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from typing import NamedTuple

from ._lifecycle import Request, TaskRecord, TaskStatus, display_path
from ._matching import ExpectedTask

DOCS = "https://pytest-bgtasks.github.io/pytest-bgtasks/"
"""The documentation site: messages end with a link to the page that explains the fix."""
LISTED_AT_MOST = 50
"""Records listed in one message; the rest are counted."""


def count(n: int, noun: str = "background task") -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def was(n: int) -> str:
    return "was" if n == 1 else "were"


def listing(records: Sequence[TaskRecord]) -> str:
    """'2 background tasks were added:' and one line per record, or 'No background tasks
    were added.'"""
    if not records:
        return "No background tasks were added."
    return f"{count(len(records))} {was(len(records))} added:\n{bullets(records)}"


def bullets(records: Sequence[TaskRecord]) -> str:
    lines = [f"- {record.describe()}" for record in records[:LISTED_AT_MOST]]
    if len(records) > LISTED_AT_MOST:
        lines.append(f"... and {len(records) - LISTED_AT_MOST} more")
    return "\n".join(lines)


ASSERTIONS = f"See {DOCS}assertions/#matching"


def missing(expected: ExpectedTask, outcome: str, records: Sequence[TaskRecord], hint: str) -> str:
    """`No background task matching f('a') was added.` with what was added instead."""
    lines = [f"No background task matching {expected.call} {outcome}.", listing(records)]
    if hint:
        lines.append(hint)
    lines.append(ASSERTIONS)
    return "\n".join(lines)


def unexpected(expected: ExpectedTask | None, found: Sequence[TaskRecord], wanted: int) -> str:
    matching = "" if expected is None else f" matching {expected.call}"
    if wanted == 0:
        head = f"Expected no background tasks{matching}, but {len(found)} {was(len(found))} added:"
    else:
        head = f"Expected {count(wanted)}{matching}, but {len(found)} {was(len(found))} added"
        head += ":" if found else "."
    return "\n".join([head, bullets(found), ASSERTIONS] if found else [head, ASSERTIONS])


def status_hint(record: TaskRecord) -> str:
    """What became of a record that matches, instead of the status an assertion wanted: a
    phrase that follows "The matching task #N"."""
    status = record.status
    if status is TaskStatus.PENDING:
        return "is still pending: its response has not finished"
    if status is TaskStatus.DEFERRED:
        return (
            "is deferred: run it with bgtasks.run_deferred() (await bgtasks.arun_deferred() in "
            "async tests)"
        )
    if status is TaskStatus.SKIPPED:
        return 'was skipped (mode "skip" or bgtasks.skip())'
    if status is TaskStatus.RAN:
        return "ran without raising"
    if status is TaskStatus.FAILED:
        return f"failed: {record.problem or f'it raised {record.exception!r}'}"
    reason = record.reason or ""
    if reason.startswith("cancelled"):
        return f"was {reason}"
    for prefix in ("never run: ", "not run: ", "never started: "):
        reason = reason.removeprefix(prefix)
    return f"was {status}: {reason}"


def matching_hint(record: TaskRecord) -> str:
    return f"The matching task #{record.index} {status_hint(record)}."


def out_of_order(
    expected: Sequence[ExpectedTask],
    matched: Sequence[TaskRecord],
    earlier: TaskRecord | None,
    records: Sequence[TaskRecord],
) -> str:
    wanted = expected[len(matched)]
    lines = [
        "Background tasks were not added in the expected order.",
        "Expected, in this order: " + ", ".join(item.call for item in expected),
    ]
    if matched:
        last = matched[-1]
        lines.append(f"Found {last.call} at #{last.index}, then no {wanted.call} after it.")
    else:
        lines.append(f"No {wanted.call} was added.")
    if earlier is not None:
        lines.append(f"{earlier.call} was added at #{earlier.index}, before that.")
    lines.append(listing(records))
    lines.append(ASSERTIONS)
    return "\n".join(lines)


def _them(n: int) -> str:
    return "it" if n == 1 else "them"


CATCHES = f"{DOCS}catches/"
ADVICE = {
    "dropped": 'If this is expected, use @pytest.mark.bgtasks(on_dropped="warn") or "ignore".',
    "ran_again": (
        "Build the response (and its background) inside the endpoint; if this is expected, "
        'use @pytest.mark.bgtasks(on_dropped="warn") or "ignore".'
    ),
}
"""The advice that ends a finding made a failure; as a warning, it says how to silence it."""
WARNING_ADVICE = {
    "dropped": 'If this is expected, silence it with @pytest.mark.bgtasks(on_dropped="ignore").',
    "ran_again": (
        "Build the response (and its background) inside the endpoint; if this is expected, "
        'silence it with @pytest.mark.bgtasks(on_dropped="ignore").'
    ),
}


def as_warning(kind: str, message: str) -> str:
    """A finding's message, for a warning rather than a failure."""
    return message.replace(ADVICE[kind], WARNING_ADVICE[kind])


def dropped(records: Sequence[TaskRecord]) -> str:
    n = len(records)
    return (
        f"{count(n)} {was(n)} added but never run: no response carried {_them(n)}.\n"
        f"{bullets(records)}\n{ADVICE['dropped']}\nSee {CATCHES}#dropped"
    )


def ran_again(records: Sequence[TaskRecord]) -> str:
    n = len(records)
    return (
        f"{count(n)} ran again: the same BackgroundTask object had already run, so a response "
        "object is reused across requests and replays its tasks.\n"
        f"{bullets(records)}\n{ADVICE['ran_again']}\nSee {CATCHES}#ran-again"
    )


def unseen_failures(
    records: Sequence[TaskRecord], frames: Sequence[traceback.StackSummary], root: str
) -> str:
    """Tasks that raised where the test could not see it, each with its traceback."""
    n = len(records)
    parts = [
        f"{count(n)} raised and the test never saw the exception "
        "(the client or a middleware hid it):"
    ]
    for record, summary in zip(records, frames, strict=True):
        parts += [f"- {record.describe()}", _indent(_traceback(record.exception, summary, root))]
    parts.append(
        "If the test expects this, assert it with bgtasks.assert_task_failed(...) and "
        "use @pytest.mark.bgtasks(allow_failures=True)."
    )
    parts.append(f"See {CATCHES}#hidden-failure")
    return "\n".join(parts)


def did_nothing(records: Sequence[TaskRecord]) -> str:
    """Tasks whose sync function returned an awaitable: they "ran" without doing their work."""
    n = len(records)
    return (
        f"{count(n)} never did {'its' if n == 1 else 'their'} work:\n"
        f"{bullets(records)}\n"
        "If the test expects this, use @pytest.mark.bgtasks(allow_failures=True).\n"
        f"See {CATCHES}#misuse"
    )


def _traceback(exc: BaseException | None, frames: traceback.StackSummary, root: str) -> str:
    """Python's own traceback format, with paths relative to the rootdir."""
    shown = [
        "".join(traceback.StackSummary.from_list([frame]).format()).replace(
            f'File "{frame.filename}"', f'File "{display_path(frame.filename, root)}"', 1
        )
        for frame in frames
    ]
    lines = ["Traceback (most recent call last):\n", *shown]
    return "".join(lines + traceback.format_exception_only(type(exc), exc)).rstrip()


def unrun_deferred(records: Sequence[TaskRecord]) -> str:
    n = len(records)
    return (
        f"{count(n, 'deferred background task')} {was(n)} never run:\n{bullets(records)}\n"
        f"Run {_them(n)} with bgtasks.run_deferred(), or drop assert_all_run=True.\n"
        f"See {CATCHES}#left-unrun"
    )


def unfinished(records: Sequence[TaskRecord]) -> str:
    n = len(records)
    return (
        f"{count(n)} {was(n)} still running when the test ended:\n{bullets(records)}\n"
        f"Wait for {_them(n)} with bgtasks.wait(), or drop assert_all_run=True.\n"
        f"See {CATCHES}#left-unrun"
    )


def still_running(records: Sequence[TaskRecord], timeout: float) -> str:
    n = len(records)
    return (
        f"bgtasks.wait() gave up after {timeout:g} seconds: {count(n)} {was(n)} still "
        f"running:\n{bullets(records)}"
    )


def endless(record: TaskRecord, generation: int) -> str:
    return (
        f"bgtasks.run_deferred() stopped: tasks kept scheduling tasks, {generation} generations "
        f"deep. Next would be:\n- {record.describe()}\n"
        "A task that schedules itself needs a condition that ends it; pass limit= to run a "
        "bounded number."
    )


def timed_out(record: TaskRecord, timeout: float | None) -> str:
    return (
        f"Deferred task {record.call} ({record.added_at}) did not finish within "
        f"{timeout:g} seconds."
    )


# -- why a task did not run, or did nothing -----------------------------------------------------

NEVER_RUN_WEBSOCKET = "never run: a WebSocket endpoint never runs background tasks"
NEVER_STARTED_CANCELLED = "never started: its request was cancelled"
ADDED_AFTER_THE_RESPONSE = (
    "never run: it was added to its BackgroundTasks after the response had run them "
    "(in the exit code of a dependency with yield?)"
)
NOT_CARRIED = (
    "never run: no response carried it (it was never given to the response that was sent: set "
    "on the injected `response` parameter, lost by a route class or middleware that rebuilt the "
    "response, or never passed as `background=`)"
)


def request_raised(error: BaseException) -> str:
    return f"never run: the request raised {error!r}"


def endpoint_raised(error: BaseException, status: int | None) -> str:
    answered = f", answered with {status}" if status is not None else ""
    return f"never run: the endpoint raised {error!r}{answered}"


def carried_instead(other: TaskRecord) -> str:
    return (
        f"never run: the response carried {other.call} instead; an endpoint that returns a "
        "response with its own `background` replaces the injected BackgroundTasks"
    )


def error_response(status: int) -> str:
    return f"never run: the request ended with a {status} response"


def ran_before(first: TaskRecord) -> str:
    return (
        f"this BackgroundTask object already ran as #{first.index} ({first!r}): "
        "a response object reused across requests runs its tasks again"
    )


def returned_awaitable(name: str, returned: str) -> str:
    return (
        f"{name} is a sync callable that returned {returned}, which nobody awaits: Starlette "
        "runs sync tasks in a thread and drops what they return; give add_task the async function"
    )


def returned_generator(name: str, *, asynchronous: bool) -> str:
    kind = "an async generator" if asynchronous else "a generator"
    return (
        f"{name} returned {kind}, whose body never runs: Starlette calls a task and drops what "
        "it returns; give add_task a plain function (def or async def)"
    )


def coroutine_given(name: str) -> str:
    return (
        f"add_task() was given a coroutine object, {name}: pass the function and its arguments "
        "instead, add_task(func, *args)"
    )


def not_callable(func: object) -> str:
    return f"add_task() was given {func!r}, which is not callable"


def celery_unknown(name: str) -> str:
    return (
        f"send_task({name!r}): no Celery app in this process registers a task of that name; "
        "a worker would drop it"
    )


def celery_unknown_to_worker(name: str) -> str:
    return f"the worker does not know a task named {name!r}: it dropped the message"


def worker_not_ready(app: str, broker: str) -> str:
    return (
        f"The Celery worker of {app!r} did not become ready: is its broker ({broker}) running? "
        "In tests, point the app's broker at the bgtasks_redis_url fixture."
    )


def celery_protocol_one(app: str, name: str) -> str:
    return (
        f"{name!r} was sent with task_protocol = 1, which the Celery app {app!r} sets: "
        "pytest-bgtasks reads the task messages of protocol 2 (Celery's default since 4.0) and "
        "would neither record nor run it. Leave task_protocol unset in tests."
    )


def celery_refused(name: str, error: Exception) -> str:
    return f"a worker would refuse the message of {name}: {error}"


def celery_does_not_bind(name: str, error: TypeError) -> str:
    return f"the arguments do not fit {name}: {error}; the task would fail in the worker"


def no_capture(caller: str) -> str:
    return (
        f"{caller} needs an active background task capture: request the `bgtasks` or "
        "`bg_client` fixture (or mark the test with @pytest.mark.bgtasks)."
    )


def no_app_fixture(fixture: str, name: str) -> str:
    return (
        f"{fixture} needs a fixture named {name!r} that returns your ASGI app; define one in "
        "conftest.py, or name yours with the ini option bgtasks_app_fixture."
    )


def factory_app(name: str) -> str:
    return (
        f"bg_client_factory() takes the app from the fixture {name!r}, not app=: pass only "
        "TestClient's other options (base_url, headers, raise_server_exceptions...)."
    )


# -- the report section of a failing test ---------------------------------------------------

Paint = Callable[[str, str], str]
"""How the plugin colours the report section: `paint(text, style)`, where `style` is a task's
status ("ran", "failed"...) or "request". Without it the section is plain text."""
OUTSIDE_ANY_REQUEST = "outside any request"
CALL_COLUMN_AT_MOST = 60
"""A longer call sticks out of the call column instead of pushing every other call's status
right."""


class _Row(NamedTuple):
    """One line of the section: a request (no record), or a task at some depth."""

    text: str
    record: TaskRecord | None = None
    depth: int = 0
    elsewhere: str | None = None
    """The request a task shown under its parent was scheduled in, when it is another one."""


def report_section(records: Sequence[TaskRecord], paint: Paint | None = None) -> str:
    """The "Captured background tasks" section: a line per request with the status of its
    response, under it the tasks it scheduled, and under each task the tasks it scheduled in
    turn, in columns of call, status and where the task was added."""
    if not records:
        return "No background tasks were added."
    rows = _tree(records[:LISTED_AT_MOST])
    tasks = [(row.text, str(row.record.status)) for row in rows if row.record is not None]
    call_width = max(
        (len(call) for call, _ in tasks if len(call) <= CALL_COLUMN_AT_MOST), default=0
    )
    status_width = max(len(status) for _, status in tasks)
    lines: list[str] = []
    for row in rows:
        if row.record is None:
            lines.append(paint(row.text, "request") if paint is not None else row.text)
        else:
            lines += _task_lines(row, row.record, (call_width, status_width), paint)
    if len(records) > LISTED_AT_MOST:
        lines.append(f"... and {len(records) - LISTED_AT_MOST} more")
    return "\n".join(lines)


def _tree(records: Sequence[TaskRecord]) -> list[_Row]:
    """The rows in the order shown: the requests in the order of their first task, tasks in
    scheduling order, each followed by the tasks it scheduled, one level deeper."""
    listed = {id(record) for record in records}
    children: dict[int, list[TaskRecord]] = {}
    groups: dict[int, list[TaskRecord]] = {}
    for record in records:
        parent = record.parent
        if parent is not None and id(parent) in listed:
            children.setdefault(id(parent), []).append(record)
        else:
            groups.setdefault(id(record._request), []).append(record)
    rows: list[_Row] = []
    for roots in groups.values():
        rows.append(_Row(_heading(roots[0]._request)))
        stack = [(record, 1) for record in reversed(roots)]
        while stack:
            record, depth = stack.pop()
            elsewhere = _elsewhere(record) if depth > 1 else None  # shown under its parent
            rows.append(_Row(f"{'  ' * depth}- {record.call}", record, depth, elsewhere))
            stack += [(child, depth + 1) for child in reversed(children.get(id(record), []))]
    return rows


def _heading(request: Request | None) -> str:
    if request is None:
        return OUTSIDE_ANY_REQUEST
    if request.status is None:
        return str(request.info)
    return f"{request.info}, answered with {request.status}"


def _elsewhere(record: TaskRecord) -> str | None:
    parent = record.parent
    request = record._request
    if parent is None or request is None or request is parent._request:
        return None
    return f"scheduled during {_heading(request)}"


def _task_lines(
    row: _Row, record: TaskRecord, widths: tuple[int, int], paint: Paint | None
) -> list[str]:
    """A task's line, then what it raised, why it did not run, any misuse, on lines below."""
    call_width, status_width = widths
    status = str(record.status)
    shown = paint(status, status) if paint is not None else status
    cells = [row.text.ljust(call_width), shown + " " * (status_width - len(status))]
    if record.added_at is not None:
        cells.append(record.added_at)
    notes = record.describe().split("\n    ")[1:]  # what describe() shows under the call
    if row.elsewhere is not None:
        notes.append(row.elsewhere)
    indent = "  " * row.depth + "    "
    return ["  ".join(cells).rstrip(), *(indent + note for note in notes)]


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
