"""Real Apache Kafka brokers (KRaft) on loopback, from Kafka's own jars: one node, or a
small cluster.

Maven fetches the broker jars from Maven Central into `.cache/kafka/<version>/libs`
(once; a marker file says the copy is complete). `start()` formats a data folder and
runs `kafka.Kafka` with a capped heap; `stop()` ends it. Used by `make run`,
`make kafka-up`/`kafka-down` and the test session fixture, so all three run the
same broker the same way.

`start_cluster()` starts three (or N) such nodes as one cluster, each broker and
controller, with the replication settings of a production cluster: for the
replication tests and `make chaos --brokers 3`, where one broker is killed mid-stream.

Opt-in (`start(secure=Secure(...))`, for the security tests): a second listener,
SASL_SSL with SCRAM-SHA-512, whose users are made by Kafka's own storage tool
when the data folder is formatted, and optionally the StandardAuthorizer and
OAUTHBEARER beside SCRAM on that listener. OAUTHBEARER is validated by Kafka's
unsecured JWS handler, which accepts any unsigned token (`unsecured_token`): for
tests only, never for a real cluster, whose brokers validate signed tokens against
their identity provider. The PLAINTEXT listener stays, for the tests' own admin (a
super user there).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .tls import Certificates

# CAMELEER_KAFKA_VERSION runs another release (e.g. 4.1.2: the 4.x checks of
# docs/production-cluster.md); each version has its own folder of jars.
KAFKA_VERSION = os.environ.get("CAMELEER_KAFKA_VERSION", "3.9.2")
PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
CACHE_DIR = Path(os.environ.get("CAMELEER_CACHE_DIR", PROJECT_DIR / ".cache"))
LIBS_DIR = CACHE_DIR / "kafka" / KAFKA_VERSION / "libs"
_COMPLETE = LIBS_DIR / ".complete"
DEFAULT_HEAP = os.environ.get("KAFKA_HEAP", "512m")


class SetupError(RuntimeError):
    """A missing tool or a failed step, said in one line for the user."""


def _need(tool: str, what: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise SetupError(f"'{tool}' not found: install {what} to run the local Kafka broker")
    return path


def ensure_jars(quiet: bool = False) -> Path:
    """Fetch the broker jars once; later calls download nothing."""
    if _COMPLETE.exists():
        return LIBS_DIR
    _need("java", "a Java 17+ runtime (e.g. apt-get install openjdk-17-jre-headless)")
    mvn = _need("mvn", "Apache Maven (e.g. apt-get install maven)")
    staging = LIBS_DIR.with_name("libs.partial")
    shutil.rmtree(staging, ignore_errors=True)
    if not quiet:
        print(f"localkafka: fetching Apache Kafka {KAFKA_VERSION} jars with Maven...", flush=True)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(PACKAGE_DIR / "pom.xml"),
        f"-Dkafka.version={KAFKA_VERSION}",
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise SetupError("Maven could not fetch the Kafka jars:\n  " + "\n  ".join(tail))
    shutil.rmtree(LIBS_DIR, ignore_errors=True)
    staging.rename(LIBS_DIR)
    _COMPLETE.write_text(KAFKA_VERSION + "\n")
    return LIBS_DIR


# Kafka's command-line tools, by the class their bin/ script runs.
TOOLS = {
    "kafka-acls": "kafka.admin.AclCommand",
    "kafka-configs": "kafka.admin.ConfigCommand",
    "kafka-storage": "kafka.tools.StorageTool",
}


def kafka_tool(tool: str, *args: str, timeout: float = 120.0) -> str:
    """Run one of Kafka's own command-line tools from the jars, as bin/<tool>.sh does.

    Returns its standard output; a failure raises SetupError with the tool's output.
    """
    libs = ensure_jars()
    java = _need("java", "a Java 17+ runtime (e.g. apt-get install openjdk-17-jre-headless)")
    cmd = [
        java,
        "-Xmx256m",
        "-XX:TieredStopAtLevel=1",  # a short-lived tool: start fast, never mind peak speed
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{PACKAGE_DIR / 'tools-log4j.properties'}",
        "-cp",
        f"{libs}/*",
        TOOLS[tool],
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SetupError(f"{tool} {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}".strip())
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections there."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def parse_bootstrap(servers: str) -> tuple[str, int]:
    first = servers.split(",")[0].strip()
    first = first.split("://", 1)[-1]
    host, _, port = first.rpartition(":")
    return (host or "localhost"), int(port or 9092)


SCRAM = "SCRAM-SHA-512"
UNSECURED_OAUTH = "org.apache.kafka.common.security.oauthbearer"
STANDARD_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


@dataclass(frozen=True)
class Secure:
    """The opt-in SASL_SSL listener: its certificates, its SCRAM users, the authorizer."""

    certificates: Certificates
    users: dict[str, str] = field(default_factory=dict)  # name -> password, made at format time
    authorizer: bool = False  # StandardAuthorizer; super users below, everyone else needs ACLs
    super_users: tuple[str, ...] = ("ANONYMOUS",)  # ANONYMOUS: the PLAINTEXT listener's clients
    oauthbearer: bool = False  # OAUTHBEARER too, with the unsecured validator (tests only)


@dataclass
class Broker:
    """A running broker process and where it lives."""

    port: int
    data_dir: Path
    process: subprocess.Popen | None = None
    pid: int | None = None
    secure_port: int | None = None  # the SASL_SSL listener, when started with one
    node_id: int = 1
    heap: str = DEFAULT_HEAP

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def secure_bootstrap(self) -> str:
        assert self.secure_port is not None, "started without the SASL_SSL listener"
        return f"127.0.0.1:{self.secure_port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "logs" / "server.log"

    @property
    def alive(self) -> bool:
        pid = self.process.pid if self.process else self.pid
        return pid is not None and _alive(pid)

    def stop(self, timeout: float = 30.0) -> None:
        pid = self.process.pid if self.process else self.pid
        if pid is None:
            return
        stop_pid(pid, timeout)
        if self.process:
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL, for fault injection: the broker gets no chance to clean up."""
        pid = self.process.pid if self.process else self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if self.process:
                self.process.wait()

    def restart(self, timeout: float = 90.0, wait: bool = True) -> None:
        """Start the stopped (or killed) broker again on its ports and data; return once
        it serves (or at once with wait=False: then `wait_started`)."""
        assert not self.alive, "the broker still runs"
        self._since = _log_size(self.log_file)
        _launch(self, detach=self.process is None)
        if wait:
            self.wait_started(timeout)

    def wait_started(self, timeout: float = 90.0) -> None:
        _wait_started(self, getattr(self, "_since", 0), timeout)


