"""Keys and grants at runtime (#14 item 14): created, used and revoked without a restart.

Two servers of one store share nothing but the store: one runs in this test's
process, the other is a real `tidelog serve` process. A key created or revoked
through one, or by the CLI on the store directly, takes effect on the other.
Waits poll with a generous deadline (tests never assert on time); the refresh
interval itself is `keystore.REFRESH_INTERVAL`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from typer.testing import CliRunner, Result

import tidelog
from support.server import ADMIN_KEY, config, running
from tidelog.cli import app
from tidelog.security import keystore
from tidelog.security.tokens import hash_api_key

READER_KEY = "reader-key-of-the-keystore-test"
WAIT = 60.0
"""Seconds a poll may take before the test fails: far above the refresh interval."""


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _until(check: Callable[[], Any], what: str) -> None:
    """Poll `check` (a coroutine function returning truthy) until it holds."""
    deadline = time.monotonic() + WAIT
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


@contextlib.contextmanager
def _serve_process(store_url: str, tmp_path: Path) -> Any:
    """A real `tidelog serve` process on `store_url` with the admin key of the tests."""
    cfg = tmp_path / "second.toml"
    cfg.write_text(
        f'[api_keys]\n"{hash_api_key(ADMIN_KEY)}" = "admin"\n'
        '[[grants]]\nprincipal = "admin"\npermission = "admin"\nresource = "*"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDELOG_")}
    command = [sys.executable, "-m", "tidelog", "serve", "--port", "0"]
    proc = subprocess.Popen(
        [*command, "--store", store_url, "--config", str(cfg)],
        cwd=tmp_path,
        env={**env, "COLUMNS": "200"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        with ThreadPoolExecutor(1) as pool:
            while not any("tidelog serving" in line for line in lines):
                line = pool.submit(proc.stderr.readline).result(timeout=WAIT)
                assert line, f"server exited: {lines}"
                lines.append(line)
        banner = next(line for line in lines if "tidelog serving" in line)
        yield banner.split(" at ", 1)[1].split("/ ", 1)[0], lines
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
        lines.append(rest or "")
        print("".join(lines))  # shown when the test fails


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/shared.db"
        async with tidelog.connect(url):  # created before either server opens it
            pass
        yield url
        return
    from support.postgres import Schemas, require_postgres

    await require_postgres()
    schemas = Schemas()
    url = schemas.url()
    async with tidelog.connect(url):
        pass
    try:
        yield url
    finally:
        await schemas.drop()


async def test_a_key_and_a_grant_reach_a_second_server_process_and_a_revoke_too(
    store_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with (
        tidelog.connect(store_url) as own,
        running(config(), own) as (first, store),
    ):
        await store.append("order-1", [tidelog.NewEvent(type="Placed", data=b"{}")])
        with _serve_process(store_url, tmp_path) as (second_url, second_log):
            a = httpx.AsyncClient(base_url=f"http://127.0.0.1:{first.port}")
            b = httpx.AsyncClient(base_url=second_url)
            async with a, b:
                made = await a.post(
                    "/v1/admin/keys", json={"principal": "billing"}, headers=_auth(ADMIN_KEY)
                )
                assert made.status_code == 201, made.text
                key, key_id = made.json()["key"], made.json()["key_id"]
                assert key.startswith(made.json()["prefix"])

                async def status_on_b(path: str = "/v1/info") -> int:
                    return (await b.get(path, headers=_auth(key))).status_code

                await _until(lambda: _is(status_on_b(), 200), "key accepted by the second server")
                # a principal with no grant: authenticated, and refused the stream
                assert await status_on_b("/v1/streams/order-1/events") == 403

                # a grant added, then removed, through the first: the second follows
                grant = "billing=read:category:order"
                for method, where, answer, then in (
                    ("POST", {"json": {"grant": grant}}, 201, 200),
                    ("DELETE", {"params": {"grant": grant}}, 200, 403),
                ):
                    changed = await a.request(
                        method, "/v1/admin/grants", headers=_auth(ADMIN_KEY), **where
                    )
                    assert changed.status_code == answer, changed.text
                    await _until(
                        lambda then=then: _is(status_on_b("/v1/streams/order-1/events"), then),
                        f"grant change effective on the second server ({then})",
                    )

                listed = await b.get("/v1/admin/keys", headers=_auth(ADMIN_KEY))
                assert [k["key_id"] for k in listed.json()["keys"]] == [key_id]
                assert key not in listed.text and hash_api_key(key) not in listed.text

                revoked = await b.delete(f"/v1/admin/keys/{key_id}", headers=_auth(ADMIN_KEY))
                assert revoked.status_code == 200 and revoked.json()["revoked_by"] == "admin"
                # revoked through the second server: the first refuses it too
                await _until(
                    lambda: _is(_status(a, "/v1/info", key), 401), "revoke reached the first"
                )
                assert await status_on_b() == 401
                # the config file's key works beside the store's all along
                assert (await a.get("/v1/info", headers=_auth(ADMIN_KEY))).status_code == 200
                assert (await b.get("/v1/info", headers=_auth(ADMIN_KEY))).status_code == 200
        assert key not in "".join(second_log)
    assert key not in caplog.text
    # the store keeps the digest, never the key
    async with tidelog.connect(store_url) as check:
        raw = b"".join([e.data async for e in check.read_stream("$keys")])
        assert key.encode() not in raw and hash_api_key(key).encode() in raw


async def _is(awaitable: Any, expected: int) -> bool:
    return bool(await awaitable == expected)


async def _status(client: httpx.AsyncClient, path: str, key: str) -> int:
    return (await client.get(path, headers=_auth(key))).status_code


async def test_only_an_admin_manages_keys_and_grants(serve: Any) -> None:
    server, store = await serve(
        keys={READER_KEY: "reader"},
        grants=("reader=read:*", "reader=write:*", "reader=admin:category:order"),
    )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as c:
        for method, path, body in (
            ("GET", "/v1/admin/keys", None),
            ("POST", "/v1/admin/keys", {"principal": "reader", "admin": True}),
            ("DELETE", "/v1/admin/keys/abc", None),
            ("GET", "/v1/admin/grants", None),
            ("POST", "/v1/admin/grants", {"grant": "reader=admin:*"}),
            ("DELETE", "/v1/admin/grants?grant=reader%3Dread%3A%2A", None),
        ):
            r = await c.request(method, path, json=body, headers=_auth(READER_KEY))
            assert r.status_code == 403, (method, path, r.text)
            assert (await c.request(method, path, json=body)).status_code == 401
        # `write` on `*` does not reach the credential streams: no minting a key by hand
        forged = {
            "events": [
                {
                    "type": keystore.KEY_CREATED,
                    "data": {
                        "key_id": "forged",
                        "principal": "admin",
                        "digest": hash_api_key("forged"),
                    },
                }
            ]
        }
        for stream in ("$keys", "$grants"):
            r = await c.post(f"/v1/streams/{stream}/events", json=forged, headers=_auth(READER_KEY))
            assert r.status_code == 403, r.text
            r = await c.get(f"/v1/streams/{stream}/events", headers=_auth(READER_KEY))
            assert r.status_code == 403, r.text
        r = await c.get("/v1/log?category=$keys", headers=_auth(READER_KEY))
        assert r.status_code == 403, r.text
    assert [e async for e in store.read_stream("$keys")] == []


async def test_bad_input_is_refused_and_changes_nothing(serve: Any) -> None:
    server, store = await serve()
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{server.port}", headers=_auth(ADMIN_KEY)
    ) as c:
        for body in (
            {"principal": ""},
            {"principal": "a b"},
            {"principal": "x=admin"},
            {"principal": "p" * 201},
            {"principal": 3},
            {"principal": "ok", "extra": 1},
            {},
        ):
            r = await c.post("/v1/admin/keys", json=body)
            assert r.status_code == 400, (body, r.text)
        for grant in ("nobody", "p=root:*", "p=read:nope:x", "p=read:prefix:order", "a b=read:*"):
            r = await c.post("/v1/admin/grants", json={"grant": grant})
            assert r.status_code == 400, (grant, r.text)
        assert (await c.delete("/v1/admin/keys/unknown")).status_code == 400
        r = await c.delete("/v1/admin/grants", params={"grant": "p=read:*"})
        assert r.status_code == 400 and "not in the store" in r.json()["message"]
        # a grant of the config file cannot be removed here (it is not in the store)
        r = await c.delete("/v1/admin/grants", params={"grant": "admin=admin:*"})
        assert r.status_code == 400
        made = await c.post("/v1/admin/keys", json={"principal": "p"})
        assert (await c.post("/v1/admin/grants", json={"grant": "p=read:*"})).status_code == 201
        assert (await c.post("/v1/admin/grants", json={"grant": "p=read:*"})).status_code == 400
        key_id = made.json()["key_id"]
        assert (await c.delete(f"/v1/admin/keys/{key_id}")).status_code == 200
        again = await c.delete(f"/v1/admin/keys/{key_id}")
        assert again.status_code == 400 and "already revoked" in again.json()["message"]
    assert len([e async for e in store.read_stream("$keys")]) == 2
    assert len([e async for e in store.read_stream("$grants")]) == 1


async def test_a_malformed_entry_locks_no_key_out(serve: Any) -> None:
    """An entry written by hand that does not decode is skipped, not fatal to the fold."""
    server, store = await serve()
    await store.append("$keys", [tidelog.NewEvent(type=keystore.KEY_CREATED, data=b"[1]")])
    key, _ = await keystore.create_key(store, "billing", by="test")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as c:
        await _until(lambda: _is(_status(c, "/v1/info", key), 200), "key accepted")


# ------------------------------------------------------------------------- the CLI


def _cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


async def _acli(*args: str) -> Result:
    """The CLI in a thread: a server under test runs on this test's event loop."""
    return await asyncio.to_thread(_cli, *args)


