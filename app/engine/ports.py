"""What the engine needs of the world around it, and how it stops when it cannot go on.

`GroupPort` is the consumer group (app.overrides.consumer implements it),
`CommitWatch` is told of each commit (app.ops.metrics), `fatal` ends the process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Protocol

log = logging.getLogger(__name__)

EXIT_FATAL = 70


def fatal(what: str, exc: BaseException) -> None:
    """Stop the process at once, as a kill would, without committing anything.

    A record whose handling failed half-way has left part of its effects in the
    open transaction; a graceful stop would commit them. Exiting aborts that
    transaction (the worker's next start, or the transaction timeout, ends it)
    and the next owner of the partitions handles the records again. The
    orchestrator restarts us.
    """
    log.critical("%s: %r; exiting without commit", what, exc, exc_info=exc)
    logging.shutdown()
    os._exit(EXIT_FATAL)


def is_fencing(exc: BaseException) -> bool:
    """Refused offsets (KIP-447), or a newer producer with our transactional id."""
    return type(exc).__name__ in ("ZombieFenced", "ProducerFenced", "InvalidProducerEpoch")


class Fatal(Protocol):
    def __call__(self, what: str, exc: BaseException) -> None:
        """Never returns (`fatal`); a test's stand-in raises."""


class CommitWatch(Protocol):
    """Told of each commit's end (app.ops.metrics): once per commit, never per record."""

    def committed(self, seconds: float, offsets: dict, counts: dict, published_ms: list) -> None:
        """`counts`: the counters as the commit was cut; `published_ms`: Kafka timestamps of
        the terminal events whose records the commit published."""

    def commit_failed(self) -> None: ...


class GroupPort(Protocol):
    """What the engine needs of the group's consumer (app.overrides.consumer.MergerConsumer)."""

    async def commit_offsets(self, offsets: dict) -> bool: ...

    async def end_offsets(self, tps: Iterable) -> dict: ...

    async def stable_offsets(self, tps: Iterable) -> dict: ...

    async def high_watermarks(self, tps: Iterable) -> dict:
        """The offset after each partition's last record, whatever its transaction."""

    async def partition_count(self, topic: str) -> int:
        """The topic's partition count now (fresh metadata)."""

    def seconds_since_heartbeat(self) -> float: ...
