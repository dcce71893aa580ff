"""A small run of the chaos harness: kills, a rebalance and a wipe lose and double nothing,
and downstream stores fed the merged topic afterwards count each execution once."""

from __future__ import annotations

import pytest

from chaos.run import Chaos, ChaosConfig, table
from downstream import readme
from downstream.phase import ROUTE, STATUS, differences, shape


@pytest.fixture(scope="module")
def chaos_run(tmp_path_factory):
    """One run for the module (about 3 minutes here; kills and recoveries are slow on
    2 cores), its final phase feeding ClickHouse (chDB) and Parquet."""
    config = ChaosConfig(
        executions=2_000,
        seed=3,
        kills=3,
        pauses=1,
        wipe=True,
        broker_restart=False,
        produce_seconds=15.0,
        work_dir=tmp_path_factory.mktemp("chaos"),
        downstream=True,
    )
    chaos = Chaos(config)
    verdict, tally = chaos.run()
    print(table(verdict, tally, chaos.downstream))
    return chaos, verdict, tally


@pytest.mark.timeout(900)
def test_kills_rebalances_and_a_wipe_lose_and_double_nothing(chaos_run):
    _, verdict, tally = chaos_run
    assert tally.kills >= 3 and tally.rebalances >= 1 and tally.wipes == 1
    assert verdict.executions == 2_000
    assert (verdict.lost, verdict.duplicated, verdict.wrong) == (0, 0, 0), verdict.problems
    # the batch path delivers every record once, in order: no safety net fired
    assert (tally.safety_redelivered, tally.safety_skipped) == (0, 0)
    # the zombie fault ran, and the only workers that stopped by themselves are that
    # zombie, fenced: every other exit was a kill or a SIGTERM of the run
    assert tally.pauses == len(tally.zombies) == 1
    assert tally.unexplained_crashes() == [], tally.crashes
    assert len(tally.crashes) <= tally.fenced <= tally.pauses


@pytest.mark.timeout(900)
def test_readme_sql_counts_each_execution_once_after_faults_and_raw_does_not(chaos_run):
    chaos, _, tally = chaos_run
    report = chaos.downstream
    assert report is not None
    print(report.table())
    assert tally.kills >= 3 and tally.wipes == 1  # the faults happened before the feed
    merged, raw = report.merged, report.raw
    # every README query ran on what the merged topic holds, each with a check
    queries = [s for s in readme.statements(readme.CLICKHOUSE) if readme.kind(s) == "SELECT"]
    assert len(merged.answers) == len(queries) + len(readme.statements(readme.DUCKDB))
    assert merged.inserted == merged.records > report.counts.executions >= 1_900
    assert merged.files >= 2 and merged.rewritten == []
    # ... and gave the reference model's counts, per status and per route, exactly
    assert report.ok, report.problems
    # the same pipeline fed the raw topic double counts what the worker removes:
    # two rows per v1 execution, duplicates counted again, routes lost to null fields
    assert raw is not None and raw.inserted > 1.8 * report.counts.executions
    for answer in raw.answers:
        if shape(answer) in (STATUS, ROUTE) and "WHERE is_terminal GROUP BY" not in (
            answer.statement
        ):
            assert differences(answer, report.counts)[0] > 0, answer.statement
