"""The public API is exactly what `tidelog.__all__` names, and every name resolves.

Adding a public name is a decision: add it to `__all__` and to the list below
(one name per line, sorted, so concurrent additions merge cleanly).
"""

from __future__ import annotations

import importlib

import tidelog

PUBLIC_NAMES = [
    "ANY",
    "AccessDenied",
    "AggregateNotFound",
    "App",
    "AppendRequest",
    "AppendResult",
    "Context",
    "DEFAULT_STORE_URL",
    "DuplicateEventId",
    "EventRegistry",
    "ExpectedVersion",
    "GroupError",
    "GroupMember",
    "HandlerOptions",
    "IncompatibleSchema",
    "InvalidEvent",
    "InvalidExpectedVersion",
    "InvalidInput",
    "InvalidStreamName",
    "InvalidURL",
    "Membership",
    "NO_STREAM",
    "NewEvent",
    "NotSupported",
    "ParkedEvent",
    "Personal",
    "Producer",
    "RecordedEvent",
    "STREAM_EXISTS",
    "SchemaViolation",
    "StaleGeneration",
    "Store",
    "StoreClosed",
    "StoreUnavailable",
    "StreamDeleted",
    "StreamInfo",
    "StreamState",
    "TidelogError",
    "UnknownEventType",
    "WrongExpectedVersion",
    "__version__",
    "category_of",
    "connect",
    "decode",
    "encode",
    "event",
    "partition_of",
    "upcaster",
]


def test_all_is_pinned() -> None:
    assert sorted(tidelog.__all__) == PUBLIC_NAMES


def test_all_has_no_duplicates() -> None:
    assert len(set(tidelog.__all__)) == len(tidelog.__all__)


def test_every_public_name_resolves() -> None:
    module = importlib.import_module("tidelog")
    for name in tidelog.__all__:
        assert getattr(module, name, None) is not None, name


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from tidelog import *", namespace)
    exported = {k for k in namespace if k != "__builtins__"}
    assert exported == set(tidelog.__all__)


def test_store_is_the_full_engine_contract() -> None:
    from tidelog.engines.contract import GroupEngine

    assert tidelog.Store is GroupEngine


def test_version_is_a_string() -> None:
    assert isinstance(tidelog.__version__, str)
    assert tidelog.__version__.count(".") >= 2
