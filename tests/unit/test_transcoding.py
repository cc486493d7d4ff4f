"""The orjson transcoder writes what eventsourcing's JSON transcoder writes, or lets it write."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    UUIDAsHex,
)
from hypothesis import given
from hypothesis.strategies import datetimes, just, timezones

from adapters.memory import MEMORY_ENV
from adapters.transcoding import OrjsonTranscoder
from domain.service import Ledger


class Colour(enum.Enum):
    RED = "red"


def _transcoders() -> tuple[JSONTranscoder, JSONTranscoder]:
    fast, standard = OrjsonTranscoder(), JSONTranscoder()
    for transcoder in (fast, standard):
        for transcoding in (UUIDAsHex(), DatetimeAsISO(), DecimalAsStr()):
            transcoder.register(transcoding)
    return fast, standard


STATES: list[dict[str, Any]] = [
    {
        "timestamp": datetime(2026, 11, 27, 12, 0, 1, 123456, tzinfo=UTC),
        "correlation_id": "c0ffee",
        "causation_id": 'O\'Brien \\ "quoted" — ünïcode \u2028 \x01',
        "sku": "SKU-1",
        "quantity": -3,
        "paid": True,
        "reason": None,
        "amount": Decimal("12.50"),
        "lines": [{"line_id": "1", "quantity": 2, "location": None}],
        "refunds": {"r-1": "5.00"},
    },
    {"empty": {}, "nothing": [], "nested": [[{"a": [1, 2, {"b": "c"}]}]]},
    # Not for orjson: UUIDs, enums, floats, integers beyond 64 bits, tuples.
    {"id": uuid4(), "when": datetime(2026, 1, 1, tzinfo=UTC)},
    {"big": 2**70, "small": -(2**70)},
    {"ratio": 0.1, "nan": float("nan")},
    {"pair": (1, "two")},
]


@pytest.mark.parametrize("state", STATES)
def test_orjson_transcoder_writes_the_same_json_and_reads_back_the_same_state(
    state: dict[str, Any],
) -> None:
    fast, standard = _transcoders()
    encoded = fast.encode(state)
    assert encoded == standard.encode(state)
    if state.get("nan") is None:
        assert fast.decode(encoded) == standard.decode(encoded)


@given(datetimes(timezones=just(UTC)) | datetimes(timezones=timezones()) | datetimes())
def test_a_timestamp_is_written_as_the_standard_transcoder_writes_it(when: datetime) -> None:
    fast, standard = _transcoders()
    state = {"timestamp": when, "nested": [{"at": when}]}
    encoded = fast.encode(state)
    assert encoded == standard.encode(state)
    if when.tzinfo is UTC:  # the events' own timestamps come back as they were
        assert fast.decode(encoded) == state


def test_a_type_without_a_transcoding_is_refused_as_before() -> None:
    fast, _ = _transcoders()
    with pytest.raises(TypeError):
        fast.encode({"colour": Colour.RED})


def test_the_ledger_records_its_events_with_the_orjson_transcoder() -> None:
    ledger = Ledger(env=MEMORY_ENV)
    try:
        assert isinstance(ledger.mapper.transcoder, OrjsonTranscoder)
    finally:
        ledger.close()
