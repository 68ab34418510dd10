"""Forgettable personal data: field encryption under a key per data subject.

Mark the personal fields of an event class:

    @tidelog.event("CustomerRegistered")
    class CustomerRegistered(msgspec.Struct):
        customer_id: str
        email: Annotated[str, Personal(subject_field="customer_id")]
        country: str                      # not personal: stays readable

`PersonalData(store, master_key)` is an `EventCipher`: give it to a
`Repository` or a `ProjectionRunner` as `cipher=`, or call `seal` / `unseal`
yourself around `append` and reads.

**Encryption.** Each personal value is encrypted with AES-GCM (256-bit data
key, 12-byte random nonce) under the data key of its subject (the value of
`subject_field` in the same event). The associated data binds the ciphertext
to its stream, event id and field name, so it cannot be moved to another
event or field. The stored value is a string
`tidelog:sealed:1:<key id>:<base64 nonce+ciphertext>`.

**Keys.** Each subject's data key lives in its own system stream,
`$pdk-<hmac(subject)>` (the name is an HMAC under the master key, so stream
names do not reveal subjects), wrapped (AES-GCM) under the master key that
the user supplies and tidelog never stores.

**Forgetting** (`forget(subject)`) is crypto-shredding: it *purges* the key
stream with `Store.purge_stream`, which erases the wrapped key's bytes from
storage for real (a tombstone would not: the wrapped key would survive, and
with the master key it would still decrypt everything). From then on the
personal fields of that subject read as `FORGOTTEN` everywhere, while the
rest of each event stays readable; the ciphertext left in the log is noise
without the key. Engines that cannot erase raise `NotSupported` from
`purge_stream`, and `forget` refuses rather than pretend.

Limits, on purpose: personal fields must be top-level `str` (or `str | None`)
fields, so the placeholder keeps the event decodable; keys are cached in
memory for `key_cache_seconds` (another process may keep decrypting a
forgotten subject for that long); read models built by projections must not
copy personal values, or must drop them when a subject is forgotten.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import time
import typing
import uuid
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from tidelog.codec import DEFAULT_REGISTRY, SEALED_PREFIX, EventRegistry
from tidelog.engines.contract import Engine
from tidelog.errors import (
    InvalidEvent,
    InvalidInput,
    NotSupported,
    UnknownEventType,
    WrongExpectedVersion,
)
from tidelog.model import NO_STREAM, NewEvent, RecordedEvent

__all__ = ["FORGOTTEN", "KEY_STREAM_PREFIX", "Personal", "PersonalData", "personal_fields"]

FORGOTTEN: Final = "[forgotten]"
"""What a personal field reads as once its subject was forgotten."""

KEY_STREAM_PREFIX: Final = "$pdk-"
_KEY_TYPE: Final = "tidelog.pdk"
_SCHEME: Final = "1"
_NONCE: Final = 12


class Personal:
    """`Annotated` marker of a personal field; `subject_field` names the field holding its owner."""

    __slots__ = ("subject_field",)

    def __init__(self, subject_field: str) -> None:
        if not isinstance(subject_field, str) or not subject_field:
            raise InvalidInput("Personal(subject_field=...) names a field of the same event")
        self.subject_field = subject_field

    def __repr__(self) -> str:
        return f"Personal(subject_field={self.subject_field!r})"


_FIELDS_CACHE: dict[type[msgspec.Struct], dict[str, str]] = {}


def personal_fields(cls: type[msgspec.Struct]) -> dict[str, str]:
    """The personal fields of an event class: encoded field name -> encoded subject field name."""
    cached = _FIELDS_CACHE.get(cls)
    if cached is not None:
        return cached
    # msgspec resolves the annotations (as it must to encode the class) and keeps Annotated
    fields = msgspec.structs.fields(cls)
    by_name = {f.name: f for f in fields}
    out: dict[str, str] = {}
    for info in fields:
        name, hint = info.name, info.type
        if typing.get_origin(hint) is not typing.Annotated:
            continue
        marks = [m for m in hint.__metadata__ if isinstance(m, Personal)]
        if not marks:
            continue
        base = typing.get_args(hint)[0]
        if base is not str and set(typing.get_args(base)) != {str, type(None)}:
            raise InvalidInput(
                f"{cls.__qualname__}.{name}: personal fields must be str or str | None"
            )
        subject = by_name.get(marks[0].subject_field)
        if subject is None or subject.name == name:
            raise InvalidInput(
                f"{cls.__qualname__}.{name}: subject field {marks[0].subject_field!r} "
                "is not another field of the class"
            )
        out[by_name[name].encode_name] = subject.encode_name
    _FIELDS_CACHE[cls] = out
    return out


class _WrappedKey(msgspec.Struct, frozen=True):
    kid: str
    wrapped: bytes


class PersonalData:
    """Seals personal fields on the way into the store, unseals them on the way out.

    `master_key` (32 bytes) wraps every data key; keep it outside the store
    (a secret manager). Losing it loses every personal value.
    """

    def __init__(
        self,
        store: Engine,
        master_key: bytes,
        *,
        registry: EventRegistry | None = None,
        key_cache_seconds: float = 30.0,
    ) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:  # pragma: no cover - the crypto extra is not installed
            raise NotSupported(
                "toolkit", "PersonalData", "install the crypto extra: pip install 'tidelog[crypto]'"
            ) from None

        if not isinstance(master_key, bytes) or len(master_key) != 32:
            raise InvalidInput("the master key must be 32 bytes (AES-256)")
        self.store = store
        self.registry = registry or DEFAULT_REGISTRY
        self._master = AESGCM(master_key)
        self._name_key = hmac.new(master_key, b"tidelog-pdk-stream-names", hashlib.sha256).digest()
        self._cache_seconds = key_cache_seconds
        self._cache: dict[str, tuple[float, str | None, bytes | None]] = {}

    # ------------------------------------------------------------------ keys

    def key_stream(self, subject: str) -> str:
        """The system stream holding `subject`'s data key."""
        digest = hmac.new(self._name_key, subject.encode(), hashlib.sha256).hexdigest()
        return KEY_STREAM_PREFIX + digest[:48]

    async def _read_key(self, subject: str) -> tuple[str | None, bytes | None]:
        now = time.monotonic()
        hit = self._cache.get(subject)
        if hit is not None and now - hit[0] < self._cache_seconds:
            return hit[1], hit[2]
        stream = self.key_stream(subject)
        kid: str | None = None
        key: bytes | None = None
        async for e in self.store.read_stream(stream, limit=1):
            stored = msgspec.json.decode(e.data, type=_WrappedKey)
            key = self._master.decrypt(
                stored.wrapped[:_NONCE], stored.wrapped[_NONCE:], stream.encode()
            )
            kid = stored.kid
        self._cache[subject] = (now, kid, key)
        return kid, key

    async def _key_for_writing(self, subject: str) -> tuple[str, bytes]:
        kid, key = await self._read_key(subject)
        if kid is not None and key is not None:
            return kid, key
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        stream = self.key_stream(subject)
        new_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(_NONCE)
        wrapped = nonce + self._master.encrypt(nonce, new_key, stream.encode())
        new_kid = uuid.uuid4().hex
        data = msgspec.json.encode(_WrappedKey(kid=new_kid, wrapped=wrapped))
        with contextlib.suppress(WrongExpectedVersion):  # another writer won: use its key
            await self.store.append(stream, [NewEvent(type=_KEY_TYPE, data=data)], NO_STREAM)
        self._cache.pop(subject, None)
        kid, key = await self._read_key(subject)
        if kid is None or key is None:  # purged between our append and this read
            raise WrongExpectedVersion(stream, NO_STREAM, None)
        return kid, key

    async def forget(self, subject: str) -> None:
        """Destroy `subject`'s data key: its personal fields become `FORGOTTEN` for good."""
        self._cache.pop(subject, None)
        await self.store.purge_stream(self.key_stream(subject))
        self._cache.pop(subject, None)

    # ------------------------------------------------------------------ fields

    def _fields(self, type_name: str) -> dict[str, str]:
        try:
            cls, _ = self.registry.current(type_name)
        except UnknownEventType:
            return {}
        return personal_fields(cls)

    @staticmethod
    def _aad(stream: str, event_id: uuid.UUID, field: str) -> bytes:
        return f"{stream}\x00{event_id}\x00{field}".encode()

    async def seal(self, stream: str, event: NewEvent) -> NewEvent:
        """Encrypt the personal fields of `event`, to be appended to `stream`."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        fields = self._fields(event.type)
        if not fields:
            return event
        data = _object(event.data, event.type)
        for field, subject_field in fields.items():
            value = data.get(field)
            if value is None or (isinstance(value, str) and value.startswith(SEALED_PREFIX)):
                continue
            subject = data.get(subject_field)
            if not isinstance(subject, str) or not subject:
                raise InvalidEvent(
                    f"{event.type}.{field} is personal but its subject field "
                    f"{subject_field!r} is not a non-empty string"
                )
            kid, key = await self._key_for_writing(subject)
            nonce = os.urandom(_NONCE)
            sealed = nonce + AESGCM(key).encrypt(
                nonce, msgspec.json.encode(value), self._aad(stream, event.id, field)
            )
            data[field] = (
                f"{SEALED_PREFIX}{_SCHEME}:{kid}:{base64.urlsafe_b64encode(sealed).decode()}"
            )
        return msgspec.structs.replace(event, data=msgspec.json.encode(data))

    async def unseal(self, event: RecordedEvent) -> RecordedEvent:
        """Decrypt the personal fields of a stored event (`FORGOTTEN` once forgotten)."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        fields = self._fields(event.type)
        if not fields:
            return event
        data = _object(event.data, event.type)
        changed = False
        for field, subject_field in fields.items():
            value = data.get(field)
            if not isinstance(value, str) or not value.startswith(SEALED_PREFIX):
                continue
            changed = True
            data[field] = FORGOTTEN
            parts = value[len(SEALED_PREFIX) :].split(":", 2)
            subject = data.get(subject_field)
            if len(parts) != 3 or parts[0] != _SCHEME or not isinstance(subject, str):
                continue
            kid, key = await self._read_key(subject)
            if key is None or kid != parts[1]:
                continue  # forgotten (or a newer key after forgetting): the placeholder stays
            try:
                raw = base64.urlsafe_b64decode(parts[2])
                plain = AESGCM(key).decrypt(
                    raw[:_NONCE], raw[_NONCE:], self._aad(event.stream, event.id, field)
                )
            except (InvalidTag, ValueError) as exc:
                raise InvalidEvent(
                    f"{event.stream}@{event.version} {field}: sealed value was tampered with "
                    f"or moved ({type(exc).__name__})"
                ) from None
            data[field] = msgspec.json.decode(plain)
        if not changed:
            return event
        return msgspec.structs.replace(event, data=msgspec.json.encode(data))


def _object(data: bytes, type_name: str) -> dict[str, Any]:
    try:
        decoded = msgspec.json.decode(data)
    except msgspec.DecodeError:
        raise InvalidEvent(
            f"{type_name} data is not JSON: cannot handle its personal fields"
        ) from None
    if not isinstance(decoded, Mapping):
        raise InvalidEvent(f"{type_name} data is not a JSON object")
    return dict(decoded)
