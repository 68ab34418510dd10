"""What the route modules share: the runtime, the caller's access, body and limit checks.

Every route module imports these from here and nothing from another route
module or from `_app`, which only assembles the application: the routes are
leaves. Checks that refuse a request raise `tidelog` errors (or
`HTTPException`); the app's exception handler turns them into responses.
"""

from __future__ import annotations

import asyncio
import codecs
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar, cast
from uuid import UUID

import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, QueryParameter

from tidelog import wire
from tidelog._cloudevent_map import DERIVED_ID_VERSION
from tidelog.engines.contract import Engine
from tidelog.errors import AccessDenied, InvalidEvent, InvalidInput
from tidelog.model import AppendRequest, NewEvent, parse_expected_version, validate_stream_name
from tidelog.schemas import SchemaRegistry
from tidelog.security.acl import Access, Grant, Permission
from tidelog.security.keystore import StoreCredentials
from tidelog.security.tokens import Authenticator, AuthError, token_of_header
from tidelog.server._config import ServerConfig
from tidelog.server._connections import PRINCIPAL_KEY, ConnectionLimit
from tidelog.server._fanout import Hub
from tidelog.server._group_quota import GroupQuota
from tidelog.server._metrics import Metrics
from tidelog.server._readiness import Readiness

__all__ = [
    "DERIVED_ID_VERSION",
    "AccessDep",
    "GroupDep",
    "GroupRef",
    "LogFilter",
    "LogFilterDep",
    "Runtime",
    "append_requests",
    "auth_challenge",
    "check_depth",
    "check_utf8",
    "decode_body",
    "need_categories",
    "need_admin",
    "need_group",
    "need_stream",
    "new_events",
    "page_limit",
    "principal",
    "provide_access",
    "provide_group",
    "provide_log_filter",
    "registry_of",
    "runtime",
]

T = TypeVar("T")

AccessDep = NamedDependency[Access]
"""The caller's principal and grants, provided to every route as `access`."""


@dataclass
class Runtime:
    """What the routes share: the store, the config, auth and live counters."""

    store: Engine
    config: ServerConfig
    auth: Authenticator
    metrics: Metrics
    subscriptions: ConnectionLimit = field(default_factory=lambda: ConnectionLimit(0))
    """Open live subscriptions (SSE and WebSocket) per principal."""
    connections: ConnectionLimit = field(default_factory=lambda: ConnectionLimit(0))
    readiness: Readiness = field(default_factory=Readiness)
    group_quota: GroupQuota = field(default_factory=lambda: GroupQuota(0))
    live: set[Callable[[], None]] = field(default_factory=set)
    """How to end each open live subscription (`end_live`)."""
    hub: Hub | None = None
    """The one live tail of `store` every live subscription shares (`live_hub`)."""
    stopping: bool = False
    credentials: StoreCredentials = field(default_factory=StoreCredentials)
    """The keys and grants an admin added at runtime, read from the store (`keystore`)."""

    @property
    def grants(self) -> tuple[Grant, ...]:
        """The config file's grants, then the store's."""
        return self.config.grants + self.credentials.grants

    def live_hub(self) -> Hub:
        """The hub of the store this runtime serves; a new one when the store changed
        (tests lend one server to store after store)."""
        hub = self.hub
        if hub is None or hub.store is not self.store:
            hub = self.hub = Hub(self.store, self.metrics.fell_behind.inc)
        return hub

    def end_live(self) -> None:
        """End every live subscription and refuse new ones: the server is stopping."""
        self.stopping = True
        self.end_subscriptions()

    def end_subscriptions(self) -> None:
        """End every live subscription; clients reopen them with their credentials checked
        again (a key was revoked or a grant removed: `StoreCredentials.on_narrowed`)."""
        for end in list(self.live):
            end()


def runtime(state: State) -> Runtime:
    """The app's runtime, typed (Litestar's `State` holds it as an attribute)."""
    rt: Runtime = state.runtime
    return rt


