"""Opening a NATS store: its options, its JetStream stream and its fixed settings.

Private to `tidelog.engines.nats`.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from typing import Any, Final, Literal

import msgspec
from nats.aio.client import Client as NatsClient

from tidelog.engines.nats import wire
from tidelog.engines.nats.errors import NotFound, raise_api
from tidelog.errors import InvalidURL, NotSupported, StoreUnavailable

__all__ = ["DEFAULT_PARTITIONS", "NatsConfig", "ensure_meta", "ensure_stream", "servers_of"]

log = logging.getLogger("tidelog.engines.nats")

DEFAULT_PARTITIONS: Final = 16


class NatsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Options of the NATS engine, from the URL's query string.

    `store` names the store: the JetStream stream `KV_tidelog_<store>` (also the
    key-value bucket `tidelog_<store>`) with the subjects `tl.<store>.>` and
    `$KV.tidelog_<store>.>`. `partitions` is fixed when the store is created and
    read back afterwards (None: 16, or whatever the store was created with).
    `replicas` is the JetStream replica count at creation (3 in a cluster).
    `storage=memory` loses every acknowledged event on a restart and is refused
    unless `allow_unsafe=true`.
    """

    store: str = "tidelog"
    partitions: int | None = None
    replicas: int = 1
    storage: Literal["file", "memory"] = "file"
    allow_unsafe: bool = False
    timeout: float = 5.0
    """Seconds to wait for one request to the server."""
    connect_timeout: float = 5.0
    append_timeout: float = 30.0
    """Seconds an append may keep losing compare-and-set races to other processes'
    writers before it fails with `StoreUnavailable` (retry with the same ids)."""


