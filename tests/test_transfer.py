"""`tidelog export` and `tidelog import`: JSON lines and CloudEvents, on real SQLite files.

The commands run in-process through Typer's `CliRunner`, except the progress
bar, which needs a real terminal (a pseudo-terminal, in a subprocess).
"""

from __future__ import annotations

import asyncio
import base64
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest
from cloudevents.core.formats.json import JSONFormat
from typer.testing import CliRunner, Result

import tidelog
from tidelog._cloudevent_map import cloudevent_id
from tidelog.cli import app

BINARY = bytes(range(256))
"""Not UTF-8, not JSON: travels as base64."""


def invoke(url: str, *args: str, input: bytes | None = None) -> Result:
    return CliRunner().invoke(app, ["--store", url, *args], input=input)


def ok(url: str, *args: str, input: bytes | None = None) -> Result:
    result = invoke(url, *args, input=input)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def failed(result: Result) -> str:
    """The one-line error of a clean failure (status 1, no traceback)."""
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def url_in(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/{uuid4()}.db"


async def _populate(url: str) -> None:
    async with tidelog.connect(url) as store:
        await store.append(
            "order-1",
            [
                tidelog.NewEvent(type="Placed", data=b'{"total": 42, "note": "caf\xc3\xa9"}'),
                tidelog.NewEvent(type="Binary", data=BINARY, metadata={"correlationid": "c-1"}),
            ],
        )
        await store.append(
            "order-2",
            [
                tidelog.NewEvent(type="Empty", data=b""),
                tidelog.NewEvent(type="Spaced", data=b' {"a":\n 1} '),  # bytes kept exactly
                tidelog.NewEvent(
                    type="Versioned",
                    data=b"[1,2]",
                    metadata={"nested": {"k": [1, None, True]}, "traceparent": "00-ab-cd-01"},
                    schema_version=3,
                ),
            ],
        )
        await store.append("invoice-1", [tidelog.NewEvent(type="Text", data=b'"plain"')])
        await store.append("order-1", [tidelog.NewEvent(type="Paid", data=b"{}")])


def _identity(e: tidelog.RecordedEvent) -> tuple[Any, ...]:
    return (e.id, e.stream, e.version, e.type, e.data, e.metadata, e.schema_version)


async def _events(url: str) -> list[tidelog.RecordedEvent]:
    async with tidelog.connect(url) as store:
        return [e async for e in store.read_all()]


# --------------------------------------------------------------------------- jsonl


def test_round_trip_gives_identical_events_and_a_rerun_appends_nothing(tmp_path: Path) -> None:
    source, target = url_in(tmp_path), url_in(tmp_path)
    run(_populate(source))
    exported = tmp_path / "events.jsonl"
    result = ok(source, "export", "--output", str(exported))
    assert "exported 7 events" in result.stdout
    lines = exported.read_bytes().splitlines()
    assert len(lines) == 7  # one event per line, raw line feeds in data included
    first = msgspec.json.decode(lines[0])
    assert {"id", "stream", "type", "data", "metadata", "version", "position", "recorded_at"} <= (
        first.keys()
    )
    binary = msgspec.json.decode(lines[1])
    assert binary["data"] is None and base64.b64decode(binary["data_base64"]) == BINARY

    result = ok(target, "--json", "import", str(exported))
    assert msgspec.json.decode(result.stdout) == {"events": 7, "appended": 7, "already_stored": 0}
    originals, copies = run(_events(source)), run(_events(target))
    assert [_identity(e) for e in copies] == [_identity(e) for e in originals]
    assert [e.position for e in copies] == [e.position for e in originals]

    result = ok(target, "--json", "import", str(exported))  # idempotent by id
    assert msgspec.json.decode(result.stdout) == {"events": 7, "appended": 0, "already_stored": 7}
    assert [_identity(e) for e in run(_events(target))] == [_identity(e) for e in originals]


def test_export_to_stdout_filters_and_import_from_stdin(tmp_path: Path) -> None:
    source, target = url_in(tmp_path), url_in(tmp_path)
    run(_populate(source))
    everything = ok(source, "export").stdout_bytes
    assert everything == ok(source, "export", "--from", "0").stdout_bytes
    orders = ok(source, "export", "--category", "order", "--from", "3").stdout_bytes
    decoded = [msgspec.json.decode(line) for line in orders.splitlines()]
    assert [(d["stream"], d["position"]) for d in decoded] == [
        ("order-2", 3),
        ("order-2", 4),
        ("order-2", 5),
        ("order-1", 7),
    ]
    ok(target, "import", "-", input=orders + b"\n\n")  # blank lines are no events
    assert [e.type for e in run(_events(target))] == ["Empty", "Spaced", "Versioned", "Paid"]


def test_import_resumes_after_the_file_grew_with_another_batch_size(tmp_path: Path) -> None:
    source, target = url_in(tmp_path), url_in(tmp_path)
    run(_populate(source))
    lines = ok(source, "export").stdout_bytes.splitlines(keepends=True)
    ok(target, "import", "-", "--batch", "1000", input=b"".join(lines[:4]))
    # lines 1-4 are stored; a batch of 3 now mixes stored and new events of order-2
    result = ok(target, "--json", "import", "-", "--batch", "3", input=b"".join(lines))
    assert msgspec.json.decode(result.stdout) == {"events": 7, "appended": 3, "already_stored": 4}
    assert [_identity(e) for e in run(_events(target))] == [
        _identity(e) for e in run(_events(source))
    ]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        pytest.param(b"{not json", "DecodeError", id="not-json"),
        pytest.param(b'{"stream": "order-9", "type": "X"}', "id", id="no-id"),
        pytest.param(
            b'{"stream": "bad name", "type": "X", "id": "%s"}' % str(uuid4()).encode(),
            "InvalidStreamName",
            id="bad-stream",
        ),
        pytest.param(
            b'{"stream": "order-9", "type": "X", "id": "%s", "data_base64": "!!"}'
            % str(uuid4()).encode(),
            "base64",
            id="bad-base64",
        ),
        pytest.param(
            b'{"stream": "order-9", "type": "X", "id": "%s", "colour": 1}' % str(uuid4()).encode(),
            "colour",
            id="unknown-field",
        ),
    ],
)
def test_a_bad_line_is_named_and_its_batch_not_written(
    tmp_path: Path, bad: bytes, reason: str
) -> None:
    source, target = url_in(tmp_path), url_in(tmp_path)
    run(_populate(source))
    lines = ok(source, "export").stdout_bytes.splitlines()
    content = b"\n".join([*lines[:5], bad, *lines[5:]])
    error = failed(invoke(target, "import", "-", "--batch", "2", input=content))
    assert "ImportRefused: line 6:" in error and reason in error, error
    # batches of 2: lines 1-2 and 3-4 were written; line 5 waited in the batch of line 6
    assert [e.type for e in run(_events(target))] == ["Placed", "Binary", "Empty", "Spaced"]