def principal(connection: ASGIConnection[Any, Any, Any, Any], rt: Runtime) -> str:
    """The caller: the verified client certificate's principal, or the token's.

    The token comes as `Bearer <token>` or as HTTP Basic's password
    (`token_of_header`), so clients that only speak Basic work unchanged.

    The connection-limit middleware authenticates first and leaves the result in
    the scope; it is reused rather than checking a token twice.
    """
    cached = cast(dict[str, Any], connection.scope).get(PRINCIPAL_KEY)
    if isinstance(cached, str):
        return cached
    extensions: dict[str, Any] = dict(connection.scope.get("extensions") or {})
    tls = extensions.get("tls")
    who: str | None = None
    if isinstance(tls, dict) and isinstance(tls.get("client_principal"), str):
        who = tls["client_principal"]
    header = connection.headers.get("authorization")
    if header:
        who = rt.auth.authenticate(token_of_header(header).strip())
    if not who:
        raise AuthError("authentication required")
    return who


def auth_challenge(header: str | None) -> str:
    """The `WWW-Authenticate` value of a 401 (RFC 9110 requires one).

    A request that sent Basic credentials is challenged for Basic, so Basic
    clients know what to send; any other for Bearer only, so a browser's
    `fetch` from the dashboard never pops up a Basic login dialog.
    """
    if header is not None and header.strip().lower().startswith("basic"):
        return 'Basic realm="tidelog", charset="UTF-8"'
    return 'Bearer realm="tidelog"'


async def provide_access(request: Request[Any, Any, Any], state: State) -> Access:
    """The `access` dependency: who calls, with the grants that decide what they may do."""
    rt = runtime(state)
    return Access(principal(request, rt), rt.grants)


def need_stream(access: Access, stream: str, perm: Permission) -> None:
    """Refuse (403) unless the caller holds `perm` on `stream`."""
    if not access.can_stream(stream, perm):
        raise AccessDenied(f"{access.principal!r} lacks {perm.value} on stream {stream!r}")


def need_admin(access: Access) -> None:
    """Refuse (403) unless the caller is an admin (`admin` on `*`): keys, grants, parked events."""
    if not access.is_admin:
        raise AccessDenied(f"{access.principal!r} is not an admin (admin on *)")


def need_group(access: Access, group: str, category: str) -> None:
    """Refuse (403) unless the caller may read `category` and holds read on `group`.

    Groups have no owner in the store: without its own grant, anyone who may
    read a category could join another team's group on it, evict its members
    and move its checkpoints (issue #18). Checked before the body is used.
    """
    need_categories(access, [category], Permission.READ)
    if not access.can_group(group, Permission.READ):
        raise AccessDenied(f"{access.principal!r} lacks read on group {group!r}")


@dataclass(frozen=True, slots=True)
class GroupRef:
    """The group a route names in its path, once the caller may act on it (`need_group`)."""

    group: str
    category: str


async def provide_group(
    group: FromPath[str], category: FromPath[str], access: AccessDep
) -> GroupRef:
    """The `target` dependency of the routes that change a group or read for one of its members.

    One dependency checks `need_group` for them all, before the body is used, so
    no such route can forget it.
    """
    need_group(access, group, category)
    return GroupRef(group, category)


GroupDep = NamedDependency[GroupRef]
"""The path's group and category, access-checked, provided as `target`."""


@dataclass(frozen=True, slots=True)
class LogFilter:
    """The part of the global log a page read or a live subscription asks for."""

    from_position: int
    categories: list[str] | None
    types: list[str] | None
    partitions: list[int] | None


async def provide_log_filter(
    access: AccessDep,
    from_position: Annotated[int, QueryParameter(ge=0, le=2**62)] = 0,
    category: FromQuery[list[str] | None] = None,
    type: FromQuery[list[str] | None] = None,
    partition: FromQuery[list[int] | None] = None,
) -> LogFilter:
    """The `log_filter` dependency: reading and subscribing take the same query, and the
    same check (read on each category, or on `$all` for none)."""
    need_categories(access, category, Permission.READ)
    return LogFilter(from_position, category, type, partition)


LogFilterDep = NamedDependency[LogFilter]
"""The query's filter of the global log, access-checked, provided as `log_filter`."""


def need_categories(access: Access, categories: Sequence[str] | None, perm: Permission) -> None:
    """Refuse (403) unless the caller holds `perm` on every category, or on `$all` for none.

    No categories means the whole log, which is its own permission: it also
    carries system streams that no category grant covers.
    """
    if categories:
        for c in categories:
            if not access.can_category(c, perm):
                raise AccessDenied(f"{access.principal!r} lacks {perm.value} on category {c!r}")
    elif not access.can_all(perm):
        raise AccessDenied(f"{access.principal!r} lacks {perm.value} on the global log ($all)")


# --------------------------------------------------------------------------- bodies and limits


