"""A small reference model of the merge contract (shared/CONTRACT.md), for one execution.

Written from the contract alone, on purpose not by calling `app.core.merge`: tests, the
chaos harness and benchmarks compare what the worker emitted for an execution with
what this model says the output topic must hold.

Input: the execution's events as the worker read them, in arrival order, each
`(status, body, kafka_timestamp_ms)` or `(status, body, kafka_timestamp_ms,
read_at_ms)` (a `Read`), where `read_at_ms` is the worker's clock when it read the
event (default: the Kafka timestamp, never going back in time). Two modes:

- `explicit_sweeps=True`: the timeline also holds `Sweep(at_ms)` items, the only
  moments the worker looked at its time index. The answer is exact: a stale
  RUNNING is either required or forbidden, with one possible content.
- `explicit_sweeps=False` (default): sweeps are unknown (a real worker sweeps on
  a timer). A stale RUNNING is forbidden when the terminal was read before
  `stale_after` passed, required when the clock (the terminal's read time, else
  `until_ms`) went `sweep_lag_ms` past the moment the RUNNING was both held and
  due, and allowed in between; it may hold the COALESCE of any prefix of the
  held RUNNING events that the sweep could have seen. This mode assumes the
  events of one execution never span more than the dedupe window after its
  terminal (it raises otherwise).

The answer (`Expected`) is a list of episodes: normally one. A new episode starts
only when an event arrives after the worker forgot the execution (explicit mode):
its terminal marker expired, or its held RUNNING reached the held retention. The
contract's "Bounded state" requires forgetting; what it may never cost is a
RUNNING record after the terminal one (see below).

Where the contract is silent, the model chooses (and so checks) this:
- `stale_after` runs from the Kafka timestamp of the FIRST held RUNNING event;
- a held RUNNING is flushed once, and forgotten `held_retention` after that same
  Kafka timestamp, at the first sweep after the one that flushed it;
- a RUNNING that finds nothing held and whose Kafka timestamp is already
  `held_retention` old when read is dropped, never held;
- the terminal marker is kept from the moment the terminal event was read for the
  dedupe window or the held retention, whichever is longer, and the execution is
  forgotten at the first sweep after that (before that sweep, a duplicate or late
  RUNNING is still dropped). So a late RUNNING is dropped however late it comes,
  as long as its Kafka timestamp is not after its terminal's read time: within the
  marker's life by the marker, after it for being older than the held retention;
- a stale RUNNING record holds the COALESCE of the RUNNING events held at the sweep;
- RUNNING events are merged later over earlier by Kafka timestamp (the agent's send
  time, the only order that survives events reaching the worker by two paths), in
  arrival order when equal.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

RUNNING = "RUNNING"
TERMINAL = frozenset({"COMPLETED", "FAILED"})

FORBIDDEN = "forbidden"
ALLOWED = "allowed"
REQUIRED = "required"

MERGED = "merged"
TERMINAL_ONLY = "terminal-only"
STALE_RUNNING = "stale-running"


@dataclass(frozen=True, slots=True)
class Read:
    """One event as read by the worker."""

    status: str
    body: dict[str, Any]
    timestamp_ms: int
    read_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Sweep:
    """The worker swept its time index at this clock time (explicit mode only)."""

    at_ms: int


@dataclass(frozen=True, slots=True)
class Episode:
    """What the output topic must hold for one life of the execution in the worker."""

    running: str = FORBIDDEN  # FORBIDDEN, ALLOWED or REQUIRED: the stale RUNNING record
    running_contents: tuple[dict[str, Any], ...] = ()  # its acceptable contents
    terminal: dict[str, Any] | None = None  # the one terminal record; None: none may appear
    origin: str | None = None  # MERGED or TERMINAL_ONLY when terminal is set
    dropped_duplicates: int = 0  # terminal events the worker must drop
    dropped_late_running: int = 0  # RUNNING events after the terminal it must drop
    dropped_too_old: int = 0  # RUNNING events older than the held retention, nothing held


@dataclass(frozen=True, slots=True)
class Expected:
    episodes: tuple[Episode, ...] = ()

    @property
    def terminal_read(self) -> bool:
        return any(e.terminal is not None for e in self.episodes)

    @property
    def terminal(self) -> dict[str, Any] | None:
        """The terminal record of the last episode that has one."""
        for episode in reversed(self.episodes):
            if episode.terminal is not None:
                return episode.terminal
        return None


def coalesce(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Field-by-field COALESCE, later over earlier, starting from the first event's fields.

    A later field that is null or absent keeps the earlier value (null included: the
    first event's null fields are its fields); nested objects and arrays are values,
    replaced whole. Every field present in any event is in the result: a null field
    that no other event has stays, as null.
    """
    result: dict[str, Any] | None = None
    for body in events:
        if result is None:
            result = dict(body)
            continue
        for name, value in body.items():
            if value is not None or name not in result:
                result[name] = value
    if result is None:
        raise ValueError("coalesce of no events")
    return result


