"""JSON log lines: one object per line, with the context a log call passed."""

from __future__ import annotations

import io
import json
import logging

from app.ops.logs import JsonFormatter, logging_config


def emit(logger: logging.Logger, *args, **kwargs) -> list[dict]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    try:
        logger.warning(*args, **kwargs)
    finally:
        logger.removeHandler(handler)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_is_one_object_with_time_level_logger_message_and_context():
    log = logging.getLogger("app.engine.processor")
    [line] = emit(
        log,
        "dead letter %s:\nsecond line",
        "invalid-json",
        extra={"partition": 2, "topic": "raw", "offset": 41, "execution_id": None},
    )
    assert line["level"] == "warning" and line["logger"] == "app.engine.processor"
    assert line["message"] == "dead letter invalid-json:\nsecond line"  # escaped: one line
    assert (line["partition"], line["topic"], line["offset"]) == (2, "raw", 41)
    assert "execution_id" not in line  # not known: left out, not null
    assert line["time"].endswith("Z") and len(line["time"]) == len("2026-01-01T00:00:00.000Z")


def test_an_exception_is_a_field_of_the_same_line():
    log = logging.getLogger("app.engine.engine")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        [line] = emit(log, "failed", exc_info=True, extra={"execution_id": "e-1"})
    assert line["execution_id"] == "e-1"
    assert "RuntimeError: boom" in line["exception"]


def test_text_keeps_fausts_configuration_and_json_replaces_its_handler():
    assert logging_config("text", "info") is None
    config = logging_config("json", "info")
    assert config["merge"] is True
    assert config["handlers"]["default"]["formatter"] == "json"
    assert config["formatters"]["json"]["()"] is JsonFormatter
