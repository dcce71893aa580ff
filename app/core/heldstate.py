"""What the worker keeps per execution, and its byte layout in RocksDB.

Two key spaces share one store (and so one changelog topic):
- `e` + execution_id -> the execution's state: `Held` RUNNING events, or a
  `Marker` saying its terminal record went out (kept for the dedupe window or
  the held retention, whichever is longer).
  Or `Pending`: a terminal event waiting (bounded) for the RUNNING events that
  may still be on their way through the re-key topic, with those that came.
- `i` + due time (8 bytes, big-endian ms) + execution_id -> b"": a time index,
  so a sweep reads only the entries that are due, in due order, never the whole
  store. Every state has exactly one index entry, at its next due time: a
  `Held` at `due_ms` (its stale flush, then, once flushed, the end of its
  retention), a `Marker` at `expires_ms`, a `Pending` at `since_ms` (due at once:
  each sweep looks whether it may go). Nothing stays without one, so nothing
  stays forever.

Held RUNNING events are kept as their original bytes with where they came from:
a stale flush of one event emits it unchanged, and a merge too large for the
output topic goes to the DLQ as the original events, with their source headers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_HELD = b"H"
_MARKER = b"T"
_PENDING = b"W"
_PENDING_HEAD = struct.Struct(">qqBHH")  # since_ms, deadline_ms, flags, headers, RUNNINGs
_PENDING_DIRECT = 1  # flag: the terminal event was read from its own raw partition
# The earlier layout (no flags, no RUNNINGs): still read, from a changelog written by it.
_PENDING_V0 = b"P"
_PENDING_V0_HEAD = struct.Struct(">qqH")  # since_ms, deadline_ms, header count
_HEADER_HEAD = struct.Struct(">Hi")  # name length, value length (-1: null)
_HELD_HEAD = struct.Struct(">qqBH")  # first_ts_ms, due_ms, flags, event count
_HELD_STALE_EMITTED = 1
_HELD_REKEYED = 2
_SOURCE_HEAD = struct.Struct(
    ">iqqiiH"
)  # partition, offset, ts, key len (-1: none), value len, topic len
_MARKER_BODY = struct.Struct(">q")
_DUE = struct.Struct(">Q")
STATE_PREFIX = b"e"
INDEX_PREFIX = b"i"


@dataclass(slots=True)
class Source:
    """A record as read from Kafka: its bytes and coordinates (for DLQ headers)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None  # None only for a raw tombstone, which goes to the DLQ as it is
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(slots=True)
class Held:
    first_ts_ms: int  # Kafka timestamp of the first RUNNING event
    due_ms: int  # next due time: the stale flush, or (stale_emitted) the end of the retention
    stale_emitted: bool
    events: tuple[Source, ...]
    # one of the events came through the re-key topic: more may still be on their way
    rekeyed: bool = False


@dataclass(slots=True)
class Marker:
    expires_ms: int


@dataclass(slots=True)
class Pending:
    """A terminal event that waits for the RUNNING events still in flight through the
    re-key topic (app.core.merge, "Mixed keying"), with the RUNNING events that came."""

    since_ms: int  # when the worker read it (wall clock)
    deadline_ms: int  # emitted then at the latest
    terminal: Source  # its headers included: they go out with it
    # read from its own raw partition (keyed by execution_id), not through the re-key
    # topic: a RUNNING read after it from the same partition was sent after it
    direct: bool = False
    runnings: tuple[Source, ...] = ()  # held before it or joined since, in read order


def state_key(execution_id: str) -> bytes:
    return state_key_of(execution_id.encode())


def index_key(due_ms: int, execution_id: str) -> bytes:
    return index_key_of(due_ms, execution_id.encode())


# The same keys from the execution_id already encoded (the record path encodes it once).
def state_key_of(key: bytes) -> bytes:
    return STATE_PREFIX + key


def index_key_of(due_ms: int, key: bytes) -> bytes:
    return INDEX_PREFIX + _DUE.pack(due_ms if due_ms > 0 else 0) + key


def index_upper_bound(now_ms: int) -> bytes:
    """First index key that is not yet due at now_ms (exclusive upper bound of a sweep)."""
    return INDEX_PREFIX + _DUE.pack(max(now_ms, 0) + 1)


def parse_index_key(key: bytes) -> tuple[int, str]:
    (due,) = _DUE.unpack_from(key, 1)
    return due, key[9:].decode()


def _encode_source(src: Source, parts: list[bytes]) -> None:
    topic = src.topic.encode()
    key_len = -1 if src.key is None else len(src.key)
    parts.append(
        _SOURCE_HEAD.pack(
            src.partition, src.offset, src.timestamp_ms, key_len, len(src.value), len(topic)
        )
    )
    parts.append(topic)
    if src.key is not None:
        parts.append(src.key)
    parts.append(src.value)


