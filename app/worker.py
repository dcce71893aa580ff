"""The Faust application: topics, the held-state table, the agent and the sweep timer.

Thin glue: every decision is made by `app.merge` through `app.processor`.
"""

from __future__ import annotations

import logging

import faust
from faust.web import Request, Response, View

from . import probes
from .config import Settings
from .merge import Rules
from .outbox import Outbox
from .processor import Processor
from .registry import AgentRegistry
from .statestore import StateStore
from .topics import Layout, rekey_topic_name
from .transactions import MergerTransactionManager, MergerTransport

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 1.0  # seconds between stale/expiry sweeps of each owned partition
RAW = "raw"

# The hot path's batching, chosen with `make bench` (README, "Performance"); the
# batch size, linger and compression are settings (app.config).
BATCH_WITHIN = 0.01  # seconds a partial batch waits for more records
PRODUCER_BATCH_BYTES = 256 * 1024  # per-partition produce batch
# RocksDB per partition of the held table: small memtables and cache keep the
# worker's memory bounded however many executions it holds (Faust's defaults
# are 64 MB x 3 memtables and a 2 GB cache per partition).
ROCKSDB_OPTIONS = {
    "write_buffer_size": 8 * 1024**2,
    "max_write_buffer_number": 2,
    "target_file_size_base": 16 * 1024**2,
    "block_cache_size": 8 * 1024**2,
    "block_cache_compressed_size": 0,
}


class MergerApp(faust.App):
    """faust.App with our transaction manager (see app.transactions)."""

    registry: AgentRegistry | None = None

    def _new_transport(self):
        return MergerTransport(self.conf.broker_consumer, self)

    async def on_stop(self) -> None:
        await super().on_stop()  # stops the consumer (committing what was handled) first
        if self.registry is not None:
            await self.registry.stop()


def create_app(settings: Settings, layout: Layout) -> faust.App:
    partitions = layout.raw_partitions
    app = MergerApp(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap_servers}",
        store="rocksdb://",
        datadir=str(settings.state_dir),
        processing_guarantee=settings.processing_guarantee,
        # CAMELEER_WEB_PORT=0: no web server (Faust's settings refuse port 0)
        web_enabled=settings.web_port != 0,
        **({"web_port": settings.web_port} if settings.web_port else {}),
        web_host="0.0.0.0",
        topic_partitions=partitions,
        topic_replication_factor=1,
        key_serializer=RAW,
        value_serializer=RAW,
        consumer_auto_offset_reset="earliest",
        table_cleanup_interval=3600.0,
        producer_acks=-1,
        producer_linger=settings.linger_ms / 1000.0,
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        producer_compression_type=None if settings.compression == "none" else settings.compression,
        # A read_committed reader sees a record when its transaction commits: the
        # commit interval bounds the latency from below (Faust's default: 2.8 s).
        broker_commit_interval=settings.commit_interval,
        # A killed worker's partitions move after 10 s, not Faust's default 60 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        loghandlers=[],
    )

    def topic(*names: str, **kw):
        return app.topic(*names, key_serializer=RAW, value_serializer=RAW, **kw)

    rekey_name = rekey_topic_name(settings)
    sources = topic(settings.raw_topic, rekey_name, partitions=partitions)
    held = app.Table(
        "held",
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
        options={"driver": "rocksdict", **ROCKSDB_OPTIONS},
    )
    store = StateStore(held)
    MergerTransactionManager.store = store
    MergerTransactionManager.source_topics = frozenset({settings.raw_topic, rekey_name})
    registry = AgentRegistry(
        settings.bootstrap_servers, settings.agents_topic, layout.agents_partitions
    )
    rules = Rules(
        stale_after_ms=int(settings.stale_after * 1000),
        dedupe_window_ms=int(settings.dedupe_window * 1000),
        max_record_bytes=settings.max_record_bytes,
        held_retention_ms=int(settings.held_retention * 1000),
    )
    for name in (settings.output_topic, settings.dlq_topic):
        topic(name)  # declared, so Faust knows them (sends go straight to aiokafka)
    processor = Processor(
        rules,
        store,
        Outbox(app, transactional=settings.exactly_once),
        output_topic=settings.output_topic,
        dlq_topic=settings.dlq_topic,
        rekey_topic=rekey_name,
        registry=registry,
        partitions=partitions,
    )
    MergerTransactionManager.handled = processor.last_offsets
    MergerTransactionManager.outbox = processor.outbox

    if not settings.exactly_once:
        # Faust tells its transaction manager about revocations only in exactly_once;
        # at_least_once commits what was handled before giving partitions up too.
        @app.on_partitions_revoked.connect
        async def _commit_before_revoke(sender, revoked, **kwargs) -> None:
            await app.consumer.transactions.on_partitions_revoked(revoked)

    async def committed_offset(tp) -> int | None:
        # asked of the broker, on the consumer's own thread (aiokafka lives there)
        thread = app.consumer._thread
        consumer = thread._ensure_consumer()
        return await thread.call_thread(consumer.committed, tp)

    async def first_record_at(tp, start: int) -> int | None:
        isolation = "read_committed" if settings.exactly_once else "read_uncommitted"
        return await probes.first_record_at(settings.bootstrap_servers, isolation, tp, start)

    processor.committed_offset = committed_offset
    processor.first_record_at = first_record_at
    app.processor = processor  # for views and tests
    app.registry = registry

    @app.task(on_leader=False)
    async def _start_registry() -> None:
        await registry.start()

    @app.agent(sources, name="merge")
    async def merge_records(stream):
        await registry.ready.wait()  # a v2 agent's records must not be read as v1
        async for events in stream.take_events(settings.batch_max, within=BATCH_WITHIN):
            await processor.handle_batch([event.message for event in events])

    def caught_up(tp) -> bool:
        # at_least_once: a partition that changed hands may hold state older than
        # records already emitted; sweeping it before re-reading those records
        # could emit a RUNNING after its terminal. Exactly-once state is exact.
        if settings.exactly_once:
            return True
        high = app.consumer.highwater(tp)
        if high is None:
            return False
        # a partition with nothing new since its committed offset is caught up at once
        handled_to = processor.last_offsets.get(tp, -1) + 1
        return max(handled_to, app.consumer.resume_offsets.get(tp, 0)) >= high

    @app.timer(interval=SWEEP_INTERVAL)
    async def sweep() -> None:
        if app.rebalancing or not app.tables.recovery.completed.is_set():
            return
        actives = app.assignor.assigned_actives()
        for tp in actives:
            if tp.topic != settings.raw_topic:
                continue
            rekey_tp = tp._replace(topic=rekey_name)
            if caught_up(tp) and caught_up(rekey_tp):
                await processor.sweep(tp.partition)
        await app.consumer.transactions.commit_dirty()
        processor.counts["sweep_rounds"] += 1

    @app.page("/stats")
    class Stats(View):
        async def get(self, request: Request) -> Response:
            return self.json({"counts": dict(processor.counts), "agents": len(registry.versions)})

    return app
