"""The remote engine: a client of the tidelog server that is an engine like the others.

`tidelog.connect("http://127.0.0.1:7070", token="…")`. Reads are paged;
subscriptions are Server-Sent Events that resume from the last position seen
(`Last-Event-ID`) after a dropped connection, so a subscriber neither loses
nor repeats an event. Transport errors become `StoreUnavailable` and server
errors become the same exception types a local engine raises, both in
`_call`, the one place that talks HTTP. Every request carries the caller's
trace context (`tidelog.telemetry.trace_headers`: W3C `traceparent` and
`tracestate`), so the server's `publish` span of an append made inside an
application span belongs to that span's trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, TypeVar
from uuid import UUID

import httpx
import msgspec

from tidelog import wire
from tidelog.engines._http1 import Http1Pool
from tidelog.engines._kit.checks import (
    LogFilter,
    prepare_delete,
    prepare_purge,
)
from tidelog.engines._kit.retention import (
    RetentionRule,
    RetentionRules,
    ScavengeReport,
)
from tidelog.engines._kit.urls import config_from_url
from tidelog.engines._kit.watch import HeadWatch
from tidelog.engines._remote_batch import AppendBatcher
from tidelog.engines.contract import Checked, Checkpoint, GroupEngine, Write
from tidelog.errors import (
    AccessDenied,
    InvalidInput,
    InvalidURL,
    NotSupported,
    StaleGeneration,
    StoreClosed,
    StoreUnavailable,
)
from tidelog.model import (
    ANY,
    AppendResult,
    ExpectedVersion,
    Membership,
    NewEvent,
    RecordedEvent,
    ScheduledEvent,
    ScheduledResult,
    StreamInfo,
)
from tidelog.telemetry import trace_headers

__all__ = ["RemoteConfig", "RemoteEngine", "open_engine", "resolve_token"]

_MAX_START = 2**62
"""The largest read start the HTTP API takes. No log gets that far, so a start
beyond it finds what this one finds: nothing."""

T = TypeVar("T")


class RemoteConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Options in the URL's query string: `https://host:7070?page=500&timeout=30`."""

    page: int = 500
    timeout: float = 30.0
    reconnect_delay: float = 0.2


