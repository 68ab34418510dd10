"""How the NATS engine lays a tidelog store out in one JetStream stream.

Private to `tidelog.engines.nats`. One JetStream stream per store, named
`KV_tidelog_<store>`, captures `tl.<store>.>` and `$KV.tidelog_<store>.>`; what
a message is follows from its subject:

    tl.<store>.e.<partition>.<category>.<stream>   events of <stream>, and its tombstone
    tl.<store>.i.<event id hex>                    id index: where an event id was stored
    tl.<store>.head                                the last position given out (rollup: one message)
    tl.<store>.meta                                the store's fixed settings (partitions)
    $KV.tidelog_<store>.groups.<hex group>.<hex category>
                                                   one consumer group: GroupState + checkpoints

A JetStream key-value bucket is nothing but a stream named `KV_<bucket>` that
captures `$KV.<bucket>.>` (NATS ADR-8), so the store's stream *is* the key-value
bucket `tidelog_<store>` and the group documents are its keys
`groups.<hex group>.<hex category>`: KV tools (`nats kv get`, nats-py's
`js.key_value(...)`) read them, and the engine's compare-and-set writes are KV
updates. They stay in the store's own stream because an atomic batch covers one
stream only: a transactional commit puts the group update and the handler's
appends in one batch. Event subjects are outside `$KV.`, so they are no keys.

Stream names are ASCII `[A-Za-z0-9_@:-]` with an optional leading `$`, all legal
in a NATS subject token (`.`, `*`, `>` and whitespace are not allowed by the
name rules), so they go into subjects unchanged. Group and category names are
hex-encoded because they are keys only and never filtered on.

Positions are not JetStream sequences (index, tombstone and group messages take
sequences too, and the contract wants a gap-free log): every batch of appends
(one engine's group commit) reads the `head` message, numbers its events from
there and replaces the head in the same atomic batch with a compare-and-set.
So positions are dense and grow with sequences, and a reader can find where a
position starts by binary search over sequences.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

import msgspec

from tidelog.engines._kit.groups import GroupState
from tidelog.model import (
    NewEvent,
    RecordedEvent,
    category_of,
    decode_metadata,
    encode_metadata,
    partition_of,
)

KIND: Final = "Tl-Kind"
TOMBSTONE: Final = "tombstone"
EXPECTED_LAST_SUBJECT_SEQ: Final = "Nats-Expected-Last-Subject-Sequence"
ROLLUP: Final = "Nats-Rollup"
BATCH_ID: Final = "Nats-Batch-Id"
BATCH_SEQ: Final = "Nats-Batch-Sequence"
BATCH_COMMIT: Final = "Nats-Batch-Commit"
MAX_BATCH_MESSAGES: Final = 1000
"""nats-server's limit on the messages of one atomic batch."""

WRONG_LAST_SEQUENCE: Final = frozenset({10071, 10164})
"""JetStream error codes of a failed expected-last-subject-sequence check."""
NOT_FOUND: Final = 10037
STREAM_NOT_FOUND: Final = 10059
KV_OPERATION: Final = "KV-Operation"
"""Header of a key-value delete (`DEL`) or purge (`PURGE`) marker; absent on a put."""
KV_REMOVED: Final = frozenset({"DEL", "PURGE"})


def bucket_of(store: str) -> str:
    """The key-value bucket the store's stream is: `tidelog_<store>`."""
    return f"tidelog_{store}"


def jstream_of(store: str) -> str:
    """The store's JetStream stream, `KV_tidelog_<store>` (a KV bucket's stream name)."""
    return f"KV_{bucket_of(store)}"


class Envelope(msgspec.Struct, array_like=True, frozen=True):
    """An event's payload as stored (msgpack); the stream comes from the subject."""

    id: bytes
    type: str
    data: bytes
    metadata: bytes
    schema_version: int
    version: int
    position: int
    recorded_at: int
    """Microseconds since the epoch, set by the writer."""


class IndexEntry(msgspec.Struct, array_like=True, frozen=True):
    """Where an event id was stored."""

    stream: str
    version: int
    position: int


class GroupDoc(msgspec.Struct, kw_only=True):
    """One consumer group on one category: membership and checkpoints together,
    so a commit's fencing check and its checkpoint move in one compare-and-set."""

    state: GroupState = msgspec.field(default_factory=GroupState)
    checkpoints: dict[int, int] = msgspec.field(default_factory=dict)


class Meta(msgspec.Struct, kw_only=True):
    format: int = 1
    partitions: int


_ENV_ENC: Final = msgspec.msgpack.Encoder()
_ENV_DEC: Final = msgspec.msgpack.Decoder(Envelope)
_IDX_DEC: Final = msgspec.msgpack.Decoder(IndexEntry)
_GROUP_DEC: Final = msgspec.json.Decoder(GroupDoc)
_META_DEC: Final = msgspec.json.Decoder(Meta)
_JSON_ENC: Final = msgspec.json.Encoder()


