"""What each override in app/overrides relies on in Faust, mode and aiokafka. No Kafka.

An upgrade that moves any of it fails here, with a message naming the override to
re-check, instead of in production (docs/upgrading.md says what to do then):
- SHAPES: the parameters of the upstream functions an override replaces, extends
  or calls (names, order, kinds and defaults; annotations are left out);
- LINES: lines of upstream source an override depends on (a call it hooks into,
  a private attribute it reads or writes, a value it changes);
- BODIES: a fingerprint of each upstream function an override copies or replaces.
  A changed fingerprint means: read the upstream change, carry it into the
  override (or drop the override if upstream now does the job), then put the new
  fingerprint here;
- the tests after the tables: the attributes, on real objects built without a
  broker, and the upstream behaviour an override exists for (a test that says
  so fails once upstream no longer needs the override).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import textwrap
from collections import Counter
from types import SimpleNamespace

import aiokafka.conn
import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.cluster import ClusterMetadata
from aiokafka.consumer.fetcher import READ_UNCOMMITTED, Fetcher, OffsetResetStrategy
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.producer.sender import BaseHandler, Sender, TxnOffsetCommitHandler
from aiokafka.producer.transaction_manager import (
    TransactionManager,
    TransactionResult,
    TransactionState,
)
from aiokafka.protocol.group import HeartbeatRequest
from aiokafka.protocol.offset import OffsetRequest
from aiokafka.structs import OffsetAndMetadata
from faust.assignor.client_assignment import ClientAssignment
from faust.assignor.partition_assignor import PartitionAssignor
from faust.stores.rocksdb import Store
from faust.tables.base import Collection
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.transport import base as transport_base
from faust.transport import consumer as faust_consumer
from faust.transport.conductor import Conductor
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.utils.queues import FlowControlEvent

from app.kafka.connection import Connection
from app.overrides import (
    assignor,
    changelog_queue,
    changelog_restore,
    consumer,
    consumer_thread,
    eos_producer,
    faust_app,
    high_watermarks,
    oauthbearer,
    stable_offsets,
    static_heartbeat,
    table_manager,
    transaction_manager,
)

TP = TopicPartition("upstream-test", 0)
# aiokafka's own OAUTHBEARER authenticator: app.kafka.connection has put ours in its place
AIOKAFKA_OAUTH = oauthbearer.OAuthAuthenticator.__bases__[0]
# Faust's classes the overrides subclass
FAUST_THREAD = faust_aiokafka.AIOKafkaConsumerThread
FAUST_CONSUMER = faust_consumer.Consumer
FAUST_DELEGATE = faust_consumer.ThreadDelegateConsumer
FAUST_TM = faust_consumer.TransactionManager
# the private accesses outside app/overrides, marked there with `noqa: SLF001`
ACCESS, STATESTORE, CLI = "app/kafka/access.py", "app/state/statestore.py", "app/ops/cli.py"


def where(override) -> str:
    """The file of an override, given its module or its path."""
    if isinstance(override, str):
        return override
    return override.__name__.replace(".", "/") + ".py"


def name_of(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def shape(func) -> str:
    """A function's parameters as written, without annotations: `self, tp, *, x=1`."""
    parts: list[str] = []
    star = False
    for p in inspect.signature(func).parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            parts.append(f"*{p.name}")
            star = True
        elif p.kind is p.VAR_KEYWORD:
            parts.append(f"**{p.name}")
        else:
            if p.kind is p.KEYWORD_ONLY and not star:
                parts.append("*")
                star = True
            parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return ", ".join(parts)


def fingerprint(func) -> str:
    return hashlib.sha256(textwrap.dedent(inspect.getsource(func)).encode()).hexdigest()[:16]


def table_ids(rows) -> list[str]:
    return [f"{where(row[-1]).rsplit('/', 1)[1][:-3]}:{row[0].__qualname__}" for row in rows]


# ---- shapes ----------------------------------------------------------------------------

