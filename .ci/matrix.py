"""The version matrix: the test suite in a fresh virtual environment per supported combination of
Python, Starlette, FastAPI, httpx and pytest, against the built wheel (not the source tree).

    python3 .ci/matrix.py                 # every environment, two at a time
    python3 .ci/matrix.py --only lowest   # one environment (names: --list)
    python3 .ci/matrix.py --dist dist     # with the sdist and wheel that `python -m build` made

Needs Python >= 3.11 to run (it reads pyproject.toml) and uv (`--uv PATH`, or on PATH). Each
environment gets a new venv under `.venvs/matrix/NAME/`, made by uv from one of this machine's
interpreters; the project's dependencies and its `test` extra are installed with the
environment's pins, then the wheel built from this tree. One line per environment says what
was resolved, how many tests passed and failed, and how long it took; the last line totals them.
Exits 1 when any environment failed (no tests collected counts as failed). A failing
environment's log is printed after the table and kept in its directory.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parent.parent
SHOWN = ("starlette", "fastapi", "httpx", "httpx2", "pytest", "anyio", "celery")
"""The packages whose resolved versions each result line shows."""


@dataclasses.dataclass(frozen=True)
class Env:
    name: str
    python: str
    pins: tuple[str, ...] = ()
    """Requirements added to the project's own and its test extra's."""
    without: tuple[str, ...] = ()
    """Packages of the test extra left out on purpose."""
    constraints: tuple[str, ...] = ()
    """Limits on packages the project does not depend on directly."""
    lowest: bool = False
    """Resolve every direct requirement to the lowest version its declared range allows, and
    install the wheel that the oldest allowed build backend built."""
    pytest_args: tuple[str, ...] = ()
    dist: str | None = None
    """"wheel" or "sdist": install the project from that artifact with the extra `extra`, check
    the entry point, and run the example suite (with `pytest_args`) from the unpacked sdist
    instead of the whole suite."""
    extra: str = "test"
    """The extra installed with a `dist` environment's artifact."""
    alone: bool = False
    """Runs with nothing beside it: it starts test processes of its own (pytest-xdist)."""

    def describe(self) -> str:
        """One line: name, Python, and how it differs from the latest of everything."""
        notes = [*self.pins, *(f"no {name}" for name in self.without)]
        if self.pytest_args:
            notes.append(f"pytest {' '.join(self.pytest_args)}")
        if self.lowest:
            notes.insert(0, "lowest-direct resolution")
        if self.dist:
            notes.insert(0, f"from the {self.dist} with the {self.extra} extra, the example suite")
        if self.constraints:
            notes.append(f"(with {', '.join(self.constraints)})")
        return f"{self.name:<18} python {self.python}  {' '.join(notes) or 'latest'}"


ERA_OF_THE_LOWEST = ("pydantic<2.4", "trio<0.22")
"""FastAPI 0.100 allows any Pydantic 2, but with Pydantic 2.4 and newer it warns
(DeprecationWarning) at import; anyio 3 runs on trio before 0.22 (its own `trio` extra)."""

ENVS = (
    Env(
        "lowest",
        "3.10",
        (
            "starlette==0.27.0",
            "fastapi==0.100.0",
            "httpx==0.27.0",
            "pytest==8.0.0",
            "anyio==3.7.0",
            "celery==5.3.0",
            "kombu==5.3.0",
            "redis==4.6.0",
        ),
        constraints=ERA_OF_THE_LOWEST,
        pytest_args=("--assert=plain",),
    ),
    Env("lowest-direct", "3.10", lowest=True, constraints=ERA_OF_THE_LOWEST),
    # BaseHTTPMiddleware swallows a task's exception (Starlette 0.29 to 0.45); FastAPI runs a
    # yield dependency's exit code before the response (0.106 to 0.117); the last pytest 8.
    Env(
        "starlette-0.37",
        "3.12",
        ("starlette~=0.37.0", "fastapi~=0.110.0", "pytest<9"),
        # anyio 4.4 and newer warn (ResourceWarning) about memory streams that Starlette 0.37
        # leaves unclosed.
        constraints=("anyio<4.4",),
    ),
    Env("starlette-0.46", "3.12", ("starlette~=0.46.0", "fastapi~=0.115.0", "pytest<9")),
    # FastAPI 0.118 moved a yield dependency's exit code back after the response.
    Env("fastapi-0.117", "3.12", ("fastapi~=0.117.0",)),
    Env("fastapi-0.118", "3.12", ("fastapi~=0.118.0",)),
    # Celery 5.3 on Python 3.12: the datetime deprecations it causes there stay its own.
    Env("celery-5.3", "3.12", ("celery~=5.3.0",)),
    # The whole suite under pytest-xdist too.
    Env("latest-3.11", "3.11", pytest_args=("-n", "2"), alone=True),
    Env("latest-3.13", "3.13"),
    Env("latest-3.13-httpx", "3.13", without=("httpx2",)),
    # No FastAPI: tests/conftest.py leaves out the modules built on FastAPI apps, and the
    # example (a FastAPI service) is not collected.
    Env("starlette-only", "3.13", without=("fastapi",), pytest_args=("tests",)),
    # The wheel with only what the README's first command installs, as a new user would run the
    # example; the sdist with the whole test extra, the example under pytest-xdist.
    Env("wheel", "3.11", dist="wheel", extra="demo", alone=True),
    Env("sdist", "3.13", dist="sdist", pytest_args=("-n", "4"), alone=True),
)


