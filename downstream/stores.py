"""The two downstream stores, run for real: ClickHouse (chDB) and Parquet files read by DuckDB.

Both take every record they are given, in batches, as they come off the topic; they
filter nothing. The SQL they run is the README's (`downstream.readme`), as written.
The heavy packages (chdb, pyarrow, duckdb) are imported here only, from the dev
extras; the worker never imports this module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from . import readme
from .expected import route_text


@dataclass(frozen=True)
class Record:
    """One record as read from the topic (read_committed)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    origin: str | None  # the cameleer-origin header


@dataclass(frozen=True)
class Answer:
    """What one README query returned."""

    engine: str
    statement: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]


class ClickHouse:
    """A chDB session in its own folder with the README's tables and view.

    `insert(values)` runs the README's INSERT with the batch's record values after
    it, one per line, like ClickHouse's Kafka engine inserting a block. With
    `skip_broken` (the raw topic, where agents send malformed records), the records
    ClickHouse refuses are skipped and counted, as `kafka_skip_broken_messages`
    does, and the rest of their batch is inserted.
    """

    def __init__(self, path: Path, sql: Sequence[str] | None = None) -> None:
        statements = list(sql if sql is not None else readme.statements(readme.CLICKHOUSE))
        by_kind: dict[str, list[str]] = {}
        for statement in statements:
            by_kind.setdefault(readme.kind(statement), []).append(statement)
        unknown = set(by_kind) - {"CREATE", "INSERT", "SELECT"}
        if unknown:
            raise ValueError(f"README ClickHouse statements of no known use: {sorted(unknown)}")
        if len(by_kind.get("INSERT", [])) != 1:
            raise ValueError("the README must show exactly one ClickHouse INSERT (the feed)")
        self.ddl = by_kind.get("CREATE", [])
        self.feed = by_kind["INSERT"][0]
        self.queries = by_kind.get("SELECT", [])
        self.path = path
        self.session: Any = None
        self.broken = 0
        self.inserted = 0

    def __enter__(self) -> ClickHouse:
        from chdb import session

        self.path.mkdir(parents=True, exist_ok=True)
        self.session = session.Session(str(self.path))
        for statement in self.ddl:
            self.session.query(statement)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    def insert(self, values: Sequence[bytes | None], skip_broken: bool = False) -> None:
        texts = [v.decode("utf-8", "replace") for v in values if v is not None]
        self.broken += len(values) - len(texts)  # a tombstone has no row to insert
        if not texts:
            return
        if skip_broken:
            self._insert_skipping(texts)
        else:
            self._insert(texts)

    def _insert_skipping(self, texts: list[str]) -> None:
        """A refused insert inserts nothing: halve the batch until the refused records
        stand alone (a few inserts per broken record, not one per record)."""
        try:
            self._insert(texts)
        except Exception:
            if len(texts) == 1:
                self.broken += 1
                return
            half = len(texts) // 2
            self._insert_skipping(texts[:half])
            self._insert_skipping(texts[half:])

    def _insert(self, texts: list[str]) -> None:
        self.session.query(self.feed + "\n" + "\n".join(texts))
        self.inserted += len(texts)

    def answers(self) -> list[Answer]:
        out = []
        for statement in self.queries:
            result = orjson.loads(self.session.query(statement, "JSONCompact").bytes())
            columns = tuple(c["name"] for c in result["meta"])
            rows = tuple(tuple(row) for row in result["data"])
            out.append(Answer(readme.CLICKHOUSE, statement, columns, rows))
        return out


PARQUET_TABLE = "executions"  # the folder the README's DuckDB queries read


class ParquetLake:
    """Append-only Parquet files: one new file per batch, never opened for writing again.

    Files are created with O_EXCL (an existing name is an error, never overwritten)
    and their SHA-256 is kept; `rewritten()` says which files changed, vanished or
    appeared since they were written. One row per record: topic, partition, offset,
    timestamp_ms, key, execution_id, status, route_id, origin, value (the record's
    text); the fields are read from the value where it is a JSON object, else null.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folder = root / PARQUET_TABLE
        self.folder.mkdir(parents=True, exist_ok=True)
        self.digests: dict[str, str] = {}
        self.rows = 0

    def append(self, records: Sequence[Record]) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns: dict[str, list[Any]] = {
            name: []
            for name in (
                "topic",
                "partition",
                "offset",
                "timestamp_ms",
                "key",
                "execution_id",
                "status",
                "route_id",
                "origin",
                "value",
            )
        }
        for rec in records:
            body = json_object(rec.value)
            columns["topic"].append(rec.topic)
            columns["partition"].append(rec.partition)
            columns["offset"].append(rec.offset)
            columns["timestamp_ms"].append(rec.timestamp_ms)
            columns["key"].append(None if rec.key is None else rec.key.decode("utf-8", "replace"))
            columns["execution_id"].append(_text(body.get("execution_id")))
            columns["status"].append(_text(body.get("status")))
            route = body.get("route_id")
            columns["route_id"].append(None if route is None else route_text(route))
            columns["origin"].append(rec.origin)
            value = rec.value
            columns["value"].append(None if value is None else value.decode("utf-8", "replace"))
        types = {"partition": pa.int32(), "offset": pa.int64(), "timestamp_ms": pa.int64()}
        table = pa.table(
            {
                name: pa.array(values, type=types.get(name, pa.string()))
                for name, values in columns.items()
            }
        )
        path = self.folder / f"batch-{len(self.digests) + 1:06d}.parquet"
        with open(path, "xb") as f:  # never an existing file
            pq.write_table(table, f)
        self.digests[path.name] = _sha256(path)
        self.rows += len(records)
        return path

    def rewritten(self) -> list[str]:
        """Files changed, removed or added since written (empty: the lake is append-only)."""
        problems = []
        present = {p.name for p in self.folder.glob("*.parquet")}
        for name in sorted(present - set(self.digests)):
            problems.append(f"{name}: not written by the sink")
        for name, digest in sorted(self.digests.items()):
            if name not in present:
                problems.append(f"{name}: removed")
            elif _sha256(self.folder / name) != digest:
                problems.append(f"{name}: rewritten")
        return problems

    def answers(self, sql: Sequence[str] | None = None) -> list[Answer]:
        import duckdb

        statements = list(sql if sql is not None else readme.statements(readme.DUCKDB))
        out = []
        with duckdb.connect() as con:
            con.execute("SET file_search_path = ?", [str(self.root)])
            for statement in statements:
                if readme.kind(statement) not in ("SELECT", "WITH"):
                    raise ValueError(f"README DuckDB statement is not a query: {statement[:60]}")
                cursor = con.execute(statement)
                columns = tuple(d[0] for d in cursor.description)
                out.append(Answer(readme.DUCKDB, statement, columns, tuple(cursor.fetchall())))
        return out


def json_object(value: bytes | None) -> dict[str, Any]:
    """The record's value as a JSON object; {} for anything else."""
    if value is None:
        return {}
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
