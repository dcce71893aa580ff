"""Downstream stores fed the merged topic, for real: the documented promise, checked.

`downstream.readme` extracts the downstream SQL of docs/downstream.md as written;
`downstream.expected` derives from the contract's reference model what the stores
must count; `downstream.stores` runs ClickHouse (chDB) and append-only Parquet
files read by DuckDB; `downstream.phase` feeds a topic to both (read_committed,
every record) and compares. Used by `make chaos` (final phase) and `make test`.
Needs the dev extras (chdb, pyarrow, duckdb); the worker never imports it.
"""
