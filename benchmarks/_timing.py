"""Timing shared by the benchmarks: the best over rounds of the mean time of a few
calls (the machine may be shared: a burst of other work slows one round, not all)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any


def best_of_each(
    fns: Mapping[str, Callable[[], Any]],
    repeat: int = 7,
    number: int = 20,
    *,
    sync: Callable[[Any], Any] | None = None,
) -> dict[str, float]:
    """Seconds per call of each of ``fns``: min over ``repeat`` rounds of the mean of
    ``number`` calls, after one warm-up call each (compilation, caches). Rounds
    interleave the functions, so machine load affects all alike. ``sync`` gets the
    last result of each round before the clock stops (a device's queue)."""
    done = sync or (lambda _: None)
    for fn in fns.values():
        done(fn())
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for label, fn in fns.items():
            start = time.perf_counter()
            for _ in range(number):
                result = fn()
            done(result)
            best[label] = min(best[label], (time.perf_counter() - start) / number)
    return best


def best_of(
    fn: Callable[[], Any],
    repeat: int = 7,
    number: int = 20,
    *,
    sync: Callable[[Any], Any] | None = None,
) -> float:
    """:func:`best_of_each` of one function."""
    return best_of_each({"": fn}, repeat, number, sync=sync)[""]
