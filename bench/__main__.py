"""`make bench` / `python -m bench`: throughput vs a passthrough ceiling, latency at fixed
rates, and the worker's RSS while holding RUNNING executions (see bench/__init__.py)."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sys
import time
import uuid

from app.kafka.connection import Connection

from . import report
from .common import (
    WORK_DIR,
    all_topics,
    broker_for_run,
    create_topics,
    delete_topics,
    fresh_topics,
    say,
)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--executions", type=int, default=200_000, help="throughput workload size")
    p.add_argument("--seed", type=int, default=1)
    only = p.add_mutually_exclusive_group()
    only.add_argument("--latency-only", action="store_true")
    only.add_argument("--throughput-only", action="store_true")
    only.add_argument("--hold-only", action="store_true", help="only the RSS-while-holding check")
    only.add_argument(
        "--compression-only", action="store_true", help="only the CPU and bytes of each codec"
    )
    p.add_argument("--rates", default="1000,5000,10000", help="latency rates, events/s")
    p.add_argument("--latency-seconds", type=float, default=20.0, help="measured, per rate")
    p.add_argument("--warmup-seconds", type=float, default=5.0, help="excluded, per rate")
    p.add_argument(
        "--hold",
        type=int,
        default=1_000_000,
        help="RUNNING executions held for the RSS check (0 skips it)",
    )
    p.add_argument(
        "--restore",
        type=int,
        default=1_000_000,
        help="changelog keys for the restore figures, a tenth held RUNNINGs (0 skips them)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the worker for 20 s during the throughput run; hot spots in the report",
    )
    p.add_argument(
        "--compression-executions",
        type=int,
        default=20_000,
        help="workload of the codec comparison, written once per codec (0 skips it)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work folder and topics")
    p.add_argument(
        "--no-plain-loop",
        action="store_true",
        help="skip (c), the same merge in a plain aiokafka loop without Faust",
    )
    args = p.parse_args(argv)
    args.rates = [int(r) for r in args.rates.split(",") if r.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    one = args.latency_only or args.throughput_only or args.hold_only or args.compression_only
    do_throughput = args.throughput_only or not one
    do_latency = args.latency_only or not one
    do_hold = (args.hold_only or not one) and args.hold > 0
    do_compression = (args.compression_only or not one) and args.compression_executions > 0
    do_restore = (not one) and args.restore > 0
    run_dir = WORK_DIR / uuid.uuid4().hex[:8]
    run_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "args": {k: v for k, v in vars(args).items()},
    }
    try:
        with broker_for_run(run_dir) as (kafka, where):
            result["environment"] = {
                "cpus": os.cpu_count(),
                "loadavg": [round(x, 2) for x in os.getloadavg()],
                "python": platform.python_version(),
                "broker": where,
                "guarantee": "exactly_once",
            }
            if do_throughput:
                result["throughput"] = asyncio.run(throughput(kafka, args, run_dir))
            if do_latency:
                result["latency"] = asyncio.run(latency(kafka, args, run_dir))
            if do_hold:
                result["hold"] = asyncio.run(hold(kafka, args, run_dir))
            if do_compression:
                from .compression import compression

                result["compression"] = asyncio.run(
                    compression(kafka, args.seed, args.compression_executions)
                )
            if do_restore:
                from . import restore

                held = args.restore // 10
                result["restore"] = restore.measure(
                    kafka, run_dir, held, args.restore - held, args.seed, scale_out=True
                )
    finally:
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    result["targets"] = report.targets(result)
    print(report.text(result), flush=True)
    if result.get("restore"):
        from .restore import text as restore_text

        print(restore_text(result["restore"]), flush=True)
    json_path, png_path = report.write(result)
    say(f"wrote {json_path} and {png_path}")
    return 0


async def throughput(kafka: Connection, args: argparse.Namespace, run_dir) -> dict:
    from .preload import preload
    from .throughput import ceiling, plain_loop_run, worker_run

    topics = fresh_topics("tp")
    sink = f"ceiling-{topics.raw}"
    await create_topics(kafka, topics, extra=(sink,))
    say(f"throughput: preloading {args.executions:,} executions into {topics.raw}")
    try:
        pre = await preload(kafka, topics, args.seed, args.executions)
        say("throughput (a): the ceiling, a plain aiokafka consume-and-produce passthrough")
        ceil = await ceiling(kafka, topics, sink, pre.records)
        say("throughput (b): the worker (exactly_once), timed until its output is readable")
        profile_to = None
        if args.profile:
            report.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            profile_to = report.RESULTS_DIR / f"profile-{time.strftime('%Y%m%d-%H%M%S')}.txt"
        work = await worker_run(kafka, topics, pre, run_dir / "tp-worker", profile_to)
        plain = None
        if not args.no_plain_loop:
            say("throughput (c): the same merge in a plain aiokafka loop, no Faust (a reference)")
            plain = await plain_loop_run(kafka, topics, pre, run_dir / "tp-plain")
    finally:
        if not args.keep:
            await delete_topics(kafka, all_topics(topics, sink))
    ratio = work["events_per_s"] / ceil["events_per_s"]
    say(f"throughput ratio b/a = {ratio:.3f}")
    return {
        "seed": args.seed,
        "preload": pre.as_dict(),
        "ceiling": ceil,
        "worker": work,
        "ratio": ratio,
        "plain_loop": plain,
    }


async def latency(kafka: Connection, args: argparse.Namespace, run_dir) -> dict:
    from .latency import latency as run

    return await run(
        kafka,
        run_dir / "lat-worker",
        args.rates,
        args.latency_seconds,
        args.warmup_seconds,
        args.seed,
        keep=args.keep,
    )


async def hold(kafka: Connection, args: argparse.Namespace, run_dir) -> dict:
    from .hold import hold as run

    topics = fresh_topics("hold")
    await create_topics(kafka, topics)
    say(f"memory: {args.hold:,} RUNNING executions for the worker to hold")
    try:
        return await run(kafka, topics, run_dir / "hold-worker", args.hold, args.seed)
    finally:
        if not args.keep:
            await delete_topics(kafka, all_topics(topics))


if __name__ == "__main__":
    sys.exit(main())
