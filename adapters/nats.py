"""NATS JetStream: the streams, the relays that publish the event log, and the inbound POS consumer.

Streams (created or updated at start-up, idempotently, file storage):

- ``STOCKLEDGER_ERP`` (``stockledger.erp.postings.>``): ERP postings, one per posting-worthy event.
- ``STOCKLEDGER_EVENTS`` (``stockledger.events.>``): every event, as a CloudEvents 1.0 envelope.
- ``STOCKLEDGER_INBOUND`` (``stockledger.inbound.>``): what tills and other systems send us, kept
  until consumed so that nothing published while stockledger is down is lost.

**Exactly once in effect.** The event log in PostgreSQL is the outbox: a relay reads the events
after its recorded position, publishes their messages asynchronously, waits until JetStream has
acknowledged every one, and only then records the new position (``relay_positions``); it reads
the next batch meanwhile, but sends none of it before. A crash or a NATS outage anywhere in
between leaves the position where it was, so the batch is published again; every message
carries ``Nats-Msg-Id`` (the posting id, the event id), both derived from the source event, so
JetStream drops the copies it already stored. That holds as long as the republish comes within
the streams' ``duplicate_window`` of the first attempt: the window must cover the longest time a
relay may spend between publishing and recording its position (the outage of PostgreSQL it
would have to ride out), hence a default of 2 hours rather than NATS's 2 minutes, and
``STOCKLEDGER_NATS_DUPLICATE_WINDOW`` to change it. Its price is memory on the NATS server: one
entry per message published in the window. ERP consumers should still treat ``posting_id`` as
their idempotency key, as a second line of defence.

**Order.** One relay publishes in log order on one connection, without reconnecting: when the
connection drops, the relay discards it and starts again from its recorded position on a new
one. What JetStream stored from a connection is therefore a prefix of what was sent, the copies
are dropped, and the stream holds every message once, in log order (so per location and per
aggregate too).

**One active relay.** Each relay holds a PostgreSQL advisory lock while it works; a relay in
another process stands by, retrying the lock, and takes over when the first dies (its session,
and so its lock, ends with it). The inbound POS consumer needs no lock: JetStream hands each
message of the durable consumer to one process, and the ledger dedupes POS transactions by id.

**Runtime.** ``Relays`` runs the workers as daemon threads, each with its own asyncio loop, so
they start and stop from synchronous code (the FastAPI lifespan: ``relays.start()`` before the
yield, ``relays.stop()`` after it) and never block the API's loop. Writes never wait for NATS:
they touch only PostgreSQL; when NATS is down, postings wait in the log and drain, in order, when
it returns (``relay_backlog`` tells how many wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

import nats
import psycopg
from eventsourcing.persistence import Mapper, StoredEvent
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError
from psycopg.rows import dict_row, tuple_row
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, StrictStr
from pydantic import ValidationError as PydanticValidationError

from adapters import exceptions as exception_store
from adapters.erp import POSTING_TOPICS, OrderLookup, postings_for
from domain.committer import WriteResult
from domain.errors import DomainError
from domain.service import CommandContext, Ledger, PosLine, parse_duration
from projections.base import Recorded, advisory_key
from projections.events import describe

log = logging.getLogger(__name__)

UUIDMapper = Mapper[Any]

ERP_STREAM = "STOCKLEDGER_ERP"
EVENTS_STREAM = "STOCKLEDGER_EVENTS"
INBOUND_STREAM = "STOCKLEDGER_INBOUND"
ERP_SUBJECTS = "stockledger.erp.postings.>"
EVENTS_SUBJECT_PREFIX = "stockledger.events"
EVENTS_SUBJECTS = f"{EVENTS_SUBJECT_PREFIX}.>"
INBOUND_SUBJECTS = "stockledger.inbound.>"
POS_SUBJECT = "stockledger.inbound.pos"
POS_DURABLE = "stockledger-pos"

ERP_RELAY = "erp-postings"
EVENT_RELAY = "event-stream"

MSG_ID = "Nats-Msg-Id"
POSITION_HEADER = "Stockledger-Position"
CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json"

DEFAULT_DUPLICATE_WINDOW = 2 * 3600.0
DUPLICATE_WINDOW_ENV = "STOCKLEDGER_NATS_DUPLICATE_WINDOW"


class RelayError(RuntimeError):
    """A batch could not be published and recorded; the relay starts it again."""


# --- streams -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamSettings:
    """How the streams are configured. Durations in seconds; a max age of 0 keeps forever."""

    duplicate_window: float = DEFAULT_DUPLICATE_WINDOW
    replicas: int = 1
    erp_max_age: float = 0.0
    events_max_age: float = 0.0
    inbound_max_age: float = 7 * 86400.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StreamSettings:
        """Reads ``STOCKLEDGER_NATS_DUPLICATE_WINDOW`` (``7200``, ``90m``, ``2h``)."""
        env = os.environ if env is None else env
        window = env.get(DUPLICATE_WINDOW_ENV)
        if not window:
            return cls()
        seconds = parse_duration(window).total_seconds()
        if seconds <= 0:
            raise ValueError(f"{DUPLICATE_WINDOW_ENV} must be positive")
        return cls(duplicate_window=seconds)


def stream_configs(settings: StreamSettings | None = None) -> list[StreamConfig]:
    settings = settings or StreamSettings()

    def config(name: str, subject: str, max_age: float, description: str) -> StreamConfig:
        window = settings.duplicate_window
        if max_age:
            window = min(window, max_age)  # JetStream requires window <= max age
        return StreamConfig(
            name=name,
            description=description,
            subjects=[subject],
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            duplicate_window=window,
            max_age=max_age,
        )

    return [
        config(ERP_STREAM, ERP_SUBJECTS, settings.erp_max_age, "stockledger ERP postings"),
        config(EVENTS_STREAM, EVENTS_SUBJECTS, settings.events_max_age, "stockledger events"),
        config(INBOUND_STREAM, INBOUND_SUBJECTS, settings.inbound_max_age, "stockledger inbound"),
    ]


async def ensure_streams(js: JetStreamContext, settings: StreamSettings | None = None) -> None:
    """Creates the streams, or updates them to this configuration; safe to run concurrently."""
    for config in stream_configs(settings):
        try:
            # Creating a stream that exists with the same configuration is a no-op.
            await js.add_stream(config)
        except BadRequestError:
            # It exists with another configuration (an older window, say): bring it up to date.
            await js.update_stream(config)


async def connect_nats(url: str, *, name: str, closed: asyncio.Event | None = None) -> NatsClient:
    """A connection that never reconnects: it closes (and sets ``closed``) on any drop.

    The workers start again on a new connection instead, from their recorded position: what
    JetStream stored from one connection is then always a prefix of what was sent on it.
    """

    async def on_closed() -> None:
        if closed is not None:
            closed.set()

    async def on_disconnected() -> None:
        if closed is not None:
            closed.set()

    async def on_error(error: Exception) -> None:
        log.debug("nats %s: %s", name, error)

    # nats-py tries a server up to max_reconnect_attempts + 1 times even on the first connect
    # (and forever with 0): one retry, then the caller's own backoff takes over.
    return await asyncio.wait_for(
        nats.connect(
            url,
            name=name,
            connect_timeout=3,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.2,
            closed_cb=on_closed,
            disconnected_cb=on_disconnected,
            error_cb=on_error,
        ),
        timeout=10,
    )


# --- what a relay publishes ----------------------------------------------------------------------
class Outgoing(NamedTuple):
    """One message for JetStream, from the event at ``position`` (a tuple: one is made per
    message, and a tuple costs a fraction of a frozen dataclass to make)."""

    position: int
    subject: str
    msg_id: str
    payload: bytes
    headers: Mapping[str, str]


class RelaySource(ABC):
    """What a relay reads from the log and what it makes of it."""

    name: ClassVar[str]
    stream: ClassVar[str]

    def topics(self) -> Sequence[str] | None:
        """The event topics it reads; None for every event."""
        return None

    @abstractmethod
    async def prepare(
        self, connection: psycopg.AsyncConnection[Any], batch: Sequence[Recorded]
    ) -> list[Outgoing]:
        """The messages for a batch of events, in log order."""


class ErpPostingSource(RelaySource):
    """ERP postings (``adapters.erp``) to ``STOCKLEDGER_ERP``."""

    name = ERP_RELAY
    stream = ERP_STREAM

    def __init__(self, mapper: UUIDMapper, *, order_cache_size: int = 10_000) -> None:
        self.lookup = OrderLookup(mapper, cache_size=order_cache_size)

    def topics(self) -> Sequence[str]:
        return POSTING_TOPICS

    async def prepare(
        self, connection: psycopg.AsyncConnection[Any], batch: Sequence[Recorded]
    ) -> list[Outgoing]:
        postings = await postings_for(connection, self.lookup, [r.event for r in batch])
        return [
            Outgoing(
                position=recorded.position,
                subject=posting.subject,
                msg_id=posting.posting_id,
                payload=posting.to_json(),
                headers={
                    POSITION_HEADER: str(recorded.position),
                    "Content-Type": "application/json",
                },
            )
            for recorded, posting in zip(batch, postings, strict=True)
            if posting is not None
        ]


def cloud_event(position: int, event: Any) -> dict[str, Any]:
    """An event as a CloudEvents 1.0 envelope (structured JSON mode), SPEC §5.

    Extensions: ``ledgerposition`` (global position), ``ledgerversion`` (the aggregate's
    version, increasing per subject), ``ledgeraggregateid``, and ``correlationid`` /
    ``causationid`` when the event has them.
    """
    described = describe(position, event)
    envelope: dict[str, Any] = {
        "specversion": "1.0",
        "id": described["id"],
        "source": "stockledger",
        "type": f"stockledger.{described['aggregate']}.{described['type']}",
        "subject": described["subject"],
        "time": described["occurred_at"],
        "datacontenttype": "application/json",
        "data": described["data"],
        "ledgerposition": position,
        "ledgerversion": described["version"],
        "ledgeraggregateid": described["aggregate_id"],
    }
    if described["correlation_id"]:
        envelope["correlationid"] = described["correlation_id"]
    if described["causation_id"]:
        envelope["causationid"] = described["causation_id"]
    return envelope


def event_subject(envelope: Mapping[str, Any]) -> str:
    """``stockledger.events.<stock|order|location>.<EventType>`` for an envelope."""
    _, category, event_type = str(envelope["type"]).split(".", 2)
    return f"{EVENTS_SUBJECT_PREFIX}.{category}.{event_type}"


class EventStreamSource(RelaySource):
    """Every event, as CloudEvents, to ``STOCKLEDGER_EVENTS``."""

    name = EVENT_RELAY
    stream = EVENTS_STREAM

    async def prepare(
        self, connection: psycopg.AsyncConnection[Any], batch: Sequence[Recorded]
    ) -> list[Outgoing]:
        messages = []
        for recorded in batch:
            envelope = cloud_event(recorded.position, recorded.event)
            messages.append(
                Outgoing(
                    position=recorded.position,
                    subject=event_subject(envelope),
                    msg_id=envelope["id"],
                    payload=json.dumps(envelope, separators=(",", ":"), default=str).encode(),
                    headers={
                        POSITION_HEADER: str(recorded.position),
                        "Content-Type": CLOUDEVENTS_CONTENT_TYPE,
                    },
                )
            )
        return messages


# --- the relay -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReadBatch:
    """The events read after ``start`` and the messages they make."""

    start: int
    #: where the position moves once every message is acknowledged
    reached: int
    events: int
    messages: list[Outgoing]


@dataclass(frozen=True)
class BatchResult:
    events: int
    published: int
    duplicates: int
    position: int


class _BatchAcks:
    """Counts the acks JetStream sends to one batch's inbox (one per message, in order)."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.received = 0
        self.duplicates = 0
        self.refusal: str | None = None
        #: set once every message is acknowledged, or as soon as one is refused
        self.settled = asyncio.Event()

    async def receive(self, msg: Msg) -> None:
        self.received += 1
        try:
            ack = json.loads(msg.data)
        except ValueError:  # not an ack but a status: 503 when no stream takes the subject
            ack = {"error": f"status {(msg.headers or {}).get('Status')}"}
        if "error" in ack:
            self.refusal = self.refusal or str(ack["error"])
            self.settled.set()
        elif ack.get("duplicate"):
            self.duplicates += 1
        if self.received == self.expected:
            self.settled.set()


