"""`cameleer-merger [options]`: prepare topics, then run the Faust worker in the foreground.

`cameleer-merger simulate|tail|running ...`: the commands of app.ops.cli.
"""

from __future__ import annotations

import asyncio
import os
import sys

from app.ops.cli import COMMANDS
from app.ops.config import Settings, apply_arguments
from app.ops.logs import json_logging
from app.overrides import oauthbearer, versions


def main(argv: list[str] | None = None) -> None:
    argv = argv if argv is not None else sys.argv[1:]
    # a refused OAUTHBEARER token fails the login at once, with the broker's reason
    oauthbearer.install()
    if argv and argv[0] in COMMANDS:  # simulate, tail, running (app.ops.cli)
        from app.ops.cli import main as command

        sys.exit(command(argv))
    try:  # before anything of Faust or aiokafka runs
        versions.check()
    except versions.UntestedVersion as exc:
        sys.exit(f"cameleer-merger: {exc}")
    apply_arguments(argv, os.environ)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        sys.exit(f"cameleer-merger: {exc}")
    if settings.log_format == "json":  # from the topic checks on, before Faust's own set-up
        json_logging(settings.log_level)
    from aiokafka.errors import KafkaError

    from app.ops.topics import ensure_topics
    from app.worker import create_app

    try:
        layout = asyncio.run(ensure_topics(settings))
    except (RuntimeError, KafkaError) as exc:  # refused, unreachable, not authorized: one line
        sys.exit(f"cameleer-merger: {exc}")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(settings, layout)
    # Faust's own CLI runs the worker (signals, logging, web server); our options are done.
    sys.argv = ["cameleer-merger", "worker", "--loglevel", settings.log_level]
    if settings.log_format == "json":  # log lines only: no banner or spinner on stdout
        sys.argv.insert(1, "--quiet")
    if settings.web_port == 0:  # the endpoints are off (Faust's CLI refuses --web-port 0)
        sys.argv.append("--without-web")
    else:
        sys.argv += ["--web-port", str(settings.web_port), "--with-web"]
    app.main()


if __name__ == "__main__":
    main()