@dataclasses.dataclass
class Result:
    env: Env
    ok: bool = False
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    python: str = ""
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    problem: str = ""
    log: Path | None = None

    def line(self) -> str:
        shown = "  ".join(f"{name} {self.versions.get(name, '-')}" for name in SHOWN)
        counts = f"{self.passed} passed, {self.failed} failed"
        if self.skipped:
            counts += f", {self.skipped} skipped"
        verdict = "ok" if self.ok else f"FAILED ({self.problem})" if self.problem else "FAILED"
        return (
            f"{self.env.name:<18} py{self.python:<8} {shown}  {counts}  "
            f"{self.seconds:4.0f}s  {verdict}"
        )


class Failure(Exception):
    """A step of an environment failed; the message says which."""


# -- one environment ----------------------------------------------------------------------------


def requirements(env: Env) -> list[str]:
    import tomllib  # Python 3.11 and newer; `--list` runs on any

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    left_out = {_name(name) for name in env.without}
    return [req for req in wanted if _name(req) not in left_out] + list(env.pins)


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match is not None, requirement
    return match[0].lower().replace("_", "-")


class Runner:
    def __init__(self, uv: str, base: Path, artifacts: dict[str, Path]) -> None:
        self.uv = uv
        self.base = base
        self.artifacts = artifacts

    def run(self, env: Env) -> Result:
        result = Result(env)
        home = self.base / env.name
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        result.log = home / "log.txt"
        started = time.monotonic()
        try:
            self._run(env, home, Step(result.log, home), result)
        except Failure as exc:
            result.problem = str(exc)
        result.seconds = time.monotonic() - started
        return result

    def _run(self, env: Env, home: Path, step: Step, result: Result) -> None:
        python = home / "venv" / "bin" / "python"
        step(
            "create venv",
            [self.uv, "venv", "-q", "--python", interpreter(env.python), home / "venv"],
        )
        install = [self.uv, "pip", "install", "--python", python]
        if env.dist is not None:
            artifact = self.artifacts[env.dist].as_uri()
            step("install", [*install, f"pytest-bgtasks[{env.extra}] @ {artifact}"])
        else:
            resolution = ["--resolution", "lowest-direct"] if env.lowest else []
            constraints = home / "constraints.txt"
            constraints.write_text("".join(f"{line}\n" for line in env.constraints))
            step(
                "install requirements",
                [*install, *resolution, "--constraint", constraints, *requirements(env)],
            )
            wheel = self.artifacts["wheel-oldest-backend" if env.lowest else "wheel"]
            step("install wheel", [*install, "--no-deps", wheel])
        listed = step("list", [self.uv, "pip", "list", "--python", python, "--format", "json"])
        result.versions = {item["name"].lower(): item["version"] for item in json.loads(listed)}
        result.python = step(
            "python version", [python, "-c", "import platform; print(platform.python_version())"]
        ).strip()
        pytest = home / "venv" / "bin" / "pytest"
        junit = home / "junit.xml"
        common = ["-p", "no:cacheprovider", f"--junitxml={junit}"]
        if env.dist is None:
            # The console script, not `python -m pytest`: the source tree stays off sys.path,
            # so the tests import the installed wheel.
            run = step.run("pytest", [pytest, *common, *env.pytest_args], cwd=ROOT)
        else:
            source = unpack_sdist(self.artifacts["sdist"], home / "source")
            check_distribution(step, home, python, pytest, self.artifacts)
            run = step.run("examples", [pytest, *common, *env.pytest_args, "examples"], cwd=source)
        code = run.returncode
        result.passed, result.failed, result.skipped = junit_counts(junit)
        if code != 0 or result.failed or not result.passed:
            raise Failure(f"pytest exited {code}")
        result.ok = True