class RelayProcessor:
    """Publishes one relay's batches: reads on an autocommit connection, publishes on a NATS
    connection to the JetStream streams."""

    def __init__(
        self,
        connection: psycopg.AsyncConnection[Any],
        client: NatsClient,
        mapper: UUIDMapper,
        source: RelaySource,
        *,
        batch_size: int = 1000,
        ack_timeout: float = 10.0,
        closed: asyncio.Event | None = None,
    ) -> None:
        self.connection = connection
        self.client = client
        self.mapper = mapper
        self.source = source
        self.batch_size = batch_size
        self.ack_timeout = ack_timeout
        self.closed = closed
        topics = source.topics()
        only_topics = "" if topics is None else "AND topic = ANY(%s) "
        self._read_query = (
            "SELECT head.position, e.notification_id, e.originator_id, e.originator_version, "
            "e.topic, e.state "
            "FROM (SELECT coalesce(max(notification_id), 0) AS position FROM ledger_events) head "
            "LEFT JOIN LATERAL (SELECT notification_id, originator_id, originator_version, "
            "topic, state FROM ledger_events "
            f"WHERE notification_id > %s AND notification_id <= head.position {only_topics}"
            "ORDER BY notification_id LIMIT %s) e ON true "
            "ORDER BY e.notification_id"
        )
        self._read_params: tuple[Any, ...] = (
            (batch_size,) if topics is None else (list(topics), batch_size)
        )

    async def ensure_tracking(self) -> None:
        await self.connection.execute(
            "INSERT INTO relay_positions (name, position) VALUES (%s, 0) "
            "ON CONFLICT (name) DO NOTHING",
            (self.source.name,),
        )

    async def position(self) -> int:
        cursor = await self.connection.execute(
            "SELECT position FROM relay_positions WHERE name = %s", (self.source.name,)
        )
        row = await cursor.fetchone()
        if row is None:
            raise RelayError(f"relay {self.source.name} has no tracking row")
        return int(_first(row))

    async def catch_up(self) -> AsyncGenerator[BatchResult, None]:
        """Publishes and records batch after batch up to the log's head, yielding what each did.

        The last batch is short (it may be empty): the relay has caught up. While JetStream
        acknowledges a full batch, the next one is read and prepared, so that the database round
        trip, the decoding and the mapping overlap the wait for the acks; its messages are sent
        only once this batch's position is recorded.
        """
        batch = await self.read(await self.position())
        while True:
            following: ReadBatch | None = None
            if batch.events == self.batch_size:
                duplicates, following = await self._publish_reading_ahead(batch)
            else:
                duplicates = await self.publish(batch.messages)
            if batch.reached > batch.start:
                await self.record_progress(batch.start, batch.reached, len(batch.messages))
            yield BatchResult(batch.events, len(batch.messages), duplicates, batch.reached)
            if following is None:
                return
            batch = following

    async def _publish_reading_ahead(self, batch: ReadBatch) -> tuple[int, ReadBatch]:
        """Publishes a full batch while reading the next; the duplicates and the next batch."""
        publishing = asyncio.ensure_future(self.publish(batch.messages))
        reading = asyncio.ensure_future(self.read(batch.reached))
        try:
            return await asyncio.gather(publishing, reading)
        except BaseException:
            # Neither outlives a failure: the caller starts again on new connections.
            publishing.cancel()
            reading.cancel()
            raise

    async def read(self, start: int) -> ReadBatch:
        """The events after ``start`` (a batch at most) and their messages."""
        head, batch = await self._events_after(start)
        # A short batch means every event up to ``head`` has been seen.
        reached = batch[-1].position if len(batch) == self.batch_size else max(start, head)
        messages = await self.source.prepare(self.connection, batch)
        return ReadBatch(start, reached, len(batch), messages)

    async def _events_after(self, start: int) -> tuple[int, list[Recorded]]:
        """The log's head and the decoded events after ``start`` (the rows go with the call)."""
        # One query, one snapshot: the head comes on every row (on its own when no event
        # follows ``start``). Binary: the states come as they are stored, not hex-encoded and
        # decoded again.
        async with self.connection.cursor(row_factory=tuple_row, binary=True) as cursor:
            await cursor.execute(self._read_query, (start, *self._read_params))
            rows = await cursor.fetchall()
        events = [Recorded(row[1], self._decode(row)) for row in rows if row[1] is not None]
        return rows[0][0], events

    async def publish(self, messages: Sequence[Outgoing]) -> int:
        """Publishes, then waits until JetStream has acknowledged every message; returns how
        many were duplicates.

        A batch's messages all ask for their acks on one inbox of the batch's own, where the
        acks are counted as they come. What goes on the wire is what nats-py's
        ``publish_async`` sends, but that makes a NUID, a future and callbacks for every
        message, and so takes twice as long to publish and acknowledge one.
        """
        if not messages:
            return 0
        acks = _BatchAcks(len(messages))
        inbox = self.client.new_inbox()
        subscription = await self.client.subscribe(inbox, cb=acks.receive)
        try:
            for message in messages:
                await self.client.publish(
                    message.subject,
                    message.payload,
                    reply=inbox,
                    headers={**message.headers, MSG_ID: message.msg_id},
                )
            await self._settled(acks)
        finally:
            # The connection may be gone, and the inbox with it.
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        return acks.duplicates

    async def _settled(self, acks: _BatchAcks) -> None:
        settled = asyncio.ensure_future(acks.settled.wait())
        waiters: set[asyncio.Future[Any]] = {settled}
        closed_wait: asyncio.Future[Any] | None = None
        if self.closed is not None:
            closed_wait = asyncio.ensure_future(self.closed.wait())
            waiters.add(closed_wait)
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=self.ack_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
        if acks.refusal is not None:
            raise RelayError(f"JetStream refused a message: {acks.refusal}")
        if settled not in done:
            reason = "the connection closed" if closed_wait in done else "timed out"
            raise RelayError(
                f"JetStream acknowledged {acks.received} of {acks.expected} messages: {reason}"
            )

    async def record_progress(self, start: int, reached: int, published: int) -> None:
        """Moves the position, but only from where this batch started (a lost lock shows here)."""
        cursor = await self.connection.execute(
            "UPDATE relay_positions SET position = %s, published = published + %s, "
            "updated_at = now() WHERE name = %s AND position = %s",
            (reached, published, self.source.name, start),
        )
        if cursor.rowcount != 1:
            raise RelayError(f"relay {self.source.name}'s position moved under it")

    def _decode(self, row: tuple[Any, ...]) -> Any:
        return self.mapper.to_domain_event(
            StoredEvent(
                originator_id=row[2], originator_version=row[3], topic=row[4], state=bytes(row[5])
            )
        )


