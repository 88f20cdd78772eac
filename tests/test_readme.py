"""Every code block of the README runs here, so the manual cannot drift from the code.

- ```python blocks start with `# <file>.py`; together they are one small project whose tests
  must pass, except those whose output a ```text block shows.
- ```text blocks follow `<!-- output of <file>.py::<test> -->`: running that test prints
  those lines, in that order.
- ```toml blocks are a pyproject.toml that pytest accepts with --strict-config.
- ```sh blocks are the install command, the two commands that `.ci/run` runs, and the command
  that runs one environment of the version matrix.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


@dataclass
class Block:
    language: str
    text: str
    note: str  # the HTML comment right before the block, if any
    line: int

    @property
    def filename(self) -> str:
        first = self.text.splitlines()[0]
        assert first.startswith("# "), f"README line {self.line}: name the file on line 1"
        return first[2:].strip()


def blocks() -> list[Block]:
    found = []
    pattern = re.compile(
        r"(?:<!-- (?P<note>.+?) -->\n)?```(?P<language>\w+)\n(?P<text>.*?)```", re.S
    )
    text = README.read_text()
    for match in pattern.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(match["language"], match["text"], match["note"] or "", line))
    return found


def of(language: str) -> list[Block]:
    return [block for block in blocks() if block.language == language]


def test_every_block_is_of_a_kind_this_file_runs() -> None:
    kinds = {block.language for block in blocks()}
    assert kinds == {"python", "sh", "text", "toml"}
    for block in of("text"):
        assert block.note.startswith("output of "), f"README line {block.line}"


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    for block in of("python"):
        path = pytester.path / block.filename
        assert not path.exists(), f"README line {block.line}: {block.filename} written twice"
        path.write_text(block.text)
    return pytester


def test_python_blocks_pass_and_show_their_output(project: pytest.Pytester) -> None:
    outputs = {block.note.removeprefix("output of "): block for block in of("text")}
    files = sorted(p.name for p in project.path.glob("test_*.py"))
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-rA", *files)
    summary = result.stdout.lines
    for nodeid in outputs:
        assert any(re.match(rf"(FAILED|ERROR) {re.escape(nodeid)}\b", line) for line in summary), (
            nodeid
        )
    failing = [line for line in summary if re.match(r"(FAILED|ERROR) ", line)]
    unexpected = [line for line in failing if line.split()[1] not in outputs]
    assert unexpected == []
    passed = [line for line in summary if line.startswith("PASSED ")]
    assert len(passed) >= 12
    for nodeid, block in outputs.items():
        single = project.runpytest_subprocess("-p", "no:cacheprovider", nodeid)
        assert_in_order(block.text.splitlines(), single.stdout.lines, block.line)


def assert_in_order(expected: list[str], output: list[str], line: int) -> None:
    position = 0
    for wanted in expected:
        for offset, actual in enumerate(output[position:], start=position):
            if wanted in actual:
                position = offset + 1
                break
        else:
            raise AssertionError(
                f"README line {line}: {wanted!r} is not in the output after line {position}:\n"
                + "\n".join(output)
            )


def test_toml_blocks_are_accepted_by_pytest(pytester: pytest.Pytester) -> None:
    (block,) = of("toml")
    assert block.filename == "pyproject.toml"
    pytester.makefile(".toml", pyproject=block.text)
    pytester.makepyfile(
        """
        import pytest

        @pytest.fixture
        def api():
            from fastapi import FastAPI
            return FastAPI()

        def test_settings(bg_client, bgtasks):
            assert bgtasks.mode == "defer"
        """
    )
    result = pytester.runpytest("--strict-config")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["bgtasks: mode=defer"])


def test_the_install_command_names_this_distribution() -> None:
    (install,) = [block.text.strip() for block in of("sh") if not block.note]
    name = re.search(r'^name = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert name is not None
    assert install == f"pip install {name[1]}"


def commands() -> list[str]:
    (block,) = [block for block in of("sh") if block.note == "commands"]
    return block.text.strip().splitlines()


def test_the_two_commands_are_what_ci_runs() -> None:
    example, suite = commands()
    setup = 'python3 -m venv .venv && .venv/bin/python -m pip install -q -e ".[test]" && '
    assert example == setup + ".venv/bin/python -m pytest examples -v"
    assert suite == setup + ".venv/bin/python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- commands -->" in ci  # .ci/run reads the commands from the README


def test_the_example_command_passes() -> None:
    """The first command, in this environment (the second is this suite itself)."""
    pytest_part = commands()[0].split(" -m pytest ", 1)[1]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *pytest_part.split(), "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\n=+ \d+ passed in ", result.stdout), result.stdout


def matrix_environments() -> list[str]:
    listed = subprocess.run(
        [sys.executable, ".ci/matrix.py", "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split()[0] for line in listed.splitlines()]


def test_the_matrix_command_names_an_environment_and_the_table_lists_them_all() -> None:
    (block,) = [block for block in of("sh") if block.note == "matrix"]
    command, name = block.text.strip().split(" --only ")
    assert command == "python3 .ci/matrix.py"
    environments = matrix_environments()
    assert name in environments
    section = README.read_text().split("## Supported versions\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([\w.-]+)` \|", section, re.M)
    assert rows == environments
