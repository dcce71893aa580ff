"""Topic preparation before the worker joins its group (admin API, idempotent).

The raw topic belongs to ops; the worker creates it only when it is missing
(with CAMELEER_RAW_PARTITIONS), so a fresh `make run` works. The output topic
is compacted and created with the raw topic's partition count.

The held state has its own partition count, fixed when the deployment's re-key
and changelog topics are created (the raw topic's count then): an execution's
state partition is murmur2(execution_id) modulo that count, whatever the raw
topic's count is now. Operators may add raw partitions while workers run
(docs/growing-topics.md); the two internal topics must keep their count, and a
worker refuses to start when they differ.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from app.kafka import access
from app.ops.config import Settings

log = logging.getLogger(__name__)

OUTPUT_CONFIG = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
DLQ_CONFIG = {"cleanup.policy": "delete"}
AGENTS_CONFIG = {"cleanup.policy": "compact"}
CHANGELOG_CONFIG = {"cleanup.policy": "compact"}  # Faust's for a table without windows
# Re-key records are read within moments; a week covers any outage worth surviving.
REKEY_CONFIG = {"cleanup.policy": "delete", "retention.ms": str(7 * 24 * 3600 * 1000)}


def rekey_topic_name(settings: Settings) -> str:
    return f"{settings.app_id}-rekey"


def changelog_topic_name(settings: Settings) -> str:
    return f"{settings.app_id}-held-changelog"  # Faust's name for the "held" table's changelog


def leader_topic_name(settings: Settings) -> str:
    return f"{settings.app_id}-__assignor-__leader"  # Faust's, for its partition assignor


async def _create(
    admin, name: str, partitions: int, replication: int, config: dict, principal: str, grant
) -> None:
    # aiokafka returns CreateTopics errors instead of raising them
    new = NewTopic(name, partitions, replication, topic_configs=config)
    response = await admin.create_topics([new])
    for _topic, code, *message in response.topic_errors:
        if code == access.TOPIC_AUTHORIZATION_FAILED:
            raise grant.denied(principal, "Create", name)
        if code not in (0, TopicAlreadyExistsError.errno):  # already there: another worker won
            detail = message[0] if message and message[0] else f"error code {code}"
            raise RuntimeError(f"could not create topic {name}: {detail}")
    log.info(
        "created topic %s (%d partitions, %d replicas, %s)", name, partitions, replication, config
    )


def warn_under_replicated(infos: dict[str, access.TopicInfo], names, replication: int) -> list:
    """One warning per existing topic of the worker's with fewer replicas than asked.

    Kafka never adds replicas to an existing topic by itself: the operator reassigns
    its partitions. Returned as well as logged, for the tests.
    """
    warnings = []
    for name in names:
        info = infos[name]
        if info.exists and info.replicas < replication:
            warnings.append(
                f"topic {name} has {info.replicas} replica{'s' if info.replicas != 1 else ''} "
                f"per partition, fewer than the {replication} asked "
                "(CAMELEER_REPLICATION_FACTOR): a lost broker can lose what only it holds. "
                "Kafka does not add replicas by itself: give the topic more with "
                "kafka-reassign-partitions --reassignment-json-file ... --execute "
                "(see docs/production-cluster.md)"
            )
    for warning in warnings:
        log.warning(warning)
    return warnings


@dataclass(frozen=True)
class Layout:
    raw_partitions: int  # at start; the worker follows it as it grows
    agents_partitions: int
    dlq_partitions: int
    state_partitions: int  # re-key and changelog topics: fixed for the deployment
    output_partitions: int
    replication: int = 1  # replicas of the topics the worker and Faust create


GUIDE = "docs/growing-topics.md"


def state_partition_count(raw: int, rekey: int | None, changelog: int | None) -> int:
    """The held state's partition count: the internal topics' if they exist, else the
    raw topic's (they are about to be created with it). Refuses internal topics that
    disagree: an execution's state would be looked up where it was never written."""
    if rekey and changelog and rekey != changelog:
        raise RuntimeError(
            f"the re-key topic has {rekey} partitions and the changelog topic {changelog}: "
            "they hold the state's partitions and must keep the count they were created "
            f"with (internal topics cannot grow; see {GUIDE})"
        )
    return rekey or changelog or raw


async def ensure_topics(settings: Settings, timeout: float = 60.0) -> Layout:
    """Create what is missing; return the partition counts the worker needs.

    Connects as every client of the worker will (app.kafka.connection) and checks the
    ACLs it needs (app.kafka.access), so that a refused connection or a missing
    permission is one line here, not a traceback once the worker runs.
    """
    connection = settings.connection
    log.info("connecting to %s", connection.describe())
    await connection.check(timeout)  # KafkaRefused at once, KafkaUnreachable after timeout
    admin = AIOKafkaAdminClient(**connection.aiokafka_kwargs())
    try:
        await admin.start()
    except KafkaError as exc:
        raise RuntimeError(
            f"cannot connect to Kafka at {connection.bootstrap_servers}: {exc}"
        ) from None
    try:
        return await _prepare(admin, settings)
    finally:
        await admin.close()


