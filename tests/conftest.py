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
    """pytester, whose child sessions run without two plugins of the test extra that none of
    them uses (a test that does asks for it): hypothesis' imports all of hypothesis at the end
    of every session, xdist's costs half a second more in each subprocess run."""
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:hypothesispytest -p no:xdist")
    return pytester
