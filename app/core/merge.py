"""The merge rules of the contract, as pure functions: no Kafka, no Faust, no I/O.

The shell hands each raw record to `classify` (parse and validate once), then to
`decide` with the execution's held state; `sweep_entry` handles one due entry of
the time index (stale flush, held-RUNNING retention, dedupe-marker expiry). Each
returns a `Decision`: the state writes, the records to emit and the dead letters,
which the shell applies in one transaction, and a line to log. Nothing here reads
a clock: `now_ms` is an argument.

Every execution's state leaves after a retention, and a RUNNING record never
follows the terminal record of its execution (docs/design.md, "Choices where the
contract is silent"):
- a held RUNNING is flushed once at `first_ts + stale_after`, then leaves the
  state at `first_ts + held_retention` (first_ts: its first event's Kafka
  timestamp), counted `held_expired`;
- a terminal marker is kept for `marker_ms` (the held retention, or the dedupe
  window when that is longer): a late RUNNING or a duplicate terminal that finds
  it is dropped;
- a RUNNING that finds no state and is already older than the held retention is
  not held at all (`running_too_old`): it is either a late one whose marker
  expired (its Kafka timestamp is before its terminal was read, so more than the
  marker's life ago) or one too old to hold anyway.

Mixed keying (an agent sends some events of an execution without its key, or under
another key, so they reach the execution's partition through the re-key topic,
from other partitions, in any order with the keyed ones): a terminal event goes
out at once only when it came keyed, straight from the execution's own raw
partition, and every RUNNING held for it came the same way (a keyed pair: the
common case keeps its latency). Otherwise RUNNING events of its execution may
still be on their way through the re-key topic, and the terminal waits as
`Pending`, with the RUNNING events held before it; RUNNING events that arrive
meanwhile join it. It goes out, merged with what it holds (terminal-only when
nothing came), when the shell knows the re-key topic is complete up to when the
terminal was read (`safe_ms`: every raw record present then has been handled and
its re-key record read here), or at the latest `rekey_grace_ms` after it was
read. A keyed RUNNING read from the execution's own partition after a keyed
terminal was sent after it (one partition keeps the agent's order): it is a late
RUNNING, dropped. RUNNING events merge later over earlier by their Kafka
timestamp (the agent's send time: the only order that survives two paths), in
read order when equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from app.core.heldstate import (
    Held,
    Marker,
    Pending,
    Source,
    decode_state,
    encode_state,
    index_key,
    index_key_of,
    state_key,
    state_key_of,
)

RUNNING = "RUNNING"
TERMINAL = frozenset({"COMPLETED", "FAILED"})
STATUSES = frozenset({RUNNING, *TERMINAL})

# cameleer-origin header values
MERGED = "merged"
TERMINAL_ONLY = "terminal-only"
STALE_RUNNING = "stale-running"
PASSTHROUGH = "passthrough"

# cameleer-error reason codes
INVALID_JSON = "invalid-json"
NOT_AN_OBJECT = "not-an-object"
MISSING_EXECUTION_ID = "missing-execution-id"
INVALID_STATUS = "invalid-status"
UNSUPPORTED_PROTOCOL_VERSION = "unsupported-protocol-version"
TOO_LARGE = "too-large"


@dataclass(frozen=True, slots=True)
class Rules:
    stale_after_ms: int = 300_000
    dedupe_window_ms: int = 3_600_000
    max_record_bytes: int = 1_000_000
    held_retention_ms: int = 259_200_000  # 3 days
    rekey_grace_ms: int = 60_000  # longest wait of a re-keyed terminal for its RUNNING

    @property
    def marker_ms(self) -> int:
        """How long a terminal marker is kept: never shorter than the held retention, so a
        RUNNING that outlives its marker is older than the held retention (not held)."""
        return max(self.dedupe_window_ms, self.held_retention_ms)


@dataclass(slots=True)
class Event:
    """A raw record that passed validation."""

    execution_id: str
    status: str
    protocol_version: int | None
    body: dict[str, Any]
    source: Source
    key: bytes  # execution_id, encoded once: the state, index and output keys


@dataclass(slots=True)
class Rejected:
    reason: str
    detail: str
    source: Source


@dataclass(slots=True)
class Output:
    key: bytes
    value: bytes
    origin: str
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(slots=True)
class DeadLetter:
    reason: str
    detail: str
    source: Source


@dataclass(slots=True)
class Decision:
    writes: dict[bytes, bytes | None] = field(default_factory=dict)
    outputs: list[Output] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    counter: str = ""
    note: str = ""  # a line for the shell to log (info), "" for none
    # a sweep that let a waiting terminal go: its Kafka timestamp (end-to-end latency)
    terminal_ts_ms: int = -1


def classify(source: Source) -> Event | Rejected:
    """Parse and validate a raw record's value: the only JSON parse on the hot path."""
    if source.value is None:
        return Rejected(INVALID_JSON, "value is null (a tombstone), not a JSON object", source)
    try:
        body = orjson.loads(source.value)
    except orjson.JSONDecodeError as exc:
        return Rejected(INVALID_JSON, f"value is not valid UTF-8 JSON: {exc}", source)
    if not isinstance(body, dict):
        return Rejected(NOT_AN_OBJECT, f"value is a JSON {type(body).__name__}", source)
    execution_id = body.get("execution_id")
    if not isinstance(execution_id, str) or not execution_id:
        return Rejected(MISSING_EXECUTION_ID, "execution_id must be a non-empty string", source)
    status = body.get("status")
    if status not in STATUSES:
        return Rejected(
            INVALID_STATUS, f"status {_short(status)} is not RUNNING, COMPLETED or FAILED", source
        )
    version = body.get("protocol_version")
    if version is not None and (type(version) is not int or version not in (1, 2)):
        return Rejected(
            UNSUPPORTED_PROTOCOL_VERSION,
            f"protocol_version {_short(version)} is not 1 or 2",
            source,
        )
    return Event(execution_id, status, version, body, source, execution_id.encode())


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def protocol_of(event: Event, registered: dict[str, int]) -> int:
    """The record's own version, else its agent's registered one, else 1."""
    if event.protocol_version is not None:
        return event.protocol_version
    agent = event.body.get("agent_id")
    if isinstance(agent, str):
        return registered.get(agent, 1)
    return 1


