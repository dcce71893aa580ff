"""The Faust application, wired: topics, the held-state table, the engine, timers, views.

Thin glue. Records never pass through a Faust agent or stream: the consumer
hands whole fetches to `app.engine.engine.Engine` (app.overrides: what of Faust
is replaced, and why; docs/upgrading.md). Faust keeps the worker and its CLI, the
web server, the timers, the changelog-backed table and its recovery, and group
membership and assignment.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from pathlib import Path

import faust
from aiokafka import AIOKafkaProducer
from faust.web import Request, Response, View

from app.core.merge import Rules
from app.engine.checkpoint import Reason
from app.engine.engine import Engine
from app.engine.processor import Destinations, Processor
from app.kafka import probes
from app.kafka.registry import AgentRegistry
from app.ops import web
from app.ops.config import Settings
from app.ops.logs import logging_config
from app.ops.metrics import Metrics
from app.ops.topics import Layout, rekey_topic_name
from app.overrides.changelog_restore import derive_on_recovery
from app.overrides.eos_producer import EosProducer
from app.overrides.faust_app import MergerApp
from app.state.inflight import InFlight
from app.state.statestore import StateStore

log = logging.getLogger(__name__)

RAW = "raw"
PRODUCER_BATCH_BYTES = 512 * 1024  # per-partition produce batch (bench: docs/performance.md)
MAX_REQUEST_BYTES = 8 * 1024 * 1024  # a produce request holds several batches
# How soon the group's leader sees partitions added to the raw topic (its metadata
# refresh), and starts the rebalance that assigns them. Records on a new partition
# wait that long at most; a held RUNNING is not flushed as stale before then
# unless CAMELEER_STALE_AFTER is shorter (docs/growing-topics.md).
METADATA_MAX_AGE_MS = 30_000
HEARTBEAT_INTERVAL_MAX = 2.0
REQUEST_TIMEOUT = 90.0  # Faust's default; never shorter than the session timeout
# A dead worker's open transaction blocks read_committed readers of the partitions
# it wrote until the broker aborts it (when the same worker restarts, at once).
TRANSACTION_TIMEOUT_MS = 10_000
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


def worker_id(state_dir: Path) -> str:
    """This worker's lasting name, kept beside its state.

    It names the worker's transactional id: a restarted worker (same state
    folder) fences its previous incarnation and aborts that one's open
    transaction at once, instead of readers waiting for the transaction timeout.
    """
    path = state_dir / "worker-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        name = uuid.uuid4().hex[:12]
        path.write_text(name + "\n")
        return name


def transactional_id(settings: Settings) -> str:
    """The worker's transactional id: its instance id when it has one, else its worker id.

    A static member's instance id is unique among the live members (the group
    coordinator fences an older member with the same one), and it outlives a wiped
    state folder: a restarted instance fences its previous incarnation's producer,
    and the broker aborts that one's open transaction at once, whatever became of
    the state folder.
    """
    name = settings.instance_id or worker_id(settings.state_dir)
    return f"{settings.app_id}-{name}"


def heartbeat_interval(session_timeout: float) -> float:
    """Seconds between heartbeats: a third of the session timeout at most (Kafka's
    advice), and 2 s at most: the heartbeat is how a member learns of a rebalance."""
    return min(HEARTBEAT_INTERVAL_MAX, session_timeout / 3)


def producer_factory(settings: Settings, transactional_id: str):
    common = dict(
        **settings.connection.aiokafka_kwargs(),
        acks="all",
        enable_idempotence=True,
        max_batch_size=PRODUCER_BATCH_BYTES,
        max_request_size=MAX_REQUEST_BYTES,
        compression_type=None if settings.compression == "none" else settings.compression,
    )

    def new_producer():
        if settings.exactly_once:
            return EosProducer(
                transactional_id=transactional_id,
                transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
                **common,
            )
        return AIOKafkaProducer(**common)

    return new_producer


def create_app(settings: Settings, layout: Layout) -> faust.App:
    partitions = layout.state_partitions  # the held table's, fixed (app.ops.topics)
    rekey_name = rekey_topic_name(settings)
    counts: Counter[str] = Counter()
    registry = AgentRegistry(settings.connection, settings.agents_topic, layout.agents_partitions)
    rules = Rules(
        stale_after_ms=int(settings.stale_after * 1000),
        dedupe_window_ms=int(settings.dedupe_window * 1000),
        max_record_bytes=settings.max_record_bytes,
        held_retention_ms=int(settings.held_retention * 1000),
        rekey_grace_ms=int(settings.rekey_grace * 1000),
    )
    destinations = Destinations(
        output_topic=settings.output_topic,
        dlq_topic=settings.dlq_topic,
        rekey_topic=rekey_name,
        partitions=partitions,
        dlq_partitions=layout.dlq_partitions,
        output_partitions=layout.output_partitions,
    )

    async def first_record_at(tp, start: int) -> int | None:
        isolation = "read_committed" if settings.exactly_once else "read_uncommitted"
        return await probes.first_record_at(settings.connection, isolation, tp, start)

    # The app and the engine need each other: the table lives in the app, the
    # app's consumer feeds the engine. The store is bound once the table exists.
    store = StateStore()
    processor = Processor(rules, store, destinations, registry.versions, counts)
    engine = Engine(
        processor,
        store,
        counts,
        exactly_once=settings.exactly_once,
        raw_topic=settings.raw_topic,
        rekey_topic=rekey_name,
        raw_partitions=layout.raw_partitions,
        state_partitions=partitions,
        new_producer=producer_factory(settings, transactional_id(settings)),
        registry_ready=registry.ready,
        first_record_at=first_record_at,
        session_timeout_s=settings.session_timeout,
    )
    app = MergerApp(
        settings.app_id,
        engine=engine,
        registry=registry,
        connection=settings.connection,
        **settings.connection.faust_kwargs(),  # broker URLs and credentials
        store="rocksdb://",
        datadir=str(settings.state_dir),
        processing_guarantee=settings.processing_guarantee,
        # CAMELEER_WEB_PORT=0: no web server (Faust's settings refuse port 0)
        web_enabled=settings.web_port != 0,
        **({"web_port": settings.web_port} if settings.web_port else {}),
        web_bind=settings.web_host,  # where the endpoints listen
        web_host=settings.web_advertised_host,  # where other workers reach them (routing)
        topic_partitions=partitions,
        # the changelog and the assignor's leader topic, which Faust creates itself:
        # replicated like the worker's own topics (app.ops.topics)
        topic_replication_factor=layout.replication,
        key_serializer=RAW,
        value_serializer=RAW,
        consumer_auto_offset_reset="earliest",
        consumer_metadata_max_age_ms=METADATA_MAX_AGE_MS,
        broker_max_poll_records=settings.batch_max,
        consumer_max_fetch_size=1024**2,  # per partition and fetch (memory: one per partition)
        table_cleanup_interval=3600.0,
        # One standby replica per partition: a worker taking a partition over from a
        # dead one starts from its standby's RocksDB instead of the whole changelog.
        # Faust empties its changelog queue whenever the flow resumes, which leaves
        # a standby past changelog records it never applied
        # (app.overrides.changelog_queue keeps the queue).
        table_standby_replicas=1,
        # A killed worker's partitions move after the session timeout (10 s by
        # default, not Faust's 60 s); with an instance id, a worker restarted within
        # it takes its own partitions back without a rebalance (static membership).
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=heartbeat_interval(settings.session_timeout),
        broker_request_timeout=max(REQUEST_TIMEOUT, settings.session_timeout),
        consumer_group_instance_id=settings.instance_id,
        loghandlers=[],
        logging_config=logging_config(settings.log_format, settings.log_level),
    )

    def topic(*names: str, **kw):
        return app.topic(*names, key_serializer=RAW, value_serializer=RAW, **kw)

    # Subscribed through Faust (assignment co-partitions them with the table:
    # MergerAssignor), read by the engine: nothing is ever delivered to these channels.
    app.topics.add(topic(settings.raw_topic))
    app.topics.add(topic(rekey_name, partitions=partitions))
    held = app.Table(
        "held",
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
        options={"driver": "rocksdict", **ROCKSDB_OPTIONS},
    )
    store.bind(held)
    derive_on_recovery(held.data)  # the local indexes follow the replay
    app.engine = engine  # for views and tests
    app.registry = registry
    app.connection = settings.connection  # for the probes in app.kafka.probes

    # The commit timer's tick; the engine decides what the commit covers, as it does
    # for a revocation and the stop (app.engine.engine, `_commit`). A read_committed
    # reader sees a record when its transaction commits: the commit interval bounds
    # the latency from below.
    @app.timer(interval=settings.commit_interval)
    async def commit() -> None:
        await engine.commit(Reason.INTERVAL)

    @app.timer(interval=settings.sweep_interval)
    async def sweep() -> None:
        await engine.sweep()

    inflight = InFlight(
        store,
        lambda: set(engine.owned_state),
        registry.versions,
    )
    metrics = Metrics(engine, inflight)
    engine.watch = metrics
    app.metrics = metrics  # for tests
    web.register(
        app,
        engine=engine,
        registry=registry,
        inflight=inflight,
        metrics=metrics,
        held=held,
        partitions=partitions,
    )

    @app.page("/stats")
    class Stats(View):
        async def get(self, request: Request) -> Response:
            return self.json(
                {
                    "counts": dict(counts),
                    "seconds": {k: round(v, 3) for k, v in engine.seconds.items()},
                    "agents": len(registry.versions),
                    # standby partitions of the held table: the last changelog offset read
                    "standbys": {
                        str(tp.partition): offset
                        for tp, offset in app.tables.recovery.standby_offsets.items()
                    },
                }
            )

    return app
