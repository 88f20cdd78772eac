from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator

import pytest

import apps
from pytest_bgtasks import BackgroundTaskCapture

# Load the core and its Starlette source now (a capture started and stopped), so that the
# in-process pytester runs of this suite (which drop the modules they import) share them with
# the rest of the session.
with BackgroundTaskCapture():
    pass

if importlib.util.find_spec("fastapi") is None:
    # FastAPI is optional, and the matrix's starlette-only environment proves it: there, the
    # modules built on FastAPI apps are left out, and the rest (the plain-Starlette tests, the
    # assertions, properties, async and xdist suites) run.
    collect_ignore = [
        "test_benchmarks.py",
        "test_capture.py",
        "test_celery.py",
        "test_celery_more.py",
        "test_clients.py",
        "test_docs.py",
        "test_fidelity.py",
        "test_hygiene.py",
        "test_load.py",
        "test_memory.py",
        "test_plugin.py",
        "test_situations.py",
    ]

CHILD_SESSION_PLUGINS_OFF = "-p no:hypothesispytest -p no:xdist -p no:randomly -p no:asyncio"
"""Plugins of the test extra that pytester's child sessions run without (a test about one of
them sets PYTEST_ADDOPTS itself): hypothesis' imports all of hypothesis at the end of every
session, xdist's costs half a second more in each subprocess run, pytest-randomly would shuffle
output that the tests read line by line, and pytest-asyncio, unconfigured, warns at start-up."""


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTEST_ADDOPTS", CHILD_SESSION_PLUGINS_OFF)
    return pytester


STARTED: list[str] = []
"""What this process started (subprocesses, other programs), in order, as Python's audit events
report it."""


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event in ("subprocess.Popen", "os.posix_spawn", "os.exec", "os.system"):
        STARTED.append(str(args[0]))


# Audit hooks cannot be removed: this one only appends to a list, for the fixture below.
sys.addaudithook(_audit)


@pytest.fixture(autouse=True)
def _slow_if_it_starts_a_process(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that starts a process (a pytest subprocess, a fresh Python) must be marked
    `slow`, so that `pytest -m "not slow"` stays a quick loop."""
    before = len(STARTED)
    yield
    started = STARTED[before:]
    if started and request.node.get_closest_marker("slow") is None:
        pytest.fail(
            f"This test started {started[0]!r}: mark it @pytest.mark.slow, so that "
            '`pytest -m "not slow"` leaves it out.',
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def _empty_ran() -> Iterator[None]:
    apps.ran.clear()
    yield
    apps.ran.clear()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
