"""Static group membership on the real broker: restarts without a rebalance, and fencing.

Two workers with instance ids (CAMELEER_INSTANCE_ID) share a raw topic of three
partitions. One is killed with SIGKILL and restarted at once with its state folder (then
stopped with SIGTERM and restarted, as in a rolling restart): it gets its own
partitions back in the same group generation, the other worker's assignment does
not move, and every execution comes out once, merged. A zombie
(the worker paused while a new process runs under its instance id and state
folder) is refused and exits. Killed for good, a worker's partitions move to the
other one after the session timeout.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest

from app.engine.engine import EXIT_FATAL
from app.worker import heartbeat_interval
from chaos.processes import Topics, WorkerProcess

from .harness import consume_until, create_topic, event, for_key, partition_of, produce

pytestmark = [pytest.mark.integration, pytest.mark.long]

PARTITIONS = 3
# the workers' CAMELEER_SESSION_TIMEOUT: a restart must be done within it, and a worker
# process takes several seconds to start on a loaded machine
SESSION_TIMEOUT = 30.0
GENERATION = re.compile(rb"generation (\d+): source partitions resume")


def ready(worker: WorkerProcess) -> dict | None:
    """The worker's /ready answer when it is ready, else None."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/ready", timeout=5) as r:
            return orjson.loads(r.read())
    except (OSError, urllib.error.HTTPError):
        return None


def owned(worker: WorkerProcess) -> frozenset[int]:
    answer = ready(worker)
    return frozenset(answer["partitions"]) if answer else frozenset()


def rebalances(worker: WorkerProcess) -> int:
    return worker.counts().get("rebalances", 0)


def generations(worker: WorkerProcess) -> list[int]:
    """The group generations of the worker's assignments, from its current log."""
    return [int(g) for g in GENERATION.findall(worker.log_path.read_bytes())]


def wait_for(what: str, check, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)  # the poll interval


def split_between(a: WorkerProcess, b: WorkerProcess) -> tuple[frozenset, frozenset]:
    """Both ready, their partitions disjoint and covering the topic."""

    def split():
        pa, pb = owned(a), owned(b)
        if pa and pb and not pa & pb and pa | pb == set(range(PARTITIONS)):
            return pa, pb
        return None

    return wait_for("the partitions split between the two workers", split)


def executions(tag: str, per_partition: int = 4) -> dict[int, list[str]]:
    """Execution ids, `per_partition` landing on each raw partition."""
    out: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    i = 0
    while any(len(ids) < per_partition for ids in out.values()):
        eid = f"{tag}-{i}"
        p = partition_of(eid, PARTITIONS)
        if len(out[p]) < per_partition:
            out[p].append(eid)
        i += 1
    return out


def running(bootstrap: str, topics: Topics, ids) -> None:
    produce(bootstrap, topics.raw, [(e.encode(), event(e, "RUNNING", route_id="r")) for e in ids])


def completed(bootstrap: str, topics: Topics, ids) -> None:
    produce(
        bootstrap, topics.raw, [(e.encode(), event(e, "COMPLETED", duration_ms=3)) for e in ids]
    )


def merged_once(bootstrap: str, topics: Topics, ids: list[str]) -> None:
    """Every execution's one record is out, merged with its RUNNING; none twice.

    A sentinel per partition after the terminals: once the sentinels are readable,
    so is everything the workers wrote for the records before them.
    """
    sentinels = [f"sentinel-{uuid.uuid4()}" for _ in range(PARTITIONS)]
    for p, s in enumerate(sentinels):
        produce(bootstrap, topics.raw, [(s.encode(), event(s, "COMPLETED"))], partition=p)
    out = consume_until(
        bootstrap,
        topics.output,
        lambda rs: all(for_key(rs, s) for s in sentinels),
        timeout=120,
    )
    assert all(for_key(out, s) for s in sentinels), "the sentinels did not come out"
    counts = Counter(r.key.decode() for r in out)
    assert {e: counts[e] for e in ids} == dict.fromkeys(ids, 1)
    for e in ids:
        (record,) = for_key(out, e)
        assert record.origin == "merged" and record.json["route_id"] == "r", record.json


@pytest.fixture(scope="module")
def topics(bootstrap) -> Topics:
    names = Topics.fresh(f"static-{uuid.uuid4().hex[:8]}")
    create_topic(bootstrap, names.raw, partitions=PARTITIONS)
    return names


@pytest.fixture(scope="module")
def pair(bootstrap, topics, tmp_path_factory):
    """Workers a and b, with instance ids, each with its own state folder."""
    workers = {}
    for name in ("a", "b"):
        env = {
            "CAMELEER_INSTANCE_ID": f"merger-{name}",
            "CAMELEER_SESSION_TIMEOUT": str(SESSION_TIMEOUT),
        }
        state = Path(tmp_path_factory.mktemp(name))
        workers[name] = WorkerProcess(bootstrap, topics, state, extra_env=env)
    workers["a"].start()
    workers["b"].start()
    try:
        yield workers
    finally:
        for w in workers.values():
            if w.alive:
                w.resume()  # in case a test stopped it there
            w.kill()


