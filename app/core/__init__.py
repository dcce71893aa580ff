"""The pure core: the merge rules, the held state's bytes, the re-key barrier.

No Kafka, no Faust, no I/O: every function here takes values and returns values,
and is tested exhaustively without a broker (tests/unit).
"""
