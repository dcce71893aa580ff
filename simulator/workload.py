"""A seeded simulator of Cameleer agents: the raw records they would produce, in order.

Pure generation, no Kafka and no output: the chaos harness, the benchmarks and the
demos produce the records themselves and show their own progress. The same seed
and options always give the same records (one `random.Random(seed)` stream for the
executions, one derived from the seed for the agents and routes; the global
`random` is never used).

- `generate(seed, executions, **options) -> Workload`: everything in memory.
- `iter_steps(seed, executions, **options) -> Iterator[Step]`: the same records one
  at a time, for runs too big for memory (1,000,000 executions is ~2.5 GB of values);
  only executions in flight are held.
- `agent_registrations(seed, **options)`: the records for the agents topic.

`options` are the fields of `Params` (shares, sizes, timing); an unknown name is a
TypeError. Executions overlap: a RUNNING is followed by its terminal event some
records later (`in_flight` executions are open at once on average).
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, NamedTuple

import orjson

# DLQ reason codes of the contract (shared/CONTRACT.md, "Bad input").
INVALID_JSON = "invalid-json"
NOT_AN_OBJECT = "not-an-object"
MISSING_EXECUTION_ID = "missing-execution-id"
INVALID_STATUS = "invalid-status"
UNSUPPORTED_PROTOCOL_VERSION = "unsupported-protocol-version"
MALFORMED_REASONS = (
    INVALID_JSON,
    NOT_AN_OBJECT,
    MISSING_EXECUTION_ID,
    INVALID_STATUS,
    UNSUPPORTED_PROTOCOL_VERSION,
)

RUNNING = "RUNNING"
COMPLETED = "COMPLETED"
FAILED = "FAILED"


class Kind(StrEnum):
    """What an execution's agent sends for it."""

    V1_NORMAL = "v1-normal"  # RUNNING, then COMPLETED or FAILED some records later
    V1_STUCK = "v1-stuck"  # RUNNING only, no terminal: the stale flush case
    V1_TERMINAL_ONLY = "v1-terminal-only"  # terminal only (its RUNNING was never sent)
    V1_DUPLICATE_TERMINAL = "v1-duplicate-terminal"  # the terminal sent twice (same bytes)
    V1_LATE_RUNNING = "v1-late-running"  # the RUNNING re-sent after the terminal
    V1_REPEATED_RUNNING = "v1-repeated-running"  # 2-3 RUNNING events, then the terminal
    # the RUNNING re-sent (same bytes) `replay_after_ms` after the terminal, past the dedupe
    # window: an agent replaying its buffer after an outage
    V1_REPLAYED_RUNNING = "v1-replayed-running"
    # RUNNING and terminal sent back to back without a key (Keying.SCATTERED): they may
    # land on different partitions and reach the execution's partition in either order
    V1_UNKEYED_PAIR = "v1-unkeyed-pair"
    V2 = "v2"  # one complete record (explicit protocol_version 2, or a v2-registered agent)


class Keying(StrEnum):
    KEYED = "keyed"  # every record keyed by its execution_id
    UNKEYED = "unkeyed"  # no key at all
    WRONG_KEY = "wrong-key"  # keyed by something else (the agent id)
    # one phase keyed by execution_id, the other without a key (an agent whose two code
    # paths key differently); its unkeyed records spread over partitions like SCATTERED
    MIXED = "mixed"
    # no key, and the agent's client spreads the records over partitions: one execution's
    # records may land on different partitions (only Kind.V1_UNKEYED_PAIR; the others
    # without a key still send one execution to one partition)
    SCATTERED = "scattered"


@dataclass(slots=True)
class RawRecord:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Agent:
    agent_id: str
    application: str
    protocol_version: int  # 1 or 2
    registered: bool  # has a record on the agents topic
    sends_version: bool  # puts protocol_version into its records
    writes_nulls: bool  # serializes null fields (Jackson's default) instead of omitting them


