"""State restore: how fast a worker rebuilds its held state from the changelog.

`python -m bench.restore` (and `make bench`, unless `--restore 0`):

1. The changelog of N held states is written straight into the held table's changelog
   topic, as the worker writes it (the same keys and encoded states, in transactions):
   held RUNNING executions and dedupe markers of finished ones.
2. Ceiling: a plain aiokafka consumer (read_committed, large fetches) reads those
   changelog partitions to their end.
3. Wiped restore: a worker with no local state starts and restores all partitions (no
   standby exists). Its restore rate is read from its log; then it is proven right:
   the terminal event of a held execution merges with its RUNNING, a late RUNNING and a
   duplicate terminal of a finished one come out not at all.
4. Scale-out: two workers restore and share the partitions; a third joins; the time
   until a terminal event sent on every partition has merged again.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

import simulator
from app.core.heldstate import (
    Held,
    Marker,
    Source,
    encode_state,
    in_changelog,
    index_key,
    state_key,
)
from app.kafka.connection import Connection

from .common import (
    PARTITIONS,
    WORK_DIR,
    Progress,
    Topics,
    broker_for_run,
    create_topics,
    fresh_topics,
    say,
    start_worker,
)
from .preload import partition_for
from .profile import Profile

GOAL_RATE = 50_000  # records/s restored, or half the ceiling when that is lower
TXN_RECORDS = 20_000  # changelog records per transaction of the preload
STALE_AFTER_S = 3600  # no stale flush during the run (the worker gets the same)
MARKER_S = 3 * 86400  # a marker's life: the default held retention
# the worker logs the restore of its active partitions (app.restore)
RESTORED = re.compile(rb"restored (\d+) changelog records of (\d+) partitions in ([\d.]+) s")


def changelog_topic(topics: Topics) -> str:
    return f"{topics.app_id}-held-changelog"


@dataclass
class Preloaded:
    held: dict[int, list[str]] = field(default_factory=dict)  # partition -> execution ids
    finished: dict[int, list[str]] = field(default_factory=dict)
    records: int = 0
    bytes: int = 0
    seconds: float = 0.0


async def preload_changelog(
    kafka: Connection, topics: Topics, held: int, markers: int, seed: int
) -> Preloaded:
    """The changelog of `held` RUNNING executions and `markers` finished ones, as the
    worker writes it (app.core.merge's writes, filtered by app.core.heldstate.in_changelog)."""
    topic = changelog_topic(topics)
    admin = AIOKafkaAdminClient(**kafka.aiokafka_kwargs())
    await admin.start()
    try:
        config = {"cleanup.policy": "compact"}
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1, topic_configs=config)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        **kafka.aiokafka_kwargs(),
        transactional_id=f"restore-preload-{uuid.uuid4().hex[:8]}",
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=4_000_000,
    )
    await producer.start()
    out = Preloaded({p: [] for p in range(PARTITIONS)}, {p: [] for p in range(PARTITIONS)})
    progress = Progress("restore: changelog records written", total=None)
    started = time.monotonic()
    now = int(time.time() * 1000)
    rng = random.Random(f"finished-{seed}")  # not the simulator's ids
    in_txn = 0

    async def write(execution_id: str, partition: int, state, due: int) -> None:
        nonlocal in_txn
        writes = {state_key(execution_id): encode_state(state), index_key(due, execution_id): b""}
        for key, value in writes.items():
            if not in_changelog(key):
                continue
            if in_txn == 0:
                await producer.begin_transaction()
            await producer.send(topic, value, key=key, partition=partition)
            out.records += 1
            out.bytes += len(key) + len(value)
            in_txn += 1
            if in_txn >= TXN_RECORDS:
                await producer.commit_transaction()
                in_txn = 0
                progress.tick(out.records)

    try:
        running = simulator.iter_steps(seed, held, **simulator.only(stuck_share=1.0))
        for i, step in enumerate(running):
            execution_id = step.execution.execution_id
            p = partition_for(execution_id.encode())
            rec = step.record
            src = Source(topics.raw, p, i, now, rec.key, rec.value, tuple(rec.headers))
            due = now + STALE_AFTER_S * 1000
            await write(execution_id, p, Held(now, due, False, (src,)), due)
            out.held[p].append(execution_id)
        for _ in range(markers):
            execution_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            p = partition_for(execution_id.encode())
            expires = now + MARKER_S * 1000
            await write(execution_id, p, Marker(expires), expires)
            out.finished[p].append(execution_id)
        if in_txn:
            await producer.commit_transaction()
    finally:
        await producer.stop()
    out.seconds = time.monotonic() - started
    say(
        f"restore: wrote {out.records:,} changelog records ({out.bytes / 1e6:,.1f} MB of keys "
        f"and values; {held:,} held, {markers:,} markers) in {out.seconds:.1f}s"
    )
    return out


