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