@dataclass
class _Life:
    running: list[tuple[dict[str, Any], int, int]] = field(default_factory=list)  # body, ts, read
    stale: tuple[dict[str, Any], ...] | None = None
    terminal: dict[str, Any] | None = None
    origin: str | None = None
    terminal_read_at: int = 0
    expires_ms: int = 0
    duplicates: int = 0
    late_running: int = 0
    too_old: int = 0

    def episode(self, running: str, contents: tuple[dict[str, Any], ...]) -> Episode:
        return Episode(
            running,
            contents,
            self.terminal,
            self.origin,
            self.duplicates,
            self.late_running,
            self.too_old,
        )


def _reads(timeline: Iterable[Any]) -> Iterable[Read | Sweep]:
    clock: int | None = None
    for item in timeline:
        if isinstance(item, Sweep):
            yield item
            continue
        if not isinstance(item, Read):
            item = Read(*item)
        if item.status != RUNNING and item.status not in TERMINAL:
            raise ValueError(f"not an event status: {item.status!r}")
        read_at = item.read_at_ms
        if read_at is None:
            read_at = item.timestamp_ms if clock is None else max(clock, item.timestamp_ms)
        clock = read_at
        yield Read(item.status, item.body, item.timestamp_ms, read_at)


def _on_event(life: _Life, event: Read, marker_ms: int, held_retention_ms: int) -> None:
    assert event.read_at_ms is not None
    if life.terminal is not None:
        if event.status == RUNNING:
            life.late_running += 1
        else:
            life.duplicates += 1
        return
    if event.status == RUNNING:
        if not life.running and event.timestamp_ms + held_retention_ms <= event.read_at_ms:
            life.too_old += 1  # its held life would be over already: never held
            return
        life.running.append((event.body, event.timestamp_ms, event.read_at_ms))
        return
    if life.running:
        life.terminal = coalesce([*_by_time(life.running), event.body])
        life.origin = MERGED
    else:
        life.terminal = dict(event.body)
        life.origin = TERMINAL_ONLY
    life.terminal_read_at = event.read_at_ms
    life.expires_ms = event.read_at_ms + marker_ms


def _by_time(running: list[tuple[dict[str, Any], int, int]]) -> list[dict[str, Any]]:
    """Held RUNNING bodies, earlier to later by Kafka timestamp, arrival order when equal."""
    return [body for body, _, _ in sorted(running, key=lambda held: held[1])]


DEFAULT_HELD_RETENTION_MS = 259_200_000  # 3 days


def expected(
    timeline: Iterable[Read | Sweep | Sequence[Any]],
    *,
    stale_after_ms: int = 300_000,
    dedupe_window_ms: int = 3_600_000,
    held_retention_ms: int = DEFAULT_HELD_RETENTION_MS,
    explicit_sweeps: bool = False,
    until_ms: int | None = None,
    sweep_lag_ms: int | None = None,
) -> Expected:
    """What the output topic must hold for one execution (see the module docstring)."""
    marker_ms = max(dedupe_window_ms, held_retention_ms)
    if explicit_sweeps:
        return _exact(timeline, stale_after_ms, marker_ms, held_retention_ms)
    return _loose(timeline, stale_after_ms, marker_ms, held_retention_ms, until_ms, sweep_lag_ms)