def _first(row: Any) -> Any:
    if isinstance(row, Mapping):
        return next(iter(row.values()))
    return row[0]


@dataclass(frozen=True)
class RelaySettings:
    batch_size: int = 1000
    ack_timeout: float = 10.0
    idle_wait: float = 0.5
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    standby_wait: float = 1.0
    streams: StreamSettings = field(default_factory=StreamSettings)


@dataclass(frozen=True)
class WorkerStatus:
    name: str
    #: holds the lock and works (a standby is alive but not active)
    active: bool
    #: connected to NATS right now
    connected: bool
    last_error: str | None
    published: int
    duplicates: int


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else repr(error)


class _AsyncWorker(threading.Thread):
    """A supervised daemon thread with its own asyncio loop: errors back off, never stop it."""

    def __init__(self, name: str, settings: RelaySettings) -> None:
        super().__init__(name=name, daemon=True)
        self.settings = settings
        self.active = False
        self.connected = False
        self.last_error: str | None = None
        self._stopping = threading.Event()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> None:
        asyncio.run(self._supervise())

    async def _supervise(self) -> None:
        backoff = self.settings.backoff_initial
        while not self.stopping:
            try:
                await self._serve()
                backoff = self.settings.backoff_initial
            except Exception as error:
                self.active = False
                self.connected = False
                self.last_error = _one_line(error)
                log.warning("%s: %s; retrying in %.1fs", self.name, self.last_error, backoff)
                await self._pause(backoff)
                backoff = min(backoff * 2, self.settings.backoff_max)

    async def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    @abstractmethod
    async def _serve(self) -> None:
        """Works until stopped or an error (which the supervisor backs off from)."""


