"""The worker's HTTP endpoints, as Faust web views (docs/operating.md).

- /metrics: Prometheus text format (prometheus_client, app.ops.metrics)
- /health: liveness, 200 while the event loop answers
- /ready: readiness, 200 once partitions are assigned, their state recovered and the
  agent registry read; else 503 with the reasons
- /executions/running: the in-flight executions this worker holds (app.state.inflight)
- /executions/{execution_id}: one execution, answered by its partition's owner
  (Faust's table routing forwards the request there)
- /agents: per agent, executions held here and the protocol version
- /stats: the engine's raw counters and timings (for tuning)

No view shows bodies or headers of any record: they can hold personal data.
"""

from __future__ import annotations

from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST

from app.engine.processor import partition_for

MAX_LIMIT = 1000


def not_ready_reasons(app, engine, registry) -> list[str]:
    """Why this worker should not take traffic now ([] when it is ready)."""
    reasons = []
    if engine.stopping:
        reasons.append("stopping")
    if not registry.ready.is_set():
        reasons.append("agent registry not read yet")
    if app.rebalancing:
        reasons.append("rebalancing")
    recovery = app.tables.recovery
    if recovery.in_recovery or not recovery.completed.is_set():
        reasons.append("table state recovering")
    if not engine.assigned:
        reasons.append("no partitions assigned")
    return reasons


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    value = int(raw)  # ValueError: answered 400 by the caller
    return max(low, min(high, value))


def register(app, *, engine, registry, inflight, metrics, held, partitions: int) -> None:
    """Add the views to the Faust app (`held`: the table whose owner answers per key)."""
    identity = {"worker": str(app.conf.canonical_url)}

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            await metrics.refresh()
            return self.bytes(metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok"})  # answering at all is the proof

    @app.page("/ready")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            reasons = not_ready_reasons(app, engine, registry)
            body = {
                "ready": not reasons,
                "reasons": reasons,
                "partitions": sorted({tp.partition for tp in engine.assigned}),
                **identity,
            }
            return self.json(body, status=503 if reasons else 200)

    @app.page("/executions/running")
    class Running(View):
        async def get(self, request: Request) -> Response:
            try:
                limit = _int(request, "limit", 50, 1, MAX_LIMIT)
                offset = _int(request, "offset", 0, 0, 2**31)
            except ValueError:
                return self.error(400, "limit and offset must be integers")
            order = request.query.get("order", "oldest")
            if order not in ("oldest", "newest"):
                return self.error(400, "order must be oldest or newest")
            page = await inflight.running(
                agent=request.query.get("agent"),
                route=request.query.get("route"),
                limit=limit,
                offset=offset,
                newest_first=order == "newest",
            )
            return self.json({**page, **identity})

    @app.page("/executions/{execution_id}")
    class Execution(View):
        # The held state of an execution lives on the partition its execution_id hashes
        # to (murmur2, as agents key their records), whatever its key in the table
        # (b"e" + execution_id): the table's changelog partition of the execution_id is
        # that partition, so Faust routes by the execution_id itself.
        @app.table_route(table=held, match_info="execution_id")
        async def get(self, request: Request, execution_id: str) -> Response:
            partition = partition_for(execution_id.encode(), partitions)
            if partition not in engine.owned_state:
                body = {"error": "partition not owned here (rebalancing?)", "partition": partition}
                return self.json({**body, **identity}, status=503)
            answer = inflight.execution(partition, execution_id)
            status = 404 if answer["state"] == "unknown" else 200
            return self.json({**answer, **identity}, status=status)

    @app.page("/agents")
    class Agents(View):
        async def get(self, request: Request) -> Response:
            return self.json({**(await inflight.agents()), **identity})
