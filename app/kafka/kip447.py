"""The two requests of KIP-447 (exactly-once v2) that aiokafka 0.14 does not send.

- TxnOffsetCommit v3 carries the consumer group's generation and member id with
  the offsets of a transaction. The group coordinator refuses them
  (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID) from a worker that
  is no longer the member owning those partitions: a zombie cannot commit. v0,
  all aiokafka sends, carries the group id only, and any producer could commit
  any partition's offsets.
- OffsetFetch v7 with require_stable: the coordinator answers
  UNSTABLE_OFFSET_COMMIT while a transaction holding offsets for the partition
  is still completing, instead of the offset before it. A worker taking a
  partition over must not start from an offset that the previous owner's last
  transaction is about to move (it would repeat that transaction's records).

Field layouts follow Kafka's message definitions (clients/src/main/resources/
common/message/TxnOffsetCommit{Request,Response}.json and OffsetFetch*.json):
both versions are "flexible", with compact strings and arrays and tagged fields.
Built from aiokafka's protocol types; aiokafka negotiates the version per
connection, and a broker without these versions fails the request loudly.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)

NO_LEADER_EPOCH = -1
UNSTABLE_OFFSET_COMMIT = 88  # error code: a transaction with offsets is completing


@dataclass(frozen=True, slots=True)
class GroupMetadata:
    """What the coordinator checks: the group, and this member's place in it."""

    group_id: str
    generation_id: int
    member_id: str
    group_instance_id: str | None = None


class TxnOffsetCommitResponse_v3(Response):
    API_KEY = 28
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("error_code", Int16),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class TxnOffsetCommitRequest_v3(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = 28
    API_VERSION = 3
    RESPONSE_TYPE = TxnOffsetCommitResponse_v3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("group_id", CompactString("utf-8")),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("generation_id", Int32),
        ("member_id", CompactString("utf-8")),
        ("group_instance_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("committed_metadata", CompactString("utf-8")),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class TxnOffsetCommitRequest(Request[TxnOffsetCommitRequest_v3]):
    API_KEY = 28

    def __init__(
        self,
        transactional_id: str,
        producer_id: int,
        producer_epoch: int,
        group: GroupMetadata,
        offsets: dict[str, list[tuple[int, int, str]]],
    ) -> None:
        self._args = (transactional_id, producer_id, producer_epoch, group, offsets)

    def build(self, request_struct_class: type[TxnOffsetCommitRequest_v3]):
        transactional_id, producer_id, producer_epoch, group, offsets = self._args
        topics = [
            (
                topic,
                [(p, offset, NO_LEADER_EPOCH, metadata, {}) for p, offset, metadata in parts],
                {},
            )
            for topic, parts in sorted(offsets.items())
        ]
        return request_struct_class(
            transactional_id,
            group.group_id,
            producer_id,
            producer_epoch,
            group.generation_id,
            group.member_id,
            group.group_instance_id,
            topics,
            {},
        )


def txn_offset_commit_errors(response) -> list[tuple[str, int, int]]:
    """(topic, partition, error code) of every partition in a v3 response."""
    return [
        (name, partition, error_code)
        for name, partitions, _tags in response.topics
        for partition, error_code, _ptags in partitions
    ]


class OffsetFetchResponse_v7(Response):
    API_KEY = 9
    API_VERSION = 7
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("metadata", CompactString("utf-8")),
                        ("error_code", Int16),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("error_code", Int16),
        ("tags", TaggedFields),
    )


class OffsetFetchRequest_v7(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = 9
    API_VERSION = 7
    RESPONSE_TYPE = OffsetFetchResponse_v7
    SCHEMA = Schema(
        ("group_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("partition_indexes", CompactArray(Int32)),
                ("tags", TaggedFields),
            ),
        ),
        ("require_stable", Boolean),
        ("tags", TaggedFields),
    )


class StableOffsetFetchRequest(Request[OffsetFetchRequest_v7]):
    API_KEY = 9

    def __init__(self, group_id: str, partitions: dict[str, list[int]]) -> None:
        self._group_id = group_id
        self._partitions = partitions

    def build(self, request_struct_class: type[OffsetFetchRequest_v7]):
        topics = [(t, sorted(ps), {}) for t, ps in sorted(self._partitions.items())]
        return request_struct_class(self._group_id, topics, True, {})


def offset_fetch_results(response) -> tuple[int, list[tuple[str, int, int, int]]]:
    """(group error code, [(topic, partition, committed offset or -1, error code)])."""
    rows = [
        (name, partition, offset, error_code)
        for name, partitions, _tags in response.topics
        for partition, offset, _epoch, _metadata, error_code, _ptags in partitions
    ]
    return response.error_code, rows
