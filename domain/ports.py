"""What the application service needs from its recorder beyond eventsourcing's own interface.

Adapters implement it (``adapters.postgres`` for PostgreSQL, ``adapters.memory`` in memory);
``PERSISTENCE_MODULE`` chooses which, as eventsourcing does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

from eventsourcing.persistence import IntegrityError, StoredEvent


class KeyAlreadyRecorded(IntegrityError):
    """An insert failed because one of its idempotency keys is already recorded."""


@dataclass(frozen=True)
class IdempotencyClaim:
    """A key to store with a batch: its request fingerprint, the answer given, and which of the
    batch's events was the command's last (its position is known only once inserted)."""

    key: str
    fingerprint: str
    response: str
    last_event_index: int | None


@dataclass(frozen=True)
class IdempotencyRecord:
    key: str
    fingerprint: str
    response: str
    position: int | None


@runtime_checkable
class LedgerRecorder(Protocol):
    def insert_events_with_keys(
        self, stored_events: Sequence[StoredEvent], claims: Sequence[IdempotencyClaim]
    ) -> Sequence[int]:
        """Inserts the events and the keys in one transaction; returns the events' positions.

        Raises ``KeyAlreadyRecorded`` when a key exists, ``IntegrityError`` when an event's
        (aggregate, version) does; nothing is inserted then."""

    def select_idempotency_records(self, keys: Sequence[str]) -> Mapping[str, IdempotencyRecord]:
        """Returns the stored records of those keys that exist."""

    def max_notification_id(self) -> int | None:
        """The global position of the last recorded event."""

    def select_existing_ids(self, aggregate_ids: Sequence[UUID]) -> set[UUID]:
        """Those of the given aggregates that have at least one recorded event."""


# What a batch prepared for recording: its events and the keys of the commands that made them.
PreparedBatch = tuple[Sequence[StoredEvent], Sequence[IdempotencyClaim]]


@runtime_checkable
class ExclusiveLedgerRecorder(Protocol):
    """A recorder shared with other processes that can also record a batch under its write lock.

    The committer falls back to this when optimistic attempts keep conflicting with another
    process writing the same aggregates: no other writer can commit between ``prepare`` reading
    the aggregates and the insert, so the attempt cannot conflict.
    """

    def insert_events_with_keys_exclusively(
        self, prepare: Callable[[], PreparedBatch]
    ) -> Sequence[int]:
        """Takes the write lock, calls ``prepare``, inserts what it returns and commits."""


class WriteForwarder(Protocol):
    """Where a ledger sends its write commands when they are recorded elsewhere (a writer in a
    process of its own): the command by its method's name and arguments, answered by a future
    holding its ``WriteResult`` or the error it raised."""

    def forward(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Future[Any]: ...

    @property
    def stats(self) -> Mapping[str, int]:
        """The remote writer's counters, as ``GroupCommitter.stats``."""

    def close(self) -> None: ...
