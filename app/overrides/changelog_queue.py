"""Faust's changelog queue keeps what it holds when the flow resumes; a rebalance clears it.

Upstream (faust-streaming 0.15.3, mode-streaming 0.7.1): replaces `clear` of
the one changelog queue instance, `TableManager.changelog_queue`
(faust/tables/manager.py, a `ThrowableQueue` made with `clear_on_resume=True`).
`FlowControlEvent.resume()` (mode/utils/queues.py) calls `clear()` of every
queue made with `clear_on_resume`; `FlowControlEvent.is_active()` tells a resume
from a rebalance.

Why: Faust empties its changelog queue at every `flow_control.resume()`, also in
`Recovery.on_recovery_completed` (faust/tables/recovery.py), after the standby
partitions were sought and resumed. The records queued by then are past the
consumer's position and nothing seeks back: the standby goes on past the gap and
persists an offset beyond a record it never applied.

A rebalance (revoke, stop) suspends the flow and then clears, and the recovery
that follows seeks every changelog partition back to what was applied: that
clear stays. `resume()` marks the flow active before it clears: that one goes.
The records kept then are standby records: an active partition is read to the
end offsets of its recovery and paused before, and nothing lies past them (the
previous owner committed before revoking; a zombie stops producing).

The worker's changelog records no longer pass through this queue
(app.overrides.changelog_restore); the guard stays for anything Faust itself
still enqueues.

Checked by tests/unit/test_upstream.py (the rows and tests of `changelog_queue`) and
tests/unit/test_changelog_queue.py (the behaviour, on mode's own objects).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def keep_changelog_queue_on_resume(app) -> None:
    """Make `app.tables.changelog_queue.clear()` a no-op while the flow is active."""
    queue = app.tables.changelog_queue  # Faust's own instance (a cached property)
    flow = app.flow_control
    clear = queue.clear

    def clear_unless_resuming() -> None:
        if not flow.is_active():
            clear()
        elif queue.qsize():
            log.info("flow resumed: %d changelog records kept in the queue", queue.qsize())

    queue.clear = clear_unless_resuming  # FlowControlEvent.clear calls queue.clear()
