"""The consumer's thread: the aiokafka consumer as the batch path needs it.

Upstream (faust-streaming 0.15.3, faust/transport/drivers/aiokafka.py,
`AIOKafkaConsumerThread`; aiokafka 0.14.0 underneath):
- `_create_worker_consumer`: extended; the aiokafka consumer's fetch wait
  (`AIOKafkaConsumer._fetch_max_wait_ms`) is set before `start()` hands it to the
  fetcher.
- `on_start`: extended; the group coordinator's `_do_heartbeat` is wrapped on the
  one instance, to note the time of the last accepted heartbeat, and replaced by
  app.overrides.static_heartbeat for a static member.
- `_highwaters`: replaced; the end offsets are asked of the broker.
- `_seek_wait`: copied, with the seek epoch of changelog partitions counted.
- `_fetch_records`: called as Faust's `getmany` calls it, with the fetcher's
  per-partition fetch size (`Fetcher._max_partition_fetch_bytes`) set first.
- New methods run on this thread for the consumer (app.overrides.consumer): the
  seek to the stable committed offsets, a fetch with its seek epochs and the
  re-key positions (`AIOKafkaConsumer._subscription`), end offsets, stable
  offsets, high watermarks (app.overrides.high_watermarks), a topic's partition
  count after a metadata refresh (`AIOKafkaConsumer._client`), and a rejoin
  (`GroupCoordinator.request_rejoin`).

Why:
- Faust builds the consumer with `fetch_max_wait_ms=1500`. aiokafka keeps one
  fetch in flight per broker, for the partitions whose buffer is empty: when those
  are the quiet re-key partitions, the broker holds that fetch for the full wait
  while the busy raw partitions, drained meanwhile, cannot be fetched, and the
  event loop waits for records most of the time. 20 ms keeps them fed.
- at_least_once must not produce after the worker missed its session (it may have
  lost its partitions); aiokafka keeps the time of the last accepted heartbeat in a
  local variable of its heartbeat task, out of reach.
- In a transaction, Faust answers `_highwaters` from the last fetch's last stable
  offset: None for a partition not fetched yet, i.e. right after every
  rebalance, and its recovery then takes the changelog as empty.
- The seek epochs tell the consumer which seek a fetch's records follow: records
  fetched before a seek, even if handed over after it, come from the positions it
  replaced, and are dropped.
- A restore reads changelog partitions alone: larger fetches (8 MB a partition,
  held RUNNINGs being about 800 bytes) make fewer, larger RocksDB write batches.

Checked by tests/unit/test_upstream.py (the rows and tests of `consumer_thread`).
"""

from __future__ import annotations

import asyncio
import functools
import time

from aiokafka import TopicPartition
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from app.kafka.kip447 import GroupMetadata
from app.overrides.high_watermarks import high_watermarks
from app.overrides.stable_offsets import fetch_stable_offsets
from app.overrides.static_heartbeat import static_heartbeat

FETCH_MAX_WAIT_MS = 20  # longest a fetch waits at the broker for data (see above)
# Bytes per partition and fetch while restoring (the processing's 1 MB otherwise): held
# RUNNINGs are about 800 bytes, and a 1 MB fetch of them only 1,300 records.
RESTORE_FETCH_BYTES = 8 * 1024**2


