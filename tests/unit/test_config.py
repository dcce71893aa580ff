"""Settings: defaults, overrides and clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.ops.config import OPTIONS, Settings, apply_arguments


def test_defaults_are_the_documented_ones():
    s = Settings.from_env({})
    assert (s.processing_guarantee, s.commit_interval, s.batch_max) == ("exactly_once", 0.1, 1000)
    assert (s.compression, s.raw_partitions) == ("none", 6)


def test_every_option_is_documented_in_the_readme_or_docs():
    root = Path(__file__).parents[2]
    pages = [root / "README.md", *sorted((root / "docs").glob("**/*.md"))]
    text = "\n".join(p.read_text(encoding="utf-8") for p in pages)
    missing = [o.env for o in OPTIONS if f"`{o.env}`" not in text]
    assert missing == []


def test_command_line_overrides_the_environment():
    env = {"CAMELEER_COMMIT_INTERVAL": "0.5"}
    apply_arguments(["--commit-interval", "0.25", "--compression", "GZIP"], env)
    s = Settings.from_env(env)
    assert (s.commit_interval, s.compression) == (0.25, "gzip")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CAMELEER_COMMIT_INTERVAL": "0"}, "CAMELEER_COMMIT_INTERVAL must be positive"),
        ({"CAMELEER_BATCH_MAX": "0"}, "CAMELEER_BATCH_MAX must be at least 1"),
        ({"CAMELEER_COMPRESSION": "brotli"}, "CAMELEER_COMPRESSION must be one of none, gzip"),
        ({"CAMELEER_REPLICATION_FACTOR": "0"}, "CAMELEER_REPLICATION_FACTOR must be at least 1"),
        ({"CAMELEER_REPLICATION_FACTOR": "three"}, "bad setting"),
        ({"CAMELEER_BATCH_MAX": "many"}, "bad setting"),
        ({"CAMELEER_PROCESSING_GUARANTEE": "maybe"}, "exactly_once or at_least_once"),
        ({"CAMELEER_HELD_RETENTION": "300"}, "must be longer than CAMELEER_STALE_AFTER"),
        ({"CAMELEER_WEB_PORT": "70000"}, "CAMELEER_WEB_PORT must be 0"),
        ({"CAMELEER_WEB_PORT": "-1"}, "CAMELEER_WEB_PORT must be 0"),
        ({"CAMELEER_INSTANCE_ID": "pod 0"}, "CAMELEER_INSTANCE_ID must be 1 to 249"),
        ({"CAMELEER_INSTANCE_ID": "p" * 250}, "CAMELEER_INSTANCE_ID must be 1 to 249"),
        ({"CAMELEER_SESSION_TIMEOUT": "0"}, "CAMELEER_SESSION_TIMEOUT must be positive"),
        ({"CAMELEER_SESSION_TIMEOUT": "soon"}, "bad setting"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(env, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_held_retention_defaults_to_three_days_and_web_port_0_is_allowed():
    s = Settings.from_env({"CAMELEER_WEB_PORT": "0"})
    assert s.held_retention == 3 * 86_400
    assert s.web_port == 0


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_every_kafka_codec_is_accepted(codec):
    assert Settings.from_env({"CAMELEER_COMPRESSION": codec.upper()}).compression == codec


@pytest.mark.parametrize(
    ("setting", "brokers", "replicas"),
    [("", 1, 1), ("", 2, 2), ("", 3, 3), ("", 5, 3), ("2", 5, 2), ("5", 5, 5), ("1", 3, 1)],
)
def test_replication_defaults_to_three_or_the_broker_count(setting, brokers, replicas):
    s = Settings.from_env({"CAMELEER_REPLICATION_FACTOR": setting})
    assert s.replication(brokers) == replicas


def test_log_format_is_text_by_default_and_json_on_request():
    assert Settings.from_env({}).log_format == "text"
    assert Settings.from_env({"CAMELEER_LOG_FORMAT": " JSON "}).log_format == "json"
    with pytest.raises(ValueError, match="CAMELEER_LOG_FORMAT must be text or json"):
        Settings.from_env({"CAMELEER_LOG_FORMAT": "xml"})


def test_membership_defaults_to_dynamic_with_a_10_s_session():
    s = Settings.from_env({"CAMELEER_INSTANCE_ID": "  "})
    assert (s.instance_id, s.session_timeout) == (None, 10.0)


def test_instance_id_and_session_timeout_follow_the_settings(tmp_path):
    from app.worker import heartbeat_interval, transactional_id

    env = {"CAMELEER_STATE_DIR": str(tmp_path), "CAMELEER_APP_ID": "m"}
    dynamic = Settings.from_env(env)
    assert transactional_id(dynamic) == f"m-{(tmp_path / 'worker-id').read_text().strip()}"
    static = Settings.from_env(
        {**env, "CAMELEER_INSTANCE_ID": "merger-0", "CAMELEER_SESSION_TIMEOUT": "45"}
    )
    assert (static.instance_id, static.session_timeout) == ("merger-0", 45.0)
    # the instance id outlives the state folder: it names the transactional id
    assert transactional_id(static) == "m-merger-0"
    assert heartbeat_interval(10.0) == 2.0
    assert heartbeat_interval(3.0) == 1.0