@dataclass(slots=True)
class Execution:
    execution_id: str
    kind: Kind
    agent_id: str
    route_id: str
    protocol: int  # the version the worker must decide on (own field, else registry, else 1)
    keying: Keying
    events: list[RawRecord]  # in production order
    statuses: list[str]  # status of each event
    times_ms: list[int]  # synthetic event time of each event

    @property
    def terminal_status(self) -> str | None:
        for status in self.statuses:
            if status != RUNNING:
                return status
        return None

    def bodies(self) -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in self.events]

    def reads(self) -> list[tuple[str, dict[str, Any], int]]:
        """(status, body, time) per event: the input of `simulator.reference.expected`."""
        return [
            (s, orjson.loads(r.value), t)
            for s, r, t in zip(self.statuses, self.events, self.times_ms, strict=True)
        ]


@dataclass(frozen=True, slots=True)
class Malformed:
    record: RawRecord
    reason: str  # the contract's DLQ reason code
    at_ms: int


class Step(NamedTuple):
    """One record to produce, with what it is."""

    record: RawRecord
    at_ms: int  # synthetic event time (non-decreasing); producers may ignore it
    execution: Execution | None  # None for a malformed record
    index: int  # position in execution.events; -1 for a malformed record
    reason: str | None = None  # DLQ reason of a malformed record

    @property
    def status(self) -> str | None:
        return self.execution.statuses[self.index] if self.execution is not None else None

    @property
    def last(self) -> bool:
        """The execution's last record (it is complete once this is produced)."""
        return self.execution is not None and self.index == len(self.execution.events) - 1


@dataclass(frozen=True)
class Params:
    """Options of `generate` / `iter_steps` (shares are per execution, 0..1)."""

    v2_share: float = 0.1
    stuck_share: float = 0.01
    terminal_only_share: float = 0.005
    duplicate_share: float = 0.01
    late_running_share: float = 0.01
    repeated_running_share: float = 0.02
    replayed_running_share: float = 0.005
    # off by default (the generated workloads of the tests stay as they were); chaos sets it
    unkeyed_pair_share: float = 0.0
    unkeyed_share: float = 0.01  # any kind; split between Keying.UNKEYED, WRONG_KEY, MIXED
    malformed_share: float = 0.001  # a malformed record is added with this chance per execution
    failed_share: float = 0.05  # share of terminals that are FAILED
    agents: int = 24
    v2_agent_share: float = 0.25  # of the agents (at least one when v2_share > 0)
    unregistered_agent_share: float = 0.25  # of the v1 agents: no registration, default v1
    null_agent_share: float = 0.25  # agents that write null fields instead of omitting them
    in_flight: int = 50  # executions open at once, on average
    # value sizes: each record is padded up to a size drawn from the range, never cut (a
    # RUNNING's own fields take ~550 bytes; a repeated RUNNING is a ~250-byte update)
    running_bytes: tuple[int, int] = (400, 800)
    terminal_bytes: tuple[int, int] = (1024, 4096)  # also v2 records
    processors: tuple[int, int] = (5, 20)  # nodes of a route's processor tree
    start_ms: int = 1_735_689_600_000  # 2025-01-01T00:00:00Z
    interval_ms: int = 1  # between execution starts
    # from a V1_REPLAYED_RUNNING's terminal to its replay: past the default dedupe window
    # (1 h), so with the default sizes every replay comes after all other records
    replay_after_ms: int = 3_660_000

    def __post_init__(self) -> None:
        kinds = (
            self.v2_share,
            self.stuck_share,
            self.terminal_only_share,
            self.duplicate_share,
            self.late_running_share,
            self.repeated_running_share,
            self.replayed_running_share,
            self.unkeyed_pair_share,
        )
        shares = (
            *kinds,
            self.unkeyed_share,
            self.malformed_share,
            self.failed_share,
            self.v2_agent_share,
            self.unregistered_agent_share,
            self.null_agent_share,
        )
        if any(not 0.0 <= s <= 1.0 for s in shares):
            raise ValueError("shares must be between 0 and 1")
        if sum(kinds) > 1.0 + 1e-9:
            raise ValueError("the execution kind shares add up to more than 1")
        if self.agents < 2:
            raise ValueError("agents must be at least 2 (one v1, one v2)")
        for low, high in (self.running_bytes, self.terminal_bytes, self.processors):
            if not 0 < low <= high:
                raise ValueError("size ranges must be (low, high) with 0 < low <= high")
        if self.in_flight < 1 or self.interval_ms < 1:
            raise ValueError("in_flight and interval_ms must be at least 1")
        if self.replay_after_ms < 1:
            raise ValueError("replay_after_ms must be at least 1")


