"""at_least_once: is this worker still a member of its group, before it produces?

at_least_once has no transaction to fence a zombie. A worker whose group heard
nothing from it for a session timeout (the consumer's, CAMELEER_SESSION_TIMEOUT)
may have lost its partitions, and must not produce what it handled before: a
stale RUNNING after the new owner's terminal. With exactly_once the transaction
is fenced instead, and the check passes.
"""

from __future__ import annotations

from app.engine.ports import Fatal, GroupPort


class Membership:
    def __init__(self, exactly_once: bool, session_timeout_s: float, fatal: Fatal) -> None:
        self.exactly_once = exactly_once
        self.session_timeout_s = session_timeout_s
        self.port: GroupPort | None = None  # the group's consumer, once attached
        self._fatal = fatal

    def check(self) -> None:
        """Exit (`fatal`) when the group has accepted no heartbeat for a session timeout."""
        if self.exactly_once or self.port is None:
            return
        silent = self.port.seconds_since_heartbeat()
        if silent > self.session_timeout_s:
            self._fatal(
                "fenced: this worker may no longer own its partitions",
                RuntimeError(
                    f"no heartbeat accepted for {silent:.1f} s (session timeout "
                    f"{self.session_timeout_s:g} s): nothing handled since is produced"
                ),
            )