class RelayWorker(_AsyncWorker):
    """Keeps one relay going: the single active publisher of its stream (an advisory lock)."""

    def __init__(
        self,
        database_url: str,
        nats_url: str,
        mapper: UUIDMapper,
        source: RelaySource,
        *,
        settings: RelaySettings | None = None,
        processor_class: type[RelayProcessor] = RelayProcessor,
    ) -> None:
        super().__init__(f"relay-{source.name}", settings or RelaySettings())
        self.database_url = database_url
        self.nats_url = nats_url
        self.mapper = mapper
        self.source = source
        self.processor_class = processor_class
        self.published = 0
        self.duplicates = 0

    def status(self) -> WorkerStatus:
        return WorkerStatus(
            self.source.name,
            self.active,
            self.connected,
            self.last_error,
            self.published,
            self.duplicates,
        )

    async def _serve(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True, row_factory=dict_row, connect_timeout=5
        ) as connection:
            cursor = await connection.execute(
                "SELECT pg_try_advisory_lock(%s) AS got",
                (advisory_key(f"relay:{self.source.name}"),),
            )
            got = await cursor.fetchone()
            if not got or not got["got"]:
                self.active = False
                await self._pause(self.settings.standby_wait)
                return
            self.active = True
            closed = asyncio.Event()
            client = await connect_nats(self.nats_url, name=self.name, closed=closed)
            try:
                await ensure_streams(client.jetstream(), self.settings.streams)
                processor = self.processor_class(
                    connection,
                    client,
                    self.mapper,
                    self.source,
                    batch_size=self.settings.batch_size,
                    ack_timeout=self.settings.ack_timeout,
                    closed=closed,
                )
                await processor.ensure_tracking()
                await connection.execute("LISTEN ledger_events")
                self.connected = True
                self.last_error = None
                while not self.stopping:
                    if closed.is_set():
                        raise RelayError("the NATS connection closed")
                    async with contextlib.aclosing(processor.catch_up()) as batches:
                        async for result in batches:
                            self.published += result.published - result.duplicates
                            self.duplicates += result.duplicates
                            if self.stopping:
                                return
                    # Caught up: wake on the event store's NOTIFY, or after a short wait regardless.
                    async for _ in connection.notifies(
                        timeout=self.settings.idle_wait, stop_after=1
                    ):
                        pass
            finally:
                self.connected = False
                self.active = False
                with contextlib.suppress(Exception):
                    await client.close()


