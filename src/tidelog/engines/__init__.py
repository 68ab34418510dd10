"""Engines: the storage contract and its implementations.

- `contract`: the abstract layers every engine implements (streams -> global
  log and subscriptions -> groups and checkpoints);
- `_kit`: what engine authors share (checks, group state, head watch, URL
  options), private to this package;
- `memory`: the reference engine; `remote`: a client of the tidelog server;
- `wrapper`: `StoreWrapper`, the base of a store that wraps another one
  (`tidelog.schemas.ValidatingStore`): it forwards the whole contract;
- `sqlite/`, `postgres/`, `nats/`: one package per server-backed engine, each
  with its `engine` module and its own schema, wire and error modules.

Engines import only `tidelog.model`, `tidelog.errors`, `tidelog.wire`, the
contract and the kit. Only `tidelog.connect` (and the server and CLI through
it) chooses an engine, from a URL.
"""
