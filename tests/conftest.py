from __future__ import annotations

from collections.abc import Iterator

import pytest

import apps

# Import the core now, so the in-process pytester runs of this suite (which drop the modules
# they import) share it with the rest of the session.
import pytest_bgtasks._capture
import pytest_bgtasks._starlette  # noqa: F401


@pytest.fixture(autouse=True)
def _empty_ran() -> Iterator[None]:
    apps.ran.clear()
    yield
    apps.ran.clear()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytester, whose child sessions run without hypothesis' pytest plugin: it imports all of
    hypothesis at the end of every session (about a second in each subprocess run), and no
    child session here uses it."""
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:hypothesispytest")
    return pytester