class MergerConsumerThread(AIOKafkaConsumerThread):
    last_heartbeat_ok = 0.0  # time.monotonic() of the group's last accepted heartbeat

    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        # set before start(), which hands it to the fetcher
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # noqa: SLF001 Faust passes 1500 and no setting
        return consumer

    async def on_start(self) -> None:
        await super().on_start()
        self.last_heartbeat_ok = time.monotonic()
        # at_least_once needs the time of the last accepted heartbeat: the
        # coordinator's heartbeat call is wrapped to note it
        coordinator = self._consumer._coordinator  # noqa: SLF001 the heartbeat lives there
        do_heartbeat = coordinator._do_heartbeat  # noqa: SLF001 wrapped, see the module's header
        if coordinator._group_instance_id is not None:  # noqa: SLF001 a static member
            do_heartbeat = functools.partial(static_heartbeat, coordinator)

        async def _noted_heartbeat():
            ok = await do_heartbeat()
            if ok:
                self.last_heartbeat_ok = time.monotonic()
            return ok

        coordinator._do_heartbeat = _noted_heartbeat  # noqa: SLF001 wrapped, see the module's header

    async def _highwaters(self, partitions):
        # ListOffsets with read_committed gives the last stable offset
        return await self._ensure_consumer().end_offsets(partitions)

    # Counts the seeks of source partitions. A fetch reads it when it returns, on this
    # thread, so each batch says which seek its records follow: records fetched before
    # a seek, even if handed over after it, come from the positions it replaced.
    seek_epoch = 0

    async def seek_to_stable_offsets(self, tps) -> tuple[dict, GroupMetadata, int]:
        """Seek to the stable committed offsets (or the start); positions, group, epoch."""
        consumer = self._ensure_consumer()
        atps = [TopicPartition(tp.topic, tp.partition) for tp in tps]
        committed = await fetch_stable_offsets(consumer, atps)
        unset = [tp for tp in atps if committed.get(tp) is None]
        starts = await consumer.beginning_offsets(unset) if unset else {}
        positions = {tp: starts[tp] if tp in starts else committed[tp] for tp in atps}
        # no await from here to the epoch: a fetch returning in between would carry
        # records of the new positions under the old epoch
        for tp, offset in positions.items():
            consumer.seek(tp, offset)  # drops what was fetched for tp before
        self.seek_epoch += 1
        self.last_heartbeat_ok = time.monotonic()  # just joined: a member now
        c = consumer._coordinator  # noqa: SLF001 the generation these partitions were assigned in
        instance_id = c._group_instance_id  # noqa: SLF001 aiokafka keeps it private
        group = GroupMetadata(c.group_id, c.generation, c.member_id, instance_id)
        return positions, group, self.seek_epoch

    changelog_epoch = 0  # the same, for the recovery's seeks of changelog partitions
    _fetch_bytes: int | None = None  # the consumer's own per-partition fetch size

    async def _seek_wait(self, consumer, partitions) -> None:
        # Faust's own, with the changelog epoch counted right after the seeks, before
        # anything awaits
        read_offset = self.consumer._read_offset  # noqa: SLF001 Faust's own copied body writes it
        for tp, offset in partitions.items():
            consumer.seek(tp, offset)
            if offset > 0:
                read_offset[tp] = offset
            elif tp in read_offset:
                del read_offset[tp]
        self.changelog_epoch += 1
        await asyncio.wait_for(
            asyncio.gather(*[consumer.position(tp) for tp in partitions]),
            timeout=self.app.conf.broker_request_timeout,
        )

    async def fetch_batch(
        self, active, timeout: float, rekey: str, max_records: int | None = None
    ) -> tuple[dict, int, int, dict]:
        """Faust's fetch (`_fetch_records`), the seek epochs its records follow (source
        partitions, changelog partitions), and the consumer's positions of the re-key
        partitions after it (past transaction markers, which no record shows)."""
        consumer = self._ensure_consumer()
        fetcher = consumer._fetcher  # noqa: SLF001 aiokafka reads the size there as it builds each request
        if self._fetch_bytes is None:
            self._fetch_bytes = fetcher._max_partition_fetch_bytes  # noqa: SLF001 see above
        fetcher._max_partition_fetch_bytes = (  # noqa: SLF001 see above
            RESTORE_FETCH_BYTES if max_records else self._fetch_bytes
        )
        records = await self._fetch_records(
            consumer,
            active,
            timeout=timeout,
            max_records=max_records or consumer._max_poll_records,  # noqa: SLF001 as Faust's getmany
        )
        # aiokafka keeps the consumed position per partition here; `position()` would
        # wait for an unset one
        assignment = consumer._subscription.subscription.assignment  # noqa: SLF001 no public read of a position that does not wait
        consumed = {}
        for tp in active:
            if tp.topic == rekey:
                state = assignment.state_value(tp) if assignment else None
                if state is not None and state.has_valid_position:
                    consumed[TopicPartition(tp.topic, tp.partition)] = state.position
        return records, self.seek_epoch, self.changelog_epoch, consumed

    def request_rejoin(self) -> None:
        """Ask the group coordinator for a rebalance (on this thread)."""
        self._ensure_consumer()._coordinator.request_rejoin()  # noqa: SLF001 aiokafka offers no public rejoin

    async def end_offsets(self, tps) -> dict:
        return await self._ensure_consumer().end_offsets(
            [TopicPartition(tp.topic, tp.partition) for tp in tps]
        )

    async def stable_offsets(self, tps) -> dict:
        """The group's committed offsets of any partitions, once stable."""
        return await fetch_stable_offsets(
            self._ensure_consumer(), [TopicPartition(tp.topic, tp.partition) for tp in tps]
        )

    async def high_watermarks(self, tps) -> dict:
        """The offset after each partition's last record, whatever its transaction."""
        return await high_watermarks(
            self._ensure_consumer(), [TopicPartition(tp.topic, tp.partition) for tp in tps]
        )

    async def partition_count(self, topic: str) -> int:
        """The topic's partition count after a metadata refresh. The refresh updates the
        consumer's cluster metadata: on the group's leader, a grown topic starts the
        rebalance that assigns its new partitions at once."""
        client = self._ensure_consumer()._client  # noqa: SLF001 no public metadata refresh
        await client.force_metadata_update()
        return len(client.cluster.partitions_for_topic(topic) or ())
