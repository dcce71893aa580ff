"""What a downstream store must count, from the contract's reference model alone.

For each execution, `simulator.reference.expected` says which terminal record the
merged topic must hold (or none), so the counts of terminal records per status and
per route, and the one row per execution a `FINAL` query keeps, follow without
looking at the worker's output.

One thing the model cannot know in advance is the arrival order of an execution
whose agent keyed some of its records and not others (`Keying.MIXED`): the keyed
ones go straight to the worker, the others through its re-key topic, and either
may come first. The contract allows both outcomes (a merge, or the terminal event
alone with the RUNNING dropped as late), as the chaos verifier does. When the two
outcomes differ in route, the `cameleer-origin` header of the execution's terminal
record on the merged topic says which order the worker saw (`merged` or
`terminal-only`), and the model's answer for that order is used; how many
executions needed that is reported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from simulator import Execution, Keying, Kind
from simulator.reference import RUNNING, TERMINAL, TERMINAL_ONLY, expected


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
    resolved_by_origin: int = 0  # mixed-keying executions whose route needed the header

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


def _terminal_first(reads: Reads) -> Reads:
    first = next(i for i, (status, _, _) in enumerate(reads) if status in TERMINAL)
    return [reads[first], *reads[:first], *reads[first + 1 :]]


def reference_counts(
    executions: Iterable[Execution],
    extra: Iterable[tuple[str, Reads]] = (),
    origins: Mapping[str, str] | None = None,
) -> Counts:
    """Counts the merged topic must give, for these executions plus `extra` ones
    (execution_id, reads) such as a test's sentinels. `origins`: execution_id ->
    the `cameleer-origin` of its terminal record, only read for mixed keying."""
    counts = Counts()
    origins = origins or {}
    items: list[tuple[str, Reads, bool]] = [
        (e.execution_id, e.reads(), e.keying == Keying.MIXED and e.kind != Kind.V2)
        for e in executions
    ]
    items += [(eid, reads, False) for eid, reads in extra]
    for eid, reads, mixed in items:
        terminal, latest = _outcome(reads)
        if mixed and terminal is not None:
            other, other_latest = _outcome(_terminal_first(reads))
            if other_latest != latest:
                counts.resolved_by_origin += 1
                if origins.get(eid) == TERMINAL_ONLY:
                    terminal, latest = other, other_latest
        if latest:
            counts.latest[eid] = latest
        if terminal is not None:
            counts.by_status[terminal["status"]] += 1
            counts.by_route[route_text(terminal.get("route_id"))] += 1
    return counts