def servers_of(url: str) -> list[str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "nats":
        raise InvalidURL(url, "the NATS engine takes nats://host:port[,host:port...]")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    hosts = hosts or "127.0.0.1:4222"
    prefix = f"{userinfo}@" if userinfo else ""
    return [f"nats://{prefix}{h}" for h in hosts.split(",") if h]


MAX_MSGS_PER_SUBJECT: Final = 2**62
"""The stream's per-subject limit: large enough never to bite, yet at least 1.

Key-value clients refuse to bind a bucket whose stream has no per-subject limit
(`max_msgs_per_subject < 1`: nats-py's `key_value()`, nats.go's `KeyValue()`), and
the limit is the bucket's history. But one subject holds a whole tidelog stream,
so a real limit would delete events. 2**62 messages per subject cannot be
reached, and unlike int64's maximum (also accepted by the server) it is exact as
a float64, so tools that parse JSON numbers as doubles (JavaScript, jq) write the
setting back unchanged instead of as 2**63, which the server rejects.
"""


def _unsafe_limits(current: dict[str, Any]) -> list[str]:
    """The stream's limits under which JetStream would delete events or the head."""
    unsafe = []
    if int(current.get("max_age") or 0) > 0:
        unsafe.append("max_age")
    if current.get("discard", "old") == "old":
        unsafe += [k for k in ("max_msgs", "max_bytes") if int(current.get(k) or 0) > 0]
    if 0 < int(current.get("max_msgs_per_subject") or 0) < MAX_MSGS_PER_SUBJECT:
        unsafe.append("max_msgs_per_subject")
    return unsafe


async def ensure_stream(nc: NatsClient, url: str, config: NatsConfig) -> int:
    """Create the store's JetStream stream, or check that an existing one is safe; returns
    its replica count (the reader merges several subjects' reads only on one replica).

    The stream is `KV_tidelog_<store>`, which makes it the key-value bucket
    `tidelog_<store>` as well (see `wire`). A stream of the layout before
    that (`tidelog_<store>`, looked for only when the new one does not exist) is
    refused: tidelog is unreleased and does not migrate it.
    """
    js = wire.jstream_of(config.store)
    subjects = [f"tl.{config.store}.>", f"$KV.{wire.bucket_of(config.store)}.>"]
    wanted = {
        "name": js,
        "subjects": subjects,
        "retention": "limits",
        "storage": config.storage,
        "num_replicas": config.replicas,
        "discard": "old",
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": 0,
        "max_msgs_per_subject": MAX_MSGS_PER_SUBJECT,
        "duplicate_window": 120_000_000_000,
        "allow_atomic": True,
        "allow_direct": True,
        "allow_rollup_hdrs": True,
        "deny_delete": True,
    }

    async def api(op: str, body: object) -> dict[str, Any]:
        msg = await nc.request(f"$JS.API.{op}", wire.json_bytes(body), timeout=config.timeout)
        resp: dict[str, Any] = json.loads(msg.data)
        return resp

    info = await api(f"STREAM.INFO.{js}", {})
    if info.get("error", {}).get("err_code") == wire.STREAM_NOT_FOUND:
        old = f"tidelog_{config.store}"
        if "error" not in await api(f"STREAM.INFO.{old}", {}):
            raise NotSupported(
                "nats",
                f"the store layout of JetStream stream {old}",
                f"the layout changed: a store is now the stream {js} (the key-value bucket "
                f"{wire.bucket_of(config.store)}, holding the consumer groups) and tidelog does "
                f"not migrate development stores; delete the stream {old} or use another store",
            )
        created = await api(f"STREAM.CREATE.{js}", wanted)
        if created.get("error") and created["error"].get("err_code") != 10058:  # name in use
            raise_api(created)
        info = await api(f"STREAM.INFO.{js}", {})
    raise_api(info)
    current = info["config"]
    if current.get("storage") != "file" and not config.allow_unsafe:
        raise NotSupported(
            "nats",
            f"a store on {current.get('storage')} storage",
            "acknowledged events would be lost on a restart; pass allow_unsafe=true to accept",
        )
    for subject in subjects:
        if subject not in current.get("subjects", []):
            raise InvalidURL(url, f"JetStream stream {js} does not capture {subject}")
    unsafe = _unsafe_limits(current)
    if unsafe:
        raise NotSupported(
            "nats",
            f"JetStream stream {js} with the limits {', '.join(unsafe)}",
            "JetStream would delete events and the store's head; remove the limits",
        )
    if int(current.get("num_replicas", 1)) < config.replicas:
        log.warning(
            "JetStream stream %s has %s replicas, fewer than the %s asked for",
            js,
            current.get("num_replicas"),
            config.replicas,
        )
    repair: dict[str, object] = {
        k: True for k in ("allow_atomic", "allow_direct", "allow_rollup_hdrs") if not current.get(k)
    }
    if int(current.get("max_msgs_per_subject") or 0) < 1:  # no limit: KV clients would not bind
        repair["max_msgs_per_subject"] = MAX_MSGS_PER_SUBJECT
    if repair:
        current.update(repair)
        raise_api(await api(f"STREAM.UPDATE.{js}", current))
    return int(current.get("num_replicas") or 1)


async def ensure_meta(nc: NatsClient, url: str, config: NatsConfig) -> int:
    """Read the store's partition count, writing it first when the store is new."""
    js = wire.jstream_of(config.store)
    subject = f"tl.{config.store}.meta"
    for _ in range(10):
        msg = await nc.request(
            f"$JS.API.STREAM.MSG.GET.{js}",
            wire.json_bytes({"last_by_subj": subject}),
            timeout=config.timeout,
        )
        resp = json.loads(msg.data)
        try:
            raise_api(resp)
        except NotFound:
            meta = wire.Meta(partitions=config.partitions or DEFAULT_PARTITIONS)
            ack = await nc.request(
                subject,
                wire.encode_meta(meta),
                timeout=config.timeout,
                headers={wire.EXPECTED_LAST_SUBJECT_SEQ: "0"},
            )
            ack_resp = json.loads(ack.data)
            if ack_resp.get("error", {}).get("err_code") in wire.WRONG_LAST_SEQUENCE:
                continue
            raise_api(ack_resp)
            return meta.partitions
        stored = wire.decode_meta(wire.parse_api_message(resp["message"]).data)
        if config.partitions is not None and config.partitions != stored.partitions:
            raise InvalidURL(
                url,
                f"store {config.store!r} was created with {stored.partitions} partitions; "
                "the count is fixed at creation",
            )
        return stored.partitions
    raise StoreUnavailable("could not read the store's settings")
