"""The subscribers of the `sse_fanout` benchmark: many per process, on raw asyncio sockets.

    python -m benchmarks.workloads.fanout_client URL KEY CATEGORY COUNT

Opens COUNT Server-Sent Events subscriptions (`GET /v1/subscribe?category=…`)
on plain asyncio streams: no HTTP client library, no JSON decoding. Per event
a subscriber takes the SSE id (the position) and the send time the appender
wrote into the data (`{"t": <time.time()>}`), found by a byte search, so the
client costs a few microseconds per event and is not the bottleneck (httpx
costs several times more per event). It prints `ready` once every
subscriber has its first event (the appender's warm-up event), then, when
each has seen an event of type `End`, one JSON line: events per subscriber,
events out of order, and a latency histogram (0.1 ms buckets) merged over
its subscribers.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.parse

from benchmarks.common import FANOUT_BUCKET_MS as BUCKET_MS

BUCKETS = 200_000
"""0.1 ms buckets up to 20 s; a later event lands in the last bucket."""

_T = b'"data":{"t":'
_END = b'"type":"End"'


class Subscriber:
    def __init__(self, histogram: list[int]) -> None:
        self.histogram = histogram
        self.last = -1
        self.count = 0
        self.disorder = 0
        self.ended = False
        self.first = asyncio.Event()

    def message(self, msg: bytes) -> None:
        if not msg.startswith(b"id: "):
            return  # a keep-alive comment
        position = int(msg[4 : msg.index(b"\r\n")])
        if position <= self.last:
            self.disorder += 1
        self.last = position
        self.first.set()
        if _END in msg:
            self.ended = True
            return
        at = msg.find(_T)
        if at < 0:
            return  # the warm-up event
        start = at + len(_T)
        sent = float(msg[start : msg.index(b"}", start)])
        self.count += 1
        bucket = int((time.time() - sent) * 1000 / BUCKET_MS)
        self.histogram[min(max(bucket, 0), BUCKETS - 1)] += 1


async def run_one(url: urllib.parse.SplitResult, key: str, category: str, sub: Subscriber) -> None:
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(
        (
            f"GET /v1/subscribe?category={category} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"subscribe refused: {head[:200]!r}")
    chunked = b"transfer-encoding: chunked" in head.lower()
    raw = b""
    sse = b""
    while not sub.ended:
        got = await reader.read(1 << 16)
        if not got:
            raise RuntimeError("the server closed the stream")
        if chunked:
            raw += got
            while True:  # whole chunks: "size\r\n" + size bytes + "\r\n"
                eol = raw.find(b"\r\n")
                if eol < 0:
                    break
                size = int(raw[:eol], 16)
                if len(raw) < eol + 2 + size + 2:
                    break
                sse += raw[eol + 2 : eol + 2 + size]
                raw = raw[eol + 2 + size + 2 :]
        else:
            sse += got
        *messages, sse = sse.split(b"\r\n\r\n")
        for msg in messages:
            sub.message(msg)
    writer.close()


async def main(url: str, key: str, category: str, count: int) -> None:
    parts = urllib.parse.urlsplit(url)
    histogram = [0] * BUCKETS
    subs = [Subscriber(histogram) for _ in range(count)]
    tasks = []
    for sub in subs:  # connect gradually: a burst of thousands would overflow the backlog
        tasks.append(asyncio.create_task(run_one(parts, key, category, sub)))
        await asyncio.sleep(0.002)
    started = asyncio.ensure_future(asyncio.gather(*(s.first.wait() for s in subs)))
    await asyncio.wait([started, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if not started.done():
        started.cancel()
        for task in tasks:
            if task.done():
                task.result()  # a subscriber failed before the start: say why
    print("ready", flush=True)
    await asyncio.gather(*tasks)
    print(
        json.dumps(
            {
                "counts": [s.count for s in subs],
                "disorder": sum(s.disorder for s in subs),
                "histogram": {str(i): n for i, n in enumerate(histogram) if n},
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
