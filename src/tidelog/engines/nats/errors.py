"""The one place where nats-py errors become tidelog errors (private to the NATS engine)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from typing import Any

import nats.errors

from tidelog.engines.nats import wire
from tidelog.errors import InvalidEvent, StoreUnavailable, TidelogError

__all__ = ["ApiError", "Conflict", "NotFound", "raise_api", "translated"]


class Conflict(Exception):
    """A compare-and-set lost a race: re-read and try again.

    `last_seq` is the stream sequence the server found on the subject whose
    check failed (its current last message), when the error named it: looking
    that message up tells which subject lost the race.
    """

    def __init__(self, last_seq: int | None = None) -> None:
        super().__init__(last_seq)
        self.last_seq = last_seq


_LAST_SEQ = re.compile(r"wrong last sequence: (\d+)")
"""JetStream gives the sequence only in the error's description (the error itself is
told by its code). Worded otherwise, `last_seq` is None and the writer re-reads
everything, as it would without it: a hint for speed, never for a decision."""


class ApiError(Exception):
    def __init__(self, code: int, err_code: int, description: str) -> None:
        self.code = code
        self.err_code = err_code
        self.description = description
        super().__init__(f"{code}/{err_code}: {description}")


class NotFound(Exception):
    pass


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """The one place where nats errors become tidelog errors."""
    try:
        yield
    except (TidelogError, Conflict, NotFound):
        raise
    except ApiError as exc:
        if exc.err_code in wire.WRONG_LAST_SEQUENCE:
            found = _LAST_SEQ.search(exc.description)
            raise Conflict(int(found[1]) if found else None) from exc
        raise StoreUnavailable(f"{what}: JetStream error {exc}") from exc
    except nats.errors.MaxPayloadError as exc:
        raise InvalidEvent(f"{what}: an event is larger than the server's max_payload") from exc
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        raise StoreUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc


def raise_api(resp: Mapping[str, Any]) -> None:
    err = resp.get("error")
    if err:
        code = int(err.get("code", 0))
        err_code = int(err.get("err_code", 0))
        if code == 404 and err_code == wire.NOT_FOUND:
            raise NotFound()
        raise ApiError(code, err_code, str(err.get("description", "")))
