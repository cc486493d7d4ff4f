"""The application service: one use-case method per write of the API.

Each method checks its input, then hands a command to the group committer, which runs it
against the aggregates and records its events, together with its idempotency key, in one
transaction shared with whatever other commands are waiting.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Concatenate, ParamSpec, TypeVar
from uuid import UUID, uuid5

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import PersistenceError

from domain.base import CommandMetadata
from domain.committer import LINGER_SECONDS, Command, GroupCommitter, Scope, WriteResult
from domain.errors import (
    AlreadyExists,
    InsufficientStock,
    InvalidTransition,
    LedgerUnavailable,
    NotFound,
    ValidationFailed,
)
from domain.keys import (
    NAMESPACE,
    check_channel,
    check_delta,
    check_external_id,
    check_location,
    check_non_negative,
    check_positive,
    check_sku,
    location_id,
    order_id,
    position_id,
    transfer_id,
)
from domain.location import LOCATION_KINDS, Location, LocationDetails, LocationDirectory, Transfer
from domain.order import Movement, Order
from domain.ports import LedgerRecorder, WriteForwarder
from domain.stock import StockPosition

DIRECTORY_ID = uuid5(NAMESPACE, "location-directory")
DISPOSITIONS = ("restock", "damaged", "inspect")
MAX_LINES = 500
MAX_TEXT = 500
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_Aggregate = TypeVar("_Aggregate")
_Number = TypeVar("_Number", int, float)
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_Arguments = ParamSpec("_Arguments")
# The write methods a forwarder may be asked to run, by name (filled by the decorators below).
FORWARDABLE: set[str] = set()


def _forwardable(
    method: Callable[Concatenate[Ledger, _Arguments], WriteResult],
) -> Callable[Concatenate[Ledger, _Arguments], WriteResult]:
    """A write that runs where the ledger's writes are recorded: here, or through its forwarder
    (``Ledger.forward_writes``), with the same arguments, answer and errors."""
    name = method.__name__
    FORWARDABLE.add(name)

    def write(
        ledger: Ledger, /, *args: _Arguments.args, **kwargs: _Arguments.kwargs
    ) -> WriteResult:
        if ledger.forwarder is None:
            return method(ledger, *args, **kwargs)
        return ledger.outcome(ledger.forwarder.forward(name, args, kwargs))

    functools.update_wrapper(write, method)
    return write


def _forwardable_submission(
    method: Callable[Concatenate[Ledger, _Arguments], Future[WriteResult]],
) -> Callable[Concatenate[Ledger, _Arguments], Future[WriteResult]]:
    """``_forwardable`` for a write that answers with its future rather than waiting."""
    name = method.__name__
    FORWARDABLE.add(name)

    def submit(
        ledger: Ledger, /, *args: _Arguments.args, **kwargs: _Arguments.kwargs
    ) -> Future[WriteResult]:
        if ledger.forwarder is None:
            return method(ledger, *args, **kwargs)
        forwarded: Future[WriteResult] = ledger.forwarder.forward(name, args, kwargs)
        return forwarded

    functools.update_wrapper(submit, method)
    return submit


# --- inputs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CommandContext:
    """Where a command comes from: its idempotency key and the request it belongs to."""

    idempotency_key: str | None = None
    correlation_id: str | None = None


@dataclass(frozen=True)
class OrderLine:
    line_id: str
    sku: str
    quantity: int
    location: str | None = None

    def as_dict(self) -> dict[str, Any]:
        # dataclasses.asdict copies recursively, and an order's lines are converted twice.
        return {
            "line_id": self.line_id,
            "sku": self.sku,
            "quantity": self.quantity,
            "location": self.location,
        }


@dataclass(frozen=True)
class SkuQuantity:
    sku: str
    quantity: int


@dataclass(frozen=True)
class LineQuantity:
    line_id: str
    quantity: int


@dataclass(frozen=True)
class FulfillmentLine:
    line_id: str
    quantity: int
    location: str | None = None


@dataclass(frozen=True)
class ReturnLine:
    line_id: str
    quantity: int
    disposition: str = "restock"


@dataclass(frozen=True)
class PosLine:
    """A till line: a positive quantity is a sale, a negative one a return."""

    sku: str
    quantity: int
    disposition: str = "inspect"


def parse_duration(text: str) -> timedelta:
    """``1800``, ``30m``, ``2h``, ``1d``; ``0`` means never."""
    match = _DURATION.match(text or "0")
    if not match:
        raise ValidationFailed(f"duration {text!r} must be a number of seconds or like 30m, 2h")
    number, unit = int(match.group(1)), match.group(2) or "s"
    return timedelta(seconds=number * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit])


class Ledger(Application[UUID]):
    """stockledger's application service."""

    name = "Ledger"
    is_snapshotting_enabled = True

    SNAPSHOT_INTERVAL = "STOCKLEDGER_SNAPSHOT_INTERVAL"
    CACHE_SIZE = "STOCKLEDGER_AGGREGATE_CACHE_SIZE"
    RESERVATION_TTL = "STOCKLEDGER_RESERVATION_TTL"
    BATCH_LINGER = "STOCKLEDGER_BATCH_LINGER_SECONDS"
    # The writer's defaults, which the API's typed settings share.
    DEFAULT_SNAPSHOT_INTERVAL = 200
    DEFAULT_CACHE_SIZE = 200_000
    COMMAND_TIMEOUT = 30.0
    # What a caller is told when the writer has not answered within COMMAND_TIMEOUT.
    COMMAND_TIMED_OUT = "the ledger did not record the command in time"

    def __init__(self, env: dict[str, str] | None = None) -> None:
        super().__init__(env)
        if not isinstance(self.recorder, LedgerRecorder):
            raise TypeError(
                "the configured PERSISTENCE_MODULE does not record idempotency keys: "
                "use adapters.postgres or adapters.memory"
            )
        self.ledger_recorder: LedgerRecorder = self.recorder
        self.reservation_ttl = parse_duration(self.env.get(self.RESERVATION_TTL) or "30m")
        self.committer = GroupCommitter(
            recorder=self.recorder,
            mapper=self.mapper,
            repository=self.repository,
            snapshots=self.snapshots,
            snapshot_interval=self._number(
                self.SNAPSHOT_INTERVAL, int, self.DEFAULT_SNAPSHOT_INTERVAL
            ),
            cache_size=self._number(self.CACHE_SIZE, int, self.DEFAULT_CACHE_SIZE, least=1),
            linger=self._number(self.BATCH_LINGER, float, LINGER_SECONDS),
        )
        self.forwarder: WriteForwarder | None = None

    def forward_writes(self, forwarder: WriteForwarder) -> None:
        """Sends every write command to ``forwarder`` from now on (a writer in another process,
        with a ledger of its own) instead of this ledger's writer; reads stay here."""
        self.forwarder = forwarder

    @property
    def writer_stats(self) -> dict[str, int]:
        """The counters of whichever writer records this ledger's writes."""
        if self.forwarder is not None:
            return dict(self.forwarder.stats)
        return dict(self.committer.stats)

    def _number(
        self, name: str, kind: Callable[[str], _Number], default: _Number, *, least: int = 0
    ) -> _Number:
        """The setting ``name`` from the environment; a clear error when it is not a number."""
        text = self.env.get(name)
        if not text:
            return default
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not least <= value < float("inf"):
            raise ValidationFailed(f"{name} must be a number of at least {least}, not {text!r}")
        return value

    def close(self) -> None:
        if self.forwarder is not None:
            self.forwarder.close()
        self.committer.close()
        super().close()

    # --- locations --------------------------------------------------------------------------
    @_forwardable
    def register_location(
        self,
        code: str,
        *,
        name: str,
        kind: str,
        channels: Sequence[str],
        priority: int = 100,
        external_ids: dict[str, str] | None = None,
        context: CommandContext | None = None,
    ) -> WriteResult:
        check_location(code)
        if kind not in LOCATION_KINDS:
            raise ValidationFailed(f"kind must be one of {', '.join(LOCATION_KINDS)}")
        details = LocationDetails(
            name=_text(name, "name", required=True) or code,
            kind=kind,
            channels=tuple(sorted({check_channel(channel) for channel in channels})),
            priority=_integer(priority, "priority", -1_000_000, 1_000_000),
            external_ids={
                check_channel(channel): check_external_id(str(value), "external id")
                for channel, value in (external_ids or {}).items()
            },
        )

        def run(scope: Scope) -> dict[str, Any]:
            for other in _locations(scope):
                for channel, external in details.external_ids.items():
                    if other.code != code and other.external_ids.get(channel) == external:
                        raise AlreadyExists(
                            f"{channel} location {external} is already mapped to {other.code}"
                        )
            location = scope.get(location_id(code))
            if location is None:
                location = Location.open(
                    Location.Registered,
                    location_id(code),
                    code=code,
                    **details.as_event_fields(),
                )
                scope.add(location)
                directory = scope.get(DIRECTORY_ID)
                if directory is None:
                    directory = LocationDirectory.open(
                        LocationDirectory.DirectoryOpened, DIRECTORY_ID
                    )
                    scope.add(directory)
                directory.add(code)
            else:
                location.change(details)
            return dict(location.describe())

        request = {"code": code, **details.as_event_fields()}
        return self._execute("location.register", request, run, context)

    # --- stock ------------------------------------------------------------------------------
    @_forwardable
    def receive(
        self,
        sku: str,
        location: str,
        quantity: int,
        reference: str | None = None,
        *,
        context: CommandContext | None = None,
    ) -> WriteResult:
        _check_stock_key(sku, location)
        check_positive(quantity)
        reference = _text(reference, "reference")
        return self._stock_command(
            "stock.receipt",
            {"sku": sku, "location": location, "quantity": quantity, "reference": reference},
            sku,
            location,
            lambda position: position.receive(quantity, reference),
            context,
        )

    @_forwardable
    def adjust(
        self,
        sku: str,
        location: str,
        delta: int,
        reason: str,
        *,
        context: CommandContext | None = None,
    ) -> WriteResult:
        _check_stock_key(sku, location)
        check_delta(delta)
        reason_text = _text(reason, "reason", required=True) or ""
        return self._stock_command(
            "stock.adjustment",
            {"sku": sku, "location": location, "delta": delta, "reason": reason_text},
            sku,
            location,
            lambda position: position.adjust(delta, reason_text),
            context,
        )

    @_forwardable
    def count(
        self, sku: str, location: str, counted: int, *, context: CommandContext | None = None
    ) -> WriteResult:
        _check_stock_key(sku, location)
        check_non_negative(counted, "counted")
        return self._stock_command(
            "stock.count",
            {"sku": sku, "location": location, "counted": counted},
            sku,
            location,
            lambda position: position.count(counted),
            context,
        )

    @_forwardable
    def mark_damaged(
        self,
        sku: str,
        location: str,
        quantity: int,
        reason: str | None = None,
        *,
        context: CommandContext | None = None,
    ) -> WriteResult:
        _check_stock_key(sku, location)
        check_positive(quantity)
        reason = _text(reason, "reason")
        return self._stock_command(
            "stock.damage",
            {"sku": sku, "location": location, "quantity": quantity, "reason": reason},
            sku,
            location,
            lambda position: position.mark_damaged(quantity, reason),
            context,
        )

    @_forwardable
    def write_off_damage(
        self,
        sku: str,
        location: str,
        quantity: int,
        reason: str | None = None,
        *,
        context: CommandContext | None = None,
    ) -> WriteResult:
        _check_stock_key(sku, location)
        check_positive(quantity)
        reason = _text(reason, "reason")
        return self._stock_command(
            "stock.write_off",
            {"sku": sku, "location": location, "quantity": quantity, "reason": reason},
            sku,
            location,
            lambda position: position.write_off_damage(quantity, reason),
            context,
        )

    @_forwardable
    def set_safety_stock(
        self, sku: str, location: str, quantity: int, *, context: CommandContext | None = None
    ) -> WriteResult:
        _check_stock_key(sku, location)
        check_non_negative(quantity)
        return self._stock_command(
            "stock.safety_stock",
            {"sku": sku, "location": location, "quantity": quantity},
            sku,
            location,
            lambda position: position.set_safety_stock(quantity),
            context,
        )

    @_forwardable
    def dispose_return(
        self,
        sku: str,
        location: str,
        quantity: int,
        disposition: str,
        *,
        context: CommandContext | None = None,
    ) -> WriteResult:
        _check_stock_key(sku, location)
        check_positive(quantity)
        if disposition not in ("restock", "damaged"):
            raise ValidationFailed("disposition must be restock or damaged")
        return self._stock_command(
            "stock.return_disposition",
            {"sku": sku, "location": location, "quantity": quantity, "disposition": disposition},
            sku,
            location,
            lambda position: position.dispose_return(quantity, disposition),
            context,
        )

    def _stock_command(
        self,
        operation: str,
        request: dict[str, Any],
        sku: str,
        location: str,
        act: Callable[[StockPosition], None],
        context: CommandContext | None,
    ) -> WriteResult:
        def run(scope: Scope) -> dict[str, Any]:
            position = _position(scope, sku, location)
            act(position)
            return _position_body(position)

        return self._execute(operation, request, run, context)

    # --- transfers --------------------------------------------------------------------------
    @_forwardable
    def dispatch_transfer(
        self,
        transfer: str,
        from_location: str,
        to_location: str,
        lines: Sequence[SkuQuantity],
        *,
        context: CommandContext | None = None,
    ) -> WriteResult:
        check_external_id(transfer, "transfer id")
        check_location(from_location)
        check_location(to_location)
        if from_location == to_location:
            raise ValidationFailed("a transfer needs two different locations")
        quantities = _sku_quantities(lines)

        def run(scope: Scope) -> dict[str, Any]:
            if scope.peek(transfer_id(transfer)) is not None:
                raise AlreadyExists(f"transfer {transfer} is already recorded")
            _require_location(scope, from_location)
            _require_location(scope, to_location)
            record = Transfer.open(
                Transfer.TransferStarted,
                transfer_id(transfer),
                transfer_id=transfer,
                from_location=from_location,
                to_location=to_location,
                lines=[{"sku": sku, "quantity": q} for sku, q in quantities.items()],
            )
            scope.add(record)
            for sku, quantity in quantities.items():
                _position(scope, sku, from_location).dispatch_transfer(
                    transfer, to_location, quantity
                )
                _position(scope, sku, to_location).expect_transfer(
                    transfer, from_location, quantity
                )
            return _transfer_body(record)

        request = {
            "transfer_id": transfer,
            "from_location": from_location,
            "to_location": to_location,
            "lines": quantities,
        }
        return self._execute(
            "transfer.dispatch", request, run, context, natural_key=f"transfer:{transfer}"
        )

    @_forwardable
    def receive_transfer(
        self,
        transfer: str,
        lines: Sequence[SkuQuantity],
        *,
        context: CommandContext | None = None,
    ) -> WriteResult:
        check_external_id(transfer, "transfer id")
        received = _sku_quantities(lines, allow_zero=True)

        def run(scope: Scope) -> dict[str, Any]:
            record = scope.get(transfer_id(transfer))
            if record is None:
                raise NotFound(f"transfer {transfer} is not known")
            if record.received is not None:
                raise AlreadyExists(f"transfer {transfer} was already received")
            expected = record.expected()
            unexpected = sorted(set(received) - set(expected))
            if unexpected:
                raise ValidationFailed(f"transfer {transfer} did not carry {', '.join(unexpected)}")
            for sku, quantity in expected.items():
                _position(scope, sku, record.to_location).receive_transfer(
                    transfer, quantity, received.get(sku, 0)
                )
            record.complete({sku: received.get(sku, 0) for sku in expected})
            return _transfer_body(record)

        return self._execute(
            "transfer.receipt",
            {"transfer_id": transfer, "lines": received},
            run,
            context,
            natural_key=f"transfer-receipt:{transfer}",
        )

    # --- orders -----------------------------------------------------------------------------
    def place_order(
        self,
        channel: str,
        external_id: str,
        lines: Sequence[OrderLine],
        *,
        currency: str | None = None,
        total: str | Decimal | None = None,
        allow_backorder: bool = False,
        context: CommandContext | None = None,
    ) -> WriteResult:
        return self.outcome(
            self.submit_order(
                channel,
                external_id,
                lines,
                currency=currency,
                total=total,
                allow_backorder=allow_backorder,
                context=context,
            )
        )

    @_forwardable_submission
    def submit_order(
        self,
        channel: str,
        external_id: str,
        lines: Sequence[OrderLine],
        *,
        currency: str | None = None,
        total: str | Decimal | None = None,
        allow_backorder: bool = False,
        context: CommandContext | None = None,
    ) -> Future[WriteResult]:
        """``place_order`` without waiting for it: checks the request (raising at once), hands it
        to the writer and returns its future, for a caller that waits its own way (an event
        loop); ``outcome`` or ``with_position`` turn what it holds into the answer."""
        check_channel(channel)
        check_external_id(external_id)
        currency = _currency(currency)
        total_text = str(_amount(total, "total")) if total is not None else None
        if not lines:
            raise ValidationFailed("an order needs at least one line")
        if len(lines) > MAX_LINES:
            raise ValidationFailed(f"an order has at most {MAX_LINES} lines")
        seen: set[str] = set()
        for line in lines:
            check_external_id(line.line_id, "line id")
            check_sku(line.sku)
            check_positive(line.quantity)
            if line.location is not None:
                check_location(line.location)
            if line.line_id in seen:
                raise ValidationFailed(f"line id {line.line_id} appears twice")
            seen.add(line.line_id)
        the_order_id = order_id(channel, external_id)

        def run(scope: Scope) -> dict[str, Any]:
            if scope.peek(the_order_id) is not None:
                raise AlreadyExists(
                    f"{channel} order {external_id} is already placed",
                    order_id=str(the_order_id),
                )
            for line in lines:
                if line.location is not None:
                    _require_location(scope, line.location)
            order = Order.open(
                Order.Placed,
                the_order_id,
                channel=channel,
                external_id=external_id,
                lines=[line.as_dict() for line in lines],
                currency=currency,
                total=total_text,
                allow_backorder=allow_backorder,
            )
            scope.add(order)
            sources = sorted(
                (loc for loc in _locations(scope) if loc.serves(channel)),
                key=lambda loc: (loc.priority, loc.code),
            )
            allocations: list[Movement] = []
            backordered: dict[str, int] = {}
            for line in lines:
                remaining = line.quantity
                codes = [line.location] if line.location else [loc.code for loc in sources]
                for code in codes:
                    if remaining == 0:
                        break
                    current = scope.peek(position_id(line.sku, code))
                    if current is None or current.available_to_sell == 0:
                        continue
                    take = min(remaining, current.available_to_sell)
                    _position(scope, line.sku, code).reserve(str(order.id), line.line_id, take)
                    allocations.append(Movement(line.line_id, line.sku, code, take))
                    remaining -= take
                if remaining:
                    if not allow_backorder:
                        where = line.location or f"the {channel} locations"
                        raise InsufficientStock(
                            f"{line.sku}: {line.quantity} ordered, "
                            f"{line.quantity - remaining} available to sell at {where}",
                            sku=line.sku,
                            requested=line.quantity,
                            available_to_sell=line.quantity - remaining,
                        )
                    backordered[line.line_id] = remaining
            order.record_reservations(allocations, backordered)
            return dict(order.describe())

        request = {
            "channel": channel,
            "external_id": external_id,
            "lines": [line.as_dict() for line in lines],
            "currency": currency,
            "total": total_text,
            "allow_backorder": allow_backorder,
        }
        return self._submit(
            "order.place",
            request,
            run,
            context,
            natural_key=f"order:{channel}:{external_id}",
            prefetch=[the_order_id],
        )

    @_forwardable
    def authorize_payment(
        self, order: str | UUID, *, context: CommandContext | None = None
    ) -> WriteResult:
        the_id = _order_uuid(order)

        def run(scope: Scope) -> dict[str, Any]:
            record = _order(scope, the_id)
            for movement in record.authorize_payment():
                _position(scope, movement.sku, movement.location).commit(
                    str(the_id), movement.quantity
                )
            return record.describe()

        return self._execute("order.payment", {"order_id": str(the_id)}, run, context)

    @_forwardable
    def cancel_order(
        self,
        order: str | UUID,
        reason: str = "cancelled",
        *,
        context: CommandContext | None = None,
    ) -> WriteResult:
        the_id = _order_uuid(order)
        reason = _text(reason, "reason") or "cancelled"

        def run(scope: Scope) -> dict[str, Any]:
            record = _order(scope, the_id)
            committed = record.paid
            for movement in record.cancel(reason):
                _position(scope, movement.sku, movement.location).release(
                    str(the_id), movement.quantity, "cancelled", committed=committed
                )
            return record.describe()

        return self._execute(
            "order.cancel", {"order_id": str(the_id), "reason": reason}, run, context
        )

    @_forwardable
    def cancel_order_lines(
        self,
        order: str | UUID,
        lines: Sequence[LineQuantity],
        reason: str = "cancelled",
        *,
        context: CommandContext | None = None,
    ) -> WriteResult:
        """Gives up some units of some lines (a channel removed them); their stock is released."""
        the_id = _order_uuid(order)
        reason = _text(reason, "reason") or "cancelled"
        _check_lines(lines)
        wanted: list[tuple[str, int]] = []
        for line in lines:
            check_external_id(line.line_id, "line id")
            wanted.append((line.line_id, check_positive(line.quantity)))

        def run(scope: Scope) -> dict[str, Any]:
            record = _order(scope, the_id)
            committed = record.paid
            for movement in record.cancel_lines(wanted, reason):
                _position(scope, movement.sku, movement.location).release(
                    str(the_id), movement.quantity, "cancelled", committed=committed
                )
            return record.describe()

        request = {"order_id": str(the_id), "lines": wanted, "reason": reason}
        return self._execute("order.cancel_lines", request, run, context)

    @_forwardable
    def expire_reservation(self, order: str | UUID, *, now: datetime | None = None) -> WriteResult:
        """Releases an unpaid order's reservations once older than the reservation TTL."""
        the_id = _order_uuid(order)
        if not self.reservation_ttl:
            raise InvalidTransition("reservations never expire (STOCKLEDGER_RESERVATION_TTL=0)")
        ttl = self.reservation_ttl

        def run(scope: Scope) -> dict[str, Any]:
            record = _order(scope, the_id)
            for movement in record.expire(now or scope.now, ttl):
                _position(scope, movement.sku, movement.location).release(
                    str(the_id), movement.quantity, "expired", committed=False
                )
            return record.describe()

        return self._execute("order.expire", {"order_id": str(the_id)}, run, None)

    def expire_reservations(
        self, orders: Sequence[str | UUID], *, now: datetime | None = None
    ) -> list[str]:
        """Expires those of the given orders whose unpaid reservations are past the TTL."""
        expired = []
        for order in orders:
            try:
                self.expire_reservation(order, now=now)
            except (InvalidTransition, NotFound):
                continue
            expired.append(str(order))
        return expired

    @_forwardable
    def fulfill_order(
        self,
        order: str | UUID,
        fulfillment_id: str,
        lines: Sequence[FulfillmentLine],
        *,
        context: CommandContext | None = None,
    ) -> WriteResult:
        the_id = _order_uuid(order)
        check_external_id(fulfillment_id, "fulfillment id")
        _check_lines(lines)
        for line in lines:
            check_external_id(line.line_id, "line id")
            check_positive(line.quantity)
            if line.location is not None:
                check_location(line.location)

        def run(scope: Scope) -> dict[str, Any]:
            record = _order(scope, the_id)
            for line in lines:
                if line.location is not None:
                    _require_location(scope, line.location)
            plan = record.fulfill(
                fulfillment_id, [(line.line_id, line.quantity, line.location) for line in lines]
            )
            reference = str(the_id)
            for shipment in plan.shipments:
                position = _position(scope, shipment.sku, shipment.location)
                if shipment.from_held and not record.paid:
                    # Shipping implies the sale: held units move to committed on their way out.
                    position.commit(reference, shipment.from_held)
                position.ship(
                    reference,
                    fulfillment_id,
                    shipment.quantity,
                    from_available=shipment.quantity - shipment.from_held,
                )
            for release in plan.releases:
                _position(scope, release.sku, release.location).release(
                    reference, release.quantity, "reallocated", committed=record.paid
                )
            return record.describe()

        request = {
            "order_id": str(the_id),
            "fulfillment_id": fulfillment_id,
            "lines": [asdict(line) for line in lines],
        }
        return self._execute(
            "order.fulfill",
            request,
            run,
            context,
            natural_key=f"fulfillment:{the_id}:{fulfillment_id}",
        )

    @_forwardable
    def return_order(
        self,
        order: str | UUID,
        return_id: str,
        lines: Sequence[ReturnLine],
        *,
        location: str | None = None,
        context: CommandContext | None = None,
    ) -> WriteResult:
        the_id = _order_uuid(order)
        check_external_id(return_id, "return id")
        if location is not None:
            check_location(location)
        _check_lines(lines)
        for line in lines:
            check_external_id(line.line_id, "line id")
            check_positive(line.quantity)
            if line.disposition not in DISPOSITIONS:
                raise ValidationFailed(f"disposition must be one of {', '.join(DISPOSITIONS)}")

        def run(scope: Scope) -> dict[str, Any]:
            record = _order(scope, the_id)
            received = record.receive_return(
                return_id,
                location,
                [(line.line_id, line.quantity, line.disposition) for line in lines],
            )
            for movement, disposition in received:
                _require_location(scope, movement.location)
                position = _position(scope, movement.sku, movement.location)
                position.receive_return(
                    movement.quantity, return_id, order=str(the_id), transaction=None
                )
                if disposition != "inspect":
                    position.dispose_return(movement.quantity, disposition)
            return record.describe()

        request = {
            "order_id": str(the_id),
            "return_id": return_id,
            "location": location,
            "lines": [asdict(line) for line in lines],
        }
        return self._execute(
            "order.return", request, run, context, natural_key=f"return:{the_id}:{return_id}"
        )

    @_forwardable
    def refund_order(
        self,
        order: str | UUID,
        refund_id: str,
        amount: str | Decimal,
        currency: str | None = None,
        lines: Sequence[dict[str, Any]] = (),
        *,
        context: CommandContext | None = None,
    ) -> WriteResult:
        the_id = _order_uuid(order)
        check_external_id(refund_id, "refund id")
        value = _amount(amount, "amount")
        currency = _currency(currency)
        refund_lines = []
        for line in lines:
            line_id = check_external_id(str(line.get("line_id", "")), "line id")
            refund_lines.append({"line_id": line_id, "quantity": check_positive(line["quantity"])})

        def run(scope: Scope) -> dict[str, Any]:
            record = _order(scope, the_id)
            record.refund(refund_id, value, currency, refund_lines)
            return record.describe()

        request = {
            "order_id": str(the_id),
            "refund_id": refund_id,
            "amount": str(value),
            "currency": currency,
            "lines": refund_lines,
        }
        return self._execute(
            "order.refund", request, run, context, natural_key=f"refund:{the_id}:{refund_id}"
        )

    # --- point of sale ----------------------------------------------------------------------
    @_forwardable
    def record_pos_transaction(
        self,
        transaction: str,
        location: str,
        occurred_at: datetime | str | None,
        lines: Sequence[PosLine],
        *,
        context: CommandContext | None = None,
    ) -> WriteResult:
        check_external_id(transaction, "transaction id")
        check_location(location)
        when = _timestamp(occurred_at)
        _check_lines(lines)
        for line in lines:
            check_sku(line.sku)
            if line.quantity == 0 or abs(line.quantity) > 1_000_000_000:
                raise ValidationFailed("a till line's quantity is non-zero (negative: a return)")
            if line.disposition not in DISPOSITIONS:
                raise ValidationFailed(f"disposition must be one of {', '.join(DISPOSITIONS)}")

        def run(scope: Scope) -> dict[str, Any]:
            _require_location(scope, location)
            touched: dict[str, StockPosition] = {}
            for line in lines:
                position = _position(scope, line.sku, location)
                touched[line.sku] = position
                if line.quantity > 0:
                    position.sell(transaction, line.quantity, when)
                else:
                    position.receive_return(
                        -line.quantity,
                        transaction,
                        order=None,
                        transaction=transaction,
                        occurred_at=when,
                    )
                    if line.disposition != "inspect":
                        position.dispose_return(-line.quantity, line.disposition)
            return {
                "transaction_id": transaction,
                "location": location,
                "occurred_at": when,
                "positions": [_position_body(position) for position in touched.values()],
            }

        request = {
            "transaction_id": transaction,
            "location": location,
            "occurred_at": when,
            "lines": [asdict(line) for line in lines],
        }
        # The till's transaction id is the idempotency key of a POS write (SPEC §2). Nothing else
        # stops a sale from being recorded twice, so a request key must not take its place.
        context = CommandContext(correlation_id=context.correlation_id if context else None)
        return self._execute(
            "pos.transaction", request, run, context, natural_key=f"pos:{transaction}"
        )

    # --- reads of the write model (the views in projections/ serve the API) -------------------
    def get_position(self, sku: str, location: str) -> StockPosition | None:
        return self._get(StockPosition, position_id(sku, location))

    def get_order(self, order: str | UUID) -> Order | None:
        return self._get(Order, _order_uuid(order))

    def get_location(self, code: str) -> Location | None:
        return self._get(Location, location_id(code))

    def get_transfer(self, transfer: str) -> Transfer | None:
        return self._get(Transfer, transfer_id(transfer))

    def list_locations(self) -> list[Location]:
        directory = self._get(LocationDirectory, DIRECTORY_ID)
        codes = directory.codes if directory else []
        return [loc for loc in (self.get_location(code) for code in codes) if loc is not None]

    def _get(self, kind: type[_Aggregate], aggregate_id: UUID) -> _Aggregate | None:
        try:
            found: object = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        return found if isinstance(found, kind) else None

    # --- plumbing ---------------------------------------------------------------------------
    def _execute(
        self,
        operation: str,
        request: dict[str, Any],
        run: Callable[[Scope], dict[str, Any]],
        context: CommandContext | None,
        *,
        natural_key: str | None = None,
        prefetch: Sequence[UUID] = (),
    ) -> WriteResult:
        return self.outcome(
            self._submit(
                operation, request, run, context, natural_key=natural_key, prefetch=prefetch
            )
        )

    def _submit(
        self,
        operation: str,
        request: dict[str, Any],
        run: Callable[[Scope], dict[str, Any]],
        context: CommandContext | None,
        *,
        natural_key: str | None = None,
        prefetch: Sequence[UUID] = (),
    ) -> Future[WriteResult]:
        context = context or CommandContext()
        key = context.idempotency_key
        if key is not None and not _KEY.match(key):
            raise ValidationFailed("an idempotency key is 1-255 printable ASCII characters")
        key = key or natural_key
        # Only names the command in its events' metadata: random enough, without a system call.
        command_id = f"{random.getrandbits(128):032x}"
        fingerprint = hashlib.sha256(
            json.dumps(
                {"operation": operation, "request": request}, sort_keys=True, default=str
            ).encode()
        ).hexdigest()
        command = Command(
            operation=operation,
            fingerprint=fingerprint,
            key=key,
            run=run,
            metadata=CommandMetadata(
                correlation_id=context.correlation_id or command_id,
                causation_id=key or command_id,
            ),
            prefetch=tuple(prefetch),
        )
        return self.committer.submit(command)

    def outcome(self, future: Future[WriteResult]) -> WriteResult:
        """The answer to a submitted write, once the writer has given it."""
        try:
            result = future.result(timeout=self.COMMAND_TIMEOUT)
        except TimeoutError:
            raise LedgerUnavailable(self.COMMAND_TIMED_OUT) from None
        return self.with_position(result)

    def with_position(self, result: WriteResult) -> WriteResult:
        """``result`` with a position: when nothing new was recorded (a replay, a no-op), the
        answer holds as of the log's head, which this reads."""
        if result.position is not None:
            return result
        try:
            head = self.ledger_recorder.max_notification_id()
        except PersistenceError as error:
            raise LedgerUnavailable(f"the event store is unavailable: {error}") from None
        return replace(result, position=head or 0)


