"""The PostgreSQL engine's schema: versioned migrations and the SQL it runs.

Each store lives in its own PostgreSQL schema (`?schema=tidelog` by default),
so several stores (and test runs) share one database without touching each
other. `schema_migrations` records which migrations ran; `migrate` applies the
missing ones in one transaction under an advisory lock, so two processes
opening a new store at once cannot both create it. Migrations are append-only:
a released one is never edited, a change is a new one.

Upgrade notes:
- 1: events (the log, keyed by position), streams (heads and tombstones),
  meta (store options such as the partition count).
- 2: consumer groups (one `GroupState` document per group and category) and
  checkpoints (one row per group, category and partition).
- 3: indexes for category reads and category listings.
"""

from __future__ import annotations

import re
import zlib
from typing import Any, Final

from tidelog.errors import InvalidURL, NotSupported

__all__ = [
    "LATEST_VERSION",
    "MIGRATIONS",
    "Sql",
    "advisory_keys",
    "current_version",
    "migrate",
    "migration_lock",
    "validate_schema_name",
]

_SCHEMA_RE: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_LOCK_CLASS: Final = 0x74646C67  # "tdlg": appends of one store
_MIGRATION_LOCK_CLASS: Final = 0x74646D67  # "tdmg": migrations of one store

MIGRATIONS: Final[tuple[tuple[int, str, tuple[str, ...]], ...]] = (
    (
        1,
        "events, streams and store options",
        (
            "CREATE TABLE {s}.meta (key text PRIMARY KEY, value text NOT NULL)",
            """CREATE TABLE {s}.events (
                position bigint PRIMARY KEY,
                id uuid NOT NULL,
                stream text NOT NULL,
                version bigint NOT NULL,
                type text NOT NULL,
                data bytea NOT NULL,
                metadata json NOT NULL,
                schema_version integer NOT NULL,
                recorded_at timestamptz NOT NULL,
                category text NOT NULL,
                partition integer NOT NULL,
                CONSTRAINT events_id_key UNIQUE (id),
                CONSTRAINT events_stream_version_key UNIQUE (stream, version)
            )""",
            """CREATE TABLE {s}.streams (
                name text PRIMARY KEY,
                category text NOT NULL,
                version bigint,
                deleted boolean NOT NULL DEFAULT false
            )""",
        ),
    ),
    (
        2,
        "consumer groups and checkpoints",
        (
            """CREATE TABLE {s}.groups (
                grp text NOT NULL,
                category text NOT NULL,
                state json NOT NULL,
                PRIMARY KEY (grp, category)
            )""",
            """CREATE TABLE {s}.checkpoints (
                grp text NOT NULL,
                category text NOT NULL,
                partition integer NOT NULL,
                position bigint NOT NULL,
                PRIMARY KEY (grp, category, partition)
            )""",
        ),
    ),
    (
        3,
        "indexes for category reads",
        (
            "CREATE INDEX events_category_position ON {s}.events (category, position)",
            'CREATE INDEX streams_category_name ON {s}.streams (category, name COLLATE "C")',
        ),
    ),
)

LATEST_VERSION: Final = MIGRATIONS[-1][0]


def validate_schema_name(url: str, schema: str) -> str:
    """Schema names are plain lowercase identifiers, so they can be quoted safely."""
    if _SCHEMA_RE.fullmatch(schema) is None:
        raise InvalidURL(
            url, f"schema {schema!r} must be lowercase letters, digits and '_', at most 63"
        )
    return schema


def _schema_key(schema: str) -> int:
    return zlib.crc32(schema.encode("ascii")) - 2**31


def advisory_keys(schema: str) -> tuple[int, int]:
    """The (class, key) of the advisory lock that serializes the appends of one store."""
    return _LOCK_CLASS, _schema_key(schema)


def migration_lock(schema: str) -> str:
    """The statement that takes the store's migration lock for the rest of a transaction.

    Taken by `migrate` and by DDL run outside it (the `scheduled` table, created
    when first needed), so that two processes never create one table at once.
    """
    return f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_CLASS}, {_schema_key(schema)})"


