"""What a downstream store must count, from the contract's reference model alone.

For each execution, `simulator.reference.expected` says which terminal record the
merged topic must hold (or none), so the counts of terminal records per status and
per route, and the one row per execution a `FINAL` query keeps, follow without
looking at the worker's output.

The expected record follows the order in which the agent sent an execution's
events, whatever order they reached the worker in: also for an agent that keyed
one phase and not the other (`Keying.MIXED`), whose events reach the worker by
two paths. The model never reads the worker's output to decide what it expects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from simulator import Execution
from simulator.reference import RUNNING, expected


def route_text(value: Any) -> str:
    """A record's route as the stores hold it: the string, '' for none, else JSON text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


@dataclass
class Counts:
    """Terminal records per status and per route, and what `FINAL` keeps per execution."""

    by_status: Counter[str] = field(default_factory=Counter)
    by_route: Counter[str] = field(default_factory=Counter)
    # execution_id -> the (status, route) rows FINAL may keep for it (one, or a few
    # stale RUNNING contents the contract allows)
    latest: dict[str, frozenset[tuple[str, str]]] = field(default_factory=dict)

    @property
    def executions(self) -> int:
        return sum(self.by_status.values())


Reads = list[tuple[str, dict[str, Any], int]]


def _outcome(reads: Reads) -> tuple[dict[str, Any] | None, frozenset[tuple[str, str]]]:
    """(the terminal record or None, the rows FINAL may keep) for one arrival order."""
    episode_set = expected(reads)
    terminal = episode_set.terminal
    if terminal is not None:
        row = (terminal["status"], route_text(terminal.get("route_id")))
        return terminal, frozenset({row})
    stale = {
        (RUNNING, route_text(content.get("route_id")))
        for episode in episode_set.episodes
        for content in episode.running_contents
    }
    return None, frozenset(stale)


def reference_counts(
    executions: Iterable[Execution], extra: Iterable[tuple[str, Reads]] = ()
) -> Counts:
    """Counts the merged topic must give, for these executions plus `extra` ones
    (execution_id, reads) such as a test's sentinels."""
    counts = Counts()
    items: list[tuple[str, Reads]] = [(e.execution_id, e.reads()) for e in executions]
    items += list(extra)
    for eid, reads in items:
        terminal, latest = _outcome(reads)
        if latest:
            counts.latest[eid] = latest
        if terminal is not None:
            counts.by_status[terminal["status"]] += 1
            counts.by_route[route_text(terminal.get("route_id"))] += 1
    return counts