_BODY_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {}


async def decode_body(request: Request[Any, Any, Any], kind: type[T]) -> T:
    """Decode a JSON body straight from bytes, so `msgspec.Raw` event data keeps every byte.

    (Litestar's own body parsing goes through Python objects first.)
    """
    decoder = _BODY_DECODERS.get(kind)
    if decoder is None:
        decoder = _BODY_DECODERS[kind] = msgspec.json.Decoder(kind)
    raw = await request.body()
    check_utf8(raw)
    check_depth(raw, runtime(request.app.state).config.limits.max_json_depth)
    try:
        return cast(T, decoder.decode(raw))
    except RecursionError:
        raise InvalidInput("JSON nested too deeply") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"invalid request body: {exc}") from None


_UTF8_PIECE = 1 << 16


def check_utf8(raw: bytes) -> None:
    """Refuse a JSON body that is not UTF-8, in time linear in it and in bounded memory.

    The decoder checks the strings it decodes but not the bytes of a value kept
    as `msgspec.Raw` (event `data`): those would be stored as sent, then read
    back as `data_base64`, though JSON text is UTF-8 (RFC 8259). An ASCII body
    (one C pass) is valid as is; any other is decoded piece by piece and the
    text dropped.
    """
    if raw.isascii():
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(raw)
    try:
        for start in range(0, len(raw), _UTF8_PIECE):
            decoder.decode(view[start : start + _UTF8_PIECE])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"invalid request body: not UTF-8 ({exc.reason})") from None


_STRING_OR_TAIL = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"|("[\s\S]*)', re.DOTALL)
_NOT_SKELETON = bytes(b for b in range(256) if b not in b'[]{}"\\')
_AS_PARENS = bytes.maketrans(b"[{]}", b"(())")
_OPEN, _CLOSE = b"()"


def _nesting(raw: bytes) -> bytes:
    """The body's brackets outside strings as `(` and `)`, in one pass of C code.

    One `translate` keeps only brackets, quotes and backslashes; without a
    backslash no string holds an escaped quote, so splitting at the quotes cuts
    the strings out. Else a regex cuts each complete string, and a string that
    never ends takes the rest of the body with it, kept as it is (then split at
    its quotes): what the check always did, but read once. It used to retry that
    string at each later quote, reading the tail again every time, in time
    growing with the square of the body (4 s for 32 KB).
    """
    skeleton = raw.translate(None, _NOT_SKELETON)
    if b"\\" in skeleton:
        pieces = _STRING_OR_TAIL.split(raw)  # outside, None or the tail, outside, ...
        tail = pieces[-2] if len(pieces) > 1 else None
        skeleton = b"".join([*pieces[::2], tail or b""]).translate(None, _NOT_SKELETON)
    return b"".join(skeleton.split(b'"')[::2]).translate(_AS_PARENS)


def _height(nesting: bytes, above: int) -> tuple[int, bool]:
    """The tallest matched pair (1 for `()`), and whether anything can never be matched.

    One pass: each open bracket holds the tallest pair closed inside it so far.
    A stray backslash is a wall no pair spans; brackets left open or closed
    without an opener are unmatched too. A pair taller than `above` ends the
    pass: that is all the caller needs to know.
    """
    inside: list[int] = []  # per open bracket, the tallest pair closed inside it
    tallest = 0
    stray = False
    for byte in nesting:
        if byte == _OPEN:
            inside.append(0)
        elif byte == _CLOSE and inside:
            height = inside.pop() + 1
            if height > tallest:
                tallest = height
                if tallest > above:
                    break
            if inside and inside[-1] < height:
                inside[-1] = height
        else:  # a close without an opener, or a backslash outside strings
            stray = True
            inside.clear()
    return tallest, stray or bool(inside)


