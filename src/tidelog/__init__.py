"""tidelog: an event store and a message queue in one.

The public API is what `__all__` names; everything else lives in private or
submodule namespaces and may change.
"""

from tidelog._connect import DEFAULT_STORE_URL, connect
from tidelog.engines.base import Engine as Store
from tidelog.errors import (
    DuplicateEventId,
    GroupError,
    InvalidEvent,
    InvalidExpectedVersion,
    InvalidInput,
    InvalidStreamName,
    InvalidURL,
    NotSupported,
    StaleGeneration,
    StoreClosed,
    StoreUnavailable,
    StreamDeleted,
    TidelogError,
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

__version__ = "0.1.0"

__all__ = [
    "ANY",
    "DEFAULT_STORE_URL",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AppendRequest",
    "AppendResult",
    "DuplicateEventId",
    "ExpectedVersion",
    "GroupError",
    "GroupMember",
    "InvalidEvent",
    "InvalidExpectedVersion",
    "InvalidInput",
    "InvalidStreamName",
    "InvalidURL",
    "Membership",
    "NewEvent",
    "NotSupported",
    "RecordedEvent",
    "StaleGeneration",
    "Store",
    "StoreClosed",
    "StoreUnavailable",
    "StreamDeleted",
    "StreamInfo",
    "StreamState",
    "TidelogError",
    "WrongExpectedVersion",
    "__version__",
    "category_of",
    "connect",
    "partition_of",
]
