"""Structured logs and OpenTelemetry trace context for tidelog.

Logs: tidelog's modules only ever call `logging.getLogger(__name__)`; whoever
runs the process (`tidelog serve`, a worker, your application) decides where
logs go. `configure_logging("json" | "text" | "auto")` is that decision for the
CLI and server: JSON lines (one object per line, for collectors) or a compact
human format on a terminal. Records carry event context as `extra` fields
(`event_fields(event)`: stream, position, event id, and the correlation and
causation ids from the event's metadata), and the current trace and span ids
when a span is active, so a log line can be joined with its trace.

Tracing: OpenTelemetry is optional (the `otel` extra, `opentelemetry-api`).
When it is installed, an append over HTTP runs in a `publish <category>`
producer span (messaging semantic conventions, `messaging.system="tidelog"`),
and the W3C trace context (`traceparent`, `tracestate`) of that span is stored
in each event's metadata unless the event already carries one. Subscribers get
the metadata with the event, so a consumer can start a `process <category>`
span in the producer's trace (`process_span(event)`; the consumer runtime does
this for every handler call). The remote engine sends the caller's context with
each request (`trace_headers`), so a trace crosses the wire: application span,
the server's `publish` span, a consumer's `process` span. Without an SDK configured
the API's no-op tracer passes the caller's context through unchanged, and
without the package installed every function here is a no-op.

While no tracer provider is set (the API's proxy stands in) the span helpers
take a fast path that gives the same result without starting the no-op span:
the trace context passed through is the parent's. The provider is looked up on
every call, so one set later (an SDK configured after import) is used at once.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import importlib.metadata
import json
import logging
import sys
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import IO, Any, Final

import msgspec

from tidelog.model import AppendResult, NewEvent, RecordedEvent, category_of

try:
    import opentelemetry.propagate as _otel_propagate
    import opentelemetry.trace as _otel_trace

    HAVE_OTEL = True
    _NOOP_PROVIDERS: tuple[type, ...] = (
        _otel_trace.ProxyTracerProvider,
        _otel_trace.NoOpTracerProvider,
    )
except ImportError:  # the `otel` extra is optional
    HAVE_OTEL = False

__all__ = [
    "HAVE_OTEL",
    "JsonFormatter",
    "LOG_FIELDS",
    "TRACE_KEYS",
    "TextFormatter",
    "configure_logging",
    "event_fields",
    "process_span",
    "publish_span",
    "record_append",
    "record_append_many",
    "trace_headers",
    "tracing",
    "with_trace_context",
]

log = logging.getLogger(__name__)

LOG_FIELDS: Final = (
    "stream",
    "category",
    "position",
    "version",
    "event_id",
    "event_type",
    "event_count",
    "correlation_id",
    "causation_id",
    "group",
    "partition",
    "member",
    "principal",
    "trace_id",
    "span_id",
)
"""`extra` keys the formatters write out; anything else passed as extra is ignored."""

TRACE_KEYS: Final = ("traceparent", "tracestate")
"""The W3C trace-context keys stored in event metadata."""

_CORRELATION_KEYS: Final = ("correlationid", "correlation_id")
_CAUSATION_KEYS: Final = ("causationid", "causation_id")

MESSAGING_SYSTEM: Final = "tidelog"


# --------------------------------------------------------------------------- logs


def _workflow_fields(metadata: Mapping[str, Any]) -> dict[str, str]:
    """The correlation and causation ids an event's metadata carries, as log fields."""
    fields: dict[str, str] = {}
    for field, keys in (("correlation_id", _CORRELATION_KEYS), ("causation_id", _CAUSATION_KEYS)):
        for key in keys:
            if metadata.get(key) is not None:
                fields[field] = str(metadata[key])
                break
    return fields


def event_fields(event: RecordedEvent) -> dict[str, Any]:
    """`extra` for a log record about `event`: where it is and which workflow it belongs to.

    `log.warning("handler failed", extra=event_fields(event))`
    """
    fields: dict[str, Any] = {
        "stream": event.stream,
        "category": event.category,
        "position": event.position,
        "version": event.version,
        "event_id": str(event.id),
        "event_type": event.type,
    }
    fields.update(_workflow_fields(event.metadata))
    return fields


