"""The re-key barrier of a world with one raw partition and no re-key path.

A terminal that finds nothing held waits (`Pending`) until the shell knows the
re-key topic is complete up to when it was read. With one partition and nothing
re-keyed, that is known at once: the drivers of the pure tests let it go in the
same step, through the same sweep the worker runs (`safe_ms` = now).
"""

from __future__ import annotations

from collections.abc import Callable

from app.core import merge
from app.core.heldstate import state_key


def released(
    decision: merge.Decision,
    execution_id: str,
    stored: Callable[[bytes], bytes | None],
    rules: merge.Rules,
    now_ms: int,
) -> merge.Decision | None:
    """The sweep's decision for a terminal that `decision` left waiting, else None.

    Call it after `decision`'s writes are applied; `stored` reads the state by key.
    """
    if decision.counter != "terminal_waiting":
        return None
    state = stored(state_key(execution_id))
    return merge.sweep_entry(execution_id, now_ms, state, rules, now_ms, safe_ms=now_ms)
