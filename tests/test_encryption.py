"""Forgettable personal data: per-subject field encryption and crypto-shredding."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import msgspec
import pytest

import tidelog
from tidelog.aggregates import Aggregate, Repository, applies
from tidelog.codec import SEALED_PREFIX, EventRegistry
from tidelog.projections import MemoryCheckpoints, Projection, ProjectionRunner, handles
from tidelog.security import FORGOTTEN, Personal, PersonalData, personal_fields

REG = EventRegistry()
MASTER = bytes(range(32))


@tidelog.event("CustomerRegistered", registry=REG)
class Registered(msgspec.Struct):
    customer_id: str
    email: Annotated[str, Personal(subject_field="customer_id")]
    name: Annotated[str | None, Personal(subject_field="customer_id")]
    country: str


class Customer(Aggregate):
    category = "customer"
    email: str = ""
    name: str | None = None
    country: str = ""

    def register(self, email: str, name: str | None, country: str) -> None:
        self.record(Registered(self.id, email, name, country))

    @applies
    def _registered(self, e: Registered) -> None:
        self.email, self.name, self.country = e.email, e.name, e.country


@pytest.fixture
async def store() -> AsyncIterator[tidelog.Store]:
    async with tidelog.connect("memory://") as s:
        yield s


def database_bytes(directory: Path, name: str) -> bytes:
    """Every byte of the database file and its journals (-wal, -shm)."""
    return b"".join(p.read_bytes() for p in directory.iterdir() if p.name.startswith(name))


def raw_values(events: list[tidelog.RecordedEvent]) -> list[dict[str, object]]:
    return [msgspec.json.decode(e.data) for e in events]


def test_personal_fields_are_found_from_annotations() -> None:
    assert personal_fields(Registered) == {"email": "customer_id", "name": "customer_id"}

    class BadType(msgspec.Struct):
        cid: str
        age: Annotated[int, Personal("cid")]

    class BadSubject(msgspec.Struct):
        x: Annotated[str, Personal("missing")]

    with pytest.raises(tidelog.InvalidInput):
        personal_fields(BadType)
    with pytest.raises(tidelog.InvalidInput):
        personal_fields(BadSubject)
    with pytest.raises(tidelog.InvalidInput):
        Personal("")


async def test_fields_are_encrypted_at_rest_and_readable_through_the_cipher(
    store: tidelog.Store,
) -> None:
    cipher = PersonalData(store, MASTER, registry=REG)
    repo = Repository(store, Customer, registry=REG, cipher=cipher)
    c = repo.create("c1")
    c.register("ada@example.com", "Ada", "UK")
    await repo.save(c)
    stored = [e async for e in store.read_stream("customer-c1")]
    [raw] = raw_values(stored)
    assert raw["country"] == "UK" and raw["customer_id"] == "c1"
    assert isinstance(raw["email"], str) and raw["email"].startswith(SEALED_PREFIX)
    assert b"ada@example.com" not in stored[0].data and b"Ada" not in stored[0].data
    loaded = await repo.get("c1")
    assert (loaded.email, loaded.name, loaded.country) == ("ada@example.com", "Ada", "UK")
    # the data key is wrapped under the master key in a system stream named by HMAC
    key_stream = cipher.key_stream("c1")
    assert key_stream.startswith("$pdk-") and "c1" not in key_stream
    assert [e.type async for e in store.read_stream(key_stream)] == ["tidelog.pdk"]
    # a None personal value is stored as None (nothing to hide)
    d = repo.create("c2")
    d.register("bob@example.com", None, "FR")
    await repo.save(d)
    assert (await repo.get("c2")).name is None


async def test_forget_leaves_placeholders_and_the_rest_readable(store: tidelog.Store) -> None:
    cipher = PersonalData(store, MASTER, registry=REG)
    repo = Repository(store, Customer, registry=REG, cipher=cipher)
    for cid, email in [("c1", "ada@example.com"), ("c2", "bob@example.com")]:
        c = repo.create(cid)
        c.register(email, cid.upper(), "UK")
        await repo.save(c)
    await cipher.forget("c1")
    gone = await repo.get("c1")
    assert (gone.email, gone.name, gone.country) == (FORGOTTEN, FORGOTTEN, "UK")
    assert (await repo.get("c2")).email == "bob@example.com"
    # another PersonalData (another process) with the same master key cannot read it either
    other = PersonalData(store, MASTER, registry=REG)
    [recorded] = [e async for e in store.read_stream("customer-c1")]
    assert REG.decode(await other.unseal(recorded)).email == FORGOTTEN  # type: ignore[attr-defined]
    assert [e async for e in store.read_stream(cipher.key_stream("c1"))] == []
    # key bytes are gone from the log: no key event of c1 anywhere
    assert not [e async for e in store.read_all() if e.stream == cipher.key_stream("c1")]
    # new data for the subject gets a new key; the old ciphertext stays unreadable
    again = repo.create("c1b")
    again.record(Registered("c1", "new@example.com", None, "UK"))
    await repo.save(again)
    assert (await repo.get("c1b")).email == "new@example.com"
    assert (await repo.get("c1")).email == FORGOTTEN


async def test_projection_sees_plaintext_then_placeholder(store: tidelog.Store) -> None:
    cipher = PersonalData(store, MASTER, registry=REG)

    class Emails(Projection):
        name = "emails"

        def __init__(self) -> None:
            self.emails: dict[str, str] = {}

        @handles
        def _registered(self, e: Registered) -> None:
            self.emails[e.customer_id] = e.email

    repo = Repository(store, Customer, registry=REG, cipher=cipher)
    c = repo.create("c1")
    c.register("ada@example.com", None, "UK")
    await repo.save(c)
    view = Emails()
    runner = ProjectionRunner(
        store, [view], registry=REG, cipher=cipher, checkpoints=MemoryCheckpoints()
    )
    await runner.catch_up()
    assert view.emails == {"c1": "ada@example.com"}
    await cipher.forget("c1")
    await runner.rebuild("emails")
    assert view.emails == {"c1": FORGOTTEN}


async def test_tampering_and_moving_ciphertext_is_detected(store: tidelog.Store) -> None:
    cipher = PersonalData(store, MASTER, registry=REG)
    event = REG.encode(Registered("c1", "ada@example.com", None, "UK"))
    sealed = await cipher.seal("customer-c1", event)
    await store.append("customer-c1", [sealed])
    # the same sealed bytes copied into another stream/event fail the associated data
    moved = msgspec.structs.replace(sealed, id=uuid.uuid4())
    await store.append("customer-c9", [moved])
    [recorded] = [e async for e in store.read_stream("customer-c9")]
    with pytest.raises(tidelog.InvalidEvent):
        await cipher.unseal(recorded)
    # a flipped ciphertext byte too
    data = msgspec.json.decode(sealed.data)
    prefix, blob = data["email"].rsplit(":", 1)
    raw = bytearray(base64.urlsafe_b64decode(blob))
    raw[-1] ^= 1
    data["email"] = f"{prefix}:{base64.urlsafe_b64encode(bytes(raw)).decode()}"
    await store.append(
        "customer-c1",
        [msgspec.structs.replace(sealed, id=uuid.uuid4(), data=msgspec.json.encode(data))],
    )
    [_, bad] = [e async for e in store.read_stream("customer-c1")]
    with pytest.raises(tidelog.InvalidEvent):
        await cipher.unseal(bad)


async def test_wrong_master_key_and_bad_inputs(store: tidelog.Store) -> None:
    with pytest.raises(tidelog.InvalidInput):
        PersonalData(store, b"short")
    cipher = PersonalData(store, MASTER, registry=REG)
    no_subject = tidelog.NewEvent(
        type="CustomerRegistered", data=b'{"customer_id": "", "email": "x", "name": null}'
    )
    with pytest.raises(tidelog.InvalidEvent):
        await cipher.seal("customer-x", no_subject)
    # events of types without personal fields pass through untouched
    plain = tidelog.NewEvent(type="Other", data=b"not json")
    assert await cipher.seal("other-1", plain) is plain


async def test_purge_is_only_for_system_streams(store: tidelog.Store) -> None:
    await store.append("order-1", [tidelog.NewEvent(type="A")])
    with pytest.raises(tidelog.InvalidInput):
        await store.purge_stream("order-1")
    await store.append("$x-1", [tidelog.NewEvent(type="A")])
    await store.append("order-1", [tidelog.NewEvent(type="B")])
    await store.purge_stream("$x-1")
    assert [e.position async for e in store.read_all()] == [1, 3]
    assert await store.last_position() == 3
    # a purged stream can be written again; its old ids are gone too
    await store.append("$x-1", [tidelog.NewEvent(type="C")])
    assert [e.type async for e in store.read_stream("$x-1")] == ["C"]


async def test_sqlite_file_keeps_no_plaintext_and_no_key_after_forget(tmp_path: Path) -> None:
    path = tmp_path / "shred.db"
    email = "grace.hopper." + os.urandom(4).hex() + "@example.com"
    async with tidelog.connect(f"sqlite:///{path}") as store:
        cipher = PersonalData(store, MASTER, registry=REG)
        repo = Repository(store, Customer, registry=REG, cipher=cipher)
        c = repo.create("c1")
        c.register(email, "Grace", "US")
        await repo.save(c)
        [key_event] = [e async for e in store.read_stream(cipher.key_stream("c1"))]
        wrapped = msgspec.json.decode(key_event.data)["wrapped"]
        await cipher.forget("c1")
        assert (await repo.get("c1")).email == FORGOTTEN
    blob = database_bytes(tmp_path, "shred.db")
    assert email.encode() not in blob
    assert base64.b64decode(wrapped) not in blob
    assert wrapped.encode() not in blob
    assert cipher.key_stream("c1").encode() not in blob