@dataclass
class Cluster:
    """Brokers on loopback, each also a voter of the KRaft controller quorum."""

    brokers: list[Broker]

    @property
    def bootstrap(self) -> str:
        return ",".join(b.bootstrap for b in self.brokers)

    def stop(self, timeout: float = 60.0) -> None:
        # every broker told at once: each one's controlled shutdown needs the quorum
        for b in self.brokers:
            pid = b.process.pid if b.process else b.pid
            if pid is not None and b.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        for b in self.brokers:
            b.stop(timeout)


def _properties(
    port: int,
    controller_port: int,
    data_dir: Path,
    secure: Secure | None = None,
    secure_port: int | None = None,
    node_id: int = 1,
    voters: str | None = None,
    replication: int = 1,
) -> str:
    # Every node is broker and controller. Alone, every replication factor is 1. In a
    # cluster, the internal topics get `replication` replicas, and a write acknowledged
    # by all in-sync replicas (acks=all) is on at least two brokers
    # (min.insync.replicas). The initial-rebalance delay is off so groups form at once.
    voters = voters or f"{node_id}@127.0.0.1:{controller_port}"
    min_isr = min(2, replication)
    listeners = f"PLAINTEXT://127.0.0.1:{port}"
    protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    if secure is not None:
        listeners += f",SASL_SSL://127.0.0.1:{secure_port}"
        protocols += ",SASL_SSL:SASL_SSL"
    return f"""\
process.roles=broker,controller
node.id={node_id}
controller.quorum.voters={voters}
listeners={listeners},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners={listeners}
controller.listener.names=CONTROLLER
listener.security.protocol.map={protocols}
inter.broker.listener.name=PLAINTEXT
log.dirs={data_dir / "kraft"}
num.partitions=6
default.replication.factor={replication}
min.insync.replicas={min_isr}
offsets.topic.replication.factor={replication}
offsets.topic.num.partitions=10
transaction.state.log.replication.factor={replication}
transaction.state.log.min.isr={min_isr}
transaction.state.log.num.partitions=10
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.cleaner.backoff.ms=1000
{_secure_properties(secure) if secure else ""}"""


