"""In-flight executions: which v1 executions this worker holds right now, read cheaply.

The held table mixes held RUNNINGs with terminal markers, and markers are kept for
the dedupe window (or the held retention): at a steady rate they outnumber the held
executions by far, and they share the held ones' key space and time index. Listing
the held ones from there would read every marker. So each partition's RocksDB also
keeps a local index of the held executions only:

    b"h" + execution_id -> first Kafka timestamp (8 bytes, big-endian ms) + stale flag

It is derived from the state, never sent to the changelog: `StateStore.committed`
writes it in the same RocksDB write batch as the state it follows, and the
changelog recovery writes it as it replays the state (app.state.statestore.replay), so it always
matches the committed state, after a restart or on a new owner. Writing it costs
one put or delete per state key a commit writes, nothing per record handled.
Reading it costs O(held executions), never O(markers); the views and the metrics
read it at most once per `CACHE_S` seconds.

What is shown comes from the committed state: an execution held or finished in the
last commit interval appears a commit later.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson

from app.core.heldstate import Held, Marker, Pending, decode_state, state_key

HELD_INDEX_PREFIX = b"h"
HELD_KIND = b"H"  # app.core.heldstate: a Held state's first byte; first_ts_ms is bytes 1-8
_FIRST_TS = struct.Struct(">q")
_FLAGS_AT = 17  # after the kind (1), first_ts_ms (8) and due_ms (8)
_STALE_FLAG = 1  # app.core.heldstate: flushed as stale (the flags' other bits say other things)
CACHE_S = 5.0
YIELD_EVERY = 5_000  # index entries read between two turns of the event loop
DESCRIBE_MAX = 100_000  # states read for one filtered listing or agent count


def held_index_value(value: bytes) -> bytes:
    """The held-index value of an encoded Held state: first timestamp and stale flag."""
    return value[1:9] + bytes((value[_FLAGS_AT] & _STALE_FLAG,))


def index_held(batch, key: bytes, value: bytes | None) -> None:
    """The held-index write that goes with writing `value` at state key `key` (b"e"...)."""
    hkey = HELD_INDEX_PREFIX + key[1:]
    if value is not None and value[:1] == HELD_KIND:
        batch.put(hkey, held_index_value(value))
    else:
        batch.delete(hkey)


def parse_index_value(value: bytes) -> tuple[int, bool]:
    """(first Kafka timestamp in ms, stale RUNNING flushed) of a held-index value."""
    return _FIRST_TS.unpack_from(value)[0], value[8:9] not in (b"", b"\x00")


@dataclass(frozen=True, slots=True)
class Entry:
    partition: int
    execution_id: str
    first_ts_ms: int
    stale_flushed: bool


@dataclass
class Census:
    at: float  # time.monotonic() of the reading
    held: dict[int, int] = field(default_factory=dict)  # partition -> held executions
    oldest_ms: dict[int, int] = field(default_factory=dict)  # partition -> first timestamp
    stale: dict[int, int] = field(default_factory=dict)  # partition -> flushed as stale


def iso(ms: int) -> str:
    seconds = ms // 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms % 1000:03d}Z"


def running_fields(held: Held) -> dict:
    """agent_id, route_id and start_time of a held execution (later RUNNINGs over earlier,
    nulls ignored, as the merge does); never bodies or headers."""
    out: dict = {"agent_id": None, "route_id": None, "start_time": None}
    for event in held.events:
        try:
            body = orjson.loads(event.value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(body, dict):
            for name in out:
                if body.get(name) is not None:
                    out[name] = body[name]
    return out


class InFlight:
    """Reads the held index of the partitions this worker owns."""

    def __init__(self, store, owned, registry_versions: dict[str, int]) -> None:
        self.store = store
        self._owned = owned  # () -> source partitions this worker owns now
        self.versions = registry_versions
        self._census: Census | None = None
        self._lock = asyncio.Lock()

    def owned(self) -> list[int]:
        return sorted(self._owned())

    async def entries(self) -> list[Entry]:
        out: list[Entry] = []
        for partition in self.owned():
            n = 0
            try:
                for key, value in self.store.scan(partition, HELD_INDEX_PREFIX):
                    first_ts, stale = parse_index_value(value)
                    out.append(Entry(partition, key[1:].decode(), first_ts, stale))
                    n += 1
                    if n % YIELD_EVERY == 0:
                        await asyncio.sleep(0)  # let records flow between slices
            except Exception:  # the partition went away during the scan: skip it
                continue
        return out

    async def census(self, max_age_s: float = CACHE_S) -> Census:
        """Held count, oldest first timestamp and stale count per owned partition."""
        async with self._lock:
            cached = self._census
            if cached is not None and time.monotonic() - cached.at < max_age_s:
                return cached
            census = Census(time.monotonic())
            for partition in self.owned():
                census.held[partition] = 0
                census.stale[partition] = 0
            for entry in await self.entries():
                p = entry.partition
                census.held[p] = census.held.get(p, 0) + 1
                census.stale[p] = census.stale.get(p, 0) + entry.stale_flushed
                oldest = census.oldest_ms.get(p)
                if oldest is None or entry.first_ts_ms < oldest:
                    census.oldest_ms[p] = entry.first_ts_ms
            self._census = census
            return census

    def describe(self, entry: Entry, now_ms: int) -> dict | None:
        """One held execution as the views show it; None when it is no longer held."""
        stored = self.store.get(entry.partition, state_key(entry.execution_id))
        state = decode_state(stored) if stored is not None else None
        if not isinstance(state, Held):
            return None
        return {
            "execution_id": entry.execution_id,
            **running_fields(state),
            "first_seen": iso(state.first_ts_ms),
            "age_s": round(max(0, now_ms - state.first_ts_ms) / 1000, 3),
            "stale_flushed": state.stale_emitted,
            "running_events": len(state.events),
            "partition": entry.partition,
        }

    async def _described(self, entries: list[Entry], seen: dict) -> AsyncIterator[dict]:
        """The executions of `entries` still held, described; at most DESCRIBE_MAX read
        (`seen["truncated"]` is set when more were left)."""
        now = int(time.time() * 1000)
        for read, entry in enumerate(entries, 1):
            if read > DESCRIBE_MAX:
                seen["truncated"] = True
                return
            if read % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # let records flow between slices
            row = self.describe(entry, now)
            if row is not None:
                yield row

    async def running(
        self,
        agent: str | None = None,
        route: str | None = None,
        limit: int = 50,
        offset: int = 0,
        newest_first: bool = False,
    ) -> dict:
        """A page of held executions, oldest first (or newest), filtered by agent/route."""
        entries = await self.entries()
        entries.sort(key=lambda e: (e.first_ts_ms, e.execution_id), reverse=newest_first)
        seen = {"truncated": False}
        if agent is None and route is None:  # only the page's states are read
            total = len(entries)
            page = [row async for row in self._described(entries[offset : offset + limit], seen)]
        else:
            matches = [
                row
                async for row in self._described(entries, seen)
                if (agent is None or row["agent_id"] == agent)
                and (route is None or row["route_id"] == route)
            ]
            total, page = len(matches), matches[offset : offset + limit]
        return {
            "total": total,
            "truncated": seen["truncated"],
            "offset": offset,
            "limit": limit,
            "order": "newest" if newest_first else "oldest",
            "partitions": self.owned(),
            "executions": page,
        }

    async def agents(self) -> dict:
        """Per agent: held executions here, its registered protocol version."""
        counts: Counter[str] = Counter()
        stale: Counter[str] = Counter()
        seen = {"truncated": False}
        async for row in self._described(await self.entries(), seen):
            agent = row["agent_id"] if isinstance(row["agent_id"], str) else "(none)"
            counts[agent] += 1
            stale[agent] += row["stale_flushed"]
        agents = []
        for agent in sorted(set(self.versions) | set(counts)):
            agents.append(
                {
                    "agent_id": agent,
                    "protocol_version": self.versions.get(agent, 1),
                    "registered": agent in self.versions,
                    "in_flight": counts.get(agent, 0),
                    "stale_flushed": stale.get(agent, 0),
                }
            )
        return {"agents": agents, "truncated": seen["truncated"], "partitions": self.owned()}

    def execution(self, partition: int, execution_id: str) -> dict:
        """What this worker's state says of one execution (its partition's owner answers)."""
        stored = self.store.get(partition, state_key(execution_id))
        state = decode_state(stored) if stored is not None else None
        out: dict = {"execution_id": execution_id, "partition": partition}
        if isinstance(state, Held):
            now = int(time.time() * 1000)
            entry = Entry(partition, execution_id, state.first_ts_ms, state.stale_emitted)
            return {"state": "running", **(self.describe(entry, now) or out)}
        if isinstance(state, Marker):
            # its terminal record went out; remembered for duplicates until then
            return {"state": "finished", **out, "remembered_until": iso(state.expires_ms)}
        if isinstance(state, Pending):
            # its terminal event waits for RUNNING events still in the re-key topic
            return {
                "state": "terminal-waiting",
                **out,
                "since": iso(state.since_ms),
                "until": iso(state.deadline_ms),
                "running_events": len(state.runnings),
            }
        return {"state": "unknown", **out}
