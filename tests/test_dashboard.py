"""The dashboard: `/v1/stats` over HTTP, the page's headers, and the page itself in Chromium.

The browser test drives Debian's `chromium` through Playwright (no bundled
browser download): sign in with the key, watch an appended event arrive in the
live tail, and watch a group's lag show up and fall when its checkpoint moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import tidelog
from support.browser import chromium
from support.server import ADMIN_KEY, Serve, config, running

STATIC = Path(tidelog.__file__).parent / "server" / "static"


@pytest.fixture
async def api(serve: Serve) -> AsyncIterator[tuple[httpx.AsyncClient, tidelog.Store]]:
    server, store = await serve(
        keys={"reader-key": "reader"}, grants=("reader=read:category:order",)
    )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        yield client, store


def _auth(key: str = ADMIN_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_stats_counts_categories_and_lag_per_partition(
    api: tuple[httpx.AsyncClient, tidelog.Store],
) -> None:
    client, store = api
    for stream, n in (("order-1", 2), ("order-2", 1), ("cart-1", 3)):
        await store.append(stream, [tidelog.NewEvent(type="T") for _ in range(n)])
    member = await store.join_group("billing", "order", "m1")
    home = tidelog.partition_of("order-1", store.partition_count)
    await store.commit("billing", "order", home, 1, member="m1", generation=member.generation)

    stats = (await client.get("/v1/stats", headers=_auth())).json()
    assert stats["head"] == 6
    assert stats["categories"] == [
        {"category": "cart", "streams": 1, "events": 3, "deleted": 0},
        {"category": "order", "streams": 2, "events": 3, "deleted": 0},
    ]
    [group] = stats["groups"]
    assert (group["group"], group["category"], group["parked"]) == ("billing", "order", 0)
    assert [m["member"] for m in group["members"]] == ["m1"]
    partitions = {p["partition"]: p for p in group["partitions"]}
    assert len(partitions) == store.partition_count
    # lag: events of the category in that partition after its checkpoint
    order_events = [e async for e in store.read_all(categories=["order"])]
    for p, row in partitions.items():
        checkpoint = 1 if p == home else 0
        expected = sum(
            1
            for e in order_events
            if tidelog.partition_of(e.stream, store.partition_count) == p
            and e.position > checkpoint
        )
        assert row == {"partition": p, "owner": "m1", "checkpoint": checkpoint, "lag": expected}
    assert group["lag"] == 2  # order-1's second event and order-2's only one


async def test_stats_follow_the_acl_and_need_a_key(
    api: tuple[httpx.AsyncClient, tidelog.Store],
) -> None:
    client, store = api
    await store.append("order-1", [tidelog.NewEvent(type="T")])
    await store.append("cart-1", [tidelog.NewEvent(type="T")])
    await store.join_group("packing", "cart", "m1")
    assert (await client.get("/v1/stats")).status_code == 401
    stats = (await client.get("/v1/stats", headers=_auth("reader-key"))).json()
    assert [c["category"] for c in stats["categories"]] == ["order"]
    assert stats["groups"] == []


async def test_parked_events_are_counted_from_the_dlq_stream(
    api: tuple[httpx.AsyncClient, tidelog.Store],
) -> None:
    from tidelog.consumers._dlq import dlq_stream, parked_entry

    client, store = api
    await store.append("order-1", [tidelog.NewEvent(type="T")])
    await store.join_group("billing", "order", "m1")
    [event] = [e async for e in store.read_stream("order-1")]
    entry = parked_entry("billing", event, handler="h", error=ValueError("boom"), attempts=3)
    await store.append(dlq_stream("billing"), [entry])
    stats = (await client.get("/v1/stats", headers=_auth())).json()
    assert stats["groups"][0]["parked"] == 1
    deadline = time.monotonic() + 30  # refreshed in the background, soon after a scrape
    while 'tidelog_parked_events{group="billing"} 1.0' not in (await client.get("/metrics")).text:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)


async def test_page_and_assets_carry_a_strict_csp(
    api: tuple[httpx.AsyncClient, tidelog.Store],
) -> None:
    client, _ = api
    page = await client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    script = await client.get("/ui/dashboard.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert (await client.get("/ui/dashboard.css")).status_code == 200
    assert (await client.get("/ui/index.html")).status_code == 404
    assert (await client.get("/ui/..%2F_app.py")).status_code == 404


def test_the_script_never_writes_html_from_data() -> None:
    """Event content reaches the DOM through textContent only (the CSP is the second wall)."""
    script = (STATIC / "dashboard.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    html = (STATIC / "index.html").read_text()
    assert "<script>" not in html and "style=" not in html  # nothing inline for the CSP to block


def test_static_files_ship_inside_the_package() -> None:
    """Hatch puts everything under src/tidelog into the wheel; the files must live there."""
    from importlib import resources

    files = resources.files("tidelog.server") / "static"
    for name in ("index.html", "dashboard.js", "dashboard.css", "favicon.svg"):
        assert (files / name).is_file(), name


# ------------------------------------------------------------------ parked events (#14 item 6)


async def _park_one_hold_two(store: tidelog.Store) -> list[tidelog.RecordedEvent]:
    """order-1's first event parked (JSON data), the two after it held behind it."""
    from tidelog.consumers._dlq import dlq_stream, held_entry, parked_entry

    await store.append(
        "order-1",
        [
            tidelog.NewEvent(type="OrderPlaced", data=b'{"total":5}'),
            tidelog.NewEvent(type="OrderPaid", data=b"\x00\xff"),
            tidelog.NewEvent(type="OrderShipped"),
        ],
    )
    await store.join_group("billing", "order", "m1")
    first, *rest = [e async for e in store.read_stream("order-1")]
    entries = [parked_entry("billing", first, handler="h", error=ValueError("boom"), attempts=3)]
    entries += [held_entry("billing", e, handler="h") for e in rest]
    await store.append(dlq_stream("billing"), entries)
    return [first, *rest]


