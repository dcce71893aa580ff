"""A static member's heartbeat: Heartbeat v3 with the instance id, and exit when fenced.

Upstream (aiokafka 0.14.0): copies `GroupCoordinator._do_heartbeat`
(aiokafka/consumer/group_coordinator.py), which sends Heartbeat v0/v1, without the
group instance id. `MergerConsumerThread.on_start` (app.overrides.consumer_thread)
puts it in place of the coordinator's bound method, on the one instance; aiokafka's
`_heartbeat_routine` looks `self._do_heartbeat` up at every beat. It reads the
coordinator's `group_id`, `generation`, `member_id`, `_group_instance_id`, sends
with `_send_req`, and answers errors with `coordinator_dead`, `request_rejoin` and
`reset_generation`, as aiokafka's does.

Why: asked about a replaced member id alone, the coordinator answers
UNKNOWN_MEMBER_ID and aiokafka rejoins under the same instance id: a worker that
was paused while its restarted incarnation joined would take the membership
back and go on handling records. With the instance id the coordinator answers
FENCED_INSTANCE_ID, and the fenced worker exits at once, without committing
(`fatal`).

Checked by tests/unit/test_upstream.py (the rows and tests of `static_heartbeat`).
"""

from __future__ import annotations

import logging

from aiokafka import errors as Errors

from app.engine.engine import fatal
from app.kafka import kip345
from app.overrides.eos_producer import ZombieFenced

log = logging.getLogger(__name__)


async def static_heartbeat(coordinator) -> bool:
    """aiokafka's `GroupCoordinator._do_heartbeat` for a static member: Heartbeat v3,
    with the instance id (app.kafka.kip345), and a member whose instance id another
    worker has taken since exits at once, without committing.

    The other answers are handled as aiokafka handles them.
    """
    c = coordinator
    instance_id = c._group_instance_id  # noqa: SLF001 aiokafka keeps it private; v3 needs it
    request = kip345.StaticHeartbeatRequest(c.group_id, c.generation, c.member_id, instance_id)
    try:
        resp = await c._send_req(request)  # noqa: SLF001 the coordinator's own send, as _do_heartbeat's
    except Errors.KafkaError as err:
        log.error("Heartbeat send request failed: %s. Will retry.", err)
        return False
    error_type = Errors.for_code(resp.error_code)
    if error_type is Errors.NoError:
        return True
    if resp.error_code == kip345.FENCED_INSTANCE_ID:
        # The worker's restart (or a second worker configured with the same instance
        # id) has joined since: it owns the partitions now. Anything handled here
        # must not be produced, and rejoining would take the membership back.
        fatal(
            "fenced: another worker joined the group with this instance id",
            ZombieFenced(
                f"instance id {instance_id!r}, member {c.member_id} of generation "
                f"{c.generation}: FENCED_INSTANCE_ID (two live workers must never share "
                "an instance id)"
            ),
        )
    if error_type in (Errors.GroupCoordinatorNotAvailableError, Errors.NotCoordinatorForGroupError):
        log.warning("Heartbeat failed for group %s: coordinator not valid", c.group_id)
        c.coordinator_dead()
    elif error_type is Errors.RebalanceInProgressError:
        log.warning("Heartbeat failed for group %s because it is rebalancing", c.group_id)
        c.request_rejoin()
        return True  # stay a member while the rebalance lasts
    elif error_type in (Errors.IllegalGenerationError, Errors.UnknownMemberIdError):
        log.warning("Heartbeat failed for group %s: %s; rejoining", c.group_id, error_type())
        c.reset_generation()
    elif error_type is Errors.GroupAuthorizationFailedError:
        raise error_type(c.group_id)
    else:
        raise Errors.KafkaError(f"Unexpected exception in heartbeat task: {error_type()!r}")
    return False
