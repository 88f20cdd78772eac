"""Mailroom settings, read from the environment once and looked up at call time."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    smtp_host: str = "localhost"
    smtp_port: int = 25
    mail_from: str = "Mailroom <hello@mailroom.example>"
    database: Path = Path("mailroom.db")
    celery_broker: str = ""
    """A Redis URL: welcome emails go through Celery there. Empty: through BackgroundTasks."""

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            smtp_host=os.environ.get("MAILROOM_SMTP_HOST", cls.smtp_host),
            smtp_port=int(os.environ.get("MAILROOM_SMTP_PORT", cls.smtp_port)),
            mail_from=os.environ.get("MAILROOM_MAIL_FROM", cls.mail_from),
            database=Path(os.environ.get("MAILROOM_DATABASE", cls.database)),
            celery_broker=os.environ.get("MAILROOM_CELERY_BROKER", cls.celery_broker),
        )


# Code reads `config.settings` when it needs a value, never at import time,
# so replacing this object (as the tests do) takes effect everywhere.
settings = Settings.from_env()