def _trace_ids() -> dict[str, str]:
    """The active span's ids in the hex form trace backends show, if a span is active."""
    if not HAVE_OTEL:
        return {}
    ctx = _otel_trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = {k: record.__dict__[k] for k in LOG_FIELDS if record.__dict__.get(k) is not None}
    for key, value in _trace_ids().items():
        fields.setdefault(key, value)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `ts`, `level`, `logger`, `message`, event and trace fields.

    Timestamps are UTC RFC 3339 with milliseconds; an exception becomes
    `exc_type` plus the formatted traceback in `exc`.
    """

    def format(self, record: logging.LogRecord) -> str:
        ts = _dt.datetime.fromtimestamp(record.created, _dt.UTC)
        out: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`HH:MM:SS.mmm LEVEL logger: message key=value ...` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        ts = _dt.datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        line = f"{ts} {record.levelname:<7} {record.name}: {record.getMessage()}"
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_info and record.exc_info[0] is not None:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _TidelogHandler(logging.StreamHandler[IO[str]]):
    """Marks the handler `configure_logging` installed, so a second call replaces it."""


def configure_logging(
    log_format: str = "auto", level: int | str = logging.INFO, stream: IO[str] | None = None
) -> logging.Handler:
    """Send all logging to `stream` (stderr) as JSON lines or text; call once per process.

    `auto` means text when `stream` is a terminal and JSON otherwise (a
    container, a service manager, a pipe to a collector). Calling again
    replaces the handler installed before instead of adding a second one.
    """
    if log_format not in ("json", "text", "auto"):
        raise ValueError(f"log_format must be json, text or auto, not {log_format!r}")
    out = stream if stream is not None else sys.stderr
    if log_format == "auto":
        log_format = "text" if out.isatty() else "json"
    handler = _TidelogHandler(out)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _TidelogHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


# --------------------------------------------------------------------------- tracing


@functools.cache
def _version() -> str | None:
    """tidelog's version for the tracer's instrumentation scope, from the installed
    distribution: importing `tidelog` here would close an import cycle (the package
    imports the consumer runtime, which traces through this module)."""
    try:
        return importlib.metadata.version("tidelog")
    except importlib.metadata.PackageNotFoundError:
        return None


def _tracer() -> Any:
    return _otel_trace.get_tracer("tidelog", _version())


def tracing() -> bool:
    """Whether spans are recorded: OpenTelemetry is installed and a tracer provider is set.

    For a hot path that would rather decide once per run of work than pay for
    a no-op span per item (the consumer runtime's workers ask at their start).
    """
    return HAVE_OTEL and type(_otel_trace.get_tracer_provider()) not in _NOOP_PROVIDERS


def _tracing_off(current: Any) -> bool:
    """Whether a span started now would be the API's no-op span around `current`.

    True while no tracer provider is set (or the no-op one is) and the active
    span is not recording. Then the no-op tracer's span is `current` itself
    (or carries its context), so skipping it changes nothing anyone can see.
    """
    return type(_otel_trace.get_tracer_provider()) in _NOOP_PROVIDERS and not current.is_recording()


def _trace_context(context: Any = None) -> dict[str, str]:
    """The W3C trace-context keys the global propagator writes for `context` (or the current)."""
    carrier: dict[str, str] = {}
    _otel_propagate.inject(carrier, context=context)
    return {k: v for k, v in carrier.items() if k in TRACE_KEYS}


def trace_headers() -> dict[str, str]:
    """HTTP headers that carry the active trace context to a server (the remote engine's).

    What the global propagator writes for the current context: W3C
    `traceparent`/`tracestate` by default (and `baggage`, or other formats if
    the application configured them, as any instrumented HTTP client would
    send). Empty without OpenTelemetry or with no context to send, so an
    untraced caller's requests are unchanged. The server continues this trace
    in its `publish` span (`publish_span`), so an append made through
    `tidelog.connect("http://...")` inside an application span is part of that
    span's trace instead of a trace of its own.
    """
    if not HAVE_OTEL:
        return {}
    carrier: dict[str, str] = {}
    _otel_propagate.inject(carrier)
    return carrier


def publish_span(
    categories: Collection[str], headers: Mapping[str, str] | None = None, *, count: int = 1
) -> AbstractContextManager[dict[str, str]]:
    """A `publish <category>` producer span around an append; yields its trace context.

    The parent is the active span if there is one (server instrumentation),
    else the W3C context in `headers` (the HTTP request's `traceparent`). The
    yielded dict holds `traceparent`/`tracestate` to store with the events (see
    `with_trace_context`); it is empty without OpenTelemetry or any context.
    Without a tracer provider no span is made and the parent's context is
    yielded, as the API's no-op span would pass it through.
    """
    if not HAVE_OTEL:
        return contextlib.nullcontext({})
    current = _otel_trace.get_current_span()
    parent = None
    if not current.get_span_context().is_valid and headers is not None:
        parent = _otel_propagate.extract({k.lower(): v for k, v in headers.items()})
    if _tracing_off(current):
        return contextlib.nullcontext(_trace_context(parent))
    return _publish_span(categories, parent, count)


@contextlib.contextmanager
def _publish_span(categories: Collection[str], parent: Any, count: int) -> Iterator[dict[str, str]]:
    names = sorted(set(categories))
    destination = names[0] if len(names) == 1 else ",".join(names)
    attributes: dict[str, Any] = {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": destination,
    }
    if count != 1:
        attributes["messaging.batch.message_count"] = count
    name = f"publish {destination}" if len(names) == 1 else "publish"
    with _tracer().start_as_current_span(
        name, context=parent, kind=_otel_trace.SpanKind.PRODUCER, attributes=attributes
    ):
        yield _trace_context()


def with_trace_context(events: Sequence[NewEvent], carrier: Mapping[str, str]) -> list[NewEvent]:
    """The events with `carrier`'s trace context in their metadata, unless they carry one.

    An event that already has a `traceparent` (set by a producer that traced it
    itself) keeps it: the first context is the one that caused the event.
    """
    if not carrier or "traceparent" not in carrier:
        return list(events)
    return [
        e
        if "traceparent" in e.metadata
        else msgspec.structs.replace(e, metadata={**e.metadata, **carrier})
        for e in events
    ]


def record_append(stream: str, events: Sequence[NewEvent], result: AppendResult) -> None:
    """Note a finished append on the active span and in the debug log."""
    if HAVE_OTEL:
        span = _otel_trace.get_current_span()
        if span.is_recording():
            span.set_attribute("tidelog.stream", stream)
            span.set_attribute("tidelog.position", result.position)
            span.set_attribute("tidelog.version", result.version)
            if len(events) == 1:
                span.set_attribute("messaging.message.id", str(events[0].id))
    _log_append(stream, events, result)


def _log_append(stream: str, events: Sequence[NewEvent], result: AppendResult) -> None:
    if log.isEnabledFor(logging.DEBUG):
        fields: dict[str, Any] = {
            "stream": stream,
            "category": category_of(stream),
            "position": result.position,
            "version": result.version,
            "event_count": len(events),
        }
        if events:
            fields.update(_workflow_fields(events[0].metadata))
        log.debug("appended %d event(s) to %s", len(events), stream, extra=fields)


def record_append_many(
    appended: Mapping[str, Sequence[NewEvent]], results: Mapping[str, AppendResult]
) -> None:
    """Note a finished append to several streams (append-many, CloudEvents ingest).

    One stream is noted as `record_append` notes it. Several get
    `tidelog.streams` (sorted) and `tidelog.position` (the last one written,
    which places the whole atomic write in the log) on the span, and a debug
    line each.
    """
    if len(appended) == 1:
        [(stream, events)] = appended.items()
        record_append(stream, events, results[stream])
        return
    if HAVE_OTEL and results:
        span = _otel_trace.get_current_span()
        if span.is_recording():
            span.set_attribute("tidelog.streams", sorted(results))
            span.set_attribute("tidelog.position", max(r.position for r in results.values()))
    for stream, events in appended.items():
        if stream in results:
            _log_append(stream, events, results[stream])


def process_span(
    event: RecordedEvent | Sequence[RecordedEvent], group: str | None = None
) -> AbstractContextManager[None]:
    """A `process <category>` consumer span for handling `event`, in its producer's trace.

    The span links to the publish context stored in the event's metadata (the
    messaging conventions' "SHOULD link to the message's creation context"),
    and, when the handler runs under no span of its own (a consumer worker),
    that context is also its parent: one trace then runs from the
    application's span through the server's `publish` span to this one, which
    is what a trace view is for. Under an active span (the application chose
    its own parent) the link alone relates them.

    A batch (a sequence of events, for a batch handler) gets one span linked
    to each event's context, with no parent taken from them: a span has one
    parent, and the events of a batch come from many traces.

    Without a tracer provider it is a no-op (as the API's no-op span would be).
    """
    if not HAVE_OTEL or _tracing_off(_otel_trace.get_current_span()):
        return contextlib.nullcontext()
    events = [event] if isinstance(event, RecordedEvent) else list(event)
    return _process_span(events, group)


def _producer(event: RecordedEvent) -> Any:
    """The context stored with `event` (extracted from its metadata), or None."""
    carrier = {k: str(event.metadata[k]) for k in TRACE_KEYS if k in event.metadata}
    if not carrier:
        return None
    context = _otel_propagate.extract(carrier)
    return context if _otel_trace.get_current_span(context).get_span_context().is_valid else None


@contextlib.contextmanager
def _process_span(events: Sequence[RecordedEvent], group: str | None) -> Iterator[None]:
    contexts = [c for c in map(_producer, events) if c is not None]
    links = [_otel_trace.Link(_otel_trace.get_current_span(c).get_span_context()) for c in contexts]
    parent = None
    untraced = not _otel_trace.get_current_span().get_span_context().is_valid
    if len(events) == 1 and contexts and untraced:
        parent = contexts[0]
    first = events[0]
    attributes: dict[str, Any] = {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": first.category,
    }
    if len(events) == 1:
        attributes["messaging.message.id"] = str(first.id)
        attributes["tidelog.stream"] = first.stream
        attributes["tidelog.position"] = first.position
    else:
        attributes["messaging.batch.message_count"] = len(events)
    if group is not None:
        attributes["messaging.consumer.group.name"] = group
    with _tracer().start_as_current_span(
        f"process {first.category}",
        context=parent,
        kind=_otel_trace.SpanKind.CONSUMER,
        attributes=attributes,
        links=links,
    ):
        yield
