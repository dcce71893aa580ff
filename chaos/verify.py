"""The chaos verifier: every execution against the contract, read with read_committed."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import orjson

from simulator import Execution, Kind, Workload
from simulator.reference import RUNNING, TERMINAL, coalesce, invariants


@dataclass
class OutRecord:
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    partition: int
    offset: int

    @property
    def origin(self) -> str:
        return self.headers.get("cameleer-origin", b"").decode()


@dataclass
class Verdict:
    executions: int = 0
    malformed: int = 0
    lost: int = 0
    duplicated: int = 0
    wrong: int = 0
    repeated: int = 0  # at_least_once: exact repeats of a terminal record (allowed there)
    problems: list[str] = field(default_factory=list)

    def note(self, what: str, eid: str, detail: str) -> None:
        setattr(self, what, getattr(self, what) + 1)
        if len(self.problems) < 30:
            self.problems.append(f"{what}: {eid}: {detail}")


def _prefix_merges(bodies: list[dict]) -> list[dict]:
    return [coalesce(bodies[: i + 1]) for i in range(len(bodies))]


def _expected_terminal(execution: Execution) -> tuple[dict | None, bytes | None]:
    """(merge content, exact bytes when terminal-only) in production order."""
    running: list[dict] = []
    for status, record in zip(execution.statuses, execution.events, strict=True):
        body = orjson.loads(record.value)
        if status == RUNNING:
            running.append(body)
        elif status in TERMINAL:
            if running:
                return coalesce([*running, body]), None
            return body, record.value
    return None, None


def _drop_exact_repeats(verdict: Verdict, got: list[OutRecord]) -> list[OutRecord]:
    """at_least_once: a record repeated byte for byte counts once (and is noted).

    A worker killed between writing its outputs and committing its offsets writes them
    again on replay: a terminal record, or a stale RUNNING record flushed before it.
    A RUNNING repeated after the terminal record is kept: the invariants flag it.
    """
    seen: set[bytes] = set()
    terminal_seen = False
    kept = []
    for rec in got:
        status = orjson.loads(rec.value).get("status")
        if rec.value in seen and (status in TERMINAL or not terminal_seen):
            verdict.repeated += 1
            continue
        terminal_seen = terminal_seen or status in TERMINAL
        seen.add(rec.value)
        kept.append(rec)
    return kept


def verify(
    workload: Workload,
    outputs: list[OutRecord],
    dead: list[OutRecord],
    exactly_once: bool = True,
) -> Verdict:
    verdict = Verdict(executions=len(workload.executions), malformed=len(workload.malformed))
    by_key: dict[bytes, list[OutRecord]] = defaultdict(list)
    for rec in outputs:
        by_key[rec.key].append(rec)
    for eid, execution in workload.executions.items():
        got = by_key.pop(eid.encode(), [])
        if not exactly_once:
            got = _drop_exact_repeats(verdict, got)
        _check(verdict, eid, execution, got)
    for key, recs in by_key.items():
        if not (key or b"").startswith(b"chaos-barrier-"):
            verdict.note("wrong", repr(key), f"{len(recs)} records for an unknown execution")
    _check_dead(verdict, workload, dead, exactly_once)
    return verdict


def _check(verdict: Verdict, eid: str, execution: Execution, got: list[OutRecord]) -> None:
    terminal_read = execution.terminal_status is not None
    for problem in invariants([r.value for r in got], terminal_read=terminal_read):
        kind = problem.split(":", 1)[0]
        verdict.note(kind if kind in ("lost", "duplicated") else "wrong", eid, problem)
    terminals = [r for r in got if orjson.loads(r.value).get("status") in TERMINAL]
    runnings = [r for r in got if orjson.loads(r.value).get("status") == RUNNING]
    if execution.kind == Kind.V2:
        if not got:
            verdict.note("lost", eid, "v2 record not passed through")
        elif len(got) > 1:
            verdict.note("duplicated", eid, f"v2 record emitted {len(got)} times")
        elif got[0].value != execution.events[0].value or got[0].origin != "passthrough":
            verdict.note("wrong", eid, "v2 record not byte-identical")
        elif any(got[0].headers.get(k) != v for k, v in execution.events[0].headers):
            verdict.note("wrong", eid, "v2 headers changed")
        return
    if execution.kind == Kind.V1_STUCK:
        bodies = [orjson.loads(r.value) for r in execution.events]
        if not runnings:
            verdict.note("lost", eid, "stuck RUNNING never flushed")
        elif orjson.loads(runnings[0].value) not in _prefix_merges(bodies):
            verdict.note("wrong", eid, "stale RUNNING content")
        return
    if len(terminals) != 1:
        return  # counted by the invariants
    content, exact = _expected_terminal(execution)
    actual = orjson.loads(terminals[0].value)
    if exact is not None:
        if terminals[0].value != exact:
            verdict.note("wrong", eid, "terminal-only record not byte-identical")
    elif actual != content:
        diff = {
            k: (content.get(k, "<absent>"), actual.get(k, "<absent>"))
            for k in set(actual) | set(content)
            if actual.get(k, "<absent>") != content.get(k, "<absent>")
        }
        verdict.note("wrong", eid, f"merge differs (expected, got): {str(diff)[:300]}")


def _check_dead(
    verdict: Verdict, workload: Workload, dead: list[OutRecord], exactly_once: bool
) -> None:
    seen: dict[tuple[bytes | None, bytes | None], list[OutRecord]] = defaultdict(list)
    for rec in dead:
        seen[(rec.key, rec.value)].append(rec)
    for bad in workload.malformed:
        recs = seen.get((bad.record.key, bad.record.value), [])
        reasons = {r.headers.get("cameleer-error", b"").decode() for r in recs}
        name = f"malformed@{bad.at_ms}"
        if not recs:
            verdict.note("lost", name, f"not in the DLQ ({bad.reason})")
        elif exactly_once and len(
            {
                (
                    r.headers.get("cameleer-source-partition"),
                    r.headers.get("cameleer-source-offset"),
                )
                for r in recs
            }
        ) < len(recs):
            verdict.note("duplicated", name, "dead-lettered twice")
        elif bad.reason not in reasons:
            verdict.note("wrong", name, f"reason {reasons} instead of {bad.reason}")
