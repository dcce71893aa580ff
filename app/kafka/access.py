"""The ACLs the worker needs on a cluster with an authorizer, checked before it starts.

Kafka checks ACLs request by request, deep inside the clients: a missing one
shows up late (a consumer that never joins its group, a failed commit), as a
traceback. Before the worker starts, `check` asks the brokers what this
principal may do, without side effects, and names the first missing
permission in one line:

- topics: Metadata v8 returns each topic's authorized operations (KIP-430);
  a topic the worker must create is checked with a validate-only CreateTopics;
- the consumer group: DescribeGroups returns its authorized operations;
- the transactional ids (exactly_once): AddOffsetsToTxn for an id under the
  prefix that was never initialised is authorized (Write on the id, Read on the
  group) before anything else is looked at, and then refused as unknown.

`needed()` is the exact set, as kafka-acls arguments: docs/operating.md lists it and
the integration tests grant exactly it, then take each part away.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaError,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.protocol.admin import DescribeGroupsRequest_v3, DescribeGroupsResponse_v3
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.transaction import AddOffsetsToTxnRequest
from aiokafka.protocol.types import Array, Boolean, Int16, Int32, Schema, String

log = logging.getLogger(__name__)

# Kafka's AclOperation codes: bit n of an "authorized operations" field is operation n.
OPERATIONS = {"Read": 3, "Write": 4, "Create": 5}
UNKNOWN_TOPIC_OR_PARTITION = 3
TOPIC_AUTHORIZATION_FAILED = 29
GROUP_AUTHORIZATION_FAILED = 30
TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
UNKNOWN_OPERATIONS = -(2**31)  # "authorized operations" not given


class AccessDenied(RuntimeError):
    """A permission the worker needs and does not have, named in one line."""


RESOURCE_NAMES = {
    "topic": "topic",
    "group": "consumer group",
    "transactional-id": "transactional id",
}


@dataclass(frozen=True)
class Grant:
    """ACLs on one resource (a name, or every name it prefixes), as kafka-acls says them."""

    resource: str  # topic, group, transactional-id
    name: str
    operations: tuple[str, ...]
    prefixed: bool = False

    def arguments(self, operations: tuple[str, ...] | None = None) -> str:
        ops = " ".join(f"--operation {op}" for op in operations or self.operations)
        pattern = " --resource-pattern-type prefixed" if self.prefixed else ""
        return f"{ops}{pattern} --{self.resource} {self.name}"

    def denied(self, principal: str, operation: str, name: str) -> AccessDenied:
        """The one line that says what is missing and how to grant it."""
        return AccessDenied(
            f"not authorized: {principal} may not {operation} {RESOURCE_NAMES[self.resource]} "
            f"{name!r}; grant it with: kafka-acls --add --allow-principal {principal} "
            f"{self.arguments((operation,))}"
        )


def kafka_acls_commands(grants: list[Grant], principal: str) -> list[str]:
    """kafka-acls arguments granting `grants`, one command per resource type, pattern and
    operations (kafka-acls takes several names of one type in one command)."""
    commands: dict[tuple, list[str]] = {}
    for g in grants:
        commands.setdefault((g.resource, g.prefixed, g.operations), []).append(g.name)
    out = []
    for (resource, prefixed, operations), names in commands.items():
        grant = Grant(resource, names[0], operations, prefixed)
        args = grant.arguments() + "".join(f" --{resource} {n}" for n in names[1:])
        out.append(f"--add --allow-principal {principal} {args}")
    return out


def internal_prefix(app_id: str) -> str:
    return f"{app_id}-"


def needed(settings) -> list[Grant]:
    """The exact ACLs the worker needs (the raw, agents, output and DLQ topics must exist)."""
    prefix = internal_prefix(settings.app_id)
    grants = [
        Grant("topic", settings.raw_topic, ("Read",)),
        Grant("topic", settings.agents_topic, ("Read",)),
        Grant("topic", settings.output_topic, ("Write",)),
        Grant("topic", settings.dlq_topic, ("Write",)),
        # re-key topic, the held table's changelog, Faust's leader topic: made by the worker
        Grant("topic", prefix, ("Read", "Write", "Create"), prefixed=True),
        Grant("group", settings.app_id, ("Read",)),
    ]
    if settings.exactly_once:
        grants.append(Grant("transactional-id", prefix, ("Write",), prefixed=True))
    return grants


# ---- Metadata v8: topics with their authorized operations (aiokafka stops at v5) ----


class _MetadataResponseV8(Response):
    API_KEY = 3
    API_VERSION = 8
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            Array(
                ("node_id", Int32),
                ("host", String("utf-8")),
                ("port", Int32),
                ("rack", String("utf-8")),
            ),
        ),
        ("cluster_id", String("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            Array(
                ("error_code", Int16),
                ("topic", String("utf-8")),
                ("is_internal", Boolean),
                (
                    "partitions",
                    Array(
                        ("error_code", Int16),
                        ("partition", Int32),
                        ("leader", Int32),
                        ("leader_epoch", Int32),
                        ("replicas", Array(Int32)),
                        ("isr", Array(Int32)),
                        ("offline_replicas", Array(Int32)),
                    ),
                ),
                ("authorized_operations", Int32),
            ),
        ),
        ("cluster_authorized_operations", Int32),
    )


class _MetadataRequestV8(RequestStruct):
    API_KEY = 3
    API_VERSION = 8
    RESPONSE_TYPE = _MetadataResponseV8
    SCHEMA = Schema(
        ("topics", Array(String("utf-8"))),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
    )


class _TopicsWithOperations(Request[_MetadataRequestV8]):
    API_KEY = 3

    def __init__(self, topics: list[str]) -> None:
        self.topics = topics

    def build(self, request_struct_class: type[_MetadataRequestV8]) -> _MetadataRequestV8:
        return request_struct_class(self.topics, False, False, True)


@dataclass(frozen=True)
class TopicInfo:
    name: str
    error_code: int
    partitions: int
    operations: int  # bit field of AclOperation codes
    replicas: int = 0  # the fewest replicas any of its partitions has

    @property
    def exists(self) -> bool:
        return self.error_code == 0 and self.partitions > 0

    def may(self, operation: str) -> bool:
        return _allows(self.operations, operation)


def _allows(operations: int, operation: str) -> bool:
    # A broker that does not say (INT32_MIN) is not taken for a refusal: the clients
    # will find out, later and less clearly, but the worker is not kept from running.
    return operations == UNKNOWN_OPERATIONS or bool(operations & (1 << OPERATIONS[operation]))


async def _send(admin: AIOKafkaAdminClient, request, node_id: int | None = None):
    """A request the admin client has no method for (the authorized operations)."""
    return await admin._send_request(request, node_id)  # noqa: SLF001 aiokafka's admin client offers no public send


async def describe_topics(
    admin: AIOKafkaAdminClient, names: list[str]
) -> tuple[dict[str, TopicInfo], int]:
    """Each topic's partition count, replication and authorized operations; and how many
    brokers there are."""
    response = await _send(admin, _TopicsWithOperations(names))
    infos = {
        name: TopicInfo(
            name, code, len(partitions or ()), ops, min((len(p[4]) for p in partitions), default=0)
        )
        for code, name, _internal, partitions, ops in response.topics
    }
    return infos, len(response.brokers)


# ---- the checks --------------------------------------------------------------------


async def _find_coordinator(admin: AIOKafkaAdminClient, key: str, kind: int, timeout=30.0) -> int:
    """The coordinator's node; on a new cluster its internal topic is made on first ask."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await admin.find_coordinator(key, coordinator_type=kind)
        except KafkaError as exc:
            if not exc.retriable or loop.time() > deadline:
                raise
        await asyncio.sleep(0.5)  # retry interval while the coordinator comes up


