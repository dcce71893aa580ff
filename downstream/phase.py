"""The downstream check: a topic fed to ClickHouse and Parquet, the answers against the model.

`feed(bootstrap, topic, folder)` reads a topic from its start to its end with
`read_committed`, batch by batch, and hands every record to both stores (chDB with
the README's tables, append-only Parquet files); then it runs every README query.
`check(...)` feeds the merged topic and the raw one, and its `Report` compares the
merged topic's answers with the reference model's counts (`downstream.expected`)
exactly, the raw topic's answers beside them: the same pipeline without the
worker. Every README query must have a shape the comparison knows (counts per
status, per route, or one row per execution), so none runs unchecked.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from simulator.reference import TERMINAL

from .expected import Counts, reference_counts, route_text
from .stores import Answer, ClickHouse, ParquetLake, Record, json_object

BATCH = 500  # records per insert and per Parquet file, at most (a Kafka engine block)

STATUS = ("status", "executions")
ROUTE = ("route_id", "executions")
LATEST = ("execution_id", "status", "route_id")


@dataclass
class Fed:
    """What one topic gave in both stores."""

    topic: str
    records: int = 0
    inserted: int = 0  # rows ClickHouse took
    broken: int = 0  # refused by ClickHouse's parser and skipped (raw topic only)
    files: int = 0
    rewritten: list[str] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    repeats: int = 0  # terminal records seen twice, byte for byte (at_least_once)
    seconds: float = 0.0


def feed(
    bootstrap: str,
    topic: str,
    folder: Path,
    *,
    skip_broken: bool = False,
    timeout: float = 600.0,
    say: Callable[[str], None] = lambda _: None,
) -> Fed:
    """Every committed record of `topic`, from its start to its end at the moment of
    the call, into both stores; then every README query of both."""
    started = time.monotonic()
    fed = Fed(topic)
    seen_terminals: set[tuple[bytes | None, bytes]] = set()  # (key, digest of the value)
    with ClickHouse(folder / "clickhouse") as clickhouse:
        lake = ParquetLake(folder / "parquet")

        def take(batch: list[Record]) -> None:
            clickhouse.insert([r.value for r in batch], skip_broken=skip_broken)
            lake.append(batch)
            for rec in batch:  # what the comparison needs to know of the topic
                if json_object(rec.value).get("status") not in TERMINAL:
                    continue
                seen = (rec.key, hashlib.blake2b(rec.value or b"", digest_size=16).digest())
                fed.repeats += seen in seen_terminals
                seen_terminals.add(seen)

        fed.records = asyncio.run(_read(bootstrap, topic, take, timeout, say))
        fed.broken = clickhouse.broken
        fed.inserted = clickhouse.inserted
        fed.answers = clickhouse.answers() + lake.answers()
        fed.files = len(lake.digests)
        fed.rewritten = lake.rewritten()
    fed.seconds = time.monotonic() - started
    return fed


async def _read(
    bootstrap: str,
    topic: str,
    take: Callable[[list[Record]], None],
    timeout: float,
    say: Callable[[str], None],
) -> int:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 60
        while not consumer.assignment():  # every partition, with the first metadata
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic}: no partitions after 60 s")
            await asyncio.sleep(0.1)  # poll interval until the metadata has come
        parts = sorted(consumer.assignment(), key=lambda tp: tp.partition)
        ends = await consumer.end_offsets(parts)  # read_committed: the last stable offsets
        starts = await consumer.beginning_offsets(parts)
        total = sum(ends[tp] - starts[tp] for tp in parts)
        read = 0
        last_said = time.monotonic()
        deadline = time.monotonic() + timeout
        while not await _at_end(consumer, ends):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: {read} of about {total} records read in {timeout}s")
            batches = await consumer.getmany(timeout_ms=500, max_records=BATCH)
            batch = [
                Record(
                    m.topic,
                    m.partition,
                    m.offset,
                    m.timestamp,
                    m.key,
                    m.value,
                    _origin(m.headers),
                )
                for tp in sorted(batches, key=lambda t: t.partition)
                for m in batches[tp]
            ]
            if batch:
                take(batch)
                read += len(batch)
            if time.monotonic() - last_said > 5:
                say(f"downstream: {read}/~{total} records of {topic} fed")
                last_said = time.monotonic()
        return read
    finally:
        await consumer.stop()


async def _at_end(consumer: AIOKafkaConsumer, ends: dict) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


def _origin(headers: Any) -> str | None:
    for name, value in headers or ():
        if name == "cameleer-origin" and value is not None:
            return value.decode("utf-8", "replace")
    return None


# -- the comparison ------------------------------------------------------------------


def shape(answer: Answer) -> tuple[str, ...]:
    return tuple(c.lower() for c in answer.columns)


def as_counts(answer: Answer) -> Counter[str]:
    out: Counter[str] = Counter()
    for name, n in answer.rows:
        out[route_text(name)] += int(n)
    return out


def as_latest(answer: Answer) -> dict[str, tuple[str, str]]:
    return {eid: (status, route_text(route)) for eid, status, route in answer.rows}


def differences(answer: Answer, counts: Counts, repeats: int = 0) -> tuple[int, list[str]]:
    """(how many keys differ, what) between one answer and the model's counts.

    `repeats`: exact terminal repeats on the topic (at_least_once), which a query
    that counts inserted rows may count once more each; FINAL and row_number() not.
    """
    found = shape(answer)
    if found in (STATUS, ROUTE):
        want = counts.by_status if found == STATUS else counts.by_route
        got = as_counts(answer)
        off = []
        surplus = sum(got.values()) - sum(want.values())
        for key in sorted(set(want) | set(got)):
            extra = got[key] - want[key]
            if extra < 0 or (extra > 0 and surplus > repeats):  # repeats: 0 unless allowed
                off.append(f"{found[0]} {key!r}: {got[key]}, model {want[key]}")
        return len(off), off
    if found == LATEST:
        got_rows = as_latest(answer)
        off = []
        if len(got_rows) != len(answer.rows):
            off.append(f"{len(answer.rows) - len(got_rows)} executions with more than one row")
        for eid in sorted(set(got_rows) | set(counts.latest), key=str):
            allowed = counts.latest.get(eid)
            row = got_rows.get(eid)
            if row is None:
                off.append(f"{eid}: no row, model {sorted(allowed or ())}")
            elif allowed is None:
                off.append(f"{eid}: row {row} for an execution the model has no record of")
            elif row not in allowed:
                off.append(f"{eid}: row {row}, model {sorted(allowed)}")
        return len(off), off
    return 1, [f"README query with columns {answer.columns}: no check knows this shape"]


@dataclass
class Report:
    """The merged topic's answers against the model, the raw topic's beside them."""

    counts: Counts
    merged: Fed
    raw: Fed | None
    exactly_once: bool = True
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        repeats = 0 if self.exactly_once else self.merged.repeats
        for answer in self.merged.answers:
            _, off = differences(answer, self.counts, repeats)
            for line in off[:5]:
                self.problems.append(f"{answer.engine}: {_short(answer.statement)}: {line}")
            if len(off) > 5:
                self.problems.append(f"{answer.engine}: ... and {len(off) - 5} more")
        for problem in self.merged.rewritten:
            self.problems.append(f"parquet: {problem}")
        if self.merged.broken:
            self.problems.append(f"clickhouse: {self.merged.broken} merged records refused")

    @property
    def ok(self) -> bool:
        return not self.problems

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(what, model, merged topic, raw topic) lines of the printed table."""
        counts = self.counts
        lines: list[tuple[str, str, str, str]] = []

        def line(what: str, model: Any, get: Callable[[Fed], Any]) -> None:
            cells = ["" if fed is None else str(get(fed)) for fed in (self.merged, self.raw)]
            lines.append((what, str(model), cells[0], cells[1]))

        def of(engine: str, columns: tuple[str, ...], get: Callable[[Answer], Any]):
            def pick(fed: Fed) -> Any:
                for answer in fed.answers:
                    if answer.engine != engine or shape(answer) != columns:
                        continue
                    table_count = "execution_counts" not in answer.statement
                    if engine == "clickhouse" and columns != LATEST and table_count:
                        continue  # the view's counts are shown, not the table's
                    return get(answer)
                return "-"

            return pick

        line("records read", "", lambda fed: fed.records)
        line("rows inserted (a view counting every row)", counts.executions, _inserted)
        for engine, label in (("clickhouse", "ClickHouse view"), ("duckdb", "Parquet/DuckDB")):
            for status in sorted(TERMINAL):
                get = of(engine, STATUS, lambda a, s=status: as_counts(a)[s])
                line(f"{label}: {status}", counts.by_status[status], get)
            get = of(engine, ROUTE, lambda a: differences(a, counts)[0])
            line(f"{label}: routes miscounted", 0, get)
        for engine, label in (("clickhouse", "ClickHouse FINAL"), ("duckdb", "DuckDB latest")):
            line(f"{label}: rows", len(counts.latest), of(engine, LATEST, lambda a: len(a.rows)))
            get = of(engine, LATEST, lambda a: differences(a, counts)[0])
            line(f"{label}: rows wrong", 0, get)
        line("Parquet files (rewritten)", "", lambda fed: f"{fed.files} ({len(fed.rewritten)})")
        line("README queries off the model", 0, self._queries_off)
        return lines

    def _queries_off(self, fed: Fed) -> int:
        repeats = fed.repeats if fed is self.merged and not self.exactly_once else 0
        return sum(1 for a in fed.answers if differences(a, self.counts, repeats)[0])

    def table(self) -> str:
        head = ("downstream (chDB, Parquet + DuckDB)", "model", "merged", "raw")
        lines = [head, *self.rows()]
        widths = [max(len(line[i]) for line in lines) for i in range(4)]
        widths[1:] = [max(w, 9) for w in widths[1:]]
        rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

        def fmt(line: tuple[str, ...]) -> str:
            cells = [f" {line[0]:<{widths[0]}} "]
            cells += [f" {v:>{w}} " for v, w in zip(line[1:], widths[1:], strict=True)]
            return "|" + "|".join(cells) + "|"

        out = [rule, fmt(head), rule, *map(fmt, lines[1:]), rule]
        return "\n".join(out)


