"""The fault-injection run: a seeded workload produced while workers are killed,
scaled, wiped and the broker restarted (on a cluster: one broker SIGKILLed, then
brought back); then every execution is verified."""

from __future__ import annotations

import asyncio
import random
import shutil
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2

import localkafka
import simulator
from app.kafka.connection import Connection
from simulator import Workload

from .processes import Topics, WorkerProcess
from .verify import OutRecord, Verdict, verify

BARRIER = "chaos-barrier-"


def say(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class ChaosConfig:
    executions: int = 20_000
    seed: int = 7
    partitions: int = 6
    stale_after: int = 8  # seconds: stuck executions get flushed within the run
    # seconds: replayed RUNNINGs (the simulator's V1_REPLAYED_RUNNING, at the end of the
    # workload) are produced at least this long after their terminal, past the window
    dedupe_window: int = 3
    # share of v1 executions sent as unkeyed RUNNING/terminal pairs, back to back, to two
    # different partitions: they meet through the re-key topic in either order
    unkeyed_pair_share: float = 0.02
    # share of executions whose agent keys badly: no key, a wrong key, or one phase keyed
    # and the other not (mixed keying), in equal parts
    unkeyed_share: float = 0.03
    produce_seconds: float = 60.0  # spread production so faults land mid-stream
    kills: int = 8
    # SIGSTOP a worker past its session timeout, then SIGCONT: a zombie that must not
    # commit (KIP-447 fencing), and exits by itself to be restarted
    pauses: int = 1
    max_workers: int = 3
    wipe: bool = True
    broker_restart: bool = True
    # 1: one broker, restarted in order mid-stream. 3: a cluster (replication 3,
    # min.insync.replicas 2), one of whose brokers is SIGKILLed mid-stream and restarted
    brokers: int = 1
    broker_down_seconds: float = 15.0  # how long the killed broker stays down
    work_dir: Path = field(default_factory=lambda: localkafka.CACHE_DIR / "chaos")
    settle_timeout: float = 600.0
    guarantee: str = "exactly_once"
    downstream: bool = True  # final phase: ClickHouse (chDB) and Parquet fed the topics
    # static group membership: worker slot n restarts as instance chaos-w<n>, and a kill
    # followed by the restart moves no partition
    instance_ids: bool = False


@dataclass
class Tally:
    kills: int = 0
    rebalances: int = 0
    wipes: int = 0
    broker_restarts: int = 0
    broker_kills: int = 0  # cluster: a broker SIGKILLed mid-stream, then restarted
    crashes_restarted: int = 0
    # the engine's safety nets (app/engine/positions.py, "safety net" log lines): each should stay 0
    pauses: int = 0
    fenced: int = 0  # workers that stopped because they were fenced (from the logs)
    safety_redelivered: int = 0  # a batch began before the next offset due: dropped part
    safety_skipped: int = 0  # a batch began past it, not over transaction markers: exited
    # every worker that stopped by itself: (slot, its start number, its exit reason)
    crashes: list[tuple[int, int, str]] = field(default_factory=list)
    zombies: list[tuple[int, int]] = field(default_factory=list)  # paused: (slot, start)

    def unexplained_crashes(self) -> list[tuple[int, int, str]]:
        """Crashes other than a paused worker (a zombie) stopping because it was fenced."""
        return [
            crash
            for crash in self.crashes
            if crash[:2] not in self.zombies or "fenced" not in crash[2]
        ]


SESSION_TIMEOUT = 10.0  # the workers' CAMELEER_SESSION_TIMEOUT


def partition_for(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class Chaos:
    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.run_id = uuid.uuid4().hex[:8]
        self.dir = config.work_dir / self.run_id
        self.topics = Topics.fresh(self.run_id)
        self.tally = Tally()
        self.broker: localkafka.Broker | None = None
        self.cluster: localkafka.Cluster | None = None  # --brokers 2 or more
        self.workers: list[WorkerProcess] = []
        self.produced = 0
        self.lock = threading.Lock()
        self.keep = True  # the run's folder stays unless it passed
        self.sentinels: list[tuple[str, list]] = []  # the barrier's records: (key, reads)
        self.downstream = None  # downstream.phase.Report of the final phase

    # ---- the broker and the workers -------------------------------------------------
    @property
    def kafka(self) -> Connection:
        """How every client of the run connects: to the run's own local broker(s)."""
        where = self.cluster.bootstrap if self.cluster else self.broker.bootstrap
        return Connection(bootstrap_servers=where)

    @property
    def replication(self) -> int:
        return min(3, self.config.brokers)

    def start_broker(self) -> None:
        if self.config.brokers > 1:
            self.cluster = localkafka.start_cluster(self.dir / "kafka", self.config.brokers)
            say(f"cluster of {self.config.brokers} brokers up at {self.cluster.bootstrap}")
            return
        self.broker = localkafka.start(data_dir=self.dir / "kafka")
        say(f"broker up at {self.broker.bootstrap}")

    def kill_broker(self, wanted: set[int]) -> None:
        """SIGKILL one broker of the cluster while the agents produce and the workers
        merge; keep supervising the workers while it is down; then restart it."""
        assert self.cluster is not None
        victim = self.rng.choice(self.cluster.brokers)
        with self.lock:
            sent = self.produced
        say(f"SIGKILL broker {victim.node_id} ({victim.bootstrap}; {sent} records sent so far)")
        victim.kill()
        self.tally.broker_kills += 1
        until = time.monotonic() + self.config.broker_down_seconds
        while time.monotonic() < until:
            self.supervise(wanted)
            time.sleep(0.5)  # poll the workers while the cluster runs on two brokers
        say(f"restarting broker {victim.node_id}")
        victim.restart()

    def restart_broker(self) -> None:
        assert self.broker is not None
        port, data = self.broker.port, self.broker.data_dir
        self.broker.stop()
        self.broker = localkafka.start(port=port, data_dir=data)
        self.tally.broker_restarts += 1

    def worker(self, slot: int) -> WorkerProcess:
        while len(self.workers) <= slot:
            n = len(self.workers)
            env = {
                "CAMELEER_STALE_AFTER": str(self.config.stale_after),
                "CAMELEER_DEDUPE_WINDOW": str(self.config.dedupe_window),
                "CAMELEER_PROCESSING_GUARANTEE": self.config.guarantee,
                "CAMELEER_SESSION_TIMEOUT": str(SESSION_TIMEOUT),
            }
            if self.config.instance_ids:
                env["CAMELEER_INSTANCE_ID"] = f"chaos-w{n}"
            self.workers.append(WorkerProcess(self.kafka, self.topics, self.dir / f"w{n}", env))
        return self.workers[slot]

    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.alive]

    def start_worker(self, slot: int) -> None:
        others = len(self.alive())
        for attempt in range(3):
            try:
                self.worker(slot).start()
                break
            except RuntimeError as exc:  # it stopped itself while starting: a crash
                reason = self.worker(slot).exit_reason()
                say(f"worker {slot} exited while starting ({exc.args[0][:40]}...): {reason}; again")
                self.tally.crashes.append((slot, self.worker(slot).starts, reason))
                self.tally.crashes_restarted += 1
                if attempt == 2:
                    raise
        if others:
            self.tally.rebalances += 1

    def supervise(self, wanted: set[int]) -> None:
        """Restart wanted workers that died by themselves (a crash is not a kill)."""
        for slot in wanted:
            w = self.worker(slot)
            if not w.alive:
                code = w.process.returncode
                say(f"worker {slot} exited by itself (code {code}): {w.exit_reason()}; restarting")
                self.keep_crash_log(slot, w)
                self.tally.crashes.append((slot, w.starts, w.exit_reason()))
                self.tally.crashes_restarted += 1
                self.start_worker(slot)

    def keep_crash_log(self, slot: int, worker: WorkerProcess) -> None:
        """A worker's log when it stopped by itself outlives the run's folder (which goes
        when the run passes): a crash that the restart repaired is still a finding."""
        crashes = self.config.work_dir / "crashes"
        crashes.mkdir(parents=True, exist_ok=True)
        kept = crashes / f"{self.run_id}-w{slot}-{worker.starts}.log"
        try:
            shutil.copyfile(worker.log_path, kept)
        except OSError as exc:
            say(f"worker {slot}'s log not kept: {exc!r}")
            return
        say(f"worker {slot}'s log kept in {kept}; its last error: {worker.last_error()}")

    # ---- topics and traffic ----------------------------------------------------------
    async def create_topics(self, workload: Workload) -> None:
        admin = AIOKafkaAdminClient(**self.kafka.aiokafka_kwargs())
        await admin.start()
        try:
            await admin.create_topics(
                [
                    NewTopic(self.topics.raw, self.config.partitions, self.replication),
                    NewTopic(
                        self.topics.agents,
                        1,
                        self.replication,
                        topic_configs={"cleanup.policy": "compact"},
                    ),
                ]
            )
        finally:
            await admin.close()
        producer = AIOKafkaProducer(**self.kafka.aiokafka_kwargs(), enable_idempotence=True)
        await producer.start()
        try:
            for rec in workload.agent_registrations():
                await producer.send(self.topics.agents, rec.value, key=rec.key)
        finally:
            await producer.stop()

    async def produce(self, workload: Workload, done: threading.Event) -> None:
        """The agents: every record in order, paced over produce_seconds, retrying
        through the broker restart (idempotent producer: no duplicates from retries)."""
        records = workload.records
        chunk = max(1, len(records) // 200)
        pause = self.config.produce_seconds / 200
        producer = AIOKafkaProducer(
            **self.kafka.aiokafka_kwargs(),
            enable_idempotence=True,
            linger_ms=5,
            max_request_size=4_000_000,
            # an agent waits out the broker's restart, however slow the machine: a send
            # that still fails ends the run (below), it is never counted as lost
            request_timeout_ms=600_000,
        )
        await producer.start()
        owner = {id(r): e for e in workload.executions.values() for r in e.events}
        replays = {
            id(e.events[-1]): id(e.events[-2])
            for e in workload.executions.values()
            if e.kind == simulator.Kind.V1_REPLAYED_RUNNING
        }
        replayed_terminals = set(replays.values())
        sent_at: dict[int, float] = {}  # when those terminal events were sent
        scatter: dict[str, int] = {}
        sent: list[asyncio.Future] = []  # this chunk's sends, checked once it is flushed
        spread = (simulator.Keying.SCATTERED, simulator.Keying.MIXED)
        sent_ts: dict[str, int] = {}  # execution -> Kafka timestamp of its last event sent
        try:
            for i in range(0, len(records), chunk):
                for rec in records[i : i + chunk]:
                    execution = owner.get(id(rec))
                    eid = execution.execution_id if execution else None
                    partition = None
                    if id(rec) in replays:
                        # the agent's outage: its buffer is replayed past the dedupe window
                        # (after all other records, by the simulator's replay time)
                        await producer.flush()
                        wait = sent_at[replays[id(rec)]] + self.config.dedupe_window + 1
                        await asyncio.sleep(max(0.0, wait - time.monotonic()))
                    if eid is None:  # malformed: anywhere
                        partition = self.rng.randrange(self.config.partitions)
                    elif execution.keying == simulator.Keying.SCATTERED or (
                        execution.keying == simulator.Keying.MIXED and rec.key is None
                    ):
                        # back to back, each to another partition than the one before
                        start = scatter.setdefault(eid, self.rng.randrange(self.config.partitions))
                        partition = (start + execution.events.index(rec)) % self.config.partitions
                    elif rec.key != eid.encode():
                        # an agent that does not key by execution_id still sends one
                        # execution's records to one partition (sticky per execution)
                        partition = partition_for(eid.encode(), self.config.partitions)
                    timestamp = None
                    if eid is not None and execution.keying in spread:
                        # the agent's send time, strictly later than its previous event's:
                        # the order of events that reach the worker by two paths
                        timestamp = max(int(time.time() * 1000), sent_ts.get(eid, 0) + 1)
                        sent_ts[eid] = timestamp
                    sent.append(
                        await producer.send(
                            self.topics.raw,
                            rec.value,
                            key=rec.key,
                            partition=partition,
                            headers=rec.headers or None,
                            timestamp_ms=timestamp,
                        )
                    )
                    if id(rec) in replayed_terminals:
                        sent_at[id(rec)] = time.monotonic()
                await producer.flush()
                for future in sent:
                    future.result()  # raises what the broker answered to a failed send
                sent.clear()
                with self.lock:
                    self.produced = min(len(records), i + chunk)
                await asyncio.sleep(pause)
        finally:
            await producer.stop()
            done.set()

    # ---- faults ---------------------------------------------------------------------
    def faults(self, producing: threading.Event) -> set[int]:
        """Kills, scaling, one wipe and one broker restart while the agents produce."""
        cfg = self.config
        plan = ["scale"] * 4 + ["kill"] * cfg.kills + ["pause"] * cfg.pauses
        if cfg.wipe:
            plan.append("wipe")
        if cfg.broker_restart:
            plan.append("broker")
        self.rng.shuffle(plan)
        if self.cluster is not None and "broker" in plan:
            # a third of the way in: the agents are still producing when the broker dies
            plan.remove("broker")
            plan.insert(len(plan) // 3, "broker")
        wanted = {0}
        gap = cfg.produce_seconds / (len(plan) + 1)
        for action in plan:
            deadline = time.monotonic() + gap * self.rng.uniform(0.5, 1.5)
            while time.monotonic() < deadline:
                self.supervise(wanted)
                self.progress(producing)
                time.sleep(0.5)  # poll: faults are spread over the production time
            if action == "kill":
                slot = self.rng.choice(sorted(wanted))
                say(f"SIGKILL worker {slot}")
                self.worker(slot).kill()
                self.tally.kills += 1
                self.start_worker(slot)
                self.tally.rebalances += 1
            elif action == "scale":
                if len(wanted) < cfg.max_workers and (len(wanted) == 1 or self.rng.random() < 0.6):
                    slot = min(set(range(cfg.max_workers)) - wanted)
                    say(f"scale up: worker {slot} joins ({len(wanted) + 1} workers)")
                    wanted.add(slot)
                    self.start_worker(slot)
                else:
                    slot = max(wanted - {0}) if len(wanted) > 1 else 0
                    if slot != 0:
                        say(f"scale down: SIGTERM worker {slot} ({len(wanted) - 1} workers)")
                        self.worker(slot).stop()
                        wanted.discard(slot)
                        self.tally.rebalances += 1
            elif action == "pause":
                if len(wanted) == 1:  # someone must take the partitions over
                    slot = min(set(range(cfg.max_workers)) - wanted)
                    say(f"scale up: worker {slot} joins ({len(wanted) + 1} workers)")
                    wanted.add(slot)
                    self.start_worker(slot)
                slot = self.rng.choice(sorted(wanted))
                others = wanted - {slot}
                say(f"SIGSTOP worker {slot} past its session timeout (a zombie)")
                self.worker(slot).pause()
                self.tally.pauses += 1
                self.tally.zombies.append((slot, self.worker(slot).starts))
                until = time.monotonic() + SESSION_TIMEOUT + 6
                while time.monotonic() < until:
                    self.supervise(others)
                    time.sleep(0.5)  # poll the others while the group moves on without it
                say(f"SIGCONT worker {slot}: its next commit must be refused")
                self.worker(slot).resume()
                self.tally.rebalances += 1
            elif action == "wipe":
                slot = self.rng.choice(sorted(wanted))
                say(f"SIGKILL worker {slot} and wipe its RocksDB")
                self.worker(slot).kill()
                self.worker(slot).wipe()
                self.tally.kills += 1
                self.tally.wipes += 1
                self.start_worker(slot)
                self.tally.rebalances += 1
            elif action == "broker" and self.cluster is not None:
                self.kill_broker(wanted)
            elif action == "broker":
                say("restarting the broker")
                self.restart_broker()
        return wanted

    def progress(self, producing: threading.Event) -> None:
        now = time.monotonic()
        if now - getattr(self, "_last_progress", 0) < 5:
            return
        self._last_progress = now
        with self.lock:
            produced = self.produced
        total = getattr(self, "_total", 0)
        state = "producing" if not producing.is_set() else "settling"
        say(f"{state}: {produced}/{total} records sent, {len(self.alive())} workers up")

    # ---- reading the result ---------------------------------------------------------
    async def barrier(self) -> None:
        """Sentinels per raw partition: once all are out, everything before them is.

        A terminal sentinel proves every record before it was handled; a RUNNING
        sentinel, stamped `stale_after` in the past, is due at once and is flushed
        after every stuck execution due before it (a sweep goes in due order).
        """
        producer = AIOKafkaProducer(**self.kafka.aiokafka_kwargs(), enable_idempotence=True)
        await producer.start()
        keys = set()
        stale_ts = int(time.time() * 1000) - self.config.stale_after * 1000
        try:
            for p in range(self.config.partitions):
                for kind, status, ts in (
                    ("stale", "RUNNING", stale_ts),
                    ("end", "COMPLETED", None),
                ):
                    key = f"{BARRIER}{self.run_id}-{kind}-{p}".encode()
                    keys.add(key)
                    value = b'{"execution_id":"%s","status":"%s"}' % (key, status.encode())
                    body = {"execution_id": key.decode(), "status": status}
                    self.sentinels.append((key.decode(), [(status, body, ts or 0)]))
                    await producer.send_and_wait(
                        self.topics.raw, value, key=key, partition=p, timestamp_ms=ts
                    )
        finally:
            await producer.stop()
        await self.read_until(lambda recs: keys <= {r.key for r in recs}, "barrier")

    async def read_topic(self, topic: str, timeout: float = 10.0) -> list[OutRecord]:
        consumer = AIOKafkaConsumer(
            topic,
            **self.kafka.aiokafka_kwargs(),
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await consumer.start()
        try:
            parts = consumer.assignment()
            while not parts:
                await asyncio.sleep(0.1)  # poll: assignment comes with the first metadata
                parts = consumer.assignment()
            ends = await consumer.end_offsets(list(parts))
            out: list[OutRecord] = []
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                done = True
                for tp in parts:
                    if await consumer.position(tp) < ends[tp]:
                        done = False
                if done:
                    break
                batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
                for batch in batches.values():
                    for m in batch:
                        out.append(
                            OutRecord(m.key, m.value, dict(m.headers or ()), m.partition, m.offset)
                        )
            return out
        finally:
            await consumer.stop()

    async def read_until(self, done, what: str) -> list[OutRecord]:
        deadline = time.monotonic() + self.config.settle_timeout
        while True:
            recs = await self.read_topic(self.topics.output, timeout=60)
            if done(recs):
                return recs
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not complete after {self.config.settle_timeout:.0f}s")
            say(f"waiting for {what}: {len(recs)} output records so far")
            await asyncio.sleep(3)  # poll interval while the workers catch up

    def count_safety_nets(self) -> None:
        """How often the engine's safety nets fired, from every worker log of the run."""
        for w in self.workers:
            for log_file in sorted(w.state_dir.glob("worker-*.log")):
                for line in log_file.read_text(errors="replace").splitlines():
                    if "[CRITICAL] fenced:" in line:
                        self.tally.fenced += 1
                        continue
                    if "safety net:" not in line:
                        continue
                    if "skipped" in line:
                        self.tally.safety_skipped += 1
                    elif "again" in line:
                        self.tally.safety_redelivered += 1

    # ---- downstream stores, the final phase -----------------------------------------
    def downstream_phase(self, workload: Workload):
        """The merged topic (and the raw one beside it) fed to ClickHouse and Parquet,
        their answers to the README's SQL compared with the reference model."""
        from downstream.phase import check

        return check(
            self.kafka.bootstrap_servers,
            self.topics.output,
            self.topics.raw,
            self.dir / "downstream",
            workload.executions.values(),
            self.sentinels,
            exactly_once=self.config.guarantee == "exactly_once",
            say=say,
        )

    # ---- the whole run --------------------------------------------------------------
    def run(self) -> tuple[Verdict, Tally]:
        cfg = self.config
        say(f"generating {cfg.executions} executions (seed {cfg.seed})")
        workload = simulator.generate(
            cfg.seed,
            cfg.executions,
            unkeyed_pair_share=cfg.unkeyed_pair_share,
            unkeyed_share=cfg.unkeyed_share,
        )
        self._total = len(workload.records)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.start_broker()
        try:
            asyncio.run(self.create_topics(workload))
            self.start_worker(0)
            produced = threading.Event()
            failed: list[BaseException] = []

            def agents() -> None:
                try:
                    asyncio.run(self.produce(workload, produced))
                except BaseException as exc:
                    failed.append(exc)
                    raise

            sender = threading.Thread(target=agents)
            sender.start()
            wanted = self.faults(produced)
            while not produced.is_set():
                self.supervise(wanted)
                self.progress(produced)
                time.sleep(0.5)  # poll until the agents have sent everything
            sender.join()
            if failed:  # the harness could not play the agents: nothing to verify
                raise RuntimeError(
                    f"chaos harness: the agents stopped after {self.produced} of "
                    f"{self._total} records: {failed[0]!r}"
                )
            say("all records sent; waiting for the workers to settle")
            self.supervise(wanted)
            stale_wait = time.monotonic() + cfg.stale_after + 3
            while time.monotonic() < stale_wait:  # stuck executions must come due
                self.supervise(wanted)
                time.sleep(0.5)  # poll the workers while the stuck ones come due
            asyncio.run(self.barrier())
            outputs = asyncio.run(self.read_topic(self.topics.output, timeout=120))
            dead = asyncio.run(self.read_topic(self.topics.dlq, timeout=60))
            say(f"read {len(outputs)} output and {len(dead)} DLQ records; verifying")
            verdict = verify(workload, outputs, dead, cfg.guarantee == "exactly_once")
            for w in self.alive():
                w.stop()
            self.count_safety_nets()
            if cfg.downstream:
                self.downstream = self.downstream_phase(workload)
            if verdict.lost == verdict.duplicated == verdict.wrong == 0 and (
                self.downstream is None or self.downstream.ok
            ):
                self.keep = False
            return verdict, self.tally
        finally:
            for w in self.workers:
                w.kill()
            if self.broker:
                self.broker.stop()
            if self.cluster:
                self.cluster.stop()
            if self.keep:
                say(f"logs and data kept in {self.dir}")
            else:
                shutil.rmtree(self.dir, ignore_errors=True)


def table(verdict: Verdict, tally: Tally, downstream=None) -> str:
    rows = [
        ("executions", verdict.executions),
        ("malformed", verdict.malformed),
        ("kills", tally.kills),
        ("rebalances", tally.rebalances),
        ("wipes", tally.wipes),
        ("broker restarts", tally.broker_restarts),
        ("brokers SIGKILLed and restarted", tally.broker_kills),
        ("crashes restarted", tally.crashes_restarted),
        ("zombie pauses (SIGSTOP)", tally.pauses),
        ("fenced, stopped by itself", tally.fenced),
        ("safety net: redelivered", tally.safety_redelivered),
        ("safety net: skipped", tally.safety_skipped),
        ("lost", verdict.lost),
        ("duplicated", verdict.duplicated),
        ("wrong", verdict.wrong),
    ]
    if verdict.repeated:
        rows.append(("exact repeats (at_least_once)", verdict.repeated))
    if downstream is not None:
        rows += downstream_rows(downstream)
    width = max(len(r[0]) for r in rows)
    lines = [
        f"| {'':{width}} | {'':>9} |".replace(" |", "-|").replace("| ", "|-").replace(" ", "-")
    ]
    lines = [f"| {name:<{width}} | {value:>9} |" for name, value in rows]
    rule = f"+-{'-' * width}-+-{'-' * 9}-+"
    return "\n".join([rule, *lines, rule])


def downstream_rows(report) -> list[tuple[str, str]]:
    """The main table's lines for the downstream phase (its own table has the detail)."""
    off = sum(1 for p in report.problems if p.startswith("clickhouse"))
    lake = sum(1 for p in report.problems if not p.startswith("clickhouse"))
    return [
        ("ClickHouse vs model", "exact" if not off else f"{off} off"),
        ("Parquet vs model", "exact" if not lake else f"{lake} off"),
    ]


def main_run(config: ChaosConfig) -> int:
    print(f"processing guarantee: {config.guarantee}; brokers: {config.brokers}")
    print(f"group membership: {'static (instance ids)' if config.instance_ids else 'dynamic'}")
    chaos = Chaos(config)
    verdict, tally = chaos.run()
    print(table(verdict, tally, chaos.downstream))
    for problem in verdict.problems:
        print("  " + problem)
    if chaos.downstream is not None:
        print(chaos.downstream.table())
        for problem in chaos.downstream.problems[:30]:
            print("  " + problem)
    ok = verdict.lost == verdict.duplicated == verdict.wrong == 0
    ok = ok and (chaos.downstream is None or chaos.downstream.ok)
    message = "OK: nothing lost, duplicated or wrong"
    if chaos.downstream is not None:
        message += "; ClickHouse and Parquet count each execution once"
    print(message if ok else "FAILED", file=sys.stderr)
    return 0 if ok else 1
