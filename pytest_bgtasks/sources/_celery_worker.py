"""A real Celery worker in a thread of this process, for the `"worker"` mode; and what must be
closed before its broker stops.

Not `celery.contrib.testing.worker.start_worker`: that one asks for the `celery.ping` task,
sets up logging (clearing the root logger's handlers, pytest's among them), makes the app the
default of the whole process, and takes a second to stop. This one runs Celery's own
`TestWorkController` with the solo pool, makes the app current in its own thread only, and
stops at once by waking the broker read the worker waits in.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import time
import uuid
from typing import Any

import pytest_bgtasks._messages as _messages

READY_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


class InProcessWorker:
    """A Celery worker consuming `app`'s queues in a daemon thread."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.celery_state = importlib.import_module("celery._state")
        blocking = self.celery_state.task_join_will_block()
        controller = importlib.import_module("celery.contrib.testing.worker").TestWorkController
        self.controller = controller(
            app=app,
            concurrency=1,
            pool="solo",
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            hostname=f"bgtasks-{uuid.uuid4().hex[:8]}@localhost",
        )
        # Building the worker says, for the whole process, that joining a result would block
        # (as it would, inside a worker): said again as it was, of the test's thread.
        self.celery_state._set_task_join_will_block(blocking)
        self.thread = threading.Thread(target=self._run, name="bgtasks-celery-worker", daemon=True)

    def _run(self) -> None:
        # The solo pool runs tasks with the current app: this one, in this thread only.
        self.app.set_current()
        self.controller.start()

    def start(self) -> None:
        self.thread.start()
        started, deadline = self.controller._on_started, time.monotonic() + READY_TIMEOUT
        # A worker that cannot start (its broker is down) ends its thread: no need to wait on.
        while not started.wait(0.05) and self.thread.is_alive() and time.monotonic() < deadline:
            pass
        if not started.is_set():
            self.stop()
            raise TimeoutError(_messages.worker_not_ready(self.app.main, self.app.conf.broker_url))

    def stop(self) -> None:
        worker_state: Any = importlib.import_module("celery.worker.state")
        worker_state.should_terminate = 0  # the consumer loop ends at its next turn...
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.thread.is_alive() and time.monotonic() < deadline:
            _wake_broker_reads(self.app)  # ...which a blocking broker read would delay by 1 s
            self.thread.join(0.02)
        worker_state.should_terminate = None


def _wake_broker_reads(app: Any) -> None:
    """Make the broker reads the worker blocks in (kombu's Redis transport reads with BRPOP only)
    return now: CLIENT UNBLOCK."""
    url = str(app.conf.broker_url)
    if not url.startswith("redis://"):
        return
    redis = importlib.import_module("redis")
    client = redis.Redis.from_url(url)
    try:
        for each in client.client_list():
            if each.get("cmd") == "brpop":
                client.client_unblock(int(each["id"]))
    except redis.RedisError:
        pass  # the server is gone: so is the read
    finally:
        client.close()


def quiesce(backends: list[Any]) -> None:
    """Close what result backends keep open (a pubsub, sockets) before the server goes: else
    a result collected later reconnects to a server that is gone, and a socket left open warns
    when its thread ends."""
    for backend in backends:
        consumer = getattr(backend, "result_consumer", None)
        if consumer is not None:
            with contextlib.suppress(Exception):  # closing what may be half gone: best effort
                consumer.stop()
            consumer._pubsub = None
            consumer.subscribed_to.clear()
        client = backend.__dict__.get("client")  # a cached property: only if it was made
        if client is not None:
            client.connection_pool.disconnect()
