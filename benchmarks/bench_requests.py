"""Request overhead: `TestClient` requests to an endpoint that adds 3 background tasks, with a
capture active vs the plugin disabled.

The baseline is the same app and the same client with no capture active and Starlette
unpatched, as in a session that never uses the plugin. All variants run in one process, switched
with `_starlette.install()`/`uninstall()` (which put Starlette's own functions back, exactly), so
they share one warm interpreter, one app and one client event loop, and alternate a few seconds
apart. Separate processes would add start-up and import noise larger than the effect measured.

Clock: process CPU time (`process_time_ns`), the work of every thread of the process: the client
runs the app on an event loop thread of its own, and the plugin's work is CPU work there. Wall
time, what a user waits for, is a secondary figure; it also counts the moments the threads wait
for each other or for a core that other work on the machine holds.
"""

from __future__ import annotations

from time import perf_counter_ns, process_time_ns

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

    def timed(client: TestClient) -> tuple[int, int]:
        """(CPU ns, wall ns) of the requests."""
        done.clear()
        cpu, wall = process_time_ns(), perf_counter_ns()
        for user in range(requests):
            client.post(f"/signup/{user}")
        cpu, wall = process_time_ns() - cpu, perf_counter_ns() - wall
        assert len(done) == TASKS_PER_REQUEST * requests, "every task runs in every variant"
        return cpu, wall

    with TestClient(make_app()) as client:

        def unpatched() -> tuple[int, int]:
            _starlette.uninstall()
            return timed(client)

        def captured() -> tuple[int, int]:
            with BackgroundTaskCapture() as capture:  # installs the patches
                elapsed = timed(client)
            assert len(capture.tasks) == TASKS_PER_REQUEST * requests
            return elapsed

        def inactive() -> tuple[int, int]:
            _starlette.install()
            return timed(client)

        try:
            samples = alternate(
                {"unpatched": unpatched, "captured": captured, "inactive": inactive}, rounds
            )
        finally:
            _starlette.uninstall()

    cpu = {name: median([c for c, _ in v]) / requests / 1000 for name, v in samples.items()}
    wall = {name: median([w for _, w in v]) / requests / 1000 for name, v in samples.items()}
    overhead = ratio(cpu["captured"], cpu["unpatched"])
    return Result(
        name="request overhead",
        measured=f"ratio {overhead:.3f}",
        goal=f"<= {GOAL}",
        passed=overhead <= GOAL,
        figures=(
            f"capture active {cpu['captured']:.1f} µs/request, "
            f"plugin disabled {cpu['unpatched']:.1f} µs/request"
        ),
        method=(
            f"{rounds} rounds x {requests} requests, {TASKS_PER_REQUEST} async tasks each, "
            "medians, process CPU time"
        ),
        notes=[
            f"patched but inactive vs disabled: ratio "
            f"{ratio(cpu['inactive'], cpu['unpatched']):.3f} "
            f"({cpu['inactive']:.1f} vs {cpu['unpatched']:.1f} µs/request)",
            f"wall time: ratio {ratio(wall['captured'], wall['unpatched']):.3f} "
            f"({wall['captured']:.1f} vs {wall['unpatched']:.1f} µs/request)",
        ],
    )
