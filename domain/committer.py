"""Group commit: concurrent commands share one database transaction.

The event store serialises writers with a table lock, so one transaction per command caps the
ledger at the rate of that lock. Here one writer thread takes every command that is waiting,
runs them one after another against aggregates kept in memory, and records all their events and
idempotency keys in one transaction. Each command sees the effects of the commands before it in
the batch, and its changes are made on copies, so a refused command leaves nothing behind.

Another process may write the same aggregates. The store's unique (aggregate, version) key turns
that into a conflict on insert, and the batch is then replayed against fresh state. A refusal is
only given after checking that the state it was decided on was not stale. When the optimistic
replays keep losing to the other process, the batch is replayed under the store's write lock,
reading every aggregate fresh, which cannot conflict.

A batch takes every command waiting. When commands queued while the previous batch ran (so
callers are concurrent), it also waits up to ``linger`` seconds for as many more as that batch
answered: those callers are about to come back, and each batch costs a transaction. A lone
caller never waits.

The first attempt at a batch is optimistic: it does not ask the store about idempotency keys or
new aggregates the cache does not know, and assumes the keys are unused and the aggregates
absent, as they nearly always are. The store's unique keys check the assumption on insert; when
it fails, or a command was refused on it, the batch is run again after reading them.

When the store cannot be reached, the batch fails (``LedgerUnavailable``, a 503) as soon as the
recorder gives up, and so, for ``unreachable_pause`` seconds after, do the batches that follow
without trying: a caller waits for at most one attempt, never for a queue of them. The next
batch after the pause tries the store again, so writes resume by themselves when it is back.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.application import AggregateNotFoundError, Repository
from eventsourcing.domain import Snapshot
from eventsourcing.persistence import (
    EventStore,
    IntegrityError,
    InterfaceError,
    Mapper,
    OperationalError,
    PersistenceError,
    StoredEvent,
)

from domain.base import CommandMetadata, LedgerAggregate, collecting_events, recording_metadata
from domain.errors import (
    DomainError,
    IdempotencyKeyReused,
    LedgerUnavailable,
    ValidationFailed,
)
from domain.ports import (
    ExclusiveLedgerRecorder,
    IdempotencyClaim,
    IdempotencyRecord,
    KeyAlreadyRecorded,
    LedgerRecorder,
    PreparedBatch,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WriteResult:
    """The answer to a write: its body, and the global position of its last event."""

    body: dict[str, Any]
    position: int | None
    replayed: bool = False


@dataclass
class Command:
    operation: str
    fingerprint: str
    key: str | None
    run: Callable[[Scope], dict[str, Any]]
    metadata: CommandMetadata
    future: Future[WriteResult] = field(default_factory=Future)
    # Aggregates the command will read that may not exist yet (a new order): the batch asks the
    # store about all of them in one query instead of one load each.
    prefetch: tuple[UUID, ...] = ()


def _response_text(body: dict[str, Any]) -> str:
    """A command's answer as the JSON its idempotency key keeps: orjson's, a tenth of the time of
    the standard library's; the standard library's for what orjson refuses (keys that are not
    strings, integers beyond 64 bits). Both read back the same."""
    try:
        return orjson.dumps(body).decode()
    except orjson.JSONEncodeError:
        return json.dumps(body, separators=(",", ":"))


class _Unverified(Exception):
    """An optimistic attempt's answer rests on an assumption only reading can check."""


class _StaleRead(Exception):
    def __init__(self, ids: list[UUID]) -> None:
        super().__init__(f"{len(ids)} aggregates changed elsewhere")
        self.ids = ids


_MISSING = object()


class Scope:
    """What one command sees: the batch's state so far, copied on first write."""

    def __init__(self, batch: _BatchState, now: datetime) -> None:
        self._batch = batch
        self.now = now
        self.touched: dict[UUID, LedgerAggregate] = {}
        self.read_ids: set[UUID] = set()

    def get(self, aggregate_id: UUID) -> Any:
        """The aggregate to change (a copy), or None when there is none."""
        if aggregate_id in self.touched:
            return self.touched[aggregate_id]
        current = self.peek(aggregate_id)
        if current is None:
            return None
        copy = current.clone()
        self.touched[aggregate_id] = copy
        return copy

    def peek(self, aggregate_id: UUID) -> Any:
        """The aggregate to read only, or None when there is none."""
        if aggregate_id in self.touched:
            return self.touched[aggregate_id]
        self.read_ids.add(aggregate_id)
        return self._batch.load(aggregate_id)

    def add(self, aggregate: LedgerAggregate) -> None:
        self.touched[aggregate.id] = aggregate


