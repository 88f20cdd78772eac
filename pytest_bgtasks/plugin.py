"""pytest hooks, fixtures and the `bgtasks` marker. Everything else lives in the core, which
is imported only when a test uses the plugin."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import warnings
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from ._settings import MODES, ON_DROPPED, Settings

if TYPE_CHECKING:
    from starlette.testclient import TestClient

    from ._capture import BackgroundTaskCapture
    from ._findings import Finding

MARKER = (
    "bgtasks(*, mode=None, on_dropped=None, allow_failures=None, assert_all_run=None): "
    "capture background tasks in this test; mode is run, defer, skip or worker, on_dropped is "
    "fail, warn or ignore. See https://github.com/pytest-bgtasks/pytest-bgtasks#configuration"
)


class BackgroundTaskWarning(UserWarning):
    """A teardown finding reported as a warning (`on_dropped="warn"`)."""


def _marker_signature(
    *,
    mode: str | None = None,
    on_dropped: str | None = None,
    allow_failures: bool | None = None,
    assert_all_run: bool | None = None,
) -> dict[str, Any]:  # pragma: no mutate block (its TypeError names it)
    given = {
        "mode": mode,
        "on_dropped": on_dropped,
        "allow_failures": allow_failures,
        "assert_all_run": assert_all_run,
    }
    return {name: value for name, value in given.items() if value is not None}


_SETTINGS = pytest.StashKey[Settings]()
_CAPTURE = pytest.StashKey["BackgroundTaskCapture"]()
"""The test's capture, while its fixture is set up."""
_SECTION = pytest.StashKey[tuple[str, str]]()
"""The report section of the test's tasks, once its capture is gone: plain, and as shown."""
_SHOWN = pytest.StashKey[str]()
"""The section last added to a failing report, in plain text: JUnit XML gets it too."""
_FAILED = pytest.StashKey[bool]()
"""Whether the test failed (or xfailed) so far: its findings would only add to that."""
_USED = pytest.StashKey[bool]()

SECTION_TITLE = "Captured background tasks"
STYLES: dict[str, dict[str, bool]] = {
    "request": {"bold": True},
    "ran": {"green": True},
    "failed": {"red": True, "bold": True},
    "dropped": {"red": True},
    "not run": {"yellow": True},
    "cancelled": {"yellow": True},
    "pending": {"yellow": True},
    "deferred": {"cyan": True},
    "skipped": {"cyan": True},
}
"""How the report section is coloured on a terminal that shows colours (TerminalWriter.markup)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bgtasks", "background tasks (pytest-bgtasks)")
    group.addoption(
        "--bgtasks-mode",
        dest="bgtasks_mode",
        default=None,
        metavar="MODE",
        help="what happens to captured background tasks: run (default), defer, skip or worker.",
    )
    parser.addini(
        "bgtasks_mode",
        "default mode for captured tasks: run, defer, skip or worker.",
        default="run",
    )
    parser.addini(
        "bgtasks_on_dropped",
        "a task added but never carried by its response: fail (default), warn or ignore.",
        default="fail",
    )
    parser.addini(
        "bgtasks_allow_failures",
        "do not fail a test whose task raised an exception the test never saw.",
        type="bool",
        default=False,
    )
    parser.addini(
        "bgtasks_assert_all_run",
        "fail a test that leaves deferred tasks unrun.",
        type="bool",
        default=False,
    )
    parser.addini(
        "bgtasks_app_fixture",
        "name of the fixture that returns the ASGI app for bg_client (default: app).",
        default="app",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)
    mode = config.getoption("bgtasks_mode")
    source = "--bgtasks-mode"
    if mode is None:
        mode, source = config.getini("bgtasks_mode"), "ini bgtasks_mode"
    _check_choice(mode, MODES, source, pytest.UsageError)
    on_dropped = config.getini("bgtasks_on_dropped")
    _check_choice(on_dropped, ON_DROPPED, "ini bgtasks_on_dropped", pytest.UsageError)
    config.stash[_SETTINGS] = Settings(
        mode=mode,
        on_dropped=on_dropped,
        allow_failures=_ini_flag(config, "bgtasks_allow_failures"),
        assert_all_run=_ini_flag(config, "bgtasks_assert_all_run"),
    )


def _ini_flag(config: pytest.Config, name: str) -> bool:
    try:
        return bool(config.getini(name))
    except (TypeError, ValueError, pytest.UsageError) as exc:  # pytest says what it got
        raise pytest.UsageError(f"ini {name}: {exc}; expected one of: true, false.") from None


def _check_choice(
    value: object, choices: tuple[str, ...], source: str, error: type[Exception]
) -> None:
    if value not in choices:
        raise error(f"{source}: {value!r} is not one of: {', '.join(choices)}.")


def pytest_report_header(config: pytest.Config) -> str:
    return f"bgtasks: mode={config.stash[_SETTINGS].mode}"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # The marker alone turns capture on, as if the test requested the fixture. The list is a
    # copy: pytest shares one between the cases of a parametrized test.
    if (
        isinstance(item, pytest.Function)
        and "bgtasks" not in item.fixturenames
        and item.get_closest_marker("bgtasks")
    ):
        item.fixturenames = [*item.fixturenames, "bgtasks"]


class _Reports:
    """The hook a session needs once a test has used the plugin; registered then, so that the
    tests of a session that never uses it run without it."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        stash = item.stash
        capture = stash.get(_CAPTURE, None)
        if capture is None and _SECTION not in stash:
            return report
        if report.failed or hasattr(report, "wasxfail"):
            stash[_FAILED] = True
        if report.failed and report.when != "setup":
            texts = _section_texts(item.config, capture) if capture is not None else stash[_SECTION]
            plain, shown = texts
            report.sections.append((SECTION_TITLE, shown))
            stash[_SHOWN] = plain
        if report.when == "teardown" and _SHOWN in stash:
            # JUnit XML writes the properties of a test's last report (record_property's way).
            report.user_properties.append(("bgtasks", stash[_SHOWN]))
        return report


