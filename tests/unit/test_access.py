"""The ACL set the worker needs, and how a missing one is said (no broker: see
tests/integration/test_security.py for the same on the real one)."""

from __future__ import annotations

from app.kafka import access
from app.ops.config import Settings


def test_the_set_follows_the_topic_names_app_id_and_guarantee():
    env = {"CAMELEER_RAW_TOPIC": "in", "CAMELEER_APP_ID": "m1"}
    grants = access.needed(Settings.from_env(env))
    assert access.Grant("topic", "in", ("Read",)) in grants
    assert access.Grant("topic", "m1-", ("Read", "Write", "Create"), prefixed=True) in grants
    assert access.Grant("group", "m1", ("Read",)) in grants
    assert access.Grant("transactional-id", "m1-", ("Write",), prefixed=True) in grants
    at_least_once = access.needed(
        Settings.from_env({**env, "CAMELEER_PROCESSING_GUARANTEE": "at_least_once"})
    )
    assert [g.resource for g in at_least_once].count("transactional-id") == 0


def test_a_refusal_is_one_line_naming_the_permission_and_the_grant():
    grant = access.Grant("topic", "m1-", ("Read", "Write", "Create"), prefixed=True)
    message = str(grant.denied("User:u", "Create", "m1-rekey"))
    assert message == (
        "not authorized: User:u may not Create topic 'm1-rekey'; grant it with: kafka-acls "
        "--add --allow-principal User:u --operation Create --resource-pattern-type prefixed "
        "--topic m1-"
    )


def test_a_broker_that_does_not_say_what_is_allowed_is_not_a_refusal():
    assert access.TopicInfo("t", 0, 3, access.UNKNOWN_OPERATIONS).may("Write")
    assert not access.TopicInfo("t", 0, 3, 1 << access.OPERATIONS["Read"]).may("Write")


def test_an_existing_topic_with_fewer_replicas_than_asked_is_named_with_the_fix():
    from app.ops.topics import warn_under_replicated

    infos = {
        "changelog": access.TopicInfo("changelog", 0, 6, access.UNKNOWN_OPERATIONS, 1),
        "output": access.TopicInfo("output", 0, 6, access.UNKNOWN_OPERATIONS, 3),
        "leader": access.TopicInfo("leader", 3, 0, access.UNKNOWN_OPERATIONS, 0),  # missing
    }
    warnings = warn_under_replicated(infos, ["changelog", "output", "leader"], 3)
    assert len(warnings) == 1
    assert warnings[0].startswith("topic changelog has 1 replica per partition, fewer than the 3")
    assert "kafka-reassign-partitions" in warnings[0]
    assert warn_under_replicated(infos, ["changelog"], 1) == []  # one asked: enough
