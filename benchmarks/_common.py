"""What every benchmark shares: rotated rounds, medians and quartiles, the result line and the
tables, the machine and its load, plain Starlette, and pytest subprocess runs.

Every benchmark module imports this one before it starts a capture: on import it records
Starlette's own functions (and refuses to run if something patched them already), so that
`plain_starlette()` can prove each baseline runs on them.
"""

from __future__ import annotations

import datetime
import gc
import os
import platform
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from time import perf_counter_ns, thread_time_ns
from typing import Any, TypeVar

import starlette
from starlette.applications import Starlette
from starlette.background import BackgroundTask, BackgroundTasks

T = TypeVar("T")


# -- plain Starlette ----------------------------------------------------------------------------


def _starlette_functions() -> dict[str, Any]:
    """The Starlette functions that the plugin patches while it captures, as they are now."""
    found = {
        "BackgroundTask.__init__": BackgroundTask.__dict__["__init__"],
        "BackgroundTask.__call__": BackgroundTask.__dict__["__call__"],
        "BackgroundTasks.__init__": BackgroundTasks.__dict__["__init__"],
        "Starlette.__call__": Starlette.__dict__["__call__"],
    }
    try:  # Starlette >= 0.28
        from starlette import _exception_handler

        found["_lookup_exception_handler"] = _exception_handler._lookup_exception_handler
    except ImportError:  # Starlette 0.27
        from starlette.middleware.exceptions import ExceptionMiddleware

        found["_lookup_exception_handler"] = ExceptionMiddleware.__dict__[
            "_lookup_exception_handler"
        ]
    return found


STARLETTE_FUNCTIONS = _starlette_functions()
"""Starlette's own functions, recorded when this module is imported, before any capture."""

_STARLETTE_DIR = os.path.dirname(os.path.abspath(starlette.__file__))
_foreign = [
    name
    for name, function in STARLETTE_FUNCTIONS.items()
    if not os.path.abspath(function.__code__.co_filename).startswith(_STARLETTE_DIR)
]
if _foreign:
    raise RuntimeError(
        f"benchmarks/_common.py was imported after something patched Starlette ({_foreign}): "
        "import it before any capture starts."
    )


def plain_starlette() -> None:
    """Check that Starlette is plain, as in a process that never used the plugin.

    Outside pytest the plugin patches Starlette only while a capture is active, and puts back
    every function when the last one stops: between captures, this process runs plain
    Starlette, and this check proves it before each baseline.
    """
    now = _starlette_functions()
    patched = [name for name, function in STARLETTE_FUNCTIONS.items() if now[name] is not function]
    if patched:
        raise RuntimeError(f"Starlette is not plain: {', '.join(patched)} replaced")


# -- rounds and figures ---------------------------------------------------------------------------


def alternate(variants: Mapping[str, Callable[[], T]], rounds: int) -> dict[str, list[T]]:
    """Run each variant once untimed (warm-up), then `rounds` rounds of all of them.

    A variant sets itself up and returns what it measured, so its set-up is not timed. The
    order rotates from round to round (A B C, B C A, C A B, ...) so that no variant always runs
    first or after the same neighbour's garbage, and a change of load on the machine hits every
    variant alike. A full collection before each sample starts every variant from the same heap.
    The samples of one round sit at the same index, so figures can be paired round by round.
    """
    names = list(variants)
    for name in names:
        gc.collect()
        variants[name]()
    samples: dict[str, list[T]] = {name: [] for name in names}
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            samples[name].append(variants[name]())
    return samples


@dataclass(frozen=True)
class Spread:
    """A figure over rounds: its median and its interquartile range (first to third quartile)."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if len(values) == 1:
            return cls(values[0], values[0], values[0])
        low, median, high = statistics.quantiles(values, n=4, method="inclusive")
        return cls(median, low, high)

    def show(self, digits: int, unit: str = "") -> str:
        """`1.52x [1.49, 1.55]`: the median, then the interquartile range."""
        return f"{self.median:.{digits}f}{unit} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> Spread:
    """Round-by-round ratios of two variants measured side by side."""
    return Spread.of([n / d for n, d in zip(numerators, denominators, strict=True)])


def differences(
    minuends: Sequence[float], subtrahends: Sequence[float], scale: float = 1.0
) -> Spread:
    """Round-by-round differences of two variants measured side by side, times `scale`."""
    return Spread.of([(m - s) * scale for m, s in zip(minuends, subtrahends, strict=True)])


@dataclass
class Result:
    """One goal's verdict and figures, printed as one line and one row of the summary table."""

    name: str
    measured: Spread
    """The figure the goal is about, over rounds."""
    unit: str
    """Printed after the figure and the goal: `x`, ` µs`, ` ms`, ` bytes`."""
    digits: int
    goal: float
    """The largest median that passes."""
    figures: str
    """The figures behind it, for the line and the table."""
    method: str
    """What is compared, sizes, rounds and clock."""
    notes: list[str] = field(default_factory=list)
    """Secondary figures, one line each."""

    @property
    def passed(self) -> bool:
        return self.measured.median <= self.goal

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "MISS"

    @property
    def shown(self) -> str:
        return self.measured.show(self.digits, self.unit)

    @property
    def goal_shown(self) -> str:
        return f"<= {self.goal:g}{self.unit}"

    def line(self) -> str:
        return (
            f"{self.name}: {self.shown} (goal {self.goal_shown}) {self.verdict} | "
            f"{self.figures} | {self.method}"
        )

    def row(self) -> list[str]:
        return [self.name, self.goal_shown, self.shown, self.verdict, self.figures, self.method]