async def test_stats_count_parked_and_held_apart(
    api: tuple[httpx.AsyncClient, tidelog.Store],
) -> None:
    """ "78 parked" was 2 parked and 76 held behind them: the counts are now apart."""
    client, store = api
    await _park_one_hold_two(store)
    [group] = (await client.get("/v1/stats", headers=_auth())).json()["groups"]
    assert (group["parked"], group["held"], group["retrying"]) == (1, 2, 0)
    stats = (await client.get("/v1/stats", headers=_auth())).json()
    assert (stats["principal"], stats["admin"]) == ("admin", True)
    reader = (await client.get("/v1/stats", headers=_auth("reader-key"))).json()
    assert (reader["principal"], reader["admin"]) == ("reader", False)
    assert reader["groups"][0]["held"] == 2  # counts are for anyone who may read the category


async def test_dlq_routes_list_show_retry_and_drop(
    api: tuple[httpx.AsyncClient, tidelog.Store],
) -> None:
    from tidelog.consumers._dlq import list_parked

    client, store = api
    first, paid, shipped = await _park_one_hold_two(store)
    listed = (await client.get("/v1/admin/dlq/billing", headers=_auth())).json()
    assert listed["total"] == 3 and listed["counts"] == {"parked": 1, "held": 2}
    assert [(e["event_id"], e["status"]) for e in listed["events"]] == [
        (str(first.id), "parked"),
        (str(paid.id), "held"),
        (str(shipped.id), "held"),
    ]
    assert (
        listed["events"][0]["error"] == "ValueError('boom')" and "event" not in listed["events"][0]
    )
    page = (await client.get("/v1/admin/dlq/billing?limit=1", headers=_auth())).json()
    assert page["total"] == 3 and len(page["events"]) == 1

    shown = (await client.get(f"/v1/admin/dlq/billing/{first.id}", headers=_auth())).json()
    assert shown["event"]["data"] == {"total": 5}  # JSON comes decoded
    binary = (await client.get(f"/v1/admin/dlq/billing/{paid.id}", headers=_auth())).json()
    assert binary["event"]["data"] is None and binary["event"]["data_base64"] == "AP8="

    r = await client.post(f"/v1/admin/dlq/billing/{first.id}/retry", headers=_auth())
    assert r.status_code == 200 and r.json() == {
        "event_id": str(first.id),
        "action": "retry",
        "stream": "order-1",
    }
    r = await client.post(f"/v1/admin/dlq/billing/{shipped.id}/drop", headers=_auth())
    assert r.status_code == 200, r.text
    again = await client.post(f"/v1/admin/dlq/billing/{shipped.id}/drop", headers=_auth())
    assert again.status_code == 400 and "already dropped" in again.json()["message"]
    # the same fold as `tidelog dlq list`: one retrying, one held, one dropped
    states = {
        p.event.id: p.status.value
        for p in await list_parked(store, "billing", include_settled=True)
    }
    assert states == {first.id: "retrying", paid.id: "held", shipped.id: "dropped"}
    [group] = (await client.get("/v1/stats", headers=_auth())).json()["groups"]
    assert (group["parked"], group["held"], group["retrying"]) == (0, 1, 1)