def _exact(timeline, stale_after_ms: int, marker_ms: int, held_retention_ms: int) -> Expected:
    episodes: list[Episode] = []
    life: _Life | None = None
    for item in _reads(timeline):
        if isinstance(item, Sweep):
            if life is None:
                continue
            if life.terminal is None and life.running:
                first_ts = life.running[0][1]
                if life.stale is None:
                    if first_ts + stale_after_ms <= item.at_ms:
                        life.stale = (coalesce(_by_time(life.running)),)
                elif first_ts + held_retention_ms <= item.at_ms:  # a sweep after the flush
                    episodes.append(_close_exact(life))
                    life = None
            elif life.terminal is not None and life.expires_ms <= item.at_ms:
                episodes.append(_close_exact(life))
                life = None
            continue
        if life is None:
            life = _Life()
        _on_event(life, item, marker_ms, held_retention_ms)
    if life is not None:
        episodes.append(_close_exact(life))
    return Expected(tuple(episodes))


def _close_exact(life: _Life) -> Episode:
    if life.stale is None:
        return life.episode(FORBIDDEN, ())
    return life.episode(REQUIRED, life.stale)


def _loose(
    timeline, stale_after_ms: int, marker_ms: int, held_retention_ms: int, until_ms, sweep_lag_ms
) -> Expected:
    life = _Life()
    seen = False
    for item in _reads(timeline):
        if isinstance(item, Sweep):
            raise ValueError("Sweep items need explicit_sweeps=True")
        seen = True
        if (life.terminal is not None and item.read_at_ms >= life.expires_ms) or (
            life.terminal is None
            and life.running
            and item.read_at_ms >= life.running[0][1] + held_retention_ms  # type: ignore[operator]
        ):
            raise ValueError(
                "an event came after the execution's marker or held RUNNING may have "
                "expired: the loose mode cannot tell what the worker remembers; "
                "use explicit sweeps"
            )
        _on_event(life, item, marker_ms, held_retention_ms)
    if not seen:
        return Expected()
    if not life.running:
        return Expected((life.episode(FORBIDDEN, ()),))
    due = life.running[0][1] + stale_after_ms
    reads = [read for _, _, read in life.running]
    end = life.terminal_read_at if life.terminal is not None else until_ms
    if end is not None and end < due:
        return Expected((life.episode(FORBIDDEN, ()),))
    # a sweep flushes it once it is both held and due, at most sweep_lag_ms later
    flush_by = None if sweep_lag_ms is None else max(due, reads[0]) + sweep_lag_ms
    if end is not None and flush_by is not None and end >= flush_by:
        mode, latest = REQUIRED, flush_by
    else:
        mode, latest = ALLOWED, end
    low = max(1, sum(1 for r in reads if r < due))
    high = len(reads) if latest is None else max(low, sum(1 for r in reads if r <= latest))
    contents = tuple(coalesce(_by_time(life.running[:k])) for k in range(low, high + 1))
    return Expected((life.episode(mode, contents),))


# -- checking what the worker emitted ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Out:
    body: Any
    origin: str | None

    @property
    def status(self) -> Any:
        return self.body.get("status") if isinstance(self.body, dict) else None

    @property
    def is_running(self) -> bool:
        return self.status == RUNNING

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL


def _normalize(record: Any) -> _Out:
    """Accepts value bytes, a parsed dict, or anything with `.value` (and `.origin`/`.headers`)."""
    origin = None
    if isinstance(record, dict):
        return _Out(record, None)
    if isinstance(record, bytes | bytearray | memoryview):
        value = bytes(record)
    else:
        value = record.value
        origin = getattr(record, "origin", None) or None
        if origin is None:
            headers = getattr(record, "headers", None) or ()
            items = headers.items() if isinstance(headers, dict) else headers
            for name, raw in items:
                if name == "cameleer-origin" and raw is not None:
                    origin = raw.decode() if isinstance(raw, bytes) else str(raw)
    try:
        body = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        body = value
    return _Out(body, origin)


