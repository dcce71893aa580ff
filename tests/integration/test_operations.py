"""Running it in production: /metrics, /health and /ready, the live view, table routing.

One module, two worker processes on the real broker (the second joins half-way):
the counters are checked exactly against the records produced, readiness is watched
on start and through the rebalance the second worker causes, and an execution is
asked of the worker that does not own it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chaos.processes import WORKER_COMMAND, Topics, WorkerProcess

from .harness import consume_until, create_topic, event, partition_of, produce

pytestmark = pytest.mark.integration

STALE_AFTER = 3
MAX_RECORD_BYTES = 20_000
ENV = {
    "CAMELEER_STALE_AFTER": str(STALE_AFTER),
    "CAMELEER_MAX_RECORD_BYTES": str(MAX_RECORD_BYTES),
    "CAMELEER_WEB_ADVERTISED_HOST": "127.0.0.1",
}


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def get_json(port: int, path: str) -> tuple[int, dict]:
    status, body = get(port, path)
    return status, orjson.loads(body)


class ReadyWatch:
    """/ready's status, sampled every 50 ms in a thread: (monotonic time, status, reasons)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.samples: list[tuple[float, int, list]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):  # the sampling interval
            try:
                status, body = get_json(self.port, "/ready")
                self.samples.append((time.monotonic(), status, body.get("reasons", [])))
            except OSError:
                continue  # the web server is not up yet

    def statuses(self, since: float = 0.0) -> list[int]:
        return [s for t, s, _ in self.samples if t >= since]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def wait_for(what: str, check, timeout: float = 60.0):
    """Poll `check()` until it returns a truthy value; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)  # the poll interval


@pytest.fixture(scope="module")
def topics(bootstrap) -> Topics:
    run = uuid.uuid4().hex[:8]
    names = Topics.fresh(f"ops-{run}")
    create_topic(bootstrap, names.raw, partitions=3)
    return names


@pytest.fixture(scope="module")
def started(bootstrap, topics, tmp_path_factory):
    """Worker A, with /ready watched from before its web server answers."""
    proc = WorkerProcess(bootstrap, topics, Path(tmp_path_factory.mktemp("a")), extra_env=ENV)
    proc.start(wait=False)
    watch = ReadyWatch(proc.web_port)
    try:
        proc.wait_ready()
        yield proc, watch
    finally:
        watch.stop()
        proc.stop()


@pytest.fixture(scope="module")
def worker_a(started) -> WorkerProcess:
    return started[0]


def metrics(port: int) -> dict[tuple[str, tuple], float]:
    status, body = get(port, "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(scrape: dict, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lbl), v in scrape.items() if n == name and want <= set(lbl))


def test_ready_goes_from_503_to_200_on_start(started):
    worker, watch = started
    wait_for("/ready to answer 200", lambda: 200 in watch.statuses())
    statuses = watch.statuses()
    first_ok = statuses.index(200)
    assert 503 in statuses[:first_ok], statuses
    assert all(s == 200 for s in statuses[first_ok:]), statuses
    reasons = {r for _, s, rs in watch.samples if s == 503 for r in rs}
    assert reasons <= {
        "agent registry not read yet",
        "rebalancing",
        "table state recovering",
        "no partitions assigned",
    }, reasons
    assert get(worker.web_port, "/health")[0] == 200


def test_metrics_count_exactly_what_was_produced(bootstrap, topics, worker_a):
    run = uuid.uuid4().hex[:8]
    merged = [f"m-{run}-{i}" for i in range(5)]
    terminal_only = [f"t-{run}-{i}" for i in range(3)]
    passthrough = [f"p-{run}-{i}" for i in range(2)]
    stuck = f"s-{run}"
    records = []
    for eid in merged:
        records.append((eid.encode(), event(eid, "RUNNING", route_id="r", agent_id="a1")))
        records.append((eid.encode(), event(eid, "COMPLETED", duration_ms=5)))
    dup, late = merged[3], merged[4]
    records.append((dup.encode(), event(dup, "COMPLETED", duration_ms=5)))  # duplicate
    records.append((late.encode(), event(late, "RUNNING", route_id="r")))  # after its terminal
    for i, eid in enumerate(terminal_only):
        records.append((eid.encode(), event(eid, "FAILED" if i == 0 else "COMPLETED")))
    for eid in passthrough:
        records.append((eid.encode(), event(eid, "COMPLETED", protocol_version=2)))
    records.append((stuck.encode(), event(stuck, "RUNNING", route_id="stuck", agent_id="a1")))
    big = f"big-{run}"
    dead = {
        "invalid-json": (b"k1", b"{not json"),
        "not-an-object": (b"k2", b"[1, 2]"),
        "missing-execution-id": (b"k3", orjson.dumps({"status": "RUNNING"})),
        "invalid-status": (b"k4", event(f"x-{run}", "DONE")),
        "unsupported-protocol-version": (b"k5", event(f"y-{run}", "FAILED", protocol_version=3)),
        "too-large": (big.encode(), event(big, "COMPLETED", output_body="x" * MAX_RECORD_BYTES)),
    }
    records += dead.values()
    produce(bootstrap, topics.raw, records)

    expected = {
        ("cameleer_output_records_total", "origin", "merged"): 5,
        ("cameleer_output_records_total", "origin", "terminal-only"): 3,
        ("cameleer_output_records_total", "origin", "passthrough"): 2,
        ("cameleer_output_records_total", "origin", "stale-running"): 1,
        ("cameleer_dropped_total", "why", "duplicate_terminal"): 1,
        ("cameleer_dropped_total", "why", "late_running"): 1,
        ("cameleer_dropped_total", "why", "redelivered"): 0,
        ("cameleer_dropped_total", "why", "retention"): 0,
        **{("cameleer_dead_letters_total", "reason", r): 1 for r in dead},
    }

    def scraped():
        scrape = metrics(worker_a.web_port)
        got = {k: total(scrape, k[0], **{k[1]: k[2]}) for k in expected}
        # the held gauges come from a census cached for a few seconds: they follow
        held = (
            total(scrape, "cameleer_held_executions"),
            total(scrape, "cameleer_held_stale_executions"),
        )
        return scrape if got == expected and held == (1, 1) else None

    scrape = wait_for("the counters to reach the records produced", scraped)
    # what a read_committed consumer sees agrees, record for record
    ours = {e.encode() for e in [*merged, *terminal_only, *passthrough, stuck]}
    out = consume_until(
        bootstrap, topics.output, lambda rs: sum(r.key in ours for r in rs) >= 11, timeout=30
    )
    origins = Counter(r.origin for r in out if r.key in ours)
    assert origins == {"merged": 5, "terminal-only": 3, "passthrough": 2, "stale-running": 1}
    dlq = consume_until(bootstrap, topics.dlq, lambda rs: len(rs) >= 6, timeout=30)
    reasons = Counter(r.headers["cameleer-error"].decode() for r in dlq)
    assert reasons == Counter(dead.keys())
    for reason, n in reasons.items():
        assert total(scrape, "cameleer_dead_letters_total", reason=reason) == n

    # the stuck one is held, flushed as stale, and old enough
    assert total(scrape, "cameleer_held_executions") == 1
    assert total(scrape, "cameleer_held_stale_executions") == 1
    oldest = [v for (n, _), v in scrape.items() if n == "cameleer_oldest_held_age_seconds"]
    assert max(oldest) >= STALE_AFTER
    # one end-to-end observation per terminal record published (merged, terminal-only, v2)
    assert total(scrape, "cameleer_end_to_end_seconds_count") == 10
    assert total(scrape, "cameleer_end_to_end_seconds_bucket", le="+Inf") == 10
    assert total(scrape, "cameleer_commit_seconds_count") >= 1
    assert total(scrape, "cameleer_transactions_total", result="committed") >= 1
    assert total(scrape, "cameleer_transactions_total", result="failed") == 0
    assert total(scrape, "cameleer_rebalances_total") >= 1
    # everything produced was handled and committed: no lag on the raw partitions
    lag = {
        dict(lbl)["partition"]: v
        for (n, lbl), v in scrape.items()
        if n == "cameleer_consumer_lag_records" and dict(lbl)["topic"] == topics.raw
    }
    assert lag == {"0": 0, "1": 0, "2": 0}


@pytest.fixture(scope="module")
def held(bootstrap, topics, worker_a) -> dict[str, dict]:
    """Executions left running: two agents, two routes, one RUNNING carrying a body."""
    run = uuid.uuid4().hex[:8]
    rows = {}
    records = []
    for i in range(6):
        eid = f"live-{run}-{i}"
        agent, route = ("agent-a", "orders") if i % 2 == 0 else ("agent-b", "billing")
        rows[eid] = {"agent_id": agent, "route_id": route}
        body = event(
            eid,
            "RUNNING",
            agent_id=agent,
            route_id=route,
            start_time=f"2026-11-28T10:00:0{i}Z",
            input_body="secret-body",
            headers={"Authorization": "secret-header"},
        )
        records.append((eid.encode(), body))
    produce(bootstrap, topics.raw, records)
    return rows


def running(port: int, query: str = "") -> dict:
    status, body = get_json(port, f"/executions/running?{query}")
    assert status == 200, body
    return body


def test_the_live_view_lists_held_executions_without_bodies(worker_a, held):
    port = worker_a.web_port
    page = wait_for(
        "the held executions in the live view",
        lambda: (p := running(port, "limit=100")) and held.keys() <= _ids(p) and p,
    )
    mine = [row for row in page["executions"] if row["execution_id"] in held]
    for row in mine:
        assert set(row) == {
            "execution_id",
            "agent_id",
            "route_id",
            "start_time",
            "first_seen",
            "age_s",
            "stale_flushed",
            "running_events",
            "partition",
        }
        assert (row["agent_id"], row["route_id"]) == tuple(held[row["execution_id"]].values())
    ages = [row["age_s"] for row in page["executions"]]
    assert ages == sorted(ages, reverse=True)  # oldest first
    text = get(port, "/executions/running?limit=100")[1]
    assert b"secret-body" not in text and b"secret-header" not in text
    # filtered and paged
    only_a = running(port, "agent=agent-a&route=orders&limit=100")
    assert {r["execution_id"] for r in only_a["executions"]} >= {
        e for e, v in held.items() if v["agent_id"] == "agent-a"
    }
    assert {r["agent_id"] for r in only_a["executions"]} == {"agent-a"}
    first, second = running(port, "limit=2"), running(port, "limit=2&offset=2")
    assert len(first["executions"]) == 2 == len(second["executions"])
    assert not _ids(first) & _ids(second)
    assert first["total"] == second["total"] == page["total"]
    # per-agent counts
    _, agents = get_json(port, "/agents")
    by_agent = {a["agent_id"]: a for a in agents["agents"]}
    assert by_agent["agent-a"]["in_flight"] >= 3 and by_agent["agent-b"]["in_flight"] == 3
    assert by_agent["agent-b"]["protocol_version"] == 1


def _ids(page: dict) -> set[str]:
    return {row["execution_id"] for row in page["executions"]}


@pytest.fixture(scope="module")
def worker_b(bootstrap, topics, started, held, tmp_path_factory):
    """Worker B joins the group: A goes through a rebalance, watched."""
    _, watch = started
    joined_at = time.monotonic()
    proc = WorkerProcess(bootstrap, topics, Path(tmp_path_factory.mktemp("b")), extra_env=ENV)
    proc.start()
    try:
        yield proc, watch, joined_at
    finally:
        proc.stop()


def test_a_rebalance_takes_readiness_away_and_back(worker_b, worker_a):
    b, watch, joined_at = worker_b

    def back_after_503():
        statuses = watch.statuses(since=joined_at)
        return 503 in statuses and statuses[-1] == 200 and 200 in statuses[statuses.index(503) :]

    wait_for("worker A's /ready to go 503 and back to 200", back_after_503)
    reasons = {r for t, s, rs in watch.samples if t >= joined_at and s == 503 for r in rs}
    assert reasons, "a 503 says why"
    both = wait_for(
        "both workers to own partitions",
        lambda: (
            (a := get_json(worker_a.web_port, "/ready")[1])["ready"]
            and (bb := get_json(b.web_port, "/ready")[1])["ready"]
            and (a, bb)
        ),
    )
    assert set(both[0]["partitions"]) | set(both[1]["partitions"]) == {0, 1, 2}
    assert not set(both[0]["partitions"]) & set(both[1]["partitions"])


def test_an_execution_is_answered_by_its_owner_whichever_worker_is_asked(worker_b, worker_a, held):
    b = worker_b[0]
    owners = {}
    for w in (worker_a, b):
        for p in get_json(w.web_port, "/ready")[1]["partitions"]:
            owners[p] = w
    for eid in held:
        owner = owners[partition_of(eid)]
        other = b if owner is worker_a else worker_a
        status, answer = wait_for(
            f"{eid} answered", lambda e=eid, o=other: _answered(o.web_port, e)
        )
        assert status == 200, answer
        assert answer["state"] == "running"
        assert answer["worker"] == f"http://127.0.0.1:{owner.web_port}", (owner, answer)
        assert answer["partition"] == partition_of(eid)
        assert "input_body" not in answer and b"secret" not in orjson.dumps(answer)
    status, answer = get_json(worker_a.web_port, f"/executions/never-{uuid.uuid4()}")
    assert status == 404 and answer["state"] == "unknown"


def _answered(port: int, eid: str):
    status, answer = get_json(port, f"/executions/{eid}")
    return (status, answer) if status == 200 else None


def test_the_running_command_shows_every_worker_s_executions(worker_b, worker_a, held):
    out = subprocess.run(
        [
            *WORKER_COMMAND,
            "running",
            "--url",
            f"http://127.0.0.1:{worker_a.web_port}",
            "--all-workers",
            "--limit",
            "1000",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["EXECUTION_ID", "AGENT", "ROUTE", "STARTED", "AGE", "STALE", "PART"]
    for eid, row in held.items():
        line = next(line for line in lines if line.startswith(eid))
        assert row["agent_id"] in line and row["route_id"] in line
    assert f"127.0.0.1:{worker_a.web_port}" in lines[-1]
    assert f"127.0.0.1:{worker_b[0].web_port}" in lines[-1]


def test_simulate_then_tail_shows_one_line_per_committed_record(
    bootstrap, topics, worker_b, tmp_path
):
    env = {**os.environ, **topics.env(), "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    summary = tmp_path / "sent.json"
    sim = subprocess.run(
        [
            *WORKER_COMMAND,
            *("simulate", "--rate", "100", "--duration", "0.5", "--mean-duration", "0.1"),
            *("--stuck-share", "0", "--malformed-share", "0", "--summary", str(summary)),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sim.returncode == 0, sim.stderr
    assert "simulate: done" in sim.stderr
    sent = json.loads(summary.read_text())
    assert sent["executions"] == 50 and sent["by_kind"].get("v2", 0) > 0
    # every simulated execution finished: one terminal record each, besides the 10 before
    wanted = 10 + sent["executions"]
    lines: list[str] = []
    tail = subprocess.Popen(
        [*WORKER_COMMAND, "tail", "--from-beginning"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reader = threading.Thread(target=lambda: lines.extend(tail.stdout), daemon=True)
    reader.start()
    try:
        wait_for(
            f"tail to print {wanted} terminal records",
            lambda: sum(line.split()[0] in TERMINAL for line in lines[1:]) >= wanted,
        )
    finally:
        tail.send_signal(signal.SIGINT)
        code = tail.wait(30)
    reader.join(10)
    assert code == 0, tail.stderr.read()
    assert lines[0].split() == ["origin", "status", "execution_id", "route", "duration"]
    rows = [line.split() for line in lines[1:]]
    assert {row[0] for row in rows} <= {*TERMINAL, "stale-running"}
    assert sum(row[0] in TERMINAL for row in rows) == wanted
    assert all(row[1] in ("COMPLETED", "FAILED") for row in rows if row[0] in TERMINAL)
    assert "records seen" in tail.stderr.read()


TERMINAL = {"merged", "terminal-only", "passthrough"}