def _secure_properties(secure: Secure) -> str:
    certs = secure.certificates
    mechanisms = f"{SCRAM},OAUTHBEARER" if secure.oauthbearer else SCRAM
    props = f"""\
sasl.enabled.mechanisms={mechanisms}
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PKCS12
ssl.keystore.location={certs.keystore}
ssl.keystore.password={certs.keystore_password}
ssl.key.password={certs.keystore_password}
ssl.client.auth=none
"""
    if secure.oauthbearer:
        # The principal is the token's `sub`; the broker's own login (never used: brokers
        # talk over PLAINTEXT) needs a subject all the same.
        props += f"""\
listener.name.sasl_ssl.oauthbearer.sasl.jaas.config=\
{UNSECURED_OAUTH}.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub="broker";
listener.name.sasl_ssl.oauthbearer.sasl.server.callback.handler.class=\
{UNSECURED_OAUTH}.internals.unsecured.OAuthBearerUnsecuredValidatorCallbackHandler
"""
    if secure.authorizer:
        supers = ";".join(f"User:{name}" for name in secure.super_users)
        props += f"authorizer.class.name={STANDARD_AUTHORIZER}\nsuper.users={supers}\n"
    return props


def _jvm(heap: str, logs: Path) -> list[str]:
    libs = ensure_jars()
    java = _need("java", "a Java 17+ runtime (e.g. apt-get install openjdk-17-jre-headless)")
    return [
        java,
        f"-Xmx{heap}",
        f"-Xms{heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={logs}",
        f"-Dlog4j.configuration=file:{PACKAGE_DIR / 'log4j.properties'}",
        "-cp",
        f"{libs}/*",
    ]


def _format(data_dir: Path, cluster_id: str, secure: Secure | None = None) -> None:
    """Format the node's storage once (KRaft needs it before the first start)."""
    if (data_dir / "kraft" / "meta.properties").exists():
        return
    jvm = _jvm("256m", data_dir / "logs")
    fmt = subprocess.run(
        [
            jvm[0],
            "-Xmx256m",
            *jvm[4:],
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(data_dir / "server.properties"),
            *_scram_users(secure),
        ],
        capture_output=True,
        text=True,
    )
    if fmt.returncode != 0:
        raise SetupError(f"could not format Kafka storage: {fmt.stdout}{fmt.stderr}".strip())


def _launch(broker: Broker, detach: bool) -> None:
    logs = broker.data_dir / "logs"
    out = open(logs / "stdout.log", "ab")  # noqa: SIM115 - owned by the child process
    proc = subprocess.Popen(
        [*_jvm(broker.heap, logs), "kafka.Kafka", str(broker.data_dir / "server.properties")],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C reaches the worker, which then stops us in order
    )
    out.close()
    broker.process = None if detach else proc
    broker.pid = proc.pid
    (broker.data_dir / "broker.pid").write_text(str(proc.pid))


