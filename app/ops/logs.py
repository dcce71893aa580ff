"""How the worker's log lines look: text (the default) or one JSON object per line.

`CAMELEER_LOG_FORMAT=json` is for log collectors (Loki, Elasticsearch, a cloud's
logging agent): every line is a JSON object with `time` (UTC, ISO 8601, ms),
`level`, `logger` and `message`, the traceback as `exception` when there is one,
and the fields a log call knows about the record it is about, passed with
`extra=` (`CONTEXT`: the execution id, the partition, the topic, the offset).
Nothing is parsed out of the message text.

Faust's CLI sets up logging when the worker starts; `logging_config()` is handed
to it (faust.App's `logging_config`), merged over its own, so Faust's and
aiokafka's lines come out in the same format.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

FORMATS = ("text", "json")
CONTEXT = ("execution_id", "partition", "topic", "offset")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def _iso(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def logging_config(log_format: str, level: str) -> dict | None:
    """faust.App's `logging_config`: None keeps Faust's text lines."""
    if log_format != "json":
        return None
    return {
        "version": 1,
        "merge": True,  # over Faust's own configuration: its loggers and levels stay
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "default": {
                "level": level.upper(),
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",  # where Faust writes its text lines too
            }
        },
    }


def json_logging(level: str) -> None:
    """JSON lines from here on, before Faust sets up its logging (the same format):
    Python's warnings too, which otherwise go to stderr as text."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(True)
