"""`make chaos` / `python -m chaos`: the fault-injection run, then the recovery figures."""

from __future__ import annotations

import argparse
import sys

from .run import ChaosConfig, main_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--executions", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--pauses", type=int, default=1, help="zombies: SIGSTOP then SIGCONT")
    parser.add_argument("--produce-seconds", type=float, default=60.0)
    parser.add_argument(
        "--guarantee", choices=("exactly_once", "at_least_once"), default="exactly_once"
    )
    parser.add_argument(
        "--unkeyed-pairs",
        type=float,
        default=0.02,
        metavar="SHARE",
        help="share of v1 executions sent as unkeyed RUNNING/terminal pairs, back to back, "
        "to two different partitions (default 0.02)",
    )
    parser.add_argument(
        "--unkeyed",
        type=float,
        default=0.03,
        metavar="SHARE",
        help="share of executions keyed badly: no key, a wrong key, or one phase keyed and "
        "the other not, in equal parts (default 0.03)",
    )
    parser.add_argument(
        "--brokers",
        type=int,
        default=1,
        help="1: one broker, restarted mid-stream; 3: a cluster (replication 3, "
        "min.insync.replicas 2), one broker SIGKILLed mid-stream and restarted",
    )
    parser.add_argument(
        "--instance-ids",
        action="store_true",
        help="static group membership: each worker slot restarts under its own instance id",
    )
    parser.add_argument("--no-recovery", action="store_true", help="skip the recovery figures")
    parser.add_argument(
        "--recovery-only", action="store_true", help="only the recovery figures, no fault run"
    )
    parser.add_argument(
        "--no-downstream", action="store_true", help="skip the ClickHouse and Parquet phase"
    )
    parser.add_argument("--recovery-executions", type=int, default=100_000)
    args = parser.parse_args(argv)
    if args.brokers == 2 or args.brokers < 1:
        # two replicas with min.insync.replicas 2: one broker lost stops every write
        parser.error("--brokers must be 1, or 3 or more")
    config = ChaosConfig(
        executions=args.executions,
        seed=args.seed,
        kills=args.kills,
        pauses=args.pauses,
        produce_seconds=args.produce_seconds,
        guarantee=args.guarantee,
        downstream=not args.no_downstream,
        unkeyed_pair_share=args.unkeyed_pairs,
        unkeyed_share=args.unkeyed,
        brokers=args.brokers,
        instance_ids=args.instance_ids,
    )
    code = 0 if args.recovery_only else main_run(config)
    if not args.no_recovery:
        from .recovery import main_recovery

        code = max(code, main_recovery(args.recovery_executions))
    return code


if __name__ == "__main__":
    sys.exit(main())
