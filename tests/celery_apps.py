"""Celery apps and their tasks for the tests, and a FastAPI app that sends them.

`celery`'s broker and result backend name a port where nothing listens: outside the worker
mode nothing may connect. The worker-mode tests make an app of their own on the session's real
server, with the same tasks (`make_tasks`).
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

from celery import Celery
from celery.exceptions import Reject
from fastapi import BackgroundTasks, Depends, FastAPI

NOWHERE = "redis://127.0.0.1:9/0"

done: list[Any] = []
"""What the tasks did, in order; emptied before each test."""


def make_app(name: str, url: str) -> Celery:
    app = Celery(name, broker=url, backend=url)
    app.conf.broker_connection_retry_on_startup = True
    return app


def make_tasks(app: Celery) -> Any:  # one small task each
    @app.task(shared=False)
    def send_email(email: str, subject: str = "Welcome") -> str:
        done.append(("send_email", email))
        return email

    @app.task(shared=False)
    def add(x: int, y: int) -> int:
        done.append(("add", x + y))
        return x + y

    @app.task(shared=False)
    def total(values: list[int]) -> int:
        done.append(("total", sum(values)))
        return sum(values)

    @app.task(shared=False)
    def boom(value: str) -> None:
        done.append(("boom", value))
        raise ZeroDivisionError(value)

    @app.task(shared=False, bind=True)
    def whoami(self: Any) -> str:
        done.append(("whoami", self.request.id))
        return str(self.request.id)

    @app.task(shared=False, autoretry_for=(ConnectionError,), max_retries=3)
    def flaky(value: str) -> str:
        done.append(("flaky", value))
        return value

    @app.task(shared=False, bind=True, max_retries=2)
    def retrying(self: Any, until: int) -> int:
        done.append(("retrying", self.request.retries))
        if self.request.retries < until:
            raise self.retry(countdown=60)
        return int(self.request.retries)

    @app.task(shared=False)
    def notify_later(email: str) -> None:
        done.append(("notify_later", email))
        send_email.delay(email, subject="Later")

    @app.task(shared=False, bind=True)
    def request_seen(self: Any) -> None:
        request = self.request
        done.append(
            (
                "request_seen",
                {
                    "delivery_info": request.delivery_info,
                    "reply_to": request.reply_to,
                    "correlation id is id": request.correlation_id == request.id,
                    "priority": (request.properties or {}).get("priority"),
                    "task": request.task,
                },
            )
        )

    @app.task(shared=False)
    def as_set(*values: int) -> set[int]:  # a result JSON cannot encode
        done.append(("as_set", values))
        return set(values)

    @app.task(shared=False, bind=True, max_retries=1)
    def retried_as_set(self: Any) -> set[int]:  # retried once, then a result JSON cannot encode
        done.append(("retried_as_set", self.request.retries))
        if not self.request.retries:
            raise self.retry(countdown=60)
        return {1}

    @app.task(shared=False)
    def rejects(reason: str) -> None:
        done.append(("rejects", reason))
        raise Reject(reason, requeue=False)

    @app.task(shared=False)
    def thread() -> None:
        done.append(("thread", threading.get_ident()))

    return SimpleNamespace(**{k: v for k, v in locals().items() if k != "app"}, app=app)


celery = make_app("bgtests", NOWHERE)
tasks = make_tasks(celery)
send_email, add, total, boom = tasks.send_email, tasks.add, tasks.total, tasks.boom
whoami, flaky, retrying, notify_later = (
    tasks.whoami,
    tasks.flaky,
    tasks.retrying,
    tasks.notify_later,
)


def audit(event: str) -> None:
    done.append(("audit", event))


def web_app(sent: Any = tasks) -> FastAPI:
    """`POST /signup/{email}`: a BackgroundTasks task, and the welcome email through Celery
    (`sent`'s app); the dependency sends one too."""
    app = FastAPI()

    def audited(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(audit, "access")
        sent.send_email.delay("dependency@b.c")

    @app.post("/signup/{email}", dependencies=[Depends(audited)])
    def signup(email: str, background_tasks: BackgroundTasks) -> dict[str, bool]:
        background_tasks.add_task(audit, "signup")
        sent.send_email.delay(email)  # site:celery-endpoint
        return {"sent_before_response": bool([d for d in done if d[0] == "send_email"])}

    @app.post("/later/{email}")
    def later(email: str, background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(sent.send_email.delay, email)
        return {}

    return app
