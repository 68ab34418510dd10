"""tidelog: an event store and a message queue in one.

The public API is what `__all__` names; everything else lives in private or
submodule namespaces and may change.
"""

from tidelog._connect import DEFAULT_STORE_URL, connect
from tidelog.codec import EventRegistry, decode, encode, event, upcaster
from tidelog.consumers import App, Context, HandlerOptions, ParkedEvent, Producer
from tidelog.engines.contract import Engine as Store
from tidelog.errors import (
    AccessDenied,
    AggregateNotFound,
    DuplicateEventId,
    GroupError,
    IncompatibleSchema,
    InvalidEvent,
    InvalidExpectedVersion,
    InvalidInput,
    InvalidStreamName,
    InvalidURL,
    NotSupported,
    SchemaViolation,
    StaleGeneration,
    StoreClosed,
    StoreUnavailable,
    StreamDeleted,
    TidelogError,
    UnknownEventType,
    WrongExpectedVersion,
)
from tidelog.model import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendRequest,
    AppendResult,
    ExpectedVersion,
    GroupMember,
    Membership,
    NewEvent,
    RecordedEvent,
    StreamInfo,
    StreamState,
    category_of,
    partition_of,
)
from tidelog.security.encryption import Personal

__version__ = "0.1.0"

__all__ = [
    "ANY",
    "App",
    "Context",
    "HandlerOptions",
    "ParkedEvent",
    "Producer",
    "AccessDenied",
    "AggregateNotFound",
    "DEFAULT_STORE_URL",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AppendRequest",
    "AppendResult",
    "DuplicateEventId",
    "EventRegistry",
    "ExpectedVersion",
    "GroupError",
    "GroupMember",
    "IncompatibleSchema",
    "InvalidEvent",
    "InvalidExpectedVersion",
    "InvalidInput",
    "InvalidStreamName",
    "InvalidURL",
    "Membership",
    "NewEvent",
    "NotSupported",
    "Personal",
    "RecordedEvent",
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
