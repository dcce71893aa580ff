"""Faust's changelog queue keeps what it holds when the flow resumes
(app.overrides.changelog_queue).

Faust empties the queue at every `flow_control.resume()`. After a recovery has
sought and resumed the standby partitions, it resumes the flow once more: the
standby records queued in between were past the consumer's position, nothing
read them again, and the standby's RocksDB would go on past the gap.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from mode.utils.queues import FlowControlEvent, ThrowableQueue

from app.overrides.changelog_queue import keep_changelog_queue_on_resume


def faust_like_app() -> SimpleNamespace:
    """The two objects of faust.App involved, built as faust.App builds them."""
    flow = FlowControlEvent(initially_suspended=False)
    queue = ThrowableQueue(maxsize=10, flow_control=flow, clear_on_resume=True)
    return SimpleNamespace(flow_control=flow, tables=SimpleNamespace(changelog_queue=queue))


def queued(queue: ThrowableQueue) -> list:
    return list(queue._queue)


def test_faust_alone_drops_the_queued_records_on_resume():
    # the behaviour the fix is for: if this stops failing, Faust changed
    app = faust_like_app()
    for offset in (120, 121, 122):
        app.tables.changelog_queue.put_nowait(offset)
    app.flow_control.resume()
    assert queued(app.tables.changelog_queue) == []


def test_records_queued_while_the_flow_runs_survive_a_resume():
    app = faust_like_app()
    keep_changelog_queue_on_resume(app)
    for offset in (120, 121, 122):
        app.tables.changelog_queue.put_nowait(offset)
    app.flow_control.resume()  # recovery.on_recovery_completed, standbys already flowing
    assert queued(app.tables.changelog_queue) == [120, 121, 122]


def test_a_rebalance_still_clears_the_queue():
    # revoke: Faust suspends the flow, then clears; the next recovery seeks back
    app = faust_like_app()
    keep_changelog_queue_on_resume(app)
    app.tables.changelog_queue.put_nowait(120)
    app.flow_control.suspend()
    app.flow_control.clear()
    assert queued(app.tables.changelog_queue) == []
    app.flow_control.resume()
    app.tables.changelog_queue.put_nowait(130)
    assert asyncio.run(app.tables.changelog_queue.get()) == 130