# --- backlog -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RelayBacklog:
    """What a relay has not published yet."""

    name: str
    position: int
    head: int
    #: head position minus the relay's position (positions may have gaps: an upper bound)
    behind: int
    #: events after the relay's position that it publishes (for the ERP relay: the pending
    #: postings, counting at most ``PENDING_COUNT_CAP``; a count that changed nothing is counted
    #: though it will post nothing)
    pending: int


PENDING_COUNT_CAP = 1_000_000
RELAY_TOPICS: dict[str, Sequence[str] | None] = {ERP_RELAY: POSTING_TOPICS, EVENT_RELAY: None}

_HEAD = "SELECT coalesce(max(notification_id), 0) FROM ledger_events"
_POSITIONS = "SELECT name, position FROM relay_positions"
_PENDING_ALL = (
    "SELECT count(*) FROM (SELECT 1 FROM ledger_events WHERE notification_id > %s LIMIT %s) s"
)
_PENDING_TOPICS = (
    "SELECT count(*) FROM (SELECT 1 FROM ledger_events WHERE notification_id > %s "
    "AND topic = ANY(%s) LIMIT %s) s"
)


def _pending_query(name: str, position: int) -> tuple[str, tuple[Any, ...]]:
    topics = RELAY_TOPICS.get(name)
    if topics is None:
        return _PENDING_ALL, (position, PENDING_COUNT_CAP)
    return _PENDING_TOPICS, (position, list(topics), PENDING_COUNT_CAP)


