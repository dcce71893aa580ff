"""The worker's settings: environment variables, each also a command-line option."""

from __future__ import annotations

import argparse
import os
import re
import socket
from dataclasses import dataclass, fields
from pathlib import Path

from app.kafka.connection import DEFAULT_BOOTSTRAP, Connection
from app.kafka.connection import OPTIONS as CONNECTION_OPTIONS

# Every codec Kafka has (aiokafka reads and writes snappy, lz4 and zstd with cramjam).
COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
# Replicas of the worker's topics when CAMELEER_REPLICATION_FACTOR is unset (fewer when
# the cluster has fewer brokers): one broker down still leaves two copies.
DEFAULT_REPLICATION = 3


@dataclass(frozen=True)
class Option:
    env: str
    flag: str
    default: str
    help: str


# One per Settings field, in order (Settings.connection is built from the KAFKA_* ones).
SETTINGS_OPTIONS = (
    Option("KAFKA_BOOTSTRAP_SERVERS", "--bootstrap-servers", DEFAULT_BOOTSTRAP, "Kafka brokers"),
    Option("CAMELEER_RAW_TOPIC", "--raw-topic", "cameleer.executions.raw", "raw event topic"),
    Option("CAMELEER_OUTPUT_TOPIC", "--output-topic", "cameleer.executions", "merged topic"),
    Option("CAMELEER_DLQ_TOPIC", "--dlq-topic", "cameleer.executions.dlq", "dead-letter topic"),
    Option("CAMELEER_AGENTS_TOPIC", "--agents-topic", "cameleer.agents", "agent registrations"),
    Option(
        "CAMELEER_STALE_AFTER", "--stale-after", "300", "seconds before a held RUNNING is flushed"
    ),
    Option(
        "CAMELEER_DEDUPE_WINDOW",
        "--dedupe-window",
        "3600",
        "seconds a terminal marker is kept at least (the held retention when longer)",
    ),
    Option(
        "CAMELEER_HELD_RETENTION",
        "--held-retention",
        "259200",
        "seconds after its Kafka timestamp a RUNNING with no terminal leaves the state; "
        "finished executions are remembered as long",
    ),
    Option(
        "CAMELEER_REKEY_GRACE",
        "--rekey-grace",
        "60",
        "longest wait, in seconds, of a terminal event that came through the re-key topic "
        "and found nothing held, for its RUNNING (0: no wait)",
    ),
    Option("CAMELEER_STATE_DIR", "--state-dir", "./state", "folder of the local RocksDB state"),
    Option(
        "CAMELEER_PROCESSING_GUARANTEE",
        "--processing-guarantee",
        "exactly_once",
        "exactly_once or at_least_once",
    ),
    Option("CAMELEER_WEB_PORT", "--web-port", "6066", "port of the worker's HTTP endpoints"),
    Option(
        "CAMELEER_WEB_HOST",
        "--web-host",
        "0.0.0.0",
        "address the HTTP endpoints listen on (0.0.0.0: every interface, as in a container)",
    ),
    Option(
        "CAMELEER_WEB_ADVERTISED_HOST",
        "--web-advertised-host",
        "",
        "host name or address other workers reach this one's endpoints at (table routing); "
        "default: CAMELEER_WEB_HOST when it is one address, else this machine's host name",
    ),
    Option(
        "CAMELEER_APP_ID", "--app-id", "cameleer-merger", "consumer group and internal-topic prefix"
    ),
    Option(
        "CAMELEER_MAX_RECORD_BYTES",
        "--max-record-bytes",
        "1000000",
        "largest record written to the output topic; larger ones go to the DLQ",
    ),
    Option(
        "CAMELEER_RAW_PARTITIONS",
        "--raw-partitions",
        "6",
        "partitions of the raw topic when the worker has to create it",
    ),
    Option("CAMELEER_LOG_LEVEL", "--log-level", "info", "debug, info, warning or error"),
    Option(
        "CAMELEER_LOG_FORMAT",
        "--log-format",
        "text",
        "text, or json: one JSON object per line (time, level, logger, message, context)",
    ),
    Option(
        "CAMELEER_COMMIT_INTERVAL",
        "--commit-interval",
        "0.1",
        "seconds between transaction commits (bounds the merged records' latency)",
    ),
    Option("CAMELEER_BATCH_MAX", "--batch-max", "1000", "most records one fetch hands on"),
    Option(
        "CAMELEER_COMPRESSION",
        "--compression",
        "none",
        "compression of the worker's produce batches: none, gzip, snappy, lz4 or zstd",
    ),
    Option(
        "CAMELEER_REPLICATION_FACTOR",
        "--replication-factor",
        "",
        "replicas of every topic the worker (or Faust) creates, the state's changelog "
        "included (default: 3, or the number of brokers when fewer)",
    ),
    # -- group membership (docs/static-membership.md)
    Option(
        "CAMELEER_INSTANCE_ID",
        "--instance-id",
        "",
        "static group membership: this worker's lasting name in the consumer group "
        "(group.instance.id; in Kubernetes, the StatefulSet pod's name). A worker restarted "
        "with it within the session timeout gets its partitions back without a rebalance. "
        "Empty: dynamic membership",
    ),
    Option(
        "CAMELEER_SESSION_TIMEOUT",
        "--session-timeout",
        "10",
        "seconds the group waits for a silent worker before its partitions move; "
        "at_least_once, a worker silent that long stops producing",
    ),
    Option(
        "CAMELEER_SWEEP_INTERVAL",
        "--sweep-interval",
        "1.0",
        "seconds between sweeps of the owned partitions: stale flushes, retention, and "
        "terminals waiting for the re-key topic's progress (they go out one to two sweeps "
        "after it is known complete)",
    ),
)
OPTIONS = SETTINGS_OPTIONS + tuple(Option(*o) for o in CONNECTION_OPTIONS)


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str
    raw_topic: str
    output_topic: str
    dlq_topic: str
    agents_topic: str
    stale_after: float
    dedupe_window: float
    held_retention: float
    rekey_grace: float
    state_dir: Path
    processing_guarantee: str
    web_port: int
    web_host: str
    web_advertised_host: str
    app_id: str
    max_record_bytes: int
    raw_partitions: int
    log_level: str
    log_format: str
    commit_interval: float
    batch_max: int
    compression: str
    replication_factor: int | None  # None: min(3, brokers), decided when connected
    # group membership
    instance_id: str | None  # group.instance.id; None: dynamic membership
    session_timeout: float
    sweep_interval: float
    connection: Connection  # bootstrap servers and security: every client connects with it

    @property
    def exactly_once(self) -> bool:
        return self.processing_guarantee == "exactly_once"

    def replication(self, brokers: int) -> int:
        """Replicas of each topic the worker creates, on a cluster of `brokers` brokers."""
        return self.replication_factor or min(DEFAULT_REPLICATION, max(1, brokers))

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        own = [f for f in fields(cls) if f.name != "connection"]
        raw = {
            f.name: env.get(o.env, o.default) for f, o in zip(own, SETTINGS_OPTIONS, strict=True)
        }
        return cls._parse(raw, Connection.from_env(env))

    @classmethod
    def _parse(cls, raw: dict[str, str], connection: Connection) -> Settings:
        guarantee = raw["processing_guarantee"].strip().lower()
        if guarantee not in ("exactly_once", "at_least_once"):
            raise ValueError(
                "CAMELEER_PROCESSING_GUARANTEE must be exactly_once or at_least_once, "
                f"not {guarantee!r}"
            )
        level = raw["log_level"].strip().lower()
        if level not in ("debug", "info", "warning", "error"):
            raise ValueError(
                f"CAMELEER_LOG_LEVEL must be debug, info, warning or error, not {level!r}"
            )
        log_format = raw["log_format"].strip().lower()
        if log_format not in ("text", "json"):
            raise ValueError(f"CAMELEER_LOG_FORMAT must be text or json, not {log_format!r}")
        try:
            settings = cls(
                bootstrap_servers=raw["bootstrap_servers"],
                raw_topic=raw["raw_topic"],
                output_topic=raw["output_topic"],
                dlq_topic=raw["dlq_topic"],
                agents_topic=raw["agents_topic"],
                stale_after=float(raw["stale_after"]),
                dedupe_window=float(raw["dedupe_window"]),
                held_retention=float(raw["held_retention"]),
                rekey_grace=float(raw["rekey_grace"]),
                state_dir=Path(raw["state_dir"]).resolve(),
                processing_guarantee=guarantee,
                web_port=int(raw["web_port"]),
                web_host=raw["web_host"].strip() or "0.0.0.0",
                web_advertised_host=raw["web_advertised_host"].strip()
                or _advertised(raw["web_host"].strip()),
                app_id=raw["app_id"],
                max_record_bytes=int(raw["max_record_bytes"]),
                raw_partitions=int(raw["raw_partitions"]),
                log_level=level,
                log_format=log_format,
                commit_interval=float(raw["commit_interval"]),
                batch_max=int(raw["batch_max"]),
                compression=raw["compression"].strip().lower(),
                replication_factor=int(raw["replication_factor"])
                if raw["replication_factor"].strip()
                else None,
                instance_id=raw["instance_id"].strip() or None,
                session_timeout=float(raw["session_timeout"]),
                sweep_interval=float(raw["sweep_interval"]),
                connection=connection,
            )
        except ValueError as exc:
            raise ValueError(f"bad setting: {exc}") from None
        if settings.stale_after <= 0 or settings.dedupe_window <= 0:
            raise ValueError("CAMELEER_STALE_AFTER and CAMELEER_DEDUPE_WINDOW must be positive")
        if settings.held_retention <= settings.stale_after:
            raise ValueError(
                "CAMELEER_HELD_RETENTION must be longer than CAMELEER_STALE_AFTER "
                "(a held RUNNING is flushed before it leaves the state)"
            )
        if settings.rekey_grace < 0:
            raise ValueError("CAMELEER_REKEY_GRACE must be 0 or more")
        if not 0 <= settings.web_port <= 65535:
            raise ValueError("CAMELEER_WEB_PORT must be 0 (no web server) or a TCP port")
        if settings.commit_interval <= 0:
            raise ValueError("CAMELEER_COMMIT_INTERVAL must be positive")
        if settings.batch_max < 1:
            raise ValueError("CAMELEER_BATCH_MAX must be at least 1")
        if settings.compression not in COMPRESSIONS:
            raise ValueError(
                f"CAMELEER_COMPRESSION must be one of {', '.join(COMPRESSIONS)}, "
                f"not {settings.compression!r}"
            )
        if settings.replication_factor is not None and settings.replication_factor < 1:
            raise ValueError("CAMELEER_REPLICATION_FACTOR must be at least 1 (or unset)")
        _check_membership(settings)
        return settings