class Layout:
    """Subjects of one store."""

    def __init__(self, store: str, partitions: int) -> None:
        self.store = store
        self.partitions = partitions
        self.root = f"tl.{store}"
        self.all = f"{self.root}.>"
        self.bucket = bucket_of(store)
        self.jstream = jstream_of(store)
        self.kv = f"$KV.{self.bucket}"
        self.events = f"{self.root}.e.>"
        self.groups = f"{self.kv}.groups.>"
        self.meta = f"{self.root}.meta"
        self.head = f"{self.root}.head"

    def stream_subject(self, stream: str) -> str:
        p = partition_of(stream, self.partitions)
        return f"{self.root}.e.{p}.{category_of(stream)}.{stream}"

    def events_filter(self, category: str | None, partition: int | None) -> str:
        p = "*" if partition is None else str(partition)
        c = "*" if category is None else category
        return f"{self.root}.e.{p}.{c}.*"

    @property
    def index_prefix(self) -> str:
        return f"{self.root}.i."

    def index_subject(self, event_id: UUID) -> str:
        return f"{self.index_prefix}{event_id.hex}"

    @staticmethod
    def group_key(group: str, category: str) -> str:
        """The group's key in the store's KV bucket."""
        return f"groups.{group.encode().hex()}.{category.encode().hex()}"

    def group_subject(self, group: str, category: str) -> str:
        return f"{self.kv}.{self.group_key(group, category)}"

    def parse_group_subject(self, subject: str) -> tuple[str, str]:
        _, _, _, g, c = subject.split(".")
        return bytes.fromhex(g).decode(), bytes.fromhex(c).decode()

    @staticmethod
    def stream_of(subject: str) -> str:
        return subject.rsplit(".", 1)[1]


def encode_event(event: NewEvent, version: int, position: int, now: datetime) -> bytes:
    env = Envelope(
        id=event.id.bytes,
        type=event.type,
        data=event.data,
        metadata=encode_metadata(event.metadata),
        schema_version=event.schema_version,
        version=version,
        position=position,
        recorded_at=int(now.timestamp() * 1_000_000),
    )
    return _ENV_ENC.encode(env)


def decode_envelope(payload: bytes) -> Envelope:
    return _ENV_DEC.decode(payload)


def decode_event(stream: str, payload: bytes) -> RecordedEvent:
    env = _ENV_DEC.decode(payload)
    return RecordedEvent(
        id=UUID(bytes=env.id),
        stream=stream,
        version=env.version,
        position=env.position,
        type=env.type,
        data=env.data,
        metadata=decode_metadata(env.metadata),
        recorded_at=datetime.fromtimestamp(env.recorded_at / 1_000_000, UTC),
        schema_version=env.schema_version,
    )


def encode_index(entry: IndexEntry) -> bytes:
    return _ENV_ENC.encode(entry)


def decode_index(payload: bytes) -> IndexEntry:
    return _IDX_DEC.decode(payload)


def encode_group(doc: GroupDoc) -> bytes:
    return _JSON_ENC.encode(doc)


def decode_group(payload: bytes) -> GroupDoc:
    return _GROUP_DEC.decode(payload)


def encode_meta(meta: Meta) -> bytes:
    return _JSON_ENC.encode(meta)


def decode_meta(payload: bytes) -> Meta:
    return _META_DEC.decode(payload)


class StoredMsg(msgspec.Struct, frozen=True):
    """A message read back from the stream."""

    subject: str
    seq: int
    headers: Mapping[str, str]
    data: bytes

    @property
    def is_tombstone(self) -> bool:
        return self.headers.get(KIND) == TOMBSTONE

    @property
    def is_kv_removed(self) -> bool:
        """A key-value delete or purge marker (an operator's `nats kv del`/`purge`)."""
        return self.headers.get(KV_OPERATION) in KV_REMOVED


def parse_api_message(resp: Mapping[str, Any]) -> StoredMsg:
    """The `message` of a `$JS.API.STREAM.MSG.GET` reply (base64 headers and data)."""
    headers: dict[str, str] = {}
    raw_hdrs = resp.get("hdrs")
    if raw_hdrs:
        text = base64.b64decode(raw_hdrs).decode("utf-8", "replace")
        for line in text.split("\r\n")[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip()] = value.strip()
    raw_data = resp.get("data")
    data = base64.b64decode(raw_data) if raw_data else b""
    return StoredMsg(subject=resp["subject"], seq=int(resp["seq"]), headers=headers, data=data)


def json_bytes(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
