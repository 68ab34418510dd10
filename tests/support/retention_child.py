"""The child of tests/test_retention_crash.py: append and scavenge until SIGKILLed.

    python retention_child.py STORE_URL ACK_FILE

Appends one event at a time to the streams `job-0..job-N`, round robin, each
with its expected version, and writes a line `{"id", "stream", "version",
"position"}` to ACK_FILE after each acknowledgement; meanwhile it scavenges
in small batches, over and over. The parent set the rule (`max_count`) first.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TextIO

import tidelog

STREAMS = 6


async def main(url: str, acks: TextIO) -> None:
    async with tidelog.connect(url) as store:
        store.scavenge_batch = 3  # many small batches: a kill lands between or inside them
        store.scavenge_interval = 0.1
        store.scavenge_lease = 0.5  # a killed child's lease lapses before the next one starts
        heads = {}
        for i in range(STREAMS):
            found = [e.version async for e in store.read_stream(f"job-{i}", -1, True, 1)]
            heads[f"job-{i}"] = found[0] if found else None

        async def produce() -> None:
            n = 0
            while True:
                stream = f"job-{n % STREAMS}"
                n += 1
                event = tidelog.NewEvent(type="Job", data=b"x" * 64)
                expected = tidelog.NO_STREAM if heads[stream] is None else heads[stream]
                result = await store.append(stream, [event], expected)
                heads[stream] = result.version
                acks.write(
                    json.dumps(
                        {
                            "id": str(event.id),
                            "stream": stream,
                            "version": result.version,
                            "position": result.position,
                        }
                    )
                    + "\n"
                )

        async def scavenge() -> None:
            while True:
                await store.scavenge()

        await asyncio.gather(produce(), scavenge())


if __name__ == "__main__":
    with open(sys.argv[2], "a+", buffering=1) as ack_file:
        # A line cut by the previous kill was never acknowledged: start a new one.
        if ack_file.tell() > 0:
            ack_file.write("\n")
        asyncio.run(main(sys.argv[1], ack_file))