# (upstream function, its parameters, the override that replaces, extends or calls it)
# fmt: off
SHAPES = [
    (Sender.__init__, "self, client, *, acks, txn_manager, message_accumulator, "
     "retry_backoff_ms, request_timeout_ms", eos_producer),
    (Sender._do_txn_offset_commit, "self, offsets, group_id", eos_producer),
    (Sender._find_coordinator, "self, coordinator_type, coordinator_key", eos_producer),
    (TxnOffsetCommitHandler.__init__, "self, sender, offsets, group_id", eos_producer),
    (TxnOffsetCommitHandler.create_request, "self", eos_producer),
    (TxnOffsetCommitHandler.handle_response, "self, resp", eos_producer),
    (BaseHandler.do, "self, node_id", eos_producer),
    (TransactionManager._transition_to, "self, target", eos_producer),
    (AIOKafkaProducer.send_offsets_to_transaction, "self, offsets, group_id", eos_producer),
    (GroupCoordinator._send_req, "self, request", stable_offsets),
    (GroupCoordinator.ensure_coordinator_known, "self", stable_offsets),
    (GroupCoordinator.coordinator_dead, "self", stable_offsets),
    (OffsetRequest.__init__, "self, replica_id, isolation_level, topics", high_watermarks),
    (AIOKafkaClient.send, "self, node_id, request, *, group=<ConnectionGroup.DEFAULT: 0>",
     high_watermarks),
    (ClusterMetadata.leader_for_partition, "self, partition", high_watermarks),
    (GroupCoordinator._do_heartbeat, "self", static_heartbeat),
    (GroupCoordinator.request_rejoin, "self", static_heartbeat),
    (GroupCoordinator.reset_generation, "self", static_heartbeat),
    # aiokafka's heartbeat still lacks the instance id: else the copy may go
    (HeartbeatRequest.__init__, "self, group, generation_id, member_id", static_heartbeat),
    (FAUST_THREAD._create_worker_consumer, "self, transport", consumer_thread),
    (FAUST_THREAD._highwaters, "self, partitions", consumer_thread),
    (FAUST_THREAD._seek_wait, "self, consumer, partitions", consumer_thread),
    (FAUST_THREAD._fetch_records, "self, consumer, active_partitions, timeout=None, "
     "max_records=None", consumer_thread),
    (FAUST_THREAD._ensure_consumer, "self", consumer_thread),
    (FAUST_THREAD.call_thread, "self, fun, *args, **kwargs", consumer_thread),
    (AIOKafkaClient.force_metadata_update, "self", consumer_thread),
    (FAUST_CONSUMER._drain_messages, "self, fetcher", consumer),
    (FAUST_CONSUMER._get_active_partitions, "self", consumer),
    (FAUST_CONSUMER.perform_seek, "self", consumer),
    (FAUST_CONSUMER.on_partitions_revoked, "self, revoked", consumer),
    (FAUST_CONSUMER.on_partitions_assigned, "self, assigned, generation_id=0", consumer),
    (FAUST_CONSUMER.on_stop, "self", consumer),
    (FAUST_CONSUMER.verify_event_path, "self, now, tp", consumer),
    (FAUST_DELEGATE.highwaters, "self, *partitions", consumer),
    (FAUST_DELEGATE._commit, "self, offsets", consumer),
    (FAUST_DELEGATE._new_consumer_thread, "self", consumer),
    (PartitionAssignor.assigned_actives, "self", consumer),
    (Recovery.need_recovery, "self", changelog_restore),
    (Recovery.standby_remaining_total, "self", changelog_restore),
    (TableManager.on_standbys_ready, "self", changelog_restore),
    (Store._db_for_partition, "self, partition", changelog_restore),
    (Store.persisted_offset, "self, tp", changelog_restore),
    (Store.apply_changelog_batch, "self, batch, to_key, to_value", changelog_restore),
    (FlowControlEvent.is_active, "self", changelog_queue),
    (TableManager.on_start, "self", table_manager),
    (TableManager._update_channels, "self", table_manager),
    (PartitionAssignor._global_table_standby_assignments,
     "self, assignments, partitions_by_topic", assignor),
    (PartitionAssignor.on_assignment, "self, assignment", assignor),
    (PartitionAssignor._decompress, "compressed", assignor),
    (FAUST_TM.__init__, "self, transport, *, consumer, producer, **kwargs", transaction_manager),
    (FAUST_TM.on_rebalance, "self, assigned, revoked, newly_assigned", transaction_manager),
    (FAUST_TM.on_partitions_revoked, "self, revoked", transaction_manager),
    (FAUST_TM.commit, "self, offsets, start_new_transaction=True", transaction_manager),
    (faust.App._new_transport, "self", faust_app),
    (transport_base.Transport.__init__, "self, url, app, loop=None", faust_app),
    (faust_aiokafka.Transport.create_consumer, "self, callback, **kwargs", faust_app),
    (faust_aiokafka.Transport.create_transaction_manager, "self, consumer, producer, **kwargs",
     faust_app),
    (AIOKAFKA_OAUTH.__init__, "self, *, sasl_oauth_token_provider", oauthbearer),
    (AIOKAFKA_OAUTH.step, "self, payload", oauthbearer),
    (AIOKafkaAdminClient._send_request, "self, request, node_id=None", ACCESS),
    (Store._db_for_partition, "self, partition", STATESTORE),
    (AIOKafkaClient.force_metadata_update, "self", CLI),
]
# fmt: on