async def check_topic(
    admin: AIOKafkaAdminClient,
    principal: str,
    grant: Grant,
    info: TopicInfo,
    new_topic: NewTopic | None = None,
    operations: tuple[str, ...] | None = None,
) -> None:
    """Raise AccessDenied unless the topic allows the grant's operations (or `operations`).

    A missing topic that the worker (or Faust) will create needs Create:
    asked with a validate-only CreateTopics of `new_topic`.
    """
    wanted = [op for op in operations or grant.operations if op != "Create"]
    if info.error_code == TOPIC_AUTHORIZATION_FAILED:  # not even Describe
        raise grant.denied(principal, wanted[0], info.name)
    if info.exists:
        for op in wanted:
            if not info.may(op):
                raise grant.denied(principal, op, info.name)
        return
    if new_topic is not None and info.error_code == UNKNOWN_TOPIC_OR_PARTITION:
        response = await admin.create_topics([new_topic], validate_only=True)
        for _topic, code, *_ in response.topic_errors:
            if code == TOPIC_AUTHORIZATION_FAILED:
                raise grant.denied(principal, "Create", info.name)


class _DescribeGroupsRequestV3(RequestStruct):
    # aiokafka's own v3 parses the answer as v2, which drops authorized_operations
    API_KEY = 15
    API_VERSION = 3
    RESPONSE_TYPE = DescribeGroupsResponse_v3
    SCHEMA = DescribeGroupsRequest_v3.SCHEMA


class _GroupWithOperations(Request[_DescribeGroupsRequestV3]):
    API_KEY = 15

    def __init__(self, group: str) -> None:
        self.group = group

    def build(self, request_struct_class: type[_DescribeGroupsRequestV3]):
        return request_struct_class([self.group], True)


async def check_group(admin: AIOKafkaAdminClient, principal: str, grant: Grant) -> None:
    try:
        node = await _find_coordinator(admin, grant.name, 0)
    except GroupAuthorizationFailedError:
        raise grant.denied(principal, "Read", grant.name) from None
    response = await _send(admin, _GroupWithOperations(grant.name), node)
    for group in response.to_object()["groups"]:
        allowed = _allows(group["authorized_operations"], "Read")
        if group["error_code"] == GROUP_AUTHORIZATION_FAILED or not allowed:
            raise grant.denied(principal, "Read", grant.name)


async def check_transactional_id(
    admin: AIOKafkaAdminClient, principal: str, grant: Grant, group: Grant
) -> None:
    probe = f"{grant.name}access-check"  # under the prefix; never initialised, so no state
    try:
        node = await _find_coordinator(admin, probe, 1)
    except TransactionalIdAuthorizationFailed:
        raise grant.denied(principal, "Write", probe) from None
    response = await _send(admin, AddOffsetsToTxnRequest(probe, -1, -1, group.name), node)
    if response.error_code == TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
        raise grant.denied(principal, "Write", probe)
    if response.error_code == GROUP_AUTHORIZATION_FAILED:
        raise group.denied(principal, "Read", group.name)
    # anything else (unknown producer id, as expected) comes after the authorization
    log.debug("transactional id check: error code %d after authorization", response.error_code)
