"""The worker the image check runs: `tidelog worker ci_app:app` inside the image.

Each `ciorder-*` event gets a `Done` event in `cidone-<n>`, appended with the
checkpoint (so a redelivery writes nothing twice): the check reads those back
to see that the worker of the image consumed, handled and committed.
"""

from __future__ import annotations

import tidelog

app = tidelog.App("ci-image")


@app.handler("ciorder", group="ci-image")
async def on_order(event: tidelog.RecordedEvent, ctx: tidelog.Context) -> None:
    ctx.append(
        "cidone-" + event.stream.partition("-")[2],
        [tidelog.NewEvent(type="Done", data=event.data)],
    )