class _BatchState:
    def __init__(
        self,
        committer: GroupCommitter,
        *,
        fresh: bool = False,
        assumed_absent: frozenset[UUID] = frozenset(),
    ) -> None:
        self._committer = committer
        self._fresh = fresh
        self.assumed_absent = assumed_absent
        self.working: dict[UUID, LedgerAggregate] = {}
        self.base_versions: dict[UUID, int] = {}
        self.from_cache: dict[UUID, int] = {}
        # What the batch's commands have read so far: most read the same few aggregates (the
        # locations), and looking them up once is enough for the batch.
        self._loaded: dict[UUID, LedgerAggregate | None] = {}

    def load(self, aggregate_id: UUID) -> LedgerAggregate | None:
        if aggregate_id in self.working:
            return self.working[aggregate_id]
        loaded = self._loaded.get(aggregate_id, _MISSING)
        if loaded is not _MISSING:
            return loaded  # type: ignore[return-value]
        aggregate = self._load(aggregate_id)
        self._loaded[aggregate_id] = aggregate
        return aggregate

    def _load(self, aggregate_id: UUID) -> LedgerAggregate | None:
        if aggregate_id in self.assumed_absent:
            return None  # not cached either: whether it exists is only known once it commits
        # Fresh reads go to the store once per batch; the cache then holds what they read.
        refresh = self._fresh and aggregate_id not in self.base_versions
        aggregate, cached = self._committer.lookup(aggregate_id, fresh=refresh)
        version = aggregate.version if aggregate is not None else 0
        self.base_versions.setdefault(aggregate_id, version)
        if cached and not self._fresh:
            self.from_cache.setdefault(aggregate_id, version)
        return aggregate

    def absorb(self, scope: Scope) -> None:
        for aggregate_id, aggregate in scope.touched.items():
            self.base_versions.setdefault(aggregate_id, 0)
            self.working[aggregate_id] = aggregate


@dataclass(frozen=True)
class _Success:
    body: dict[str, Any]
    last_event_index: int | None
    replayed_position: int | None = None
    replayed: bool = False


@dataclass
class _Prepared:
    """A batch run against the aggregates, ready to record."""

    state: _BatchState
    outcomes: list[tuple[Command, _Success | BaseException]]
    stored_events: list[StoredEvent]
    claims: list[IdempotencyClaim]


# The longest a batch waits for the callers its predecessor answered (see _run): about half a
# batch's round trip. With 8 callers (bench p1) batches grew from 4 to 6 commands, and orders/s
# by 8%; a lone caller never waits.
LINGER_SECONDS = 0.0005


