"""A secured cluster: TLS, SASL (SCRAM-SHA-512, OAUTHBEARER) and ACLs, on the real broker.

This module starts a broker of its own with the opt-in SASL_SSL listener and the
StandardAuthorizer (localkafka.Secure): certificates made with openssl in a
temporary folder, SCRAM users made by Kafka's storage tool when the broker is
formatted, ACLs granted with Kafka's kafka-acls tool. The same listener takes
OAUTHBEARER tokens, checked by Kafka's unsecured validator (unsigned tokens, for
tests only); a token's `sub` is the principal, so a token for merger has merger's
ACLs. The harness itself
(topics, produce, consume) uses the broker's PLAINTEXT listener, whose
anonymous clients are super users, as the tests' admin.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import CreateAclsRequest, DeleteAclsRequest

import localkafka
from app.kafka import access
from app.kafka.connection import Connection, KafkaRefused
from app.ops.config import Settings
from app.ops.topics import ensure_topics
from app.overrides import oauthbearer
from chaos.processes import WORKER_COMMAND, Topics, WorkerProcess
from localkafka.tls import Certificates, make_broker_certificates, make_ca

from .harness import consume_until, create_topic, event, for_key, produce

pytestmark = pytest.mark.integration

# this process connects with OAUTHBEARER itself, as the cameleer-merger command does
oauthbearer.install()

USERS = ("admin", "merger", "stranger")  # admin: a super user; stranger: no ACLs at all


@dataclass
class SecureCluster:
    broker: localkafka.Broker
    certs: Certificates
    folder: Path
    passwords: dict[str, str]

    @property
    def plaintext(self) -> str:
        return self.broker.bootstrap

    def connection(self, user: str = "merger", **changes: str) -> Connection:
        """SASL_SSL as `user`, the password in a file (as a mounted secret would be)."""
        secret = self.folder / f"{user}.password"
        secret.write_text(self.passwords[user] + "\n")
        settings = {
            "bootstrap_servers": self.broker.secure_bootstrap,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": user,
            "sasl_password": self.passwords[user],
            "sasl_password_file": str(secret),
            "ssl_cafile": str(self.certs.ca_file),
        }
        return Connection(**{**settings, **changes})

    def oauth_connection(self, token: str) -> Connection:
        """SASL_SSL with OAUTHBEARER, the token in a file (as Kubernetes projects one)."""
        token_file = self.folder / "oauth-token"
        write_token(token_file, token)
        return Connection(
            bootstrap_servers=self.broker.secure_bootstrap,
            security_protocol="SASL_SSL",
            sasl_mechanism="OAUTHBEARER",
            sasl_oauth_token_file=str(token_file),
            ssl_cafile=str(self.certs.ca_file),
        )

    def admin_properties(self) -> Path:
        """The --command-config of Kafka's tools, as docs/operating.md shows it."""
        path = self.folder / "admin.properties"
        path.write_text(
            "security.protocol=SASL_SSL\n"
            "sasl.mechanism=SCRAM-SHA-512\n"
            "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="admin" password="{self.passwords["admin"]}";\n'
            "ssl.truststore.type=PEM\n"
            f"ssl.truststore.location={self.certs.ca_file}\n"
        )
        return path


