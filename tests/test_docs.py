"""Every code block of the documentation runs here, so the manual cannot drift from the code.

The documentation is the site (`mkdocs.yml`, the pages of `docs/`) and the README, which is
also the package's page on PyPI. In both:

- ```python blocks start with `# <file>.py`. The site's blocks, page after page in the order of
  its nav, are one small project (the Capture page's `conftest.py` serves every page); the
  README's are another. Each file is written once per project; every test passes, except those
  whose output a ```text block shows.
- ```text blocks follow `<!-- output of <file>.py::<test> -->`: running that test alone prints
  those lines, in that order.
- ```toml blocks are a pyproject.toml that pytest accepts with --strict-config.
- ```sh blocks follow `<!-- <name> -->`, and `SH_BLOCKS` below checks each by its name against
  the project's files: the install commands, the two commands that `.ci/run` runs, the command
  that runs one environment of the version matrix...

`docs/maintainers/development.md` says the same for contributors.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

import pytest_bgtasks

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest depends on tomli before Python 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MKDOCS = (ROOT / "mkdocs.yml").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
CI = (ROOT / ".ci" / "run").read_text()


def _site_url() -> str:
    match = re.search(r"^site_url: (\S+)$", MKDOCS, re.M)
    assert match is not None, "mkdocs.yml names no site_url"
    return match[1]


SITE_URL = _site_url()


def site_pages() -> list[Path]:
    """The site's pages, in the order of the nav of mkdocs.yml."""
    nav = MKDOCS.split("\nnav:\n", 1)[1].split("\n\n", 1)[0]
    return [DOCS / name for name in re.findall(r":\s+(\S+\.md)$", nav, re.M)]


@dataclass
class Block:
    language: str
    text: str
    note: str  # the HTML comment right before the block, if any
    path: Path
    line: int

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def filename(self) -> str:
        first = self.text.splitlines()[0]
        assert first.startswith("# "), f"{self.where}: name the file on line 1"
        return first[2:].strip()


BLOCK = re.compile(r"(?:<!-- (?P<note>[^\n]+?) -->\n)?```(?P<language>\w+)\n(?P<text>.*?)```", re.S)


def blocks_of(path: Path) -> list[Block]:
    text = path.read_text()
    return [
        Block(
            match["language"],
            match["text"],
            match["note"] or "",
            path,
            text.count("\n", 0, match.start()) + 1,
        )
        for match in BLOCK.finditer(text)
    ]


def site_blocks() -> list[Block]:
    return [block for page in site_pages() for block in blocks_of(page)]


def all_blocks() -> list[Block]:
    return blocks_of(README) + site_blocks()


PROJECTS: dict[str, Callable[[], list[Block]]] = {
    "site": site_blocks,
    "README": lambda: blocks_of(README),
}
"""The blocks of each project: every ```python block of one is a file of the same directory."""


def test_the_nav_lists_every_page_once() -> None:
    pages = site_pages()
    assert len(pages) == len(set(pages))
    assert sorted(pages) == sorted(DOCS.rglob("*.md"))


def test_every_block_is_of_a_kind_this_file_runs() -> None:
    for block in all_blocks():
        assert block.language in {"python", "sh", "text", "toml"}, block.where
        if block.language == "text":
            assert block.note.startswith("output of "), block.where
        if block.language == "sh":
            assert block.note in SH_BLOCKS, f"{block.where}: no check for sh block {block.note!r}"
        if block.language in {"python", "toml"}:
            assert block.filename, block.where


# -- the python and text blocks ------------------------------------------------------------------


def write_project(pytester: pytest.Pytester, blocks: list[Block]) -> list[str]:
    """Writes the ```python blocks; returns the node ids of the tests they define."""
    nodeids = []
    for block in blocks:
        if block.language != "python":
            continue
        path = pytester.path / block.filename
        assert not path.exists(), f"{block.where}: {block.filename} written twice"
        path.write_text(block.text)
        names = re.findall(r"^(?:async )?def (test_\w+)", block.text, re.M)
        nodeids += [f"{block.filename}::{name}" for name in names]
    return nodeids


