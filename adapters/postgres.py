"""PostgreSQL infrastructure for the ledger.

eventsourcing's PostgreSQL recorder, extended so that a batch of events and the idempotency keys
of the commands that produced them are inserted in one transaction, under the same table lock the
library takes (so readers of the notification log never skip an event). Chosen with
``PERSISTENCE_MODULE=adapters.postgres:LedgerPostgresFactory``; the schema comes from
``migrations/`` (``stockledger migrate``), never from create-table at start-up.

**Bounded waits.** When PostgreSQL is unreachable, callers must hear so quickly (the API answers
503 within 2 s), not wait: a connection is waited for at most ``POOL_WAIT_SECONDS``, pooled
connections are checked before use (so those a restarted server closed are replaced, not
handed out), a pool gives up reconnecting in the background after ``POOL_RECONNECT_SECONDS``
(the next request starts afresh, rather than waiting out a backoff that doubled all through the
outage), and a failed read is tried again once, only when a connection broke in use, not
eventsourcing's ten times 0.2 s apart, each waiting for the pool (over ten seconds).
"""

from __future__ import annotations

import functools
import inspect
import select
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar, cast
from uuid import UUID

import psycopg
from eventsourcing.persistence import (
    ApplicationRecorder,
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    PersistenceError,
    ProgrammingError,
    StoredEvent,
)
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresFactory,
)
from eventsourcing.utils import Environment, EnvType
from psycopg import Connection, Cursor
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row, tuple_row
from psycopg.sql import SQL, Identifier
from psycopg_pool import PoolTimeout

from adapters.transcoding import OrjsonTranscoding
from domain.ports import IdempotencyClaim, IdempotencyRecord, KeyAlreadyRecorded, PreparedBatch

PERSISTENCE_MODULE = "adapters.postgres:LedgerPostgresFactory"
# The longest anything waits for a database connection (the pools' timeout), in seconds.
POOL_WAIT_SECONDS = 1
# How long a pool's background reconnection keeps trying (its delays double: 1 s, 2 s, 4 s...)
# before it gives up and the next request starts a fresh one. Short, so that once PostgreSQL is
# back the pools reconnect within a second or two, not after a backoff grown during the outage.
POOL_RECONNECT_SECONDS = 2.0

