"""Run the pytest-bgtasks benchmarks: `python benchmarks/run.py [--quick] [--only NAME ...]`.

Prints one line per benchmark (the measured figure, the goal, PASS or MISS, the absolute
figures), secondary figures indented below it, then a Markdown table for the README. Each ratio
compares variants measured side by side in this run: alternating rounds, medians, a warm-up
first. Exits 0 whatever the verdicts (benchmarks report, they do not gate); 1 when a benchmark
crashed. `--quick` runs each one small, as the test suite's smoke check does.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable

import bench_capture
import bench_lookup
import bench_requests
import bench_unused
from _common import Result, command_line, machine, today

BENCHMARKS: dict[str, Callable[[bool], Result]] = {
    "requests": bench_requests.run,
    "unused": bench_unused.run,
    "capture": bench_capture.run,
    "lookup": bench_lookup.run,
}


def table(results: list[Result]) -> str:
    lines = [
        f"Measured {today()} with `{command_line()}` on {machine()}.",
        "",
        "| benchmark | goal | measured | verdict | figures | method |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r.name} | {r.goal} | {r.measured} | {r.verdict} | {r.figures} | {r.method} |"
        for r in results
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small N: a smoke check, seconds")
    parser.add_argument(
        "--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks"
    )
    options = parser.parse_args(argv)
    results: list[Result] = []
    crashed = False
    for name in options.only or BENCHMARKS:
        try:
            result = BENCHMARKS[name](options.quick)
        except Exception:
            crashed = True
            print(f"{name}: CRASHED", flush=True)
            traceback.print_exc()
            continue
        results.append(result)
        print(result.line(), flush=True)
        for note in result.notes:
            print(f"    {note}", flush=True)
    print()
    print(table(results))
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