class Step:
    """Runs commands for one environment, their output appended to its log."""

    TIMEOUT = 1200
    """Seconds one command may take: a hung one fails its environment, not the whole run."""

    def __init__(self, log: Path, home: Path) -> None:
        self.log = log
        self.home = home

    def __call__(self, what: str, command: Sequence[object], cwd: Path | None = None) -> str:
        """Its standard output; Failure when it exits non-zero."""
        completed = self.run(what, command, cwd)
        if completed.returncode != 0:
            raise Failure(f"{what} failed")
        return completed.stdout

    def run(
        self, what: str, command: Sequence[object], cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        args = [str(part) for part in command]
        self._write(f"\n$ {' '.join(args)}\n")
        try:
            completed = subprocess.run(
                args,
                cwd=cwd or self.home,
                env=clean_environment(),
                capture_output=True,
                text=True,
                check=False,
                timeout=self.TIMEOUT,
            )
        except subprocess.TimeoutExpired as exc:
            parts = (exc.stdout, exc.stderr)  # bytes, whatever `text` says
            output = "".join(p.decode() if isinstance(p, bytes) else p for p in parts if p)
            self._write(f"{output}\n[{what}: timed out]\n")
            raise Failure(f"{what} took over {self.TIMEOUT}s") from None
        self._write(f"{completed.stdout}{completed.stderr}[{what}: exit {completed.returncode}]\n")
        return completed

    def _write(self, text: str) -> None:
        with self.log.open("a") as log:
            log.write(text)


def clean_environment() -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTEST_ADDOPTS", "PYTHONHOME")
    }
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env["UV_NO_PROGRESS"] = "1"
    return env


def junit_counts(junit: Path) -> tuple[int, int, int]:
    if not junit.exists():
        return 0, 0, 0
    root = ElementTree.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = failed = skipped = 0
    for suite in suites:
        total += int(suite.get("tests", 0))
        failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
    return total - failed - skipped, failed, skipped


# -- the built distributions --------------------------------------------------------------------


def build(uv: str, out: Path, given: Path | None = None) -> dict[str, Path]:
    """The sdist and the wheel built from it (those in `given`, when it names a directory of
    them); and a wheel built by the oldest build backend that `build-system.requires` allows,
    for the lowest-direct environment."""
    import tomllib

    shutil.rmtree(out, ignore_errors=True)
    command = [uv, "build", "-q", str(ROOT), "--out-dir"]
    if given is None:
        subprocess.run([*command, out], check=True, env=clean_environment())
    else:
        out.mkdir(parents=True)
    (wheel,) = (given or out).glob("*.whl")
    (sdist,) = (given or out).glob("*.tar.gz")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    oldest = out / "oldest-backend"
    oldest.mkdir()
    constraints = oldest / "constraints.txt"
    constraints.write_text("".join(f"{req.replace('>=', '==')}\n" for req in requires))
    subprocess.run(
        [*command, oldest, "--wheel", "--build-constraint", constraints],
        check=True,
        env=clean_environment(),
    )
    (wheel_of_oldest,) = oldest.glob("*.whl")
    return {"wheel": wheel, "sdist": sdist, "wheel-oldest-backend": wheel_of_oldest}


def unpack_sdist(sdist: Path, into: Path) -> Path:
    """The sdist's files, without the package itself: tests there import the installed one."""
    with tarfile.open(sdist) as archive:
        archive.extractall(into, filter="data")
    (source,) = into.iterdir()
    shutil.rmtree(source / "pytest_bgtasks")
    return source


