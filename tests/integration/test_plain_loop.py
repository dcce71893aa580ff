"""Bench contender (c), the plain aiokafka loop, does the worker's merge (a fair comparison).

`make bench` compares the worker with bench/plainloop.py; the comparison means
something only if the loop produces what the worker produces: one merged record
per execution, RUNNING fields kept, the terminal's fields winning, and the
same origin headers.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import orjson

from .harness import consume_until, create_topic, event, partition_of, produce

EXECUTIONS = 60


def test_plain_loop_merges_like_the_worker(bootstrap, tmp_path):
    run = uuid.uuid4().hex[:8]
    raw, output, agents = f"raw-plain-{run}", f"out-plain-{run}", f"agents-plain-{run}"
    create_topic(bootstrap, raw, partitions=3)
    create_topic(bootstrap, agents, partitions=1)
    ids = [f"p-{run}-{i}" for i in range(EXECUTIONS)]
    by_partition: dict[int, list] = {}
    for eid in ids:  # keyed by execution_id, on its partition, RUNNING then terminal
        by_partition.setdefault(partition_of(eid), []).extend(
            [
                (eid.encode(), event(eid, "RUNNING", route_id="r", note=None)),
                (eid.encode(), event(eid, "COMPLETED", route_id=None, duration_ms=7)),
            ]
        )
    for partition, records in by_partition.items():
        produce(bootstrap, raw, records, partition=partition)
    command = [
        sys.executable,
        *("-m", "bench.plainloop", "--bootstrap", bootstrap, "--raw", raw),
        *("--output", output, "--dlq", f"dlq-plain-{run}", "--agents", agents),
        *("--app-id", f"plain-{run}", "--state-dir", str(tmp_path / "rocksdb")),
        *("--partitions", "3"),
    ]
    log_path = tmp_path / "plainloop.log"
    with open(log_path, "wb") as log:
        loop = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wanted = {eid.encode() for eid in ids}
        deadline = time.monotonic() + 60
        records = []
        while not wanted <= {r.key for r in records}:  # the loop creates the output topic
            assert loop.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the plain loop wrote no merged records"
            records = consume_until(
                bootstrap, output, lambda rs: wanted <= {r.key for r in rs}, timeout=5
            )
    finally:
        loop.terminate()
        loop.wait(30)
    by_key = {}
    for r in records:
        assert r.key not in by_key, f"two records for {r.key!r}"
        by_key[r.key] = r
    assert by_key.keys() == wanted
    for r in by_key.values():
        assert r.headers["cameleer-origin"] == b"merged"
        body = orjson.loads(r.value)
        assert body["status"] == "COMPLETED"
        assert body["route_id"] == "r"  # the terminal's null does not erase it
        assert body["duration_ms"] == 7
        assert r.partition == partition_of(body["execution_id"])
