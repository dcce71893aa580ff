"""`make demo`: broker, worker, simulator and tail together for about 30 seconds, then a summary.

1. A broker: the one at KAFKA_BOOTSTRAP_SERVERS if it answers, else the project's
   local broker, started for the demo in a temporary folder and stopped after.
2. A worker (the real `cameleer-merger` command) on fresh topics, so the demo
   never touches `make run`'s data; stale RUNNINGs are flushed after 10 s.
3. `cameleer-merger tail` prints the merged records as they commit, while
   `cameleer-merger simulate` sends agent traffic (v1 and v2 agents, some
   executions stuck, some failed, a few malformed records).
4. Once the worker has caught up: the executions still running (`cameleer-merger
   running`), then what was sent, what came out by origin, the dead letters, and
   whether the counts add up. Exit code 0 when they do.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

import localkafka
from app.kafka.connection import Connection
from chaos.processes import WORKER_COMMAND, Topics, WorkerProcess

STALE_AFTER = 10


def say(text: str) -> None:
    print(f"demo | {text}", flush=True)


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: dict, name: str, **labels) -> int:
    want = set(labels.items())
    return int(sum(v for (n, lbl), v in samples.items() if n == name and want <= set(lbl)))


def expected(sent: dict) -> dict[str, int]:
    kinds = sent["by_kind"]
    return {
        "finished": sent["executions"] - kinds.get("v1-stuck", 0),
        "stuck": kinds.get("v1-stuck", 0),
        "malformed": sum(sent["malformed"].values()),
        "duplicates": kinds.get("v1-duplicate-terminal", 0),
        "late": kinds.get("v1-late-running", 0),
    }


def settled(samples: dict, want: dict[str, int]) -> bool:
    terminal = sum(
        total(samples, "cameleer_output_records_total", origin=o)
        for o in ("merged", "terminal-only", "passthrough")
    )
    return (
        terminal == want["finished"]
        and total(samples, "cameleer_dead_letters_total") == want["malformed"]
        and total(samples, "cameleer_held_executions") == want["stuck"]
        and total(samples, "cameleer_consumer_lag_records") == 0
    )


def forward(stream, prefix: str) -> threading.Thread:
    def run() -> None:
        for line in stream:
            print(f"{prefix}{line.rstrip()}", flush=True)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    work = Path(tempfile.mkdtemp(prefix="cameleer-demo-"))
    code = run(work, argv)
    if code == 0:
        shutil.rmtree(work, ignore_errors=True)
    else:
        say(f"logs and state kept in {work}")
    return code


def run(work: Path, argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=20.0, help="executions per second")
    parser.add_argument("--duration", type=float, default=25.0, help="seconds of traffic")
    args = parser.parse_args(argv)

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
    broker = None
    if not localkafka.answers(*localkafka.parse_bootstrap(bootstrap)):
        say("starting a local Kafka broker (about 10 s)...")
        broker = localkafka.start(data_dir=work / "kafka")
        bootstrap = broker.bootstrap
    say(f"broker at {bootstrap}")
    connection = Connection.from_env({**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap})
    topics = Topics.fresh(f"demo-{uuid.uuid4().hex[:6]}")
    env = {**os.environ, **connection.env(), **topics.env()}
    worker = WorkerProcess(
        connection,
        topics,
        work / "worker",
        extra_env={
            "CAMELEER_STALE_AFTER": str(STALE_AFTER),
            "CAMELEER_RAW_PARTITIONS": "3",
            "CAMELEER_WEB_ADVERTISED_HOST": "127.0.0.1",
        },
    )
    tail = None
    try:
        say(f"starting the worker on {topics.raw} -> {topics.output} (log: {work}/worker)...")
        worker.start()
        port = worker.web_port
        say(f"worker ready: http://127.0.0.1:{port}/metrics, /ready, /executions/running")
        tail = subprocess.Popen(
            [*WORKER_COMMAND, "tail", "--from-beginning", "--summary", str(work / "tail.json")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        forward(tail.stdout, "tail | ")
        say(f"simulating {args.rate:g} executions/s for {args.duration:g} s...")
        sim = subprocess.Popen(
            [
                *WORKER_COMMAND,
                "simulate",
                "--rate",
                str(args.rate),
                "--duration",
                str(args.duration),
                "--summary",
                str(work / "sent.json"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        forward(sim.stdout, "simulate | ").join()
        if sim.wait() != 0:
            say("the simulator failed")
            return 1
        sent = json.loads((work / "sent.json").read_text())
        want = expected(sent)
        say("waiting for the worker to catch up...")
        deadline = time.monotonic() + 60
        samples = scrape(port)
        while not settled(samples, want) and time.monotonic() < deadline:
            time.sleep(0.5)  # poll interval
            samples = scrape(port)
        time.sleep(1.0)  # tail reads what the last commit published
        tail.send_signal(signal.SIGINT)
        tail.wait(30)
        seen = json.loads((work / "tail.json").read_text())
        samples = scrape(port)  # stale flushes go on: compared with what tail saw
        print(flush=True)
        say("executions still running (cameleer-merger running):")
        table = subprocess.run(
            [*WORKER_COMMAND, "running", "--url", f"http://127.0.0.1:{port}", "--limit", "10"],
            env=env,
            capture_output=True,
            text=True,
        )
        for line in table.stdout.splitlines():
            print(f"  {line}")
        return summary(sent, want, samples, seen)
    finally:
        if tail is not None and tail.poll() is None:
            tail.kill()
        worker.stop()
        if broker is not None:
            broker.stop()


def summary(sent: dict, want: dict[str, int], samples: dict, seen: dict) -> int:
    origins = ("merged", "terminal-only", "passthrough", "stale-running")
    out = {o: total(samples, "cameleer_output_records_total", origin=o) for o in origins}
    dead = {
        dict(lbl)["reason"]: int(v)
        for (n, lbl), v in samples.items()
        if n == "cameleer_dead_letters_total" and v
    }
    dropped = {
        dict(lbl)["why"]: int(v)
        for (n, lbl), v in samples.items()
        if n == "cameleer_dropped_total" and v
    }
    held = total(samples, "cameleer_held_executions")
    stale_held = total(samples, "cameleer_held_stale_executions")
    terminal = out["merged"] + out["terminal-only"] + out["passthrough"]
    kinds = sent["by_kind"]
    v2 = kinds.get("v2", 0)
    checks = [
        (
            "every finished execution has one terminal record",
            want["finished"],
            terminal,
        ),
        ("every v2 record passed through", v2, out["passthrough"]),
        ("every malformed record is a dead letter", want["malformed"], sum(dead.values())),
        ("every stuck execution is held", want["stuck"], held),
        ("duplicate terminals dropped", want["duplicates"], dropped.get("duplicate_terminal", 0)),
        ("late RUNNINGs dropped", want["late"], dropped.get("late_running", 0)),
        ("tail saw every terminal record", terminal, sum(seen.get(o, 0) for o in origins[:3])),
    ]
    # stale flushes go on while tail stops: at most the ones flushed since
    stale_seen = seen.get("stale-running", 0)
    checks.append(
        (
            "tail saw the stale RUNNINGs",
            out["stale-running"],
            out["stale-running"] if stale_seen <= out["stale-running"] <= stale_seen + 1 else -1,
        )
    )
    print()
    print("== demo summary ==")
    print(
        f"executions sent       {sent['executions']:,} ({sent['executions'] - v2:,} v1, {v2:,} v2;"
        f" {want['stuck']} stuck), {sent['records']:,} raw records"
    )
    print("records out by origin " + ", ".join(f"{o} {n:,}" for o, n in out.items()))
    print("seen by tail          " + ", ".join(f"{o} {n:,}" for o, n in sorted(seen.items())))
    print(
        f"dead letters          {sum(dead.values())}"
        + (" (" + ", ".join(f"{r} {n}" for r, n in sorted(dead.items())) + ")" if dead else "")
    )
    print("dropped               " + (", ".join(f"{w} {n}" for w, n in dropped.items()) or "0"))
    print(f"held now              {held} ({stale_held} flushed as stale RUNNING records)")
    ok = all(a == b for _, a, b in checks)
    print(f"counts add up         {'yes' if ok else 'NO'}")
    for what, a, b in checks:
        print(f"  {'ok ' if a == b else 'BAD'} {what}: expected {a:,}, got {b:,}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
