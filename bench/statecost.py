"""What the held state costs per execution: bytes in the changelog and in RocksDB.

`python -m bench.statecost` (no broker): N held RUNNING executions (simulator RUNNING
events, 400-800 bytes) and N dedupe markers, encoded as the worker encodes them
(app.core.heldstate), then
- the changelog: their records appended to a Kafka record batch (format v2,
  uncompressed, as the worker's producer writes with the default compression), the
  bytes per record the topic keeps once compacted (one record per key);
- RocksDB: replayed into an empty store with the worker's options, as a restore
  writes it (app.state.statestore.replay: the state and its local indexes), flushed and
  compacted, the bytes of its table files per execution.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from types import SimpleNamespace

from aiokafka.record.default_records import DefaultRecordBatchBuilder
from faust.stores.rocksdb import RocksDBOptions

import simulator
from app.core.heldstate import Held, Marker, Source, encode_state, index_key, state_key
from app.state.statestore import replay
from app.worker import ROCKSDB_OPTIONS

from .common import say

MARKER_LIFE_MS = 3 * 86_400_000


def batch_bytes(records: list[tuple[bytes, bytes]]) -> float:
    """Bytes per record of `records` in Kafka record batches of 1 MB (headers shared)."""
    total = 0
    builder = None
    now = int(time.time() * 1000)
    for i, (key, value) in enumerate(records):
        if builder is None:
            builder = DefaultRecordBatchBuilder(
                magic=2,
                compression_type=0,
                is_transactional=1,
                producer_id=1,
                producer_epoch=0,
                base_sequence=0,
                batch_size=1 << 20,
            )
            first = i
        if builder.append(i - first, timestamp=now, key=key, value=value, headers=[]) is None:
            total += builder.size()
            builder = None
    if builder is not None:
        total += builder.size()
    return total / len(records)


def rocksdb_bytes(records: list[tuple[bytes, bytes]]) -> float:
    """Table-file bytes per state of `records` replayed into an empty RocksDB."""
    options = {k: v for k, v in ROCKSDB_OPTIONS.items()}
    with tempfile.TemporaryDirectory() as path:
        db = RocksDBOptions(**options, use_rocksdict=True).open(path)
        rows = [SimpleNamespace(key=k, value=v, offset=i) for i, (k, v) in enumerate(records)]
        held: set[bytes] = set()
        for start in range(0, len(rows), 20_000):
            replay(db, rows[start : start + 20_000], b"__faust\0offset__", held)
        db.flush()
        db.compact_range(None, None)
        size = sum(
            os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".sst")
        )
        db.close()
    return size / len(records)


def state_cost(n: int = 100_000, seed: int = 1) -> dict:
    now = int(time.time() * 1000)
    held: list[tuple[bytes, bytes]] = []
    for i, step in enumerate(simulator.iter_steps(seed, n, **simulator.only(stuck_share=1.0))):
        eid = step.execution.execution_id
        rec = step.record
        src = Source("raw", 0, i, now, rec.key, rec.value, tuple(rec.headers))
        held.append((state_key(eid), encode_state(Held(now, now + 300_000, False, (src,)))))
    markers = []
    old_index = []  # the time-index record the changelog also carried before it was derived
    for _ in range(n):
        eid = str(uuid.uuid4())
        markers.append((state_key(eid), encode_state(Marker(now + MARKER_LIFE_MS))))
        old_index.append((index_key(now + MARKER_LIFE_MS, eid), b""))
    out = {
        "executions": n,
        "held_changelog_bytes": batch_bytes(held),
        "held_payload_bytes": sum(len(k) + len(v) for k, v in held) / n,
        "held_rocksdb_bytes": rocksdb_bytes(held),
        "marker_changelog_bytes": batch_bytes(markers),
        "marker_changelog_bytes_with_index_record": batch_bytes(markers) + batch_bytes(old_index),
        "marker_payload_bytes": sum(len(k) + len(v) for k, v in markers) / n,
        "marker_rocksdb_bytes": rocksdb_bytes(markers),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.statecost", description=__doc__)
    p.add_argument("--executions", type=int, default=100_000)
    args = p.parse_args(argv)
    cost = state_cost(args.executions)
    say(
        f"state cost per execution ({args.executions:,} of each): held RUNNING "
        f"{cost['held_changelog_bytes']:.0f} B in the changelog, "
        f"{cost['held_rocksdb_bytes']:.0f} B in RocksDB; dedupe marker "
        f"{cost['marker_changelog_bytes']:.0f} B in the changelog (with the time-index "
        f"record it carried before: {cost['marker_changelog_bytes_with_index_record']:.0f} B), "
        f"{cost['marker_rocksdb_bytes']:.0f} B in RocksDB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
