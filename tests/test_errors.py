"""The error tree: one root, data as attributes, `ValueError` for bad input."""

from __future__ import annotations

import inspect
from uuid import uuid4

import pytest

import tidelog
import tidelog.errors as errors_module


def _error_classes() -> list[type[BaseException]]:
    return [
        obj
        for name in errors_module.__all__
        if inspect.isclass(obj := getattr(errors_module, name)) and issubclass(obj, BaseException)
    ]


def test_every_error_subclasses_the_root() -> None:
    classes = _error_classes()
    assert tidelog.TidelogError in classes
    assert len(classes) == len(errors_module.__all__)
    for cls in classes:
        assert issubclass(cls, tidelog.TidelogError), cls


def test_every_error_is_public_from_the_package() -> None:
    for cls in _error_classes():
        assert getattr(tidelog, cls.__name__) is cls


def test_every_error_is_drawn_in_the_module_docstring() -> None:
    doc = errors_module.__doc__ or ""
    for cls in _error_classes():
        assert cls.__name__ in doc, cls.__name__


def test_invalid_input_is_a_value_error() -> None:
    for cls in (
        tidelog.InvalidInput,
        tidelog.InvalidStreamName,
        tidelog.InvalidEvent,
        tidelog.DuplicateEventId,
        tidelog.InvalidExpectedVersion,
        tidelog.InvalidURL,
    ):
        assert issubclass(cls, ValueError), cls
        assert issubclass(cls, tidelog.InvalidInput), cls


def test_tree_shape() -> None:
    assert issubclass(tidelog.DuplicateEventId, tidelog.InvalidEvent)
    assert issubclass(tidelog.StaleGeneration, tidelog.GroupError)
    for cls in (
        tidelog.WrongExpectedVersion,
        tidelog.StreamDeleted,
        tidelog.GroupError,
        tidelog.NotSupported,
        tidelog.StoreClosed,
        tidelog.StoreUnavailable,
    ):
        # Conflicts and outages are not the caller's malformed input.
        assert not issubclass(cls, ValueError), cls


def test_wrong_expected_version_attributes() -> None:
    exc = tidelog.WrongExpectedVersion("order-1", tidelog.NO_STREAM, 3)
    assert (exc.stream, exc.expected, exc.actual) == ("order-1", tidelog.NO_STREAM, 3)
    empty = tidelog.WrongExpectedVersion("order-1", 2, None)
    assert empty.actual is None


def test_duplicate_event_id_attributes() -> None:
    ids = [uuid4(), uuid4()]
    exc = tidelog.DuplicateEventId("order-1", ids)
    assert exc.stream == "order-1"
    assert exc.event_ids == tuple(ids)


def test_stale_generation_attributes() -> None:
    exc = tidelog.StaleGeneration("billing", "order", "m1", 3, 5)
    assert (exc.group, exc.category, exc.member, exc.generation, exc.current) == (
        "billing",
        "order",
        "m1",
        3,
        5,
    )


def test_other_attributes() -> None:
    assert tidelog.StreamDeleted("order-1").stream == "order-1"
    name = tidelog.InvalidStreamName("../x", "bad")
    assert (name.name, name.reason) == ("../x", "bad")
    assert tidelog.InvalidExpectedVersion(-1).value == -1
    url = tidelog.InvalidURL("foo://", "unknown scheme")
    assert (url.url, url.reason) == ("foo://", "unknown scheme")
    ns = tidelog.NotSupported("nats", "transactional commit", "no transactions")
    assert (ns.engine, ns.feature, ns.reason) == ("nats", "transactional commit", "no transactions")


def test_errors_are_catchable_by_root() -> None:
    with pytest.raises(tidelog.TidelogError):
        raise tidelog.StoreClosed()
    with pytest.raises(ValueError):
        raise tidelog.InvalidStreamName("", "must not be empty")


def test_error_messages_name_the_subject() -> None:
    # Messages are for humans; callers use attributes. They still name the subject.
    assert "order-1" in str(tidelog.WrongExpectedVersion("order-1", 0, 1))
    assert "order-1" in str(tidelog.StreamDeleted("order-1"))
