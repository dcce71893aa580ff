"""Agent registrations (agent_id -> protocol_version), read from the agents topic.

Every worker reads the whole compacted topic (all partitions, no group) into a
small dict; it is caught up before the worker takes raw records, and follows
new registrations while it runs.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from app.kafka.connection import Connection

log = logging.getLogger(__name__)


def parse_registration(value: bytes | None) -> tuple[str, int] | None:
    try:
        body = orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    agent, version = body.get("agent_id"), body.get("protocol_version")
    if isinstance(agent, str) and agent and type(version) is int and version in (1, 2):
        return agent, version
    return None


class AgentRegistry:
    def __init__(self, connection: Connection, topic: str, partitions: int) -> None:
        self.connection = connection
        self.topic = topic
        self.partitions = partitions
        self.versions: dict[str, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None
        self.ready = asyncio.Event()  # set once caught up (or given up on)

    def _record(self, key: bytes | None, value: bytes | None) -> None:
        parsed = parse_registration(value)
        if parsed is not None:
            self.versions[parsed[0]] = parsed[1]
        elif value is None and key is not None:  # tombstone: the agent is gone
            self.versions.pop(key.decode(errors="replace"), None)

    async def start(self, catch_up_timeout: float = 30.0) -> None:
        try:
            await self._catch_up(catch_up_timeout)
        finally:
            self.ready.set()

    async def _catch_up(self, catch_up_timeout: float) -> None:
        consumer = AIOKafkaConsumer(
            **self.connection.aiokafka_kwargs(),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        await consumer.start()
        self._consumer = consumer
        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        # the end offsets first: once the partitions are assigned, a fetch waits at the
        # broker for records (up to fetch_max_wait_ms, 500 ms, on a quiet topic), and
        # the broker answers a connection's requests in order
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + catch_up_timeout
        while await self._behind(consumer, ends):
            if loop.time() > deadline:
                log.warning("agent registry not caught up after %.0fs; going on", catch_up_timeout)
                break
            await self._poll(consumer)
        log.info("agent registry: %d agents registered", len(self.versions))
        self._task = asyncio.create_task(self._follow(consumer))

    @staticmethod
    async def _behind(consumer: AIOKafkaConsumer, ends: dict) -> bool:
        for tp, end in ends.items():
            if await consumer.position(tp) < end:
                return True
        return False

    async def _poll(self, consumer: AIOKafkaConsumer) -> None:
        batches = await consumer.getmany(timeout_ms=500)
        for records in batches.values():
            for rec in records:
                self._record(rec.key, rec.value)

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            await self._poll(consumer)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        if self._consumer:
            await self._consumer.stop()
