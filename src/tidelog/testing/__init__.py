"""Testing tools: the conformance suite every engine passes, and helpers for users' tests."""
