"""Testing tools: the conformance suite every engine passes, and helpers for users' tests.

For engine authors (including third-party engines)::

    from tidelog.testing.conformance import EngineSuite
    from tidelog.testing.stateful import ModelSuite

    class TestMyEngine(EngineSuite):
        async def open_store(self, tmp_path):
            return await tidelog.connect(...)   # a fresh, empty store per call

    class TestMyEngineModel(ModelSuite):
        async def open_store(self, tmp_path):
            return await tidelog.connect(...)

`EngineSuite` is the contract of `tidelog.engines.contract` as focused tests;
`ModelSuite` runs random operation sequences against the engine and the
memory engine and requires identical results. The suites need pytest,
pytest-asyncio and hypothesis (the `dev` extra); they are imported from their
submodules, not from here, so that `import tidelog.testing` stays cheap.

For users' handler tests, the pytest plugin (`tidelog.testing.plugin`,
registered as a `pytest11` entry point) gives a `tidelog_store` fixture.
"""
