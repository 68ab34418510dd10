"""The public API is exactly what `tidelog.__all__` names, and every name resolves.

Adding a public name is a decision: add it to `__all__` and to the list below
(one name per line, sorted, so concurrent additions merge cleanly), and to its
group in `TOP_LEVEL` (the rule of `tidelog/__init__.py`'s docstring).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
import sys
import types

import tidelog

PUBLIC_NAMES = [
    "ANY",
    "AccessDenied",
    "Aggregate",
    "AggregateNotFound",
    "App",
    "AppendRequest",
    "AppendResult",
    "Context",
    "DEFAULT_STORE_URL",
    "DuplicateEventId",
    "EventRegistry",
    "ExpectedVersion",
    "GroupError",
    "GroupMember",
    "HandlerOptions",
    "IncompatibleSchema",
    "InvalidEvent",
    "InvalidExpectedVersion",
    "InvalidInput",
    "InvalidStreamName",
    "InvalidURL",
    "Membership",
    "NO_STREAM",
    "NewEvent",
    "NotSupported",
    "ParkedEvent",
    "Personal",
    "PersonalData",
    "Producer",
    "Projection",
    "ProjectionRunner",
    "RecordedEvent",
    "Repository",
    "RetentionPolicy",
    "STREAM_EXISTS",
    "ScheduledEvent",
    "ScheduledResult",
    "SchemaRegistry",
    "SchemaViolation",
    "StaleGeneration",
    "Store",
    "StoreClosed",
    "StoreUnavailable",
    "StreamDeleted",
    "StreamInfo",
    "StreamState",
    "TidelogError",
    "UnknownEventType",
    "WrongExpectedVersion",
    "__version__",
    "applies",
    "category_of",
    "connect",
    "decode",
    "encode",
    "event",
    "handles",
    "partition_of",
    "upcaster",
]


def test_all_is_pinned() -> None:
    assert sorted(tidelog.__all__) == PUBLIC_NAMES


def test_all_has_no_duplicates() -> None:
    assert len(set(tidelog.__all__)) == len(tidelog.__all__)


def test_every_public_name_resolves() -> None:
    module = importlib.import_module("tidelog")
    for name in tidelog.__all__:
        assert getattr(module, name, None) is not None, name


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from tidelog import *", namespace)
    exported = {k for k in namespace if k != "__builtins__"}
    assert exported == set(tidelog.__all__)


def test_store_is_the_full_engine_contract() -> None:
    from tidelog.engines.contract import GroupEngine

    assert tidelog.Store is GroupEngine


def test_version_is_a_string() -> None:
    assert isinstance(tidelog.__version__, str)
    assert tidelog.__version__.count(".") >= 2


# --------------------------------------------------------------------------- the rule

MODEL = [
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AppendRequest",
    "AppendResult",
    "ExpectedVersion",
    "GroupMember",
    "Membership",
    "NewEvent",
    "RecordedEvent",
    "ScheduledEvent",
    "ScheduledResult",
    "StreamInfo",
    "StreamState",
    "category_of",
    "partition_of",
]
STORE = ["DEFAULT_STORE_URL", "Store", "__version__", "connect"]
EVERYDAY = {
    "tidelog.codec": ["EventRegistry", "decode", "encode", "event", "upcaster"],
    "tidelog.aggregates": ["Aggregate", "Repository", "applies"],
    "tidelog.projections": ["Projection", "ProjectionRunner", "handles"],
    "tidelog.consumers": ["App", "Context", "HandlerOptions", "ParkedEvent", "Producer"],
    "tidelog.retention": ["RetentionPolicy"],
    "tidelog.schemas": ["SchemaRegistry"],
    "tidelog.security": ["Personal", "PersonalData"],
}
"""Each feature's everyday names, as the table of `tidelog/__init__.py`'s docstring lists them."""
TOOLS = [
    "tidelog.cli",
    "tidelog.copy",
    "tidelog.server",
    "tidelog.sync",
    "tidelog.telemetry",
    "tidelog.testing",
    "tidelog.wire",
]
"""Public modules that give the top level no name."""
NOT_IMPORTED = [
    "tidelog.cli",
    "tidelog.server",
    "tidelog.sync",
    "tidelog.telemetry",
    "tidelog.testing",
]
"""The tools `import tidelog` leaves alone: they need optional extras or are programs
(and `tidelog.sync`, whose names would shadow the async ones)."""


def _public_names(module: types.ModuleType) -> list[str]:
    """The names a module binds for its users: not private, not a submodule."""
    return sorted(
        name
        for name, value in vars(module).items()
        if (not name.startswith("_") or name == "__version__")
        and not isinstance(value, types.ModuleType)
    )


def test_all_is_sorted_and_is_every_public_name() -> None:
    # Like httpx's tests/test_exported_members.py: nothing public outside __all__.
    assert tidelog.__all__ == sorted(tidelog.__all__)
    assert tidelog.__all__ == _public_names(tidelog)
    assert tidelog.__all__ == PUBLIC_NAMES


def test_every_top_level_name_belongs_to_a_group_of_the_rule() -> None:
    from tidelog import errors

    groups = [MODEL, list(errors.__all__), STORE, *EVERYDAY.values()]
    named = [name for group in groups for name in group]
    assert len(named) == len(set(named)), "a name in two groups"
    assert sorted(named) == PUBLIC_NAMES


def test_the_model_and_every_error_come_from_their_modules() -> None:
    from tidelog import errors, model

    for name in MODEL:
        assert getattr(tidelog, name) is getattr(model, name), name
    for name in errors.__all__:
        assert getattr(tidelog, name) is getattr(errors, name), name


def test_each_feature_exports_its_everyday_names_as_the_docstring_says() -> None:
    doc = tidelog.__doc__ or ""
    for module_name, names in EVERYDAY.items():
        module = importlib.import_module(module_name)
        for name in names:
            assert getattr(tidelog, name) is getattr(module, name), (module_name, name)
        row = next(line for line in doc.splitlines() if f"| `{module_name}` |" in line)
        assert sorted(re.findall(r"`([A-Za-z_]+)`", row.split("|")[2])) == names, row


def test_every_public_module_is_a_feature_of_the_rule_or_a_tool() -> None:
    modules = {
        f"tidelog.{m.name}" for m in pkgutil.iter_modules(tidelog.__path__) if m.name[0] != "_"
    }
    assert modules == {"tidelog.model", "tidelog.errors", "tidelog.engines", *EVERYDAY, *TOOLS}
    for tool in TOOLS:
        assert f"(`{tool}`)" in (tidelog.__doc__ or ""), tool


def test_import_tidelog_leaves_the_tools_alone() -> None:
    code = f"import sys, tidelog; print([m for m in {NOT_IMPORTED!r} if m in sys.modules])"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


SYNC_NAMES = [
    "NOT_IN_SYNC",
    "Producer",
    "ReentrantCall",
    "Repository",
    "SyncIterator",
    "SyncStore",
    "connect",
]
"""`tidelog.sync`'s public API, pinned like the top level's (one name per line, sorted)."""


def test_sync_all_is_pinned_sorted_and_every_public_name() -> None:
    import tidelog.sync

    assert tidelog.sync.__all__ == SYNC_NAMES
    assert set(SYNC_NAMES) <= set(_public_names(tidelog.sync))
    defined_here = [
        name
        for name in _public_names(tidelog.sync)
        if getattr(getattr(tidelog.sync, name), "__module__", None) == "tidelog.sync"
    ]
    assert sorted({*defined_here, "NOT_IN_SYNC"}) == SYNC_NAMES