async def _prepare(admin: AIOKafkaAdminClient, settings: Settings) -> Layout:
    principal = settings.connection.principal
    raw_grant, agents_grant, output_grant, dlq_grant, internal, group, *tid = access.needed(
        settings
    )
    rekey, changelog, leader = (
        rekey_topic_name(settings),
        changelog_topic_name(settings),
        leader_topic_name(settings),
    )
    names = [settings.raw_topic, settings.agents_topic, settings.output_topic]
    names += [settings.dlq_topic, rekey, changelog, leader]
    infos, brokers = await access.describe_topics(admin, names)
    replication = settings.replication(brokers)
    if replication > brokers:
        raise RuntimeError(
            f"CAMELEER_REPLICATION_FACTOR is {replication} but the cluster has {brokers} "
            f"broker{'s' if brokers != 1 else ''}: a topic cannot have more replicas than brokers"
        )
    raw_info = infos[settings.raw_topic]
    if raw_info.error_code == access.TOPIC_AUTHORIZATION_FAILED:
        raise raw_grant.denied(principal, "Read", settings.raw_topic)
    raw = raw_info.partitions
    if not raw_info.exists:
        log.warning(
            "raw topic %s is missing: creating it with %d partitions",
            settings.raw_topic,
            settings.raw_partitions,
        )
        raw = settings.raw_partitions
    state = state_partition_count(
        raw,
        infos[rekey].partitions if infos[rekey].exists else None,
        infos[changelog].partitions if infos[changelog].exists else None,
    )
    wanted = [
        (settings.raw_topic, raw, {}, raw_grant),
        (settings.output_topic, raw, OUTPUT_CONFIG, output_grant),
        (settings.dlq_topic, raw, DLQ_CONFIG, dlq_grant),
        (settings.agents_topic, 1, AGENTS_CONFIG, agents_grant),
        (rekey, state, REKEY_CONFIG, internal),
    ]
    created = False
    for name, partitions, config, grant in wanted:
        info = infos[name]
        if info.error_code == access.TOPIC_AUTHORIZATION_FAILED:
            raise grant.denied(principal, grant.operations[0], name)
        if not info.exists:
            await _create(admin, name, partitions, replication, config, principal, grant)
            created = True
    # The held table's changelog, as Faust would make it (compacted, the state's count),
    # made here before the worker joins: Faust makes it only as the consumer subscribes,
    # and on a cluster of several brokers the group's leader could then assign before
    # its metadata showed the new topic, leaving the state partitions out of the first
    # assignment (the worker refuses such an assignment and restarts).
    changelog_info = infos[changelog]
    if not changelog_info.exists and changelog_info.error_code != access.TOPIC_AUTHORIZATION_FAILED:
        await _create(admin, changelog, state, replication, CHANGELOG_CONFIG, principal, internal)
        created = True
    if created:
        infos, _ = await access.describe_topics(admin, names)
    # the worker's own topics; the raw and agents topics are ops' to replicate
    warn_under_replicated(
        infos, [settings.output_topic, settings.dlq_topic, rekey, changelog, leader], replication
    )
    for name, _partitions, _config, grant in wanted:
        await access.check_topic(admin, principal, grant, infos[name])
    # the changelog (made above unless refused) and Faust's leader topic, which it makes
    # itself: they need Create while they do not exist
    changelog_topic = NewTopic(
        changelog, state, replication, topic_configs={"cleanup.policy": "compact"}
    )
    await access.check_topic(admin, principal, internal, infos[changelog], changelog_topic)
    leader_topic = NewTopic(leader, 1, replication)
    await access.check_topic(
        admin, principal, internal, infos[leader], leader_topic, operations=("Read",)
    )
    await access.check_group(admin, principal, group)
    if tid:
        await access.check_transactional_id(admin, principal, tid[0], group)
    if raw % state:
        log.warning(
            "raw topic %s has %d partitions, not a multiple of the state's %d: keyed records "
            "on a raw partition whose state partition is another travel through the re-key "
            "topic (%s)",
            settings.raw_topic,
            raw,
            state,
            GUIDE,
        )
    return Layout(
        raw,
        infos[settings.agents_topic].partitions or 1,
        infos[settings.dlq_topic].partitions or raw,
        state,
        infos[settings.output_topic].partitions or raw,
        replication,
    )
