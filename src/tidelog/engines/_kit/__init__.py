"""What engine authors share: private to `tidelog.engines`.

- `checks`: input validation, identical on every engine;
- `groups`: the consumer-group state machine (`GroupState`);
- `watch`: the live-head notifier (`HeadWatch`);
- `urls`: engine options from a store URL;
- `batching`: the asyncio group-commit queue (`GroupCommit`);
- `retention`: retention rules, their cache and the one decision (`RetentionView`);
- `scavenger`: the read filter, the leased scavenger and its background loop.
"""
