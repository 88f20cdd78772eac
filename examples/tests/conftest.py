"""Fixtures for Mailroom's tests: a real SMTP server and an app on a fresh SQLite file.

pytest-bgtasks' `bg_client` fixture wraps the `app` fixture below in a TestClient with
background task capture active.
"""

from __future__ import annotations

import dataclasses
import email
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from fastapi import FastAPI
from mailroom import config, db
from mailroom.app import create_app


class SMTPServer:
    """An SMTP server on the loopback interface that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self._controller = _LoopbackController(
            self, hostname="127.0.0.1", port=0, server_hostname="localhost"
        )

    @property
    def host(self) -> str:
        return str(self._controller.hostname)

    @property
    def port(self) -> int:
        return int(self._controller.port)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append(email.message_from_bytes(envelope.content, policy=default_policy))
        return "250 Message accepted for delivery"


class _LoopbackController(Controller):
    """Binds to port 0 so the OS picks a free port, with no window for another process to
    take it. aiosmtpd checks readiness by connecting to `self.port`, so set the real port
    from the bound socket first."""

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@pytest.fixture
def smtp_server() -> Iterator[SMTPServer]:
    server = SMTPServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def app(smtp_server: SMTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    settings = dataclasses.replace(
        config.settings,
        smtp_host=smtp_server.host,
        smtp_port=smtp_server.port,
        database=tmp_path / "mailroom.db",
    )
    monkeypatch.setattr(config, "settings", settings)
    # The app also creates the schema at startup; doing it here too means clients that
    # skip the lifespan (httpx.AsyncClient with ASGITransport) find the tables ready.
    db.init_schema()
    return create_app()
