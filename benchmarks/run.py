"""Run the pytest-bgtasks benchmarks: `python benchmarks/run.py [--quick] [--only NAME ...]`.

Prints one line per goal (the measured figure as median [interquartile range], the goal, PASS
or MISS, the figures behind it, the method), secondary figures indented below it, then the
Markdown for the docs: the machine and its load, a summary table of the goals and the tables
of the request grid. Every ratio and difference is taken round by round between variants run
side by side (a warm-up, then rounds in rotating order), against plain Starlette with the plugin
not installed. Exits 0 whatever the verdicts (benchmarks report, they do not gate); 1 when a
benchmark crashed. `--quick` runs each one small, as the test suite's smoke check does: its
figures mean nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable

import bench_assert
import bench_celery
import bench_deferred
import bench_fixture
import bench_memory
import bench_requests
import bench_unused
from _common import Report, Result, Table, command_line, load, machine, markdown_row, today

BENCHMARKS: dict[str, Callable[[bool], Report]] = {
    "requests": bench_requests.run,
    "deferred": bench_deferred.run,
    "assert": bench_assert.run,
    "memory": bench_memory.run,
    "fixture": bench_fixture.run,
    "unused": bench_unused.run,
    "celery": bench_celery.run,
}

SUMMARY_HEADER = ["benchmark", "goal", "measured", "verdict", "figures", "method"]


def docs(results: list[Result], tables: list[Table], started: str, minutes: float) -> str:
    lines = [
        f"Measured {today()} with `{command_line()}` on {machine()}; load average (1, 5, 15 "
        f"minutes) {started} at the start, {load()} at the end; {minutes:.1f} minutes.",
        "",
        "Each figure is a median [interquartile range] over rounds; ratios and differences are "
        "taken round by round, against plain Starlette with the plugin not installed.",
        "",
        markdown_row(SUMMARY_HEADER),
        markdown_row(["---"] * len(SUMMARY_HEADER)),
        *(markdown_row(result.row()) for result in results),
    ]
    for table in tables:
        lines += ["", table.markdown()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small N: a smoke check, seconds")
    parser.add_argument(
        "--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks"
    )
    options = parser.parse_args(argv)
    started, start = load(), time.monotonic()
    print(f"{machine()}; load average {started}", flush=True)
    results: list[Result] = []
    tables: list[Table] = []
    crashed = False
    for name in options.only or BENCHMARKS:
        try:
            report = BENCHMARKS[name](options.quick)
        except Exception:
            crashed = True
            print(f"{name}: CRASHED", flush=True)
            traceback.print_exc()
            continue
        for result in report.results:
            print(result.line(), flush=True)
            for note in result.notes:
                print(f"    {note}", flush=True)
        results += report.results
        tables += report.tables
    print()
    print(docs(results, tables, started, (time.monotonic() - start) / 60))
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