def test_a_worker_restarted_with_its_instance_id_gets_its_partitions_back_alone(
    bootstrap, topics, pair
):
    a, b = pair["a"], pair["b"]
    own_a, own_b = split_between(a, b)
    ids = executions("restart")
    everyone = [e for p in sorted(ids) for e in ids[p]]
    running(bootstrap, topics, everyone)
    # a's RUNNINGs held and committed before the kill: a merge after the restart needs them
    merged_once(bootstrap, topics, [])
    b_rebalances, b_generations = rebalances(b), generations(b)
    a_generation = generations(a)[-1]
    assert b_rebalances >= 1 and b_generations

    a.kill()
    killed = time.monotonic()
    a.start(wait=False)
    late = [f"{e}-late" for p in sorted(own_a) for e in ids[p]]
    running(bootstrap, topics, late)  # while a is down: waits for its partitions' owner
    a.wait_ready()
    wait_for("a's assignment", lambda: generations(a) and owned(a))
    back = time.monotonic() - killed

    # the same generation: the coordinator handed a its assignment without a rebalance
    assert generations(a) == [a_generation], f"a was back after {back:.1f} s"
    assert owned(a) == own_a
    completed(bootstrap, topics, everyone + late)
    merged_once(bootstrap, topics, everyone + late)

    # Past the killed member's session timeout: its old member id expires without
    # effect, as the restart took its place. b never rebalanced, never moved.
    while time.monotonic() < killed + SESSION_TIMEOUT + 3:
        assert (owned(b), rebalances(b)) == (own_b, b_rebalances)
        time.sleep(0.5)  # the poll interval over the session timeout
    assert generations(b) == b_generations
    assert generations(a) == [a_generation]
    assert owned(a) == own_a

    # A rolling restart: stopped gracefully, a static member sends no LeaveGroup, and
    # comes back to its partitions in the same generation too.
    assert a.stop() == 0
    a.start()
    wait_for("a's assignment after the rolling restart", lambda: generations(a) and owned(a))
    assert generations(a) == [a_generation]
    assert (owned(a), owned(b), rebalances(b)) == (own_a, own_b, b_rebalances)
    assert generations(b) == b_generations


def test_a_zombie_with_the_same_instance_id_and_state_folder_is_refused(bootstrap, topics, pair):
    a = pair["a"]
    ids = executions("zombie")
    everyone = [e for p in sorted(ids) for e in ids[p]]
    running(bootstrap, topics, everyone)
    merged_once(bootstrap, topics, [])

    a.pause()  # a GC pause, a stalled VM: the orchestrator starts a new process
    paused = time.monotonic()
    heir = WorkerProcess(bootstrap, topics, a.state_dir, extra_env=a.extra_env, starts=a.starts)
    pair["a-heir"] = heir
    heir.start(wait=False)
    # The heir joins under the instance id (the coordinator fences the paused
    # member's id) and starts its producer with the same transactional id (the
    # paused one's producer is fenced); the paused process still holds the state
    # folder's RocksDB lock, so the heir waits for it.
    wait_for(
        "the heir to wait for the RocksDB lock",
        lambda: b"is locked" in heir.log_path.read_bytes(),
    )
    # Resumed, the zombie has nothing to commit: its next heartbeat is refused
    # (FENCED_INSTANCE_ID), and it exits instead of rejoining.
    a.resume()
    code = a.process.wait(timeout=30)
    assert code == EXIT_FATAL, a.log_tail()
    assert "[CRITICAL] fenced: another worker joined the group with this instance id" in (
        a.log_path.read_text(errors="replace")
    ), a.log_tail()
    heir.wait_ready()
    completed(bootstrap, topics, everyone)
    merged_once(bootstrap, topics, everyone)
    print(f"zombie refused; heir ready {time.monotonic() - paused:.1f} s after the pause")


def test_a_worker_killed_for_good_loses_its_partitions_after_the_session_timeout(
    bootstrap, topics, pair
):
    survivor, b = pair["a-heir"], pair["b"]
    ids = executions("takeover")
    everyone = [e for p in sorted(ids) for e in ids[p]]
    running(bootstrap, topics, everyone)
    merged_once(bootstrap, topics, [])
    before = rebalances(survivor)

    b.kill()
    killed = time.monotonic()
    completed(bootstrap, topics, everyone)
    wait_for(
        "the survivor to own every partition",
        lambda: owned(survivor) == set(range(PARTITIONS)),
    )
    moved = time.monotonic() - killed
    assert rebalances(survivor) > before
    # the session runs from b's last heartbeat, up to an interval before the kill (more
    # when a heartbeat came late on a loaded machine)
    soonest = SESSION_TIMEOUT - 2 * heartbeat_interval(SESSION_TIMEOUT)
    assert moved >= soonest, f"partitions moved after {moved:.1f} s"
    merged_once(bootstrap, topics, everyone)