async def plain_read(kafka: Connection, topic: str) -> tuple[int, float]:
    """(records, seconds): a plain read_committed consumer reading `topic` to its end."""
    consumer = AIOKafkaConsumer(
        **kafka.aiokafka_kwargs(),
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # no group: every partition from its start
        fetch_max_bytes=64 * 1024**2,
        max_partition_fetch_bytes=8 * 1024**2,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
        started = time.monotonic()
        consumer.assign(tps)
        records = 0
        left = {tp for tp in tps if ends[tp] > 0}
        while left:
            batches = await consumer.getmany(timeout_ms=1000, max_records=100_000)
            for recs in batches.values():
                records += len(recs)
            for tp in list(left):
                if await consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
        return records, time.monotonic() - started
    finally:
        await consumer.stop()


async def _send(kafka: Connection, topic: str, records: list[tuple[str, dict]]) -> None:
    producer = AIOKafkaProducer(**kafka.aiokafka_kwargs(), enable_idempotence=True)
    await producer.start()
    try:
        for execution_id, body in records:
            await producer.send(topic, orjson.dumps(body), key=execution_id.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def output_ends(kafka: Connection, topic: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(**kafka.aiokafka_kwargs(), isolation_level="read_committed")
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        return await consumer.end_offsets([TopicPartition(topic, p) for p in parts])
    finally:
        await consumer.stop()


async def read_outputs(
    kafka: Connection, topic: str, since: dict[TopicPartition, int], until: float, want: set[str]
) -> dict[str, list[dict]]:
    """Output records by execution id from `since`, until every id of `want` came out
    (or `until`, a monotonic deadline); then read up to the end offsets."""
    consumer = AIOKafkaConsumer(
        **kafka.aiokafka_kwargs(), isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    seen: dict[str, list[dict]] = {}
    try:
        consumer.assign(list(since))
        for tp, offset in since.items():
            consumer.seek(tp, offset)

        async def drain(deadline: float, ends: dict | None) -> None:
            while time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500)
                for recs in batches.values():
                    for m in recs:
                        seen.setdefault(m.key.decode(), []).append(orjson.loads(m.value))
                if ends is None and want <= seen.keys():
                    return
                if ends is not None:
                    positions = [await consumer.position(tp) for tp in ends]
                    if all(pos >= end for pos, end in zip(positions, ends.values(), strict=True)):
                        return

        await drain(until, None)
        ends = await consumer.end_offsets(list(since))
        await drain(time.monotonic() + 60, ends)
        return seen
    finally:
        await consumer.stop()


async def probe_merges(
    kafka: Connection, topics: Topics, ids: list[str], timeout: float
) -> tuple[float, dict[str, list[dict]]]:
    """Send a COMPLETED for each held execution of `ids`; seconds until all merged."""
    since = await output_ends(kafka, topics.output)
    started = time.monotonic()
    await _send(kafka, topics.raw, [(i, {"execution_id": i, "status": "COMPLETED"}) for i in ids])
    seen = await read_outputs(kafka, topics.output, since, started + timeout, set(ids))
    return time.monotonic() - started, seen


def check_restored(
    kafka: Connection, topics: Topics, pre: Preloaded, per_partition: int = 20
) -> list[str]:
    """The restored state is right: held executions merge with their RUNNING (positive
    control), finished ones send nothing for a late RUNNING or a repeated terminal."""
    held = [i for p in range(PARTITIONS) for i in pre.held[p][-per_partition:]]
    finished = [i for p in range(PARTITIONS) for i in pre.finished[p][:per_partition]]

    async def run() -> dict[str, list[dict]]:
        since = await output_ends(kafka, topics.output)
        late = []
        for i in finished:
            late.append((i, {"execution_id": i, "status": "RUNNING", "route_id": "late"}))
            late.append((i, {"execution_id": i, "status": "COMPLETED"}))
        await _send(kafka, topics.raw, late)
        ok = [(i, {"execution_id": i, "status": "COMPLETED"}) for i in held]
        await _send(kafka, topics.raw, ok)
        return await read_outputs(kafka, topics.output, since, time.monotonic() + 120, set(held))

    seen = asyncio.run(run())
    problems = []
    for i in held:
        outs = seen.get(i, [])
        if len(outs) != 1 or "route_id" not in outs[0]:
            problems.append(f"held {i}: {len(outs)} outputs {outs[:2]}")
    for i in finished:
        if i in seen:
            problems.append(f"finished {i} came out again: {seen[i][:2]}")
    say(
        f"restore: checked {len(held)} held executions (merged with their RUNNING) and "
        f"{len(finished)} finished ones (late RUNNING and repeated terminal: nothing out): "
        f"{len(problems)} problems"
    )
    return problems


def restored_line(worker) -> tuple[int, int, float] | None:
    """(records, partitions, seconds) of the worker's last restore log line."""
    found = RESTORED.findall(worker.log_path.read_bytes())
    if not found:
        return None
    records, partitions, seconds = found[-1]
    return int(records), int(partitions), float(seconds)


class RestoreProfile(Profile):
    """py-spy of a worker from the moment its log says the restore began."""

    def __init__(self, worker, out: Path, seconds: float) -> None:
        super().__init__(worker.process.pid, out, seconds)
        self.worker = worker

    def _run(self) -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and self.worker.alive:
            if b"Restoring state from changelog" in self.worker.log_path.read_bytes():
                super()._run()
                return
            time.sleep(0.2)  # poll the log for the restore's start
        self.error = "the worker never began a restore"

    def join(self) -> None:
        self.thread.join(self.seconds + 630)


def wait_ready(workers, timeout: float) -> float:
    started = time.monotonic()
    for w in workers:
        w.wait_ready(max(1.0, timeout - (time.monotonic() - started)))
    return time.monotonic() - started


def measure(
    kafka: Connection,
    run_dir: Path,
    held: int,
    markers: int,
    seed: int,
    scale_out: bool,
    profile_s: float = 0.0,
) -> dict:
    topics = fresh_topics("restore")
    asyncio.run(create_topics(kafka, topics))
    pre = asyncio.run(preload_changelog(kafka, topics, held, markers, seed))
    records, seconds = asyncio.run(plain_read(kafka, changelog_topic(topics)))
    ceiling = records / seconds
    say(f"restore: ceiling, a plain consumer read {records:,} records in {seconds:.1f}s")
    result: dict = {
        "held": held,
        "markers": markers,
        "changelog_records": pre.records,
        "changelog_payload_bytes": pre.bytes,
        "ceiling_records": records,
        "ceiling_seconds": seconds,
        "ceiling_records_per_s": ceiling,
    }
    env = {"CAMELEER_STALE_AFTER": str(STALE_AFTER_S)}
    worker = start_worker(kafka, topics, run_dir / "w-wiped", **env)
    started = time.monotonic()
    profile = None
    if profile_s:
        profile = RestoreProfile(worker, run_dir / "restore.pyspy", profile_s).start()
    try:
        result["ready_seconds"] = wait_ready([worker], 1800)
        line = restored_line(worker)
        if line:
            result["restore_records"], _, result["restore_seconds"] = line
            result["restore_records_per_s"] = line[0] / max(line[2], 1e-9)
        probe = [pre.held[p][0] for p in range(PARTITIONS)]
        _, seen = asyncio.run(probe_merges(kafka, topics, probe, 600))
        result["merging_again_seconds"] = time.monotonic() - started
        result["problems"] = [*unmerged(probe, seen), *check_restored(kafka, topics, pre)]
        result["counts"] = worker.counts()
    finally:
        worker.stop()
    if profile is not None:
        profile.join()
        result["profile"] = profile.error or profile.hot
    say(
        f"restore: wiped worker restored {result.get('restore_records', 0):,} records in "
        f"{result.get('restore_seconds', 0):.1f}s "
        f"({result.get('restore_records_per_s', 0):,.0f} records/s; ceiling {ceiling:,.0f}/s), "
        f"ready after {result['ready_seconds']:.1f}s, every partition merging again after "
        f"{result['merging_again_seconds']:.1f}s"
    )
    if scale_out:
        result["scale_out"] = measure_scale_out(kafka, topics, run_dir, pre, env)
        result["problems"] += result["scale_out"]["problems"]
    return result


def unmerged(ids: list[str], seen: dict[str, list[dict]]) -> list[str]:
    """Probes that did not come out merged with their held RUNNING, exactly once."""
    return [
        f"probe {i}: {seen.get(i, [])[:2]}"
        for i in ids
        if len(seen.get(i, [])) != 1 or "route_id" not in seen[i][0]
    ]


def measure_scale_out(kafka: Connection, topics: Topics, run_dir: Path, pre, env) -> dict:
    """Two workers share the partitions (each a standby of the other's); a third joins
    and restores the partitions it is given from the changelog (it has no standby)."""
    w1 = start_worker(kafka, topics, run_dir / "w1", **env)
    w2 = start_worker(kafka, topics, run_dir / "w2", **env)
    workers = [w1, w2]
    started = time.monotonic()
    try:
        wait_ready(workers, 1800)
        _, seen = asyncio.run(
            probe_merges(kafka, topics, [pre.held[p][1] for p in range(PARTITIONS)], 600)
        )
        out: dict = {
            "two_new_workers_merging_seconds": time.monotonic() - started,
            "w1_restore": restored_line(w1),
            "w2_restore": restored_line(w2),
            "problems": unmerged([pre.held[p][1] for p in range(PARTITIONS)], seen),
        }
        w3 = start_worker(kafka, topics, run_dir / "w3", **env)
        workers.append(w3)
        started = time.monotonic()
        # ready once its first recovery is complete: it has restored what it was given
        # (the others meanwhile took their share back, from their standbys or RocksDB)
        out["joined_ready_seconds"] = wait_ready([w3], 1800)
        probe = [pre.held[p][2] for p in range(PARTITIONS)]
        _, seen = asyncio.run(probe_merges(kafka, topics, probe, 1200))
        out["joined_merging_seconds"] = time.monotonic() - started
        out["problems"] += unmerged(probe, seen)
        out["w3_restore"] = restored_line(w3)
        say(
            f"restore: two new workers merging on every partition after "
            f"{out['two_new_workers_merging_seconds']:.1f}s (restores {out['w1_restore']}, "
            f"{out['w2_restore']}); a third joined: every partition merging again after "
            f"{out['joined_merging_seconds']:.1f}s (its restore {out['w3_restore']})"
        )
        return out
    finally:
        for w in workers:
            w.stop()


def text(result: dict) -> str:
    """The restore figures as `make bench` prints them."""
    rate = result.get("restore_records_per_s", 0.0)
    ceiling = result["ceiling_records_per_s"]
    goal = min(GOAL_RATE, ceiling / 2)
    lines = [
        f"restore: {result['held']:,} held RUNNING executions and {result['markers']:,} dedupe "
        f"markers, {result['changelog_records']:,} changelog records",
        f"  ceiling, a plain read_committed consumer  {ceiling:>10,.0f} records/s "
        f"({result['ceiling_seconds']:.1f} s)",
        f"  restore, a wiped worker                   {rate:>10,.0f} records/s "
        f"({result.get('restore_seconds', 0):.1f} s; {rate / ceiling:.2f} of the ceiling; goal "
        f"{goal:,.0f}/s: {'met' if rate >= goal else 'MISSED'})",
        f"  wiped worker merging on every partition   {result['merging_again_seconds']:>10.1f} s "
        f"from its start (ready after {result['ready_seconds']:.1f} s)",
    ]
    scale = result.get("scale_out")
    if scale:
        lines += [
            f"  two new workers merging everywhere        "
            f"{scale['two_new_workers_merging_seconds']:>10.1f} s (restores: "
            f"{scale['w1_restore']}, {scale['w2_restore']})",
            f"  a third joins: every partition merging    "
            f"{scale['joined_merging_seconds']:>10.1f} s (its restore: {scale['w3_restore']})",
        ]
    problems = result.get("problems", [])
    lines.append(
        f"  restored state checked: {'right' if not problems else f'{len(problems)} PROBLEMS'}"
    )
    lines += [f"    {p}" for p in problems[:10]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.restore", description=__doc__)
    p.add_argument("--held", type=int, default=100_000, help="held RUNNING executions")
    p.add_argument("--markers", type=int, default=900_000, help="dedupe markers")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-scale-out", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the work folder (worker logs)")
    p.add_argument("--profile", type=float, default=0.0, help="py-spy the restore, seconds")
    args = p.parse_args(argv)
    run_dir = WORK_DIR / uuid.uuid4().hex[:8]
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with broker_for_run(run_dir) as (kafka, _):
            result = measure(
                kafka,
                run_dir,
                args.held,
                args.markers,
                args.seed,
                not args.no_scale_out,
                args.profile,
            )
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        print(text(result), flush=True)
        return 1 if result["problems"] else 0
    finally:
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
