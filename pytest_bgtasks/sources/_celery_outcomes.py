"""What became of each Celery task, from Celery's signals: in this process, and in a worker's
thread (so under a lock, and a condition that `wait()` waits on)."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import pytest_bgtasks._messages as _messages

from .._lifecycle import TaskRecord, TaskStatus

if TYPE_CHECKING:
    from .celery import CelerySource

_STATES = {"SUCCESS": "ran", "IGNORED": "ran", "FAILURE": "failed", "REJECTED": "failed"}


class Outcomes:
    """Records by task id, and the signal receivers that settle them."""

    def __init__(self) -> None:
        self.changed = threading.Condition(threading.RLock())
        self.records: dict[str, TaskRecord] = {}
        self.raised: dict[str, tuple[BaseException, bool]] = {}
        """The exception a body raised, as it raised it, and whether a rule made it."""

    def connect(self, signals: Any) -> None:
        for signal, receiver in self._receivers(signals):
            signal.connect(receiver, weak=False)

    def disconnect(self, signals: Any) -> None:
        for signal, receiver in self._receivers(signals):
            signal.disconnect(receiver)

    def _receivers(self, signals: Any) -> list[tuple[Any, Any]]:
        return [
            (signals.task_postrun, self._postrun),
            (signals.task_failure, self._failure),
            (signals.task_unknown, self._unknown),
        ]

    def forget(self) -> None:
        self.records.clear()
        self.raised.clear()

    def _postrun(self, task_id: str | None = None, state: str | None = None, **_: Any) -> None:
        record = self.records.get(task_id or "")
        outcome = _STATES.get(state or "")
        if record is None or outcome is None or not record.running:
            return  # a retry (sent again already), or not ours
        with self.changed:
            if outcome == "ran":
                record.ran()
            else:
                self._failed(record, task_id or "", None)
            self.changed.notify_all()

    def _failure(self, task_id: str | None = None, exception: Any = None, **_: Any) -> None:
        record = self.records.get(task_id or "")
        if record is not None and record.status is not TaskStatus.FAILED:
            with self.changed:  # an error after the body (a next link it could not send)
                self._failed(record, task_id or "", exception)
                self.changed.notify_all()

    def _failed(self, record: TaskRecord, task_id: str, exception: Any) -> None:
        known = self.raised.pop(task_id, None)
        if known is not None:
            record.failed(known[0], simulated=known[1])
        else:
            record.failed(exception or RuntimeError(f"{record.name} failed"))

    def _unknown(self, id: str | None = None, name: str | None = None, **_: Any) -> None:
        record = self.records.get(id or "")
        if record is not None:
            with self.changed:
                record.refused(_messages.celery_unknown_to_worker(name or record.name))
                self.changed.notify_all()

    def wait(self, source: CelerySource, records: list[TaskRecord], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while any(r._source is source and r.running for r in records):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self.changed.wait(min(left, 0.05))