async def current_version(conn: Any, schema: str) -> int:
    """The store's schema version; 0 when it has none yet."""
    exists = await conn.fetchval(
        "SELECT to_regclass($1) IS NOT NULL", f'"{schema}".schema_migrations'
    )
    if not exists:
        return 0
    version: int = await conn.fetchval(
        f'SELECT coalesce(max(version), 0) FROM "{schema}".schema_migrations'
    )
    return version


async def migrate(conn: Any, schema: str, target: int | None = None) -> list[int]:
    """Bring the store in `schema` up to `target` (default: latest); returns the versions applied.

    Runs in one transaction under an advisory lock: concurrent openers wait,
    then find nothing left to do. A store newer than this code is refused.
    """
    goal = LATEST_VERSION if target is None else target
    s = f'"{schema}"'
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute(migration_lock(schema))
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {s}.schema_migrations ("
            "version integer PRIMARY KEY, description text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = await current_version(conn, schema)
        if current > LATEST_VERSION:
            raise NotSupported(
                "postgres",
                f"store schema version {current}",
                f"this tidelog knows versions up to {LATEST_VERSION}; upgrade tidelog",
            )
        for version, description, statements in MIGRATIONS:
            if current < version <= goal:
                for statement in statements:
                    await conn.execute(statement.replace("{s}", s))
                await conn.execute(
                    f"INSERT INTO {s}.schema_migrations (version, description) VALUES ($1, $2)",
                    version,
                    description,
                )
                applied.append(version)
    return applied


class Sql:
    """Every statement the engine runs, with the store's schema filled in once."""

    def __init__(self, schema: str) -> None:
        s = f'"{schema}"'
        lock_class, lock_key = advisory_keys(schema)
        self.channel = f"tidelog_{schema}"[:63]
        # Custom plans in write transactions: a generic plan cached while the
        # table was small (a new store) keeps its sequential scans as the table
        # grows, until autoanalyze invalidates it. The id lookup of a group
        # commit ran a seq scan of the whole log that way (1 ms per 3,000 events).
        self.begin_write = (
            "SET LOCAL synchronous_commit = on; SET LOCAL plan_cache_mode = force_custom_plan; "
            f"SELECT pg_advisory_xact_lock({lock_class}, {lock_key})"
        )
        self.begin_append = f"BEGIN; {self.begin_write}"
        """A group commit's transaction: BEGIN, settings and the append lock in one round trip."""
        self.sync_on = "SET LOCAL synchronous_commit = on"
        # The head never moves back, even after `purge_stream` erased the newest
        # events: the high-water mark in meta keeps their positions from reuse.
        head = (
            f"greatest((SELECT coalesce(max(position), 0) FROM {s}.events), "
            f"(SELECT coalesce(max(value::bigint), 0) FROM {s}.meta WHERE key = 'high_water'))"
        )
        self.head = f"SELECT {head}"
        self.set_high_water = (
            f"INSERT INTO {s}.meta (key, value) VALUES ('high_water', $1) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        )
        # Retention: the high-water mark only rises (a concurrent purge may have set it).
        self.raise_high_water = (
            f"INSERT INTO {s}.meta (key, value) VALUES ('high_water', $1) "
            "ON CONFLICT (key) DO UPDATE SET value = "
            f"greatest({s}.meta.value::bigint, excluded.value::bigint)::text"
        )
        self.delete_before = f"DELETE FROM {s}.events WHERE stream = $1 AND version < $2"
        self.begin_delete = "BEGIN; SET LOCAL synchronous_commit = on"
        self.forget_stream = (
            f"DELETE FROM {s}.streams WHERE name = $1 AND deleted "
            f"AND NOT EXISTS (SELECT 1 FROM {s}.events WHERE stream = $1)"
        )
        self.stream_heads = (
            f"SELECT name, version, deleted FROM {s}.streams WHERE name = ANY($1::text[])"
        )
        self.stream_bytes = (
            "SELECT stream, sum(octet_length(data) + octet_length(metadata::text))::bigint "
            f"FROM {s}.events WHERE CASE WHEN $1::text IS NULL THEN left(stream, 1) <> '$' "
            "ELSE category = $1 END GROUP BY stream"
        )
        self.count_below = (
            f"SELECT count(*) FROM unnest($1::text[], $2::bigint[]) AS f (stream, below) "
            f"JOIN {s}.events e ON e.stream = f.stream AND e.version < f.below "
            "WHERE e.position >= $3"
        )
        self.start_stream = (
            f"INSERT INTO {s}.streams (name, category, version) VALUES ($1, $2, $3) "
            "ON CONFLICT (name) DO NOTHING"
        )
        self.purge_events = f"DELETE FROM {s}.events WHERE stream = $1"
        self.purge_stream = f"DELETE FROM {s}.streams WHERE name = $1"
        self.vacuum_events = f"VACUUM {s}.events"
        self.get_meta = f"SELECT value FROM {s}.meta WHERE key = $1"
        self.put_meta = (
            f"INSERT INTO {s}.meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING"
        )
        # What a group commit checks its appends against, in one round trip:
        # rows (kind, id, name, a, b, deleted) of kind 0, the head (a); 1, the
        # stored events of the given ids (name = stream, a = version, b =
        # position); 2, the given streams (a = version).
        self.load = (
            f"SELECT 0, NULL::uuid, NULL::text, {head}, NULL::bigint, NULL::boolean "
            "UNION ALL SELECT 1, id, stream, version, position, NULL "
            f"FROM {s}.events WHERE id = ANY($1::uuid[]) "
            "UNION ALL SELECT 2, NULL, name, version, NULL, deleted "
            f"FROM {s}.streams WHERE name = ANY($2::text[])"
        )
        # `load`, and the group rows of a batch's transactional commits, locked
        # (FOR UPDATE, in the order of their keys: ORDER BY comes before the
        # locking): rows of kind 3, the state (name) of the ($3[a], $4[a]) group.
        self.load_locking_groups = (
            f"WITH locked AS (SELECT k.n, g.state::text AS state FROM {s}.groups g "
            "JOIN unnest($3::text[], $4::text[]) WITH ORDINALITY AS k (grp, category, n) "
            "ON g.grp = k.grp AND g.category = k.category "
            "ORDER BY g.grp, g.category FOR UPDATE OF g) "
            f"{self.load} UNION ALL SELECT 3, NULL, state, n, NULL, NULL FROM locked"
        )
        self.find_stream = f"SELECT version, deleted FROM {s}.streams WHERE name = $1"
        # The events (positions from $1 on, all recorded at $2), the new stream
        # heads and the NOTIFY of the new head, in one statement (one round trip).
        writes = (
            f"WITH inserted AS (INSERT INTO {s}.events (position, id, stream, version, type, "
            "data, metadata, schema_version, recorded_at, category, partition) "
            "SELECT $1::bigint + n - 1, id, stream, version, type, data, metadata, sv, "
            "$2::timestamptz, category, partition FROM unnest($3::uuid[], $4::text[], "
            "$5::bigint[], $6::text[], $7::bytea[], $8::json[], $9::integer[], $10::text[], "
            "$11::integer[]) WITH ORDINALITY AS e (id, stream, version, type, data, metadata, "
            "sv, category, partition, n)), "
            f"heads AS (INSERT INTO {s}.streams (name, category, version) "
            "SELECT * FROM unnest($12::text[], $13::text[], $14::bigint[]) "
            "ON CONFLICT (name) DO UPDATE SET version = excluded.version)"
        )
        self.insert_events = f"{writes} SELECT pg_notify($15, $16)"
        # Checkpoints move forward only: greatest() of the stored and the new position.
        upsert_checkpoints = (
            f"INSERT INTO {s}.checkpoints (grp, category, partition, position) "
            "SELECT * FROM unnest(${0}::text[], ${1}::text[], ${2}::integer[], ${3}::bigint[]) "
            "ON CONFLICT (grp, category, partition) "
            "DO UPDATE SET position = greatest(checkpoints.position, excluded.position)"
        )
        self.put_checkpoints = upsert_checkpoints.format(1, 2, 3, 4)
        """Checkpoints ($1 groups, $2 categories, $3 partitions, $4 positions; distinct keys)."""
        self.insert_events_and_checkpoints = (
            f"{writes}, checkpointed AS ({upsert_checkpoints.format(17, 18, 19, 20)}) "
            "SELECT pg_notify($15, $16)"
        )
        """`insert_events` and `put_checkpoints` (from $17 on), in one round trip."""
        self.tombstone = (
            f"INSERT INTO {s}.streams (name, category, version, deleted) "
            "VALUES ($1, $2, NULL, true) ON CONFLICT (name) DO UPDATE SET deleted = true"
        )
        # The id and recorded_at in PostgreSQL's binary form (bytea): the engine
        # builds the UUIDs in one msgspec call and each distinct timestamp once
        # (the events of a commit share one), cheaper than the driver per row.
        columns = (
            "uuid_send(id), stream, version, position, type, data, metadata, "
            "timestamptz_send(recorded_at), schema_version"
        )
        self.read_stream_forward = (
            f"SELECT {columns} FROM {s}.events WHERE stream = $1 AND version >= $2 "
            "ORDER BY version LIMIT $3"
        )
        self.read_stream_backward = (
            f"SELECT {columns} FROM {s}.events WHERE stream = $1 AND version <= $2 "
            "ORDER BY version DESC LIMIT $3"
        )
        self._s = s
        self._columns = columns
        self._read_all: dict[tuple[bool, bool, bool], str] = {}
        self.list_streams = (
            f"SELECT name, version, deleted FROM {s}.streams "
            'WHERE ($1::text IS NULL OR category = $1) AND name COLLATE "C" > $2 '
            'ORDER BY name COLLATE "C" LIMIT $3'
        )
        self.ensure_group = (
            f"INSERT INTO {s}.groups (grp, category, state) VALUES ($1, $2, $3::json) "
            "ON CONFLICT (grp, category) DO NOTHING"
        )
        self.lock_group = (
            f"SELECT state::text FROM {s}.groups WHERE grp = $1 AND category = $2 FOR UPDATE"
        )
        self.get_group = f"SELECT state::text FROM {s}.groups WHERE grp = $1 AND category = $2"
        self.save_group = f"UPDATE {s}.groups SET state = $3::json WHERE grp = $1 AND category = $2"
        self.put_checkpoint = (
            f"INSERT INTO {s}.checkpoints (grp, category, partition, position) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (grp, category, partition) "
            "DO UPDATE SET position = greatest(checkpoints.position, excluded.position)"
        )
        self.get_checkpoints = (
            f"SELECT partition, position FROM {s}.checkpoints WHERE grp = $1 AND category = $2"
        )
        self.has_checkpoints = (
            f"SELECT EXISTS (SELECT 1 FROM {s}.checkpoints WHERE grp = $1 AND category = $2)"
        )
        self.list_groups = (
            f"SELECT grp, category FROM {s}.groups UNION SELECT grp, category FROM {s}.checkpoints"
        )

    def count_events(self, categories: bool, partitions: bool) -> str:
        """Events from position $1 on, filtered by the given filters ($2, $3 in this order)."""
        where = ["position >= $1"]
        for used, column, kind in (
            (categories, "category", "text"),
            (partitions, "partition", "integer"),
        ):
            if used:
                where.append(f"{column} = ANY(${len(where) + 1}::{kind}[])")
        return f"SELECT count(*) FROM {self._s}.events WHERE {' AND '.join(where)}"

    def read_all(self, categories: bool, types: bool, partitions: bool) -> str:
        """The log read for one combination of filters: $1 from position, $2 limit, then
        the filters given, in this order (a statement per combination plans well)."""
        key = (categories, types, partitions)
        sql = self._read_all.get(key)
        if sql is None:
            where = ["position >= $1"]
            for used, column, kind in zip(
                key, ("category", "type", "partition"), ("text", "text", "integer"), strict=True
            ):
                if used:
                    where.append(f"{column} = ANY(${len(where) + 2}::{kind}[])")
            sql = (
                f"SELECT {self._columns} FROM {self._s}.events WHERE {' AND '.join(where)} "
                "ORDER BY position LIMIT $2"
            )
            self._read_all[key] = sql
        return sql
