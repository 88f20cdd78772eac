"""Unused-plugin overhead: a generated suite of trivial tests that never use the plugin, run by
pytest with the plugin installed vs `-p no:bgtasks`.

Each run is a fresh `python -m pytest` subprocess, the two variants alternating, both without the
other installed pytest plugins. Clock: the CPU time of the subprocess (user and system,
`resource.getrusage(RUSAGE_CHILDREN)`), what the plugin adds to the work of a run, undisturbed by
other work on the machine; wall time, what a user waits for, is a secondary figure (it also
counts the moments the run waits for a core).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from time import perf_counter_ns

from _common import Result, alternate, median, ratio

GOAL = 1.02
TESTS_PER_FILE = 50

# One test checks the variant is what it claims and that the plugin's core stays unimported.
CHECK = """
import os
import sys


def test_plugin_is_registered_as_expected_and_unused(request):
    expected = os.environ["BENCH_EXPECT_PLUGIN"] == "1"
    assert request.config.pluginmanager.has_plugin("bgtasks") is expected
    assert "pytest_bgtasks._capture" not in sys.modules
    assert "pytest_bgtasks._starlette" not in sys.modules
"""


def other_plugins() -> list[str]:
    """The names of the installed pytest plugins other than this one."""
    found = metadata.entry_points(group="pytest11")
    return sorted({entry.name for entry in found if entry.name != "bgtasks"})


OTHERS_OFF = [option for name in other_plugins() for option in ("-p", f"no:{name}")]
"""Both variants run without the other installed plugins (this project's test extra has several,
some of which import a lot at start-up): only pytest and this plugin, or pytest alone."""


def write_suite(directory: Path, tests: int) -> None:
    """`tests` trivial tests in files of TESTS_PER_FILE, the check being one of them."""
    (directory / "pytest.ini").write_text("[pytest]\n")  # stop the search for a config file
    (directory / "test_check.py").write_text(CHECK)
    remaining = tests - 1
    for number in range(0, remaining, TESTS_PER_FILE):
        count = min(TESTS_PER_FILE, remaining - number)
        body = "".join(
            f"def test_{number + i}():\n    assert {number + i} + 1 > {number + i}\n\n\n"
            for i in range(count)
        )
        (directory / f"test_generated_{number // TESTS_PER_FILE:03}.py").write_text(body)


def run_suite(directory: Path, with_plugin: bool) -> tuple[int, float]:
    """(wall ns, children's CPU seconds) of one pytest run over the suite."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["BENCH_EXPECT_PLUGIN"] = "1" if with_plugin else "0"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *OTHERS_OFF]
    if not with_plugin:
        command += ["-p", "no:bgtasks"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = perf_counter_ns()
    completed = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True)
    elapsed = perf_counter_ns() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stdout}{completed.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def run(quick: bool) -> Result:
    tests, rounds = (20, 1) if quick else (500, 9)
    with tempfile.TemporaryDirectory(prefix="bgtasks-bench-") as name:
        directory = Path(name)
        write_suite(directory, tests)
        samples = alternate(
            {
                "installed": lambda: run_suite(directory, with_plugin=True),
                "disabled": lambda: run_suite(directory, with_plugin=False),
            },
            rounds,
        )
    wall = {key: median([ns for ns, _ in values]) / 1e6 for key, values in samples.items()}
    cpu = {key: median([s for _, s in values]) * 1000 for key, values in samples.items()}
    overhead = ratio(cpu["installed"], cpu["disabled"])
    return Result(
        name="unused-plugin overhead",
        measured=f"ratio {overhead:.3f}",
        goal=f"<= {GOAL}",
        passed=overhead <= GOAL,
        figures=(
            f"installed {cpu['installed']:.0f} ms/run, -p no:bgtasks {cpu['disabled']:.0f} ms/run"
        ),
        method=(
            f"{rounds} rounds x {tests} trivial tests, pytest subprocesses, medians, "
            "CPU time of the subprocess"
        ),
        notes=[
            f"wall time: ratio {ratio(wall['installed'], wall['disabled']):.3f} "
            f"({wall['installed']:.0f} vs {wall['disabled']:.0f} ms/run)"
        ],
    )