async def test_dlq_routes_refuse_non_admins_and_bad_input(
    api: tuple[httpx.AsyncClient, tidelog.Store],
) -> None:
    from tidelog.consumers._dlq import dlq_stream

    client, store = api
    first, *_ = await _park_one_hold_two(store)
    before = [e async for e in store.read_stream(dlq_stream("billing"))]
    for method, path in (
        ("GET", "/v1/admin/dlq/billing"),
        ("GET", f"/v1/admin/dlq/billing/{first.id}"),
        ("POST", f"/v1/admin/dlq/billing/{first.id}/retry"),
        ("POST", f"/v1/admin/dlq/billing/{first.id}/drop"),
    ):
        # a reader of the category (who sees the counts) may not touch the events
        assert (await client.request(method, path, headers=_auth("reader-key"))).status_code == 403
        assert (await client.request(method, path)).status_code == 401
    for path in (
        "/v1/admin/dlq/billing/not-a-uuid/retry",
        f"/v1/admin/dlq/billing/{tidelog.NewEvent(type='x').id}/drop",
        f"/v1/admin/dlq/a%20b/{first.id}/drop",
    ):
        r = await client.post(path, headers=_auth())
        assert r.status_code == 400, (path, r.text)
    assert (await client.get("/v1/admin/dlq/billing/nope", headers=_auth())).status_code == 400
    assert [e async for e in store.read_stream(dlq_stream("billing"))] == before


async def test_history_of_an_hour_comes_with_the_stats(
    serve: Serve,
) -> None:
    from tidelog.server._dashboard import HISTORY_KEY, History

    server, store = await serve(
        keys={"reader-key": "reader"}, grants=("reader=read:category:order",)
    )
    await store.append("order-1", [tidelog.NewEvent(type="T") for _ in range(3)])
    await store.append("cart-1", [tidelog.NewEvent(type="T")])
    await store.join_group("billing", "order", "m1")
    await store.join_group("packing", "cart", "m1")
    history: History = server._app.state[HISTORY_KEY]
    await history.sample(store)  # the background sampler's step, now rather than in 5 s
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        plain = (await client.get("/v1/stats", headers=_auth())).json()
        assert plain["history"] is None  # only asked for once, when the page opens
        full = (await client.get("/v1/stats?history=true", headers=_auth())).json()
        t, head, lags = full["history"][-1]
        assert head == 4 and 0 < t <= full["time"]  # the page aligns by the server's clock
        assert sorted(lags) == [["billing", "order", 3], ["packing", "cart", 1]]
        mine = (await client.get("/v1/stats?history=true", headers=_auth("reader-key"))).json()
        assert mine["history"][-1][2] == [["billing", "order", 3]]  # the ACL filters it too


async def test_history_is_a_bounded_ring() -> None:
    from tidelog.server._dashboard import HISTORY_SECONDS, History

    history = History(interval=HISTORY_SECONDS / 3)
    async with tidelog.connect("memory://") as store:
        for _ in range(5):
            await store.append("order-1", [tidelog.NewEvent(type="T")])
            await history.sample(store)
    assert [s.head for s in history.samples] == [3, 4, 5]  # an hour's worth, the oldest gone


async def test_favicon_is_served(api: tuple[httpx.AsyncClient, tidelog.Store]) -> None:
    client, _ = api
    for path in ("/favicon.ico", "/ui/favicon.svg"):
        r = await client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
        assert r.content.startswith(b"<svg")
    assert 'rel="icon" href="/ui/favicon.svg"' in (await client.get("/")).text


# ---------------------------------------------------------------------------- browser


@contextlib.asynccontextmanager
async def _chromium() -> AsyncIterator[tuple[Any, list[str]]]:
    """A page in headless Chromium, and the errors its console and scripts report."""
    from playwright.async_api import expect

    expect.set_options(timeout=15_000)  # a loaded CI machine; the page refreshes every 2 s
    async with chromium() as browser:
        page = await browser.new_page(viewport={"width": 1400, "height": 1100})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on(
            "console",
            lambda msg: errors.append(msg.text) if msg.type == "error" else None,
        )
        yield page, errors


