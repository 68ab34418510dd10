"""Protocol points of issue #15, each driven by the real client: the WebSocket
refusal of a bad header credential (`websockets`), the OpenAPI document's error
schema against real error answers (schemathesis), and the API docs pages served
without the internet (httpx, and Chromium with every other origin blocked)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import msgspec
import pytest

import tidelog
from support.browser import chromium
from support.server import ADMIN_KEY, Serve


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        pytest.param("Bearer not-a-key", "invalid credentials", id="unknown-key"),
        pytest.param("Bearer ", "missing or oversized bearer token", id="empty-token"),
    ],
)
async def test_websocket_with_a_bad_header_credential_is_closed_at_once_with_a_reason(
    serve: Serve, authorization: str, reason: str
) -> None:
    """The header's credential is judged as given: 1008 with the reason, and no
    first-message fallback (a valid token sent next must not open the feed)."""
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import ConnectionClosed

    server, store = await serve()
    await store.append("order-1", [tidelog.NewEvent(type="A")])
    url = f"ws://127.0.0.1:{server.port}/v1/ws/subscribe?category=order"
    async with ws_connect(url, additional_headers={"Authorization": authorization}) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.send(json.dumps({"token": ADMIN_KEY}))
            await asyncio.wait_for(ws.recv(), 60)  # a bound for a hung server, not a timing
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
    assert closed.value.rcvd.reason == reason


async def test_websocket_without_credentials_is_told_what_it_missed(serve: Serve) -> None:
    """No header and no first message: still 1008, now with a reason (it was empty)."""
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import ConnectionClosed

    server, _ = await serve()
    url = f"ws://127.0.0.1:{server.port}/v1/ws/subscribe"
    async with ws_connect(url) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 60)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert closed.value.rcvd.reason == 'no credentials within 5 s: send {"token": "..."} first'


async def test_error_answers_validate_against_the_openapi_document(serve: Serve) -> None:
    """Real refusals, each checked by schemathesis against the schema the document gives
    for its status code (it was Litestar's `{status_code, detail, extra}`, which no route
    sends)."""
    import schemathesis

    from tidelog.server import Limits

    server, store = await serve(
        keys={"reader-key": "reader"},
        grants=("reader=read:category:order",),
        limits=Limits(max_body_bytes=4096),
    )
    await store.append("order-1", [tidelog.NewEvent(type="A")])
    await store.append("order-gone", [tidelog.NewEvent(type="A")])
    await store.delete_stream("order-gone")
    base = f"http://127.0.0.1:{server.port}"
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=base) as client:
        doc = (await client.get("/schema/openapi.json", headers=admin)).json()
        one = {"events": [{"type": "A"}]}
        calls = [
            ("/v1/streams/{stream}/events", "POST", "/v1/streams/bad name!/events", one, admin),
            ("/v1/streams/{stream}/events", "POST", "/v1/streams/order-1/events", one, {}),
            (
                "/v1/streams/{stream}/events",
                "POST",
                "/v1/streams/order-1/events",
                one,
                {"Authorization": "Bearer reader-key"},
            ),
            (
                "/v1/streams/{stream}/events",
                "POST",
                "/v1/streams/order-1/events",
                {**one, "expected_version": 7},
                admin,
            ),
            (
                "/v1/streams/{stream}/events",
                "POST",
                "/v1/streams/order-1/events",
                {"events": [{"type": "A", "data_base64": "x" * 8000}]},
                admin,
            ),
            ("/v1/streams/{stream}/events", "GET", "/v1/streams/order-gone/events", None, admin),
            ("/v1/log", "GET", "/v1/log?from_position=minus-one", None, admin),
            ("/v1/cloudevents", "POST", "/v1/cloudevents", "plain text", admin),
            ("/subjects/{subject}/versions", "GET", "/subjects/Nothing/versions", None, admin),
        ]
        # and an answer the route encodes itself (Litestar documented it as "a string")
        read_back = await client.get("/v1/streams/order-1/cloudevents", headers=admin)
        assert read_back.status_code == 200, read_back.text
        answers = []
        for template, method, url, body, headers in calls:
            if isinstance(body, str):
                r = await client.request(method, url, content=body, headers=headers)
            else:
                r = await client.request(method, url, json=body, headers=headers)
            answers.append((template, method, r))
    statuses = sorted(r.status_code for _, _, r in answers)
    seen = [
        (call[2], r.status_code, r.text) for call, (_, _, r) in zip(calls, answers, strict=True)
    ]
    assert statuses == [400, 400, 401, 403, 404, 409, 410, 413, 415], seen
    schema = schemathesis.openapi.from_dict(doc)
    for template, method, r in answers:
        operation = schema[template][method]
        documented = operation.responses.find_by_status_code(r.status_code)
        assert documented is not None, f"{method} {template}: {r.status_code} undocumented"
        operation.validate_response(r)  # raises with the mismatch
    schema["/v1/streams/{stream}/cloudevents"]["GET"].validate_response(read_back)
    # nothing in the document describes Litestar's own error shape any more
    assert '"status_code"' not in json.dumps(doc["paths"])


# ---------------------------------------------------------------- the API docs pages

DOCS_PAGES = ("/schema", "/schema/swagger")
_ASSET_TYPES = ("text/javascript", "application/javascript", "text/css", "image/png")


async def test_the_docs_pages_load_every_asset_from_the_server_itself(serve: Serve) -> None:
    """No CDN, no Google fonts: every script, style and icon is same-origin and answers."""
    server, _ = await serve()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        for page in DOCS_PAGES:
            r = await client.get(page)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            urls = re.findall(r"""(?:src|href)=["']([^"']+)""", r.text)
            assert len(urls) >= 2, (page, urls)
            for url in urls:
                assert url.startswith("/") and not url.startswith("//"), (page, url)
                asset = await client.get(url)
                assert asset.status_code == 200, (page, url)
                assert asset.headers["content-type"].startswith(_ASSET_TYPES), (url, asset.headers)
                assert len(asset.content) > 500, url
        # only the package's folder is served
        for bad in ("/schema/assets/../../../etc/passwd", "/schema/assets/%2e%2e/%2e%2e/x.py"):
            outside = await client.get(bad)
            assert outside.status_code in (400, 404), (bad, outside.status_code)


async def test_the_docs_pages_render_in_chromium_with_the_internet_cut_off(serve: Serve) -> None:
    """Redoc and Swagger UI draw the API in a browser that may reach only this server."""
    from playwright.async_api import Route, expect

    server, _ = await serve()
    origin = f"http://127.0.0.1:{server.port}"
    blocked: list[str] = []

    async def only_this_server(route: Route) -> None:
        if route.request.url.startswith(origin + "/"):
            await route.continue_()
        else:
            blocked.append(route.request.url)
            await route.abort("internetdisconnected")

    async with chromium() as browser:
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.route("**/*", only_this_server)

        await page.goto(f"{origin}/schema")  # Redoc
        await expect(page.locator("h1").first).to_contain_text("tidelog", timeout=60_000)
        await expect(page.get_by_text("Append to a stream").first).to_be_attached()

        await page.goto(f"{origin}/schema/swagger")
        await expect(page.locator(".swagger-ui .info .title")).to_contain_text(
            "tidelog", timeout=60_000
        )
        await expect(page.locator(".opblock").first).to_be_visible()
    assert blocked == []
    assert errors == []


# ---------------------------------------------------------------- docs/http-api.md

HTTP_API_DOC = Path(__file__).resolve().parents[1] / "docs" / "http-api.md"
UNLISTED = {
    "/schema/{}": "Litestar's fallback for the docs pages, not a route of its own",
    "/schema/oauth2-redirect.html": "Swagger UI's OAuth2 helper page (no OAuth2 here)",
}


def _shape(path: str) -> str:
    """A path with its parameters unnamed: `/v1/streams/{stream:str}` -> `/v1/streams/{}`."""
    return re.sub(r"\{[^}]*\}", "{}", path)


async def test_http_api_doc_lists_every_route_and_client_option(serve: Serve) -> None:
    """The doc is checked against the running app, so a new route or option cannot
    be left out of it."""
    from litestar.routes import HTTPRoute, WebSocketRoute

    from tidelog.engines.remote import RemoteConfig

    server, _ = await serve()
    doc = _shape(HTTP_API_DOC.read_text())
    missing = []
    for route in server._app.routes:
        path = _shape(route.path)
        if path in UNLISTED:
            continue
        methods = ["GET"] if isinstance(route, WebSocketRoute) else []
        if isinstance(route, HTTPRoute):
            methods = sorted(route.methods - {"OPTIONS", "HEAD"})
        listed = (re.escape(f"{m} {path}") + r"(?![\w/{])" for m in methods)  # whole paths
        if not any(re.search(pattern, doc) for pattern in listed) and f"`{path}`" not in doc:
            missing.append(f"{methods} {route.path}")
    assert missing == []
    for field in msgspec.structs.fields(RemoteConfig):
        assert f"| `{field.name}` | {field.default:g} |" in doc, field.name
