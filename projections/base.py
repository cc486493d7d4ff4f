"""What every view shares: reading the log in batches, tracking its position, and rebuilding.

A view processes the events after its recorded position in batches; each batch's rows and the
new position are written in one transaction, so every event counts exactly once across restarts.
Reading "after the last position" is safe because the event store assigns positions in commit
order (its table lock); positions may have gaps, and nothing here assumes they do not.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol
from uuid import UUID

import orjson
import psycopg
from eventsourcing.domain import CanMutateAggregate
from eventsourcing.persistence import JSONTranscoder, Mapper, StoredEvent
from eventsourcing.utils import get_topic, resolve_topic
from psycopg import sql
from psycopg.abc import Params
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row, tuple_row

log = logging.getLogger(__name__)

Event = CanMutateAggregate[UUID]
Cursor = psycopg.Cursor[dict[str, Any]]


# What a view's statements are written as (psycopg's queries, template strings aside).
Statement = str | bytes | sql.SQL | sql.Composed


class Executes(Protocol):
    """Where a view's writes go: a cursor (at once), or ``Writes`` (with the batch's end)."""

    def execute(self, query: Statement, params: Params | None = None) -> object: ...


class Writes:
    """A batch's writes to its view, kept to travel with the batch's new position (and, for a
    worker's batch, its COMMIT) as one simple query.

    Under load the ``serve`` process's GIL is busy with the API and the writer, and a view's
    worker waits for it after every statement it sends (psycopg lets go of the GIL while libpq
    sends and waits). A batch that sent each write on its own (the orders view, one statement
    per order) spent most of its time waiting to run again, not in the database. The values are
    written into the statements as literals by psycopg's client-side binding, as its
    ``ClientCursor`` would send them.
    """

    def __init__(self, renderer: psycopg.ClientCursor[Any]) -> None:
        self._renderer = renderer
        self.statements: list[str] = []

    def execute(self, query: Statement, params: Params | None = None) -> None:
        self.statements.append(self._renderer.mogrify(query, params))


@dataclass(frozen=True)
class Recorded:
    """An event as the log holds it: its global position and the decoded domain event."""

    position: int
    event: Event


class Projection(ABC):
    """A view: the tables it owns, the events it reads, and how a batch of them changes it."""

    name: ClassVar[str]
    tables: ClassVar[tuple[str, ...]]
    event_classes: ClassVar[tuple[type[Any], ...]] = ()

    @classmethod
    def topics(cls) -> list[str]:
        return [get_topic(event_class) for event_class in cls.event_classes]

    @abstractmethod
    def process(
        self, cursor: Cursor, writes: Writes, batch: Sequence[Recorded], tables: Mapping[str, str]
    ) -> None:
        """Applies the batch to the view's tables (physical names in ``tables``): reads through
        ``cursor``, at once; writes through ``writes``, sent after ``process`` returns."""

    def in_memory(self) -> InMemoryView | None:
        """An empty copy of the view held in memory, for rebuilds; ``None`` for a view that
        rebuilds batch by batch through ``process``."""
        return None


class InMemoryView(ABC):
    """A view's rows held in memory while a rebuild applies the log to them, then written at once.

    A rebuild writes into shadow tables that nobody reads, so it need not write as it goes:
    reloading and upserting rows batch by batch is what made rebuilds slow.
    """

    @abstractmethod
    def apply(
        self,
        position: int,
        originator_id: UUID,
        originator_version: int,
        event_class: type[Any],
        event: Any,
    ) -> None:
        """Applies one event. ``event`` carries the event's fields as attributes: the domain
        event itself, or ``EventFields`` (see ``StoredFields``), so read only fields of plain JSON
        types from it."""

    @abstractmethod
    def __len__(self) -> int:
        """The number of rows held (what bounds the memory used)."""

    @abstractmethod
    def write(self, cursor: Cursor, tables: Mapping[str, str]) -> None:
        """Writes every row held into the (empty) tables named in ``tables``."""


class EventFields:
    """A stand-in for a domain event: its stored fields as attributes."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.__dict__ = fields


class StoredFields:
    """Decodes stored events for an ``InMemoryView``: their class, and their fields.

    When the mapper stores plain JSON (no cipher, no compression, a JSON transcoder that decodes
    as eventsourcing's does, however it encodes) and the event class has never been upcast,
    ``orjson.loads`` alone parses the fields into ``EventFields``, several times faster than the
    mapper makes the domain event; values of custom-transcoded types (timestamps, UUIDs) keep
    their stored form. Anything else is decoded by the mapper.
    """

    def __init__(self, mapper: Mapper[UUID]) -> None:
        self.mapper = mapper
        self.plain_json = (
            mapper.cipher is None
            and mapper.compressor is None
            and isinstance(mapper.transcoder, JSONTranscoder)
            and type(mapper.transcoder).decode is JSONTranscoder.decode
        )
        self._classes: dict[str, tuple[type[Any], bool]] = {}

    def decode(
        self, originator_id: UUID, originator_version: int, topic: str, state: bytes
    ) -> tuple[type[Any], Any]:
        try:
            event_class, plain = self._classes[topic]
        except KeyError:
            event_class = resolve_topic(topic)
            plain = self.plain_json and getattr(event_class, "class_version", 1) == 1
            self._classes[topic] = (event_class, plain)
        if plain:
            return event_class, EventFields(orjson.loads(state))
        stored = StoredEvent(originator_id, originator_version, topic, state)
        return event_class, self.mapper.to_domain_event(stored)


def table(tables: Mapping[str, str], logical: str) -> sql.Identifier:
    return sql.Identifier(tables[logical])


# What every pass over the log reads and writes: the log's head, a page of a view's events
# after a position (up to a stop), and the view's new position.
_HEAD_OF_LOG = "SELECT max(notification_id) AS head FROM ledger_events"
# The view's position, locked against a concurrent rebuild's swap, and the log's head.
_POSITION_AND_HEAD = (
    "SELECT position, (SELECT max(notification_id) FROM ledger_events) AS head "
    "FROM projection_positions WHERE name = %s FOR UPDATE"
)
_PAGE_OF_LOG = (
    "SELECT notification_id, originator_id, originator_version, topic, state "
    "FROM ledger_events WHERE notification_id > %s AND notification_id <= %s "
    "AND topic = ANY(%s) ORDER BY notification_id LIMIT %s"
)
# A transaction to roll back after a failed batch (not on a broken connection).
_OPEN = (TransactionStatus.INTRANS, TransactionStatus.INERROR)
_SET_POSITION = "UPDATE projection_positions SET position = %s, updated_at = now() WHERE name = %s"


class ProjectionProcessor:
    """Moves one view forward, batch by batch, on its own connection."""

    def __init__(
        self,
        connection: psycopg.Connection[dict[str, Any]],
        mapper: Mapper[UUID],
        projection: Projection,
        *,
        tracking_name: str | None = None,
        tables: Mapping[str, str] | None = None,
        batch_size: int = 5000,
    ) -> None:
        self.connection = connection
        self.mapper = mapper
        self.projection = projection
        self.tracking_name = tracking_name or projection.name
        self.tables = dict(tables or {name: name for name in projection.tables})
        self.batch_size = batch_size
        self._topics = projection.topics()
        self._renderer = psycopg.ClientCursor(connection)
        self._position_read = self._renderer.mogrify(_POSITION_AND_HEAD, (self.tracking_name,))

    def ensure_tracking(self) -> None:
        self.connection.execute(
            "INSERT INTO projection_positions (name, position) VALUES (%s, 0) "
            "ON CONFLICT (name) DO NOTHING",
            (self.tracking_name,),
        )

    def step(self, cursor: Cursor, stop: int | None = None) -> tuple[int, int]:
        """Processes one batch inside the caller's transaction; returns (events, new position)."""
        return self._step(cursor, stop, own_transaction=False)

    def run_batch(self, stop: int | None = None) -> tuple[int, int]:
        """Processes one batch in a transaction of its own, in three or four round trips: BEGIN
        travels with the position's read, COMMIT with the writes (see ``Writes``)."""
        with self.connection.cursor() as cursor:
            try:
                return self._step(cursor, stop, own_transaction=True)
            except BaseException:
                if self.connection.info.transaction_status in _OPEN:
                    self.connection.execute("ROLLBACK")
                raise

    def _step(self, cursor: Cursor, stop: int | None, *, own_transaction: bool) -> tuple[int, int]:
        writes = Writes(self._renderer)
        read = self._position_read
        # A statement without parameters goes as a simple query, which may hold several.
        cursor.execute("BEGIN;" + read if own_transaction else read, prepare=False)
        while cursor.description is None and cursor.nextset():
            pass  # past BEGIN's result to the position's
        row = cursor.fetchone()
        if row is None:
            raise RuntimeError(f"view {self.tracking_name} has no tracking row")
        start = int(row["position"])
        if stop is None:
            stop = int(row["head"] or 0)
        batch: list[Recorded] = []
        if stop > start:
            cursor.execute(_PAGE_OF_LOG, (start, stop, self._topics, self.batch_size))
            batch = [
                Recorded(
                    row["notification_id"],
                    self.mapper.to_domain_event(  # type: ignore[arg-type]
                        StoredEvent(
                            originator_id=row["originator_id"],
                            originator_version=row["originator_version"],
                            topic=row["topic"],
                            state=bytes(row["state"]),
                        )
                    ),
                )
                for row in cursor.fetchall()
            ]
        if batch:
            self.projection.process(cursor, writes, batch, self.tables)
        # A short batch means everything up to ``stop`` has been seen.
        reached = batch[-1].position if len(batch) == self.batch_size else max(stop, start)
        if reached != start:
            writes.execute(_SET_POSITION, (reached, self.tracking_name))
        if own_transaction:
            writes.statements.append("COMMIT")
        if writes.statements:
            cursor.execute(";".join(writes.statements), prepare=False)
        return len(batch), reached

    def build_in_memory(
        self,
        view: InMemoryView,
        *,
        max_rows: int,
        stop: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Builds a fresh view (empty tables, position 0) in memory up to the head of the log (or
        ``stop``), then writes its rows and its position in one transaction; returns the events
        applied.

        Once ``max_rows`` are held it stops after the current batch, so memory stays bounded:
        ``catch_up`` carries on from the position written.
        """
        fields = StoredFields(self.mapper)
        if stop is None:
            head_row = self.connection.execute(_HEAD_OF_LOG).fetchone()
            stop = int(head_row["head"] or 0) if head_row else 0
        applied, reached = 0, 0
        # Pages by position, each its own statement: no snapshot held open for the whole read.
        with self.connection.cursor(binary=True, row_factory=tuple_row) as reader:
            while True:
                rows = reader.execute(
                    _PAGE_OF_LOG,
                    (reached, stop, self._topics, self.batch_size),
                ).fetchall()
                for position, originator_id, version, topic, state in rows:
                    event_class, event = fields.decode(originator_id, version, topic, state)
                    view.apply(position, originator_id, version, event_class, event)
                applied += len(rows)
                # A short page means everything up to ``stop`` has been seen.
                reached = rows[-1][0] if len(rows) == self.batch_size else stop
                if progress:
                    progress(len(rows), reached)
                if reached == stop or len(view) >= max_rows:
                    break
        with self.connection.transaction(), self.connection.cursor() as cursor:
            view.write(cursor, self.tables)
            cursor.execute(
                _SET_POSITION,
                (reached, self.tracking_name),
            )
        return applied

    def catch_up(
        self, stop: int | None = None, progress: Callable[[int, int], None] | None = None
    ) -> int:
        """Processes batches until the head of the log (or ``stop``); returns events processed."""
        total = 0
        while True:
            count, reached = self.run_batch(stop)
            total += count
            if progress:
                progress(count, reached)
            if count < self.batch_size:
                return total


def advisory_key(name: str) -> int:
    """A stable 63-bit key for PostgreSQL advisory locks."""
    import hashlib

    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1


class ProjectionWorker(threading.Thread):
    """Keeps one view up to date: the single active worker (an advisory lock), supervised.

    Errors never stop it: it logs, backs off, reconnects and carries on from the recorded position.
    A standby process waits for the lock and takes over when the active one dies.
    """

    def __init__(
        self,
        database_url: str,
        mapper: Mapper[UUID],
        projection: Projection,
        *,
        batch_size: int = 5000,
        idle_wait: float = 0.5,
    ) -> None:
        super().__init__(name=f"projection-{projection.name}", daemon=True)
        self.database_url = database_url
        self.mapper = mapper
        self.projection = projection
        self.batch_size = batch_size
        self.idle_wait = idle_wait
        self.active = False
        self.last_error: str | None = None
        self._stopping = threading.Event()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self.join(timeout)

    def run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                self._serve()
                backoff = 0.1
            except Exception as error:
                self.active = False
                self.last_error = str(error).strip().splitlines()[0] if str(error) else repr(error)
                log.warning("view %s: %s; retrying", self.projection.name, self.last_error)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _serve(self) -> None:
        with psycopg.connect(
            self.database_url, autocommit=True, row_factory=dict_row, connect_timeout=5
        ) as connection:
            got = connection.execute(
                "SELECT pg_try_advisory_lock(%s) AS got", (advisory_key(self.projection.name),)
            ).fetchone()
            if not got or not got["got"]:
                self.active = False
                self._stopping.wait(1.0)
                return
            self.active = True
            self.last_error = None
            processor = ProjectionProcessor(
                connection, self.mapper, self.projection, batch_size=self.batch_size
            )
            processor.ensure_tracking()
            connection.execute("LISTEN ledger_events")
            while not self._stopping.is_set():
                count, _ = processor.run_batch()
                if count < self.batch_size:
                    # Idle: wake on the event store's NOTIFY, or after a short wait regardless.
                    for _ in connection.notifies(timeout=self.idle_wait, stop_after=1):
                        pass


@dataclass(frozen=True)
class RebuildReport:
    name: str
    events: int
    seconds: float
    position: int

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def rebuild(
    database_url: str,
    mapper: Mapper[UUID],
    projection: Projection,
    *,
    batch_size: int = 5000,
    memory_rows: int = 500_000,
    progress: Callable[[int, int], None] | None = None,
) -> RebuildReport:
    """Builds the view afresh beside the live one, then swaps it in once caught up.

    Reads keep using the live tables throughout; the swap is one short transaction that takes the
    live view's tracking row first (so the live worker pauses between batches), then its tables.
    A view that can be held in memory is built there first, up to ``memory_rows`` rows (about
    250 MB for the availability view's 500,000); the rest of the log goes batch by batch.
    An interrupted rebuild leaves only its shadow tables, which the next one drops.
    """
    shadow_name = f"{projection.name}__rebuild"
    shadow_tables = {name: f"{name}__rebuild" for name in projection.tables}
    started = time.perf_counter()
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as connection:
        with connection.transaction():
            for live, shadow in shadow_tables.items():
                connection.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(shadow))
                )
                connection.execute(
                    sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
                        sql.Identifier(shadow), sql.Identifier(live)
                    )
                )
            connection.execute(
                "INSERT INTO projection_positions (name, position) VALUES (%s, 0) "
                "ON CONFLICT (name) DO UPDATE SET position = 0",
                (shadow_name,),
            )
            connection.execute(
                "INSERT INTO projection_positions (name, position) VALUES (%s, 0) "
                "ON CONFLICT (name) DO NOTHING",
                (projection.name,),
            )
        processor = ProjectionProcessor(
            connection,
            mapper,
            projection,
            tracking_name=shadow_name,
            tables=shadow_tables,
            batch_size=batch_size,
        )
        events = 0
        in_memory = projection.in_memory()
        if in_memory is not None:
            events = processor.build_in_memory(in_memory, max_rows=memory_rows, progress=progress)
        events += processor.catch_up(progress=progress)
        with connection.transaction(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT position FROM projection_positions WHERE name = %s FOR UPDATE",
                (projection.name,),
            )
            for live in projection.tables:
                cursor.execute(
                    sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(live))
                )
            while True:
                count, position = processor.step(cursor)
                events += count
                if count < batch_size:
                    break
            for live, shadow in shadow_tables.items():
                retired = sql.Identifier(f"{live}__retired")
                cursor.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(retired))
                cursor.execute(
                    sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(live), retired)
                )
                cursor.execute(
                    sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                        sql.Identifier(shadow), sql.Identifier(live)
                    )
                )
                cursor.execute(sql.SQL("DROP TABLE {}").format(retired))
            cursor.execute(
                _SET_POSITION,
                (position, projection.name),
            )
            cursor.execute("DELETE FROM projection_positions WHERE name = %s", (shadow_name,))
    return RebuildReport(projection.name, events, time.perf_counter() - started, position)