async def test_dashboard_live_tail_and_group_lag_in_chromium() -> None:
    from playwright.async_api import expect

    cfg = config(keys={"reader-key": "reader"}, grants=("reader=read:category:order",))
    async with running(cfg) as (server, store), _chromium() as (page, errors):
        base = f"http://127.0.0.1:{server.port}"
        await page.goto(base + "/")
        await page.fill("#key", "wrong-key")
        await page.click("#login-form button[type=submit]")
        await expect(page.locator("#login-error")).to_contain_text("refused")
        errors.clear()  # the browser logs the refused request itself

        await page.fill("#key", ADMIN_KEY)
        await page.click("#login-form button[type=submit]")
        await expect(page.locator("#app")).to_be_visible()
        await expect(page.locator("#status")).to_have_text("live")

        # an event appended through the API arrives in the tail, its content escaped
        hostile = '<img src=x id="pwned" onerror="document.title=1">'
        async with httpx.AsyncClient(base_url=base, headers=_auth()) as client:
            r = await client.post(
                "/v1/streams/order-1/events",
                json={
                    "events": [
                        {"type": "OrderPlaced", "data": {"note": hostile, "total": 10}},
                        {"type": "OrderPaid", "data": {"total": 10}},
                    ]
                },
            )
            assert r.status_code == 200, r.text
            await client.post(
                "/v1/streams/order-2/events", json={"events": [{"type": "OrderPlaced"}]}
            )
        first = page.locator('#tail tbody tr[data-position="1"]')
        await expect(first).to_contain_text("order-1")
        await expect(first).to_contain_text("OrderPlaced")
        await expect(page.locator('#tail tbody tr[data-position="3"]')).to_contain_text("order-2")
        await first.click()
        await expect(page.locator("#detail-data")).to_contain_text("<img src=x")
        assert json.loads(await page.locator("#detail-data").text_content() or "") == {
            "note": hostile,
            "total": 10,
        }
        assert await page.locator("#pwned").count() == 0
        await expect(page.locator('#categories tr[data-category="order"]')).to_contain_text("3")

        # a group whose checkpoint trails the head shows lag; committing lowers it
        member = await store.join_group("billing", "order", "m1")
        home = tidelog.partition_of("order-1", store.partition_count)
        together = tidelog.partition_of("order-2", store.partition_count) == home
        await store.commit("billing", "order", home, 1, member="m1", generation=member.generation)
        group = page.locator('#groups [data-group="billing"]')
        row = group.locator(f'tr[data-partition="{home}"]')
        await expect(row).to_contain_text("m1")
        # order-1's second event, and order-2's if it shares the partition
        await expect(row.locator("td").nth(3)).to_have_text("2" if together else "1")
        before = int(await group.locator(".group-lag").text_content() or "-1")
        assert before == 2
        if os.environ.get("TIDELOG_SCREENSHOT"):
            await page.screenshot(path=os.environ["TIDELOG_SCREENSHOT"], full_page=True)

        await store.commit("billing", "order", home, 3, member="m1", generation=member.generation)
        await expect(row.locator("td").nth(3)).to_have_text("0")
        await expect(group.locator(".group-lag")).to_have_text("0" if together else "1")
        assert errors == []

        # a key limited to one category sees only that, and no global tail
        await store.append("cart-1", [tidelog.NewEvent(type="CartOpened")])
        await page.click("#signout")
        await expect(page.locator("#login")).to_be_visible()
        await page.fill("#key", "reader-key")
        await page.click("#login-form button[type=submit]")
        await expect(page.locator("#tail-state")).to_contain_text("may not read")
        await expect(page.locator('#categories tr[data-category="order"]')).to_be_visible()
        assert await page.locator('#categories tr[data-category="cart"]').count() == 0
        await page.fill("#browse-stream", "order-1")
        await page.click("#browse-form button[type=submit]")
        await expect(page.locator('#events tbody tr[data-position="2"]')).to_contain_text(
            "OrderPaid"
        )


