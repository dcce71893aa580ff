"""`cameleer-merger simulate | tail | running`: the commands around the worker.

- `simulate --rate N --duration S`: realistic agent traffic on the raw topic (v1 and
  v2 agents, some executions stuck, some failed, a few malformed records), paced in
  real time, with a progress line; agents registered first.
- `tail`: follows the merged topic (read_committed, no consumer group) and prints
  one compact line per record: origin, status, execution_id, route, duration.
- `running`: the in-flight executions a worker holds (GET /executions/running), as
  a table; with `--all-workers`, every worker the first one knows of.

They connect as the worker does (app.kafka.connection): the same KAFKA_* and
CAMELEER_* variables, or the same options.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter

import orjson

from app.ops.config import OPTIONS, Settings

COMMANDS = ("simulate", "tail", "running")


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection and topics (as the worker's)")
    for opt in OPTIONS:
        if opt.env.startswith("KAFKA_") or opt.env.endswith("_TOPIC"):
            group.add_argument(opt.flag, metavar=opt.env, help=f"{opt.help} (${opt.env})")


def _settings(args: argparse.Namespace) -> Settings:
    env = dict(os.environ)
    for opt in OPTIONS:
        value = getattr(args, opt.flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            env[opt.env] = value
    return Settings.from_env(env)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="cameleer-merger", description=__doc__.split("\n")[0])
    sub = top.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="produce realistic agent traffic to the raw topic")
    sim.add_argument("--rate", type=float, default=20.0, help="executions started per second")
    sim.add_argument("--duration", type=float, default=30.0, help="seconds of executions")
    sim.add_argument("--seed", type=int, help="the same seed sends the same records (default: new)")
    sim.add_argument("--v2-share", type=float, default=0.2, help="executions from v2 agents")
    sim.add_argument("--stuck-share", type=float, default=0.05, help="RUNNING, never ending")
    sim.add_argument("--failed-share", type=float, default=0.1, help="terminals that FAILED")
    sim.add_argument("--malformed-share", type=float, default=0.01, help="bad records")
    sim.add_argument(
        "--mean-duration", type=float, default=2.0, help="seconds an execution runs, on average"
    )
    sim.add_argument("--summary", help="write what was sent, as JSON, to this file")
    _add_common(sim)

    tail = sub.add_parser("tail", help="print the merged topic's records as they commit")
    tail.add_argument("--from-beginning", action="store_true", help="not only new records")
    tail.add_argument("--summary", help="on exit, write the records seen by origin to this file")
    _add_common(tail)

    running = sub.add_parser("running", help="the in-flight executions a worker holds")
    running.add_argument(
        "--url",
        default=f"http://localhost:{os.environ.get('CAMELEER_WEB_PORT', '6066')}",
        help="a worker's endpoints (default http://localhost:$CAMELEER_WEB_PORT)",
    )
    running.add_argument("--all-workers", action="store_true", help="ask every worker")
    running.add_argument("--agent", help="only this agent's executions")
    running.add_argument("--route", help="only this route's executions")
    running.add_argument("--limit", type=int, default=50, help="rows per worker")
    running.add_argument("--offset", type=int, default=0)
    running.add_argument("--newest", action="store_true", help="newest first (default oldest)")
    running.add_argument("--json", action="store_true", help="the JSON answers, unformatted")
    return top


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "running":
            return running(args)
        settings = _settings(args)
        if args.command == "simulate":
            return asyncio.run(simulate(args, settings))
        return asyncio.run(tail(args, settings))
    except KeyboardInterrupt:
        return 130
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"cameleer-merger {args.command}: {exc}", file=sys.stderr)
        return 2


# ---- simulate -------------------------------------------------------------------------


class Progress:
    """One line, rewritten in place on a terminal; a line every `every` seconds otherwise."""

    def __init__(self, stream=sys.stderr, every: float = 1.0) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.every = every if self.tty else max(every, 5.0)
        self.last = 0.0

    def show(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        if self.tty:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self, text: str) -> None:
        self.show(text, force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


async def simulate(args: argparse.Namespace, settings: Settings) -> int:
    from aiokafka import AIOKafkaProducer

    from simulator import agent_registrations, iter_steps

    if args.rate <= 0 or args.duration <= 0:
        raise ValueError("--rate and --duration must be positive")
    if args.seed is None:  # new execution ids on every run: a rerun is not a duplicate
        args.seed = int.from_bytes(os.urandom(4), "big")
    executions = max(1, round(args.rate * args.duration))
    interval_ms = max(1, round(1000 / args.rate))
    params = dict(
        v2_share=args.v2_share,
        stuck_share=args.stuck_share,
        failed_share=args.failed_share,
        malformed_share=args.malformed_share,
        # the simulator's replays of a RUNNING an hour after its terminal (the agent
        # outage of the contract's late-RUNNING rule) would keep a live demo waiting
        replayed_running_share=0.0,
        interval_ms=interval_ms,
        in_flight=max(1, round(args.mean_duration * 1000 / interval_ms)),
        start_ms=int(time.time() * 1000),
    )
    producer = AIOKafkaProducer(
        **settings.connection.aiokafka_kwargs(),
        enable_idempotence=True,
        linger_ms=5,
        max_request_size=4 * 1024**2,
    )
    await producer.start()
    sent = Counter()
    kinds: Counter[str] = Counter()
    malformed: Counter[str] = Counter()
    progress = Progress()
    try:
        for reg in agent_registrations(args.seed, **params):
            await producer.send_and_wait(
                settings.agents_topic, reg.value, key=reg.key, headers=reg.headers
            )
        started = time.monotonic()
        pending = []
        for step in iter_steps(args.seed, executions, **params):
            due = (step.at_ms - params["start_ms"]) / 1000
            wait = due - (time.monotonic() - started)
            if wait > 0:
                if pending:
                    await asyncio.gather(*pending)
                    pending = []
                await asyncio.sleep(wait)  # pacing: records go out at the agents' pace
            record = step.record
            pending.append(
                await producer.send(
                    settings.raw_topic, record.value, key=record.key, headers=record.headers
                )
            )
            sent["records"] += 1
            if step.execution is None:
                malformed[step.reason or "?"] += 1
            elif step.index == 0:
                kinds[str(step.execution.kind)] += 1
                sent["executions"] += 1
                sent[f"v{step.execution.protocol}"] += 1
            elapsed = time.monotonic() - started
            progress.show(
                f"simulate: {elapsed:5.1f} s  {sent['executions']:,}/{executions:,} executions "
                f"({sent['v1']:,} v1, {sent['v2']:,} v2)  {sent['records']:,} records "
                f"({sent['records'] / max(elapsed, 0.001):,.0f}/s)  "
                f"{sum(malformed.values())} malformed"
            )
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    elapsed = time.monotonic() - started
    progress.done(
        f"simulate: done in {elapsed:.1f} s: {sent['executions']:,} executions "
        f"({sent['v1']:,} v1, {sent['v2']:,} v2), {sent['records']:,} records to "
        f"{settings.raw_topic}, {sum(malformed.values())} malformed (seed {args.seed})"
    )
    if args.summary:
        with open(args.summary, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "executions": sent["executions"],
                    "records": sent["records"],
                    "by_kind": dict(kinds),
                    "malformed": dict(malformed),
                    "seconds": round(elapsed, 1),
                    "seed": args.seed,
                },
                f,
                indent=2,
            )
    return 0


# ---- tail -----------------------------------------------------------------------------


def tail_line(origin: str, value: bytes | None) -> str:
    """origin, status, execution_id, route and duration of one merged-topic record."""
    try:
        body = orjson.loads(value) if value else {}
    except orjson.JSONDecodeError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    duration = body.get("duration_ms")
    took = f"{duration} ms" if isinstance(duration, int | float) else "-"
    return (
        f"{origin or '?':<13} {body.get('status', '?')!s:<9} "
        f"{body.get('execution_id', '?')!s:<36}  {body.get('route_id') or '-'!s:<24} "
        f"{took:>9}"
    )


async def tail(args: argparse.Namespace, settings: Settings) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from app.kafka.probes import stop_quietly

    consumer = AIOKafkaConsumer(
        **settings.connection.aiokafka_kwargs(),
        isolation_level="read_committed",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    origins: Counter[str] = Counter()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        partitions = consumer.partitions_for_topic(settings.output_topic)
        if not partitions:
            await consumer._client.force_metadata_update()  # noqa: SLF001 no public metadata refresh; a topic created a moment ago
            partitions = consumer.partitions_for_topic(settings.output_topic) or set()
        if not partitions:
            raise RuntimeError(f"topic {settings.output_topic} not found")
        tps = [TopicPartition(settings.output_topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        if args.from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        print(f"{'origin':<13} {'status':<9} {'execution_id':<36}  {'route':<24} {'duration':>9}")
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for rec in records:
                    origin = dict(rec.headers or ()).get("cameleer-origin", b"").decode()
                    origins[origin] += 1
                    print(tail_line(origin, rec.value), flush=False)
            sys.stdout.flush()
    finally:
        await stop_quietly(consumer)
        seen = ", ".join(f"{n:,} {o}" for o, n in sorted(origins.items())) or "none"
        print(f"tail: {sum(origins.values()):,} records seen ({seen})", file=sys.stderr)
        if args.summary:
            with open(args.summary, "w", encoding="utf-8") as f:
                json.dump(dict(origins), f, indent=2)
    return 0


# ---- running --------------------------------------------------------------------------


def _get(url: str, timeout: float = 10.0) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return orjson.loads(exc.read() or b"{}") | {"http_status": exc.code}


def worker_urls(url: str) -> list[str]:
    """Every worker of the group, as Faust's router knows them (the held table's owners)."""
    tables = _get(url.rstrip("/") + "/router/")
    urls = {u.rstrip("/") for u in tables} if isinstance(tables, dict) else set()
    return sorted(urls) or [url.rstrip("/")]


def running(args: argparse.Namespace) -> int:
    urls = worker_urls(args.url) if args.all_workers else [args.url.rstrip("/")]
    query = {"limit": args.limit, "offset": args.offset}
    query["order"] = "newest" if args.newest else "oldest"
    if args.agent:
        query["agent"] = args.agent
    if args.route:
        query["route"] = args.route
    answers = []
    for url in urls:
        try:
            answers.append(_get(f"{url}/executions/running?{urllib.parse.urlencode(query)}"))
        except OSError as exc:
            print(f"cameleer-merger running: {url}: {exc}", file=sys.stderr)
            return 2
    if args.json:
        print(orjson.dumps(answers, option=orjson.OPT_INDENT_2).decode())
        return 0
    rows = [row for answer in answers for row in answer.get("executions", [])]
    rows.sort(key=lambda r: r["age_s"], reverse=not args.newest)
    print(format_running(rows))
    total = sum(a.get("total", 0) for a in answers)
    where = ", ".join(a.get("worker", "?") for a in answers)
    print(f"{len(rows)} shown of {total} in flight ({where})")
    return 0


def format_running(rows: list[dict]) -> str:
    head = ("EXECUTION_ID", "AGENT", "ROUTE", "STARTED", "AGE", "STALE", "PART")
    table = [head]
    for r in rows:
        table.append(
            (
                r["execution_id"],
                str(r.get("agent_id") or "-"),
                str(r.get("route_id") or "-"),
                str(r.get("start_time") or r.get("first_seen") or "-"),
                _age(r["age_s"]),
                "yes" if r.get("stale_flushed") else "no",
                str(r.get("partition", "")),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table)
    return "\n".join(line.rstrip() for line in lines)


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
