"""The Faust app and its transport, wired to the worker's consumer, assignor and engine.

Upstream (faust-streaming 0.15.3):
- `Transport` (faust/transport/drivers/aiokafka.py, the aiokafka driver):
  `create_consumer(callback, **kwargs)` and `create_transaction_manager(consumer,
  producer, **kwargs)` are replaced, to build app.overrides.consumer's
  `MergerConsumer` and app.overrides.transaction_manager's
  `MergerTransactionManager`; `__init__(url, app, loop=None)` takes the engine
  and the connection besides.
- `faust.App` (faust/app/base.py): `_new_transport()` is replaced (Faust picks the
  transport class by the broker URL's scheme); the `PartitionAssignor` setting
  names app.overrides.assignor's `MergerAssignor`, the `TableManager` setting
  app.overrides.table_manager's `MergerTableManager`; `on_start()` and
  `on_stop()` are extended.

Why: Faust offers no setting for the consumer or the transaction manager class;
they come from the transport, and the transport from `_new_transport`. On start
the changelog queue's guard is installed (app.overrides.changelog_queue) and the
agent registry is started: not as an `app.task`, which Faust starts once table
recovery is complete, while recovery completes when the engine has the
assignment, which waits for the registry (a v2 agent's records must not be read
as v1). On stop the consumer stops first, and the engine commits then.

Checked by tests/unit/test_upstream.py (the rows and tests of `faust_app`).
"""

from __future__ import annotations

import faust
from faust.transport.drivers.aiokafka import Transport

from app.engine.engine import Engine
from app.kafka.connection import Connection
from app.overrides.assignor import MergerAssignor
from app.overrides.changelog_queue import keep_changelog_queue_on_resume
from app.overrides.consumer import MergerConsumer
from app.overrides.table_manager import MergerTableManager
from app.overrides.transaction_manager import MergerTransactionManager


class MergerTransport(Transport):
    def __init__(self, url, app, *, engine: Engine, connection: Connection, **kwargs) -> None:
        super().__init__(url, app, **kwargs)
        self._engine = engine
        self._connection = connection

    def create_consumer(self, callback, **kwargs):
        return MergerConsumer(
            self,
            callback=callback,
            loop=self.loop,
            engine=self._engine,
            connection=self._connection,
            **kwargs,
        )

    def create_transaction_manager(self, consumer, producer, **kwargs):
        return MergerTransactionManager(self, consumer=consumer, producer=producer, **kwargs)


class MergerApp(faust.App):
    """faust.App with the batch engine's transport, assignor and table manager."""

    def __init__(self, *args, engine: Engine, registry, connection: Connection, **kwargs) -> None:
        self.engine = engine  # also read by MergerAssignor
        self.registry = registry
        self.connection = connection
        # raw partitions follow their state partitions; a static member's assignment
        # made for its previous address is taken (MergerAssignor); no fixed second
        # before the group join (MergerTableManager)
        super().__init__(
            *args, PartitionAssignor=MergerAssignor, TableManager=MergerTableManager, **kwargs
        )

    async def on_start(self) -> None:
        await super().on_start()
        keep_changelog_queue_on_resume(self)
        self.add_future(self.registry.start())  # not an app.task: see the module's header

    def _new_transport(self):
        return MergerTransport(
            self.conf.broker_consumer, self, engine=self.engine, connection=self.connection
        )

    async def on_stop(self) -> None:
        await super().on_stop()  # stops the consumer (the engine commits) first
        await self.registry.stop()