def _wait_started(broker: Broker, since: int, timeout: float) -> None:
    """Return once the broker logged its start (past `since` in its log) and answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not broker.alive:
            code = broker.process.returncode if broker.process else "?"
            raise SetupError(f"the Kafka broker exited with code {code}; see {broker.log_file}")
        if _started(broker.log_file, since) and answers("127.0.0.1", broker.port):
            return
        time.sleep(0.2)  # poll interval while the JVM boots
    broker.stop()
    raise SetupError(f"the Kafka broker did not start within {timeout:.0f}s; see {broker.log_file}")


def start(
    port: int | None = None,
    data_dir: Path | None = None,
    heap: str = DEFAULT_HEAP,
    timeout: float = 90.0,
    detach: bool = False,
    secure: Secure | None = None,
) -> Broker:
    """Start a broker (formatting its data folder the first time) and wait until it serves."""
    port = port or free_port()
    data_dir = Path(data_dir or CACHE_DIR / "kafka-data" / str(port)).resolve()
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    controller_port = _saved_port(data_dir, "controller.port")
    secure_port = _saved_port(data_dir, "secure.port") if secure else None
    (data_dir / "server.properties").write_text(
        _properties(port, controller_port, data_dir, secure, secure_port)
    )
    _format(data_dir, _cluster_id(), secure)
    broker = Broker(port=port, data_dir=data_dir, secure_port=secure_port, heap=heap)
    since = _log_size(broker.log_file)
    _launch(broker, detach)
    _wait_started(broker, since, timeout)
    return broker


CLUSTER_HEAP = os.environ.get("KAFKA_CLUSTER_HEAP", "384m")  # per broker of a cluster


def start_cluster(
    data_dir: Path, brokers: int = 3, heap: str = CLUSTER_HEAP, timeout: float = 120.0
) -> Cluster:
    """Start `brokers` brokers on loopback as one cluster, and wait until all serve.

    Each node is broker and controller (a quorum of `brokers` voters: one node lost
    leaves a majority of three). Internal topics get min(3, brokers) replicas and
    `min.insync.replicas` is 2: the settings of a production cluster, in small.
    Node i keeps its ports and data in `data_dir/n<i>`, so a node killed and
    restarted comes back as itself.
    """
    data_dir = Path(data_dir).resolve()
    nodes = []
    for node_id in range(1, brokers + 1):
        node_dir = data_dir / f"n{node_id}"
        (node_dir / "logs").mkdir(parents=True, exist_ok=True)
        ports = (_saved_port(node_dir, "port"), _saved_port(node_dir, "controller.port"))
        nodes.append((node_id, node_dir, *ports))
    voters = ",".join(f"{n}@127.0.0.1:{cport}" for n, _, _, cport in nodes)
    saved_id = data_dir / "cluster.id"
    if not saved_id.exists():
        saved_id.write_text(_cluster_id())
    cluster_id = saved_id.read_text().strip()
    cluster = Cluster([])
    replication = min(3, brokers)
    for node_id, node_dir, port, cport in nodes:
        (node_dir / "server.properties").write_text(
            _properties(
                port, cport, node_dir, node_id=node_id, voters=voters, replication=replication
            )
        )
        cluster.brokers.append(Broker(port=port, data_dir=node_dir, node_id=node_id, heap=heap))
    with ThreadPoolExecutor(brokers) as pool:  # one JVM each: side by side
        list(pool.map(lambda b: _format(b.data_dir, cluster_id), cluster.brokers))
    # all at once: a node's broker waits for the controller quorum, a majority of them
    sizes = [_log_size(b.log_file) for b in cluster.brokers]
    try:
        for b in cluster.brokers:
            _launch(b, detach=False)
        for b, since in zip(cluster.brokers, sizes, strict=True):
            _wait_started(b, since, timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def unsecured_token(subject: str, lifetime: float = 3600.0) -> str:
    """An unsigned JWS (`alg: none`) for `subject`, valid `lifetime` seconds from now (a
    negative lifetime: already expired). Only the unsecured validator above accepts it."""

    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    expires = int(time.time() + lifetime)
    claims = {"sub": subject, "iat": min(int(time.time()), expires - 60), "exp": expires}
    return f"{part({'alg': 'none'})}.{part(claims)}."


def _cluster_id() -> str:
    # Like Kafka's Uuid.randomUuid: never starting with '-', which the tool would
    # read as an option.
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _scram_users(secure: Secure | None) -> list[str]:
    # KRaft stores SCRAM credentials in the metadata log: the storage tool writes the
    # first ones when it formats (kafka-storage format --add-scram).
    users = secure.users.items() if secure else ()
    return [arg for u, pw in users for arg in ("--add-scram", f"{SCRAM}=[name={u},password={pw}]")]


def _saved_port(data_dir: Path, name: str) -> int:
    # A restarted broker keeps its ports: the quorum voters are fixed, and clients
    # hold on to the listener they were given.
    saved = data_dir / name
    if saved.exists():
        return int(saved.read_text())
    port = free_port()
    saved.write_text(str(port))
    return port


def _log_size(log_file: Path) -> int:
    try:
        return log_file.stat().st_size
    except OSError:
        return 0


def _started(log_file: Path, since: int = 0) -> bool:
    """Did the broker log its start past offset `since` of its log (this launch's part)?"""
    try:
        size = log_file.stat().st_size
        with open(log_file, "rb") as f:
            f.seek(max(since if since <= size else 0, size - 65536))  # 0: the log rolled
            tail = f.read()
    except OSError:
        return False
    return tail.rfind(b"Kafka Server started") > tail.rfind(b"shutting down")


def stop_pid(pid: int, timeout: float = 30.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)  # poll for the controlled shutdown to finish
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie that is not our child still answers kill 0
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def main_error(exc: SetupError) -> None:
    print(f"error: {exc}", file=sys.stderr)
    raise SystemExit(2)
