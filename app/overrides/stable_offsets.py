"""The group's committed offsets read with OffsetFetch v7 and `require_stable` (KIP-447).

Upstream (aiokafka 0.14.0): in place of `AIOKafkaConsumer.committed` /
`GroupCoordinator.fetch_committed_offsets` (aiokafka/consumer/consumer.py,
aiokafka/consumer/group_coordinator.py), which send OffsetFetch without
`require_stable`. The request goes through the consumer's group coordinator
(`AIOKafkaConsumer._coordinator`, `GroupCoordinator._send_req`), which aiokafka
keeps private and offers no public send for; its retry on a lost coordinator
uses `ensure_coordinator_known` and `coordinator_dead`.

Why: while the previous owner's transaction holding offsets is still being
completed, a plain OffsetFetch answers with the offset before it: the new owner
then reads and handles the transaction's records a second time. With
`require_stable` the coordinator answers UNSTABLE_OFFSET_COMMIT until the
transaction is complete, and this waits.

Checked by tests/unit/test_upstream.py (the rows and tests of `stable_offsets`).
"""

from __future__ import annotations

import asyncio
import collections
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka import errors as Errors

from app.kafka import kip447

log = logging.getLogger(__name__)

_RETRIABLE_GROUP_ERRORS = {
    Errors.GroupLoadInProgressError.errno,
    Errors.GroupCoordinatorNotAvailableError.errno,
    Errors.NotCoordinatorForGroupError.errno,
}


async def fetch_stable_offsets(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], timeout: float = 60.0
) -> dict[TopicPartition, int | None]:
    """The group's committed offsets, once no transaction holding offsets is completing.

    On the consumer's own thread.
    """
    coordinator = consumer._coordinator  # noqa: SLF001 aiokafka offers no public send to the group coordinator
    by_topic = collections.defaultdict(list)
    for tp in tps:
        by_topic[tp.topic].append(tp.partition)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    waits = 0
    while True:
        await coordinator.ensure_coordinator_known()
        request = kip447.StableOffsetFetchRequest(coordinator.group_id, dict(by_topic))
        try:
            response = await coordinator._send_req(request)  # noqa: SLF001 the coordinator's own send (OffsetFetch v7)
        except Errors.KafkaError as exc:
            if not exc.retriable or loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)  # retry backoff
            continue
        group_error, rows = kip447.offset_fetch_results(response)
        codes = {code for *_, code in rows} | {group_error}
        if codes <= {0}:
            if waits:
                log.info("stable offsets after %d waits for completing transactions", waits)
            return {TopicPartition(t, p): (o if o >= 0 else None) for t, p, o, _ in rows}
        retriable = codes - {0} <= _RETRIABLE_GROUP_ERRORS | {kip447.UNSTABLE_OFFSET_COMMIT}
        if not retriable or loop.time() > deadline:
            raise Errors.for_code(max(codes))(f"offset fetch for {sorted(by_topic)}: {codes}")
        if codes & {Errors.NotCoordinatorForGroupError.errno}:
            coordinator.coordinator_dead()
        waits += 1
        await asyncio.sleep(0.05)  # the previous owner's transaction is completing
