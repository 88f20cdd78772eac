"""Sources of background work: the interception of one framework's tasks.

A source is one module here with a `create(state) -> Source` function, registered in
`REGISTRY` with the module whose presence in `sys.modules` turns it on (None: always). It patches
its framework when installed and reports to the core:

- a task was created: `state.new_record(source, handle, func, args, kwargs, site, request)`
  (None when no capture wants it);
- a request began and ended: `state.request_started(...)`, with `_lifecycle.current_request`
  set while it runs, then `settle()` on each of its records still waiting;
- a task is about to run: `state.controller(record)` gives the runner that decides, and
  `await runner.dispatch(record)` applies the rules and the mode.

The core calls back through the protocol below: to run a task (`execute`), to stop the tasks
a failure keeps from running (`stop_after`), to forget what it tracked when the last capture
stops (`reset`). The core knows no framework name; everything it learns of one comes through a
source. See ARCHITECTURE.md for how a new source plugs in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .._lifecycle import TaskRecord, TaskStatus

REGISTRY: dict[str, tuple[str, str | None]] = {
    "starlette": ("pytest_bgtasks.sources.starlette", None),
    "celery": ("pytest_bgtasks.sources.celery", "celery.app.base"),
}
"""Source name -> (its module, the module whose import turns it on)."""


class Source(Protocol):
    """What the core asks of a source."""

    name: str
    """What `TaskRecord.source` says: "starlette", "celery"."""
    library: tuple[str, ...]
    """Module prefixes of the framework: frames that are neither the app's nor the test's."""
    runs_rules: bool
    """Whether the source applies `fail` and `replace` rules where the task runs (Celery, in
    its tracer: so retries happen as in a worker), rather than the runner."""
    records_outcomes: bool
    """Whether the source records what became of each task it runs (Celery, from its signals:
    a task published to a worker ends later), rather than the runner once `execute` returns."""

    @property
    def root(self) -> str:
        """What call sites are shown relative to."""
        ...

    def install(self) -> None:
        """Patch the framework, or check that the patches are still in place."""

    def uninstall(self) -> None:
        """Put back what is still ours to put back; leave the rest inert."""

    def activate(self) -> None:
        """A capture starts while none was active: get ready to capture."""

    def reset(self) -> None:
        """The last capture stopped: forget every task tracked, stop what was started."""

    def wait(self, records: list[TaskRecord], timeout: float) -> None:
        """Block until none of `records` is running elsewhere (a worker), or `timeout`
        seconds passed."""

    def task_name(self, record: TaskRecord) -> str:
        """The name a test knows the task by."""
        ...

    async def execute(self, record: TaskRecord, fake: Callable[..., Any] | None) -> str | None:
        """Run the task as its framework would (`fake` in its function's place, with the same
        arguments, when given); raise what it raises. Returns a problem when it returned
        without doing its work, else None."""
        ...

    def stop_after(
        self, record: TaskRecord, status: TaskStatus, reason: str, *, passed_over: bool = False
    ) -> list[TaskRecord]:
        """`record` failed or was cancelled: stop the tasks that therefore never run (with
        `status` and `reason`), and return them. `passed_over` when the framework will still
        call them (the failure was simulated)."""
        ...