def relay_backlog(connection: psycopg.Connection[Any]) -> dict[str, RelayBacklog]:
    """Per relay (``erp-postings``, ``event-stream``): what waits to be published."""
    with connection.cursor() as cursor:
        head = int(_first(cursor.execute(_HEAD).fetchone()))
        positions = {ERP_RELAY: 0, EVENT_RELAY: 0}
        for row in cursor.execute(_POSITIONS).fetchall():
            positions[str(_get_named(row, "name", 0))] = int(_get_named(row, "position", 1))
        backlog = {}
        for name, position in positions.items():
            query, params = _pending_query(name, position)
            pending = int(_first(cursor.execute(query, params).fetchone()))
            backlog[name] = RelayBacklog(name, position, head, max(0, head - position), pending)
        return backlog


async def relay_backlog_async(connection: psycopg.AsyncConnection[Any]) -> dict[str, RelayBacklog]:
    """``relay_backlog`` on an async connection (the API's pool)."""
    async with connection.cursor() as cursor:
        await cursor.execute(_HEAD)
        head = int(_first(await cursor.fetchone()))
        positions = {ERP_RELAY: 0, EVENT_RELAY: 0}
        await cursor.execute(_POSITIONS)
        for row in await cursor.fetchall():
            positions[str(_get_named(row, "name", 0))] = int(_get_named(row, "position", 1))
        backlog = {}
        for name, position in positions.items():
            query, params = _pending_query(name, position)
            await cursor.execute(query, params)
            pending = int(_first(await cursor.fetchone()))
            backlog[name] = RelayBacklog(name, position, head, max(0, head - position), pending)
        return backlog


def _get_named(row: Any, name: str, index: int) -> Any:
    return row[name] if isinstance(row, Mapping) else row[index]


# --- inbound POS ---------------------------------------------------------------------------------
class PosLineMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    sku: StrictStr
    quantity: StrictInt
    disposition: Literal["restock", "damaged", "inspect"] = "inspect"


class PosTransactionMessage(BaseModel):
    """A till transaction on ``stockledger.inbound.pos`` (the POST /v1/pos/transactions body)."""

    model_config = ConfigDict(extra="ignore")

    transaction_id: StrictStr
    location: StrictStr
    occurred_at: AwareDatetime
    lines: list[PosLineMessage] = Field(min_length=1)


Outcome = Literal["applied", "exception", "retry"]


@dataclass(frozen=True)
class InboundSettings:
    #: deliveries of a message that keeps failing for a reason not its own (the database is
    #: down) before it becomes an exception all the same
    max_attempts: int = 10
    #: first redelivery delay after such a failure, doubling up to 30 s
    retry_delay: float = 2.0
    ack_wait: float = 60.0
    fetch_batch: int = 64
    fetch_timeout: float = 1.0
    durable: str = POS_DURABLE


@dataclass(frozen=True)
class PosApplication:
    """What applying one POS message did: ``applied`` (with the ledger's answer), or
    ``exception`` with the reason; either way the business ids the message carries."""

    outcome: Literal["applied", "exception"]
    reason: str
    external_ids: dict[str, str]
    result: WriteResult | None = None


def apply_pos_message(
    ledger: Ledger, raw: bytes, *, correlation_id: str | None = None
) -> PosApplication:
    """Parses and applies one POS transaction message (blocking: run it in a thread).

    Shared by the inbound consumer and the retry of a POS exception. What is the message's own
    fault (bad JSON, an invalid body, a refusal by the ledger) comes back as ``exception``;
    anything else (the ledger cannot record: ``LedgerUnavailable``) is raised.
    """
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        return PosApplication("exception", f"invalid JSON: {error}", {})
    ids = _external_ids(body)
    try:
        transaction = PosTransactionMessage.model_validate(body)
    except PydanticValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        return PosApplication("exception", f"validation: {where}: {first['msg']}", ids)
    lines = [PosLine(line.sku, line.quantity, line.disposition) for line in transaction.lines]
    try:
        result = ledger.record_pos_transaction(
            transaction.transaction_id,
            transaction.location,
            transaction.occurred_at,
            lines,
            context=CommandContext(correlation_id=correlation_id),
        )
    except DomainError as error:
        return PosApplication("exception", f"{error.slug}: {error.detail}", ids)
    return PosApplication("applied", "", ids, result)


