"""Celery as a source: every touch of Celery and kombu internals.

Two choke points exist in Celery 5.3 to 5.7. Every send reaches `Celery.send_task`: `delay`,
`apply_async`, signatures, each member of a chain, group or chord as Celery sends it, the next
link a finishing task sends, a retry, `app.send_task`. The patch calls Celery's own `send_task`
with a producer of ours, so Celery builds the real message and kombu encodes it (an argument
the serializer cannot encode raises kombu's `EncodeError` at the send, as in production); the
producer records the message, and publishes it only in the `"worker"` mode. Every run of a
task body goes through `Task.__call__` once it is patched (Celery's tracer then calls it), in
this process and in a worker thread alike: `fail` and `replace` rules apply there, so a
simulated failure goes through Celery's own retry and failure handling.

In the other modes a task runs in this process as a worker's pool would run it
(`trace_task_ret` on the recorded message): after the request that sent it, or at once when
sent outside one; a task it sends runs after it. Outcomes come from Celery's signals.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import importlib
import inspect
import sys
import threading
import types
import uuid
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from .._lifecycle import Site, TaskRecord, TaskStatus, current_request, running
from .._naming import NAMERS
from ._celery_kombu import (
    Publishing,
    UnknownTask,
    check_protocol,
    decoded,
    escaped,
    fail_inside,
    quiet_celery_warnings,
    recording_class,
    registered,
    send_problem,
    without_delays,
    worker_request,
)
from ._celery_outcomes import Outcomes
from ._celery_worker import InProcessWorker, quiesce
from ._patch import Patches, Slot

if TYPE_CHECKING:
    from .._runner import Runner
    from .._state import State

_CELERY = ("celery.", "kombu.", "billiard.", "vine.", "amqp.", "redis.", "valkey.")
_FRAMEWORK = (*_CELERY, "pytest_bgtasks.")
"""Frames that are not where a task was sent from."""
_LEFT_OUT = {"args", "kwargs", "producer", "task_id", "task_type", "result_cls", "connection"}
"""Send parameters that are not a task's options."""


def create(state: State) -> CelerySource:
    return CelerySource(state)