def _take(data: bytes, pos: int, length: int) -> tuple[bytes | None, int]:
    """`length` bytes at `pos` (-1: a null), and the position after them."""
    if length < 0:
        return None, pos
    return data[pos : pos + length], pos + length


def _decode_source(data: bytes, pos: int) -> tuple[Source, int]:
    partition, offset, ts, key_len, value_len, topic_len = _SOURCE_HEAD.unpack_from(data, pos)
    topic, pos = _take(data, pos + _SOURCE_HEAD.size, topic_len)
    key, pos = _take(data, pos, key_len)
    value, pos = _take(data, pos, value_len)
    return Source(topic.decode(), partition, offset, ts, key, value), pos


def _decode_terminal(data: bytes, pos: int, header_count: int) -> tuple[Source, int]:
    """A pending terminal's headers, then its source."""
    headers = []
    for _ in range(header_count):
        name_len, value_len = _HEADER_HEAD.unpack_from(data, pos)
        name, pos = _take(data, pos + _HEADER_HEAD.size, name_len)
        value, pos = _take(data, pos, value_len)
        headers.append((name.decode(), value))
    terminal, pos = _decode_source(data, pos)
    terminal.headers = tuple(headers)
    return terminal, pos


def encode_state(state: Held | Marker | Pending) -> bytes:
    if isinstance(state, Marker):
        return _MARKER + _MARKER_BODY.pack(state.expires_ms)
    if isinstance(state, Pending):
        headers = state.terminal.headers
        flags = _PENDING_DIRECT if state.direct else 0
        head = _PENDING_HEAD.pack(
            state.since_ms, state.deadline_ms, flags, len(headers), len(state.runnings)
        )
        parts = [_PENDING, head]
        for name, value in headers:
            raw_name = name.encode()
            parts.append(_HEADER_HEAD.pack(len(raw_name), -1 if value is None else len(value)))
            parts.append(raw_name)
            if value is not None:
                parts.append(value)
        _encode_source(state.terminal, parts)
        for src in state.runnings:
            _encode_source(src, parts)
        return b"".join(parts)
    parts = [
        _HELD,
        _HELD_HEAD.pack(
            state.first_ts_ms,
            state.due_ms,
            (_HELD_STALE_EMITTED if state.stale_emitted else 0)
            | (_HELD_REKEYED if state.rekeyed else 0),
            len(state.events),
        ),
    ]
    for src in state.events:
        _encode_source(src, parts)
    return b"".join(parts)


def decode_state(data: bytes) -> Held | Marker | Pending:
    kind = data[:1]
    if kind == _MARKER:
        return Marker(_MARKER_BODY.unpack_from(data, 1)[0])
    if kind == _PENDING:
        since, deadline, flags, count, runnings = _PENDING_HEAD.unpack_from(data, 1)
        terminal, pos = _decode_terminal(data, 1 + _PENDING_HEAD.size, count)
        events = []
        for _ in range(runnings):
            src, pos = _decode_source(data, pos)
            events.append(src)
        return Pending(since, deadline, terminal, bool(flags & _PENDING_DIRECT), tuple(events))
    if kind == _PENDING_V0:
        since, deadline, count = _PENDING_V0_HEAD.unpack_from(data, 1)
        terminal, _ = _decode_terminal(data, 1 + _PENDING_V0_HEAD.size, count)
        return Pending(since, deadline, terminal)
    if kind != _HELD:
        raise ValueError(f"unknown state record kind {kind!r}")
    first_ts, due, flags, count = _HELD_HEAD.unpack_from(data, 1)
    pos = 1 + _HELD_HEAD.size
    events = []
    for _ in range(count):
        src, pos = _decode_source(data, pos)
        events.append(src)
    return Held(
        first_ts, due, bool(flags & _HELD_STALE_EMITTED), tuple(events), bool(flags & _HELD_REKEYED)
    )


def in_changelog(key: bytes) -> bool:
    """Whether a write goes to the changelog: the states do, the time index does not.

    Every state has exactly one index entry, at the due time its encoding holds
    (`due_of`): a restore derives the index from the states it replays
    (app.state.statestore.replay), so the changelog carries one record per execution, not
    two. An index entry left by an earlier state of the same execution is an orphan
    that the sweep deletes when it comes due (app.core.merge.sweep_entry: "index_orphan").
    """
    return key[:1] != INDEX_PREFIX


# after the kind (and first_ts_ms)
_DUE_AT = {_HELD[0]: 9, _MARKER[0]: 1, _PENDING[0]: 1, _PENDING_V0[0]: 1}


def due_of(value: bytes) -> int:
    """The due time of an encoded state, without decoding it: a Held's `due_ms`, a
    Marker's `expires_ms`, a Pending's `since_ms` (its index entry's time)."""
    at = _DUE_AT.get(value[0])
    if at is None:
        raise ValueError(f"unknown state record kind {value[:1]!r}")
    return _MARKER_BODY.unpack_from(value, at)[0]