@pytest.mark.parametrize("func, expected, override", SHAPES, ids=table_ids(SHAPES))
def test_the_upstream_functions_overridden_or_called_take_what_they_took(func, expected, override):
    got = shape(func)
    assert got == expected, (
        f"{name_of(func)} is now ({got}), was ({expected}): re-check {where(override)}"
    )


# ---- key lines -------------------------------------------------------------------------

# (upstream function or class, lines of its source, the override relying on them)
# fmt: off
LINES = [
    # aiokafka builds its Sender in the producer's __init__, and sends offsets through it
    (AIOKafkaProducer.__init__, ["self._sender = Sender("], eos_producer),
    (Sender, ["self._do_txn_offset_commit(offsets, group_id)"], eos_producer),
    (BaseHandler.__init__, ["self._sender = sender"], eos_producer),
    # the v0-shaped answer the handler is given: `errors` alone
    (TxnOffsetCommitHandler.handle_response,
     ["for topic, partitions in resp.errors:", "for partition, error_code in partitions:"],
     eos_producer),
    # the private state _fail_abortable writes; the abort sends EndTxn unless it looks empty
    (TransactionManager.__init__,
     ["self._pending_txn_offsets = ", "self._transaction_waiter = ", "self._txn_partitions = "],
     eos_producer),
    (Sender._do_txn_commit, ["if txn_manager.is_empty_transaction():"], eos_producer),
    # the group coordinator lives on the consumer once started, with what is read of it
    (AIOKafkaConsumer.start, ["self._coordinator = GroupCoordinator("], stable_offsets),
    # the consumer's own end offsets follow its isolation level: built and sent as here
    (Fetcher.__init__, ['elif isolation_level == "read_committed":',
                        "self._isolation_level = READ_COMMITTED"], high_watermarks),
    (Fetcher._proc_offset_request,
     ["OffsetRequest(-1, self._isolation_level, list(topic_data.items()))",
      "await self._client.send(node_id, request)", "timestamp, offset = partition_info"],
     high_watermarks),
    (AIOKafkaConsumer.__init__, ["self._client = AIOKafkaClient("], high_watermarks),
    (GroupCoordinator.__init__,
     ["self.group_id = group_id", "self.generation = ", "self.member_id = ",
      "self._group_instance_id = group_instance_id"], static_heartbeat),
    # the heartbeat task looks the method up at every beat: replacing it on the instance works
    (GroupCoordinator._heartbeat_routine, ["await self._do_heartbeat()"], static_heartbeat),
    # Faust fixes the fetch wait; aiokafka hands the attribute to its fetcher at start
    (FAUST_THREAD._create_worker_consumer, ["fetch_max_wait_ms=1500"], consumer_thread),
    (AIOKafkaConsumer.start, ["fetch_max_wait_ms=self._fetch_max_wait_ms"], consumer_thread),
    # the fetch size is read as each fetch request is built: a change applies to the next
    (Fetcher.__init__, ["self._max_partition_fetch_bytes = max_partition_fetch_bytes"],
     consumer_thread),
    (Fetcher, ["(tp.partition, position, self._max_partition_fetch_bytes)"], consumer_thread),
    (FAUST_THREAD.on_start,
     ["self._consumer = self._create_consumer(", "await self._consumer.start()"],
     consumer_thread),
    (FAUST_THREAD.highwaters, ["self.call_thread(self._highwaters, partitions)"], consumer_thread),
    (FAUST_THREAD.seek_wait, ["self.call_thread(self._seek_wait, consumer, partitions)"],
     consumer_thread),
    (FAUST_THREAD.getmany, ["max_records=_consumer._max_poll_records"], consumer_thread),
    (FAUST_CONSUMER, ["self._read_offset = "], consumer_thread),
    # Faust's fetcher service runs the drain loop; the recovery calls the seek
    (faust_consumer.Fetcher._fetcher.fun, ["await consumer._drain_messages(self)"], consumer),
    (Recovery, ["consumer.perform_seek()"], consumer),
    # what Faust's own changelog reader does at the end, and the offsets it keeps
    (Recovery._slurp_changelogs.fun,
     ["self.signal_recovery_end.set()", "active_offsets = self.active_offsets"],
     changelog_restore),
    (Store.__init__, ["self.use_rocksdict = "], changelog_restore),
    # called with keywords: derive_on_recovery takes the same names
    (Collection.apply_changelog_batch,
     ["self.data.apply_changelog_batch(", "to_key=self._to_key", "to_value=self._to_value"],
     changelog_restore),
    (TableManager.changelog_queue.fget, ["clear_on_resume=True"], changelog_queue),
    # the consumer subscribes (joins the group) once the tables are final
    (TableManager._update_channels, ["self._tables_registered.set()"], table_manager),
    (Conductor._subscriber.fun,
     ["await self.app.tables.wait_until_tables_registered()",
      "await self.app.consumer.subscribe("], table_manager),
    (FlowControlEvent.clear, ["queue.clear()"], changelog_queue),
    (PartitionAssignor._perform_assignment, ["self._global_table_standby_assignments("],
     assignor),
    (PartitionAssignor.on_assignment,
     ["ClientMetadata.loads(self._decompress(assignment.user_data))",
      "assert metadata.url == str(self._url)"], assignor),
    # aiokafka looks the class up in its module at each authentication
    (aiokafka.conn.AIOKafkaConnection.authenticator_oauth, ["return OAuthAuthenticator("],
     oauthbearer),
    (AIOKAFKA_OAUTH.__init__, ["self._token_sent = False"], oauthbearer),
]
# fmt: on


