"""Celery's producers as the Celery source needs them, and what it asks of Celery besides."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import pytest_bgtasks._messages as _messages

from .._lifecycle import TaskRecord, TaskStatus
from .._matching import signature_of as _signature

if TYPE_CHECKING:
    from .celery import CelerySource


class UnknownTask:
    """What a record of `send_task("name")` calls, when no app registers the name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.__name__ = name.rpartition(".")[2]

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise LookupError(f"no Celery app registers a task named {self.name!r}")


def recording_class(producer_class: Any) -> Any:  # pragma: no mutate block
    """A kombu producer with no channel: kombu encodes the message, and it is recorded, not
    sent. Made as a subclass of kombu's `Producer`, once a session (so marked for mutmut: what
    it does with a message is in `message_of`)."""

    # kombu's Producer comes in as a value (this module imports without kombu), so mypy sees
    # an Any base; subclassing it typed would pin kombu's partly untyped publish signature.
    class RecordingProducer(producer_class):  # type: ignore[misc]
        def __init__(self, sink: Callable[[dict[str, Any]], None]) -> None:
            producer_class.__init__(self, None)  # no channel: nothing connects
            self.__connection__ = _NoConnection()
            self._sink = sink

        def publish(self, body: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True  # an EncodeError shows from the send to kombu's code
            kwargs["retry"] = False  # a retry policy would go through the connection
            published: Any = producer_class.publish(self, body, **kwargs)
            return published

        def _publish(self, *args: Any, **kwargs: Any) -> None:
            self._sink(message_of(*args, **kwargs))

    return RecordingProducer


def message_of(
    body: Any,
    priority: Any,
    content_type: str,
    content_encoding: str,
    headers: dict[str, Any],
    properties: dict[str, Any],
    routing_key: str,
    mandatory: Any,
    immediate: Any,
    exchange: Any,
    *_: Any,
    **__: Any,
) -> dict[str, Any]:
    """The encoded message kombu would publish (what `Producer._publish` is given), as the
    source records it."""
    return {
        "body": body,
        "content_type": content_type,
        "content_encoding": content_encoding,
        "headers": headers,
        "properties": {**properties, "priority": priority},
        "exchange": exchange,
        "routing_key": routing_key,
    }


def worker_request(message: dict[str, Any]) -> dict[str, Any]:
    """The request a worker builds from a received message, for `trace_task_ret`."""
    properties = message["properties"]
    request = dict(message["headers"])
    request.update(
        properties=properties,
        reply_to=properties.get("reply_to"),
        correlation_id=properties.get("correlation_id"),
        delivery_info={
            "exchange": message["exchange"],
            "routing_key": message["routing_key"],
            "priority": properties.get("priority"),
            "redelivered": False,
        },
    )
    return request


class _NoConnection:
    """What Celery and kombu ask of a producer's connection before they publish."""

    recoverable_connection_errors = ()
    connection_errors = ()
    channel_errors = ()
    transport_options: ClassVar[dict[str, Any]] = {}

    def _reraise_as_library_errors(
        self, *_: Any, **__: Any
    ) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


class Publishing:
    """The worker mode's producer: the message is recorded first (so the worker cannot run it
    before its record exists), then published by the app's real producer, unless the rules or
    the mode hold or skip it."""

    def __init__(
        self, source: CelerySource, real: Any, sink: Any, kept: list[TaskRecord], app: Any
    ):
        self._source, self._real, self._sink, self._kept, self._app = source, real, sink, kept, app

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def publish(self, body: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        # Celery always names the serializer: the recording producer needs none of its own.
        self._source.Recording(self._sink).publish(body, **dict(kwargs))
        if self._kept:
            record = self._kept[0]
            if not record.retries:
                runner = self._source.state.controller(record)
                if record.status is not TaskStatus.PENDING or runner is None:
                    return None
                if self._source._held_or_skipped(runner, record):
                    return None
            else:
                record.start()
            self._source.worker_for(self._app)
        return self._real.publish(body, **kwargs)


def fail_inside(task: Any, exc: BaseException, args: tuple[Any, ...], kwargs: Any) -> Any:
    """Raise `exc` where the task's function would run: inside the wrapper that
    `autoretry_for` puts around it, so a simulated failure is retried as a real one is."""
    if "_orig_run" not in task.__dict__:
        raise exc
    saved = task.__dict__["_orig_run"]

    def fails(*_: Any, **__: Any) -> Any:
        raise exc

    task._orig_run = fails
    try:
        return task.run(*args, **kwargs)
    finally:
        task._orig_run = saved


def registered(celery_state: Any, name: str) -> Any:
    """The task of that name in any app of the process (finalizing those not yet)."""
    for app in list(celery_state._get_active_apps()):
        if not app.finalized and app.autofinalize:
            app.finalize(auto=True)
        task = app._tasks.get(name)
        if task is not None:
            return task
    return None


def send_problem(task: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """What a worker would refuse: a name no app registers, arguments that do not bind."""
    if task is None:
        return _messages.celery_unknown(name)
    signature = _signature(task)
    if signature is None:  # no signature to tell
        return None
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        return _messages.celery_does_not_bind(name, exc)
    return None


def without_delays(options: dict[str, Any]) -> dict[str, Any]:
    """A worker would hold a task until its eta: here it runs now (the record keeps both)."""
    return {k: v for k, v in options.items() if k not in ("countdown", "eta")}


def quiet_celery_warnings() -> None:
    """Warnings that Celery and kombu cause themselves, matched by their modules, so that the
    app's own still fail a strict run: redis-py 8 deprecates the SETEX every Celery result
    store uses; Celery 5.3 and kombu 5.3 call `utcnow()` and `utcfromtimestamp()`, which Python
    3.12 deprecates; Celery before 5.7 warns at worker start about a setting of the app."""
    ignore = warnings.filterwarnings
    ignore("ignore", r"Call to deprecated setex", DeprecationWarning, r"celery\.backends\.redis")
    ignore(
        "ignore",
        r"datetime\.datetime\.utc(now|fromtimestamp)\(\)",
        DeprecationWarning,
        r"(celery|kombu)(\.|$)",
    )
    ignore("ignore", r"The broker_connection_retry configuration", module=r"celery\.worker")


def check_protocol(app: Any, name: str) -> None:
    """Refuse a send in task protocol 1: its message carries the task's id in the body, where
    the recording producer does not look, so the task would be neither recorded nor run."""
    __tracebackhide__ = True
    if app.conf.task_protocol == 1:
        raise ValueError(_messages.celery_protocol_one(app.main, name))


def escaped(record: TaskRecord, exc: BaseException) -> None:
    """What came out of Celery's tracer, which handles an `Exception` raised by the body
    itself: an error outside the body (the task is not registered here) fails the task; a
    `BaseException` the tracer lets through (`KeyboardInterrupt`, `pytest.fail`) fails it too,
    and goes on up."""
    __tracebackhide__ = True
    if record.running:  # the test sees the error if it goes past here to the test's code
        record.failed(exc, raised_at=exc.__traceback__)
    if not isinstance(exc, Exception):
        raise exc


def decoded(
    serialization: Any, app: Any, message: dict[str, Any], options: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any], str | None]:
    """A message's arguments as a worker receives them: after the serializer's round trip. In
    a content type the app's worker refuses, the arguments as sent, and why it refuses."""
    accept = serialization.prepare_accept_content(app.conf.accept_content)
    try:
        args, kwargs, _ = serialization.loads(
            message["body"], message["content_type"], message["content_encoding"], accept=accept
        )
    except Exception as exc:  # whatever the worker's decoding raises, it refuses
        sent = tuple(options.get("args") or ()), dict(options.get("kwargs") or {})
        return *sent, _messages.celery_refused(message["headers"]["task"], exc)
    return tuple(args), dict(kwargs), None  # pyright: ignore[reportUnknownArgumentType]
