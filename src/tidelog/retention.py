"""Retention: policies that age out, cap or truncate streams, and the scavenger.

    await store.set_retention(RetentionPolicy(max_age=3600), category="order")
    await store.set_retention(RetentionPolicy(truncate_before=120), stream="account-7")
    await store.set_retention(RetentionPolicy(keep_latest=True), category="price")
    await store.retention()           # every rule
    await store.set_retention(None, category="order")   # clear
    await store.scavenge()            # delete now what the rules hide

Reads honour a rule at once; a scavenger in the background of every process
holding the store (one at a time per store, by lease) deletes later. The
semantics, and how they compare with Kafka, KurrentDB and NATS, are in
docs/retention.md. The values are defined beside the engines
(`tidelog.engines._kit.retention`), which apply them; this module names them.
"""

from __future__ import annotations

from tidelog.engines._kit.retention import (
    LOST_EVENTS_TYPE,
    RETENTION_STREAM,
    SYSTEM_STREAM,
    RetentionPolicy,
    RetentionRule,
    ScavengeReport,
)
from tidelog.engines._kit.scavenger import LostEvents

__all__ = [
    "LOST_EVENTS_TYPE",
    "RETENTION_STREAM",
    "SYSTEM_STREAM",
    "LostEvents",
    "RetentionPolicy",
    "RetentionRule",
    "ScavengeReport",
]
