"""API keys and grants kept in the store, so an admin can change them without a restart.

Two system streams hold them as append-only histories:

    $keys     tidelog.KeyCreated  {key_id, principal, digest, prefix, by}
              tidelog.KeyRevoked  {key_id, by}
    $grants   tidelog.GrantAdded  {grant: "PRINCIPAL=PERMISSION:RESOURCE", by}
              tidelog.GrantRemoved {grant, by}

A key is stored only as the SHA-256 digest of a 256-bit random key (plus its
first characters, `prefix`, so a person can tell keys apart in a listing):
the key itself is returned once, by `create_key`, and written nowhere. A
digest of a key that random cannot be turned back into the key, so reading
`$keys` never lets anyone in; the streams are still admin-only
(`acl.CREDENTIAL_STREAMS`), because writing them would grant anything.

Grants use the config file's syntax (`acl.parse_grant`) and belong to a
principal, as there: `keys create --admin` is `grants add P=admin:*`.

The state is a fold over both streams (`Credentials`). Every server process
keeps one (`StoreCredentials`) and reads what is new whenever the store's head
moves, and at least every `REFRESH_INTERVAL` seconds, so a revoke reaches every
process of the store within a second; the keys and grants of the config file
keep working beside these.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Final

import msgspec

from tidelog.engines.contract import LogEngine
from tidelog.errors import InvalidInput, StreamDeleted
from tidelog.model import AppendRequest, NewEvent, RecordedEvent
from tidelog.security.acl import GRANTS_STREAM, KEYS_STREAM, Grant, parse_grant
from tidelog.security.tokens import hash_api_key, new_api_key

__all__ = [
    "REFRESH_INTERVAL",
    "Credentials",
    "StoreCredentials",
    "StoredGrant",
    "StoredKey",
    "add_grant",
    "create_key",
    "created",
    "format_grant",
    "load",
    "remove_grant",
    "revoke_key",
]

log = logging.getLogger(__name__)

KEY_CREATED: Final = "tidelog.KeyCreated"
KEY_REVOKED: Final = "tidelog.KeyRevoked"
GRANT_ADDED: Final = "tidelog.GrantAdded"
GRANT_REMOVED: Final = "tidelog.GrantRemoved"

REFRESH_INTERVAL: Final = 0.5
"""Longest wait between two reads of the credential streams in a server process."""
_MIN_GAP: Final = 0.05
"""Shortest wait between two reads, however busy the log: at most 20 reads a second."""

PREFIX_LENGTH: Final = 8
"""Characters of a key kept to tell keys apart (`tl_` and 5 random ones, 30 bits)."""

_PRINCIPAL: Final = re.compile(r"[A-Za-z0-9_.@:/+-]{1,200}")
"""What a principal created here may be named: no spaces, no `=` (the grant syntax's)."""


class StoredKey(msgspec.Struct, kw_only=True):
    """A key as the store knows it: never the key, only its digest and first characters."""

    key_id: str
    principal: str
    digest: str
    prefix: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None
    revoked_by: str | None = None

    def public(self) -> dict[str, object]:
        """What a listing shows: everything but the digest."""
        return {
            "key_id": self.key_id,
            "principal": self.principal,
            "prefix": self.prefix,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "revoked_at": None if self.revoked_at is None else self.revoked_at.isoformat(),
            "revoked_by": self.revoked_by,
        }


class StoredGrant(msgspec.Struct, kw_only=True):
    grant: Grant
    added_at: datetime
    added_by: str

    def public(self) -> dict[str, object]:
        return {
            "grant": format_grant(self.grant),
            "principal": self.grant.principal,
            "permission": self.grant.permission.value,
            "resource": self.grant.resource,
            "source": "store",
            "added_at": self.added_at.isoformat(),
            "added_by": self.added_by,
        }


class _KeyData(msgspec.Struct, kw_only=True):
    key_id: str
    principal: str = ""
    digest: str = ""
    prefix: str = ""
    by: str = ""


class _GrantData(msgspec.Struct, kw_only=True):
    grant: str
    by: str = ""


_ENC: Final = msgspec.json.Encoder()
_KEY_DEC: Final = msgspec.json.Decoder(_KeyData)
_GRANT_DEC: Final = msgspec.json.Decoder(_GrantData)


def format_grant(grant: Grant) -> str:
    """A grant in the config file's syntax, `PRINCIPAL=PERMISSION:RESOURCE` (`parse_grant`'s)."""
    return f"{grant.principal}={grant.permission.value}:{grant.resource}"


class Credentials:
    """The fold of `$keys` and `$grants`: every key (revoked ones too) and the grants in force."""

    def __init__(self) -> None:
        self.keys: dict[str, StoredKey] = {}
        self.grants: dict[Grant, StoredGrant] = {}
        self.next_key_version = 0
        self.next_grant_version = 0

    def apply(self, entry: RecordedEvent) -> None:
        """Fold one entry of either stream; an entry that does not decode is skipped (logged):
        one bad entry, written by hand, must not lock every key out."""
        try:
            if entry.stream == KEYS_STREAM:
                self.next_key_version = entry.version + 1
                self._apply_key(entry, _KEY_DEC.decode(entry.data))
            else:
                self.next_grant_version = entry.version + 1
                self._apply_grant(entry, _GRANT_DEC.decode(entry.data))
        except (msgspec.DecodeError, InvalidInput) as exc:
            log.warning("skipped %s@%d (%s): %s", entry.stream, entry.version, entry.type, exc)

    def _apply_key(self, entry: RecordedEvent, data: _KeyData) -> None:
        if entry.type == KEY_CREATED and data.key_id not in self.keys:
            if not data.digest or not data.principal:
                raise InvalidInput("a created key needs a digest and a principal")
            self.keys[data.key_id] = StoredKey(
                key_id=data.key_id,
                principal=data.principal,
                digest=data.digest,
                prefix=data.prefix,
                created_at=entry.recorded_at,
                created_by=data.by,
            )
        elif entry.type == KEY_REVOKED:
            key = self.keys.get(data.key_id)
            if key is not None and key.revoked_at is None:
                key.revoked_at, key.revoked_by = entry.recorded_at, data.by

    def _apply_grant(self, entry: RecordedEvent, data: _GrantData) -> None:
        grant = parse_grant(data.grant)
        if entry.type == GRANT_ADDED and grant not in self.grants:
            self.grants[grant] = StoredGrant(
                grant=grant, added_at=entry.recorded_at, added_by=data.by
            )
        elif entry.type == GRANT_REMOVED:
            self.grants.pop(grant, None)

    def active_keys(self) -> dict[str, str]:
        """Digest -> principal of the keys not revoked (what `Authenticator` checks)."""
        return {k.digest: k.principal for k in self.keys.values() if k.revoked_at is None}

    def key_list(self, *, include_revoked: bool = False) -> list[StoredKey]:
        keys = sorted(self.keys.values(), key=lambda k: (k.created_at, k.key_id))
        return [k for k in keys if include_revoked or k.revoked_at is None]


async def _entries(store: LogEngine, stream: str, from_version: int) -> list[RecordedEvent]:
    try:
        return [e async for e in store.read_stream(stream, from_version=from_version)]
    except StreamDeleted:
        return []


async def load(store: LogEngine, state: Credentials | None = None) -> Credentials:
    """Read what is new in `$keys` and `$grants` (since `state`) and fold it."""
    state = state or Credentials()
    for entry in await _entries(store, KEYS_STREAM, state.next_key_version):
        state.apply(entry)
    for entry in await _entries(store, GRANTS_STREAM, state.next_grant_version):
        state.apply(entry)
    return state


def check_principal(principal: str) -> str:
    """Refuse a principal name a grant or a listing could not carry plainly."""
    if not isinstance(principal, str) or not _PRINCIPAL.fullmatch(principal):
        raise InvalidInput(
            f"invalid principal {str(principal)[:80]!r}: 1 to 200 letters, digits or _ . @ : / + -"
        )
    return principal


async def create_key(
    store: LogEngine, principal: str, *, by: str, admin: bool = False
) -> tuple[str, StoredKey]:
    """A new key for `principal`: (the key, shown this once; what the store keeps).

    `admin=True` also adds the grant `principal=admin:*` (grants belong to
    principals, as in the config file), unless the store has it already; the
    key and the grant are written in one atomic append, so a failure leaves
    neither (and no key is ever made that its caller did not see).
    """
    check_principal(principal)
    key = new_api_key()
    data = _KeyData(
        key_id=secrets.token_hex(6),
        principal=principal,
        digest=hash_api_key(key),
        prefix=key[:PREFIX_LENGTH],
        by=by,
    )
    writes = {KEYS_STREAM: AppendRequest([NewEvent(type=KEY_CREATED, data=_ENC.encode(data))])}
    grant = parse_grant(f"{principal}=admin:*")
    if admin and grant not in (await load(store)).grants:
        entry = _GrantData(grant=format_grant(grant), by=by)
        writes[GRANTS_STREAM] = AppendRequest([NewEvent(type=GRANT_ADDED, data=_ENC.encode(entry))])
    await store.append_many(writes)
    state = await load(store)
    return key, state.keys[data.key_id]


def created(key: str, stored: StoredKey, *, admin: bool) -> dict[str, object]:
    """The answer to a key's creation (HTTP and CLI alike): the one place the key appears."""
    return {**stored.public(), "key": key, "admin": admin}


async def revoke_key(store: LogEngine, key_id: str, *, by: str) -> StoredKey:
    """Revoke a key by its id; every server of the store refuses it within a second."""
    state = await load(store)
    key = state.keys.get(key_id) if isinstance(key_id, str) else None
    if key is None:
        raise InvalidInput(f"no key with id {str(key_id)[:40]!r}")
    if key.revoked_at is not None:
        raise InvalidInput(f"key {key_id} is already revoked")
    entry = _KeyData(key_id=key_id, by=by)
    await store.append(KEYS_STREAM, [NewEvent(type=KEY_REVOKED, data=_ENC.encode(entry))])
    await load(store, state)
    return state.keys[key_id]


async def _change_grant(store: LogEngine, text: str, kind: str, by: str) -> Grant:
    grant = parse_grant(text)
    check_principal(grant.principal)
    state = await load(store)
    if kind == GRANT_ADDED and grant in state.grants:
        raise InvalidInput(f"grant {format_grant(grant)!r} is already in the store")
    if kind == GRANT_REMOVED and grant not in state.grants:
        raise InvalidInput(
            f"grant {format_grant(grant)!r} is not in the store "
            "(grants of the config file are changed there)"
        )
    data = _GrantData(grant=format_grant(grant), by=by)
    await store.append(GRANTS_STREAM, [NewEvent(type=kind, data=_ENC.encode(data))])
    return grant


async def add_grant(store: LogEngine, text: str, *, by: str) -> Grant:
    """Add a grant, in the config file's syntax (`billing=read:category:order`)."""
    return await _change_grant(store, text, GRANT_ADDED, by)


async def remove_grant(store: LogEngine, text: str, *, by: str) -> Grant:
    """Remove a grant added with `add_grant` (not one of the config file)."""
    return await _change_grant(store, text, GRANT_REMOVED, by)


class StoreCredentials:
    """A server process's view of the store's keys and grants, kept fresh in the background.

    `keys` (digest -> principal) and `grants` are replaced whole after each
    read, never changed in place, so a request always sees one consistent
    state without a lock.
    """

    def __init__(self, on_narrowed: Callable[[], None] | None = None) -> None:
        """`on_narrowed` is called when a refresh finds a key revoked or a grant removed:
        the server ends its open live subscriptions with it, which were authorized once,
        at their start, so that a revoke reaches them too (clients reopen them, and are
        checked again)."""
        self.keys: dict[str, str] = {}
        self.grants: tuple[Grant, ...] = ()
        self._state = Credentials()
        self._store: LogEngine | None = None
        self._failing = False
        self._on_narrowed = on_narrowed

    async def refresh(self, store: LogEngine) -> None:
        """Read what is new; a different store than last time starts from nothing."""
        if store is not self._store:
            self._state, self._store = Credentials(), store
        state = await load(store, self._state)
        keys, grants = state.active_keys(), tuple(state.grants)
        narrowed = not (self.keys.keys() <= keys.keys() and set(self.grants) <= set(grants))
        self.keys, self.grants = keys, grants
        if narrowed and self._on_narrowed is not None:
            self._on_narrowed()

    async def run(self, store: Callable[[], LogEngine], interval: float = REFRESH_INTERVAL) -> None:
        """Refresh whenever the head moves, and at least every `interval` seconds.

        A failed read (the store is down) keeps the last state and is logged
        once until a read succeeds again.
        """
        while True:
            current = store()
            watch = current.head_watch()
            seen = watch.head
            try:
                await self.refresh(current)
                self._failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._failing:
                    log.warning("reading the store's keys and grants failed: %s", exc)
                self._failing = True
                # a closed store's watch returns at once: wait the interval, do not spin
                await asyncio.sleep(interval)
                continue
            await watch.wait_beyond(seen, interval)
            await asyncio.sleep(_MIN_GAP)