@pytest.mark.parametrize("obj, lines, override", LINES, ids=table_ids(LINES))
def test_the_upstream_lines_an_override_depends_on_are_there(obj, lines, override):
    source = inspect.getsource(obj)
    missing = [line for line in lines if line not in source]
    assert not missing, f"{name_of(obj)} no longer has {missing}: re-check {where(override)}"


# ---- bodies an override copies or replaces ---------------------------------------------

# (upstream function, its fingerprint, how the override uses it, the override)
# fmt: off
BODIES = [
    # aiokafka 0.14.0
    (Sender._do_txn_offset_commit, "ab4e7128f33ab64e", "copies it, with the v3 handler",
     eos_producer),
    (TransactionManager.error_transaction, "4acd8c0364a2816b",
     "replaces it with _fail_abortable", eos_producer),
    (TxnOffsetCommitHandler.handle_response, "da2a7e6d89c7b614",
     "calls it with a v0-shaped answer", eos_producer),
    (GroupCoordinator._do_heartbeat, "5628cb32b3d29bf4", "copies it, with Heartbeat v3",
     static_heartbeat),
    (AIOKAFKA_OAUTH.step, "9dd1660dfc5c2955", "extends it", oauthbearer),
    # faust-streaming 0.15.3
    (FAUST_THREAD._seek_wait, "98f8aa716db26656", "copies it", consumer_thread),
    (FAUST_THREAD._highwaters, "829699ec62b7ec5b", "replaces it", consumer_thread),
    (FAUST_CONSUMER._drain_messages, "8f35dd7a11144daa", "replaces it", consumer),
    (FAUST_CONSUMER.perform_seek, "2b4ceebd23deb7ee", "replaces it", consumer),
    (Recovery._slurp_changelogs.fun, "7e3120dad754763d", "does its job for the held table",
     changelog_restore),
    (Store.apply_changelog_batch, "67ac93a2bea2a488", "replaces it (derive_on_recovery)",
     changelog_restore),
    (PartitionAssignor.on_assignment, "63482c10174f442e", "extends it", assignor),
    (FAUST_TM.on_rebalance, "ec6abaaacd36e331", "replaces it", transaction_manager),
    (TableManager.on_start, "b82e759be50ccebe", "replaces it, without its 1 s sleep",
     table_manager),
    # mode-streaming 0.7.1
    (FlowControlEvent.resume, "da6fc70c770ea01b", "keeps the queue from the clear() it calls",
     changelog_queue),
]
# fmt: on