def _inserted(fed: Fed) -> str:
    return str(fed.inserted) + (f" ({fed.broken} refused)" if fed.broken else "")


def _short(statement: str) -> str:
    code = " ".join(line.split("--", 1)[0].strip() for line in statement.splitlines())
    code = " ".join(code.split())
    return code if len(code) <= 70 else code[:67] + "..."


def check(
    bootstrap: str,
    merged_topic: str,
    raw_topic: str | None,
    folder: Path,
    executions: Any,
    extra: Any = (),
    *,
    exactly_once: bool = True,
    say: Callable[[str], None] = lambda _: None,
) -> Report:
    """Feed the merged topic (and the raw one, beside it) to both stores and compare
    with the reference model's counts for `executions` plus `extra` (see
    `reference_counts`)."""
    say(f"downstream: feeding {merged_topic} to ClickHouse (chDB) and Parquet")
    merged = feed(bootstrap, merged_topic, folder / "merged", say=say)
    say(f"downstream: {merged.records} records fed and queried in {merged.seconds:.1f} s")
    raw = None
    if raw_topic is not None:
        say(f"downstream: feeding the raw topic {raw_topic} through the same pipeline")
        raw = feed(bootstrap, raw_topic, folder / "raw", skip_broken=True, say=say)
        say(f"downstream: {raw.records} records fed and queried in {raw.seconds:.1f} s")
    counts = reference_counts(executions, extra)
    return Report(counts, merged, raw, exactly_once)