def test_a_conflicting_id_is_named_and_its_batch_not_written(tmp_path: Path) -> None:
    source, target = url_in(tmp_path), url_in(tmp_path)
    run(_populate(source))
    lines = ok(source, "export").stdout_bytes.splitlines()
    taken = UUID(msgspec.json.decode(lines[3])["id"])

    async def occupy() -> None:  # the id of line 4 is stored in another stream
        async with tidelog.connect(target) as store:
            await store.append("other-1", [tidelog.NewEvent(type="Mine", id=taken)])

    run(occupy())
    error = failed(invoke(target, "import", "-", "--batch", "3", input=b"\n".join(lines)))
    assert "line 4: DuplicateEventId" in error, error
    assert "3 events of the lines before it were" in error
    assert [e.type for e in run(_events(target))] == ["Mine", "Placed", "Binary", "Empty"]


def test_files_that_cannot_be_opened_and_bad_stores_are_clear_errors(tmp_path: Path) -> None:
    url = url_in(tmp_path)
    error = failed(invoke(url, "import", str(tmp_path / "nope.jsonl")))
    assert "cannot open" in error and "nope.jsonl" in error
    error = failed(invoke(url, "import", str(tmp_path)))
    assert "cannot open" in error
    error = failed(invoke(url, "export", "-o", str(tmp_path / "none.jsonl")))
    assert "this command only reads" in error  # export is a read: no store is made
    assert not (tmp_path / "none.jsonl").exists()  # and no empty file left behind
    invoke(url, "append", "order-1", "--type", "Placed", "--data", "{}")
    error = failed(invoke(url, "export", "-o", str(tmp_path / "no" / "dir.jsonl")))
    assert "cannot open" in error
    failed(invoke("nosuch://x", "export", "-o", str(tmp_path / "never.jsonl")))
    assert not (tmp_path / "never.jsonl").exists()  # no empty file left behind


