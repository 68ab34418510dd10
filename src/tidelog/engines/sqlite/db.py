"""SQLite plumbing for the sqlite engine: connections, the schema and its migrations,
and the one place where sqlite3 errors become tidelog errors.

The schema version lives in `PRAGMA user_version` (in the database header, so it
changes atomically with the DDL of a migration). `MIGRATIONS` is append-only:
a released step is never edited, a change is a new step. Opening a store runs
the missing steps inside one `BEGIN IMMEDIATE` transaction, so two processes
opening a fresh file at once cannot both migrate it.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from typing import Final

import msgspec

from tidelog._files import make_private_dirs
from tidelog.engines._kit.groups import GroupState
from tidelog.errors import NotSupported, StoreUnavailable, TidelogError

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "connect",
    "db_errors",
    "group_state",
    "create_private",
    "is_busy",
    "migrate",
    "migrate_connection",
    "prepare_file",
    "schema_version",
    "translate",
    "truncate_wal",
]

MIGRATIONS: Final[tuple[tuple[int, tuple[str, ...]], ...]] = (
    (
        1,
        (
            # Store-wide settings fixed at creation (the partition count).
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
            # The log. `position` is the rowid: positions are assigned by the writer
            # under the write lock, so position order is commit order. recorded_at is
            # in microseconds since the epoch (UTC); metadata is compact JSON.
            """CREATE TABLE events (
                position INTEGER PRIMARY KEY,
                id BLOB NOT NULL UNIQUE,
                stream TEXT NOT NULL,
                version INTEGER NOT NULL,
                type TEXT NOT NULL,
                data BLOB NOT NULL,
                metadata BLOB NOT NULL,
                recorded_at INTEGER NOT NULL,
                schema_version INTEGER NOT NULL,
                category TEXT NOT NULL,
                partition INTEGER NOT NULL
            )""",
            "CREATE UNIQUE INDEX events_stream_version ON events (stream, version)",
            "CREATE INDEX events_category_position ON events (category, position)",
            # One row per stream with its last version (NULL: no events) and tombstone.
            """CREATE TABLE streams (
                name TEXT PRIMARY KEY,
                category TEXT NOT NULL,
                version INTEGER,
                deleted INTEGER NOT NULL DEFAULT 0
            ) WITHOUT ROWID""",
            "CREATE INDEX streams_category ON streams (category, name)",
        ),
    ),
    (
        2,
        (
            # Consumer groups: the GroupState document (msgspec JSON) per (group, category).
            """CREATE TABLE groups (
                grp TEXT NOT NULL,
                category TEXT NOT NULL,
                state BLOB NOT NULL,
                PRIMARY KEY (grp, category)
            ) WITHOUT ROWID""",
            """CREATE TABLE checkpoints (
                grp TEXT NOT NULL,
                category TEXT NOT NULL,
                partition INTEGER NOT NULL,
                position INTEGER NOT NULL,
                PRIMARY KEY (grp, category, partition)
            ) WITHOUT ROWID""",
        ),
    ),
    (
        3,
        (
            # A consumer group's partition run reads one partition of one category:
            # without this index it would walk the whole category and filter.
            "CREATE INDEX events_category_partition_position"
            " ON events (category, partition, position)",
        ),
    ),
)

SCHEMA_VERSION: Final = MIGRATIONS[-1][0]

_BUSY_CODES: Final = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_GROUP_DECODER: Final = msgspec.json.Decoder(GroupState)


def group_state(document: bytes | None) -> GroupState:
    """A group's `groups.state` column as a `GroupState`; no row is a new, empty group."""
    return GroupState() if document is None else _GROUP_DECODER.decode(document)


# --------------------------------------------------------------------------- errors


