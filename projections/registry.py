"""Every view, by name."""

from __future__ import annotations

from uuid import UUID

from eventsourcing.persistence import Mapper

from projections.availability import AvailabilityProjection
from projections.base import Projection
from projections.discrepancies import DiscrepanciesProjection
from projections.orders import OrdersProjection

VIEW_NAMES = ("availability", "orders", "discrepancies")


def all_views(mapper: Mapper[UUID]) -> list[Projection]:
    return [AvailabilityProjection(), OrdersProjection(mapper), DiscrepanciesProjection()]


def view(name: str, mapper: Mapper[UUID]) -> Projection:
    for projection in all_views(mapper):
        if projection.name == name:
            return projection
    raise KeyError(name)
