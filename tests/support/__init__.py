"""What the tests share, as plain modules (pytest puts `tests/` on `sys.path`).

- `services`: skip, or fail under `TIDELOG_REQUIRE_SERVICES=1`, when an outside
  service is missing;
- `server`: tidelog servers on loopback (one per test, or shared by a module);
- `postgres`: the test database, a schema per store;
- `nats`: private nats-server processes and clusters;
- `consumers`: the engines the consumer tests run on, waiting helpers;
- `replicas`: several `tidelog serve` processes on one store (issue #17);
- `bench`: `benchmarks/run.py` loaded by path, for the benchmarks' smoke tests;
- `sqlite_child.py`, `workers/`: found by path, not imported as `support.*`:
  the child process of the SQLite crash and multi-process tests, and the apps
  `tidelog worker` runs (from `workers/` as its working directory).

Fixtures built on these live in `tests/conftest.py`.
"""