class CelerySource:
    """The interception of Celery's task sends and runs."""

    name = "celery"
    library: tuple[str, ...] = _CELERY
    runs_rules = True
    records_outcomes = True

    def __init__(self, state: State) -> None:
        self.state = state
        self.Celery: type[Any] = importlib.import_module("celery.app.base").Celery
        self.Task: type[Any] = importlib.import_module("celery.app.task").Task
        self.Proxy: type[Any] = importlib.import_module("celery.local").Proxy
        self.celery_state: Any = importlib.import_module("celery._state")
        self.trace: Any = importlib.import_module("celery.app.trace")
        self.signals: Any = importlib.import_module("celery.signals")
        self.kombu: Any = importlib.import_module("kombu")
        self.serialization: Any = importlib.import_module("kombu.serialization")
        self.Recording = recording_class(self.kombu.Producer)
        self.patches = Patches(self)
        self.send_signature: inspect.Signature | None = None
        self.lock = threading.RLock()
        self.outcomes = Outcomes()
        self.records = self.outcomes.records
        """Records by task id: a retry, sent with the same id, updates its record."""
        self.messages: dict[str, tuple[Any, dict[str, Any], dict[str, Any]]] = {}
        """The app, the message and the send options of each task: to run it here, or to
        publish it once held."""
        self.queue: collections.deque[TaskRecord] = collections.deque()
        self.draining = False
        self.entered: set[int] = set()
        self.workers: dict[int, InProcessWorker] = {}
        self.backends: list[Any] = []
        self.memory: dict[int, tuple[Any, Any]] = {}
        """Each app met, and its in-memory result store (None: it stores no results)."""
        self.eager: list[Any] = []
        self.quiet: contextlib.ExitStack | None = None

    @property
    def root(self) -> str:
        return self.state.root

    # -- installing ------------------------------------------------------------------------

    def install(self) -> None:
        original = self.patches.installed.get((self.Celery, "send_task"))
        self.patches.install(self.Celery, "send_task", self._send_task)
        self.patches.install(self.Task, "__call__", self._task_call)
        self.patches.install(self.Celery, "backend", self._backend)
        self.patches.install(self.Celery, "_get_backend", self._get_backend)
        if original is None:
            send = self.patches.original(self.Celery, "send_task")
            self.send_signature = inspect.signature(send)
            NAMERS.append(self._name)
            self.outcomes.connect(self.signals)
            self._reset_tracers()

    def uninstall(self) -> None:
        self.reset()
        self.outcomes.disconnect(self.signals)
        if self._name in NAMERS:
            NAMERS.remove(self._name)
        self.patches.uninstall()
        self._reset_tracers()

    def _reset_tracers(self) -> None:
        """Tracers keep the function they call when built: rebuilt, they call the patch (or,
        once it is gone, the task's own)."""
        for app in list(self.celery_state._get_active_apps()):
            for task in list(app._tasks.values()):
                task.__trace__ = None

    def activate(self) -> None:
        """A capture starts: no app runs its tasks eagerly (that would bypass every send), and
        the warnings Celery and kombu cause themselves stay theirs."""
        for app in list(self.celery_state._get_active_apps()):
            if app.conf.task_always_eager:
                app.conf.task_always_eager = False
                self.eager.append(app)
        self.quiet = contextlib.ExitStack()
        self.quiet.enter_context(warnings.catch_warnings())
        quiet_celery_warnings()

    def reset(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        self.workers = {}
        quiesce(self.backends)
        self.backends = []
        for app in self.eager:
            app.conf.task_always_eager = True
        self.eager = []
        if self.quiet is not None:
            self.quiet.close()
            self.quiet = None
        with self.lock:
            self.outcomes.forget()
            self.messages = {}
            self.queue.clear()
            self.memory = {}

    # -- the patches -----------------------------------------------------------------------

    # The patches are thin shims, made once a session and marked for mutmut: their work is in
    # the source's methods, called (and so tested) on every call.

    @staticmethod
    def _send_task(original: Any, slot: Slot) -> Callable[..., Any]:  # pragma: no mutate block
        def send_task(self: Any, name: str, *args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            source = slot.source
            if source is None or not source.state.captures:
                return original(self, name, *args, **kwargs)
            return source.sent(original, self, name, args, kwargs)

        return send_task

    @staticmethod
    def _task_call(original: Any, slot: Slot) -> Callable[..., Any]:  # pragma: no mutate block
        def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            source = slot.source
            if source is None:
                return original(self, *args, **kwargs)
            return source.called(original, self, args, kwargs)

        return __call__

    @staticmethod
    def _backend(original: Any, slot: Slot) -> Callable[..., Any]:  # pragma: no mutate block
        def backend(self: Any) -> Any:
            source = slot.source
            memory = source.memory_backend(self) if source is not None else None
            return memory if memory is not None else original(self)

        return backend

    @staticmethod
    def _get_backend(original: Any, slot: Slot) -> Callable[..., Any]:  # pragma: no mutate block
        def _get_backend(self: Any) -> Any:
            backend = original(self)
            if slot.source is not None:  # closed before the broker stops
                slot.source.backends.append(backend)
            return backend

        return _get_backend

    def called(
        self, original: Any, task: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """A task object is called: by Celery's tracer for a message (the rules apply to the
        body), or directly, `task(...)`, which runs as it would without the plugin."""
        __tracebackhide__ = True
        request = task.request_stack.top
        if (
            request is None
            or request.called_directly
            or self.celery_state._task_stack.top is not task
            or id(request) in self.entered
        ):
            return original(task, *args, **kwargs)  # a direct call, task(...)
        self.entered.add(id(request))
        try:
            return self.run_body(task, request.id, args, kwargs)
        finally:
            self.entered.discard(id(request))

    def memory_backend(self, app: Any) -> Any:
        """Outside the worker mode, an app that stores results stores them in memory: no
        connection, and `.get()` or a chord works as with the real one."""
        runner = self.state.innermost_runner()
        if runner is None or runner.mode == "worker":
            return None
        known = self.memory.get(id(app))
        if known is not None and known[0] is app:
            return known[1]
        backend = None  # decided once a capture: an app's configuration is slow to read
        if (app.backend_cls or app.conf.result_backend) not in (None, "", "disabled"):
            cache = importlib.import_module("celery.backends.cache").CacheBackend
            backend = cache(app=app, url="memory://")
        self.memory[id(app)] = (app, backend)
        return backend

    # -- a send ----------------------------------------------------------------------------

    def sent(
        self, send: Any, app: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """A task is sent: record it (Celery builds and encodes the message), then run it
        here, hold it, or publish it, as the rules and the mode say."""
        __tracebackhide__ = True
        check_protocol(app, name)
        if args:  # by position (Celery's own calls pass keywords only)
            assert self.send_signature is not None
            call = self.send_signature.bind(app, name, *args, **kwargs).arguments
            options = {**call.pop("options", {}), **call}
            del options["self"], options["name"]
        else:
            options = dict(kwargs)
        task_id = options.get("task_id") or str(uuid.uuid4())
        options["task_id"] = task_id
        site = self._call_site()
        kept: list[TaskRecord] = []
        sink = functools.partial(self._recorded, app, name, task_id, options, site, kept)
        runner = self.state.innermost_runner()
        if runner is not None and runner.mode == "worker":
            # A connection of its own, from the app's configuration now (a pool made earlier,
            # by a group in another mode, may name another broker).
            with app.connection_for_write() as connection:
                producer = app.amqp.Producer(connection)
                options["producer"] = Publishing(self, producer, sink, kept, app)
                return send(app, name, **without_delays(options))
        options.pop("connection", None)
        options["producer"] = self.Recording(sink)
        result = send(app, name, **options)
        if kept:
            self._pick_up(kept[0])
        return result

    def _recorded(
        self,
        app: Any,
        name: str,
        task_id: str,
        options: dict[str, Any],
        site: Site | None,
        kept: list[TaskRecord],
        message: dict[str, Any],
    ) -> None:
        """The encoded message, before any real publish: a record of it (a new one, or the
        task's own again for a retry)."""
        if message["headers"].get("id") != task_id:
            return
        with self.lock:
            record = self.records.get(task_id)
            if record is not None:
                record.retried(int(message["headers"].get("retries") or 0))
            else:
                record = self._new_record(app, name, task_id, options, site, message)
                if record is None:
                    return
            self.messages[task_id] = (app, message, options)
        kept.append(record)

    def _new_record(
        self,
        app: Any,
        name: str,
        task_id: str,
        options: dict[str, Any],
        site: Site | None,
        message: dict[str, Any],
    ) -> TaskRecord | None:
        args, kwargs, refusal = decoded(self.serialization, app, message, options)
        task = app._tasks.get(name) or registered(self.celery_state, name)
        func = task if task is not None else UnknownTask(name)
        request = current_request.get()
        record = self.state.new_record(self, func, func, args, kwargs, site, request)
        if record is None:
            return None
        sender = self.records.get(str(options.get("parent_id")))  # "None": no record's id
        if record.parent is None and sender is not None:  # sent by Celery for a task that ended
            record.scheduled_by(sender)
        shown = {k: v for k, v in options.items() if k not in _LEFT_OUT and v not in (None, ())}
        record.celery(task_id, {k: v for k, v in shown.items() if v is not False})
        if site is None and record.parent is not None:
            record._site = record.parent._site
        problem = refusal or send_problem(task, name, args, kwargs)
        if problem is not None:
            record.refused(problem)
        self.records[task_id] = record
        return record

    def _pick_up(self, record: TaskRecord) -> None:
        """Run it as a worker would pick it up: after the request that sent it, after the task
        that sent it, else now."""
        __tracebackhide__ = True
        request = current_request.get()
        with self.lock:
            self.queue.append(record)
            if self.draining:
                return  # the task running now sent it: it runs next
        if request is not None and request.captures:
            request.after.append(self.drain)
        else:
            self.drain()

    def drain(self) -> None:
        __tracebackhide__ = True
        with self.lock:
            if self.draining:
                return
            self.draining = True
        try:
            while True:
                with self.lock:
                    if not self.queue:
                        return
                    record = self.queue.popleft()
                self._dispatch(record)
        finally:
            with self.lock:
                self.draining = False

    def _dispatch(self, record: TaskRecord) -> None:
        __tracebackhide__ = True
        if record.status is not TaskStatus.PENDING:
            return  # refused at the send, or settled already
        if record.retries:  # a retry runs: the rules decided about the task when it was sent
            record.start()
            self.run_here(record)
            return
        runner = self.state.controller(record)
        if runner is None or self._held_or_skipped(runner, record):
            return
        self.run_here(record)

    def _held_or_skipped(self, runner: Runner, record: TaskRecord) -> bool:
        record.start()
        rule = runner.rule_for(record, ("skip", "defer")) if runner.rules else None
        action = rule.action if rule is not None else runner.mode
        if action == "defer":
            runner.hold(record)
        elif action == "skip":
            record.skip()
        return action in ("defer", "skip")

    # -- running a task --------------------------------------------------------------------

    def run_here(self, record: TaskRecord) -> None:
        """Run the recorded message as a worker's pool runs one: `trace_task_ret`."""
        __tracebackhide__ = True
        task_id = record.task_id
        assert task_id is not None
        app, message, _ = self.messages[task_id]
        request = worker_request(message)
        body = message["body"], message["content_type"], message["content_encoding"]
        with self.lock:
            was_draining, self.draining = self.draining, True
        try:
            self.trace.trace_task_ret(record.name, task_id, request, *body, app=app)
        except BaseException as exc:  # outside the body, or what Celery's tracer lets through
            escaped(record, exc)
        finally:
            with self.lock:
                self.draining = was_draining
        if not was_draining:
            self.drain()

    async def execute(self, record: TaskRecord, fake: Callable[..., Any] | None) -> str | None:
        """A held task, run by `run_deferred()`: here, or published in the worker mode."""
        __tracebackhide__ = True
        runner = self.state.controller(record)
        if runner is not None and runner.mode == "worker":
            self._publish_held(record)
        else:
            self.run_here(record)
        return None

    def _publish_held(self, record: TaskRecord) -> None:
        task_id = record.task_id
        assert task_id is not None
        app, _, options = self.messages[task_id]
        self.worker_for(app)
        send = self.patches.original(self.Celery, "send_task")
        given = {k: v for k, v in without_delays(options).items() if k != "producer"}
        with app.connection_for_write() as connection:
            send(app, record.name, **given, producer=app.amqp.Producer(connection))

    def run_body(self, task: Any, task_id: str, args: tuple[Any, ...], kwargs: Any) -> Any:
        """A body runs (here, or in a worker thread): the rules apply, the outcome is kept."""
        __tracebackhide__ = True
        record = self.records.get(task_id)
        self.outcomes.raised.pop(task_id, None)  # an earlier run's (a retry's) is not this one's
        rule = None
        if record is not None and (runner := self.state.controller(record)) is not None:
            rule = runner.rule_for(record, ("fail", "replace"))
        token = running.set(record)
        try:
            if rule is not None and rule.action == "replace":
                assert rule.fake is not None
                return rule.fake(*args, **kwargs)
            if rule is not None:
                assert rule.exception is not None
                return fail_inside(task, rule.exception, args, kwargs)
            return task.run(*args, **kwargs)
        except BaseException as exc:
            self.outcomes.raised[task_id] = (exc, rule is not None and exc is rule.exception)
            raise
        finally:
            running.reset(token)

    # -- the worker mode -------------------------------------------------------------------

    def worker_for(self, app: Any) -> InProcessWorker:
        worker = self.workers.get(id(app))
        if worker is None:
            worker = self.workers[id(app)] = InProcessWorker(app)
            worker.start()
        return worker

    def wait(self, records: list[TaskRecord], timeout: float) -> None:
        self.outcomes.wait(self, records, timeout)

    # -- naming and places -----------------------------------------------------------------

    def task_name(self, record: TaskRecord) -> str:
        return str(cast(Any, record.func).name)  # a Celery task's, or an UnknownTask's

    def _name(self, func: Any) -> str | None:
        if isinstance(func, (self.Task, self.Proxy, UnknownTask)):
            return str(func.__name__)
        return None

    def stop_after(
        self, record: TaskRecord, status: TaskStatus, reason: str, *, passed_over: bool = False
    ) -> list[TaskRecord]:
        """Nothing to stop: a chain's next link is only sent once the one before succeeded."""
        return []

    def _call_site(self) -> Site | None:
        """The line that sent the task, outside Celery and this plugin; None for a send Celery
        made itself for a task that finished (a chain's next link, a retry)."""
        frame: types.FrameType | None = sys._getframe(2)
        while frame is not None:
            module = str(frame.f_globals.get("__name__", ""))
            if module == "celery.app.trace":
                return None
            if not (module + ".").startswith(_FRAMEWORK):
                return (frame.f_code, frame.f_lasti)
            frame = frame.f_back
        return None