def is_busy(exc: BaseException) -> bool:
    """True for SQLITE_BUSY / SQLITE_LOCKED (any extended code): another writer holds the lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (
        isinstance(exc, sqlite3.OperationalError)
        and code is not None
        and (code & 0xFF) in _BUSY_CODES
    )


def translate(exc: sqlite3.Error) -> TidelogError:
    """The one mapping from sqlite3 errors to the tidelog tree.

    Everything the driver raises is a backend failure from the caller's point
    of view (I/O errors, a full disk, a corrupt or foreign file, a lock held
    past the busy timeout): `StoreUnavailable`, whose contract is "the outcome
    of a write is unknown, retry with the same event ids". Conflicts the caller
    can act on (versions, tombstones, duplicate ids) are detected by the engine
    itself and never come from here.
    """
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    error = StoreUnavailable(f"sqlite: {name}: {exc}")
    error.__cause__ = exc
    return error


@contextlib.contextmanager
def db_errors() -> Iterator[None]:
    """Run a block of sqlite3 calls, raising translated errors."""
    try:
        yield
    except sqlite3.Error as exc:
        raise translate(exc) from exc


# --------------------------------------------------------------------------- connections


def _rw_uri(path: str) -> str:
    """A `file:` URI that opens `path` read-write but never creates it."""
    return "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=rw"


def connect(
    path: str | os.PathLike[str],
    *,
    synchronous: str = "full",
    busy_timeout: float = 30.0,
    read_only: bool = False,
    uri: bool = False,
) -> sqlite3.Connection:
    """A connection in autocommit mode (the engine issues BEGIN itself).

    `check_same_thread=False` because the engine hands connections to the
    thread that owns them after opening them elsewhere, and closes them from
    the closing thread once that thread has stopped; a connection is never
    used by two threads at once.
    """
    conn = sqlite3.connect(
        os.fspath(path),
        timeout=busy_timeout,
        isolation_level=None,
        check_same_thread=False,
        cached_statements=256,
        uri=uri,
    )
    try:
        conn.execute(f"PRAGMA synchronous = {'FULL' if synchronous == 'full' else 'NORMAL'}")
        # After a checkpoint, truncate the WAL file back to at most 64 MiB so that a
        # burst of writes does not leave a huge file behind.
        conn.execute("PRAGMA journal_size_limit = 67108864")
        if read_only:
            conn.execute("PRAGMA query_only = 1")
    except BaseException:
        conn.close()
        raise
    return conn


def migrate_connection(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Apply the missing migration steps up to `target` in one transaction; return the version.

    Raises `NotSupported` for a file written by a newer tidelog (a higher
    version than this code knows): it refuses rather than guessing.
    """
    if not conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone():
        # A new file: freed pages go back to the file system on demand
        # (retention's deletes run `incremental_vacuum`). Only an empty file
        # can take this; an older store needs one `VACUUM` (docs/retention.md).
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreUnavailable(f"sqlite: could not switch the database to WAL mode (got {mode})")
    conn.execute("BEGIN IMMEDIATE")
    try:
        current: int = conn.execute("PRAGMA user_version").fetchone()[0]
        if current > SCHEMA_VERSION:
            raise NotSupported(
                "sqlite",
                f"schema version {current}",
                f"the file was written by a newer tidelog (this one knows up to {SCHEMA_VERSION})",
            )
        for version, statements in MIGRATIONS:
            if current < version <= target:
                for statement in statements:
                    conn.execute(statement)
                current = version
        conn.execute(f"PRAGMA user_version = {int(current)}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return current


def migrate(path: str | os.PathLike[str], target: int = SCHEMA_VERSION) -> int:
    """Create or upgrade the tidelog schema of the SQLite file at `path`; return its version.

    Safe to run while other processes use the file (the steps run under the
    write lock). Opening a store migrates too; this is for `tidelog
    migrate-schema` and for tests that build an older schema (`target`).
    """
    create_private(path)
    with db_errors():
        conn = connect(path)
        try:
            return migrate_connection(conn, target)
        finally:
            conn.close()


def schema_version(path: str | os.PathLike[str]) -> int:
    """The schema version of the file at `path` (0: not a tidelog store yet)."""
    with db_errors():
        conn = connect(path, read_only=True)
        try:
            version: int = conn.execute("PRAGMA user_version").fetchone()[0]
            return version
        finally:
            conn.close()


# --------------------------------------------------------------------------- files


def create_private(path: str | os.PathLike[str]) -> None:
    """Create the database file 0600 (and its directory 0700) unless it exists.

    SQLite would create it with 0644 under a 022 umask; an empty file is a
    valid empty database, so creating it first fixes the mode. SQLite gives the
    -wal, -shm and -journal files the mode of the database file, so they
    follow. An existing file keeps its mode.
    """
    make_private_dirs(pathlib.Path(path).parent)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def prepare_file(
    path: str, busy_timeout: float, partitions: int, *, must_exist: bool = False
) -> int | None:
    """Create or migrate the store file; return its partition count.

    A new file stores `partitions`; an existing one keeps (and returns) the
    count it was created with, which the caller compares with what it asked for.
    Runs under the write lock, so two processes creating the file at once agree.
    With `must_exist`, a missing file is left missing and None is returned:
    SQLite itself refuses to create it (`mode=rw`), so no directory or file
    appears even if the path vanishes while we look.
    """
    if must_exist and not os.path.isfile(path):
        return None
    if not must_exist:
        create_private(path)
    with db_errors():
        try:
            conn = (
                connect(_rw_uri(path), busy_timeout=busy_timeout, uri=True)
                if must_exist
                else connect(path, busy_timeout=busy_timeout)
            )
        except sqlite3.OperationalError:
            if must_exist and not os.path.exists(path):
                return None  # removed since we looked
            raise
        try:
            migrate_connection(conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT value FROM meta WHERE key = 'partitions'").fetchone()
                if row is None:
                    stored = partitions
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('partitions', ?)", (str(stored),)
                    )
                else:
                    stored = int(row[0])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            conn.close()
    return stored


def truncate_wal(path: str, busy_timeout: float) -> None:
    """Checkpoint every WAL frame into the database and truncate the WAL to zero bytes.

    Readers that are in the middle of a read hold old frames; wait them out (up
    to `busy_timeout`) rather than leave the frames on disk.
    """
    deadline = time.monotonic() + busy_timeout
    with contextlib.closing(connect(path, busy_timeout=busy_timeout)) as conn:
        while True:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return
            if time.monotonic() > deadline:
                raise StoreUnavailable("could not truncate the WAL: readers kept it busy")
            time.sleep(0.01)
