"""A small run of the chaos harness: kills, a rebalance and a wipe lose and double nothing."""

from __future__ import annotations

import pytest

from chaos.run import Chaos, ChaosConfig, table


@pytest.mark.timeout(900)  # about 3 minutes here; kills and recoveries are slow on 2 cores
def test_kills_rebalances_and_a_wipe_lose_and_double_nothing(tmp_path):
    config = ChaosConfig(
        executions=2_000,
        seed=3,
        kills=3,
        wipe=True,
        broker_restart=False,
        produce_seconds=15.0,
        work_dir=tmp_path,
    )
    verdict, tally = Chaos(config).run()
    print(table(verdict, tally))
    assert tally.kills >= 3 and tally.rebalances >= 1 and tally.wipes == 1
    assert verdict.executions == 2_000
    assert (verdict.lost, verdict.duplicated, verdict.wrong) == (0, 0, 0), verdict.problems
    # the batch path delivers every record once, in order: no safety net fired
    assert (tally.safety_redelivered, tally.safety_skipped) == (0, 0)
