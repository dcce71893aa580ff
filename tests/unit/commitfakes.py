"""Stand-ins for what a commit talks to, recording every call in one list: no Kafka.

The state store is the real one, on a real RocksDB (rocksdict) in a temporary
folder; the producer, the group's consumer, the membership check, the watch and
`fatal` are fakes. `calls` holds what each did, in order.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from rocksdict import Options, Rdict

from app.engine.checkpoint import Checkpoint
from app.engine.outbox import Outbox
from app.state.statestore import StateStore

OFFSET_KEY = b"__offset__"
CHANGELOG = "held-changelog"
OUTPUT = "out"
BATCH_RECORDS = 2  # records per producer batch: a third one fills it


class Exited(Exception):
    """What `fatal` would have done: the process exits."""


class Log(list):
    def names(self) -> list[str]:
        return [call[0] for call in self]


class Builder:
    """aiokafka's BatchBuilder as the outbox uses it."""

    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self.closed = False

    def append(self, *, timestamp, key, value, headers):
        if len(self.keys) >= BATCH_RECORDS:
            return None
        self.keys.append(key)
        return SimpleNamespace()

    def size(self) -> int:
        return 100 * len(self.keys)

    def record_count(self) -> int:
        return len(self.keys)

    def close(self) -> None:
        self.closed = True


class Producer:
    """A transactional producer: batches get offsets in send order, per partition.

    A sent batch is acknowledged on the event loop's next turn ("acked" in `calls`),
    or with `hold` only at `release()`.
    """

    def __init__(self, calls: Log) -> None:
        self.calls = calls
        self.hold = False
        self.fail_commit: Exception | None = None
        self._ends: Counter = Counter()
        self._held: list[tuple] = []

    async def start(self) -> None:
        self.calls.append(("start",))

    async def stop(self) -> None:
        self.calls.append(("stop",))

    def create_batch(self) -> Builder:
        return Builder()

    async def send_batch(self, builder: Builder, topic: str, partition: int):
        self.calls.append(("send", topic, partition, tuple(builder.keys)))
        base = self._ends[(topic, partition)]
        self._ends[(topic, partition)] += builder.record_count()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        ack = (fut, topic, partition, base)
        if self.hold:
            self._held.append(ack)
        else:
            loop.call_soon(self._ack, *ack)
        return fut

    def _ack(self, fut: asyncio.Future, topic: str, partition: int, base: int) -> None:
        self.calls.append(("acked", topic, partition))
        fut.set_result(SimpleNamespace(offset=base))

    def release(self) -> None:
        """Acknowledge the batches held so far, and from now on every batch at once."""
        self.hold = False
        held, self._held = self._held, []
        for ack in held:
            self._ack(*ack)

    async def begin_transaction(self) -> None:
        self.calls.append(("begin",))

    async def send_offsets_to_transaction(self, offsets: dict, group) -> None:
        self.calls.append(("offsets", dict(offsets), group))

    async def commit_transaction(self) -> None:
        if self.fail_commit is not None:
            raise self.fail_commit
        self.calls.append(("commit",))


class Consumer:
    """The group's consumer: at_least_once commits the offsets through it."""

    def __init__(self, calls: Log, accept: bool = True) -> None:
        self.calls = calls
        self.accept = accept

    async def commit_offsets(self, offsets: dict) -> bool:
        self.calls.append(("commit_offsets", dict(offsets)))
        return self.accept


class Watch:
    def __init__(self, calls: Log) -> None:
        self.calls = calls

    def committed(self, seconds, offsets, counts, published_ms) -> None:
        self.calls.append(("watch", dict(offsets), dict(counts), list(published_ms)))

    def commit_failed(self) -> None:
        self.calls.append(("watch_failed",))


class Fatal:
    def __init__(self, calls: Log) -> None:
        self.calls = calls

    def __call__(self, what: str, exc: BaseException) -> None:
        self.calls.append(("fatal", what, exc))
        raise Exited(what)


class Data:
    """What the state store needs of Faust's RocksDB store."""

    offset_key = OFFSET_KEY

    def __init__(self, folder: Path) -> None:
        self.dbs: dict[int, Rdict] = {}
        self.folder = folder

    def _db_for_partition(self, partition: int) -> Rdict:
        return self.db(partition)

    def db(self, partition: int) -> Rdict:
        if partition not in self.dbs:
            path = str(self.folder / str(partition))
            self.dbs[partition] = Rdict(path, options=Options(raw_mode=True))
        return self.dbs[partition]

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()


def state_store(data: Data) -> StateStore:
    changelog = SimpleNamespace(get_topic_name=lambda: CHANGELOG)
    return StateStore(SimpleNamespace(data=data, changelog_topic=changelog))


class World:
    """A Checkpoint and everything it talks to."""

    def __init__(
        self, folder: Path, *, exactly_once: bool, accept: bool = True, member: bool = True
    ) -> None:
        self.calls = Log()
        self.producer = Producer(self.calls)
        self.consumer = Consumer(self.calls, accept)
        self.data = Data(folder)
        self.store = state_store(self.data)
        self.counts: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        self.published: list[int] = []
        self.fatal = Fatal(self.calls)
        self.member = member  # False: the membership check fails
        self.checkpoint = Checkpoint(
            self.producer,
            Outbox(self.producer),
            Outbox(self.producer),
            self.store,
            exactly_once=exactly_once,
            consumer=self.consumer,
            check_member=self.check_member,
            take_published=self.take_published,
            counts=self.counts,
            seconds=self.seconds,
            fatal=self.fatal,
            watch=Watch(self.calls),
        )

    def check_member(self) -> None:
        self.calls.append(("member",))
        if not self.member:
            self.fatal("fenced: this worker may no longer own its partitions", RuntimeError())

    def take_published(self) -> list[int]:
        published, self.published = self.published, []
        return published

    def db(self, partition: int = 0) -> Rdict:
        return self.data.db(partition)

    def handled(self, *keys: bytes, partition: int = 0) -> None:
        """What handling records does: outputs appended, their state written."""
        for key in keys:
            self.checkpoint.outputs.add(OUTPUT, partition, key, b"{}")
            self.store.apply(partition, {b"e" + key: b"marker-" + key})


async def until(condition, timeout: float = 5.0) -> None:
    """Poll `condition` at every turn of the event loop until it holds; fail at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"not true within {timeout} s: {condition}")
        await asyncio.sleep(0)  # the poll itself: one turn for the tasks under test