def write_token(path: Path, token: str) -> None:
    """A new file swapped in, as Kubernetes refreshes a projected token."""
    tmp = path.with_suffix(".new")
    tmp.write_text(token)
    tmp.replace(path)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[SecureCluster]:
    folder = tmp_path_factory.mktemp("secure")
    certs = make_broker_certificates(folder / "certs")
    passwords = {user: secrets.token_urlsafe(16) for user in USERS}
    secure = localkafka.Secure(
        certs, passwords, authorizer=True, super_users=("ANONYMOUS", "admin"), oauthbearer=True
    )
    broker = localkafka.start(
        data_dir=folder / "kafka", heap=os.environ.get("KAFKA_HEAP", "512m"), secure=secure
    )
    try:
        yield SecureCluster(broker, certs, folder, passwords)
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def secure_topics(cluster) -> Topics:
    """The four topics ops own on a secured cluster, made beforehand (ACLs grant no Create)."""
    names = Topics.fresh(uuid.uuid4().hex[:8])
    create_topic(cluster.plaintext, names.raw, partitions=3)
    create_topic(
        cluster.plaintext, names.agents, partitions=1, config={"cleanup.policy": "compact"}
    )
    create_topic(
        cluster.plaintext,
        names.output,
        partitions=3,
        config={"cleanup.policy": "compact", "min.compaction.lag.ms": "0"},
    )
    create_topic(cluster.plaintext, names.dlq, partitions=3)
    return names


def worker_settings_env(cluster, topics: Topics, connection: Connection) -> dict[str, str]:
    return {**topics.env(), **connection.env(), "CAMELEER_STATE_DIR": str(cluster.folder / "state")}


def worker_settings(cluster: SecureCluster, topics: Topics, connection: Connection) -> Settings:
    return Settings.from_env(worker_settings_env(cluster, topics, connection))


@pytest.fixture(scope="module")
def granted(cluster, secure_topics) -> list[access.Grant]:
    """The ACLs docs/operating.md lists (access.needed), granted to merger with kafka-acls."""
    settings = worker_settings(cluster, secure_topics, cluster.connection())
    grants = access.needed(settings)
    config = cluster.admin_properties()
    for command in access.kafka_acls_commands(grants, "User:merger"):
        localkafka.kafka_tool(
            "kafka-acls",
            "--bootstrap-server",
            cluster.broker.secure_bootstrap,
            "--command-config",
            str(config),
            *command.split(),
        )
    return grants


