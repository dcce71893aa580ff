"""Fault injection against the real local broker: `make chaos` (python -m chaos).

Kills workers with SIGKILL, scales them between 1 and 3, wipes one worker's
RocksDB, restarts the broker, then checks every execution against the
contract's reference model (simulator.reference).
"""
