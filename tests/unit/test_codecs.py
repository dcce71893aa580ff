"""Every codec Kafka has round-trips through aiokafka: its codec functions, and a whole
record batch as the broker hands it to the worker's consumer."""

from __future__ import annotations

import pytest
from aiokafka import codec
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords

PAYLOAD = b'{"execution_id":"e-1","status":"COMPLETED","body":"' + b"x" * 5000 + b'"}'

CODECS = {
    "gzip": (codec.gzip_encode, codec.gzip_decode, DefaultRecordBatch.CODEC_GZIP),
    "snappy": (codec.snappy_encode, codec.snappy_decode, DefaultRecordBatch.CODEC_SNAPPY),
    "lz4": (codec.lz4_encode, codec.lz4_decode, DefaultRecordBatch.CODEC_LZ4),
    "zstd": (codec.zstd_encode, codec.zstd_decode, DefaultRecordBatch.CODEC_ZSTD),
}


@pytest.mark.parametrize("name", sorted(CODECS))
def test_codec_round_trips_and_compresses(name):
    encode, decode, _ = CODECS[name]
    packed = encode(PAYLOAD)
    assert len(packed) < len(PAYLOAD) // 10  # it compressed (a repetitive body)
    assert decode(packed) == PAYLOAD


def test_snappy_reads_the_java_clients_xerial_framing():
    # Kafka's Java client writes snappy in xerial's block framing, not raw snappy
    framed = codec.snappy_encode(PAYLOAD, xerial_compatible=True)
    assert framed.startswith(b"\x82SNAPPY\x00")
    assert codec.snappy_decode(framed) == PAYLOAD
    assert codec.snappy_decode(codec.snappy_encode(PAYLOAD, xerial_compatible=False)) == PAYLOAD


@pytest.mark.parametrize("name", sorted(CODECS))
def test_a_compressed_record_batch_reads_back(name):
    _, _, code = CODECS[name]
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=code,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1024 * 1024,
    )
    for i in range(50):
        builder.append(
            i, timestamp=1_700_000_000_000 + i, key=b"e-%d" % i, value=PAYLOAD, headers=[]
        )
    raw = bytes(builder.build())
    records = MemoryRecords(raw)
    batch = records.next_batch()
    assert batch.compression_type == code
    got = [(r.key, r.value) for r in batch]
    assert got == [(b"e-%d" % i, PAYLOAD) for i in range(50)]
    assert len(raw) < 50 * len(PAYLOAD) // 10