class RemoteEngine(GroupEngine):
    name = "remote"

    def __init__(
        self,
        base_url: str,
        config: RemoteConfig,
        *,
        token: str | None = None,
        verify: ssl.SSLContext | str | bool = True,
        cert: tuple[str, str] | None = None,
    ) -> None:
        self.config = config
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._token_sent = bool(token)
        # Plain http never uses the TLS settings: skip building a verifying
        # context (loading the CA bundle costs about 90 ms per store).
        tls = _ssl_context(verify, cert) if base_url.startswith("https:") else False
        # Server-Sent Events (a streaming response) go through httpx; every other call
        # through the lean pool (`_http1`: httpx cost more CPU per append than the rest
        # of the client). Neither uses proxies from the environment: httpx ignores
        # them when given a transport, as here.
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            timeout=httpx.Timeout(config.timeout),
            transport=httpx.AsyncHTTPTransport(
                verify=tls,
                # no Nagle: a request's head and body must not wait for a delayed ACK
                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            ),
        )
        self._pool, self._prefix = _pool_for(base_url, headers, tls, config.timeout)
        self._batcher = AppendBatcher(self._append_one, self._append_many)
        self._partitions = 0
        self.server_engine = ""
        """The engine behind the server (`/v1/info`), known once started."""
        self._watch = HeadWatch()
        self._decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}
        self._encoder = msgspec.json.Encoder()

    async def _start(self) -> None:
        info = await self._call("GET", "/v1/info", wire.WireInfo)
        self._partitions = info.partition_count
        self.server_engine = info.engine

    # ------------------------------------------------------------------ transport

    def _decoder(self, t: type[T]) -> msgspec.json.Decoder[T]:
        d = self._decoders.get(t)
        if d is None:
            d = self._decoders[t] = msgspec.json.Decoder(t)
        return d

    async def _call(
        self,
        method: str,
        path: str,
        result: type[T] | None,
        *,
        body: object = None,
        params: Mapping[str, Any] | None = None,
    ) -> T:
        self._check_open()
        content = None if body is None else self._encoder.encode(body)
        # the caller's trace goes with the request: the server's spans continue it
        headers = trace_headers()
        if content is not None:
            headers["Content-Type"] = "application/json"
        if self._pool is not None and _PLAIN_PATH.fullmatch(path):
            query = _query(params)
            target = f"{self._prefix}{path}?{query}" if query else f"{self._prefix}{path}"
            try:
                status, answer = await self._pool.request(
                    method, target, list(headers.items()), content
                )
            except OSError as exc:  # refused, reset, timed out, not HTTP
                raise StoreUnavailable(f"tidelog server unreachable: {exc!r}") from exc
        else:
            try:
                response = await self._client.request(
                    method, path, content=content, params=_params(params), headers=headers or None
                )
            except httpx.HTTPError as exc:
                raise StoreUnavailable(f"tidelog server unreachable: {exc!r}") from exc
            status, answer = response.status_code, response.content
        if status >= 400:
            _raise_response(status, answer, self._token_sent)
        if result is None:
            return None  # type: ignore[return-value]
        try:
            return self._decoder(result).decode(answer)
        except msgspec.DecodeError as exc:
            raise StoreUnavailable(f"malformed answer from the server: {exc}") from exc

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A server route outside the store contract (the admin routes of keys, grants and
        parked events), with this engine's credentials, TLS and error mapping: the CLI's
        way to them, so it never builds a second HTTP client."""
        answer: dict[str, Any] = await self._call(
            method, path, dict[str, Any], body=body, params=params
        )
        return answer

    # ------------------------------------------------------------------ layer 1

    async def _apply_write(self, write: Write) -> dict[str, AppendResult]:
        """The route that says what the write is.

        An append to one stream goes to `POST /v1/streams/{s}/events`, or with
        other callers' appends that waited for a free slot to
        `POST /v1/append-many` (`_remote_batch`: refused batches are sent again
        one by one, so each caller gets its own answer); an append to several
        streams goes to `POST /v1/append-many`, and a checkpoint with its
        appends to the group's commit route; the server's store decides each in
        one transaction. A `fence_only` write is judged here (see `_fence`).
        """
        cp = write.checkpoint
        if cp is not None:
            if write.fence_only:
                await self._fence(cp)
                return {}
            body = wire.WireCommit(
                partition=cp.partition,
                position=cp.position,
                member=cp.member,
                generation=cp.generation,
                appends=_wire_appends(write.appends) if write.appends else None,
            )
            path = f"{self._group_path(cp.group, cp.category)}/commit"
            return (await self._call("POST", path, wire.WireResults, body=body)).results
        if len(write.appends) == 1:
            [(name, (events, expected))] = write.appends.items()
            one = _wire_append(events, expected)
            if trace_headers():  # its own request, with its caller's trace (`_remote_batch`)
                return {name: await self._append_one(name, one)}
            size = sum(len(e.data) + len(e.data_base64 or "") for e in one.events)
            return {name: await self._batcher.append(name, one, size)}
        many = wire.WireAppendMany(streams=_wire_appends(write.appends))
        return (await self._call("POST", "/v1/append-many", wire.WireResults, body=many)).results

    async def _append_one(self, name: str, body: wire.WireAppend) -> AppendResult:
        return await self._call("POST", f"/v1/streams/{name}/events", AppendResult, body=body)

    async def _append_many(self, appends: dict[str, wire.WireAppend]) -> dict[str, AppendResult]:
        many = wire.WireAppendMany(streams=appends)
        return (await self._call("POST", "/v1/append-many", wire.WireResults, body=many)).results

    async def _read_stream(
        self, name: str, from_version: int, backwards: bool, limit: int | None
    ) -> AsyncIterator[RecordedEvent]:
        remaining = limit
        version = min(from_version, _MAX_START)
        while True:
            # at least one request, even for limit=0: the server says if the stream is deleted
            page = self.config.page if remaining is None else min(remaining, self.config.page)
            got = await self._call(
                "GET",
                f"/v1/streams/{name}/events",
                wire.WirePage,
                params={"from_version": version, "backwards": backwards, "limit": page},
            )
            for w in got.events:
                yield w.to_recorded()
            if remaining is not None:
                remaining -= len(got.events)
            if len(got.events) < page or remaining == 0:
                return
            version = got.events[-1].version + (-1 if backwards else 1)
            if version < 0:
                return

    async def delete_stream(self, stream: str, expected_version: ExpectedVersion = ANY) -> None:
        name, expected = prepare_delete(stream, expected_version)
        await self._call(
            "DELETE",
            f"/v1/streams/{name}",
            None,
            params={"expected_version": str(wire.expected_to_wire(expected))},
        )

    async def purge_stream(self, stream: str) -> None:
        name = prepare_purge(stream)
        await self._call("POST", f"/v1/streams/{name}/purge", None)

    async def list_streams(self, category: str | None = None) -> AsyncIterator[StreamInfo]:
        params = {"category": category}
        got = await self._call("GET", "/v1/streams", wire.WireStreams, params=params)
        for s in got.streams:
            yield s

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._watch.close()
            self._batcher.close()
            if self._pool is not None:
                await self._pool.aclose()
            await self._client.aclose()

    # ------------------------------------------------------------ scheduled delivery
    # The server keeps the pending events and its scheduler delivers them: this
    # client schedules, lists and cancels over HTTP and runs no scheduler itself.

    async def _schedule_append(self, stream: str, rows: list[ScheduledEvent]) -> ScheduledResult:
        body = wire.WireAppend(
            events=[wire.WireNewEvent.from_new_event(r.to_new_event()) for r in rows],
            expected_version=wire.expected_to_wire(rows[0].expected_version),
            deliver_at=rows[0].due_at,
        )
        path = f"/v1/streams/{stream}/events"
        return await self._call("POST", path, ScheduledResult, body=body)

    async def _cancel_scheduled(self, event_id: UUID) -> bool:
        got = await self._call("DELETE", f"/v1/scheduled/{event_id}", wire.WireCancelled)
        return got.cancelled

    async def _list_scheduled(self, stream: str | None, limit: int) -> list[ScheduledEvent]:
        params = {"stream": stream, "limit": limit}
        got = await self._call("GET", "/v1/scheduled", wire.WireScheduled, params=params)
        return [e.to_scheduled() for e in got.events]

    async def _count_scheduled(self) -> int:
        got = await self._call("GET", "/v1/scheduled", wire.WireScheduled, params={"limit": 0})
        if got.pending is None:
            raise AccessDenied("counting scheduled events needs read on the whole log ($all)")
        return got.pending

    # ------------------------------------------------------------------ layer 2

    async def _read_all(
        self, from_position: int, filters: LogFilter, limit: int | None
    ) -> AsyncIterator[RecordedEvent]:
        if limit == 0 or filters.matches_nothing:
            return
        params = _filter_params(filters)
        remaining = limit
        position = min(from_position, _MAX_START)
        while remaining is None or remaining > 0:
            page = self.config.page if remaining is None else min(remaining, self.config.page)
            got = await self._call(
                "GET",
                "/v1/log",
                wire.WirePage,
                params={**params, "from_position": position, "limit": page},
            )
            for w in got.events:
                yield w.to_recorded()
            if len(got.events) < page:
                return
            if remaining is not None:
                remaining -= len(got.events)
            position = got.events[-1].position + 1

    async def _count_events(self, from_position: int, filters: LogFilter) -> int:
        """The server counts per category (`GET /v1/log/count`); the whole log is read.

        The server refuses to count the whole log (it would include system
        streams a reader of `$all` may not see), so that count reads, as the
        default does.
        """
        if filters.matches_nothing:
            return 0
        if filters.categories is None:
            return await super()._count_events(from_position, filters)
        params = {**_filter_params(filters), "from_position": min(from_position, _MAX_START)}
        return (await self._call("GET", "/v1/log/count", wire.WireCount, params=params)).count

    async def last_position(self) -> int:
        return (await self._call("GET", "/v1/log/head", wire.WireHead)).position

    @property
    def partition_count(self) -> int:
        return self._partitions

    def head_watch(self) -> HeadWatch:
        return self._watch

    async def _subscribe(
        self, from_position: int, filters: LogFilter
    ) -> AsyncIterator[RecordedEvent]:
        """Server-Sent Events, resumed with `Last-Event-ID` after a dropped connection."""
        self._check_open()
        if filters.matches_nothing:
            # an empty filter would read as no filter in a query string: nothing can match,
            # so wait for the close like a local subscription with nothing to yield
            while True:
                self._check_open()
                await self._watch.wait_beyond(self._watch.head, None)  # until close
        start = min(from_position, _MAX_START)
        params = _params({**_filter_params(filters), "from_position": start})
        last_seen: int | None = None
        decoder = self._decoder(wire.WireEvent)
        while True:
            self._check_open()
            headers = {**trace_headers(), "Accept": "text/event-stream"}
            if last_seen is not None:
                headers["Last-Event-ID"] = str(last_seen)
            try:
                async with self._client.stream(
                    "GET",
                    "/v1/subscribe",
                    params=params,
                    headers=headers,
                    timeout=httpx.Timeout(self.config.timeout, read=None),
                ) as response:
                    if response.status_code >= 400:
                        _raise_response(
                            response.status_code, await response.aread(), self._token_sent
                        )
                    async for data in _sse_data(response):
                        event = decoder.decode(data).to_recorded()
                        if last_seen is not None and event.position <= last_seen:
                            continue
                        last_seen = event.position
                        yield event
            except (httpx.HTTPError, msgspec.DecodeError):
                if self._closed:
                    raise StoreClosed() from None
                await asyncio.sleep(self.config.reconnect_delay)
                continue
            if self._closed:
                raise StoreClosed()
            await asyncio.sleep(self.config.reconnect_delay)

    # ------------------------------------------------------------------ layer 3

    def _group_path(self, group: str, category: str) -> str:
        return f"/v1/groups/{_seg(group)}/{_seg(category)}"

    async def _join_group(
        self, group: str, category: str, member: str, lease: float, cooperative: bool
    ) -> Membership:
        path = f"{self._group_path(group, category)}/members/{_seg(member)}"
        body = wire.WireJoin(lease=lease, cooperative=cooperative)
        return await self._call("POST", path, Membership, body=body)

    async def _heartbeat(
        self, group: str, category: str, member: str, lease: float, release: tuple[int, ...]
    ) -> Membership:
        path = f"{self._group_path(group, category)}/members/{_seg(member)}/heartbeat"
        body = wire.WireHeartbeat(lease=lease, release=list(release))
        return await self._call("POST", path, Membership, body=body)

    async def leave_group(self, group: str, category: str, member: str) -> None:
        path = f"{self._group_path(group, category)}/members/{_seg(member)}"
        await self._call("DELETE", path, None)

    async def _beyond_head(self, position: int) -> bool:
        """Never judged here: the server's store refuses a checkpoint beyond the head
        itself, after fencing the member, so asking the head first would only add a
        round trip to a commit."""
        return False

    async def _fence(self, cp: Checkpoint) -> None:
        """Raise `StaleGeneration` unless `cp.member` may commit `cp.partition`: a
        commit whose appends failed their checks, fenced without writing anything.

        The server has no route that only fences, and its commit route would
        write the checkpoint; so the client judges the group as the server
        describes it (lapsed leases expired, as `GroupState.check` counts them),
        the way the server's own fetch route fences a remote member. Unlike a
        refused commit, this does not make an unknown group known.
        """
        described = await self.describe_group(cp.group, cp.category)
        current = 0 if described is None else described.generation
        owned = () if described is None else _partitions_of(described, cp.member)
        if owned is None or cp.generation != current or cp.partition not in owned:
            raise StaleGeneration(cp.group, cp.category, cp.member, cp.generation, current)

    async def checkpoints(self, group: str, category: str) -> dict[int, int]:
        got = await self._call("GET", self._group_path(group, category), wire.WireGroup)
        return got.checkpoints

    async def describe_group(self, group: str, category: str) -> Membership | None:
        got = await self._call("GET", self._group_path(group, category), wire.WireGroup)
        return got.membership

    # ------------------------------------------------------------------ retention
    # The server's store applies the rules to what it serves and runs the
    # scavenger; this client only reaches the admin routes (`_retention_api`).

    applies_retention = False

    async def _set_rule(self, rule: RetentionRule) -> RetentionRule:
        return await self._call("PUT", "/v1/retention", RetentionRule, body=rule)

    async def retention(self, stream: str | None = None) -> list[RetentionRule]:
        params = {"stream": stream}
        return (await self._call("GET", "/v1/retention", RetentionRules, params=params)).rules

    async def scavenge(self, *, release: bool = True) -> ScavengeReport:
        return await self._call("POST", "/v1/retention/scavenge", ScavengeReport)

    async def first_position(self) -> int:
        return (await self._call("GET", "/v1/log/first", wire.WireHead)).position

    async def _start_stream_at(self, stream: str, version: int) -> None:
        """Refused: the HTTP API has no route that starts a stream at a version; copy
        into the server's store URL instead."""
        raise NotSupported(self.name, "starting a stream at a version", "no HTTP route for it")

    async def list_groups(self) -> list[tuple[str, str]]:
        return (await self._call("GET", "/v1/groups", wire.WireGroups)).groups