# The writer's connection is checked before a batch only after this long unused (see
# _needs_replacing): the check is a system call, and releases the writer's hold on the GIL.
WRITER_CHECK_AFTER_IDLE_SECONDS = 0.5

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _retried_once(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """``method`` without eventsourcing's retries, tried again once when a connection broke in
    use; when none could be had at all (the pool timed out), the error is raised at once."""
    call = cast(Callable[_P, _R], inspect.unwrap(method))

    @functools.wraps(call)
    def retried(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return call(*args, **kwargs)
        except (InterfaceError, OperationalError) as error:
            if isinstance(error.__cause__, PoolTimeout):
                raise
        return call(*args, **kwargs)

    return retried


class LedgerSnapshotRecorder(PostgresAggregateRecorder):
    """The snapshots' recorder, with the same bounded retries."""

    select_events = _retried_once(PostgresAggregateRecorder.select_events)
    insert_events = _retried_once(PostgresAggregateRecorder.insert_events)


class LedgerPostgresRecorder(PostgresApplicationRecorder):
    def __init__(
        self, datastore: PostgresDatastore, *, events_table_name: str = "ledger_events"
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        table = Identifier(self.datastore.schema, self.events_table_name)
        keys = Identifier(self.datastore.schema, "idempotency_keys")
        # Events and keys in one statement: each key's position is its command's last event's.
        # Binary parameters (%b): text arrays escape every element with a regular expression.
        self._insert_batch = SQL(
            "WITH ev AS (INSERT INTO {events} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%b::uuid[], %b::bigint[], %b::text[], %b::bytea[]) "
            "RETURNING notification_id, originator_id, originator_version), "
            "ks AS (INSERT INTO {keys} (key, fingerprint, response, position) "
            "SELECT k.key, k.fingerprint, k.response, ev.notification_id "
            "FROM unnest(%b::text[], %b::text[], %b::text[], %b::uuid[], %b::bigint[]) "
            "AS k(key, fingerprint, response, last_id, last_version) "
            "LEFT JOIN ev "
            "ON ev.originator_id = k.last_id AND ev.originator_version = k.last_version) "
            "SELECT notification_id FROM ev ORDER BY notification_id"
        ).format(events=table, keys=keys)
        self._select_existing = SQL(
            "SELECT originator_id FROM {} WHERE originator_id = ANY(%s) AND originator_version = 1"
        ).format(table)
        self._select_keys = SQL(
            "SELECT key, fingerprint, response, position FROM {} WHERE key = ANY(%s)"
        ).format(keys)
        # A batch's transaction opens with the lock; the notify is delivered at commit.
        begin_and_lock = SQL("; ").join(
            [
                SQL("BEGIN"),
                *self.lock_table_statements,
                SQL("NOTIFY {}").format(Identifier(self.channel_name)),
            ]
        )
        # The same insert as one simple query with the values written in (see insert_events_...).
        self._batch_prefix = (
            SQL(
                "{begin}; WITH ev AS (INSERT INTO {events} "
                "(originator_id, originator_version, topic, state) VALUES "
            )
            .format(begin=begin_and_lock, events=table)
            .as_string()
        )
        self._batch_events_end = " RETURNING notification_id, originator_id, originator_version)"
        self._batch_keys_start = (
            SQL(
                ", ks AS (INSERT INTO {} (key, fingerprint, response, position) "
                "SELECT k.key, k.fingerprint, k.response, ev.notification_id FROM (VALUES "
            )
            .format(keys)
            .as_string()
        )
        self._batch_keys_end = (
            ") AS k(key, fingerprint, response, last_id, last_version) LEFT JOIN ev "
            "ON ev.originator_id = k.last_id AND ev.originator_version = k.last_version)"
        )
        self._batch_suffix = " SELECT notification_id FROM ev ORDER BY notification_id; COMMIT"
        self._writer_lock = threading.RLock()
        self._writer_connection: Connection[DictRow] | None = None
        self._writer_depth = 0
        self._writer_used_at = 0.0

    select_events = _retried_once(PostgresApplicationRecorder.select_events)
    max_notification_id = _retried_once(PostgresApplicationRecorder.max_notification_id)

    # --- the writer's connection ---------------------------------------------------------------
    # The ledger has one writer thread (the group committer). It gets a connection of its own
    # rather than the pool's: a pooled checkout costs a ping round trip (pre-ping), three per
    # batch, more than the batch's own statements. Instead of a ping, the connection is replaced
    # when the server has sent something unasked (a terminated backend says so, then closes), and
    # after any error that broke it; a lost connection is reported like a lost pooled one.
    @contextmanager
    def _writer(self) -> Iterator[Connection[DictRow]]:
        with self._writer_lock:
            nested = self._writer_depth > 0
            self._writer_depth += 1
            try:
                connection = self._writer_connection
                idle = time.monotonic() - self._writer_used_at
                if not nested and (connection is None or _needs_replacing(connection, idle)):
                    self.close_writer()
                    connection = self._writer_connection = self._connect_writer()
                assert connection is not None
                yield connection
                self._writer_used_at = time.monotonic()
            except BaseException as error:
                if not nested:
                    self._recover_writer(error)
                if isinstance(error, psycopg.Error):
                    raise _persistence_error(error) from error
                raise
            finally:
                self._writer_depth -= 1

    def _connect_writer(self) -> Connection[DictRow]:
        kwargs = dict(cast(Mapping[str, Any], self.datastore.pool.kwargs))
        kwargs.pop("row_factory", None)
        connection = psycopg.Connection.connect(
            row_factory=dict_row,
            connect_timeout=max(2, POOL_WAIT_SECONDS),  # libpq's least
            **kwargs,
        )
        self.datastore.after_connect_func()(connection)
        return connection

    def _recover_writer(self, error: BaseException) -> None:
        """After any failure while the writer used its connection: closes it when it is lost,
        else rolls back what the failure left open."""
        connection = self._writer_connection
        if connection is None:
            return
        lost = isinstance(error, psycopg.OperationalError | psycopg.InterfaceError)
        if lost or connection.broken:
            self.close_writer()
        elif connection.info.transaction_status != TransactionStatus.IDLE:
            try:
                connection.rollback()
            except psycopg.Error:
                self.close_writer()

    def close_writer(self) -> None:
        with self._writer_lock:
            if self._writer_connection is not None:
                self._writer_connection.close()
                self._writer_connection = None

    # --- the writer's statements ---------------------------------------------------------------
    def insert_events_with_keys(
        self, stored_events: Sequence[StoredEvent], claims: Sequence[IdempotencyClaim]
    ) -> Sequence[int]:
        # One round trip: the whole transaction (begin, lock, notify, insert, commit) is a single
        # simple query, its values written as literals. The table lock is then held only while
        # the server runs it, not across round trips, so batches follow each other closely.
        if not stored_events:
            return self._insert_claims_only(claims)
        with self._writer() as conn, conn.cursor(row_factory=tuple_row) as curs:
            # Never prepared: each batch's text is new, and psycopg would count every one of
            # them (hashing the whole text) to prepare those that recur.
            curs.execute(self._one_round_trip_batch(stored_events, claims), prepare=False)
            while curs.description is None and curs.nextset():
                pass  # past the results of BEGIN, SET, LOCK and NOTIFY to the insert's
            return [row[0] for row in curs.fetchall()]

    def _insert_claims_only(self, claims: Sequence[IdempotencyClaim]) -> Sequence[int]:
        if not claims:
            return []
        with self._writer() as conn, conn.cursor() as curs, conn.transaction():
            self._send_insert(curs, [], claims)
            return []

    def _one_round_trip_batch(
        self, stored_events: Sequence[StoredEvent], claims: Sequence[IdempotencyClaim]
    ) -> str:
        events = ",".join(
            f"({_uuid_literal(event.originator_id)},{event.originator_version:d},"
            f"{_text_literal(event.topic)},E'\\\\x{event.state.hex()}')"
            for event in stored_events
        )
        statement = self._batch_prefix + events + self._batch_events_end
        if claims:
            rows = []
            for claim in claims:
                index = claim.last_event_index
                last = stored_events[index] if index is not None else None
                rows.append(
                    f"({_text_literal(claim.key)},{_text_literal(claim.fingerprint)},"
                    f"{_text_literal(claim.response)},"
                    + (
                        f"{_uuid_literal(last.originator_id)}::uuid,"
                        f"{last.originator_version:d}::bigint)"
                        if last is not None
                        else "NULL::uuid,NULL::bigint)"
                    )
                )
            statement += self._batch_keys_start + ",".join(rows) + self._batch_keys_end
        return statement + self._batch_suffix

    def insert_events_with_keys_exclusively(
        self, prepare: Callable[[], PreparedBatch]
    ) -> Sequence[int]:
        # The lock is taken before ``prepare`` reads the aggregates (on other connections: the
        # EXCLUSIVE mode lets reads through), so no other writer commits until this one has.
        with self._writer() as conn, conn.cursor() as curs, conn.transaction():
            self._lock_table(curs)
            stored_events, claims = prepare()
            if stored_events:
                self._notify_channel(curs)
            inserted = self._send_insert(curs, stored_events, claims)
            return [row["notification_id"] for row in curs.fetchall()] if inserted else []

    def _send_insert(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        claims: Sequence[IdempotencyClaim],
    ) -> bool:
        if not stored_events and not claims:
            return False
        last = [
            stored_events[claim.last_event_index] if claim.last_event_index is not None else None
            for claim in claims
        ]
        curs.execute(
            self._insert_batch,
            (
                [event.originator_id for event in stored_events],
                [event.originator_version for event in stored_events],
                [event.topic for event in stored_events],
                [event.state for event in stored_events],
                [claim.key for claim in claims],
                [claim.fingerprint for claim in claims],
                [claim.response for claim in claims],
                [event.originator_id if event else None for event in last],
                [event.originator_version if event else None for event in last],
            ),
        )
        return True

    def select_existing_ids(self, aggregate_ids: Sequence[UUID]) -> set[UUID]:
        # Version 1 exists for every aggregate that exists: one primary-key probe each.
        with self._writer() as conn, conn.cursor() as curs:
            curs.execute(self._select_existing, (list(aggregate_ids),))
            return {row["originator_id"] for row in curs.fetchall()}

    def select_idempotency_records(self, keys: Sequence[str]) -> Mapping[str, IdempotencyRecord]:
        with self._writer() as conn, conn.cursor() as curs:
            curs.execute(self._select_keys, (list(keys),))
            return {
                row["key"]: IdempotencyRecord(
                    row["key"], row["fingerprint"], row["response"], row["position"]
                )
                for row in curs.fetchall()
            }


def _needs_replacing(connection: Connection[DictRow], idle_seconds: float) -> bool:
    """Whether the writer connection is unusable: closed, or, after a pause, the server has sent
    something unasked (before closing a connection, a terminated backend sends its error). A
    connection in steady use is not checked: one that died since its last batch fails the next
    one, which is answered as an outage, and is then replaced."""
    if connection.closed or connection.broken:
        return True
    if idle_seconds < WRITER_CHECK_AFTER_IDLE_SECONDS:
        return False
    readable, _, _ = select.select([connection.fileno()], [], [], 0)
    return bool(readable)


_PERSISTENCE_ERRORS: tuple[tuple[type[psycopg.Error], type[PersistenceError]], ...] = (
    (psycopg.InterfaceError, InterfaceError),
    (psycopg.OperationalError, OperationalError),
    (psycopg.DataError, DataError),
    (psycopg.IntegrityError, IntegrityError),
    (psycopg.InternalError, InternalError),
    (psycopg.ProgrammingError, ProgrammingError),
    (psycopg.NotSupportedError, NotSupportedError),
    (psycopg.DatabaseError, DatabaseError),
)


def _uuid_literal(value: UUID | str) -> str:
    return f"'{value.hex if isinstance(value, UUID) else UUID(value).hex}'"


def _text_literal(value: str) -> str:
    """``value`` as an escape-string literal (E'...'), whatever standard_conforming_strings is."""
    if "\x00" in value:  # as psycopg refuses it in a parameter: text cannot hold NUL
        raise DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _persistence_error(error: psycopg.Error) -> PersistenceError:
    """The error eventsourcing's own connections would raise for ``error``."""
    if isinstance(error, psycopg.errors.UniqueViolation) and (
        error.diag.table_name == "idempotency_keys"
    ):
        return KeyAlreadyRecorded(str(error))
    for driver_error, persistence_error in _PERSISTENCE_ERRORS:
        if isinstance(error, driver_error):
            return persistence_error(str(error))
    return PersistenceError(str(error))


class LedgerPostgresFactory(OrjsonTranscoding, PostgresFactory):
    aggregate_recorder_class = LedgerSnapshotRecorder
    application_recorder_class = LedgerPostgresRecorder

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        # psycopg-pool's own setting; eventsourcing does not pass it through.
        self.datastore.pool.reconnect_timeout = POOL_RECONNECT_SECONDS
        self._ledger_recorders: list[LedgerPostgresRecorder] = []

    def application_recorder(self) -> ApplicationRecorder:
        recorder = super().application_recorder()
        if isinstance(recorder, LedgerPostgresRecorder):
            self._ledger_recorders.append(recorder)
        return recorder

    def close(self) -> None:
        for recorder in self._ledger_recorders:
            recorder.close_writer()
        super().close()


def ledger_env(database_url: str, **overrides: str) -> dict[str, str]:
    """The eventsourcing environment for a ledger on the database at ``database_url``."""
    params: dict[str, Any] = conninfo_to_dict(database_url)
    env = {
        "PERSISTENCE_MODULE": PERSISTENCE_MODULE,
        "POSTGRES_DBNAME": str(params.get("dbname") or "postgres"),
        "POSTGRES_HOST": str(params.get("host") or "127.0.0.1"),
        "POSTGRES_PORT": str(params.get("port") or "5432"),
        "POSTGRES_USER": str(params.get("user") or "postgres"),
        "POSTGRES_PASSWORD": str(params.get("password") or ""),
        # eventsourcing's name for the pool's wait for a connection (see POOL_WAIT_SECONDS).
        "POSTGRES_CONNECT_TIMEOUT": str(POOL_WAIT_SECONDS),
        "POSTGRES_PRE_PING": "y",
        "POSTGRES_POOL_SIZE": "4",
        "POSTGRES_MAX_OVERFLOW": "12",
        "POSTGRES_LOCK_TIMEOUT": "10",
        "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "10",
        # The schema is created by migrations, never at start-up.
        "CREATE_TABLE": "n",
    }
    env.update(overrides)
    return env
