"""The topics `cameleer-merger` makes before the worker joins its group, on the real broker."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest

from app.kafka.connection import Connection
from app.ops.config import Settings
from app.ops.topics import changelog_topic_name, ensure_topics, rekey_topic_name
from chaos.processes import Topics

from .harness import describe_config

pytestmark = pytest.mark.integration


def test_the_state_changelog_exists_before_the_worker_joins(bootstrap):
    """The held table's changelog is made with the re-key topic, compacted and with the
    state's partition count, before Faust's consumer subscribes: a group leader whose
    metadata lacked it would leave the state partitions out of the first assignment."""
    topics = Topics.fresh(uuid.uuid4().hex[:8])
    settings = dataclasses.replace(
        Settings.from_env(topics.env()), connection=Connection(bootstrap_servers=bootstrap)
    )
    changelog = changelog_topic_name(settings)
    assert describe_config(bootstrap, changelog)["__partitions__"] == "0"  # a new deployment

    layout = asyncio.run(ensure_topics(settings))

    config = describe_config(bootstrap, changelog)
    assert config["cleanup.policy"] == "compact"
    assert int(config["__partitions__"]) == layout.state_partitions
    rekey = describe_config(bootstrap, rekey_topic_name(settings))
    assert int(rekey["__partitions__"]) == layout.state_partitions
    # a second worker starting: nothing changes, nothing fails
    assert asyncio.run(ensure_topics(settings)) == layout