# Kafka's rule for group.instance.id (JoinGroupRequest.validateGroupInstanceId)
INSTANCE_ID = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def _check_membership(settings: Settings) -> None:
    if settings.instance_id is not None and not INSTANCE_ID.fullmatch(settings.instance_id):
        raise ValueError(
            "CAMELEER_INSTANCE_ID must be 1 to 249 of the characters a-z A-Z 0-9 . _ -, "
            f"not {settings.instance_id!r}"
        )
    if not settings.session_timeout > 0:
        raise ValueError("CAMELEER_SESSION_TIMEOUT must be positive (seconds)")
    if not settings.sweep_interval > 0:
        raise ValueError("CAMELEER_SWEEP_INTERVAL must be positive (seconds)")


def _advertised(bind: str) -> str:
    """Where other workers reach this one when nobody said: the bound address, unless it
    is a wildcard, else the host name (Faust's default; in Kubernetes, set the pod IP)."""
    if bind and bind not in ("0.0.0.0", "::", "[::]"):
        return bind
    return socket.gethostname()


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cameleer-merger",
        description="Merge Cameleer's two-phase execution events into one record per execution.",
        epilog="Each option defaults to its environment variable, then to the built-in default.",
    )
    for opt in OPTIONS:
        default = f"default {opt.default}" if opt.default else "no default"
        parser.add_argument(opt.flag, metavar=opt.env, help=f"{opt.help} (${opt.env}, {default})")
    return parser


def apply_arguments(argv: list[str] | None, env: dict[str, str]) -> None:
    """Command-line options override the environment (which the worker then reads)."""
    args = argument_parser().parse_args(argv)
    for opt in OPTIONS:
        value = getattr(args, opt.flag.lstrip("-").replace("-", "_"))
        if value is not None:
            env[opt.env] = value
