"""pytest-bgtasks: capture, control and assert FastAPI and Starlette background tasks.

The names below load on first use, so a pytest session that never uses the plugin imports
nothing of it beyond its hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._capture import (
        BackgroundTaskCapture,
        SimulatedTaskError,
        TaskLog,
        assert_no_tasks,
        assert_task_added,
        assert_task_count,
        assert_task_failed,
        assert_task_not_added,
        assert_task_ran,
        assert_tasks_in_order,
    )
    from ._findings import Finding
    from ._lifecycle import CallSite, TaskRecord, TaskRequest, TaskStatus
    from ._matching import ExpectedTask, task
    from .plugin import BackgroundTaskWarning

__all__ = (
    "BackgroundTaskCapture",
    "BackgroundTaskWarning",
    "CallSite",
    "ExpectedTask",
    "Finding",
    "SimulatedTaskError",
    "TaskLog",
    "TaskRecord",
    "TaskRequest",
    "TaskStatus",
    "assert_no_tasks",
    "assert_task_added",
    "assert_task_count",
    "assert_task_failed",
    "assert_task_not_added",
    "assert_task_ran",
    "assert_tasks_in_order",
    "task",
)

_HOMES = {
    "CallSite": "_lifecycle",
    "Finding": "_findings",
    "ExpectedTask": "_matching",
    "task": "_matching",
    "TaskRecord": "_lifecycle",
    "TaskRequest": "_lifecycle",
    "TaskStatus": "_lifecycle",
    "BackgroundTaskWarning": "plugin",
}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'pytest_bgtasks' has no attribute {name!r}")
    from importlib import import_module

    # Not cached in this module's globals: the lookup stays right even if the core module is
    # imported afresh (pytester drops modules between in-process runs).
    return getattr(import_module(f"pytest_bgtasks.{_HOMES.get(name, '_capture')}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
