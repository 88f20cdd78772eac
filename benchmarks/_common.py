"""What every benchmark shares: alternating rounds, medians, the result line, the machine."""

from __future__ import annotations

import datetime
import gc
import os
import platform
import statistics
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import TypeVar

T = TypeVar("T")


@dataclass
class Result:
    """One benchmark's verdict and figures, printed as one line and one table row."""

    name: str
    measured: str
    """The figure the goal is about: `ratio 1.031`, `412.0 ms`."""
    goal: str
    passed: bool
    figures: str
    """The absolute figures behind it, for the line and the table."""
    method: str
    """Sizes, rounds and clock."""
    notes: list[str] = field(default_factory=list)
    """Secondary figures, one line each."""

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "MISS"

    def line(self) -> str:
        return (
            f"{self.name}: {self.measured} (goal {self.goal}) {self.verdict} | "
            f"{self.figures} | {self.method}"
        )


def alternate(variants: Mapping[str, Callable[[], T]], rounds: int) -> dict[str, list[T]]:
    """Run each variant once untimed (warm-up), then `rounds` rounds of all of them.

    A variant sets itself up and returns what it measured, so its set-up is not timed. The
    order rotates from round to round (A B, B A, A B, ...; A B C, B C A, ...) so no variant
    always runs first, and a change of load on the machine hits every variant alike.
    """
    names = list(variants)
    for name in names:
        variants[name]()
    samples: dict[str, list[T]] = {name: [] for name in names}
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            samples[name].append(variants[name]())
    return samples


def median(values: list[int] | list[float]) -> float:
    return float(statistics.median(values))


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("inf")


def machine() -> str:
    """One line: CPU model, cores, OS, Python, Starlette and FastAPI versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            models = [line.split(":", 1)[1] for line in info if line.startswith("model name")]
        cpu = models[0].strip() if models else cpu
    except OSError:
        pass
    versions = []
    for package in ("starlette", "fastapi", "pytest"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} not installed")
    python = f"{platform.python_implementation()} {platform.python_version()}"
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"{python}, {', '.join(versions)}"
    )


def today() -> str:
    return datetime.date.today().isoformat()


def command_line() -> str:
    return " ".join(["python benchmarks/run.py", *sys.argv[1:]])