@pytest.mark.slow
@pytest.mark.parametrize("project", PROJECTS)
def test_python_blocks_pass_and_show_their_output(pytester: pytest.Pytester, project: str) -> None:
    blocks = PROJECTS[project]()
    nodeids = write_project(pytester, blocks)
    assert nodeids, f"the {project} defines no tests"
    outputs = {
        block.note.removeprefix("output of "): block for block in blocks if block.language == "text"
    }
    assert set(outputs) <= set(nodeids), "an output block names a test no block defines"
    files = sorted({nodeid.split("::")[0] for nodeid in nodeids if nodeid.startswith("test_")})
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", *files)
    summary = result.stdout.lines
    # A parametrized test passes or fails as a whole: its cases' ids are left out.
    passed = {_test_of(line) for line in summary if line.startswith("PASSED ")}
    failing = {_test_of(line) for line in summary if re.match(r"(FAILED|ERROR) \S+::", line)}
    assert failing - set(outputs) == set(), "\n".join(summary)
    assert set(nodeids) == passed | failing, "\n".join(summary)
    for nodeid, block in outputs.items():
        single = pytester.runpytest_subprocess("-p", "no:cacheprovider", nodeid)
        assert_in_order(block.text.splitlines(), single.stdout.lines, block.where)


def _test_of(line: str) -> str:
    return line.split()[1].partition("[")[0]


def assert_in_order(expected: list[str], output: list[str], where: str) -> None:
    position = 0
    for wanted in expected:
        for offset, actual in enumerate(output[position:], start=position):
            if wanted in actual:
                position = offset + 1
                break
        else:
            raise AssertionError(
                f"{where}: {wanted!r} is not in the output after line {position}:\n"
                + "\n".join(output)
            )


def test_the_readme_quick_start_is_the_getting_started_one() -> None:
    (readme,) = [block.text for block in blocks_of(README) if block.language == "python"]
    getting_started = [block.text for block in blocks_of(DOCS / "index.md")]
    assert readme in getting_started


def test_toml_blocks_are_accepted_by_pytest(pytester: pytest.Pytester) -> None:
    (block,) = [block for block in all_blocks() if block.language == "toml"]
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


# -- the sh blocks -------------------------------------------------------------------------------


def sh_blocks(note: str) -> list[Block]:
    found = [block for block in all_blocks() if block.language == "sh" and block.note == note]
    assert found, f"no sh block follows <!-- {note} -->"
    return found


def lines_of(note: str) -> list[str]:
    """The lines of the sh blocks named `note`, which must all say the same."""
    texts = {block.text.strip() for block in sh_blocks(note)}
    assert len(texts) == 1, f"the sh blocks <!-- {note} --> differ"
    return texts.pop().splitlines()


def extras_in(command: str) -> list[str]:
    """The extras a `pip install "...[extra,...]"` command names; each must exist."""
    (extras,) = re.findall(r'\[([\w,-]+)\]"', command)
    names = extras.split(",")
    assert set(names) <= set(PROJECT["optional-dependencies"]), command
    return names


def check_install_from_a_clone() -> None:
    clone, install = lines_of("install from a clone")
    source = PROJECT["urls"]["Source"]
    assert clone == f"git clone {source}.git"
    directory = source.rsplit("/", 1)[1]
    assert install == f'python -m pip install "./{directory}[testclient]"'
    assert extras_in(install) == ["testclient"]


def check_install_from_a_wheel() -> None:
    build, install = lines_of("install from a wheel")
    directory = PROJECT["urls"]["Source"].rsplit("/", 1)[1]
    assert build == f"python -m pip install build && python -m build {directory}"
    # The name `python -m build` gives the wheel: the distribution's name, normalized.
    wheel = f"{PROJECT['name'].replace('-', '_')}-{PROJECT['version']}-py3-none-any.whl"
    assert install == f'python -m pip install "{directory}/dist/{wheel}[testclient]"'
    assert extras_in(install) == ["testclient"]