def coalesce(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """COALESCE(update.col, base.col) per field; nested values are replaced whole.

    Every field present in either is present in the result: a null field of `update`
    that `base` lacks stays, as null (as it would in `update` alone).
    """
    merged = dict(base)
    for name, value in update.items():
        if value is not None or name not in merged:
            merged[name] = value
    return merged


def passthrough(event: Event, rules: Rules) -> Decision:
    """A v2 record: its own bytes and headers, keyed by execution_id, no state."""
    src = event.source
    if _size(src.value, event.execution_id, src.headers) > rules.max_record_bytes:
        return _too_large([src], "v2 record")
    out = Output(event.execution_id.encode(), src.value, PASSTHROUGH, src.headers)
    return Decision(outputs=[out], counter="passthrough")


def decide(
    event: Event, stored: bytes | None, rules: Rules, now_ms: int, rekeyed: bool = False
) -> Decision:
    """One v1 event against the execution's held state (None when nothing is held).

    `rekeyed`: the event came through the re-key topic (its partner may still be
    on its way there from another partition).
    """
    state = decode_state(stored) if stored is not None else None
    key = event.key
    skey = state_key_of(key)
    src = event.source
    if event.status == RUNNING:
        if state is None:
            if src.timestamp_ms + rules.held_retention_ms <= now_ms:
                # Its held life would already be over. A late RUNNING whose marker has
                # expired always lands here (see the module docstring): never held.
                return Decision(counter="running_too_old")
            due = src.timestamp_ms + rules.stale_after_ms
            writes = {
                skey: encode_state(Held(src.timestamp_ms, due, False, (src,), rekeyed)),
                index_key_of(due, key): b"",
            }
            return Decision(writes, [], [], "running_held")
        if isinstance(state, Marker):
            return Decision(counter="running_after_terminal")
        if isinstance(state, Pending):
            if state.direct and not rekeyed:
                # read after the terminal from the same raw partition: sent after it
                return Decision(counter="running_after_terminal")
            joined = Pending(
                state.since_ms, state.deadline_ms, state.terminal, state.direct,
                (*state.runnings, src),
            )  # fmt: skip
            return Decision({skey: encode_state(joined)}, [], [], "running_joined")
        held = Held(
            state.first_ts_ms,
            state.due_ms,
            state.stale_emitted,
            (*state.events, src),
            state.rekeyed or rekeyed,
        )
        return Decision({skey: encode_state(held)}, [], [], "running_repeated")

    # terminal event
    if isinstance(state, Marker | Pending):
        return Decision(counter="duplicate_terminal")
    if rules.rekey_grace_ms > 0 and (rekeyed or state is None or state.rekeyed):
        # RUNNING events of this execution may still be on their way: wait for them
        writes: dict[bytes, bytes | None] = {}
        if state is not None:
            writes[index_key_of(state.due_ms, key)] = None  # before: the keys may be equal
        runnings = state.events if state is not None else ()
        pending = Pending(now_ms, now_ms + rules.rekey_grace_ms, src, not rekeyed, runnings)
        writes[skey] = encode_state(pending)
        writes[index_key_of(now_ms, key)] = b""
        return Decision(writes, [], [], "terminal_waiting")
    expires = now_ms + rules.marker_ms
    writes = {}
    if state is not None:
        # its one index entry (stale due, or retention once flushed); deleted before
        # the marker's is written: the two keys may be equal
        writes[index_key_of(state.due_ms, key)] = None
    writes[skey] = encode_state(Marker(expires))
    writes[index_key_of(expires, key)] = b""
    if state is not None:
        value = orjson.dumps(coalesce(_merge_running(state.events), event.body))
        if _size(value, event.execution_id, src.headers) > rules.max_record_bytes:
            decision = _too_large([*state.events, src], "merged record")
            decision.writes = writes
            return decision
        return Decision(writes, [Output(key, value, MERGED, src.headers)], [], "merged")
    if _size(src.value, event.execution_id, src.headers) > rules.max_record_bytes:
        decision = _too_large([src], "terminal record")
        decision.writes = writes
        return decision
    return Decision(
        writes, [Output(key, src.value, TERMINAL_ONLY, src.headers)], [], "terminal_only"
    )


def sweep_entry(
    execution_id: str,
    due_ms: int,
    stored: bytes | None,
    rules: Rules,
    now_ms: int,
    safe_ms: int = -1,
) -> Decision:
    """One due entry of the time index: flush a stale RUNNING once (and index it again
    for its retention), expire a held RUNNING past its retention, expire a marker, or
    let a pending terminal go (`safe_ms`: the re-key topic is complete for events
    read before it)."""
    ikey = index_key(due_ms, execution_id)
    if due_ms > now_ms:
        return Decision(counter="not_due")
    state = decode_state(stored) if stored is not None else None
    if isinstance(state, Pending) and state.since_ms == due_ms:
        if safe_ms >= state.since_ms:
            return _release_pending(execution_id, state, rules, now_ms)
        if now_ms >= state.deadline_ms:
            decision = _release_pending(execution_id, state, rules, now_ms)
            decision.note = (
                f"terminal event of execution {execution_id!r} waited "
                f"{rules.rekey_grace_ms // 1000} s for RUNNING events through the re-key "
                f"topic; sent {decision.counter.replace('_', '-')} with "
                f"{len(state.runnings)} (the re-key topic's progress was not known)"
            )
            return decision
        return Decision(counter="terminal_still_waiting")  # its index entry stays due
    writes: dict[bytes, bytes | None] = {ikey: None}
    if isinstance(state, Held) and state.due_ms == due_ms and state.stale_emitted:
        writes[state_key(execution_id)] = None
        age_s = (now_ms - state.first_ts_ms) // 1000
        note = (
            f"held RUNNING of execution {execution_id!r} expired: no terminal event "
            f"{age_s} s after its first RUNNING event (held retention "
            f"{rules.held_retention_ms // 1000} s; it was flushed as stale before)"
        )
        return Decision(writes, counter="held_expired", note=note)
    if isinstance(state, Held) and state.due_ms == due_ms:
        retain = state.first_ts_ms + rules.held_retention_ms
        held = Held(state.first_ts_ms, retain, True, state.events, state.rekeyed)
        writes[state_key(execution_id)] = encode_state(held)
        writes[index_key(retain, execution_id)] = b""  # after the delete: keys may be equal
        value = (
            state.events[0].value
            if len(state.events) == 1
            else orjson.dumps(_merge_running(state.events))
        )
        if _size(value, execution_id, ()) > rules.max_record_bytes:
            return Decision(writes, counter="stale_too_large")  # the merge will be DLQ'd later
        out = Output(execution_id.encode(), value, STALE_RUNNING)
        return Decision(writes, [out], counter="stale_flushed")
    if isinstance(state, Marker) and state.expires_ms == due_ms:
        writes[state_key(execution_id)] = None
        return Decision(writes, counter="marker_expired")
    return Decision(writes, counter="index_orphan")


class RetentionReport:
    """What left the state, summed for one log line at most every `every_ms` (markers
    expire at the rate executions finish: one line each would flood the log)."""

    LEFT = (
        ("marker_expired", "dedupe markers expired"),
        ("held_expired", "held RUNNINGs expired"),
    )

    def __init__(self, every_ms: int = 60_000) -> None:
        self.every_ms = every_ms
        self.counts: dict[str, int] = {}
        self.since_ms: int | None = None

    def add(self, counter: str) -> None:
        if counter in ("marker_expired", "held_expired"):
            self.counts[counter] = self.counts.get(counter, 0) + 1

    def report(self, now_ms: int) -> str:
        """The line to log now ("" for none): once per `every_ms`, when anything left."""
        if self.since_ms is None:
            self.since_ms = now_ms
        if now_ms - self.since_ms < self.every_ms or not self.counts:
            return ""
        parts = [f"{self.counts[c]} {what}" for c, what in self.LEFT if self.counts.get(c)]
        line = f"left the state in the last {(now_ms - self.since_ms) // 1000} s: " + ", ".join(
            parts
        )
        self.counts = {}
        self.since_ms = now_ms
        return line


def _marker_writes(execution_id: str, pending: Pending, rules: Rules, now_ms: int) -> dict:
    expires = now_ms + rules.marker_ms
    return {
        index_key(pending.since_ms, execution_id): None,  # before: the keys may be equal
        state_key(execution_id): encode_state(Marker(expires)),
        index_key(expires, execution_id): b"",
    }


def _release_pending(execution_id: str, pending: Pending, rules: Rules, now_ms: int) -> Decision:
    """The wait is over: the terminal goes out merged with the RUNNING events it holds,
    or terminal-only when none came."""
    terminal = pending.terminal
    writes = _marker_writes(execution_id, pending, rules, now_ms)
    key = execution_id.encode()
    if pending.runnings:
        body = coalesce(_merge_running(pending.runnings), orjson.loads(terminal.value))
        value, origin, counter = orjson.dumps(body), MERGED, "merged"
    else:
        value, origin, counter = terminal.value, TERMINAL_ONLY, "terminal_only"
    if _size(value, execution_id, terminal.headers) > rules.max_record_bytes:
        what = "merged record" if pending.runnings else "terminal record"
        decision = _too_large([*pending.runnings, terminal], what)
        decision.writes = writes
        return decision
    out = Output(key, value, origin, terminal.headers)
    return Decision(writes, [out], counter=counter, terminal_ts_ms=terminal.timestamp_ms)


def _merge_running(events: tuple[Source, ...]) -> dict[str, Any]:
    """Later over earlier by Kafka timestamp (read order when equal), starting from the
    first RUNNING event's fields, its nulls included."""
    first, *later = sorted(events, key=_timestamp)
    merged = orjson.loads(first.value)
    for src in later:
        merged = coalesce(merged, orjson.loads(src.value))
    return merged


def _timestamp(src: Source) -> int:
    return src.timestamp_ms


def _size(value: bytes, execution_id: str, headers) -> int:
    # What the broker counts against max.message.bytes, plus our origin header.
    return len(value) + len(execution_id) + sum(len(k) + len(v or b"") for k, v in headers) + 64


def _too_large(sources: list[Source], what: str) -> Decision:
    detail = f"{what} exceeds the output limit"
    return Decision(dead=[DeadLetter(TOO_LARGE, detail, s) for s in sources], counter="too_large")
