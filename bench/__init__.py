"""`make bench` / `python -m bench`: throughput, latency and memory of the merger.

One run measures, against one broker (KAFKA_BOOTSTRAP_SERVERS if it answers, else a
local one started for the run) and fresh topics per phase:

- throughput: a seeded simulator workload is preloaded into a raw topic once, then
  (a) a plain aiokafka consume-and-produce passthrough (the ceiling) and (b) the real
  `cameleer-merger` process both read all of it; events/s of each and the ratio b/a;
- latency: a producer at fixed rates, a read_committed consumer, produce-to-readable
  percentiles of the merged records;
- memory: the worker's peak RSS while holding N RUNNING executions;
- compression: the CPU each codec costs the worker's producer and a consumer per
  record, and the bytes it saves, as ratios against no compression.
- restore (bench/restore.py): a changelog of N states, read by a plain consumer (the
  ceiling) and restored by a wiped worker; the restored state checked; two new
  workers, then a third joining, timed until every partition merges.

Every figure is printed, compared with its target, and written to
`bench/results/bench-<timestamp>.json` with a PNG chart beside it.
"""
