"""Faust's partition assignor, with raw partitions following their state partitions.

Upstream (faust-streaming 0.15.3, faust/assignor/partition_assignor.py,
`PartitionAssignor`):
- `_global_table_standby_assignments(assignments, partitions_by_topic)`: extended;
  it is the last step of `_perform_assignment` over the co-partitioned
  assignments (`ClientAssignment.actives` / `.standbys`,
  faust/assignor/client_assignment.py), before they are encoded.
- `on_assignment(assignment)`: extended; it decodes the leader's `ClientMetadata`
  (`_decompress`, `ClientMetadata.loads`) and asserts that its `url` is `_url`,
  which is replaced by a property for the duration of the call. The rejoin is
  asked of the aiokafka consumer's group coordinator
  (`request_rejoin()`), reached through the Faust consumer's thread.

Why:
- Faust co-partitions topics of equal partition counts only: once the raw topic
  has grown, it would spread the raw partitions apart from the re-key and
  changelog partitions their records are merged in. Raw partition p goes to the
  owner of state partition p % (state partitions) instead; with equal counts this
  is Faust's own assignment.
- A static member restarted within the session timeout receives the assignment
  the group leader made for its previous incarnation, with the address (web URL)
  that one had; Faust asserts it is this worker's, and a worker restarted under
  another address would fail that check at every restart. It is taken as it is;
  the group is asked to rebalance, once, so that the other workers route this
  worker's table partitions to its new address (a stable
  CAMELEER_WEB_ADVERTISED_HOST and port make this never happen).

Checked by tests/unit/test_upstream.py (the rows and tests of `assignor`) and
tests/unit/test_growing_topics.py (`colocate_raw`).
"""

from __future__ import annotations

import logging

from faust.assignor.client_assignment import ClientMetadata
from faust.assignor.partition_assignor import PartitionAssignor

log = logging.getLogger(__name__)


def colocate_raw(assignments: dict, raw: str, rekey: str, raw_count: int, state_count: int):
    """Give raw partition p to the members owning state partition p % state_count (the
    re-key partition, assigned with its changelog partition), as actives and standbys
    alike. With equal counts this is Faust's own co-partitioned assignment."""
    for assignment in assignments.values():
        for mine in (assignment.actives, assignment.standbys):
            state = set(mine.get(rekey, ()))
            if raw in mine or state:
                mine[raw] = [p for p in range(raw_count) if p % state_count in state]
    return assignments


class MergerAssignor(PartitionAssignor):
    """Faust's assignor: raw partitions follow their state partitions, and an
    assignment made for an older address of this worker is taken (see the module's
    header)."""

    _url_override: str | None = None

    @property
    def _url(self):
        return self._url_override or self.app.conf.canonical_url

    def on_assignment(self, assignment) -> None:
        assigned_to = ClientMetadata.loads(self._decompress(assignment.user_data)).url
        ours = str(self.app.conf.canonical_url)
        if assigned_to == ours:
            super().on_assignment(assignment)
            return
        log.warning(
            "the group assigned these partitions to this worker's previous address %s, "
            "not %s: taken, and the group asked to rebalance for the new address",
            assigned_to,
            ours,
        )
        self._url_override = assigned_to
        try:
            super().on_assignment(assignment)
        finally:
            self._url_override = None
        # on the consumer's thread, in the coordinator's join: a rejoin follows it
        self.app.consumer.request_rejoin()

    def _global_table_standby_assignments(self, assignments, partitions_by_topic):
        # Faust's last step over the co-partitioned assignments, before they are encoded
        assignments = super()._global_table_standby_assignments(assignments, partitions_by_topic)
        engine = self.app.engine
        raw, rekey = engine.raw_topic, engine.rekey_topic
        if raw in partitions_by_topic:
            count, state = partitions_by_topic[raw], engine.state_partitions
            if count % state:
                log.warning(
                    "raw topic %s has %d partitions, not a multiple of the state's %d: keyed "
                    "records on a raw partition whose state partition is another travel "
                    "through the re-key topic (docs/growing-topics.md)",
                    raw,
                    count,
                    state,
                )
            assignments = colocate_raw(assignments, raw, rekey, count, state)
        return assignments
