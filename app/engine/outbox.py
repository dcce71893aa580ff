"""Records bound for Kafka, appended to one open batch per topic-partition and sent whole.

The processor appends records synchronously (`add`); whole batches go to the
producer with aiokafka's batch API (`send_batch`), one coroutine per batch, not
per record. The engine sends full batches after each fetched batch and every
open one at commit, then waits for all of them (`delivered`): a commit never
goes past a record the broker did not take.
"""

from __future__ import annotations

import asyncio

TP = tuple[str, int]


class RecordTooLarge(ValueError):
    """A single record larger than the producer's batch: raise max.batch.size."""


class Outbox:
    def __init__(self, producer) -> None:
        self._producer = producer
        self._open: dict[TP, object] = {}  # (topic, partition) -> aiokafka BatchBuilder
        self._full: list[tuple[TP, object]] = []
        self._sent: list[tuple[TP, asyncio.Future, int]] = []  # batch future, record count
        self.records = 0  # appended since the last `delivered`

    def add(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        if headers is None:
            headers = []  # aiokafka's record builder takes a list, nothing else
        tp = (topic, partition)
        builder = self._open.get(tp)
        if builder is None:
            builder = self._open[tp] = self._producer.create_batch()
        if builder.append(timestamp=timestamp_ms, key=key, value=value, headers=headers) is None:
            self._full.append((tp, builder))
            builder = self._open[tp] = self._producer.create_batch()
            if (
                builder.append(timestamp=timestamp_ms, key=key, value=value, headers=headers)
                is None
            ):
                raise RecordTooLarge(f"a record for {topic}[{partition}] exceeds the batch size")
        self.records += 1

    @property
    def has_full(self) -> bool:
        return bool(self._full)

    @property
    def full_bytes(self) -> int:
        return sum(builder.size() for _, builder in self._full)

    @property
    def pending(self) -> bool:
        """Records appended and not yet delivered."""
        return bool(self._open or self._full or self._sent)

    async def send_full(self) -> None:
        """Hand the batches that filled up to the producer."""
        full, self._full = self._full, []
        for (topic, partition), builder in full:
            await self._send(topic, partition, builder)

    async def flush(self) -> None:
        """Hand every batch, full or not, to the producer."""
        self._full.extend(self._open.items())
        self._open = {}
        await self.send_full()

    async def _send(self, topic: str, partition: int, builder) -> None:
        count = builder.record_count()
        if count:
            # closed: the producer sends it at once instead of lingering for more
            builder.close()
            fut = await self._producer.send_batch(builder, topic, partition=partition)
            self._sent.append(((topic, partition), fut, count))

    async def delivered(self) -> dict[TP, int]:
        """Wait until the broker took every batch sent; raises if one failed.

        Returns the offset of the last record written to each topic-partition.
        """
        sent, self._sent = self._sent, []
        self.records = 0
        if not sent:
            return {}
        results = await asyncio.gather(*(fut for _, fut, _ in sent))
        last: dict[TP, int] = {}
        for (tp, _, count), meta in zip(sent, results, strict=True):
            if meta is not None and meta.offset is not None and meta.offset >= 0:
                last[tp] = max(last.get(tp, -1), meta.offset + count - 1)
        return last

    def discard(self) -> None:
        """Forget what was not sent (its transaction is being aborted)."""
        self._open.clear()
        self._full.clear()
        self._sent.clear()
        self.records = 0