def _section_texts(config: pytest.Config, capture: BackgroundTaskCapture) -> tuple[str, str]:
    """The report section, plain and as the terminal shows it (in colour where it can)."""
    from ._messages import report_section

    records = capture.tasks
    plain = report_section(records)
    if not records:  # the same text in colour
        return plain, plain
    paint = _painter(config)
    return plain, plain if paint is None else report_section(records, paint)


def _painter(config: pytest.Config) -> Callable[[str, str], str] | None:
    if config.pluginmanager.get_plugin("terminalreporter") is None:  # -p no:terminal
        return None
    writer = config.get_terminal_writer()
    if not writer.hasmarkup:
        return None
    return lambda text, style: writer.markup(text, **STYLES.get(style, {}))


def _settings_for(item: pytest.Item) -> Settings:
    """The ini/CLI settings with the test's markers applied, the closest one winning."""
    try:
        merged = _marker_settings(item)
    except (TypeError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    else:
        settings = item.config.stash[_SETTINGS]
        return dataclasses.replace(settings, **merged) if merged else settings
    # Out of the except block, so the report shows the message once, with no chained error.
    pytest.fail(error, pytrace=False)


def _marker_settings(item: pytest.Item) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for marker in reversed(list(item.iter_markers("bgtasks"))):
        if marker.args:
            raise TypeError(
                f"@pytest.mark.bgtasks takes keyword arguments only, got {marker.args!r}."
            )
        try:
            merged.update(_marker_signature(**marker.kwargs))
        except TypeError as exc:
            message = str(exc).replace("_marker_signature()", "@pytest.mark.bgtasks()")
            raise TypeError(
                f"{message}; valid keywords: mode, on_dropped, allow_failures, assert_all_run."
            ) from None
    if "mode" in merged:
        _check_choice(merged["mode"], MODES, "@pytest.mark.bgtasks(mode=...)", ValueError)
    if "on_dropped" in merged:
        _check_choice(
            merged["on_dropped"], ON_DROPPED, "@pytest.mark.bgtasks(on_dropped=...)", ValueError
        )
    for flag in ("allow_failures", "assert_all_run"):
        if flag in merged and not isinstance(merged[flag], bool):
            raise TypeError(
                f"@pytest.mark.bgtasks({flag}=...) expects True or False, got {merged[flag]!r}."
            )
    return merged


def _first_use(config: pytest.Config) -> None:
    """The first test of the session that captures: hold the core's state for the session
    (Starlette stays patched, inert between captures), and put everything back at its end."""
    if config.stash.get(_USED, False):
        return
    config.stash[_USED] = True
    config.pluginmanager.register(_Reports(), "bgtasks-reports")
    from ._state import acquire, release_session

    session = _Session()
    enclosing = acquire(session, root=str(config.rootpath)).captures[:]
    config.add_cleanup(functools.partial(release_session, session, enclosing))


class _Session:
    """The pytest session, as a holder of the core's state."""


@pytest.fixture
def bgtasks(request: pytest.FixtureRequest) -> Iterator[BackgroundTaskCapture]:
    """Capture every background task scheduled during the test."""
    from ._capture import BackgroundTaskCapture

    settings = _settings_for(request.node)
    capture = BackgroundTaskCapture(mode=settings.mode)
    _first_use(request.config)
    capture.start()
    stash = request.node.stash
    stash[_CAPTURE] = capture
    stash[_FAILED] = False  # so far (a rerun of the test starts again)
    try:
        yield capture
        findings = capture.findings()  # before the capture stops what it started (a worker)
    finally:
        capture.stop()
        # The report keeps the text, not the records: they go with the test.
        stash[_SECTION] = _section_texts(request.config, capture)
        del stash[_CAPTURE]
    if stash[_FAILED]:
        return
    errors, warns = _complaints(findings, settings)
    for message in warns:
        warnings.warn(BackgroundTaskWarning(message), stacklevel=1)
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)