def check_install_from_pypi() -> None:
    (install,) = lines_of("install from PyPI, once released")
    assert install == f'python -m pip install "{PROJECT["name"]}[testclient]"'
    assert extras_in(install) == ["testclient"]


def check_the_two_commands() -> None:
    example, suite = lines_of("commands")
    setup = 'python3 -m venv .venv && .venv/bin/python -m pip install -q -e ".[{}]" && '
    assert example == setup.format("demo") + ".venv/bin/python -m pytest examples -v"
    assert suite == setup.format("test") + ".venv/bin/python -m pytest"
    # The whole suite runs the example too (once: no test runs it again).
    assert "examples" in PYPROJECT["tool"]["pytest"]["ini_options"]["testpaths"]
    # .ci/run reads both commands from the README and runs them.
    assert "<!-- commands -->" in CI
    assert re.search(r"^for n in 0 1; do$", CI, re.M)


def check_the_matrix_command() -> None:
    (command,) = lines_of("matrix")
    program, name = command.split(" --only ")
    assert program == "python3 .ci/matrix.py"
    environments = [env.name for env in matrix_module().ENVS]
    assert name in environments
    section = (DOCS / "maintainers" / "versions.md").read_text().split("## The version matrix")[1]
    rows = re.findall(r"^\| `([\w.-]+)` \|", section, re.M)
    assert rows == environments


