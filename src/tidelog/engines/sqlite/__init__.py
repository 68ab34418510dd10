"""The SQLite engine: one file, one writer thread, group commit.

- `engine`: `SQLiteEngine`, reads and the contract's write hook;
- `writer`: the single writer thread and its batched transactions;
- `reads`: the log's query plans and rows made into events;
- `db`: the file's schema, migrations and pragmas; creating a file and
  truncating its WAL.
"""

from tidelog.engines.sqlite.db import SCHEMA_VERSION, migrate, schema_version
from tidelog.engines.sqlite.engine import (
    CHANGE_POLL_INTERVAL,
    SQLiteConfig,
    SQLiteEngine,
    open_engine,
)
from tidelog.engines.sqlite.reads import PAGE_GROWTH, PAGE_SIZE

__all__ = [
    "CHANGE_POLL_INTERVAL",
    "PAGE_GROWTH",
    "PAGE_SIZE",
    "SCHEMA_VERSION",
    "SQLiteConfig",
    "SQLiteEngine",
    "migrate",
    "open_engine",
    "schema_version",
]