# --------------------------------------------------------------------------- helpers


def _seg(value: str) -> str:
    """A path segment; names are validated by the server, this only keeps the URL intact."""
    return urllib.parse.quote(str(value), safe="")


def _filter_params(filters: LogFilter) -> dict[str, list[str] | list[int] | None]:
    """The query parameters of a log filter; never empty lists (`matches_nothing` first)."""
    cats, tys, parts = filters
    return {
        "category": sorted(cats) if cats is not None else None,
        "type": sorted(tys) if tys is not None else None,
        "partition": sorted(parts) if parts is not None else None,
    }


def _param_pairs(params: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, value in (params or {}).items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            out.extend((key, str(v)) for v in value)
        elif isinstance(value, bool):
            out.append((key, "true" if value else "false"))
        else:
            out.append((key, str(value)))
    return out


def _params(params: Mapping[str, Any] | None) -> httpx.QueryParams:
    return httpx.QueryParams(tuple(_param_pairs(params)))


def _query(params: Mapping[str, Any] | None) -> str:
    """The query string of `params`, quoted as httpx quotes it (a space as `%20`)."""
    if not params:
        return ""
    return urllib.parse.urlencode(_param_pairs(params), quote_via=urllib.parse.quote)


_PLAIN_PATH = re.compile(r"[A-Za-z0-9/_\-.~:@$!&'()*+,;=]*")
"""A path the lean pool sends as it is: nothing in it to quote (`_seg` quoted the rest).
Any other path goes through httpx, which quotes it."""


def _pool_for(
    base_url: str, headers: Mapping[str, str], tls: ssl.SSLContext | bool, timeout: float
) -> tuple[Http1Pool | None, str]:
    """The lean pool for `base_url` and the path prefix its requests start with; no pool
    for a URL with credentials in it (httpx's own handling of those stays)."""
    parts = urllib.parse.urlsplit(base_url)
    if parts.username is not None or parts.password is not None or not parts.hostname:
        return None, ""
    if any("\r" in v or "\n" in v for v in headers.values()):
        return None, ""  # httpx refuses such a header, as `open_engine` refuses the token
    secure = parts.scheme == "https"
    context = None
    if secure:
        context = tls if isinstance(tls, ssl.SSLContext) else httpx.create_ssl_context(verify=tls)
    lines = [f"Host: {parts.netloc}", "Accept: */*", "User-Agent: tidelog"]
    lines.extend(f"{k}: {v}" for k, v in headers.items())
    head = "".join(f"{line}\r\n" for line in lines).encode("latin-1")
    pool = Http1Pool(
        parts.hostname,
        parts.port or (443 if secure else 80),
        tls=context,
        head=head,
        timeout=timeout,
    )
    return pool, urllib.parse.quote(parts.path, safe="/%:@!$&'()*+,;=")


def _partitions_of(membership: Membership, member: str) -> tuple[int, ...] | None:
    """The partitions `member` owns in `membership`; None if it is not a live member."""
    for m in membership.members:
        if m.member == member:
            return m.partitions
    return None


def _wire_append(events: Sequence[NewEvent], expected: ExpectedVersion) -> wire.WireAppend:
    return wire.WireAppend(
        events=[wire.WireNewEvent.from_new_event(e) for e in events],
        expected_version=wire.expected_to_wire(expected),
    )


def _wire_appends(appends: Checked) -> dict[str, wire.WireAppend]:
    return {s: _wire_append(events, expected) for s, (events, expected) in appends.items()}


_error_decoder = msgspec.json.Decoder(wire.WireError)


def _raise_response(status: int, content: bytes, token_sent: bool = True) -> None:
    try:
        err = _error_decoder.decode(content)
    except msgspec.DecodeError:
        err = wire.WireError(code="http_error", message=f"HTTP {status}")
    try:
        wire.raise_wire_error(err, status)
    except AccessDenied as exc:
        if exc.status != 401 or token_sent:
            raise
        raise AccessDenied(exc.reason, 401, no_token=True) from None


_SSE_LINE_END = re.compile(rb"\r\n|\r|\n")


async def _sse_data(response: httpx.Response) -> AsyncIterator[bytes]:
    """The `data` of each event in a Server-Sent Events stream (comments skipped).

    Lines end at CR LF, CR or LF, as the SSE format says, and nowhere else:
    `aiter_lines` also breaks at U+2028, U+0085 and other Unicode line ends,
    which JSON strings (event data, metadata) may hold unescaped.
    """
    data: list[bytes] = []
    tail = b""
    after_cr = False
    async for received in response.aiter_bytes():
        # the LF of a CR LF split across two chunks ends no second line
        chunk = received[1:] if after_cr and received.startswith(b"\n") else received
        after_cr = chunk.endswith(b"\r")
        lines = _SSE_LINE_END.split(tail + chunk)
        tail = lines.pop()
        for line in lines:
            if not line:
                if data:
                    yield b"\n".join(data)
                    data = []
            elif line.startswith(b"data:"):
                data.append(line[6:] if line.startswith(b"data: ") else line[5:])


def _ssl_context(
    verify: ssl.SSLContext | str | bool, cert: tuple[str, str] | None
) -> ssl.SSLContext | bool:
    if isinstance(verify, ssl.SSLContext):
        if cert:
            verify.load_cert_chain(*cert)
        return verify
    if isinstance(verify, str) or cert:
        ctx = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
        if cert:
            ctx.load_cert_chain(*cert)
        return ctx
    return verify


_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")
"""What a bearer token may hold: visible ASCII, no space (RFC 6750's b64token and more)."""


def resolve_token(token: str | None = None, token_file: str | None = None) -> str | None:
    """The bearer token to send: `token`, else the first line of `token_file`, else the
    environment's `TIDELOG_TOKEN`, else the file named by `TIDELOG_TOKEN_FILE`; None if none.

    A token file keeps the key out of the process list and shell history (a
    Kubernetes or Docker secret is mounted as one). No message here ever holds
    the token itself: it would land in terminals and logs.
    """
    if token is not None and token_file is not None:
        raise InvalidInput("give a token or a token file, not both")
    if token is None and token_file is None:
        token = os.environ.get("TIDELOG_TOKEN") or None
        if token is None:
            token_file = os.environ.get("TIDELOG_TOKEN_FILE") or None
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.readline().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise InvalidInput(f"cannot read the token file {token_file!r}: {reason}") from None
        if not token:
            raise InvalidInput(f"the token file {token_file!r} is empty")
    if token is not None and not _TOKEN_CHARS.fullmatch(token):
        # a newline would split the Authorization header; say what is wrong, not the token
        raise InvalidInput(
            "the token holds characters a bearer token cannot have (spaces, line breaks, non-ASCII)"
        )
    return token


async def open_engine(
    url: str,
    *,
    token: str | None = None,
    token_file: str | None = None,
    verify: ssl.SSLContext | str | bool = True,
    cert: tuple[str, str] | None = None,
) -> RemoteEngine:
    """Open `http(s)://host:port`; `verify` is a CA file or context, `cert` a
    (certificate, key) pair for mutual TLS.

    The bearer token is `token`, or the first line of `token_file`, or else
    taken from `TIDELOG_TOKEN` / `TIDELOG_TOKEN_FILE` (see `resolve_token`).
    """
    parts = urllib.parse.urlsplit(url)
    if "token" in urllib.parse.parse_qs(parts.query, keep_blank_values=True):
        # URLs end up in logs and banners: the key belongs in an option (the
        # error shows the URL masked, see `tidelog.errors.InvalidURL`)
        raise InvalidURL(
            url,
            "give the bearer token as connect(url, token=...), --token, TIDELOG_TOKEN or "
            "TIDELOG_TOKEN_FILE, not in the URL",
        )
    bearer = resolve_token(token, token_file)
    base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    engine = RemoteEngine(
        base, config_from_url(RemoteConfig, url), token=bearer, verify=verify, cert=cert
    )
    try:
        await engine._start()
    except BaseException:
        with contextlib.suppress(Exception):
            await engine.close()
        raise
    return engine