@dataclass
class Workload:
    seed: int
    params: Params
    records: list[RawRecord]  # everything, in production order
    executions: dict[str, Execution]  # by execution_id, in order of their first record
    malformed: list[Malformed]
    agents: list[Agent]
    steps_at_ms: list[int] = field(default_factory=list)  # synthetic time of each record

    def agent_registrations(self) -> list[RawRecord]:
        return _registrations(self.agents, self.params.start_ms)

    def of_kind(self, kind: Kind) -> list[Execution]:
        return [e for e in self.executions.values() if e.kind == kind]


_ODDITIES = (
    "v2_share",
    "stuck_share",
    "terminal_only_share",
    "duplicate_share",
    "late_running_share",
    "repeated_running_share",
    "replayed_running_share",
    "unkeyed_pair_share",
    "unkeyed_share",
    "malformed_share",
)


def only(**shares: float) -> dict[str, float]:
    """Options with every kind share and oddity off but those given: `only(stuck_share=1.0)`
    is a workload of stuck executions, `only(v2_share=0.1)` plain v1 with 10% v2."""
    unknown = set(shares) - set(_ODDITIES)
    if unknown:
        raise TypeError(f"not a share option: {sorted(unknown)}")
    return {name: 0.0 for name in _ODDITIES} | shares


def generate(seed: int, executions: int, **options: Any) -> Workload:
    """All records of `executions` executions (plus malformed ones), in memory."""
    params = Params(**options)
    records: list[RawRecord] = []
    times: list[int] = []
    by_id: dict[str, Execution] = {}
    malformed: list[Malformed] = []
    gen = _Generator(seed, params)
    for step in gen.steps(executions):
        records.append(step.record)
        times.append(step.at_ms)
        if step.execution is None:
            malformed.append(Malformed(step.record, step.reason or "", step.at_ms))
        elif step.index == 0:
            by_id[step.execution.execution_id] = step.execution
    return Workload(seed, params, records, by_id, malformed, list(gen.agents), times)


def iter_steps(seed: int, executions: int, **options: Any) -> Iterator[Step]:
    """The records of `generate(seed, executions, **options)`, one at a time."""
    return _Generator(seed, Params(**options)).steps(executions)


def agent_registrations(seed: int, **options: Any) -> list[RawRecord]:
    """Records for the agents topic (key agent_id): the same agents `generate` uses."""
    params = Params(**options)
    return _registrations(_Generator(seed, params).agents, params.start_ms)


def _registrations(agents: list[Agent], start_ms: int) -> list[RawRecord]:
    out = []
    for n, agent in enumerate(agents):
        if not agent.registered:
            continue
        value = orjson.dumps(
            {
                "agent_id": agent.agent_id,
                "protocol_version": agent.protocol_version,
                "application": agent.application,
                "hostname": f"{agent.application}-{n:02d}.prod.internal",
                "registered_at": _iso(start_ms - 60_000 + n * 250),
                "capabilities": ["executions", "processors", "bodies"]
                + (["buffered"] if agent.protocol_version == 2 else []),
            }
        )
        out.append(RawRecord(agent.agent_id.encode(), value, [("content-type", _JSON)]))
    return out


# -- internals ----------------------------------------------------------------------------

