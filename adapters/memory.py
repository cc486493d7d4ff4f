"""In-memory infrastructure for the ledger: eventsourcing's POPO recorder plus idempotency keys.

Chosen with ``PERSISTENCE_MODULE=adapters.memory:LedgerMemoryFactory``; used by the unit tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder, StoredEvent
from eventsourcing.popo import POPOApplicationRecorder, POPOFactory

from adapters.transcoding import OrjsonTranscoding
from domain.ports import IdempotencyClaim, IdempotencyRecord, KeyAlreadyRecorded


class LedgerMemoryRecorder(POPOApplicationRecorder):
    def __init__(self) -> None:
        super().__init__()
        self._keys: dict[str, IdempotencyRecord] = {}

    def insert_events_with_keys(
        self, stored_events: Sequence[StoredEvent], claims: Sequence[IdempotencyClaim]
    ) -> Sequence[int]:
        with self._database_lock:
            taken = [claim.key for claim in claims if claim.key in self._keys]
            if taken:
                raise KeyAlreadyRecorded(f"idempotency keys already recorded: {taken}")
            positions = list(self._insert_events(stored_events) or [])
            for claim in claims:
                index = claim.last_event_index
                self._keys[claim.key] = IdempotencyRecord(
                    claim.key,
                    claim.fingerprint,
                    claim.response,
                    positions[index] if index is not None else None,
                )
        self._notify_listeners()
        return positions

    def select_existing_ids(self, aggregate_ids: Sequence[UUID]) -> set[UUID]:
        with self._database_lock:
            return {
                aggregate_id
                for aggregate_id in aggregate_ids
                if self._stored_events_index.get(str(aggregate_id))
            }

    def select_idempotency_records(self, keys: Sequence[str]) -> Mapping[str, IdempotencyRecord]:
        with self._database_lock:
            return {key: self._keys[key] for key in keys if key in self._keys}


class LedgerMemoryFactory(OrjsonTranscoding, POPOFactory):
    def application_recorder(self) -> ApplicationRecorder:
        return LedgerMemoryRecorder()

    def __init__(self, env: Any) -> None:
        super().__init__(env)


MEMORY_ENV = {"PERSISTENCE_MODULE": "adapters.memory:LedgerMemoryFactory"}
