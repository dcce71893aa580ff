"""The merge rules of the contract, as pure functions: no Kafka, no Faust, no I/O.

The shell hands each raw record to `classify` (parse and validate once), then to
`decide` with the execution's held state; `sweep_entry` handles one due entry of
the time index (stale flush, dedupe-marker expiry). Each returns a `Decision`: the
state writes, the records to emit and the dead letters, which the shell applies
in one transaction. Nothing here reads a clock: `now_ms` is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from .heldstate import Held, Marker, Source, decode_state, encode_state, index_key, state_key

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


@dataclass(frozen=True, slots=True)
class Event:
    """A raw record that passed validation."""

    execution_id: str
    status: str
    protocol_version: int | None
    body: dict[str, Any]
    source: Source


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str
    detail: str
    source: Source


@dataclass(frozen=True, slots=True)
class Output:
    key: bytes
    value: bytes
    origin: str
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
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
    return Event(execution_id, status, version, body, source)


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
    """COALESCE(update.col, base.col) per field; nested values are replaced whole."""
    merged = dict(base)
    for name, value in update.items():
        if value is not None:
            merged[name] = value
    return merged


def passthrough(event: Event, rules: Rules) -> Decision:
    """A v2 record: its own bytes and headers, keyed by execution_id, no state."""
    src = event.source
    if _size(src.value, event.execution_id, src.headers) > rules.max_record_bytes:
        return _too_large([src], "v2 record")
    out = Output(event.execution_id.encode(), src.value, PASSTHROUGH, src.headers)
    return Decision(outputs=[out], counter="passthrough")


def decide(event: Event, stored: bytes | None, rules: Rules, now_ms: int) -> Decision:
    """One v1 event against the execution's held state (None when nothing is held)."""
    state = decode_state(stored) if stored is not None else None
    skey = state_key(event.execution_id)
    src = event.source
    if event.status == RUNNING:
        if isinstance(state, Marker):
            return Decision(counter="running_after_terminal")
        if isinstance(state, Held):
            held = Held(state.first_ts_ms, state.due_ms, state.stale_emitted, (*state.events, src))
            return Decision(writes={skey: encode_state(held)}, counter="running_repeated")
        due = src.timestamp_ms + rules.stale_after_ms
        held = Held(src.timestamp_ms, due, False, (src,))
        writes = {skey: encode_state(held), index_key(due, event.execution_id): b""}
        return Decision(writes=writes, counter="running_held")

    # terminal event
    if isinstance(state, Marker):
        return Decision(counter="duplicate_terminal")
    expires = now_ms + rules.dedupe_window_ms
    writes: dict[bytes, bytes | None] = {}
    if isinstance(state, Held) and not state.stale_emitted:
        writes[index_key(state.due_ms, event.execution_id)] = None  # before: keys may be equal
    writes[skey] = encode_state(Marker(expires))
    writes[index_key(expires, event.execution_id)] = b""
    key = event.execution_id.encode()
    if isinstance(state, Held):
        value = orjson.dumps(coalesce(_merge_running(state), event.body))
        if _size(value, event.execution_id, src.headers) > rules.max_record_bytes:
            decision = _too_large([*state.events, src], "merged record")
            decision.writes = writes
            return decision
        return Decision(writes, [Output(key, value, MERGED, src.headers)], counter="merged")
    if _size(src.value, event.execution_id, src.headers) > rules.max_record_bytes:
        decision = _too_large([src], "terminal record")
        decision.writes = writes
        return decision
    return Decision(
        writes, [Output(key, src.value, TERMINAL_ONLY, src.headers)], counter="terminal_only"
    )


def sweep_entry(
    execution_id: str, due_ms: int, stored: bytes | None, rules: Rules, now_ms: int
) -> Decision:
    """One due entry of the time index: flush a stale RUNNING once, or expire a marker."""
    ikey = index_key(due_ms, execution_id)
    if due_ms > now_ms:
        return Decision(counter="not_due")
    state = decode_state(stored) if stored is not None else None
    writes: dict[bytes, bytes | None] = {ikey: None}
    if isinstance(state, Held) and not state.stale_emitted and state.due_ms == due_ms:
        held = Held(state.first_ts_ms, state.due_ms, True, state.events)
        writes[state_key(execution_id)] = encode_state(held)
        value = (
            state.events[0].value if len(state.events) == 1 else orjson.dumps(_merge_running(state))
        )
        if _size(value, execution_id, ()) > rules.max_record_bytes:
            return Decision(writes, counter="stale_too_large")  # the merge will be DLQ'd later
        out = Output(execution_id.encode(), value, STALE_RUNNING)
        return Decision(writes, [out], counter="stale_flushed")
    if isinstance(state, Marker) and state.expires_ms == due_ms:
        writes[state_key(execution_id)] = None
        return Decision(writes, counter="marker_expired")
    return Decision(writes, counter="index_orphan")


def _merge_running(held: Held) -> dict[str, Any]:
    # Starts from the first RUNNING event's fields, its nulls included.
    first, *later = held.events
    merged = orjson.loads(first.value)
    for src in later:
        merged = coalesce(merged, orjson.loads(src.value))
    return merged


def _size(value: bytes, execution_id: str, headers) -> int:
    # What the broker counts against max.message.bytes, plus our origin header.
    return len(value) + len(execution_id) + sum(len(k) + len(v or b"") for k, v in headers) + 64


def _too_large(sources: list[Source], what: str) -> Decision:
    detail = f"{what} exceeds the output limit"
    return Decision(dead=[DeadLetter(TOO_LARGE, detail, s) for s in sources], counter="too_large")
