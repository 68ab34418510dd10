"""The NATS JetStream engine: one stream per store, groups in its key-value bucket.

- `engine`: `NatsEngine`, reads, subscriptions, groups and the contract's write hook;
- `writer`: the group-commit writer, one atomic batch per turn, and what it caches;
- `reads`: API requests, last messages, direct-get pages and bisection, shared by both;
- `setup`: the stream and bucket layout, created or checked on open;
- `wire`: the subjects, headers and documents stored in JetStream;
- `errors`: JetStream API errors translated into tidelog's, in one place.
"""

from tidelog.engines.nats.engine import NatsConfig, NatsEngine, open_engine

__all__ = ["NatsConfig", "NatsEngine", "open_engine"]
