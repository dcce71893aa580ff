"""The output and re-key partition of a key is the Java client's default partitioner's."""

from __future__ import annotations

import random

from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from app.engine.processor import partition_for


def java_default_partition(key: bytes, partitions: int) -> int:
    # aiokafka's pure-Python murmur2 is Kafka's (DefaultPartitioner / BuiltInPartitioner)
    return (aiokafka_murmur2(key) & 0x7FFFFFFF) % partitions


def test_partition_for_agrees_with_kafkas_murmur2_for_every_key_length():
    rng = random.Random(7)
    keys = [bytes(rng.randrange(256) for _ in range(n)) for n in range(0, 70) for _ in range(20)]
    keys += [f"exec-{i}".encode() for i in range(500)]  # ids as agents write them
    keys += ["exécution-ü-€".encode()]  # non-ASCII execution ids
    for partitions in (1, 3, 6, 12, 64):
        for key in keys:
            assert partition_for(key, partitions) == java_default_partition(key, partitions), key


def test_known_values_of_the_java_client():
    # Kafka's own test vectors (clients/.../utils/UtilsTest.testMurmur2), as signed ints
    cases = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536}
    for key, signed in cases.items():
        assert aiokafka_murmur2(key) == signed & 0xFFFFFFFF
        assert partition_for(key, 2**31 - 1) == (signed & 0x7FFFFFFF) % (2**31 - 1)