def invariants(records: Iterable[Any], *, terminal_read: bool | None = None) -> list[str]:
    """The contract's invariants on the output records of ONE execution, in output order.

    At most one RUNNING, and before the terminal; at most one terminal, and exactly one
    when `terminal_read` is True (a terminal event was read); never a RUNNING after the
    terminal; every record is a RUNNING or terminal JSON object.
    """
    violations: list[str] = []
    runnings = terminals = 0
    for position, record in enumerate(map(_normalize, records)):
        if record.is_running:
            runnings += 1
            if terminals:
                violations.append(f"RUNNING after terminal: record #{position}")
            elif runnings == 2:
                violations.append(f"duplicated: second RUNNING record at #{position}")
        elif record.is_terminal:
            terminals += 1
            if terminals == 2:
                violations.append(f"duplicated: second terminal record at #{position}")
        else:
            violations.append(f"not a RUNNING or terminal record: #{position}: {record.body!r}")
    if terminal_read and not terminals:
        violations.append("lost: a terminal event was read but no terminal record was emitted")
    return violations


def check_execution(expected: Expected, actual_records: Iterable[Any]) -> list[str]:
    """Human-readable differences between what the model expects and what was emitted."""
    actual = [_normalize(r) for r in actual_records]
    violations: list[str] = []
    pos = 0
    for n, episode in enumerate(expected.episodes):
        label = f"episode {n}: " if len(expected.episodes) > 1 else ""
        nxt = actual[pos] if pos < len(actual) else None
        if nxt is not None and nxt.is_running:
            if episode.running == FORBIDDEN:
                violations.append(f"{label}unexpected RUNNING record (no stale flush was due)")
            elif nxt.body not in episode.running_contents:
                violations.append(
                    f"{label}wrong content of the stale RUNNING: {_show(nxt.body)}; "
                    f"expected one of {[_show(c) for c in episode.running_contents]}"
                )
            if nxt.origin is not None and nxt.origin != STALE_RUNNING:
                violations.append(f"{label}RUNNING record with origin {nxt.origin!r}")
            pos += 1
            # an episode forgotten without a terminal (its held RUNNING expired) is followed
            # by the next episode's records, which may start with a RUNNING of its own
            last = n == len(expected.episodes) - 1
            while (episode.terminal is not None or last) and (
                pos < len(actual) and actual[pos].is_running
            ):
                violations.append(f"{label}duplicated: another RUNNING record before the terminal")
                pos += 1
        elif episode.running == REQUIRED:
            violations.append(f"{label}lost: the stale RUNNING flush is missing")
        if episode.terminal is None:
            continue
        nxt = actual[pos] if pos < len(actual) else None
        if nxt is None or not nxt.is_terminal:
            violations.append(
                f"{label}lost: terminal record missing, expected {_show(episode.terminal)}"
            )
            continue
        pos += 1
        if nxt.body != episode.terminal:
            violations.append(
                f"{label}wrong content: terminal {_show(nxt.body)}, "
                f"expected {_show(episode.terminal)}"
            )
        if nxt.origin is not None and nxt.origin != episode.origin:
            violations.append(f"{label}origin {nxt.origin!r}, expected {episode.origin!r}")
    for extra in actual[pos:]:
        if extra.is_running:
            violations.append(f"RUNNING after terminal (or unexpected): {_show(extra.body)}")
        elif extra.is_terminal:
            violations.append(f"duplicated: extra terminal record {_show(extra.body)}")
        else:
            violations.append(f"unexpected record {_show(extra.body)}")
    return violations


def _show(body: Any, limit: int = 300) -> str:
    try:
        text = orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        text = repr(body)
    return text if len(text) <= limit else text[: limit - 3] + "..."
