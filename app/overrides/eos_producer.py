"""The worker's transactional producer: offsets committed with the group generation.

Upstream (aiokafka 0.14.0):
- `AIOKafkaProducer.__init__` (aiokafka/producer/producer.py) builds its `Sender`
  with no way to choose the class: `EosProducer` builds it again, with the same
  arguments read back from the first one (`Sender.__init__`,
  aiokafka/producer/sender.py).
- `Sender._do_txn_offset_commit` (aiokafka/producer/sender.py) is copied, with
  another handler.
- `TxnOffsetCommitHandler` (aiokafka/producer/sender.py) is subclassed: it sends
  TxnOffsetCommit v3 (app.kafka.kip447) instead of v0.
- `TransactionManager.error_transaction` (aiokafka/producer/transaction_manager.py)
  is replaced, for a refused commit, by `_fail_abortable`, which writes the
  manager's private state (`_transition_to`, `_pending_txn_offsets`,
  `_transaction_waiter`).

Why: TxnOffsetCommit v0 carries the group id alone, so the coordinator accepts
the offsets of a member that has lost its partitions (a zombie) and both it and
the new owner publish the same records. v3 carries the generation and member id:
the coordinator refuses a zombie's offsets, and its transaction must then be
aborted. aiokafka's `error_transaction` forgets the partitions already added to
the transaction, so the abort that follows sends no EndTxn, the broker keeps the
transaction open, and the next commit makes the zombie's records visible.
`_fail_abortable` keeps them, so the abort aborts.

Checked by tests/unit/test_upstream.py (the rows and tests of `eos_producer`).
"""

from __future__ import annotations

import collections

from aiokafka import AIOKafkaProducer
from aiokafka import errors as Errors
from aiokafka.client import CoordinationType
from aiokafka.producer.sender import Sender, TxnOffsetCommitHandler
from aiokafka.producer.transaction_manager import TransactionState

from app.kafka import kip447
from app.kafka.kip447 import GroupMetadata


class ZombieFenced(Errors.KafkaError):
    """The group coordinator refused this worker's offsets: it no longer owns them."""


# Error codes that mean "not the member owning these partitions any more".
_FENCING = {
    Errors.IllegalGenerationError.errno,
    Errors.UnknownMemberIdError.errno,
    Errors.RebalanceInProgressError.errno,
    82,  # FENCED_INSTANCE_ID (static membership)
}


class _TxnOffsetCommitV3Handler(TxnOffsetCommitHandler):
    """aiokafka's handler, sending v3 and failing the transaction of a zombie."""

    def __init__(self, sender, offsets, group_id, group: GroupMetadata) -> None:
        super().__init__(sender, offsets, group_id)
        self._group = group

    def create_request(self):
        txn_manager = self._sender._txn_manager  # noqa: SLF001 aiokafka's handlers read it there
        by_topic = collections.defaultdict(list)
        for tp, offset in sorted(self._offsets.items()):
            by_topic[tp.topic].append((tp.partition, offset.offset, offset.metadata))
        return kip447.TxnOffsetCommitRequest(
            txn_manager.transactional_id,
            txn_manager.producer_id,
            txn_manager.producer_epoch,
            self._group,
            dict(by_topic),
        )

    def handle_response(self, resp):
        rows = kip447.txn_offset_commit_errors(resp)
        fenced = [(t, p, code) for t, p, code in rows if code in _FENCING]
        if fenced:
            topic, partition, code = fenced[0]
            _fail_abortable(
                self._sender._txn_manager,  # noqa: SLF001 aiokafka's handlers read it there
                ZombieFenced(
                    f"offsets of {topic}[{partition}] refused with "
                    f"{Errors.for_code(code).__name__}: generation "
                    f"{self._group.generation_id} of member {self._group.member_id} is over"
                ),
            )
            return None
        # everything else as aiokafka handles v0 responses: (topic, [(partition, error)])
        shaped = collections.defaultdict(list)
        for topic, partition, code in rows:
            shaped[topic].append((partition, code))
        return super().handle_response(_V0Shape(list(shaped.items())))


def _fail_abortable(txn_manager, exc: Exception) -> None:
    """Fail the transaction so that it can only be aborted, and abort really aborts.

    aiokafka's own `error_transaction` also clears the partitions already added to
    the transaction; `abort_transaction` then sends no EndTxn and the broker keeps
    the transaction open. Here the partitions are kept.
    """
    txn_manager._transition_to(TransactionState.ABORTABLE_ERROR)  # noqa: SLF001 no public way to fail a transaction but error_transaction
    for _, _, fut in txn_manager._pending_txn_offsets:  # noqa: SLF001 as error_transaction does
        if not fut.done():
            fut.set_exception(exc)
    txn_manager._pending_txn_offsets.clear()  # noqa: SLF001 as error_transaction does
    if not txn_manager._transaction_waiter.done():  # noqa: SLF001 as error_transaction does
        txn_manager._transaction_waiter.set_exception(exc)  # noqa: SLF001 as error_transaction does


class _V0Shape:
    def __init__(self, errors) -> None:
        self.errors = errors


class _Kip447Sender(Sender):
    group: GroupMetadata | None = None  # of the offsets being committed; set by EosProducer

    async def _do_txn_offset_commit(self, offsets, group_id):
        # aiokafka's own method (sender.py), with the v3 handler
        if not offsets:
            return
        try:
            node_id = await self._find_coordinator(CoordinationType.GROUP, group_id)
        except Errors.GroupAuthorizationFailedError as exc:
            self._txn_manager.error_transaction(exc)
            return
        handler = _TxnOffsetCommitV3Handler(self, offsets, group_id, self.group)
        await handler.do(node_id)


class EosProducer(AIOKafkaProducer):
    """A transactional producer whose offsets carry the group generation (KIP-447)."""

    def __init__(self, **config) -> None:
        super().__init__(**config)
        # aiokafka builds its Sender in __init__, with no way to choose the class:
        # rebuilt with the same arguments, the v3 handler being the only change.
        old = self._sender
        self._sender = _Kip447Sender(
            self.client,
            acks=old._acks,  # noqa: SLF001 the Sender's own arguments, read back
            txn_manager=self._txn_manager,
            retry_backoff_ms=int(old._retry_backoff * 1000),  # noqa: SLF001 the Sender's own arguments, read back
            message_accumulator=self._message_accumulator,
            request_timeout_ms=old._request_timeout_ms,  # noqa: SLF001 the Sender's own arguments, read back
        )

    async def send_offsets_to_transaction(self, offsets, group: GroupMetadata):
        self._sender.group = group
        await super().send_offsets_to_transaction(offsets, group.group_id)