def _complaints(findings: list[Finding], settings: Settings) -> tuple[list[str], list[str]]:
    """The findings the settings make failures, and those they make warnings."""
    from ._messages import as_warning

    errors: list[str] = []
    warns: list[str] = []
    for finding in findings:
        if finding.kind in ("dropped", "ran_again"):
            if settings.on_dropped == "fail":
                errors.append(finding.message)
            elif settings.on_dropped == "warn":
                warns.append(as_warning(finding.kind, finding.message))
        elif finding.kind in ("hidden_failure", "did_nothing"):
            if not settings.allow_failures:
                errors.append(finding.message)
        elif settings.assert_all_run:
            errors.append(finding.message)
    return errors, warns


@pytest.fixture(scope="session")
def bgtasks_redis_url() -> Iterator[str]:
    """The URL of a real Redis-protocol server on 127.0.0.1, for the session: a Celery app's
    broker (and result backend) in the "worker" mode. BGTASKS_REDIS_URL names one to use
    instead of starting one."""
    from ._redis import RedisServer

    server = RedisServer()
    try:
        url = server.start()
    except RuntimeError as exc:
        problem = str(exc)
    else:
        try:
            yield url
        finally:
            server.stop()
        return
    # Out of the except block, so the report shows the message once, with no chained error.
    pytest.fail(problem, pytrace=False)


def _app(request: pytest.FixtureRequest) -> Any:
    """The app of the fixture the ini option names (`app` by default)."""
    __tracebackhide__ = True
    name = request.config.getini("bgtasks_app_fixture")
    try:
        return request.getfixturevalue(name)
    except pytest.FixtureLookupError as exc:
        if exc.argname != name:  # a fixture the app fixture needs: pytest says which
            raise
    # Out of the except block, so the report shows the message once, with no chained error.
    from ._messages import no_app_fixture

    fixture = "bg_client" if "bg_client" in request.fixturenames else "bg_client_factory"
    pytest.fail(no_app_fixture(fixture, name), pytrace=False)


@pytest.fixture
def bg_client_factory(
    request: pytest.FixtureRequest, bgtasks: BackgroundTaskCapture
) -> Iterator[Callable[..., TestClient]]:
    """Makes Starlette TestClients around the `app` fixture's app: `bg_client_factory(**options)`
    takes TestClient's keyword arguments (base_url, headers, raise_server_exceptions...) and
    returns a client entered as a context manager, so lifespan runs, with capture on. Every
    client it made is closed at teardown."""
    app = _app(request)
    from starlette.testclient import TestClient

    with contextlib.ExitStack() as clients:

        def bg_client_factory(**options: Any) -> TestClient:
            __tracebackhide__ = True
            if "app" in options:
                from ._messages import factory_app

                raise TypeError(factory_app(request.config.getini("bgtasks_app_fixture")))
            client = TestClient(app, **options)
            clients.enter_context(client)  # its lifespan starts; it returns the client itself
            return client

        yield bg_client_factory


@pytest.fixture
def bg_client(bg_client_factory: Callable[..., TestClient]) -> TestClient:
    """A Starlette TestClient around the `app` fixture's app, with lifespan and capture on."""
    return bg_client_factory()
