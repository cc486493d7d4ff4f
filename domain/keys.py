"""Keys of the domain: SKUs, locations, channels, and the aggregate ids derived from them."""

from __future__ import annotations

import re
from functools import lru_cache
from hashlib import sha1
from uuid import UUID, uuid5

from domain.errors import ValidationFailed

SKU_PATTERN = re.compile(r"^[A-Za-z0-9._\-/]{1,64}$")
LOCATION_PATTERN = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
CHANNEL_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
EXTERNAL_ID_PATTERN = re.compile(r"^[A-Za-z0-9._\-:/#@]{1,128}$")

# Fixed namespace: ids must be the same in every process and across rebuilds.
NAMESPACE = UUID("6f1d0c1e-2b53-4c6e-9a8e-5a7c3a1f0b42")

MAX_QUANTITY = 1_000_000_000


def check_sku(sku: str) -> str:
    if not isinstance(sku, str) or not SKU_PATTERN.fullmatch(sku):
        raise ValidationFailed(f"SKU {sku!r} must be 1-64 characters of A-Za-z0-9._-/")
    return sku


def check_location(code: str) -> str:
    if not isinstance(code, str) or not LOCATION_PATTERN.fullmatch(code):
        raise ValidationFailed(f"location {code!r} must be 1-64 characters of A-Za-z0-9._-")
    return code


def check_channel(channel: str) -> str:
    if not isinstance(channel, str) or not CHANNEL_PATTERN.fullmatch(channel):
        raise ValidationFailed(f"channel {channel!r} must be a lower-case word")
    return channel


def check_external_id(value: str, what: str = "external id") -> str:
    if not isinstance(value, str) or not EXTERNAL_ID_PATTERN.fullmatch(value):
        raise ValidationFailed(f"{what} {value!r} must be 1-128 characters of A-Za-z0-9._-:/#@")
    return value


def check_positive(quantity: int, what: str = "quantity") -> int:
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise ValidationFailed(f"{what} must be an integer")
    if not 1 <= quantity <= MAX_QUANTITY:
        raise ValidationFailed(f"{what} must be between 1 and {MAX_QUANTITY}")
    return quantity


def check_non_negative(quantity: int, what: str = "quantity") -> int:
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise ValidationFailed(f"{what} must be an integer")
    if not 0 <= quantity <= MAX_QUANTITY:
        raise ValidationFailed(f"{what} must be between 0 and {MAX_QUANTITY}")
    return quantity


def check_delta(delta: int) -> int:
    if isinstance(delta, bool) or not isinstance(delta, int):
        raise ValidationFailed("delta must be an integer")
    if delta == 0 or abs(delta) > MAX_QUANTITY:
        raise ValidationFailed(f"delta must be non-zero and at most {MAX_QUANTITY} in size")
    return delta


# Ids are derived on every command (uuid5 hashes SHA-1); the hot ones are few enough to keep.
@lru_cache(maxsize=100_000)
def position_id(sku: str, location: str) -> UUID:
    return uuid5(NAMESPACE, f"stock:{sku}@{location}")


@lru_cache(maxsize=10_000)
def location_id(code: str) -> UUID:
    return uuid5(NAMESPACE, f"location:{code}")


def order_id(channel: str, external_id: str) -> UUID:
    return uuid5(NAMESPACE, f"order:{channel}:{external_id}")


def transfer_id(transfer: str) -> UUID:
    return uuid5(NAMESPACE, f"transfer:{transfer}")


def uuid5_text(name: str) -> str:
    """``str(uuid5(NAMESPACE, name))`` without building a ``UUID`` and formatting it back, which
    costs the relays more per message than the rest of the work on an id."""
    digest = bytearray(sha1(_NAMESPACE_BYTES + name.encode()).digest()[:16])
    digest[6] = digest[6] & 0x0F | 0x50  # version 5
    digest[8] = digest[8] & 0x3F | 0x80  # the RFC 4122 variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


_NAMESPACE_BYTES = NAMESPACE.bytes