async def test_dashboard_parked_events_signed_out_page_and_deleted_streams_in_chromium() -> None:
    """#14 item 6 in the browser: nothing of the app shows under the sign-in box; parked
    and held events are counted apart; an admin inspects, retries and drops parked events
    (a reader sees the counts, no panel and no buttons); deleted streams say so."""
    from playwright.async_api import expect

    from tidelog.consumers._dlq import list_parked

    cfg = config(keys={"reader-key": "reader"}, grants=("reader=read:category:order",))
    async with running(cfg) as (server, store), _chromium() as (page, errors):
        base = f"http://127.0.0.1:{server.port}"
        first, paid, shipped = await _park_one_hold_two(store)
        await store.append("order-9", [tidelog.NewEvent(type="OrderPlaced")])
        await store.delete_stream("order-9")
        stats_urls: list[str] = []
        page.on("request", lambda r: stats_urls.append(r.url) if "/v1/stats" in r.url else None)

        await page.goto(base + "/")
        await expect(page.locator("#login")).to_be_visible()
        # `hidden` wins over the page's CSS: no empty panels under the sign-in box
        for panel in ("#app", "#dlq", "#signout"):
            await expect(page.locator(panel)).to_be_hidden()
        assert await page.locator("#app").bounding_box() is None
        icon = await page.request.get(base + "/favicon.ico")
        assert icon.status == 200 and icon.headers["content-type"].startswith("image/svg+xml")
        assert await page.locator('link[rel="icon"]').get_attribute("href") == "/ui/favicon.svg"

        await page.fill("#key", ADMIN_KEY)
        await page.click("#login-form button[type=submit]")
        await expect(page.locator("#app")).to_be_visible()
        await expect(page.locator("#login")).to_be_hidden()
        # the first stats request brings the server's hour of samples, the next ones not
        assert stats_urls and stats_urls[0].endswith("/v1/stats?history=true")

        group = page.locator('#groups [data-group="billing"]')
        await expect(group.locator(".group-parked")).to_have_text("1 parked")
        await expect(group.locator(".group-held")).to_have_text("2 held behind them")

        # deleted streams are shown as such, in the counts and in the list
        category = page.locator('#categories tr[data-category="order"]')
        await expect(category.locator("td").nth(3)).to_have_text("1")
        await category.click()
        deleted = page.locator('#streams tr[data-stream="order-9"]')
        await expect(deleted).to_have_class("clickable deleted")
        await expect(deleted.locator("td").nth(2)).to_have_text("deleted")
        await expect(page.locator('#streams tr[data-stream="order-1"] td').nth(2)).to_have_text("")

        # the admin's panel: parked and held rows, inspected with the payload decoded
        dlq = page.locator("#dlq")
        await expect(dlq).to_be_visible()
        await expect(page.locator("#dlq-counts")).to_have_text("1 parked · 2 held · 0 retrying")
        parked_row = page.locator(f'#dlq-events tr[data-event-id="{first.id}"]')
        await expect(parked_row).to_have_attribute("data-status", "parked")
        await expect(parked_row).to_contain_text("ValueError('boom')")
        await parked_row.locator("td").first.click()
        await expect(page.locator("#dlq-detail-data")).to_contain_text('"total": 5')
        assert json.loads(await page.locator("#dlq-detail-data").text_content() or "") == {
            "total": 5
        }
        await expect(page.locator("#dlq-detail-error")).to_have_text("ValueError('boom')")

        # retry the parked event, drop one held behind it
        await parked_row.locator("button.dlq-retry").click()
        await expect(parked_row).to_have_attribute("data-status", "retrying")
        # the open detail follows (it kept saying "parked": the #14 walk-through)
        await expect(page.locator("#dlq-detail-title")).to_have_text(
            f"{first.stream} @ {first.version}: retrying"
        )
        assert await parked_row.locator("button").count() == 0
        await page.locator(f'#dlq-events tr[data-event-id="{shipped.id}"] button.dlq-drop').click()
        await expect(page.locator(f'#dlq-events tr[data-event-id="{shipped.id}"]')).to_have_count(0)
        await expect(group.locator(".group-retrying")).to_have_text("1 retrying")
        await expect(group.locator(".group-held")).to_have_text("1 held behind them")
        parked = await list_parked(store, "billing", include_settled=True)
        assert {p.event.id: p.status.value for p in parked} == {
            first.id: "retrying",
            paid.id: "held",
            shipped.id: "dropped",
        }
        assert errors == []

        # a reader of the category sees the counts, but no panel and no buttons
        await page.click("#signout")
        await expect(page.locator("#app")).to_be_hidden()
        # the header forgets the store too (its head stayed after signing out)
        for stat in ("#head", "#first", "#scheduled"):
            await expect(page.locator(stat)).to_have_text("\u2013")  # the en dash of a blank
        await expect(page.locator("#server-info")).to_have_text("")
        await page.fill("#key", "reader-key")
        await page.click("#login-form button[type=submit]")
        await expect(group.locator(".group-held")).to_have_text("1 held behind them")
        await expect(dlq).to_be_hidden()
        assert await page.locator("button.dlq-retry, button.dlq-drop").count() == 0
        # and the server refuses it whatever the page shows
        refused = await page.evaluate(
            """async (path) => (await fetch(path, {method: "POST",
                headers: {Authorization: "Bearer reader-key"}})).status""",
            f"/v1/admin/dlq/billing/{paid.id}/drop",
        )
        assert refused == 403
        parked = await list_parked(store, "billing", include_settled=True)
        assert {p.event.id: p.status.value for p in parked}[paid.id] == "held"