@dataclass
class Table:
    """A table of figures for the docs, beside the summary (the request grid)."""

    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [
            self.title,
            "",
            markdown_row(self.header),
            markdown_row(["---"] * len(self.header)),
        ]
        lines += [markdown_row(row) for row in self.rows]
        return "\n".join(lines)


def markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


@dataclass
class Report:
    """What one benchmark module measured: results with goals, and tables of detail."""

    results: list[Result] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)


class CollectorClock:
    """CPU time spent in the garbage collector, from its start and stop callbacks.

    A collection runs on one thread from start to stop, holding the GIL, so the thread's CPU
    clock measures it whichever thread triggered it.
    """

    def __init__(self) -> None:
        self.total = 0
        self._start = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = thread_time_ns()
        else:
            self.total += thread_time_ns() - self._start

    def __enter__(self) -> CollectorClock:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self)


# -- pytest subprocesses ------------------------------------------------------------------------


def other_plugins() -> list[str]:
    """The names of the installed pytest plugins other than this one."""
    found = metadata.entry_points(group="pytest11")
    return sorted({entry.name for entry in found if entry.name != "bgtasks"})


OTHERS_OFF = [option for name in other_plugins() for option in ("-p", f"no:{name}")]
"""pytest runs leave out the other installed plugins (this project's test extra has several,
some of which import a lot at start-up, xdist and randomly among them): pytest and this plugin
only, or pytest alone."""


LOOP_CLOCK = '''
import os
import time

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session):
    """The benchmark's clock of the test loop: CPU time from the first test to the last."""
    start = time.process_time_ns()
    try:
        return (yield)
    finally:
        with open(os.environ["BENCH_LOOP_CLOCK"], "w") as out:
            out.write(str(time.process_time_ns() - start))
'''
"""For the `conftest.py` of a generated suite: `run_pytest()` reads what it writes."""


@dataclass(frozen=True)
class PytestRun:
    cpu_ns: int
    """CPU time of the whole run, start-up and collection included."""
    wall_ns: int
    loop_ns: int
    """CPU time of the test loop alone (`LOOP_CLOCK`), from the first test to the last."""


def run_pytest(directory: Path, options: Sequence[str], env: Mapping[str, str]) -> PytestRun:
    """One `python -m pytest` run in `directory`, whose `conftest.py` has `LOOP_CLOCK`.

    CPU time is the child's user and system time (`RUSAGE_CHILDREN`, so the run alone), the
    work it did whatever else the machine was doing; wall time also counts its waits for a core.
    """
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    # Modules load from their bytecode caches, as on a developer's machine (the warm-up run
    # writes them): with PYTHONDONTWRITEBYTECODE set, every run would compile the plugin afresh
    # (and pytest would rewrite its modules afresh), a cost that only the installed variant pays.
    environment.pop("PYTHONDONTWRITEBYTECODE", None)
    environment.update(env)
    clock = directory / ".loop-clock"
    environment["BENCH_LOOP_CLOCK"] = str(clock)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *OTHERS_OFF]
    command += options
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = perf_counter_ns()
    completed = subprocess.run(
        command, cwd=directory, env=environment, capture_output=True, text=True
    )
    wall = perf_counter_ns() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stdout}{completed.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    loop = int(clock.read_text())
    clock.unlink()
    return PytestRun(round(cpu * 1e9), wall, loop)


# -- the machine ----------------------------------------------------------------------------------


def machine() -> str:
    """One line: CPU model, cores, OS, Python, and the versions of the frameworks measured."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            models = [line.split(":", 1)[1] for line in info if line.startswith("model name")]
        cpu = models[0].strip() if models else cpu
    except OSError:
        pass
    versions = []
    for package in ("starlette", "fastapi", "httpx", "anyio", "pytest"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} not installed")
    python = f"{platform.python_implementation()} {platform.python_version()}"
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"{python}, {', '.join(versions)}"
    )


def load() -> str:
    """The load averages over 1, 5 and 15 minutes, as `uptime` prints them."""
    try:
        return ", ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def today() -> str:
    return datetime.date.today().isoformat()


def command_line() -> str:
    return " ".join(["python benchmarks/run.py", *sys.argv[1:]])
