"""The heartbeat of a static group member (KIP-345), which aiokafka 0.14 does not send.

A static member (group.instance.id) that restarts within the session timeout
rejoins under a new member id, and the group coordinator hands it its previous
assignment without a rebalance. The member id it replaced is then fenced: the
coordinator answers FENCED_INSTANCE_ID to requests that carry the instance id
with that old member id.

aiokafka sends the instance id in JoinGroup (v5) and SyncGroup (v3), but its
heartbeat is v0/v1, without it. Asked about an old member id alone, the
coordinator answers UNKNOWN_MEMBER_ID, and aiokafka rejoins under the same
instance id: a zombie (a worker paused, then resumed, while its restarted
incarnation runs) would take the membership back from the live worker. Heartbeat
v3 carries the instance id, and the zombie hears FENCED_INSTANCE_ID instead.

Field layout from Kafka's HeartbeatRequest.json / HeartbeatResponse.json (v3:
the first version with group_instance_id, not yet flexible).
"""

from __future__ import annotations

from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Int16, Int32, Schema, String

FENCED_INSTANCE_ID = 82  # error code: another member has joined with this instance id


class HeartbeatResponse_v3(Response):
    API_KEY = 12
    API_VERSION = 3
    SCHEMA = Schema(("throttle_time_ms", Int32), ("error_code", Int16))


class HeartbeatRequest_v3(RequestStruct):
    API_KEY = 12
    API_VERSION = 3
    RESPONSE_TYPE = HeartbeatResponse_v3
    SCHEMA = Schema(
        ("group_id", String("utf-8")),
        ("generation_id", Int32),
        ("member_id", String("utf-8")),
        ("group_instance_id", String("utf-8")),
    )


class StaticHeartbeatRequest(Request[HeartbeatRequest_v3]):
    API_KEY = 12

    def __init__(
        self, group_id: str, generation_id: int, member_id: str, group_instance_id: str
    ) -> None:
        self._args = (group_id, generation_id, member_id, group_instance_id)

    def build(self, request_struct_class: type[HeartbeatRequest_v3]):
        return request_struct_class(*self._args)
