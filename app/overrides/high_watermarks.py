"""The partitions' high watermarks: ListOffsets (latest) with read_uncommitted.

Upstream (aiokafka 0.14.0): in place of `AIOKafkaConsumer.end_offsets`
(aiokafka/consumer/consumer.py), whose request `Fetcher._proc_offset_request`
(aiokafka/consumer/fetcher.py) builds with the consumer's own isolation level.
The request is built as that method builds it (`OffsetRequest(-1,
isolation_level, topics)`, `OffsetResetStrategy.LATEST`, `READ_UNCOMMITTED`) and
sent through the consumer's client (`AIOKafkaConsumer._client`,
`AIOKafkaClient.send`, `cluster.leader_for_partition`), which aiokafka keeps
private and offers no public send for; the answer is read in the v1-v3 layout
(partition, error code, timestamp, offset), the versions `OffsetRequest` offers.

Why: the worker's consumer is read_committed, so its `end_offsets` are the last
stable offsets. A transaction left open on a partition (a worker killed
mid-commit, until its restart or the transaction timeout ends it) holds the last
stable offset at its first record, below records other producers committed after
it. The re-key barrier (app.engine.sweeper) needs the re-key partitions' ends
past every committed re-key record: read to the last stable offset only, the
re-key topic would pass for complete while a RUNNING committed behind the open
transaction is not readable yet, and a waiting terminal would go out alone.

Checked by tests/unit/test_upstream.py (the rows and tests of `high_watermarks`).
"""

from __future__ import annotations

import collections

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka import errors as Errors
from aiokafka.consumer.fetcher import READ_UNCOMMITTED, OffsetResetStrategy
from aiokafka.protocol.offset import OffsetRequest


async def high_watermarks(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """The offset after each partition's last record written, its transaction open,
    committed or aborted. On the consumer's own thread."""
    client = consumer._client  # noqa: SLF001 aiokafka offers no public send to a partition's leader
    by_node: dict = collections.defaultdict(lambda: collections.defaultdict(list))
    for tp in tps:
        node = client.cluster.leader_for_partition(tp)
        if node is None or node < 0:
            raise Errors.LeaderNotAvailableError(f"{tp.topic}[{tp.partition}]")
        by_node[node][tp.topic].append((tp.partition, OffsetResetStrategy.LATEST))
    ends = {}
    for node, topics in by_node.items():
        request = OffsetRequest(-1, READ_UNCOMMITTED, list(topics.items()))
        response = await client.send(node, request)
        for topic, partitions in response.topics:
            for partition, error_code, _timestamp, offset in partitions:  # v1-v3
                if error_code:
                    raise Errors.for_code(error_code)(f"{topic}[{partition}]")
                ends[TopicPartition(topic, partition)] = offset
    return ends
