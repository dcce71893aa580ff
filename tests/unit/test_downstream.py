"""The SQL of docs/downstream.md, as written, in real engines (chDB, DuckDB over Parquet).

No Kafka here: the records a merged topic holds for a handful of tricky executions
(a stale RUNNING before its terminal, a stuck one, a terminal-only record with no
route, a v2 record), fed in batches, must give the reference model's counts; the
raw events of the same executions, fed the same way, must not. The Kafka-fed run
after faults is in tests/integration/test_chaos.py.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import orjson
import pytest

from downstream import readme
from downstream.expected import reference_counts
from downstream.phase import LATEST, ROUTE, STATUS, differences, shape
from downstream.stores import ClickHouse, ParquetLake, Record

ROOT = Path(__file__).parents[2]


def _v(**fields) -> bytes:
    return orjson.dumps(fields)


RUN1 = {"execution_id": "e1", "status": "RUNNING", "route_id": "orders", "start_time": "t0"}
END1 = {"execution_id": "e1", "status": "COMPLETED", "route_id": None, "duration_ms": 5}
END2 = {"execution_id": "e2", "status": "FAILED", "route_id": None, "error": {"m": "x"}}
RUN3 = {"execution_id": "e3", "status": "RUNNING", "route_id": "billing"}
END3 = {"execution_id": "e3", "status": "FAILED", "route_id": "billing", "duration_ms": 7}
RUN4 = {"execution_id": "e4", "status": "RUNNING", "route_id": "billing"}  # stuck
V2_5 = {"execution_id": "e5", "status": "COMPLETED", "route_id": "orders", "protocol_version": 2}
RUN6 = {"execution_id": "e6", "status": "RUNNING", "route_id": "orders"}
END6 = {"execution_id": "e6", "status": "COMPLETED", "route_id": "orders"}

# what the agents sent, per execution, in order (the reference model's input)
READS = [
    ("e1", [("RUNNING", RUN1, 1), ("COMPLETED", END1, 2)]),
    ("e2", [("FAILED", END2, 3)]),
    ("e3", [("RUNNING", RUN3, 4), ("FAILED", END3, 5), ("FAILED", END3, 6)]),  # a duplicate
    ("e4", [("RUNNING", RUN4, 7)]),
    ("e5", [("COMPLETED", V2_5, 8)]),
    ("e6", [("RUNNING", RUN6, 9), ("COMPLETED", END6, 10), ("RUNNING", RUN6, 11)]),  # late
]
# what the merged topic holds (the contract's output), in batches as a consumer reads them
MERGED = [
    [orjson.dumps(RUN1), orjson.dumps(END2)],  # e1's stale RUNNING flush
    [orjson.dumps(RUN1 | {k: v for k, v in END1.items() if v is not None})],
    [orjson.dumps(RUN3 | END3), orjson.dumps(RUN4), orjson.dumps(V2_5)],
    [orjson.dumps(RUN6 | END6)],
]
# the raw topic: every event as sent, and a record an agent broke
RAW = [[orjson.dumps(b) for _, b, _ in reads] for _, reads in READS] + [
    [b'{"execution_id": "e9", "status": "RUN', b'["not", "an", "object"]']
]


def _feed(tmp_path: Path, batches, skip_broken=False):
    records = []
    with ClickHouse(tmp_path / "ch") as clickhouse:
        lake = ParquetLake(tmp_path / "pq")
        for n, batch in enumerate(batches):
            clickhouse.insert(batch, skip_broken=skip_broken)
            recs = [Record("t", 0, n * 10 + i, 0, None, v, None) for i, v in enumerate(batch)]
            lake.append(recs)
            records += recs
        answers = clickhouse.answers() + lake.answers()
        return answers, clickhouse, lake


def test_readme_sql_blocks_name_their_engine_and_cover_table_view_feed_and_queries():
    blocks = readme.blocks()
    kinds = {(b.engine, readme.kind(s)) for b in blocks for s in b.statements}
    assert kinds == {
        ("clickhouse", "CREATE"),
        ("clickhouse", "INSERT"),
        ("clickhouse", "SELECT"),
        ("duckdb", "SELECT"),
    }
    ddl = " ".join(readme.statements(readme.CLICKHOUSE)).upper()
    assert "REPLACINGMERGETREE" in ddl and "SUMMINGMERGETREE" in ddl
    assert "CREATE MATERIALIZED VIEW" in ddl


def test_statement_split_respects_quotes_comments_and_a_final_statement_without_semicolon():
    sql = "-- a; comment\nSELECT ';' AS x;\n\nSELECT 2 -- two; really\n;\nINSERT INTO t FORMAT X"
    assert readme.split(sql) == [
        "-- a; comment\nSELECT ';' AS x",
        "SELECT 2 -- two; really",
        "INSERT INTO t FORMAT X",
    ]
    with pytest.raises(ValueError, match="names no engine"):
        readme.blocks("## For downstream consumers\n```sql\nSELECT 1;\n```\n")


def test_readme_sql_on_the_merged_records_gives_the_models_counts_exactly(tmp_path):
    counts = reference_counts([], READS)
    assert dict(counts.by_status) == {"COMPLETED": 3, "FAILED": 2}
    assert dict(counts.by_route) == {"orders": 3, "billing": 1, "": 1}
    answers, clickhouse, lake = _feed(tmp_path, MERGED)
    shapes = [shape(a) for a in answers]
    # every README query ran and has a check: view, table, FINAL, and the DuckDB ones
    assert len(answers) == len(readme.statements(readme.CLICKHOUSE)) - 4 + len(
        readme.statements(readme.DUCKDB)
    )
    assert shapes.count(STATUS) == 3 and shapes.count(ROUTE) == 2 and shapes.count(LATEST) == 2
    for answer in answers:
        assert differences(answer, counts) == (0, []), answer.statement
    latest = next(a for a in answers if shape(a) == LATEST and a.engine == "clickhouse")
    assert [row[:2] for row in latest.rows] == [
        ("e1", "COMPLETED"),
        ("e2", "FAILED"),
        ("e3", "FAILED"),
        ("e4", "RUNNING"),  # still stuck: its stale RUNNING is all there is
        ("e5", "COMPLETED"),
        ("e6", "COMPLETED"),
    ]
    assert clickhouse.inserted == 7 and clickhouse.broken == 0
    assert len(lake.digests) == 4 and lake.rewritten() == []


def test_the_same_pipeline_fed_the_raw_events_miscounts(tmp_path):
    counts = reference_counts([], READS)
    answers, clickhouse, _ = _feed(tmp_path, RAW, skip_broken=True)
    assert clickhouse.inserted == 11 and clickhouse.broken == 2  # refused, not filtered
    view = next(a for a in answers if shape(a) == STATUS)
    assert dict((s, int(n)) for s, n in view.rows) == {"COMPLETED": 3, "FAILED": 3}  # e3 twice
    routes = next(a for a in answers if shape(a) == ROUTE)
    assert differences(routes, counts)[0] == 3  # e1 without its route, e3 twice
    # the view and DuckDB count e3 twice; FINAL keeps e1's terminal, which has no route
    # (`WHERE is_terminal` without FINAL is left out: a merge may already have folded e3)
    checked = [a for a in answers if "WHERE is_terminal GROUP BY" not in a.statement]
    assert len(checked) == len(answers) - 1
    assert all(differences(a, counts)[0] for a in checked)


def test_a_merged_topic_with_a_second_terminal_is_caught(tmp_path):
    counts = reference_counts([], READS)
    answers, _, _ = _feed(tmp_path, [*MERGED, [orjson.dumps(RUN3 | END3)]])
    off = {(a.engine, a.statement): differences(a, counts)[0] for a in answers}
    counting = [a for a in answers if shape(a) != LATEST]
    # every count sees it but `WHERE is_terminal` without FINAL, which a merge may fold
    racy = [a for a in counting if "WHERE is_terminal GROUP BY" in a.statement]
    assert len(racy) == 1
    assert all(off[(a.engine, a.statement)] for a in counting if a not in racy)
    # FINAL and row_number() keep one row per execution: a duplicate hides there
    assert all(not off[(a.engine, a.statement)] for a in answers if shape(a) == LATEST)


def test_parquet_files_are_never_rewritten_and_tampering_is_seen(tmp_path):
    lake = ParquetLake(tmp_path)
    first = lake.append([Record("t", 0, 0, 0, b"k", _v(execution_id="a", status="RUNNING"), None)])
    lake.append([Record("t", 0, 1, 0, b"k", _v(execution_id="a", status="FAILED"), "merged")])
    assert lake.rewritten() == []
    again = ParquetLake(tmp_path)  # a second sink on the same folder never overwrites
    with pytest.raises(FileExistsError):
        again.append([Record("t", 0, 2, 0, b"k", _v(execution_id="b", status="FAILED"), None)])
    first.write_bytes(first.read_bytes() + b"x")
    (lake.folder / "batch-999999.parquet").write_bytes(b"")
    assert lake.rewritten() == [
        "batch-999999.parquet: not written by the sink",
        "batch-000001.parquet: rewritten",
    ]


def test_heavy_store_packages_are_dev_extras_only():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    heavy = {"chdb", "pyarrow", "duckdb"}

    def names(specs):
        return {s.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip() for s in specs}

    assert not heavy & names(project["dependencies"])
    extras = project["optional-dependencies"]
    assert heavy <= names(extras["downstream"])
    assert "cameleer-merger[downstream]" in extras["dev"]  # what `make test` installs


def test_at_least_once_repeats_excuse_a_surplus_of_that_size_only():
    from downstream.stores import Answer

    counts = reference_counts([], READS)  # COMPLETED 3, FAILED 2
    view = Answer("clickhouse", "q", STATUS, (("COMPLETED", "4"), ("FAILED", "2")))
    assert differences(view, counts, repeats=1) == (0, [])
    assert differences(view, counts, repeats=0)[0] == 1
    short = Answer("clickhouse", "q", STATUS, (("COMPLETED", "4"), ("FAILED", "1")))
    assert differences(short, counts, repeats=1)[0] == 1  # a missing one is never excused
