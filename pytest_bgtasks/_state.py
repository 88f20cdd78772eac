"""The one state the patches share: the active captures and the installed sources.

`acquire()` creates it, and installs the sources, when the first holder (a capture that
starts, or a pytest session that uses the plugin) asks for it; `release()` drops it, and
uninstalls the sources, when the last holder lets go. Patches find it through their source,
which `install()` made: never through a module bound at import time.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Protocol

from ._lifecycle import Request, Site, TaskRecord, TaskRequest, running
from .sources import REGISTRY

if TYPE_CHECKING:
    from ._runner import Runner
    from .sources import Source


class Log(Protocol):
    """A capture as the state sees it: a `BackgroundTaskCapture` (it has a runner, and
    decides) or a block of one (it only records)."""

    _records: list[TaskRecord]
    _active: bool

    @property
    def _runner(self) -> Runner | None: ...


class State:
    """Everything the patches share while they are installed."""

    def __init__(self, root: str) -> None:
        self.lock = threading.Lock()
        self.roots: list[tuple[object, str]] = [(self, root)]
        """Each pytest session's rootdir, innermost last, after the working directory the state
        was made in."""
        self.captures: list[Log] = []
        """The active captures and blocks, outermost first."""
        self.holders: list[object] = []
        self.sources: dict[str, Source] = {}

    @property
    def root(self) -> str:
        """What call sites are shown relative to: the innermost pytest session's rootdir, or
        the working directory when the state was made."""
        return self.roots[-1][1]

    # -- what sources report ---------------------------------------------------------------

    def new_record(
        self,
        source: Source,
        handle: Any,
        func: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        site: Site | None,
        request: Request | None,
    ) -> TaskRecord | None:
        """A record for a task the source saw, in every capture it belongs to (those active
        when its request began, or now outside any request); None when it belongs to none."""
        logs = self.captures if request is None else request.captures
        with self.lock:
            for log in logs:
                if not log._active:  # one that stopped since its request began
                    logs = [log for log in logs if log._active]
                    break
            if not logs:
                return None
            first = logs[0]._records
            record = TaskRecord(source, handle, func, args, kwargs, len(first), site, request)
            first.append(record)
            for log in logs[1:]:
                log._records.append(record)
        if request is not None:
            request.records.append(record)
        parent = running.get()
        if parent is not None:
            record.scheduled_by(parent)
        return record

    def request_started(self, info: TaskRequest, kind: type[Request] = Request) -> Request:
        """The request now beginning, tied to the captures active now (with none, nothing it
        schedules is recorded, whatever capture starts meanwhile)."""
        return kind(info, tuple(self.captures))

    def request_finished(self, request: Request) -> None:
        """The request is over: run what sources held until then."""
        after, request.after = request.after, []
        for run in after:
            run()

    def controller(self, record: TaskRecord) -> Runner | None:
        """The runner that decides what happens to the record's task: the innermost capture of
        those it belongs to that is still active and decides."""
        request = record._request
        logs = request.captures if request is not None else self.captures
        for log in reversed(logs):
            if log._active and log._runner is not None:
                return log._runner
        return None

    # -- captures --------------------------------------------------------------------------

    def push(self, log: Log) -> None:
        with self.lock:
            if log._active:
                raise RuntimeError("This capture is active already.")
            log._active = True
            self.captures.append(log)
            first = len(self.captures) == 1
        if first:
            for source in list(self.sources.values()):
                source.activate()

    def pop(self, log: Log) -> None:
        with self.lock:
            if not log._active:
                return
            log._active = False
            self.captures.remove(log)
            idle = not self.captures
        if idle:
            for source in self.sources.values():
                source.reset()

    def innermost_runner(self) -> Runner | None:
        for log in reversed(self.captures):
            if log._runner is not None:
                return log._runner
        return None

    def ensure_sources(self) -> None:
        """Install the sources whose framework is in use now, and put back any patch that
        something removed since."""
        for name, (module, trigger) in REGISTRY.items():
            source = self.sources.get(name)
            if source is not None:
                source.install()
            elif trigger is None or trigger in sys.modules:
                source = importlib.import_module(module).create(self)
                self.sources[name] = source
                source.install()
                if self.captures:
                    source.activate()

    def uninstall(self) -> None:
        for source in self.sources.values():
            source.uninstall()
        self.sources.clear()


_state: State | None = None


def current() -> State | None:
    """The live state, if any holder holds it."""
    return _state


def acquire(holder: object, root: str | None = None) -> State:
    """Hold the state (made and installed if none is live) for `holder`."""
    global _state
    state = _state
    if state is None:
        state = _state = State(os.getcwd())
    if root is not None:
        state.roots.append((holder, root))
    state.holders.append(holder)
    state.ensure_sources()
    return state


def release(holder: object) -> None:
    """Let go of the state for `holder`; the last holder uninstalls it."""
    global _state
    state = _state
    if state is None or holder not in state.holders:
        return
    state.holders.remove(holder)
    state.roots = [(owner, root) for owner, root in state.roots if owner is not holder]
    if not state.holders:
        _state = None
        state.uninstall()
        from ._matching import clear_caches

        clear_caches()


def release_session(session: object, enclosing: list[Log]) -> None:
    """At the end of a pytest session: stop the captures it started and left running (not
    those of an enclosing session, when it runs inside a test), then let go of the state."""
    state = _state
    if state is not None:
        for log in reversed(state.captures[:]):
            if not any(log is outer for outer in enclosing):
                state.pop(log)
                release(log)
    release(session)