# --- helpers shared by the use cases --------------------------------------------------------
def _check_stock_key(sku: str, location: str) -> None:
    check_sku(sku)
    check_location(location)


def _check_lines(lines: Sequence[object]) -> None:
    if not lines:
        raise ValidationFailed("at least one line is needed")
    if len(lines) > MAX_LINES:
        raise ValidationFailed(f"at most {MAX_LINES} lines")


def _sku_quantities(lines: Sequence[SkuQuantity], *, allow_zero: bool = False) -> dict[str, int]:
    _check_lines(lines)
    quantities: dict[str, int] = {}
    for line in lines:
        check_sku(line.sku)
        if allow_zero:
            check_non_negative(line.quantity)
        else:
            check_positive(line.quantity)
        if line.sku in quantities:
            raise ValidationFailed(f"SKU {line.sku} appears twice")
        quantities[line.sku] = line.quantity
    return quantities


def _text(value: str | None, what: str, *, required: bool = False) -> str | None:
    if value is None or value == "":
        if required:
            raise ValidationFailed(f"{what} is required")
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT or not value.isprintable():
        raise ValidationFailed(f"{what} must be printable text of at most {MAX_TEXT} characters")
    return value


def _integer(value: int, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationFailed(f"{what} must be an integer between {low} and {high}")
    return value


def _currency(currency: str | None) -> str | None:
    if currency is None:
        return None
    if not isinstance(currency, str) or not _CURRENCY.match(currency):
        raise ValidationFailed("currency must be a three-letter ISO 4217 code, like EUR")
    return currency


def _amount(value: str | Decimal | None, what: str) -> Decimal:
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValidationFailed(f"{what} must be a decimal amount like 12.34") from None
    if not amount.is_finite() or amount < 0 or amount > Decimal("1e12"):
        raise ValidationFailed(f"{what} must be a non-negative amount")
    if amount.as_tuple().exponent < -4:  # type: ignore[operator]
        raise ValidationFailed(f"{what} has at most 4 decimals")
    return amount


def _timestamp(value: datetime | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValidationFailed("occurred_at must be an ISO 8601 date-time") from None
    if value.tzinfo is None:
        raise ValidationFailed("occurred_at needs a time zone")
    return value.isoformat()


def _order_uuid(order: str | UUID) -> UUID:
    if isinstance(order, UUID):
        return order
    try:
        return UUID(str(order))
    except ValueError:
        raise NotFound(f"order {order!r} is not known") from None


def _order(scope: Scope, the_id: UUID) -> Order:
    record = scope.get(the_id)
    if not isinstance(record, Order):
        raise NotFound(f"order {the_id} is not known")
    return record


def _require_location(scope: Scope, code: str) -> Location:
    location = scope.peek(location_id(code))
    if location is None:
        raise NotFound(f"location {code} is not registered", location=code)
    return location  # type: ignore[no-any-return]


def _locations(scope: Scope) -> list[Location]:
    directory = scope.peek(DIRECTORY_ID)
    if directory is None:
        return []
    return [loc for loc in (scope.peek(location_id(c)) for c in directory.codes) if loc]


def _position(scope: Scope, sku: str, location: str) -> StockPosition:
    the_id = position_id(sku, location)
    position = scope.get(the_id)
    if position is None:
        _require_location(scope, location)
        position = StockPosition.open(StockPosition.Opened, the_id, sku=sku, location=location)
        scope.add(position)
    return position  # type: ignore[no-any-return]


def _position_body(position: StockPosition) -> dict[str, Any]:
    return {"sku": position.sku, "location": position.location, **position.buckets()}


def _transfer_body(record: Transfer) -> dict[str, Any]:
    return {
        "transfer_id": record.transfer_id,
        "from_location": record.from_location,
        "to_location": record.to_location,
        "lines": [
            {
                "sku": sku,
                "quantity": quantity,
                "received": None if record.received is None else record.received.get(sku, 0),
            }
            for sku, quantity in record.expected().items()
        ],
    }