class GroupCommitter:
    """Runs commands in batches on one writer thread; one transaction per batch."""

    def __init__(
        self,
        *,
        recorder: LedgerRecorder,
        mapper: Mapper[UUID],
        repository: Repository[UUID],
        snapshots: EventStore[UUID] | None,
        snapshot_interval: int,
        cache_size: int,
        max_batch: int = 400,
        max_attempts: int = 6,
        optimistic_attempts: int = 2,
        unreachable_pause: float = 0.5,
        linger: float = LINGER_SECONDS,
    ) -> None:
        self._recorder = recorder
        self._mapper = mapper
        self._repository = repository
        self._snapshots = snapshots
        self._snapshot_interval = snapshot_interval
        self._cache: OrderedDict[UUID, LedgerAggregate | None] = OrderedDict()
        self._cache_size = cache_size
        self._max_batch = max_batch
        self._max_attempts = max_attempts
        self._optimistic_attempts = optimistic_attempts
        self._unreachable_pause = unreachable_pause
        self.linger = linger
        self._unreachable_until = 0.0
        self._queue: queue.SimpleQueue[Command | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._started = False
        self._start_lock = threading.Lock()
        self._driver: int | None = None  # the thread running batches, when driven (see drive)
        self._wake: Callable[[], None] | None = None
        self._last_touched: list[UUID] = []
        self.stats = {"batches": 0, "commands": 0, "conflicts": 0, "stale_refusals": 0}

    # --- public -------------------------------------------------------------------------------
    def submit(self, command: Command) -> Future[WriteResult]:
        if not self._started:
            with self._start_lock:
                if not self._started:
                    self._thread.start()
                    self._started = True
        self._queue.put(command)
        if self._wake is not None and threading.get_ident() != self._driver:
            self._wake()
        return command.future

    def close(self) -> None:
        if self._started and self._driver is None:
            self._queue.put(None)
            self._thread.join(timeout=10)

    # --- driven by a thread of the caller's ---------------------------------------------------
    def drive(self, wake: Callable[[], None]) -> None:
        """Runs the batches on the calling thread from now on (``run_waiting``), never on a
        writer thread: for a process whose one busy thread both takes commands and records them,
        where handing each batch to another thread and back costs more than it overlaps.
        ``wake`` is called when another thread submits a command, to get this one to run it."""
        with self._start_lock:
            if self._started:
                raise RuntimeError("the writer thread is already running")
            self._started = True
            self._driver = threading.get_ident()
            self._wake = wake

    def waiting(self) -> int:
        """How many commands wait for a batch."""
        return self._queue.qsize()

    def run_waiting(self) -> int:
        """Runs the commands waiting, up to a batch's limit, as one batch; returns how many."""
        batch: list[Command] = []
        self._take_more(batch, self._max_batch)
        if batch:
            self._process(batch)
        return len(batch)

    def forget(self, aggregate_ids: Iterable[UUID]) -> None:
        """Drops cached aggregates (tests and tools that write behind the service's back)."""
        for aggregate_id in aggregate_ids:
            self._cache.pop(aggregate_id, None)

    # --- cache ------------------------------------------------------------------------------
    def lookup(
        self, aggregate_id: UUID, *, fresh: bool = False
    ) -> tuple[LedgerAggregate | None, bool]:
        cached = _MISSING if fresh else self._cache.get(aggregate_id, _MISSING)
        if cached is not _MISSING:
            self._cache.move_to_end(aggregate_id)
            return cached, True  # type: ignore[return-value]
        try:
            aggregate: LedgerAggregate | None = self._repository.get(aggregate_id)
        except AggregateNotFoundError:
            aggregate = None
        self._remember(aggregate_id, aggregate)
        return aggregate, False

    def _prefetch(self, batch: list[Command]) -> None:
        """Marks the batch's not-yet-existing aggregates as missing, with one query for all."""
        unknown = list(
            {
                aggregate_id
                for command in batch
                for aggregate_id in command.prefetch
                if aggregate_id not in self._cache
            }
        )
        if not unknown:
            return
        existing = self._recorder.select_existing_ids(unknown)
        for aggregate_id in unknown:
            if aggregate_id not in existing:
                self._remember(aggregate_id, None)

    def _remember(self, aggregate_id: UUID, aggregate: LedgerAggregate | None) -> None:
        self._cache[aggregate_id] = aggregate
        self._cache.move_to_end(aggregate_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    # --- the writer thread ----------------------------------------------------------------------
    def _run(self) -> None:
        answered = 0  # commands the last batch answered: their callers may be about to return
        while True:
            # Commands that queued while the last batch ran mean concurrent callers.
            concurrent = answered > 0 and not self._queue.empty()
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            going_on = self._take_more(batch, self._max_batch)
            # The callers just answered are likely back within moments: a short wait lets their
            # commands share this batch's transaction instead of needing their own.
            if going_on and concurrent and self.linger > 0:
                expected = min(len(batch) + answered, self._max_batch)
                going_on = self._take_more(batch, expected, time.monotonic() + self.linger)
            self._process(batch)
            if not going_on:
                return
            answered = len(batch)

    def _take_more(self, batch: list[Command], limit: int, deadline: float | None = None) -> bool:
        """Adds commands to ``batch``, up to ``limit``: those waiting, and with a ``deadline``
        those that arrive before it. False when the committer is closing."""
        while len(batch) < limit:
            try:
                if deadline is None:
                    nxt = self._queue.get_nowait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return True
                    nxt = self._queue.get(timeout=remaining)
            except queue.Empty:
                return True
            if nxt is None:
                return False
            batch.append(nxt)
        return True

    def _process(self, batch: list[Command]) -> None:
        if time.monotonic() < self._unreachable_until:
            self._fail(batch, LedgerUnavailable("the event store is unreachable"))
            return
        optimistic = True
        attempt = 1
        while attempt <= self._max_attempts:
            try:
                self._attempt(
                    batch,
                    verify_refusals=attempt < self._max_attempts,
                    exclusive=attempt > self._optimistic_attempts,
                    optimistic=optimistic,
                )
                return
            except _Unverified:
                optimistic = False
                continue
            except _StaleRead as stale:
                self.stats["stale_refusals"] += 1
                self.forget(stale.ids)
            except KeyAlreadyRecorded:
                if optimistic:
                    optimistic = False  # read the keys' records, then answer from them
                    continue
                self.stats["conflicts"] += 1  # another process claimed a key meanwhile
            except IntegrityError:
                optimistic = False  # an aggregate assumed new may exist, so read them next time
                self.stats["conflicts"] += 1
                self.forget(self._last_touched)
                if len(batch) > 1:
                    # Someone else wrote one of these aggregates: find out which command it was.
                    for command in batch:
                        self._process([command])
                    return
            except PersistenceError as error:
                if isinstance(error, OperationalError | InterfaceError):
                    self._unreachable_until = time.monotonic() + self._unreachable_pause
                self._fail(batch, LedgerUnavailable(f"the event store is unavailable: {error}"))
                return
            except Exception as error:  # a defect: fail these commands, keep the writer alive
                log.exception("writer batch failed")
                self._fail(batch, error)
                return
            attempt += 1
        self._fail(batch, LedgerUnavailable("too many concurrent changes; try again"))

    @staticmethod
    def _fail(batch: list[Command], error: BaseException) -> None:
        for command in batch:
            if not command.future.done():
                command.future.set_exception(error)

    def _attempt(
        self,
        batch: list[Command],
        *,
        verify_refusals: bool,
        exclusive: bool = False,
        optimistic: bool = False,
    ) -> None:
        prepared: list[_Prepared] = []

        def prepare() -> PreparedBatch:
            prepared.append(
                self._prepare(
                    batch,
                    verify_refusals=verify_refusals,
                    fresh=exclusive,
                    optimistic=optimistic and not exclusive,
                )
            )
            return prepared[-1].stored_events, prepared[-1].claims

        positions: list[int] = []
        if exclusive and isinstance(self._recorder, ExclusiveLedgerRecorder):
            positions = list(self._recorder.insert_events_with_keys_exclusively(prepare))
        else:
            prepare()
            if prepared[-1].stored_events or prepared[-1].claims:
                positions = list(
                    self._recorder.insert_events_with_keys(
                        prepared[-1].stored_events, prepared[-1].claims
                    )
                )
        self._complete(batch, prepared[-1], positions)

    def _prepare(
        self, batch: list[Command], *, verify_refusals: bool, fresh: bool, optimistic: bool
    ) -> _Prepared:
        """Runs the batch's commands; with ``fresh``, reads every aggregate from the store; when
        ``optimistic``, assumes keys unused and uncached new aggregates absent (see above)."""
        records: Mapping[str, IdempotencyRecord] = {}
        assumed_absent: frozenset[UUID] = frozenset()
        if optimistic:
            assumed_absent = frozenset(
                aggregate_id
                for command in batch
                for aggregate_id in command.prefetch
                if aggregate_id not in self._cache
            )
        else:
            keys = sorted({command.key for command in batch if command.key})
            records = self._recorder.select_idempotency_records(keys) if keys else {}
            if not fresh:
                self._prefetch(batch)
        state = _BatchState(self, fresh=fresh, assumed_absent=assumed_absent)
        now = datetime.now(UTC)
        outcomes: list[tuple[Command, _Success | BaseException]] = []
        stored_events: list[StoredEvent] = []
        claims: list[IdempotencyClaim] = []
        claimed: dict[str, tuple[str, _Success]] = {}
        self._last_touched = []
        for command in batch:
            if command.key:
                record = records.get(command.key)
                if record is not None:
                    outcomes.append(
                        (
                            command,
                            self._replay(
                                command,
                                record.fingerprint,
                                json.loads(record.response),
                                record.position,
                            ),
                        )
                    )
                    continue
                if command.key in claimed:
                    fingerprint, first = claimed[command.key]
                    outcomes.append((command, self._replay_in_batch(command, fingerprint, first)))
                    continue
            scope = Scope(state, now)
            try:
                with recording_metadata(command.metadata), collecting_events() as events:
                    body = command.run(scope)
            except DomainError as error:
                if optimistic and (command.key or assumed_absent & scope.read_ids):
                    raise _Unverified from error  # a recorded answer may be owed instead
                if verify_refusals and not isinstance(error, ValidationFailed):
                    stale = self._stale_among(state, scope.read_ids)
                    if stale:
                        raise _StaleRead(stale) from error
                outcomes.append((command, error))
                continue
            except PersistenceError:
                raise  # the store failed while the command read it: the batch fails (or retries)
            except Exception as error:
                log.exception("command %s failed", command.operation)
                outcomes.append((command, error))
                continue
            if optimistic and (assumed_absent & scope.read_ids) - scope.touched.keys():
                raise _Unverified  # succeeded on an absence that no insert will check
            for aggregate in scope.touched.values():
                aggregate.collect_events()
            state.absorb(scope)
            self._last_touched.extend(scope.touched)
            stored_events.extend(self._mapper.to_stored_event(event) for event in events)
            success = _Success(body, len(stored_events) - 1 if events else None)
            if command.key:
                claims.append(
                    IdempotencyClaim(
                        command.key,
                        command.fingerprint,
                        _response_text(body),
                        success.last_event_index,
                    )
                )
                claimed[command.key] = (command.fingerprint, success)
            outcomes.append((command, success))
        return _Prepared(state, outcomes, stored_events, claims)

    def _complete(self, batch: list[Command], prepared: _Prepared, positions: list[int]) -> None:
        """After the batch is recorded: caches its aggregates and answers its callers."""
        state = prepared.state
        for aggregate_id, aggregate in state.working.items():
            self._remember(aggregate_id, aggregate)
        self.stats["batches"] += 1
        self.stats["commands"] += len(batch)
        for command, outcome in prepared.outcomes:
            if command.future.done():
                continue  # its caller gave up waiting and cancelled it; what it wrote stands
            if isinstance(outcome, BaseException):
                command.future.set_exception(outcome)
                continue
            if outcome.replayed and outcome.last_event_index is None:
                position = outcome.replayed_position
            elif outcome.last_event_index is not None:
                position = positions[outcome.last_event_index]
            else:
                position = None
            command.future.set_result(WriteResult(outcome.body, position, outcome.replayed))
        self._take_snapshots(state)

    @staticmethod
    def _replay(
        command: Command, fingerprint: str, body: dict[str, Any], position: int | None
    ) -> _Success | BaseException:
        if fingerprint != command.fingerprint:
            return IdempotencyKeyReused(
                f"idempotency key {command.key!r} was used for a different request"
            )
        return _Success(body, None, replayed_position=position, replayed=True)

    @staticmethod
    def _replay_in_batch(
        command: Command, fingerprint: str, first: _Success
    ) -> _Success | BaseException:
        if fingerprint != command.fingerprint:
            return IdempotencyKeyReused(
                f"idempotency key {command.key!r} was used for a different request"
            )
        return _Success(first.body, first.last_event_index, replayed=True)

    def _stale_among(self, state: _BatchState, read_ids: set[UUID]) -> list[UUID]:
        stale = []
        for aggregate_id in read_ids:
            version = state.from_cache.get(aggregate_id)
            if version is None:
                continue
            newer = self._repository.event_store.get(aggregate_id, gt=version, limit=1)
            if list(newer):
                stale.append(aggregate_id)
        return stale

    def _take_snapshots(self, state: _BatchState) -> None:
        if self._snapshots is None or self._snapshot_interval <= 0:
            return
        interval = self._snapshot_interval
        snapshots = [
            Snapshot.take(aggregate)
            for aggregate_id, aggregate in state.working.items()
            if aggregate.version // interval > state.base_versions.get(aggregate_id, 0) // interval
        ]
        if snapshots:
            try:
                self._snapshots.put(snapshots)
            except PersistenceError:
                # Snapshots only speed up loading; the events are already safe.
                log.warning("could not record %d snapshots", len(snapshots), exc_info=True)
