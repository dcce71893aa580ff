"""Faust's transaction manager, made inert: the engine's one producer makes the transactions.

Upstream (faust-streaming 0.15.3, faust/transport/consumer.py,
`TransactionManager`): replaces `on_rebalance(assigned, revoked,
newly_assigned)`, `on_partitions_revoked(revoked)`, `commit(offsets,
start_new_transaction)` and `send(...)`. Faust builds it through
`Transport.create_transaction_manager` (app.overrides.faust_app) when the
processing guarantee is exactly_once.

Why: Faust's exactly_once keeps one transactional producer and one transaction
per partition, fenced by transactional id. The engine keeps one producer and one
transaction per worker (one commit per interval instead of one per partition),
fenced by the group generation (KIP-447, app.overrides.eos_producer).

Checked by tests/unit/test_upstream.py (the rows and tests of `transaction_manager`).
"""

from __future__ import annotations

from faust.transport.consumer import TransactionManager


class MergerTransactionManager(TransactionManager):
    """Inert: the engine's one producer per worker makes the transactions."""

    async def on_rebalance(self, assigned, revoked, newly_assigned) -> None:
        return None  # Faust would start one transactional producer per partition

    async def on_partitions_revoked(self, revoked) -> None:
        return None  # the engine commits, via MergerConsumer.on_partitions_revoked

    async def commit(self, offsets, start_new_transaction: bool = True) -> bool:
        return False  # Faust's commit timer: commits are the engine's

    async def send(self, *args, **kwargs):
        raise RuntimeError("records go through app.engine, not Faust's transactions")