def check_distribution(
    step: Step, home: Path, python: Path, pytest: Path, artifacts: dict[str, Path]
) -> None:
    """The installed distribution is complete and pytest finds the plugin by its entry point."""
    with zipfile.ZipFile(artifacts["wheel"]) as wheel:
        names = wheel.namelist()
        (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
        if "bgtasks = pytest_bgtasks.plugin" not in wheel.read(entry_points).decode():
            raise Failure("the wheel declares no pytest11 entry point")
    if "pytest_bgtasks/py.typed" not in names:
        raise Failure("the wheel lacks py.typed")
    where = step("import", [python, "-c", "import pytest_bgtasks; print(pytest_bgtasks.__file__)"])
    if "site-packages" not in where:
        raise Failure(f"pytest_bgtasks imported from {where.strip()}")
    empty = home / "empty"
    empty.mkdir()
    help_text = step("pytest --help", [pytest, "--help"], cwd=empty)
    if "--bgtasks-mode=MODE" not in help_text or "bgtasks_mode (string)" not in help_text:
        raise Failure("pytest --help does not list the plugin's options")
    (empty / "test_uses_the_fixture.py").write_text("def test_it(bgtasks):\n    pass\n")
    enabled = step("the plugin on", [pytest], cwd=empty)
    if "bgtasks: mode=run" not in enabled or "1 passed" not in enabled:
        raise Failure("the plugin is not active in a plain session")
    disabled = step.run("-p no:bgtasks", [pytest, "-p", "no:bgtasks"], cwd=empty)
    output = disabled.stdout
    if (
        disabled.returncode != 1
        or "fixture 'bgtasks' not found" not in output
        or "bgtasks: mode" in output
    ):
        raise Failure("-p no:bgtasks does not disable the plugin")


# -- interpreters -------------------------------------------------------------------------------


def interpreter(version: str) -> str:
    """This machine's Python `version`: `pythonX.Y` on PATH if it runs, else pyenv's."""
    candidates = [shutil.which(f"python{version}") or ""]
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"))
    for candidate in candidates:
        if candidate and _runs(candidate, version):
            return candidate
    raise Failure(f"no Python {version} on this machine")


def _runs(python: str, version: str) -> bool:
    check = "import sys; print('%d.%d' % sys.version_info[:2])"
    try:
        completed = subprocess.run(
            [python, "-c", check], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return False
    return completed.returncode == 0 and completed.stdout.strip() == version


# -- the whole matrix ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these environments")
    parser.add_argument("--list", action="store_true", help="list the environments and exit")
    parser.add_argument("--uv", default=shutil.which("uv"), help="the uv executable")
    parser.add_argument("--jobs", type=int, default=2, help="environments at a time (2)")
    parser.add_argument(
        "--dir", type=Path, default=ROOT / ".venvs" / "matrix", help="where the venvs go"
    )
    parser.add_argument(
        "--dist",
        type=Path,
        metavar="DIR",
        help="test the sdist and wheel in DIR (from `python -m build`) instead of building them",
    )
    options = parser.parse_args(argv)
    names = [env.name for env in ENVS]
    if options.list:
        for env in ENVS:
            print(env.describe())
        return 0
    unknown = sorted(set(options.only or ()) - set(names))
    if unknown:
        parser.error(f"unknown environment {', '.join(unknown)}; one of: {', '.join(names)}")
    if options.uv is None:
        parser.error("uv not found: pass --uv PATH")
    chosen = [env for env in ENVS if options.only is None or env.name in options.only]

    started = time.monotonic()
    options.dir.mkdir(parents=True, exist_ok=True)
    artifacts = build(options.uv, options.dir / "dist", options.dist and options.dist.resolve())
    runner = Runner(options.uv, options.dir, artifacts)
    print(
        f"{len(chosen)} environments, {options.jobs} at a time; logs in {options.dir}", flush=True
    )
    results: list[Result] = []

    def report(result: Result) -> None:
        results.append(result)
        print(result.line(), flush=True)

    together = [env for env in chosen if not env.alone]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, options.jobs)) as pool:
        for future in concurrent.futures.as_completed(
            [pool.submit(runner.run, env) for env in together]
        ):
            report(future.result())
    for env in chosen:
        if env.alone:
            report(runner.run(env))

    failed = [result for result in results if not result.ok]
    for result in failed:
        assert result.log is not None
        print(f"\n---- {result.env.name}: {result.problem or 'failed'}; last lines of {result.log}")
        print("\n".join(result.log.read_text().splitlines()[-80:]))
    passed = sum(result.passed for result in results)
    failures = sum(result.failed for result in results)
    print(
        f"\n{len(results) - len(failed)} of {len(results)} environments passed "
        f"in {time.monotonic() - started:.0f}s"
    )
    print(f"matrix: {passed} passed, {failures + len([r for r in failed if not r.failed])} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