_JSON = b"application/json"
_APPLICATIONS = (
    "orders",
    "billing",
    "inventory",
    "shipping",
    "customers",
    "payments",
    "notifications",
    "catalog",
)
_VERBS = ("ingest", "enrich", "route", "sync", "validate", "publish", "reconcile", "archive")
_PROCESSOR_TYPES = (
    "to",
    "process",
    "bean",
    "log",
    "setHeader",
    "setBody",
    "marshal",
    "unmarshal",
    "enrich",
    "transform",
    "convertBodyTo",
    "wireTap",
    "toD",
    "removeHeaders",
)
_CONTAINER_TYPES = ("choice", "when", "otherwise", "split", "filter", "doTry", "multicast")
_WORDS = tuple(
    [
        "order",
        "customer",
        "invoice",
        "amount",
        "currency",
        "EUR",
        "USD",
        "item",
        "sku",
        "quantity",
        "price",
        "total",
        "tax",
        "address",
        "street",
        "city",
        "zip",
        "country",
        "status",
        "pending",
        "shipped",
        "delivered",
        "warehouse",
        "batch",
        "id",
        "ref",
        "account",
        "iban",
        "payment",
        "card",
        "token",
        "channel",
        "web",
        "mobile",
        "partner",
        "region",
        "eu",
        "us",
        "priority",
        "standard",
        "express",
        "note",
        "gift",
        "wrap",
        "discount",
        "coupon",
        "loyalty",
        "points",
        "tier",
    ]
)
_ERRORS = (
    ("org.apache.camel.CamelExecutionException", "Exception occurred during execution"),
    ("java.net.SocketTimeoutException", "Read timed out"),
    ("org.apache.camel.http.base.HttpOperationFailedException", "HTTP operation failed: 503"),
    ("com.fasterxml.jackson.core.JsonParseException", "Unexpected character at line 1"),
    ("java.lang.IllegalStateException", "Inventory reservation expired"),
    ("org.apache.camel.component.bean.MethodNotFoundException", "Method with name: x not found"),
)


@dataclass(frozen=True, slots=True)
class _Route:
    route_id: str
    application: str
    endpoint: str
    tree: tuple[tuple[str, str, int], ...]  # (processor_id, type, parent index or -1)
    headers: dict[str, str]
    tree_json: str  # the tree as JSON, a %d for each node's duration_ms (in tree order)
    header_json: tuple[str, ...]  # [n]: the first n route headers as JSON members, ",..."


# enum members as plain names: attribute access on an Enum class is slow in 3.11
_V2 = Kind.V2
_STUCK = Kind.V1_STUCK
_TERMINAL_ONLY = Kind.V1_TERMINAL_ONLY
_DUPLICATE = Kind.V1_DUPLICATE_TERMINAL
_LATE = Kind.V1_LATE_RUNNING
_REPEATED = Kind.V1_REPEATED_RUNNING
_REPLAYED = Kind.V1_REPLAYED_RUNNING
_PAIR = Kind.V1_UNKEYED_PAIR
_KEYED = Keying.KEYED
_UNKEYED = Keying.UNKEYED
_WRONG_KEY = Keying.WRONG_KEY
_MIXED = Keying.MIXED
_SCATTERED = Keying.SCATTERED


def _uuid(bits: int) -> str:
    h = bits.to_bytes(16, "big").hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:32]}"


_SECONDS: dict[int, str] = {}


