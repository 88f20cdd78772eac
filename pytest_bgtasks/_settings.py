"""The settings a test runs with, shared by the plugin and the core (and nothing else: the
plugin imports this module at start-up, so it stays free of anything heavy)."""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

Mode = Literal["run", "defer", "skip", "worker"]
"""What happens to a task no rule matches, when its response would run it. "worker" sends
Celery tasks to a real worker; BackgroundTasks run as in "run"."""
MODES: tuple[Mode, ...] = get_args(Mode)
OnDropped = Literal["fail", "warn", "ignore"]
"""What teardown does about a task its response never carried."""
ON_DROPPED: tuple[OnDropped, ...] = get_args(OnDropped)


@dataclasses.dataclass(frozen=True)
class Settings:
    """One test's settings: the ini and command line, with its markers applied."""

    mode: Mode = "run"
    on_dropped: OnDropped = "fail"
    allow_failures: bool = False
    assert_all_run: bool = False


def check_mode(mode: object) -> Mode:
    for known in MODES:
        if mode == known and isinstance(mode, str):
            return known
    raise ValueError(f"Unknown background task mode {mode!r}; expected one of: {', '.join(MODES)}.")