def test_json_nested_too_deeply_is_a_bad_line(tmp_path: Path) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    line = b'{"stream": "a-1", "type": "X", "id": "%s", "metadata": {"a": %s}}' % (
        str(uuid4()).encode(),
        deep,
    )
    error = failed(invoke(url_in(tmp_path), "import", "-", input=line))
    assert "line 1: InvalidInput: JSON nested too deeply" in error


# --------------------------------------------------------------------------- cloudevents


def test_cloudevents_export_is_read_by_the_cloudevents_sdk(tmp_path: Path) -> None:
    source = url_in(tmp_path)
    run(_populate(source))
    events = run(_events(source))
    lines = ok(source, "export", "--format", "cloudevents").stdout_bytes.splitlines()
    assert len(lines) == len(events)
    for line, event in zip(lines, events, strict=True):
        ce = JSONFormat().read(None, line)
        assert ce.get_specversion() == "1.0"
        assert ce.get_id() == str(event.id)
        assert ce.get_type() == event.type
        assert ce.get_subject() == event.stream
        assert ce.get_source() == f"/tidelog/streams/{event.stream}"
        assert ce.get_time() is not None
        assert ce.get_extension("tidelogposition") == event.position
        data = ce.get_data()
        if isinstance(data, bytes):  # data_base64: the exact bytes
            assert data == event.data
        elif event.data:
            assert data == msgspec.json.decode(event.data)
        else:
            assert data is None


def test_cloudevents_import_maps_like_the_server_and_is_idempotent(tmp_path: Path) -> None:
    source, target = url_in(tmp_path), url_in(tmp_path)
    run(_populate(source))
    exported = tmp_path / "events.ce.jsonl"
    ok(source, "export", "--format", "cloudevents", "--output", str(exported))
    result = ok(target, "--json", "import", "-f", "cloudevents", "--principal", "p1", str(exported))
    assert msgspec.json.decode(result.stdout)["appended"] == 7
    originals, imported = run(_events(source)), run(_events(target))
    assert [(e.stream, e.version, e.type, e.data) for e in imported] == [
        (e.stream, e.version, e.type, e.data) for e in originals
    ]
    for original, copy in zip(originals, imported, strict=True):
        source_name = f"/tidelog/streams/{original.stream}"
        assert copy.id == cloudevent_id("p1", source_name, str(original.id))
        assert copy.metadata["source"] == source_name
        assert not {"tidelogstream", "tidelogversion", "tidelogposition"} & copy.metadata.keys()
    again = ok(target, "--json", "import", "-f", "cloudevents", "--principal", "p1", str(exported))
    assert msgspec.json.decode(again.stdout)["appended"] == 0
    # re-exported, the CloudEvents are the same (their ids and sources were kept)
    first = [JSONFormat().read(None, line) for line in exported.read_bytes().splitlines()]
    second_lines = ok(target, "export", "-f", "cloudevents").stdout_bytes.splitlines()
    second = [JSONFormat().read(None, line) for line in second_lines]
    assert [(c.get_id(), c.get_source(), c.get_data()) for c in second] == [
        (c.get_id(), c.get_source(), c.get_data()) for c in first
    ]


def test_a_bad_cloudevent_is_named(tmp_path: Path) -> None:
    line = b'{"specversion": "0.3", "id": "1", "source": "/s", "type": "t", "subject": "a-1"}'
    error = failed(invoke(url_in(tmp_path), "import", "-f", "cloudevents", "-", input=line))
    assert "line 1: InvalidEvent" in error and "specversion" in error


# --------------------------------------------------------------------------- progress


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    source = url_in(tmp_path)
    run(_populate(source))
    exported = tmp_path / "events.jsonl"
    ok(source, "export", "-o", str(exported))
    result = ok(url_in(tmp_path), "import", str(exported))
    assert result.stderr == ""


def test_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    source = url_in(tmp_path)
    run(_populate(source))
    exported = tmp_path / "events.jsonl"
    ok(source, "export", "-o", str(exported))
    main, terminal = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tidelog", "--store", url_in(tmp_path), "import", exported],
            stdout=subprocess.PIPE,
            stderr=terminal,
            stdin=subprocess.DEVNULL,
            timeout=120,
            check=True,
            env={**os.environ, "TERM": "xterm", "COLUMNS": "100"},
        )
        os.close(terminal)
        terminal = -1
        shown = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the terminal's other side is closed: all was read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(main)
        if terminal != -1:
            os.close(terminal)
    assert b"importing" in shown and b"7 events" in shown
    assert b"7 appended" in done.stdout