class InboundPos:
    """Applies POS messages through the ledger; what cannot be applied becomes an exception."""

    def __init__(
        self,
        ledger: Ledger,
        connection: psycopg.AsyncConnection[Any],
        *,
        max_attempts: int = 10,
        retry_delay: float = 2.0,
    ) -> None:
        self.ledger = ledger
        self.connection = connection
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        # Messages are handled concurrently; their exception records share one connection.
        self._recording = asyncio.Lock()

    async def handle(self, msg: Msg) -> Outcome:
        deliveries = msg.metadata.num_delivered if msg.reply else 1
        raw = bytes(msg.data)
        ids: dict[str, str] = {}
        try:
            outcome, reason, ids = await self._apply(raw, msg)
        except Exception as error:  # not the message's fault: the ledger could not record it
            if deliveries < self.max_attempts:
                log.warning("inbound POS: %s; redelivering later", _one_line(error))
                await msg.nak(delay=min(self.retry_delay * 2 ** (deliveries - 1), 30.0))
                return "retry"
            outcome, ids = "exception", _external_ids(raw)
            reason = f"not applied after {deliveries} attempts: {_one_line(error)}"
        if outcome == "exception":
            async with self._recording:
                await self._record(msg, raw, reason, ids, deliveries)
        await msg.ack()
        return outcome

    async def _record(
        self, msg: Msg, raw: bytes, reason: str, ids: dict[str, str], deliveries: int
    ) -> None:
        await exception_store.arecord(
            self.connection,
            channel="pos",
            source=msg.subject,
            reason=reason,
            payload=raw,
            external_ids=ids,
            details={"deliveries": deliveries, **self._stream_details(msg)},
            key="pos-message:" + hashlib.sha256(raw).hexdigest(),
        )

    async def _apply(self, raw: bytes, msg: Msg) -> tuple[Outcome, str, dict[str, str]]:
        applied = await asyncio.to_thread(
            apply_pos_message, self.ledger, raw, correlation_id=f"nats:{msg.subject}"
        )
        return applied.outcome, applied.reason, applied.external_ids

    @staticmethod
    def _stream_details(msg: Msg) -> dict[str, Any]:
        if not msg.reply:
            return {}
        with contextlib.suppress(Exception):
            metadata = msg.metadata
            return {"stream": metadata.stream, "stream_sequence": metadata.sequence.stream}
        return {}


def _external_ids(body: Any) -> dict[str, str]:
    """The business ids a POS message carries, for its exception record (a body or raw bytes)."""
    if isinstance(body, bytes):
        try:
            body = json.loads(body)
        except ValueError:
            return {}
    if not isinstance(body, dict):
        return {}
    return {
        key: str(body[key])
        for key in ("transaction_id", "location")
        if isinstance(body.get(key), str | int) and not isinstance(body.get(key), bool)
    }


class InboundPosWorker(_AsyncWorker):
    """Consumes ``stockledger.inbound.pos`` through a durable pull consumer."""

    def __init__(
        self,
        database_url: str,
        nats_url: str,
        ledger: Ledger,
        *,
        settings: RelaySettings | None = None,
        inbound: InboundSettings | None = None,
    ) -> None:
        super().__init__("inbound-pos", settings or RelaySettings())
        self.database_url = database_url
        self.nats_url = nats_url
        self.ledger = ledger
        self.inbound = inbound or InboundSettings()
        self.applied = 0
        self.exceptions = 0

    def status(self) -> WorkerStatus:
        return WorkerStatus(
            "inbound-pos", self.active, self.connected, self.last_error, self.applied, 0
        )

    async def _serve(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True, connect_timeout=5
        ) as connection:
            closed = asyncio.Event()
            client = await connect_nats(self.nats_url, name=self.name, closed=closed)
            try:
                js = client.jetstream()
                await ensure_streams(js, self.settings.streams)
                subscription = await js.pull_subscribe(
                    POS_SUBJECT,
                    durable=self.inbound.durable,
                    stream=INBOUND_STREAM,
                    config=ConsumerConfig(
                        ack_policy=AckPolicy.EXPLICIT,
                        deliver_policy=DeliverPolicy.ALL,
                        ack_wait=self.inbound.ack_wait,
                        max_ack_pending=1000,
                    ),
                )
                handler = InboundPos(
                    self.ledger,
                    connection,
                    max_attempts=self.inbound.max_attempts,
                    retry_delay=self.inbound.retry_delay,
                )
                self.active = self.connected = True
                self.last_error = None
                while not self.stopping:
                    if closed.is_set():
                        raise RelayError("the NATS connection closed")
                    try:
                        messages = await subscription.fetch(
                            self.inbound.fetch_batch, timeout=self.inbound.fetch_timeout
                        )
                    except TimeoutError:  # nats.errors.TimeoutError included: nothing came
                        continue
                    # Till transactions are independent: the ledger group-commits them together.
                    outcomes = await asyncio.gather(*(handler.handle(m) for m in messages))
                    self.applied += outcomes.count("applied")
                    self.exceptions += outcomes.count("exception")
            finally:
                self.active = self.connected = False
                with contextlib.suppress(Exception):
                    await client.close()


