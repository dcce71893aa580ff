"""Compressed raw batches, from every codec Kafka has, merge.

Agents on the official Java client often set `compression.type`; the broker keeps
their batches compressed and the worker must read them. Kafka's own console producer
(the Java client, from the broker's jars) and aiokafka write v1 executions with
each codec to the raw topic; every execution comes out merged, and the worker
keeps running.
"""

from __future__ import annotations

import asyncio
import subprocess
import zipfile
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

import localkafka

from .harness import consume_until, event

pytestmark = pytest.mark.integration

CODECS = ("gzip", "snappy", "lz4", "zstd")
PER_PRODUCER = 30  # executions each producer sends, RUNNING then COMPLETED
BODY = "order-line " * 200  # compresses: the codec has something to do


@pytest.fixture(scope="module")
def worker_env() -> dict[str, str]:
    return {"CAMELEER_COMPRESSION": "zstd"}  # the worker's own batches compressed too


def console_producer_libs() -> Path:
    """Jars holding kafka.tools.ConsoleProducer: the broker's (3.x); a 4.x broker's jars
    have it in kafka-tools, which is not fetched, so then those of another cached
    release (the Java client of 3.9 against a 4.x broker: a real pairing)."""
    libs = localkafka.ensure_jars()
    for folder in (libs, *sorted(libs.parents[1].glob("*/libs"))):
        for jar in folder.glob("kafka_2.13-*.jar"):
            with zipfile.ZipFile(jar) as z:
                if "kafka/tools/ConsoleProducer.class" in z.namelist():
                    return folder
    pytest.skip("no kafka.tools.ConsoleProducer in the cached Kafka jars")


def java_console_producer(bootstrap: str, topic: str, codec: str) -> subprocess.Popen:
    """Kafka's console producer (the official Java client), `key|value` lines on stdin.

    linger.ms lets many records share a batch, as a busy agent's do."""
    libs = console_producer_libs()
    return subprocess.Popen(
        [
            "java",
            "-Xmx128m",
            "-XX:TieredStopAtLevel=1",
            f"-Dlog4j.configuration=file:{localkafka.PACKAGE_DIR / 'tools-log4j.properties'}",
            "-cp",
            f"{libs}/*",
            "kafka.tools.ConsoleProducer",
            "--bootstrap-server",
            bootstrap,
            "--topic",
            topic,
            # its own option: it overrides a --producer-property compression.type
            "--compression-codec",
            codec,
            "--producer-property",
            "linger.ms=200",
            "--producer-property",
            "acks=all",
            "--property",
            "parse.key=true",
            "--property",
            "key.separator=|",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def executions(prefix: str) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(PER_PRODUCER):
        eid = f"{prefix}-{i}"
        out.append((eid.encode(), event(eid, "RUNNING", route_id="r", input_body=BODY)))
    for i in range(PER_PRODUCER):
        eid = f"{prefix}-{i}"
        out.append((eid.encode(), event(eid, "COMPLETED", duration_ms=i, output_body=BODY)))
    return out


async def aiokafka_produce(bootstrap: str, topic: str, codec: str, records) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        compression_type=codec,
        linger_ms=200,
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def test_batches_of_every_codec_merge_java_client_included(bootstrap, topics, worker):
    java = {}
    for codec in CODECS:  # the JVMs start side by side
        proc = java_console_producer(bootstrap, topics.raw, codec)
        lines = b"".join(k + b"|" + v + b"\n" for k, v in executions(f"java-{codec}"))
        proc.stdin.write(lines)
        proc.stdin.close()
        java[codec] = proc
    for codec in CODECS:
        asyncio.run(aiokafka_produce(bootstrap, topics.raw, codec, executions(f"py-{codec}")))
    for codec, proc in java.items():
        out = proc.stdout.read().decode(errors="replace")
        assert proc.wait(timeout=120) == 0, f"console producer ({codec}) failed:\n{out}"

    expected = {
        f"{who}-{codec}-{i}".encode()
        for who in ("java", "py")
        for codec in CODECS
        for i in range(PER_PRODUCER)
    }

    def merged(records) -> set[bytes]:
        return {r.key for r in records if r.origin == "merged"}

    got = consume_until(bootstrap, topics.output, lambda rs: expected <= merged(rs), 120)
    missing = expected - merged(got)
    assert not missing, f"{len(missing)} executions not merged, e.g. {sorted(missing)[:5]}"
    terminals = [r for r in got if r.key in expected]
    assert len(terminals) == len(expected)  # one record each: no crash, no redelivery
    one = next(r.json for r in terminals if r.key == b"java-zstd-7")
    assert (one["status"], one["duration_ms"], one["input_body"]) == ("COMPLETED", 7, BODY)
    assert worker.alive and worker.starts == 1
