"""The Faust application: topics, the held-state table, the agent and the sweep timer.

Thin glue: every decision is made by `app.merge` through `app.processor`.
"""

from __future__ import annotations

import logging

import faust
from faust.web import Request, Response, View

from .config import Settings
from .merge import Rules
from .processor import Processor, StateStore
from .registry import AgentRegistry

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 1.0  # seconds between stale/expiry sweeps of each owned partition
RAW = "raw"


def create_app(settings: Settings, partitions: int) -> faust.App:
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap_servers}",
        store="rocksdb://",
        datadir=str(settings.state_dir),
        processing_guarantee=settings.processing_guarantee,
        web_port=settings.web_port,
        web_host="0.0.0.0",
        topic_partitions=partitions,
        topic_replication_factor=1,
        key_serializer=RAW,
        value_serializer=RAW,
        consumer_auto_offset_reset="earliest",
        table_cleanup_interval=3600.0,
        producer_acks=-1,
        loghandlers=[],
    )

    raw_topic = app.topic(
        settings.raw_topic, key_serializer=RAW, value_serializer=RAW, partitions=partitions
    )
    output_topic = app.topic(settings.output_topic, key_serializer=RAW, value_serializer=RAW)
    dlq_topic = app.topic(settings.dlq_topic, key_serializer=RAW, value_serializer=RAW)
    held = app.Table(
        "held",
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
        options={"driver": "rocksdict"},
    )
    registry = AgentRegistry(settings.bootstrap_servers, settings.agents_topic)
    rules = Rules(
        stale_after_ms=int(settings.stale_after * 1000),
        dedupe_window_ms=int(settings.dedupe_window * 1000),
        max_record_bytes=settings.max_record_bytes,
    )
    processor = Processor(rules, StateStore(held), output_topic, dlq_topic, registry)
    app.processor = processor  # for views and tests

    @app.task(on_leader=False)
    async def _start_registry() -> None:
        await registry.start()

    @app.agent(raw_topic, name="merge-raw")
    async def merge_raw(stream):
        await registry.ready.wait()  # a v2 agent's records must not be read as v1
        async for event in stream.events():
            await processor.handle(event.message)

    @app.timer(interval=SWEEP_INTERVAL)
    async def sweep() -> None:
        if app.rebalancing or not app.tables.recovery.completed.is_set():
            return
        for tp in app.assignor.assigned_actives():
            if tp.topic == settings.raw_topic:
                await processor.sweep(tp.partition)

    @app.page("/stats")
    class Stats(View):
        async def get(self, request: Request) -> Response:
            return self.json({"counts": dict(processor.counts), "agents": len(registry.versions)})

    return app
