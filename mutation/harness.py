"""A pytest plugin for mutmut's runs only: `[tool.mutmut] pytest_add_cli_args` loads it.

mutmut runs the tests in its `mutants/` copy of the project, with that copy first on `sys.path`,
and sends each call of a mutated function through a trampoline that picks the original or the
mutant named by `MUTANT_UNDER_TEST`. Two things keep the tests as they are without mutmut:

- The trampoline's frames are hidden from pytest's tracebacks, like the plugin's own frames
  (`__tracebackhide__`), so output the tests check stays the same. The plugin counts them as
  library frames, like its own, when it tells whether a task's exception reached the test.
- A test that starts a fresh Python (pytester's `runpytest_subprocess`, `subprocess.run` of
  `sys.executable`) would import the original `pytest_bgtasks` through the editable install.
  It gets `PYTHONPATH` pointing at the copy, so it runs the same mutant (it inherits
  `MUTANT_UNDER_TEST`), and `PYTEST_PLUGINS` naming this plugin, for the hidden frames.
  Not while mutmut maps tests to functions (`MUTANT_UNDER_TEST=stats`): its bookkeeping does
  not work outside `mutants/`, and a child process' calls would not be counted anyway.

While mutmut maps tests to functions, the sources are also dropped after each test, so that the
next test that captures makes and installs them afresh. The plugin makes them once a session,
so mutmut would map their making (`__init__`, `install`, the patches) to the first test that
captured, and run only that test against a mutant of it; this way every test that captures
counts. The mutants themselves run with the plugin as it is.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import mutmut.mutation.trampoline
import pytest

import pytest_bgtasks

COPY = str(Path(pytest_bgtasks.__file__).resolve().parent.parent)
"""The directory the mutated package is imported from: mutmut's `mutants/`."""

# pytest also reads __tracebackhide__ from a frame's globals: the trampoline's frames are hidden.
mutmut.mutation.trampoline.__tracebackhide__ = True  # type: ignore[attr-defined]  # not declared there


@pytest.fixture(autouse=True)
def _subprocesses_run_the_mutant(monkeypatch: pytest.MonkeyPatch) -> None:
    if os.environ.get("MUTANT_UNDER_TEST", "stats") != "stats":
        path = os.environ.get("PYTHONPATH")
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([COPY, path] if path else [COPY]))
        monkeypatch.setenv("PYTEST_PLUGINS", __name__)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup() -> None:
    _trampolines_are_library_frames()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call() -> None:
    _trampolines_are_library_frames()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown() -> Generator[None, None, None]:
    _trampolines_are_library_frames()
    yield
    if os.environ.get("MUTANT_UNDER_TEST") == "stats":
        state: Any = sys.modules.get("pytest_bgtasks._state")
        live = state.current() if state is not None else None
        if live is not None and not live.captures:
            live.uninstall()  # the next capture makes the sources again


def _trampolines_are_library_frames() -> None:
    # Once the core is imported (not before: a session that never uses the plugin imports
    # nothing of it, and a test checks that).
    findings: Any = sys.modules.get("pytest_bgtasks._findings")
    if findings is not None and "mutmut." not in findings.LIBRARY_MODULES:
        findings.LIBRARY_MODULES = (*findings.LIBRARY_MODULES, "mutmut.")
    for name in ("pytest_bgtasks.sources.starlette", "pytest_bgtasks.sources.celery"):
        _mutmut_is_framework(sys.modules.get(name))


def _mutmut_is_framework(source: Any) -> None:
    if source is not None and "mutmut." not in source._FRAMEWORK:
        source._FRAMEWORK = (*source._FRAMEWORK, "mutmut.")
        # Frames already looked at were judged without it: judge them again.
        state: Any = sys.modules.get("pytest_bgtasks._state")
        live = state.current() if state is not None else None
        for each in live.sources.values() if live is not None else ():
            getattr(each, "framework", {}).clear()