def _ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


async def test_cli_on_the_store_directly_then_through_a_server(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"sqlite:///{tmp_path}/cli.db"
    # listing a store that does not exist is refused, not shown empty
    missing = await _acli("--store", url, "keys", "list")
    assert missing.exit_code == 1 and "no store at" in missing.stderr, missing.stderr
    # directly on the store (as `append`, a change creates it): its owner needs no token
    made = _ok(await _acli("--store", url, "keys", "create", "--principal", "ops", "--admin"))
    key = made.stdout.split("keep it): ", 1)[1].split()[0]
    assert key.startswith("tl_") and made.stdout.count(key) == 1
    listed = _ok(await _acli("--store", url, "keys", "list"))
    assert "ops" in listed.stdout and key not in listed.stdout
    assert hash_api_key(key) not in listed.stdout
    assert "ops=admin:*  (store)" in _ok(await _acli("--store", url, "grants", "list")).stdout

    async with tidelog.connect(url) as store, running(config(), store) as (server, _):
        base = f"http://127.0.0.1:{server.port}"
        # the store's admin key is an admin of the server: it manages keys there
        made = _ok(
            await _acli(
                "--json", "--store", base, "--token", key, "keys", "create", "--principal", "app"
            )
        )
        app_key = msgspec.json.decode(made.stdout)["key"]
        app_id = msgspec.json.decode(made.stdout)["key_id"]
        rows = [
            msgspec.json.decode(line)
            for line in _ok(
                await _acli("--json", "--store", base, "--token", key, "keys", "list")
            ).stdout.splitlines()
        ]
        assert {r["principal"] for r in rows} == {"ops", "app"}
        assert all("key" not in r and "digest" not in r for r in rows)
        _ok(await _acli("--store", base, "--token", key, "grants", "add", "app=write:prefix:job-"))
        grants = _ok(await _acli("--store", base, "--token", key, "grants", "list")).stdout
        assert "app=write:prefix:job-  (store)" in grants
        assert "admin=admin:*  (config)" in grants
        async with httpx.AsyncClient(base_url=base) as c:

            async def append_job() -> int:
                r = await c.post(
                    "/v1/streams/job-1/events",
                    json={"events": [{"type": "Queued"}]},
                    headers=_auth(app_key),
                )
                return r.status_code

            await _until(lambda: _is(append_job(), 200), "grant from the CLI effective")
            # a non-admin is refused by the server, in one line
            refused = await _acli("--store", base, "--token", app_key, "keys", "list")
            assert refused.exit_code == 1 and "AccessDenied" in refused.stderr
            _ok(await _acli("--store", base, "--token", key, "keys", "revoke", app_id))
            await _until(lambda: _is(append_job(), 401), "revoke from the CLI effective")
        # revoking on the store directly reaches the running server too
        [ops] = [r for r in rows if r["principal"] == "ops"]
        _ok(await _acli("--store", url, "keys", "revoke", ops["key_id"]))
        async with httpx.AsyncClient(base_url=base) as c:
            await _until(lambda: _is(_status(c, "/v1/info", key), 401), "direct revoke effective")
    assert key not in caplog.text and app_key not in caplog.text
    bad = await _acli("--store", url, "keys", "revoke", "nope")
    assert bad.exit_code == 1 and "no key with id 'nope'" in bad.stderr


async def test_the_fold_on_every_engine(contract_store: tidelog.Store) -> None:
    """The keystore is built on the contract (append and read a stream): the same on each."""
    store = contract_store
    creds = keystore.StoreCredentials()
    await creds.refresh(store)
    assert (creds.keys, creds.grants) == ({}, ())
    key, stored = await keystore.create_key(store, "ops", by="test", admin=True)
    await creds.refresh(store)
    assert creds.keys == {hash_api_key(key): "ops"} and stored.digest == hash_api_key(key)
    assert [keystore.format_grant(g) for g in creds.grants] == ["ops=admin:*"]
    await keystore.revoke_key(store, stored.key_id, by="test")
    await keystore.remove_grant(store, "ops=admin:*", by="test")
    await creds.refresh(store)
    assert (creds.keys, creds.grants) == ({}, ())
    [revoked] = (await keystore.load(store)).key_list(include_revoked=True)
    assert (revoked.key_id, revoked.revoked_by) == (stored.key_id, "test")
    # an admin key for a principal that is an admin already: one grant, and the key
    await keystore.add_grant(store, "ops=admin:*", by="test")
    again, _ = await keystore.create_key(store, "ops", by="test", admin=True)
    await creds.refresh(store)
    assert creds.keys == {hash_api_key(again): "ops"}
    assert [keystore.format_grant(g) for g in creds.grants] == ["ops=admin:*"]


async def test_a_store_that_fails_keeps_the_last_keys_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = await tidelog.connect("memory://")
    key, _ = await keystore.create_key(store, "ops", by="test")
    creds = keystore.StoreCredentials()
    await creds.refresh(store)
    await store.close()  # every read fails from now on
    task = asyncio.create_task(creds.run(lambda: store, interval=0.01))
    try:
        await _until(lambda: _is_logged(caplog, "keys and grants failed"), "failure logged")
        for _ in range(20):  # more rounds, each failing again
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert caplog.text.count("keys and grants failed") == 1
    assert creds.keys == {hash_api_key(key): "ops"}  # nobody is locked out by an outage


async def _is_logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return text in caplog.text


async def test_a_revoke_or_a_removed_grant_ends_open_live_subscriptions(serve: Any) -> None:
    """A live subscription is authorized once, when it opens: a revoke must reach it too.
    The server ends it; the client's reconnect is checked again and refused."""
    server, store = await serve()
    await store.append("order-1", [tidelog.NewEvent(type="Placed", data=b"{}")])
    key, stored = await keystore.create_key(store, "watcher", by="test")
    await keystore.add_grant(store, "watcher=read:category:order", by="test")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as c:

        async def follow(change: Callable[[], Any]) -> None:
            """Open a subscription, see the first event, `change` the credentials, see it end."""
            headers = {**_auth(key), "Accept": "text/event-stream"}
            deadline = time.monotonic() + WAIT
            while True:  # until the server has read the key and the grant
                async with c.stream("GET", "/v1/subscribe?category=order", headers=headers) as r:
                    if r.status_code == 200:
                        seen = b""
                        async with asyncio.timeout(WAIT):
                            async for chunk in r.aiter_bytes():
                                seen += chunk
                                if b"Placed" in seen and not changed:
                                    changed.append(await change())
                        assert b"Placed" in seen  # and then the stream ended: the loop is done
                        return
                assert time.monotonic() < deadline, r.status_code
                await asyncio.sleep(0.1)

        changed: list[Any] = []
        await follow(lambda: keystore.remove_grant(store, "watcher=read:category:order", by="t"))
        r = await c.get("/v1/subscribe?category=order", headers=_auth(key))
        assert r.status_code == 403  # reopened: checked again, without the grant
        await keystore.add_grant(store, "watcher=read:category:order", by="test")
        changed.clear()
        await follow(lambda: keystore.revoke_key(store, stored.key_id, by="test"))
        assert (await c.get("/v1/subscribe?category=order", headers=_auth(key))).status_code == 401