@pytest.mark.parametrize("func, digest, how, override", BODIES, ids=table_ids(BODIES))
def test_the_upstream_bodies_overridden_are_the_ones_read(func, digest, how, override):
    got = fingerprint(func)
    assert got == digest, (
        f"{name_of(func)} changed upstream (fingerprint {got}, was {digest}); "
        f"{where(override)} {how}: re-check it against the new code, then update the "
        "fingerprint in tests/unit/test_upstream.py"
    )


# ---- the Faust app, built as the worker builds it (no broker needed) -------------------


@pytest.fixture
def merger_app():
    """A MergerApp with exactly_once, with an event loop set (Faust's services want one)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    engine = SimpleNamespace(counts=Counter(), attach=lambda consumer: None)
    app = faust_app.MergerApp(
        "upstream-test",
        engine=engine,
        registry=None,
        connection=Connection(),
        broker="kafka://localhost:1",
        store="memory://",
        processing_guarantee="exactly_once",
    )
    yield app
    asyncio.set_event_loop(None)
    loop.close()


def test_faust_app_builds_the_merger_transport_consumer_thread_and_transactions(merger_app):
    # Faust offers no setting for these classes: they come from `_new_transport`,
    # `Transport.create_consumer`, `Consumer._new_consumer_thread` and
    # `Transport.create_transaction_manager`; the assignor comes from a setting
    app = merger_app
    built = {
        "App._new_transport": (app.transport, faust_app.MergerTransport),
        "the PartitionAssignor setting": (app.assignor, assignor.MergerAssignor),
        "the TableManager setting": (app.tables, table_manager.MergerTableManager),
        "Transport.create_consumer": (app.consumer, consumer.MergerConsumer),
        "Consumer._new_consumer_thread": (
            app.consumer._thread,
            consumer_thread.MergerConsumerThread,
        ),
        "Transport.create_transaction_manager": (
            app.consumer.transactions,
            transaction_manager.MergerTransactionManager,
        ),
    }
    wrong = {hook: type(obj).__name__ for hook, (obj, cls) in built.items() if type(obj) is not cls}
    assert not wrong, f"Faust no longer builds them through {wrong}: re-check {where(faust_app)}"
    for name in ("on_start", "on_stop", "add_future"):
        assert callable(getattr(app, name)), f"faust.App.{name}: re-check {where(faust_app)}"


# ---- eos_producer ----------------------------------------------------------------------


def test_eos_producer_rebuilds_the_sender_with_every_argument_aiokafka_gave_its_own():
    config = dict(
        bootstrap_servers="localhost:1",
        transactional_id="upstream-test",
        acks="all",
        retry_backoff_ms=321,
        request_timeout_ms=12_345,
    )

    async def producers():
        plain, ours = AIOKafkaProducer(**config), eos_producer.EosProducer(**config)
        await plain.stop()
        await ours.stop()
        return plain, ours

    plain, ours = asyncio.run(producers())
    assert type(ours._sender) is eos_producer._Kip447Sender
    # the producer's own objects are handed on; everything else equals aiokafka's Sender
    own = {"client": ours.client, "_txn_manager": ours._txn_manager}
    own["_message_accumulator"] = ours._message_accumulator
    theirs, mine = vars(plain._sender), vars(ours._sender)
    assert set(mine) == set(theirs), f"Sender's attributes: re-check {where(eos_producer)}"
    for name, value in theirs.items():
        if name in own:
            assert mine[name] is own[name], name
        else:
            assert mine[name] == value, (
                f"Sender.{name}: {mine[name]!r}, aiokafka's {value!r}: "
                f"re-check {where(eos_producer)}"
            )


def _refused_transaction(fail) -> TransactionManager:
    """A transaction with a partition and a group added, failed by `fail`, then aborted."""

    async def go():
        txn = TransactionManager("upstream-test", 60_000)
        txn.set_pid_and_epoch(1, 0)
        txn.begin_transaction()
        txn.maybe_add_partition_to_txn(TP)
        txn.partition_added(TP)
        pending = txn.add_offsets_to_txn({TP: OffsetAndMetadata(5, "")}, "group")
        txn.consumer_group_added("group")
        refused = eos_producer.ZombieFenced("refused")
        fail(txn, refused)
        assert txn.state is TransactionState.ABORTABLE_ERROR
        assert pending.exception() is refused
        assert txn.wait_for_transaction_end().exception() is refused
        txn.aborting_transaction()
        return txn

    return asyncio.run(go())


def test_eos_producer_fail_abortable_leaves_a_transaction_that_the_abort_ends():
    ours = _refused_transaction(eos_producer._fail_abortable)
    assert ours.needs_transaction_commit() is TransactionResult.ABORT
    assert not ours.is_empty_transaction()  # the Sender sends the EndTxn
    theirs = _refused_transaction(TransactionManager.error_transaction)
    assert theirs.is_empty_transaction(), (
        "aiokafka's error_transaction now keeps the transaction's partitions: "
        f"_fail_abortable ({where(eos_producer)}) may give way to it"
    )


# ---- consumer_thread -------------------------------------------------------------------


def test_consumer_thread_sets_the_fetch_wait_of_the_consumer_faust_builds(merger_app):
    async def built():
        kafka_consumer = merger_app.consumer._thread._create_worker_consumer(merger_app.transport)
        await kafka_consumer.stop()
        return kafka_consumer

    kafka_consumer = asyncio.get_event_loop().run_until_complete(built())
    assert kafka_consumer._fetch_max_wait_ms == consumer_thread.FETCH_MAX_WAIT_MS


def test_consumer_thread_reads_what_it_reads_where_aiokafka_keeps_it():
    async def assigned():
        kafka_consumer = AIOKafkaConsumer(bootstrap_servers="localhost:1", group_id="g")
        kafka_consumer.assign([TP])
        await kafka_consumer.stop()
        return kafka_consumer, kafka_consumer._subscription.subscription.assignment

    kafka_consumer, assignment = asyncio.run(assigned())
    state = assignment.state_value(TP)
    assert state.has_valid_position is False  # no position yet: none is reported
    assert isinstance(inspect.getattr_static(type(state), "position"), property)
    assert "_max_poll_records" in vars(kafka_consumer)
    assert isinstance(kafka_consumer._client, AIOKafkaClient)


# ---- consumer --------------------------------------------------------------------------


def test_consumer_reads_what_faust_keeps_on_it(merger_app):
    faust_side = merger_app.consumer
    for name in ("flow_active", "in_transaction", "can_resume_flow", "_stopped", "transport"):
        assert hasattr(faust_side, name), f"Consumer.{name}: re-check {where(consumer)}"
    assert faust_side.consumer_stopped_errors, f"re-check {where(consumer)}"
    assert callable(faust_side._stopped.is_set)
    assert faust_side.app.flow_control.is_active() in (True, False)
    assert faust_side.transport.app.should_stop is False


# ---- changelog_restore -----------------------------------------------------------------


def test_changelog_restore_keeps_faust_recovery_bookkeeping_as_faust_keeps_it(merger_app):
    recovery, tables = merger_app.tables.recovery, merger_app.tables
    kinds = {
        "active_tps": set,
        "standby_tps": set,
        "active_offsets": Counter,
        "standby_offsets": Counter,
        "tp_to_table": dict,
        "in_recovery": bool,
    }
    wrong = sorted(
        name for name, kind in kinds.items() if not isinstance(getattr(recovery, name), kind)
    )
    assert not wrong, f"Recovery.{wrong}: re-check {where(changelog_restore)}"
    assert hasattr(recovery, "_recovery_started_at")
    assert callable(recovery.signal_recovery_end.set)
    assert tables.standbys_ready is False
    assert isinstance(Store.offset_key, bytes)


# ---- changelog_queue -------------------------------------------------------------------


def test_changelog_queue_is_one_that_faust_clears_on_every_resume(merger_app):
    queue, flow = merger_app.tables.changelog_queue, merger_app.flow_control
    assert queue in set(flow._queues), f"re-check {where(changelog_queue)}"
    assert callable(queue.qsize)


# ---- assignor --------------------------------------------------------------------------


def test_assignor_places_raw_partitions_in_faust_client_assignments():
    assert isinstance(inspect.getattr_static(PartitionAssignor, "_url"), property)
    placed = ClientAssignment(actives={"rekey": [0]}, standbys={"rekey": [1]})
    assignor.colocate_raw({"member": placed}, "raw", "rekey", 4, 2)
    assert (placed.actives["raw"], placed.standbys["raw"]) == ([0, 2], [1, 3])


# ---- transaction_manager ---------------------------------------------------------------


def test_transaction_manager_send_stays_a_coroutine():
    assert inspect.iscoroutinefunction(FAUST_TM.send)


# ---- high_watermarks ------------------------------------------------------------------


def test_high_watermarks_asks_for_the_latest_offsets_uncommitted_in_the_layout_it_reads():
    request = OffsetRequest(-1, READ_UNCOMMITTED, [("t", [(0, OffsetResetStrategy.LATEST)])])
    # the newest version aiokafka builds, whatever the broker offers beyond it
    built = request.prepare({OffsetRequest.API_KEY: (0, 10)})
    assert (built.API_VERSION, built.isolation_level) == (3, 0), (
        f"OffsetRequest v{built.API_VERSION} now: re-check {where(high_watermarks)}"
    )
    assert OffsetResetStrategy.LATEST == -1
    answer = built.RESPONSE_TYPE(0, [("t", [(0, 0, -1, 42)])])
    [(topic, partitions)] = built.RESPONSE_TYPE.decode(answer.encode()).topics
    [(partition, error_code, _timestamp, offset)] = partitions
    assert (topic, partition, error_code, offset) == ("t", 0, 0, 42)


# ---- table_manager ---------------------------------------------------------------------


def test_table_manager_starts_what_faust_starts(merger_app):
    tables = merger_app.tables
    assert callable(tables.recovery.start), f"re-check {where(table_manager)}"
    assert tables.should_stop is False


# ---- oauthbearer -----------------------------------------------------------------------


class _Token:
    async def token(self) -> str:
        return "a.b.c"


def test_oauthbearer_is_where_aiokafka_builds_its_authenticator_from():
    import app.__main__

    assert "oauthbearer.install()" in inspect.getsource(app.__main__.main)
    oauthbearer.install()
    assert aiokafka.conn.OAuthAuthenticator is oauthbearer.OAuthAuthenticator, (
        f"installing {where(oauthbearer)} no longer replaces aiokafka's authenticator"
    )
    assert AIOKAFKA_OAUTH.__module__ == "aiokafka.conn"


def test_oauthbearer_answers_the_error_challenge_that_aiokafka_takes_for_success():
    challenge = b'{"status":"invalid_token"}'

    async def exchange(cls):
        auth = cls(sasl_oauth_token_provider=_Token())
        first = await auth.step(None)
        return first[0].startswith(b"n,,\x01auth=Bearer a.b.c"), await auth.step(challenge)

    assert asyncio.run(exchange(oauthbearer.OAuthAuthenticator)) == (True, (b"\x01", True))
    assert asyncio.run(exchange(AIOKAFKA_OAUTH)) == (True, None), (
        f"aiokafka answers the error challenge now: {where(oauthbearer)} may go"
    )