def check_depth(raw: bytes, limit: int) -> None:
    """Refuse deeply nested JSON before decoding it, in time linear in the body.

    Each `replace` of `()` peels the innermost pairs, lowering the depth by one:
    C code, a byte per nanosecond, enough for the few rounds a body of events
    needs. The rounds stop at a budget of four times the brackets' length; what
    is left is measured in one pass of Python instead (`_height`), so neither a
    body of many deep towers nor a long one refused late costs more than a few
    passes over it. The decisions are exactly those of peeling `limit` times:
    too deep when every round peeled something and something is left.
    """
    nesting = _nesting(raw)
    if len(nesting) <= limit:
        return
    budget = 4 * len(nesting)
    peeled_rounds = 0
    while peeled_rounds < limit:
        if budget < len(nesting):
            # the rounds left all peel iff a pair here is `rest` tall; something
            # is left after them iff one is taller, or something never matches
            rest = limit - peeled_rounds
            tallest, stray = _height(nesting, rest)
            if tallest > rest or (tallest == rest and stray):
                break
            return
        budget -= len(nesting)
        peeled = nesting.replace(b"()", b"")
        if len(peeled) == len(nesting):  # nothing left, or unbalanced: the decoder says so
            return
        nesting = peeled
        peeled_rounds += 1
    else:
        if not nesting:
            return
    raise InvalidInput(f"JSON nested deeper than {limit} levels")


def page_limit(rt: Runtime, limit: int | None) -> int:
    """A page's size: what the caller asked for, capped by `max_page` (the default too)."""
    cap = rt.config.limits.max_page
    if limit is None:
        return cap
    if limit < 0:
        raise InvalidInput("limit must be >= 0")
    return min(limit, cap)


def new_events(rt: Runtime, access: Access, body: wire.WireAppend) -> list[NewEvent]:
    """The events of one stream's append, within the server's count and size limits.

    Ids of `DERIVED_ID_VERSION` are the server's (CloudEvents ingest); only an
    admin may give one, so that copying a store onto a server keeps its ids.
    """
    limits = rt.config.limits
    if len(body.events) > limits.max_events_per_append:
        raise InvalidEvent(f"at most {limits.max_events_per_append} events per append")
    events = [e.to_new_event() for e in body.events]
    admin = access.is_admin
    for e in events:
        if len(e.data) > limits.max_event_bytes:
            raise InvalidEvent(f"event data larger than {limits.max_event_bytes} bytes")
        if not admin and _is_derived(e.id):
            # the server derives these for CloudEvents from the caller's principal;
            # a client choosing one could occupy another producer's next id
            raise InvalidEvent(
                f"event id {e.id}: UUIDs of version {DERIVED_ID_VERSION} are reserved "
                "for ids the server derives (CloudEvents); use another version"
            )
    return events


_VERSION_BITS = 0xF << 76
_VARIANT_BITS = 0b11 << 62
_DERIVED_BITS = (DERIVED_ID_VERSION << 76) | (0b10 << 62)


def _is_derived(event_id: UUID) -> bool:
    """`event_id.version == DERIVED_ID_VERSION`, as two masks of its integer: `UUID.version`
    and `.variant` are Python properties, a microsecond per event of an append."""
    return event_id.int & (_VERSION_BITS | _VARIANT_BITS) == _DERIVED_BITS


def append_requests(
    rt: Runtime, access: Access, streams: dict[str, wire.WireAppend], *, names: bool = True
) -> dict[str, AppendRequest]:
    """The appends of a request, access-checked and within the server's limits.

    `names=False` leaves the stream names to the store: a transactional commit
    fences the member before it checks its appends, as every engine does.
    """
    out: dict[str, AppendRequest] = {}
    total = 0
    for stream, body in streams.items():
        if names:
            validate_stream_name(stream)
        need_stream(access, stream, Permission.WRITE)
        if body.scheduled:
            raise InvalidEvent(
                "deliver_at/deliver_after schedule one stream's append "
                "(POST /v1/streams/{stream}/events), not an atomic multi-stream write"
            )
        events = new_events(rt, access, body)
        total += len(events)
        out[stream] = AppendRequest(events, parse_expected_version(body.expected_version))
    if total > rt.config.limits.max_events_per_append:
        raise InvalidEvent(f"at most {rt.config.limits.max_events_per_append} events per request")
    return out


# --------------------------------------------------------------------------- the schema registry

_REGISTRY_KEY = "schema_registry"
_LOCK_KEY = "schema_registry_lock"


def registry_of(state: State) -> tuple[SchemaRegistry, asyncio.Lock]:
    """The app's one registry (reading `$schemas` of its store) and the lock serializing it."""
    registry: SchemaRegistry | None = state.get(_REGISTRY_KEY)
    if registry is None:
        registry = SchemaRegistry(runtime(state).store)
        state[_REGISTRY_KEY] = registry
        state[_LOCK_KEY] = asyncio.Lock()
    lock: asyncio.Lock = state[_LOCK_KEY]
    return registry, lock
