"""Protocol points of issue #15, each driven by the real client: the WebSocket
refusal of a bad header credential, the API docs served without the internet,
and the OpenAPI document's error schema against real error answers."""

from __future__ import annotations

import asyncio
import json

import pytest

import tidelog
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
