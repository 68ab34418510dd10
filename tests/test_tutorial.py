"""docs/tutorial.md is tested: its ```python blocks run in order, as one program.

The blocks share one namespace (like cells of a notebook) and may use
top-level `await`, which is compiled with `PyCF_ALLOW_TOP_LEVEL_AWAIT` and
awaited here, inside the test's event loop.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

TUTORIAL = Path(__file__).resolve().parent.parent / "docs" / "tutorial.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def python_blocks() -> list[str]:
    text = TUTORIAL.read_text(encoding="utf-8")
    return [body for lang, body in _FENCE.findall(text) if lang == "python"]


def test_tutorial_covers_the_toolkit() -> None:
    text = "\n".join(python_blocks())
    for needle in ("Aggregate", "Repository", "Projection", "upcaster", "forget", "Personal"):
        assert needle in text, needle


async def test_tutorial_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "tutorial"}
    blocks = python_blocks()
    assert len(blocks) >= 8
    for index, source in enumerate(blocks, 1):
        code = compile(
            source,
            f"docs/tutorial.md#block{index}",
            "exec",
            flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
            dont_inherit=True,  # not this file's `from __future__ import annotations`
        )
        result = eval(code, namespace)
        if inspect.iscoroutine(result):
            await result
    out = capsys.readouterr().out
    assert "conflict: the stream is now at version 2" in out
    assert "total_cents" in out
