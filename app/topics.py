"""Topic preparation before the worker joins its group (admin API, idempotent).

The raw topic belongs to ops; the worker creates it only when it is missing
(with CAMELEER_RAW_PARTITIONS), so a fresh `make run` works. The output topic
is compacted and has the raw topic's partition count, so output partition p
holds exactly the executions of raw partition p.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from .config import Settings

log = logging.getLogger(__name__)

OUTPUT_CONFIG = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
DLQ_CONFIG = {"cleanup.policy": "delete"}
AGENTS_CONFIG = {"cleanup.policy": "compact"}
# Re-key records are read within moments; a week covers any outage worth surviving.
REKEY_CONFIG = {"cleanup.policy": "delete", "retention.ms": str(7 * 24 * 3600 * 1000)}


def rekey_topic_name(settings: Settings) -> str:
    return f"{settings.app_id}-rekey"


async def _partitions(admin: AIOKafkaAdminClient, topic: str) -> int | None:
    described = await admin.describe_topics([topic])
    info = described[0]
    if info.get("error_code", 0) != 0 or not info.get("partitions"):
        return None
    return len(info["partitions"])


async def _create(admin, name: str, partitions: int, replication: int, config: dict) -> None:
    try:
        await admin.create_topics([NewTopic(name, partitions, replication, topic_configs=config)])
        log.info("created topic %s (%d partitions, %s)", name, partitions, config)
    except TopicAlreadyExistsError:
        pass  # another worker won the race


@dataclass(frozen=True)
class Layout:
    raw_partitions: int
    agents_partitions: int
    dlq_partitions: int


async def ensure_topics(settings: Settings, timeout: float = 60.0) -> Layout:
    """Create what is missing; return the partition counts the worker needs."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    deadline = time.monotonic() + timeout
    while True:
        try:
            await admin.start()
            break
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"no Kafka broker answers at {settings.bootstrap_servers}: {exc}"
                ) from None
            await asyncio.sleep(1.0)  # retry interval while the broker comes up
    try:
        metadata = await admin.describe_cluster()
        replication = min(3, len(metadata["brokers"]))
        raw = await _partitions(admin, settings.raw_topic)
        if raw is None:
            log.warning(
                "raw topic %s is missing: creating it with %d partitions",
                settings.raw_topic,
                settings.raw_partitions,
            )
            await _create(admin, settings.raw_topic, settings.raw_partitions, replication, {})
            raw = settings.raw_partitions
        wanted = [
            (settings.output_topic, raw, OUTPUT_CONFIG),
            (settings.dlq_topic, raw, DLQ_CONFIG),
            (settings.agents_topic, 1, AGENTS_CONFIG),
            (rekey_topic_name(settings), raw, REKEY_CONFIG),
        ]
        counts = {}
        for name, partitions, config in wanted:
            existing = await _partitions(admin, name)
            counts[name] = existing or partitions
            if existing is None:
                await _create(admin, name, partitions, replication, config)
            elif name in (settings.output_topic, rekey_topic_name(settings)) and existing != raw:
                raise RuntimeError(
                    f"output topic {name} has {existing} partitions but the raw topic has {raw}: "
                    "they must match (each output partition holds one raw partition's executions)"
                )
        return Layout(raw, counts[settings.agents_topic], counts[settings.dlq_topic])
    finally:
        await admin.close()
