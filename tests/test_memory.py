"""The memory engine passes the conformance suite and the model test (it is the model)."""

from __future__ import annotations

import pathlib

import tidelog
from tidelog.testing.conformance import EngineSuite
from tidelog.testing.retention import RetentionSuite
from tidelog.testing.retention_model import RetentionModelSuite
from tidelog.testing.scheduling import SchedulingSuite
from tidelog.testing.stateful import ModelSuite


class TestMemoryEngine(EngineSuite):
    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await tidelog.connect("memory://")


class TestMemoryScheduling(SchedulingSuite):
    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await tidelog.connect("memory://")


class TestMemoryModel(ModelSuite):
    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await tidelog.connect("memory://?partitions=4")


class TestMemoryEngineOnePartition(EngineSuite):
    """The edge of the partition rules: every stream in partition 0, one owner at a time."""

    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await tidelog.connect("memory://?partitions=1")


class TestMemoryRetention(RetentionSuite):
    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await tidelog.connect("memory://")


class TestMemoryRetentionModel(RetentionModelSuite):
    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await tidelog.connect("memory://")