def run_command(cluster, topics, connection: Connection, **env: str):
    """The real `cameleer-merger` command; (exit code, stderr lines, seconds)."""
    started = time.monotonic()
    proc = subprocess.run(
        WORKER_COMMAND,
        env={
            **os.environ,
            **topics.env(),
            **connection.env(),
            "CAMELEER_STATE_DIR": str(cluster.folder / "state-cmd"),
            "CAMELEER_WEB_PORT": "0",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stderr.strip().splitlines(), time.monotonic() - started


def assert_one_clear_line(code: int, lines: list[str], seconds: float, *words: str) -> None:
    assert code != 0
    assert len(lines) == 1, lines  # one line, no traceback, no log noise
    assert lines[0].startswith("cameleer-merger: "), lines
    for word in words:
        assert word in lines[0], lines[0]
    assert seconds < 30, f"took {seconds:.1f}s"  # at once, not after a retry loop


# ---- refusals: one line on stderr, a non-zero exit, at once --------------------------


def test_wrong_password_is_one_line_and_a_quick_exit(cluster, secure_topics):
    wrong = cluster.connection(sasl_password="not-the-password", sasl_password_file=None)
    code, lines, seconds = run_command(cluster, secure_topics, wrong)
    assert_one_clear_line(code, lines, seconds, "SASL authentication of 'merger'", "SCRAM-SHA-512")
    assert "not-the-password" not in lines[0]


def test_untrusted_broker_certificate_is_one_line_and_a_quick_exit(cluster, secure_topics):
    other_ca = make_ca(cluster.folder / "other", "other-ca")
    untrusting = cluster.connection(ssl_cafile=str(other_ca))
    code, lines, seconds = run_command(cluster, secure_topics, untrusting)
    assert_one_clear_line(code, lines, seconds, "not trusted", "KAFKA_SSL_CAFILE", str(other_ca))


def test_missing_ca_file_is_a_settings_error(cluster, secure_topics):
    missing = str(cluster.folder / "no-such-ca.pem")
    conn = cluster.connection()
    code, lines, seconds = run_command(cluster, secure_topics, conn, KAFKA_SSL_CAFILE=missing)
    assert_one_clear_line(code, lines, seconds, "KAFKA_SSL_CAFILE", "no such file", missing)


def test_a_user_without_acls_is_told_the_missing_permission(cluster, secure_topics):
    code, lines, seconds = run_command(cluster, secure_topics, cluster.connection("stranger"))
    assert_one_clear_line(
        code, lines, seconds, "not authorized", "User:stranger", "Read", secure_topics.raw
    )


# ---- ACLs: the documented set is needed, each part of it, and it is enough ------------

RESOURCE_TYPES = {"topic": 2, "group": 3, "transactional-id": 5}  # Kafka's ResourceType
LITERAL, PREFIXED, ALLOW = 3, 4, 3  # PatternType, AclPermissionType


async def _acl(cluster, make, grant: access.Grant, operation: str) -> None:
    """CreateAcls or DeleteAcls of one binding for merger, as the PLAINTEXT super user."""
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.plaintext)
    await admin.start()
    try:
        request = make(
            RESOURCE_TYPES[grant.resource],
            grant.name,
            PREFIXED if grant.prefixed else LITERAL,
            "User:merger",
            "*",
            access.OPERATIONS[operation],
            ALLOW,
        )
        response = (await admin._send_request(request)).to_object()
        results = response.get("creation_responses") or response["filter_responses"]
        assert [r["error_code"] for r in results] == [0], results
        if make is DeleteAclsRequest:
            assert len(results[0]["matching_acls"]) == 1, results  # it was there, now gone
    finally:
        await admin.close()


def check_until(settings: Settings, expected: str | None, timeout: float = 20.0) -> str | None:
    """The worker's check, again until it gives `expected` (a part of the refusal, or None:
    no refusal). ACL changes reach the broker's authorizer a moment after they commit."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            asyncio.run(ensure_topics(settings, timeout=20))
            got = None
        except access.AccessDenied as exc:
            got = str(exc)
        if (got is None and expected is None) or (got and expected and expected in got):
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"wanted {expected!r}, the check said {got!r}")
        time.sleep(0.2)  # poll for the ACL change to arrive


def each_binding(grants: list[access.Grant]):
    return [(g, op) for g in grants for op in g.operations]


def test_each_documented_acl_is_needed_and_named_when_missing(cluster, secure_topics, granted):
    """Take one ACL away at a time: the worker's check refuses, naming exactly that one."""
    settings = worker_settings(cluster, secure_topics, cluster.connection())
    bindings = each_binding(granted)
    assert len(bindings) == 9  # Read 2 topics, Write 2, internal topics 3, group, ids
    check_until(settings, None)
    for grant, operation in bindings:
        pattern = "--resource-pattern-type prefixed " if grant.prefixed else ""
        grant_it = f"--operation {operation} {pattern}--{grant.resource} {grant.name}"
        asyncio.run(_acl(cluster, DeleteAclsRequest, grant, operation))
        try:
            message = check_until(settings, grant_it)
        finally:
            asyncio.run(_acl(cluster, CreateAclsRequest, grant, operation))
        assert message.startswith("not authorized: User:merger may not "), message
        assert f"may not {operation} " in message, message
        check_until(settings, None)  # back: nothing missing


def test_at_least_once_needs_no_transactional_id(cluster, secure_topics, granted):
    [ids] = [g for g in granted if g.resource == "transactional-id"]
    at_least_once = Settings.from_env(
        {
            **worker_settings_env(cluster, secure_topics, cluster.connection()),
            "CAMELEER_PROCESSING_GUARANTEE": "at_least_once",
        }
    )
    assert ids not in access.needed(at_least_once)
    asyncio.run(_acl(cluster, DeleteAclsRequest, ids, "Write"))
    try:
        check_until(at_least_once, None)
    finally:
        asyncio.run(_acl(cluster, CreateAclsRequest, ids, "Write"))


def test_merge_over_sasl_ssl_with_exactly_the_documented_acls(
    cluster, secure_topics, granted, tmp_path
):
    log = cluster.broker.data_dir / "logs" / "server.log"
    log_start = log.stat().st_size
    connection = cluster.connection()
    worker = WorkerProcess(connection, secure_topics, tmp_path / "worker")
    worker.start()
    try:
        eid = f"exec-{uuid.uuid4()}"
        produce(
            cluster.plaintext,
            secure_topics.raw,
            [
                (eid.encode(), event(eid, "RUNNING", route_id="orders", start_time="t0")),
                (eid.encode(), event(eid, "COMPLETED", duration_ms=7, route_id=None)),
            ],
        )
        records = consume_until(
            cluster.plaintext, secure_topics.output, lambda rs: bool(for_key(rs, eid))
        )
        [merged] = for_key(records, eid)
        assert merged.origin == "merged"
        assert merged.json == {
            "execution_id": eid,
            "status": "COMPLETED",
            "route_id": "orders",
            "start_time": "t0",
            "duration_ms": 7,
        }
        stats = worker.stats()
        assert stats is not None and stats["counts"]["merged"] >= 1
        assert cluster.passwords["merger"] not in str(stats)
    finally:
        worker.stop()
    worker_log = worker.log_path.read_text(errors="replace")
    assert cluster.passwords["merger"] not in worker_log
    assert "Authenticated as merger via SCRAM-SHA-512" in worker_log  # aiokafka's own line
    # nothing the worker did was refused by the authorizer (it logs each denial)
    with open(log, "rb") as f:
        f.seek(log_start)
        denied = [
            line for line in f.read().decode(errors="replace").splitlines() if "Denied" in line
        ]
    assert [line for line in denied if "User:merger" in line] == []


# ---- OAUTHBEARER: the token from a file, read again when it is refreshed -------------


def test_an_expired_token_is_one_line_and_a_quick_exit(cluster, secure_topics):
    expired = cluster.oauth_connection(localkafka.unsecured_token("merger", lifetime=-600))
    code, lines, seconds = run_command(cluster, secure_topics, expired)
    assert_one_clear_line(
        code, lines, seconds, "SASL authentication with the OAUTHBEARER token in", "oauth-token"
    )


def test_a_refreshed_token_file_is_read_at_the_next_login(cluster):
    """One Connection (one token provider), its file replaced: the next login uses the new
    token. An expired token is refused, its replacement accepted, with nothing restarted."""
    conn = cluster.oauth_connection(localkafka.unsecured_token("merger", lifetime=-600))
    with pytest.raises(KafkaRefused, match="OAUTHBEARER token"):
        asyncio.run(conn.check(timeout=10))
    write_token(Path(conn.sasl_oauth_token_file), localkafka.unsecured_token("merger"))
    asyncio.run(conn.check(timeout=10))  # no exception: authenticated


def test_merge_over_sasl_ssl_with_an_oauthbearer_token(cluster, secure_topics, granted, tmp_path):
    """The worker on OAUTHBEARER: a token whose subject is merger gets merger's ACLs."""
    connection = cluster.oauth_connection(localkafka.unsecured_token("merger"))
    worker = WorkerProcess(
        connection, secure_topics, tmp_path / "worker", extra_env={"CAMELEER_WEB_PORT": "0"}
    )
    worker.start()
    try:
        eid = f"exec-{uuid.uuid4()}"
        produce(
            cluster.plaintext,
            secure_topics.raw,
            [
                (eid.encode(), event(eid, "RUNNING", route_id="oauth", start_time="t0")),
                (eid.encode(), event(eid, "COMPLETED", duration_ms=3)),
            ],
        )
        records = consume_until(
            cluster.plaintext, secure_topics.output, lambda rs: bool(for_key(rs, eid))
        )
        [merged] = for_key(records, eid)
        assert merged.origin == "merged" and merged.json["route_id"] == "oauth"
    finally:
        worker.stop()
    assert "via OAUTHBEARER" in worker.log_path.read_text(errors="replace")
