"""Faust's table manager without the second it sleeps before its tables are final.

Upstream (faust-streaming 0.15.3): `TableManager.on_start` (faust/tables/manager.py)
is replaced; the body is Faust's without its first line, `await self.sleep(1.0)`.
`faust.App`'s `TableManager` setting names the class (app.overrides.faust_app).
The conductor (faust/transport/conductor.py, `Conductor._subscriber`)
subscribes the consumer once `_update_channels` has set `_tables_registered`.

Why: Faust waits 1 s at start for tables that agents might still declare; the
worker's one table is declared before the app starts. The consumer subscribes,
hence joins the group, only once the tables are final: every start, a restart of
a static member included, waited that second for nothing.

Checked by tests/unit/test_upstream.py (the rows and tests of `table_manager`).
"""

from __future__ import annotations

from faust.tables import TableManager


class MergerTableManager(TableManager):
    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()
