"""The README is tested: its Python examples run, and its commands are the real ones.

Every block fenced as ```python runs on its own, in a fresh working directory
(so `sqlite:///tidelog-data/...` URLs land in a temporary folder). The two
commands the README opens with must be the install + serve and install + test
commands, and `.ci/run` must run exactly that test command.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import tidelog
from tidelog.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _blocks(lang: str) -> list[str]:
    return [body for fence, body in _FENCE.findall(README) if fence == lang]


PYTHON_BLOCKS = _blocks("python")


def test_readme_has_python_examples() -> None:
    assert len(PYTHON_BLOCKS) >= 2


@pytest.mark.parametrize("source", PYTHON_BLOCKS, ids=lambda s: s.splitlines()[-1][:40])
def test_python_block_runs(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code = compile(source, "README.md", "exec")
    exec(code, {"__name__": "__readme__"})
    out = capsys.readouterr().out
    assert out.strip(), "a README example should show its result"


def test_ten_line_example_reads_and_subscribes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(PYTHON_BLOCKS[0], "README.md", "exec"), {"__name__": "__readme__"})
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["0 OrderPlaced b'{\"total\": 42}'", "1 OrderPaid b''"]
    assert lines[2:] == ["live 1 order-42 OrderPlaced", "live 2 order-42 OrderPaid"]
    # The example writes to the embedded default engine, in the working directory.
    assert (tmp_path / "tidelog-data" / "shop.db").exists()


def test_ten_line_example_twice_meets_its_expected_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The README says so: a second run conflicts on NO_STREAM.
    monkeypatch.chdir(tmp_path)
    code = compile(PYTHON_BLOCKS[0], "README.md", "exec")
    exec(code, {"__name__": "__readme__"})
    with pytest.raises(tidelog.WrongExpectedVersion) as conflict:
        exec(code, {"__name__": "__readme__"})
    assert conflict.value.actual == 1


def test_readme_opens_with_the_two_commands() -> None:
    first = _FENCE.search(README)
    assert first is not None and first.group(1) == "bash"
    assert README.index(first.group(0)) < README.index("\n## "), "the commands come first"
    lines = [line for line in first.group(2).splitlines() if line.strip()]
    assert lines == [
        "python3 -m venv .venv && .venv/bin/pip install -e '.[server,apidocs]'"
        " && .venv/bin/tidelog serve",
        "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && .venv/bin/pytest",
    ]


def test_ci_runs_the_readme_test_command() -> None:
    first = _FENCE.search(README)
    assert first is not None
    test_command = first.group(2).splitlines()[1].rsplit("&& ", 1)[1]
    assert test_command == ".venv/bin/pytest"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    # The command itself, with no extra arguments (a wrapper such as `timeout` is fine).
    invocation = re.compile(r"(^|\s)" + re.escape(test_command) + r"(\s*$|\s+\|\|)")
    runs = [
        line
        for line in ci.splitlines()
        if invocation.search(line) and not line.lstrip().startswith(("#", "step", "echo"))
    ]
    assert len(runs) == 1, f".ci/run must run {test_command!r} exactly once: {runs}"


def test_readme_cli_commands_exist() -> None:
    import typer.main

    group = typer.main.get_group(app)
    cli_block = next(b for b in _blocks("bash") if "tidelog append" in b)
    used = {
        word
        for line in cli_block.splitlines()
        if line.startswith("tidelog ")
        for word in line.split()[1:]
        if word in group.commands
    }
    assert used >= {"append", "read", "log", "tail", "streams", "demo"}


def test_readme_links_resolve() -> None:
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if "://" in target:
            continue
        assert (ROOT / target).exists(), f"README links to missing {target}"
    index = ROOT / "docs" / "index.md"
    for target in re.findall(r"\]\(([^)#]+)\)", index.read_text(encoding="utf-8")):
        if "://" not in target:
            assert (index.parent / target).exists(), f"docs/index.md links to missing {target}"


def test_docs_pages_are_linked_from_readme_or_index() -> None:
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name == "index.md":
            continue
        assert f"docs/{page.name}" in README or f"({page.name})" in index, (
            f"docs/{page.name} is not linked from README.md or docs/index.md"
        )


def test_readme_says_how_long_a_hung_test_runs() -> None:
    """The README said ten minutes while `pyproject.toml` says 300 seconds (#14 walk-through)."""
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    seconds = pyproject["tool"]["pytest"]["ini_options"]["timeout"]
    words = {300: "five minutes", 600: "ten minutes"}[seconds]
    said = re.search(r"A test that hangs fails on its own after (\w+)\s+minutes", README)
    assert said is not None and f"{said.group(1)} minutes" == words
    assert f"`timeout = {seconds}`" in README