def matrix_module() -> ModuleType:
    """.ci/matrix.py, imported."""
    spec = importlib.util.spec_from_file_location("ci_matrix", ROOT / ".ci" / "matrix.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def check_the_quick_loop() -> None:
    (command,) = lines_of("quick loop")
    assert command == '.venv/bin/python -m pytest -m "not slow"'
    markers = PYPROJECT["tool"]["pytest"]["ini_options"]["markers"]
    assert any(marker.startswith("slow: ") for marker in markers)


def check_the_docs_command() -> None:
    (command,) = lines_of("docs")
    assert command == (
        '.venv/bin/python -m pip install -q -e ".[docs]" && .venv/bin/mkdocs build --strict'
    )
    assert extras_in(command) == ["docs"]
    assert "mkdocs build --strict" in CI


def check_the_distributions_command() -> None:
    (command,) = lines_of("distributions")
    assert command == (
        '.venv/bin/python -m pip install -q -e ".[release]" && .venv/bin/python -m build && '
        ".venv/bin/python -m twine check --strict dist/*"
    )
    assert extras_in(command) == ["release"]
    assert '-m build --outdir "$work/dist"' in CI
    assert '-m twine check --strict "$work/dist"/*' in CI


def check_install_the_celery_extra() -> None:
    (install,) = lines_of("install the celery extra")
    directory = PROJECT["urls"]["Source"].rsplit("/", 1)[1]
    assert install == f'python -m pip install "./{directory}[testclient,celery]"'
    assert extras_in(install) == ["testclient", "celery"]


SH_BLOCKS: dict[str, Callable[[], None]] = {
    "install from a clone": check_install_from_a_clone,
    "install from a wheel": check_install_from_a_wheel,
    "install from PyPI, once released": check_install_from_pypi,
    "install the celery extra": check_install_the_celery_extra,
    "commands": check_the_two_commands,
    "matrix": check_the_matrix_command,
    "quick loop": check_the_quick_loop,
    "docs": check_the_docs_command,
    "distributions": check_the_distributions_command,
}
"""Each named sh block, and the check that it says what the project's files do."""


@pytest.mark.parametrize("note", SH_BLOCKS)
def test_sh_blocks_say_what_the_project_does(note: str) -> None:
    SH_BLOCKS[note]()


def test_the_install_commands_are_in_the_readme_and_on_the_getting_started_page() -> None:
    for note in (
        "install from a clone",
        "install from a wheel",
        "install from PyPI, once released",
    ):
        assert {block.path for block in sh_blocks(note)} == {README, DOCS / "index.md"}


# -- the README, the package's page on PyPI ------------------------------------------------------


def test_the_readme_is_a_front_page() -> None:
    text = README.read_text()
    words = len(text.split())  # as `wc -w` counts them, code blocks included
    assert words <= 1500, f"the README has {words} words"
    assert SITE_URL in text


def test_the_readme_links_are_absolute_and_reach_the_site() -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    assert links
    for link in links:
        assert link.startswith("https://"), f"a relative link breaks on PyPI: {link}"
        if link.startswith(SITE_URL):
            assert_lands(link)


def assert_lands(link: str) -> None:
    """A link to the site, or to the README on GitHub, names a page and an anchor that exist."""
    readme = f"{PROJECT['urls']['Source']}#"
    if link.startswith(readme):
        assert link.removeprefix(readme) in anchors(README), link
        return
    page, _, anchor = link.removeprefix(SITE_URL).partition("#")
    path = DOCS / (f"{page.rstrip('/')}.md" if page else "index.md")
    assert path.exists(), link
    if anchor:
        assert anchor in anchors(path), link


def test_the_links_in_the_plugins_messages_land() -> None:
    """Messages and help texts that send the user to the manual send them to a place that
    exists, on the site or in the README."""
    pattern = rf"(?:{re.escape(SITE_URL)}|{re.escape(PROJECT['urls']['Source'])}#)[\w/#.-]*"
    package = Path(pytest_bgtasks.__file__).parent
    links = [
        link.rstrip(".")
        for path in sorted(package.rglob("*.py"))
        for link in re.findall(pattern, path.read_text())
    ]
    for link in links:
        assert_lands(link)


def anchors(page: Path) -> set[str]:
    """The ids a page's headings and explicit anchors give, as MkDocs makes them."""
    text = page.read_text()
    found = set(re.findall(r'<a id="([^"]+)"></a>', text))
    for heading in re.findall(r"^#+ (.+)$", BLOCK.sub("", text), re.M):
        explicit = re.search(r"\{ #([\w-]+) \}$", heading)
        if explicit:
            found.add(explicit[1])
        else:
            slug = re.sub(r"[^\w\s-]", "", heading).strip().lower()
            found.add(re.sub(r"[-\s]+", "-", slug))
    return found


# -- anchors that messages and other pages link to -----------------------------------------------


def test_every_option_has_its_anchor(pytester: pytest.Pytester) -> None:
    """Each ini and command-line option of the plugin has an anchor of its own name on the
    Configuration page: `.../configuration/#bgtasks_mode`, `.../configuration/#--bgtasks-mode`."""
    help_text = pytester.runpytest("--help").stdout.str()
    options = set(re.findall(r"^  (bgtasks_\w+) \(", help_text, re.M))
    options |= set(re.findall(r"^  (--bgtasks-[\w-]+)", help_text, re.M))
    assert {"bgtasks_mode", "--bgtasks-mode", "bgtasks_app_fixture"} <= options
    assert options <= anchors(DOCS / "configuration.md")


def test_the_findings_have_their_anchors() -> None:
    assert {"dropped", "ran-again", "hidden-failure", "misuse", "left-unrun", "warnings"} <= (
        anchors(DOCS / "catches.md")
    )


def test_the_api_reference_documents_every_public_name_by_its_public_path() -> None:
    """Keyed on `pytest_bgtasks.NAME`, not on the module that defines it, the reference stays
    right when the core modules move."""
    shown = re.findall(r"^::: (\S+)$", (DOCS / "reference.md").read_text(), re.M)
    assert sorted(shown) == sorted(f"pytest_bgtasks.{name}" for name in pytest_bgtasks.__all__)