# --- everything together -------------------------------------------------------------------------
class Relays:
    """The NATS workers of one process: the ERP relay, the event relay, the inbound POS consumer.

    ``start()`` runs each as a daemon thread with its own asyncio loop and returns at once; the
    workers connect, take their locks and retry on their own (a missing NATS is an error they
    log and retry, never a failure of ``start``). ``stop()`` asks them to finish and waits.
    Without a ``ledger``, no inbound consumer runs.
    """

    def __init__(
        self,
        database_url: str,
        nats_url: str,
        mapper: UUIDMapper,
        ledger: Ledger | None = None,
        *,
        settings: RelaySettings | None = None,
        inbound: InboundSettings | None = None,
    ) -> None:
        self.database_url = database_url
        self.nats_url = nats_url
        self.mapper = mapper
        self.ledger = ledger
        self.settings = settings or RelaySettings(streams=StreamSettings.from_env())
        self.inbound = inbound
        self.workers: list[RelayWorker | InboundPosWorker] = []

    def start(self) -> None:
        if self.workers:
            return
        self.workers = [
            RelayWorker(
                self.database_url,
                self.nats_url,
                self.mapper,
                ErpPostingSource(self.mapper),
                settings=self.settings,
            ),
            RelayWorker(
                self.database_url,
                self.nats_url,
                self.mapper,
                EventStreamSource(),
                settings=self.settings,
            ),
        ]
        if self.ledger is not None:
            self.workers.append(
                InboundPosWorker(
                    self.database_url,
                    self.nats_url,
                    self.ledger,
                    settings=self.settings,
                    inbound=self.inbound,
                )
            )
        for worker in self.workers:
            worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        for worker in self.workers:
            worker._stopping.set()
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            worker.stop(max(0.1, deadline - time.monotonic()))
        self.workers = []

    def status(self) -> list[WorkerStatus]:
        return [worker.status() for worker in self.workers]

    @property
    def nats_connected(self) -> bool:
        """True when a worker of this process is connected to NATS now (for /ready).

        The inbound consumer connects in every process; a standby relay does not.
        """
        return any(status.connected for status in self.status())

    def backlog(self) -> dict[str, RelayBacklog]:
        with psycopg.connect(self.database_url, autocommit=True, connect_timeout=5) as conn:
            return relay_backlog(conn)


async def drain_relay(
    database_url: str,
    nats_url: str,
    mapper: UUIDMapper,
    source: RelaySource,
    *,
    settings: RelaySettings | None = None,
) -> BatchResult:
    """Publishes everything one relay has pending, once, then returns (tools, demo, tests).

    Takes the relay's advisory lock like a worker (and fails if a worker holds it).
    """
    settings = settings or RelaySettings()
    async with await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, row_factory=dict_row, connect_timeout=5
    ) as connection:
        cursor = await connection.execute(
            "SELECT pg_try_advisory_lock(%s) AS got", (advisory_key(f"relay:{source.name}"),)
        )
        got = await cursor.fetchone()
        if not got or not got["got"]:
            raise RelayError(f"relay {source.name} is running elsewhere")
        closed = asyncio.Event()
        client = await connect_nats(nats_url, name=f"drain-{source.name}", closed=closed)
        try:
            await ensure_streams(client.jetstream(), settings.streams)
            processor = RelayProcessor(
                connection,
                client,
                mapper,
                source,
                batch_size=settings.batch_size,
                ack_timeout=settings.ack_timeout,
                closed=closed,
            )
            await processor.ensure_tracking()
            events = published = duplicates = position = 0
            async for result in processor.catch_up():
                events += result.events
                published += result.published
                duplicates += result.duplicates
                position = result.position
            return BatchResult(events, published, duplicates, position)
        finally:
            with contextlib.suppress(Exception):
                await client.close()


async def read_stream(
    js: JetStreamContext,
    stream: str,
    *,
    subject: str | None = None,
    start_sequence: int = 1,
    limit: int = 100_000,
    timeout: float = 5.0,
) -> list[Msg]:
    """The messages stored in a stream from ``start_sequence`` on, in stream order.

    Reads through a short-lived ephemeral consumer (nothing is acknowledged or changed); for
    tools such as the demo printing the postings it caused, and for tests.
    """
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=max(1, start_sequence),
        ack_policy=AckPolicy.NONE,
        filter_subject=subject,
        inactive_threshold=60.0,
    )
    info = await js.add_consumer(stream, config)
    subscription = await js.pull_subscribe_bind(consumer=info.name, stream=stream)
    try:
        wanted = min(limit, info.num_pending or 0)
        messages: list[Msg] = []
        deadline = time.monotonic() + timeout
        while len(messages) < wanted:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"read {len(messages)} of {wanted} messages from {stream}")
            with contextlib.suppress(nats.errors.TimeoutError):
                messages.extend(
                    await subscription.fetch(min(500, wanted - len(messages)), timeout=left)
                )
        return messages
    finally:
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, info.name)


async def last_sequence(js: JetStreamContext, stream: str) -> int:
    """The stream's last sequence number (0 when the stream is empty or does not exist)."""
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return 0
    return int(info.state.last_seq or 0)
