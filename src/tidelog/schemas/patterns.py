"""JSON Schema `pattern` regexes from tenants, with their matching cost bounded.

A schema's `pattern` runs on the write path against every event's data, and
the schema is written by a tenant. Python's `re` backtracks, so a pattern
like `^(a+)+$` takes exponential time on `aaaa…!`, and `a*a*b` polynomial
time: one event could freeze the server. No linear-time engine is a
dependency here (google-re2 is not installable on every target), so the cost
is bounded in two steps:

1. At registration (`pattern_problem`), a pattern is refused if it does not
   compile, is longer than `MAX_PATTERN_LENGTH`, or uses a construct whose
   backtracking is not bounded by a polynomial of fixed degree: backreferences,
   lookarounds, conditionals, a variable repeat inside a repeat (`(a+)+`,
   `(a?)*`), or an alternation inside a repeat whose branches do not start with
   distinct literal characters (`(a|aa)*`). What remains backtracks at most
   `n` ways per variable unbounded repeat (one more for an unanchored search)
   and a fixed number of ways per bounded repeat or alternation.
2. At validation (`pattern_error`), that bound gives the longest string the
   pattern may be applied to within `_STEP_BUDGET`; a longer string fails
   validation with a reason saying so, instead of running.

JSON Schema patterns are ECMA-262; the common subset (classes, anchors,
groups, quantifiers, alternation) reads the same in `re`.
"""

from __future__ import annotations

import functools
import importlib
import re
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["MAX_PATTERN_LENGTH", "pattern_error", "pattern_problem"]

#: Longest `pattern` a schema may carry (characters).
MAX_PATTERN_LENGTH: Final = 1000
# Backtracking steps one pattern may cost on one value (about 10-100 ms of `re`).
_STEP_BUDGET: Final = 10_000_000
# `re._parser` is the parser `re.compile` itself uses; imported by name because
# it is private (no stubs) and the `sre_parse` alias warns on import.
_parser: Any = importlib.import_module("re._parser")
_REFUSED: Final = {
    "GROUPREF": "backreferences",
    "GROUPREF_EXISTS": "conditional groups",
    "ASSERT": "lookarounds",
    "ASSERT_NOT": "lookarounds",
}
_REPEATS: Final = ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")


class _Unsafe(Exception):
    """A construct whose backtracking cost is not bounded."""


@dataclass(frozen=True)
class _Cost:
    """How a pattern may backtrack: `n ** unbounded * fixed` steps per start."""

    compiled: re.Pattern[str]
    unbounded: int
    fixed: int
    anchored: bool

    def max_length(self) -> int:
        degree = self.unbounded + (0 if self.anchored else 1)
        if degree == 0:
            return _STEP_BUDGET
        return int((_STEP_BUDGET / self.fixed) ** (1 / degree))


def pattern_problem(pattern: str) -> str | None:
    """Why `pattern` may not be registered (invalid or unbounded in cost), or None."""
    result = _analyse(pattern)
    return result if isinstance(result, str) else None


def pattern_error(pattern: str, value: str) -> str | None:
    """Why `value` does not match `pattern`, or None if it does.

    A pattern refused by `pattern_problem` (say a schema registered before the
    check existed) matches nothing, so validation reports it instead of raising
    `re.error` or running without bound.
    """
    cost = _analyse(pattern)
    if isinstance(cost, str):
        return f"cannot be checked: the schema's pattern is refused ({cost})"
    limit = cost.max_length()
    if len(value) > limit:
        return f"is too long ({len(value)} characters) to match {pattern!r} (limit {limit})"
    if cost.compiled.search(value) is None:
        return f"must match {pattern!r}"
    return None


@functools.lru_cache(maxsize=512)
def _analyse(pattern: str) -> _Cost | str:
    if len(pattern) > MAX_PATTERN_LENGTH:
        return f"pattern longer than {MAX_PATTERN_LENGTH} characters"
    try:
        compiled = re.compile(pattern)
        tree = _parser.parse(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        return f"invalid regular expression {pattern[:60]!r}: {exc}"
    counter = [0, 1]
    try:
        _walk(tree, inside_repeat=False, counter=counter)
    except _Unsafe as exc:
        return f"pattern {pattern[:60]!r} may backtrack without bound: {exc} are not allowed"
    if counter[1] > _STEP_BUDGET:
        return f"pattern {pattern[:60]!r} has too many optional parts and alternatives"
    anchored = (
        bool(tree.data)
        and str(tree.data[0][0]) == "AT"
        and str(tree.data[0][1])
        in (
            "AT_BEGINNING",
            "AT_BEGINNING_STRING",
        )
    )
    return _Cost(compiled, unbounded=counter[0], fixed=counter[1], anchored=anchored)


def _walk(items: Any, *, inside_repeat: bool, counter: list[int]) -> None:
    """Refuse unbounded constructs; count unbounded repeats and fixed choices."""
    for op, arg in items:
        name = str(op)
        if name in _REFUSED:
            raise _Unsafe(_REFUSED[name])
        if name in _REPEATS:
            low, high, body = arg
            variable = low != high
            if variable and inside_repeat:
                raise _Unsafe("nested quantifiers")
            if high is _parser.MAXREPEAT:
                counter[0] += 1
            elif variable:
                counter[1] = min(counter[1] * (high - low + 1), _STEP_BUDGET + 1)
            _walk(body, inside_repeat=inside_repeat or variable, counter=counter)
        elif name == "BRANCH":
            branches = arg[1]
            if inside_repeat and not _distinct_starts(branches):
                raise _Unsafe("alternatives inside a quantifier that start alike")
            counter[1] = min(counter[1] * len(branches), _STEP_BUDGET + 1)
            for branch in branches:
                _walk(branch, inside_repeat=inside_repeat, counter=counter)
        elif name == "SUBPATTERN":
            _walk(arg[-1], inside_repeat=inside_repeat, counter=counter)
        elif name == "ATOMIC_GROUP":
            _walk(arg, inside_repeat=inside_repeat, counter=counter)


def _distinct_starts(branches: list[Any]) -> bool:
    """Whether each branch starts with its own literal, so one at most can proceed."""
    firsts = []
    for branch in branches:
        if not branch.data or str(branch.data[0][0]) != "LITERAL":
            return False
        firsts.append(branch.data[0][1])
    return len(set(firsts)) == len(firsts)
