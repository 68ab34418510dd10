"""JSON Schema `pattern` regexes from tenants, with their matching cost bounded.

A schema's `pattern` runs on the write path against every event's data, and
the schema is written by a tenant. Python's `re` backtracks, so a pattern
like `^(a+)+$` takes exponential time on `aaaa…!`, and `a*a*b` polynomial
time: one event could freeze the server. No linear-time engine is a
dependency here (google-re2 is not in this project's package index), so the
cost is bounded in two steps:

1. At registration (`pattern_problem`), a pattern is refused if it does not
   compile, is longer than `MAX_PATTERN_LENGTH`, or uses a construct whose
   backtracking is not bounded by a polynomial of fixed degree: backreferences,
   lookarounds, conditionals, a variable repeat inside a repeat (`(a+)+`,
   `(a?)*`), or an alternation inside a repeat whose branches do not start with
   distinct literal characters (`(a|aa)*`), more than `_MAX_UNBOUNDED`
   unbounded quantifiers, or more than `_STEP_BUDGET` ways to match a value's
   bounded parts (`(a?){20}a{20}`, alternatives in sequence). What remains
   backtracks at most `n` ways per unbounded quantifier (one more for an
   unanchored search) times that fixed number of ways.
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
# each unbounded quantifier multiplies the cost by the value's length
_MAX_UNBOUNDED: Final = 8
_REPEATS: Final = ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")


class _Unsafe(Exception):
    """A construct whose backtracking cost is not bounded."""


@dataclass(frozen=True)
class _Cost:
    """How a pattern may backtrack: `n ** unbounded * fixed` steps per start.

    `fixed` is the product of the alternatives and bounded repeats' choices
    times the longest text the pattern's bounded parts can walk over.
    """

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
        counter[1] = _walk(tree, inside_repeat=False, counter=counter)
    except _Unsafe as exc:
        return f"pattern {pattern[:60]!r} may backtrack without bound: {exc} are not allowed"
    counter[1] *= _width(tree)
    if counter[1] > _STEP_BUDGET:
        return f"pattern {pattern[:60]!r} has too many repeats, optional parts and alternatives"
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


def _walk(items: Any, *, inside_repeat: bool, counter: list[int], times: int = 1) -> int:
    """Refuse unbounded constructs; count unbounded repeats (each copy of a fixed
    repeat's body counts) and return the number of ways `items` can match."""
    ways = 1
    for op, arg in items:
        name = str(op)
        inner = 1
        if name in _REFUSED:
            raise _Unsafe(_REFUSED[name])
        if name in _REPEATS:
            low, high, body = arg
            variable = low != high
            if variable and inside_repeat:
                raise _Unsafe("nested quantifiers")
            if high is _parser.MAXREPEAT:
                counter[0] += times
                inner = _walk(body, inside_repeat=True, counter=counter, times=times)
            elif variable:
                inner = (high - low + 1) * _walk(
                    body, inside_repeat=True, counter=counter, times=times * high
                ) ** min(high, 64)
            else:  # a fixed count: `high` copies of the body, one after another
                inner = _walk(
                    body, inside_repeat=inside_repeat, counter=counter, times=times * high
                )
                inner = inner ** min(high, 64)
        elif name == "BRANCH":
            branches = arg[1]
            if inside_repeat and not _distinct_starts(branches):
                raise _Unsafe("alternatives inside a quantifier that start alike")
            inner = sum(
                _walk(b, inside_repeat=inside_repeat, counter=counter, times=times)
                for b in branches
            )
        elif name == "SUBPATTERN":
            inner = _walk(arg[-1], inside_repeat=inside_repeat, counter=counter, times=times)
        elif name == "ATOMIC_GROUP":
            inner = _walk(arg, inside_repeat=inside_repeat, counter=counter, times=times)
        ways = min(ways * inner, _STEP_BUDGET + 1)
        if counter[0] > _MAX_UNBOUNDED:
            raise _Unsafe(f"more than {_MAX_UNBOUNDED} unbounded quantifiers")
    return ways


def _width(items: Any) -> int:
    """The most characters the bounded parts walk over (an unbounded repeat counts once)."""
    total = 0
    for op, arg in items:
        name = str(op)
        if name in _REPEATS:
            _low, high, body = arg
            times = 1 if high is _parser.MAXREPEAT else high
            total += times * _width(body)
        elif name == "BRANCH":
            total += max(_width(b) for b in arg[1])
        elif name == "SUBPATTERN":
            total += _width(arg[-1])
        elif name == "ATOMIC_GROUP":
            total += _width(arg)
        else:
            total += 1
        if total > _STEP_BUDGET:
            return _STEP_BUDGET + 1
    return max(total, 1)


def _distinct_starts(branches: list[Any]) -> bool:
    """Whether each branch starts with its own literal, so one at most can proceed."""
    firsts = []
    for branch in branches:
        if not branch.data or str(branch.data[0][0]) != "LITERAL":
            return False
        firsts.append(branch.data[0][1])
    return len(set(firsts)) == len(firsts)
