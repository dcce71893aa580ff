"""Seeded Cameleer agent simulator and a reference model of the merge contract.

`simulator.workload` generates raw records (no Kafka); `simulator.reference` says
what the output topic must hold for one execution. Both are pure and importable
without the worker.
"""

from .workload import (
    Agent,
    Execution,
    Keying,
    Kind,
    Malformed,
    Params,
    RawRecord,
    Step,
    Workload,
    agent_registrations,
    generate,
    iter_steps,
    only,
)

__all__ = [
    "Agent",
    "Execution",
    "Keying",
    "Kind",
    "Malformed",
    "Params",
    "RawRecord",
    "Step",
    "Workload",
    "agent_registrations",
    "generate",
    "iter_steps",
    "only",
]
