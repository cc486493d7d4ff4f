"""Locations (warehouses and stores), the directory of them, and transfers between them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import CanMutateAggregate

from domain.base import LedgerAggregate

LOCATION_KINDS = ("warehouse", "store")


@dataclass(frozen=True)
class LocationDetails:
    name: str
    kind: str
    channels: tuple[str, ...]
    priority: int
    external_ids: dict[str, str] = field(default_factory=dict)

    def as_event_fields(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "channels": list(self.channels),
            "priority": self.priority,
            "external_ids": dict(self.external_ids),
        }


class Location(LedgerAggregate):
    """A place that holds stock, and which channels may sell from it."""

    category: ClassVar[str] = "location"

    class Event(LedgerAggregate.Event):
        """Every location event names its location code."""

        code: str

    class Registered(Event, LedgerAggregate.Created):
        name: str
        kind: str
        channels: list[str]
        priority: int
        external_ids: dict[str, str]

    class Changed(Event):
        name: str
        kind: str
        channels: list[str]
        priority: int
        external_ids: dict[str, str]

        def apply(self, location: Location) -> None:
            location.name = self.name
            location.kind = self.kind
            location.channels = list(self.channels)
            location.priority = self.priority
            location.external_ids = dict(self.external_ids)

    def __init__(
        self,
        code: str,
        name: str,
        kind: str,
        channels: list[str],
        priority: int,
        external_ids: dict[str, str],
    ) -> None:
        self.code = code
        self.name = name
        self.kind = kind
        self.channels = list(channels)
        self.priority = priority
        self.external_ids = dict(external_ids)

    def trigger_event(self, event_class: type[CanMutateAggregate[UUID]], **kwargs: Any) -> None:
        super().trigger_event(event_class, code=self.code, **kwargs)

    @property
    def details(self) -> LocationDetails:
        return LocationDetails(
            self.name, self.kind, tuple(self.channels), self.priority, dict(self.external_ids)
        )

    def change(self, details: LocationDetails) -> None:
        if details != self.details:
            self.trigger_event(self.Changed, **details.as_event_fields())

    def serves(self, channel: str) -> bool:
        return channel in self.channels

    def describe(self) -> dict[str, Any]:
        return {"code": self.code, **self.details.as_event_fields()}


class LocationDirectory(LedgerAggregate):
    """The list of location codes, so sourcing can find every location without a query."""

    category: ClassVar[str] = "location"

    class DirectoryOpened(LedgerAggregate.Created):
        pass

    class LocationListed(LedgerAggregate.Event):
        code: str

        def apply(self, directory: LocationDirectory) -> None:
            directory.codes.append(self.code)

    def __init__(self) -> None:
        self.codes: list[str] = []

    def add(self, code: str) -> None:
        if code not in self.codes:
            self.trigger_event(self.LocationListed, code=code)


class Transfer(LedgerAggregate):
    """Stock moving between two locations: what was sent, and what arrived."""

    category: ClassVar[str] = "stock"

    class TransferStarted(LedgerAggregate.Created):
        transfer_id: str
        from_location: str
        to_location: str
        lines: list[dict[str, Any]]

    class TransferCompleted(LedgerAggregate.Event):
        lines: list[dict[str, Any]]

        def apply(self, transfer: Transfer) -> None:
            transfer.received = {line["sku"]: line["quantity"] for line in self.lines}

    def __init__(
        self, transfer_id: str, from_location: str, to_location: str, lines: list[dict[str, Any]]
    ) -> None:
        self.transfer_id = transfer_id
        self.from_location = from_location
        self.to_location = to_location
        self.lines = [dict(line) for line in lines]
        self.received: dict[str, int] | None = None

    def expected(self) -> dict[str, int]:
        return {line["sku"]: int(line["quantity"]) for line in self.lines}

    def complete(self, received: dict[str, int]) -> None:
        self.trigger_event(
            self.TransferCompleted,
            lines=[{"sku": sku, "quantity": quantity} for sku, quantity in received.items()],
        )
