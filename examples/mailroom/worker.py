"""Mailroom's Celery app: where the welcome email goes once Mailroom runs a worker.

`celery -A mailroom.worker worker` runs it against `MAILROOM_CELERY_BROKER` (a Redis URL).
"""

from __future__ import annotations

from celery import Celery

from mailroom import config, tasks

celery = Celery("mailroom")
celery.conf.broker_connection_retry_on_startup = True


def configure() -> None:
    """Point the app at the broker the settings name (read when a task is sent, not at
    import, so that tests can set it)."""
    celery.conf.update(broker_url=config.settings.celery_broker)


@celery.task(name="mailroom.send_welcome_email")
def send_welcome_email(email: str) -> None:
    tasks.send_welcome_email(email)