def _iso(ms: int) -> str:
    """ISO-8601 UTC with milliseconds; the formatted seconds are cached (times are close)."""
    seconds = ms // 1000
    head = _SECONDS.get(seconds)
    if head is None:
        if len(_SECONDS) > 100_000:
            _SECONDS.clear()
        head = _SECONDS[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{head}.{ms % 1000:03d}Z"


def _tree_json(nodes: tuple[tuple[str, str, int], ...]) -> str:
    children: list[list[int]] = [[] for _ in nodes]
    top = []
    for n, (_, _, parent) in enumerate(nodes):
        (top if parent < 0 else children[parent]).append(n)

    def render(n: int) -> str:
        pid, kind, _ = nodes[n]
        head = orjson.dumps({"processor_id": pid, "type": kind}).decode()[:-1]
        inner = ",".join(render(c) for c in children[n])
        return f'{head},"duration_ms":%d,"children":[{inner}]}}'

    return "[" + ",".join(render(n) for n in top) + "]"


class _Generator:
    def __init__(self, seed: int, params: Params) -> None:
        self.params = params
        self.rng = random.Random(seed)
        setup = random.Random(f"cameleer-simulator/{seed}/setup")
        self.agents = self._make_agents(setup)
        self.v1_agents = [a for a in self.agents if a.protocol_version == 1]
        self.v2_agents = [a for a in self.agents if a.protocol_version == 2]
        self.routes = self._make_routes(setup)
        text = " ".join(setup.choice(_WORDS) for _ in range(16_000))
        self.text = text
        self.query = "&".join(
            f"{setup.choice(_WORDS)}{n}={setup.choice(_WORDS)}" for n in range(3_000)
        )
        self.stack = "\n".join(
            f"\tat org.apache.camel.{setup.choice(_WORDS)}.{setup.choice(_WORDS).title()}"
            f"Processor.process({setup.choice(_WORDS).title()}.java:{setup.randint(20, 900)})"
            for _ in range(400)
        )
        self.exchanges = 0

    # -- setup --------------------------------------------------------------------------

    def _make_agents(self, rng: random.Random) -> list[Agent]:
        p = self.params
        n_v2 = round(p.agents * p.v2_agent_share)
        if p.v2_share > 0:
            n_v2 = max(1, n_v2)
        n_v2 = min(n_v2, p.agents - 1)
        agents = []
        for n in range(p.agents):
            app = _APPLICATIONS[n % len(_APPLICATIONS)]
            v2 = n >= p.agents - n_v2
            agents.append(
                Agent(
                    agent_id=f"{app}-{n:02d}{rng.getrandbits(16):04x}",  # unique
                    application=app,
                    protocol_version=2 if v2 else 1,
                    registered=v2 or rng.random() >= p.unregistered_agent_share,
                    # v2 agents without the field rely on their registration: the registry
                    # decides; at least one v2 agent does that.
                    sends_version=(rng.random() < 0.5 and n != p.agents - 1)
                    if v2
                    else rng.random() < 0.3,
                    writes_nulls=rng.random() < p.null_agent_share,
                )
            )
        return agents

    def _make_routes(self, rng: random.Random) -> dict[str, list[_Route]]:
        low, high = self.params.processors
        routes: dict[str, list[_Route]] = {}
        for app in _APPLICATIONS:
            mine = []
            for verb in rng.sample(_VERBS, rng.randint(3, 6)):
                route_id = f"{app}-{verb}"
                nodes: list[tuple[str, str, int]] = []
                containers: list[int] = []
                for n in range(rng.randint(low, high)):
                    parent = rng.choice(containers) if containers and rng.random() < 0.6 else -1
                    if rng.random() < 0.25:
                        kind = rng.choice(_CONTAINER_TYPES)
                        containers.append(n)
                    else:
                        kind = rng.choice(_PROCESSOR_TYPES)
                    nodes.append((f"{kind}{n + 1}", kind, parent))
                headers = {
                    "Content-Type": "application/json",
                    "CamelHttpMethod": rng.choice(("POST", "PUT", "GET")),
                    "CamelHttpUri": f"/api/{app}/{verb}",
                    "kafka.TOPIC": f"{app}.{verb}.requests",
                    "User-Agent": f"{app}-client/{rng.randint(1, 9)}.{rng.randint(0, 20)}",
                    "Accept-Language": rng.choice(("en-US", "de-DE", "fr-FR")),
                    "CamelMessageTimestamp": str(rng.getrandbits(40)),
                }
                endpoint = f"kafka:{app}.{verb}.requests?groupId={app}-{verb}&"
                members = [orjson.dumps({k: v}).decode()[1:-1] for k, v in headers.items()]
                header_json = tuple("".join("," + m for m in members[:n]) for n in range(8))
                tree = tuple(nodes)
                mine.append(
                    _Route(route_id, app, endpoint, tree, headers, _tree_json(tree), header_json)
                )
            routes[app] = mine
        return routes

    # -- executions ---------------------------------------------------------------------

    def steps(self, executions: int) -> Iterator[Step]:
        p = self.params
        rng = self.rng
        rnd = rng.random
        heap: list[tuple[int, int, Step]] = []
        seq = 0
        thresholds = []
        total = 0.0
        for kind, share in (
            (Kind.V2, p.v2_share),
            (Kind.V1_STUCK, p.stuck_share),
            (Kind.V1_TERMINAL_ONLY, p.terminal_only_share),
            (Kind.V1_DUPLICATE_TERMINAL, p.duplicate_share),
            (Kind.V1_LATE_RUNNING, p.late_running_share),
            (Kind.V1_REPEATED_RUNNING, p.repeated_running_share),
            # last: with their shares added, the draws of the kinds above stay as they were
            (Kind.V1_REPLAYED_RUNNING, p.replayed_running_share),
            (Kind.V1_UNKEYED_PAIR, p.unkeyed_pair_share),
        ):
            total += share
            thresholds.append((total, kind))
        mean_gap = p.in_flight * p.interval_ms
        for i in range(executions):
            now = p.start_ms + i * p.interval_ms
            while heap and heap[0][0] < now:
                yield heapq.heappop(heap)[2]
            r = rnd()
            kind = Kind.V1_NORMAL
            for limit, k in thresholds:
                if r < limit:
                    kind = k
                    break
            execution = self._execution(kind, now, mean_gap)
            for index, at in enumerate(execution.times_ms):
                heapq.heappush(heap, (at, seq, Step(execution.events[index], at, execution, index)))
                seq += 1
            if p.malformed_share and rnd() < p.malformed_share:
                record, reason = self._malformed()
                heapq.heappush(heap, (now, seq, Step(record, now, None, -1, reason)))
                seq += 1
        while heap:
            yield heapq.heappop(heap)[2]

    def _execution(self, kind: Kind, start: int, mean_gap: int) -> Execution:
        p = self.params
        rng = self.rng
        rnd = rng.random
        agent = rng.choice(self.v2_agents if kind == _V2 else self.v1_agents)
        route = rng.choice(self.routes[agent.application])
        execution_id = _uuid(rng.getrandbits(128))
        duration = 1 + int(rng.expovariate(1.0 / mean_gap))
        end = start + duration
        status = FAILED if rnd() < p.failed_share else COMPLETED
        keying = _KEYED
        if p.unkeyed_share and rnd() < p.unkeyed_share:
            keying = rng.choice((_UNKEYED, _WRONG_KEY, _MIXED))
        if kind == _PAIR:
            keying = _SCATTERED
        self.exchanges += 1
        ids = {
            "correlation_id": _uuid(rng.getrandbits(128)),
            "exchange_id": f"ID-{agent.agent_id}-{self.exchanges}",
            "breadcrumb_id": _uuid(rng.getrandbits(128)),
        }
        statuses: list[str] = []
        bodies: list[bytes] = []
        times: list[int] = []
        add_status, add_body, add_time = statuses.append, bodies.append, times.append

        def add(s: str, value: bytes, at: int) -> None:
            add_status(s)
            add_body(value)
            add_time(at)

        if kind == _V2:
            add(status, self._v2(agent, route, execution_id, ids, start, end, status), end)
        else:
            running = b""
            if kind != _TERMINAL_ONLY:
                running = self._running(agent, route, execution_id, ids, start)
                add(RUNNING, running, start)
            if kind == _REPEATED:
                retries = range(1, rng.randint(2, 3))
                # sorted: `events` is production order, which follows the times
                times_at = sorted(start + int(rnd() * duration) for _ in retries)
                for retry, at in zip(retries, times_at, strict=True):
                    add(RUNNING, self._running_again(agent, route, execution_id, retry), at)
            if kind == _PAIR:
                end = start  # sent right after its RUNNING
            if kind != _STUCK:
                terminal = self._terminal(agent, route, execution_id, ids, start, end, status)
                add(status, terminal, end)
                after = end + 1 + int(rng.expovariate(1.0 / mean_gap))
                if kind == _DUPLICATE:
                    add(status, terminal, after)
                elif kind == _LATE:
                    add(RUNNING, running, after)
                elif kind == _REPLAYED:
                    add(RUNNING, running, end + p.replay_after_ms)
        headers = [("content-type", _JSON), ("cameleer-agent", agent.agent_id.encode())]
        own_key = execution_id.encode()
        running_keyed = keying == _MIXED and rnd() < 0.5  # MIXED: which phase is keyed
        events = []
        for value, event_status in zip(bodies, statuses, strict=True):
            if keying == _KEYED:
                key: bytes | None = own_key
            elif keying in (_UNKEYED, _SCATTERED):
                key = None
            elif keying == _WRONG_KEY:
                key = agent.agent_id.encode()
            else:
                key = own_key if (event_status == RUNNING) == running_keyed else None
            events.append(RawRecord(key, value, list(headers)))
        return Execution(
            execution_id,
            kind,
            agent.agent_id,
            route.route_id,
            agent.protocol_version,
            keying,
            events,
            statuses,
            times,
        )

    def _slice(self, pool: str, length: int) -> str:
        length = max(0, min(length, len(pool)))
        at = int(self.rng.random() * (len(pool) - length + 1))
        return pool[at : at + length]

    def _common(
        self, agent: Agent, route: _Route, execution_id: str, status: str
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"execution_id": execution_id, "status": status}
        if agent.sends_version:
            body["protocol_version"] = agent.protocol_version
        body["agent_id"] = agent.agent_id
        body["application"] = agent.application
        body["route_id"] = route.route_id
        return body

    def _running(
        self, agent: Agent, route: _Route, execution_id: str, ids: dict[str, str], start: int
    ) -> bytes:
        body = self._common(agent, route, execution_id, RUNNING)
        body["camel_context"] = f"{agent.application}-context"
        body["start_time"] = _iso(start)
        body.update(ids)
        if agent.writes_nulls:
            body["parent_execution_id"] = None
        body["headers"] = self._headers(route, ids, 2 + int(self.rng.random() * 3))
        body["from_endpoint"] = route.endpoint
        return self._fill(body, "from_endpoint", self.params.running_bytes, self.query)

    def _running_again(self, agent: Agent, route: _Route, execution_id: str, retry: int) -> bytes:
        """A repeated RUNNING: some fields updated, some null (COALESCE keeps the earlier)."""
        body = self._common(agent, route, execution_id, RUNNING)
        body["route_id"] = None
        body["retry_count"] = retry
        body["headers"] = {"CamelRedeliveryCounter": str(retry), "CamelRedelivered": "true"}
        return orjson.dumps(body)

    def _terminal(
        self,
        agent: Agent,
        route: _Route,
        execution_id: str,
        ids: dict[str, str],
        start: int,
        end: int,
        status: str,
    ) -> bytes:
        body = self._common(agent, route, execution_id, status)
        if self.rng.random() < 0.3:
            body["route_id"] = None  # some agents null what they sent with the RUNNING
        body["exchange_id"] = ids["exchange_id"]
        body["end_time"] = _iso(end)
        body["duration_ms"] = end - start
        self._outcome(body, route, ids, status, agent.writes_nulls, end - start)
        return self._fill_bodies(body, status)

    def _v2(
        self,
        agent: Agent,
        route: _Route,
        execution_id: str,
        ids: dict[str, str],
        start: int,
        end: int,
        status: str,
    ) -> bytes:
        body = self._common(agent, route, execution_id, status)
        body["camel_context"] = f"{agent.application}-context"
        body["start_time"] = _iso(start)
        body["end_time"] = _iso(end)
        body["duration_ms"] = end - start
        body.update(ids)
        self._outcome(body, route, ids, status, agent.writes_nulls, end - start)
        return self._fill_bodies(body, status)

    def _outcome(
        self,
        body: dict[str, Any],
        route: _Route,
        ids: dict[str, str],
        status: str,
        nulls: bool,
        duration: int,
    ) -> None:
        rng = self.rng
        body["headers"] = self._headers(route, ids, len(route.headers) + 1)
        body["input_body"] = ""
        tree = self._tree(route, duration)
        if status == FAILED:
            if nulls:
                body["output_body"] = None
            kind, message = _ERRORS[int(rng.random() * len(_ERRORS))]
            failing = route.tree[int(rng.random() * len(route.tree))][0]
            body["error"] = {
                "type": kind,
                "message": message,
                "processor_id": failing,
                "stack_trace": f"{kind}: {message}\n"
                + self._slice(self.stack, 300 + int(rng.random() * 500)),
            }
        else:
            body["output_body"] = ""
            if nulls:
                body["error"] = None
        body["processors"] = tree

    def _tree(self, route: _Route, duration: int) -> orjson.Fragment:
        """The processor tree: nested [{processor_id, type, duration_ms, children}]."""
        rnd = self.rng.random
        durations = [int(rnd() * duration) for _ in route.tree]
        return orjson.Fragment(route.tree_json % tuple(durations))

    def _headers(self, route: _Route, ids: dict[str, str], count: int) -> orjson.Fragment:
        """The correlation id, then the first count-1 of the route's headers."""
        members = route.header_json[max(0, min(count - 1, len(route.header_json) - 1))]
        return orjson.Fragment(f'{{"X-Correlation-Id":"{ids["correlation_id"]}"{members}}}')

    def _fill(self, body: dict[str, Any], name: str, size: tuple[int, int], pool: str) -> bytes:
        low, high = size
        target = low + int(self.rng.random() * (high - low + 1))
        missing = target - len(orjson.dumps(body))
        if missing > 0:
            body[name] = body[name] + self._slice(pool, missing)
        return orjson.dumps(body)

    def _fill_bodies(self, body: dict[str, Any], status: str) -> bytes:
        low, high = self.params.terminal_bytes
        target = low + int(self.rng.random() * (high - low + 1))
        missing = target - len(orjson.dumps(body))
        if missing <= 0:
            return orjson.dumps(body)
        if body.get("output_body") is None or status == FAILED:
            body["input_body"] = self._slice(self.text, missing)
        else:
            share = int(missing * (0.2 + 0.6 * self.rng.random()))
            body["input_body"] = self._slice(self.text, share)
            body["output_body"] = self._slice(self.text, missing - share)
        return orjson.dumps(body)

    # -- malformed records --------------------------------------------------------------

    def _malformed(self) -> tuple[RawRecord, str]:
        rng = self.rng
        reason = MALFORMED_REASONS[int(rng.random() * len(MALFORMED_REASONS))]
        execution_id = _uuid(rng.getrandbits(128))
        agent = rng.choice(self.agents)
        variant = int(rng.random() * 4)
        base = {"execution_id": execution_id, "status": RUNNING, "agent_id": agent.agent_id}
        value: bytes
        if reason == INVALID_JSON:
            full = orjson.dumps({**base, "route_id": "x", "start_time": _iso(0)})
            value = (full[: len(full) // 2], b"\xff\xfe{}", b"", b"{'single': 'quotes'}")[variant]
        elif reason == NOT_AN_OBJECT:
            value = (b"[1, 2, 3]", b'"RUNNING"', b"42", b"null")[variant]
        elif reason == MISSING_EXECUTION_ID:
            body = dict(base)
            if variant == 0:
                del body["execution_id"]
            else:
                body["execution_id"] = ("", 12345, None)[variant - 1]
            value = orjson.dumps(body)
        elif reason == INVALID_STATUS:
            body = dict(base)
            if variant == 0:
                del body["status"]
            else:
                body["status"] = ("running", "DONE", 1)[variant - 1]
            value = orjson.dumps(body)
        else:
            value = orjson.dumps({**base, "protocol_version": (3, "2", True, 1.5)[variant]})
        key = execution_id.encode() if rng.random() < 0.7 else None
        headers = [("content-type", _JSON), ("cameleer-agent", agent.agent_id.encode())]
        return RawRecord(key, value, headers), reason


def option_names() -> list[str]:
    """The names `generate` and `iter_steps` accept as options."""
    return [f.name for f in fields(Params)]
