"""Request overhead: `TestClient` requests to an endpoint that adds 3 background tasks, with a
capture active vs the plugin disabled.

The baseline is the same app and the same client with no capture active and Starlette
unpatched, as in a session that never uses the plugin. All variants run in one process, switched
with `_starlette.install()`/`uninstall()` (which put Starlette's own functions back, exactly), so
they share one warm interpreter, one app and one client event loop, and alternate a few seconds
apart. Separate processes would add start-up and import noise larger than the effect measured.

Clock: wall time (`perf_counter_ns`). The client runs the app on its own event loop thread, so
the main thread's CPU time would miss the work, and process CPU time would count idle spinning.
"""

from __future__ import annotations

from time import perf_counter_ns

from _common import Result, alternate, median, ratio
from fastapi import BackgroundTasks, FastAPI
from starlette.testclient import TestClient

from pytest_bgtasks import BackgroundTaskCapture, _starlette

GOAL = 1.05
TASKS_PER_REQUEST = 3

done: list[int] = []


async def send_welcome_email(user: int) -> None:
    done.append(user)


async def audit(event: str, user: int) -> None:
    done.append(user)


def make_app() -> FastAPI:
    """An async endpoint with async tasks: no thread hop hides the plugin's share of the time."""
    app = FastAPI()

    @app.post("/signup/{user}")
    async def signup(user: int, background_tasks: BackgroundTasks) -> dict[str, int]:
        background_tasks.add_task(audit, "signup", user)
        background_tasks.add_task(send_welcome_email, user)
        background_tasks.add_task(audit, "welcome", user)
        return {"user": user}

    return app


def run(quick: bool) -> Result:
    requests, rounds = (20, 3) if quick else (300, 15)

    def timed(client: TestClient) -> int:
        done.clear()
        start = perf_counter_ns()
        for user in range(requests):
            client.post(f"/signup/{user}")
        elapsed = perf_counter_ns() - start
        assert len(done) == TASKS_PER_REQUEST * requests, "every task runs in every variant"
        return elapsed

    with TestClient(make_app()) as client:

        def unpatched() -> int:
            _starlette.uninstall()
            return timed(client)

        def captured() -> int:
            with BackgroundTaskCapture() as capture:  # installs the patches
                elapsed = timed(client)
            assert len(capture.tasks) == TASKS_PER_REQUEST * requests
            return elapsed

        def inactive() -> int:
            _starlette.install()
            return timed(client)

        try:
            samples = alternate(
                {"unpatched": unpatched, "captured": captured, "inactive": inactive}, rounds
            )
        finally:
            _starlette.uninstall()

    per_request = {name: median(values) / requests / 1000 for name, values in samples.items()}
    overhead = ratio(per_request["captured"], per_request["unpatched"])
    idle = ratio(per_request["inactive"], per_request["unpatched"])
    return Result(
        name="request overhead",
        measured=f"ratio {overhead:.3f}",
        goal=f"<= {GOAL}",
        passed=overhead <= GOAL,
        figures=(
            f"capture active {per_request['captured']:.1f} µs/request, "
            f"plugin disabled {per_request['unpatched']:.1f} µs/request"
        ),
        method=(
            f"{rounds} rounds x {requests} requests, {TASKS_PER_REQUEST} async tasks each, "
            "medians, wall time"
        ),
        notes=[
            f"patched but inactive vs unpatched: ratio {idle:.3f} "
            f"({per_request['inactive']:.1f} vs {per_request['unpatched']:.1f} µs/request)"
        ],
    )
