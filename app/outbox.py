"""Where the processor's records go: the source partition's transaction, or a plain producer.

exactly_once: every record a source partition's records cause (output, DLQ,
re-key) goes into that partition's open transaction, straight to its aiokafka
producer; the commit waits for all of them (app.transactions).

at_least_once: Faust's producer, no transaction; the commit `flush`es every
record before the changelog and the offsets are written (app.transactions), so
a crash repeats records but never loses one.
"""

from __future__ import annotations

import asyncio


class Outbox:
    def __init__(self, app, transactional: bool) -> None:
        self.app = app
        self.transactional = transactional
        self._unflushed: list[asyncio.Future] = []
        self._transactions = None

    async def send(
        self,
        source: int,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        *,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        if self.transactional:
            if self._transactions is None:  # the consumer exists once the app runs
                self._transactions = self.app.consumer.transactions
            await self._transactions.send_record(
                source, topic, key, value, partition, headers, timestamp_ms
            )
            return
        timestamp = None if timestamp_ms is None else timestamp_ms / 1000.0
        fut = await self.app.producer.send(topic, key, value, partition, timestamp, headers)
        self._unflushed.append(fut)

    async def flush(self) -> None:
        """at_least_once: every record sent so far is written (raises if one was not)."""
        if self._unflushed:
            sent, self._unflushed = self._unflushed, []
            await asyncio.gather(*sent)
