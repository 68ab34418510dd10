"""tidelog: an event store and a message queue in one.

The public API is what `__all__` names (sorted, and pinned by
`tests/test_public_api.py`); everything else lives in submodules and private
modules and may change.

**What the top level carries.** What an application's own code names every
day, and nothing else:

- the model: events, results, expected versions, stream and group values,
  `category_of`, `partition_of` (`tidelog.model`);
- every error (`tidelog.errors`);
- the store: `connect`, `DEFAULT_STORE_URL`, and `Store`, the one name of the
  store type (the full engine contract; the contract's own layers are named in
  `tidelog.engines.contract`);
- each feature's everyday names, the ones an application writes by hand:

  | feature, and the rest of its names | everyday names at the top level |
  |---|---|
  | `tidelog.codec` | `event`, `EventRegistry`, `encode`, `decode`, `upcaster` |
  | `tidelog.aggregates` | `Aggregate`, `Repository`, `applies` |
  | `tidelog.projections` | `Projection`, `ProjectionRunner`, `handles` |
  | `tidelog.consumers` | `App`, `Context`, `HandlerOptions`, `ParkedEvent`, `Producer` |
  | `tidelog.retention` | `RetentionPolicy` |
  | `tidelog.schemas` | `SchemaRegistry` |
  | `tidelog.security` | `Personal`, `PersonalData` |

Tools give the top level no name: the server (`tidelog.server`), the
conformance suite (`tidelog.testing`), telemetry (`tidelog.telemetry`), the
command line (`tidelog.cli`), copying a store (`tidelog.copy`) and the HTTP
wire format (`tidelog.wire`); `import tidelog` imports none of the first four,
which need optional extras or are programs. Nor does the synchronous API
(`tidelog.sync`): sync code writes `tidelog.sync.connect(url)`, and its names
(`SyncStore`, and a `Repository` and `Producer` of its own) would collide with
the async ones at the top level. The engines (`tidelog.engines`)
are chosen by URL in `connect`, which imports the one it needs.
"""

from tidelog._connect import DEFAULT_STORE_URL, connect
from tidelog.aggregates import Aggregate, Repository, applies
from tidelog.codec import EventRegistry, decode, encode, event, upcaster
from tidelog.consumers import App, Context, HandlerOptions, ParkedEvent, Producer
from tidelog.engines.contract import GroupEngine as Store
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
    ScheduledEvent,
    ScheduledResult,
    StreamInfo,
    StreamState,
    category_of,
    partition_of,
)
from tidelog.projections import Projection, ProjectionRunner, handles
from tidelog.retention import RetentionPolicy
from tidelog.schemas import SchemaRegistry
from tidelog.security import Personal, PersonalData

__version__ = "0.1.0"

__all__ = [
    "ANY",
    "AccessDenied",
    "Aggregate",
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
    "PersonalData",
    "Producer",
    "Projection",
    "ProjectionRunner",
    "RecordedEvent",
    "Repository",
    "RetentionPolicy",
    "STREAM_EXISTS",
    "ScheduledEvent",
    "ScheduledResult",
    "SchemaRegistry",
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
    "applies",
    "category_of",
    "connect",
    "decode",
    "encode",
    "event",
    "handles",
    "partition_of",
    "upcaster",
]
