"""(c) The same merge without Faust: a plain aiokafka batch loop, a reference for (b).

The bench's third contender, built from the worker's own functional core: `getmany`
on the event loop (no consumer thread), `app.engine.processor` and `app.core.merge` for every
record, RocksDB state through `app.state.statestore`, ONE transactional producer, and the
worker's own commit (`app.engine.checkpoint.Checkpoint`: a changelog record per changed
key, the source offsets in the transaction, RocksDB written after it), one per 100 ms,
in sequence with the handling. What it leaves out is what a worker needs
and a benchmark does not: group rebalances, recovery, safety nets, sweeps, the web
server, KIP-447 generations. (b) against (c) is the cost of the Faust shell; (c)
against (a) is the cost of the merge in Python.

It runs as its own process (`python -m bench.plainloop`), like the worker, so it
shares no GIL with the bench, and prints `first-record <unix time>` when it handles
its first record.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from collections import Counter
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rocksdict import Options, Rdict

from app.core.merge import Rules
from app.engine.checkpoint import Checkpoint
from app.engine.outbox import Outbox
from app.engine.processor import Destinations, Processor
from app.kafka.connection import Connection
from app.kafka.registry import AgentRegistry
from app.state.statestore import StateStore

COMMIT_INTERVAL = 0.1  # the worker's default
BATCH_MAX = 1000  # the worker's default records per fetch


class _Data:
    """What app.state.statestore needs of a Faust RocksDB store."""

    offset_key = b"__plainloop_changelog_offset__"

    def __init__(self, dbs: dict[int, Rdict]) -> None:
        self._dbs = dbs

    def _db_for_partition(self, partition: int) -> Rdict:
        return self._dbs[partition]


class _Topic:
    def __init__(self, name: str) -> None:
        self._name = name

    def get_topic_name(self) -> str:
        return self._name


class _Table:
    """What app.state.statestore needs of a Faust table: its store and changelog topic."""

    def __init__(self, dbs: dict[int, Rdict], changelog: str) -> None:
        self.data = _Data(dbs)
        self.changelog_topic = _Topic(changelog)


def _fail(what: str, exc: BaseException) -> None:
    """A failed commit ends the run with its reason (the worker exits instead)."""
    raise RuntimeError(what) from exc


async def create_topics(kafka: Connection, names: dict[str, int], compacted: set[str]) -> None:
    admin = AIOKafkaAdminClient(**kafka.aiokafka_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(
                name,
                partitions,
                1,
                topic_configs={"cleanup.policy": "compact"} if name in compacted else {},
            )
            for name, partitions in names.items()
            if name not in existing
        ]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


async def run(args: argparse.Namespace) -> None:
    kafka = Connection(bootstrap_servers=args.bootstrap)
    rekey, changelog = f"{args.app_id}-rekey", f"{args.app_id}-changelog"
    n = args.partitions
    await create_topics(
        kafka,
        {args.output: n, args.dlq: n, rekey: n, changelog: n},
        compacted={args.output, changelog},
    )
    registry = AgentRegistry(kafka, args.agents, 1)  # v2 agents, as the worker knows them
    await registry.start()
    await registry.stop()

    state_dir = Path(args.state_dir)
    dbs = {p: Rdict(str(state_dir / str(p)), options=Options(raw_mode=True)) for p in range(n)}
    store = StateStore(_Table(dbs, changelog))
    counts: Counter[str] = Counter()
    processor = Processor(
        # no sweeps here: a re-keyed terminal goes out at once instead of waiting for a
        # RUNNING still on its way (the worker's bounded wait, app/core/rekeybarrier.py)
        Rules(stale_after_ms=3_600_000, rekey_grace_ms=0),
        store,
        Destinations(args.output, args.dlq, rekey, n, n, n),
        registry.versions,
        counts,
    )
    consumer = AIOKafkaConsumer(
        args.raw,
        rekey,
        **kafka.aiokafka_kwargs(),
        group_id=args.app_id,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
        max_partition_fetch_bytes=1024**2,
    )
    producer = AIOKafkaProducer(
        **kafka.aiokafka_kwargs(),
        transactional_id=f"{args.app_id}-plainloop",
        acks="all",
        enable_idempotence=True,
        max_batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
    )
    checkpoint = Checkpoint(
        producer,
        Outbox(producer),
        Outbox(producer),
        store,
        exactly_once=True,
        consumer=None,  # the offsets go into the transaction
        check_member=lambda: None,  # the transaction is fenced instead
        take_published=processor.take_published,
        counts=counts,
        seconds=Counter(),
        fatal=_fail,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await checkpoint.start()  # the producer, and its first transaction
    await consumer.start()
    positions: dict = {}
    first = False
    last_commit = time.monotonic()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=20, max_records=BATCH_MAX)
            for tp, records in batches.items():
                if not first:
                    first = True
                    print(f"first-record {time.time()}", flush=True)
                processor.handle(tp.partition, records, checkpoint.outputs)
                positions[tp] = records[-1].offset + 1
            await checkpoint.send_full()
            if time.monotonic() - last_commit < COMMIT_INTERVAL or not positions:
                continue
            await checkpoint.commit(positions, args.app_id)  # the offsets for the group id
            positions = {}
            last_commit = time.monotonic()
    finally:
        await consumer.stop()
        await checkpoint.stop()
        for db in dbs.values():
            db.close()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.plainloop", description=__doc__)
    for name in ("bootstrap", "raw", "output", "dlq", "agents", "app-id", "state-dir"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--partitions", type=int, default=6)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
