"""Fixtures for Mailroom's tests: a real SMTP server and an app on a fresh SQLite file.

pytest-bgtasks' `bg_client` fixture wraps the `app` fixture below in a TestClient with
background task capture active.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from fastapi import FastAPI

from mailroom import config, db
from mailroom.app import create_app


class SMTPServer:
    """An SMTP server on the loopback interface that keeps every message it receives.

    aiosmtpd's protocol runs on an event loop of its own, in a thread, so the app's
    synchronous `smtplib` calls can reach it from any test.
    """

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.host = "127.0.0.1"
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> None:
        self._thread.start()
        # Port 0: the OS picks a free port, so parallel test runs never collide.
        serve = self._loop.create_server(lambda: SMTP(self), self.host, 0)
        self._server = asyncio.run_coroutine_threadsafe(serve, self._loop).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def close(server: asyncio.Server) -> None:
            server.close()
            await server.wait_closed()

        if self._server is not None:
            asyncio.run_coroutine_threadsafe(close(self._server), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append(email.message_from_bytes(envelope.content, policy=default_policy))
        return "250 Message accepted for delivery"


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


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (`@pytest.mark.anyio`) run on asyncio."""
    return "asyncio"
