"""The dashboard: `/v1/stats` over HTTP, the page's headers, and the page itself in Chromium.

The browser test drives Debian's `chromium` through Playwright (no bundled
browser download): sign in with the key, watch an appended event arrive in the
live tail, and watch a group's lag show up and fall when its checkpoint moves.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

import tidelog
from support.browser import CHROMIUM, CHROMIUM_ARGS, have_chromium
from support.server import ADMIN_KEY, Serve, config, running
from support.services import service_missing

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
    for name in ("index.html", "dashboard.js", "dashboard.css"):
        assert (files / name).is_file(), name


# ---------------------------------------------------------------------------- browser


async def test_dashboard_live_tail_and_group_lag_in_chromium() -> None:
    if not have_chromium():
        service_missing(f"chromium not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.async_api import Error as PlaywrightError
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=15_000)  # a loaded CI machine; the page refreshes every 2 s
    cfg = config(keys={"reader-key": "reader"}, grants=("reader=read:category:order",))
    async with running(cfg) as (server, store), async_playwright() as p:
        try:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except PlaywrightError as exc:
            service_missing(f"chromium does not start: {exc}")
        base = f"http://127.0.0.1:{server.port}"
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on(
                "console",
                lambda msg: errors.append(msg.text) if msg.type == "error" else None,
            )
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
            await expect(page.locator('#tail tbody tr[data-position="3"]')).to_contain_text(
                "order-2"
            )
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
            await store.commit(
                "billing", "order", home, 1, member="m1", generation=member.generation
            )
            group = page.locator('#groups [data-group="billing"]')
            row = group.locator(f'tr[data-partition="{home}"]')
            await expect(row).to_contain_text("m1")
            # order-1's second event, and order-2's if it shares the partition
            await expect(row.locator("td").nth(3)).to_have_text("2" if together else "1")
            before = int(await group.locator(".group-lag").text_content() or "-1")
            assert before == 2
            if os.environ.get("TIDELOG_SCREENSHOT"):
                await page.screenshot(path=os.environ["TIDELOG_SCREENSHOT"], full_page=True)

            await store.commit(
                "billing", "order", home, 3, member="m1", generation=member.generation
            )
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
        finally:
            await browser.close()
