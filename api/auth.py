"""API keys: who is calling, which scopes they hold, and where they may write.

Keys come from ``STOCKLEDGER_ADMIN_KEY`` (every scope, every location) and from the TOML file
named by ``STOCKLEDGER_API_KEYS_FILE``::

    [[keys]]
    name = "shopify-sync"              # shown in logs and errors; never the secret
    secret_sha256 = "9f86d08...0f00a08"  # hex SHA-256 of the key (preferred), or:
    # secret = "the key itself"
    scopes = ["read", "orders:write"]

    [[keys]]
    name = "store-berlin-till"
    secret_sha256 = "..."
    scopes = ["pos:write", "stock:write"]
    locations = ["BER-1"]              # optional: may write only at these locations

Only digests are kept in memory. A presented key is hashed and compared, in constant time,
against every known digest, so neither timing nor an early exit tells which key came close.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from api.problems import Forbidden, Unauthorized
from domain.keys import LOCATION_PATTERN
from domain.order import Order

log = logging.getLogger("stockledger.api")

# Shorter keys still work, but are easy to guess: the operator is warned at start-up.
RECOMMENDED_KEY_LENGTH = 16
_HEX_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")


class Scope(StrEnum):
    READ = "read"
    STOCK_WRITE = "stock:write"
    ORDERS_WRITE = "orders:write"
    POS_WRITE = "pos:write"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """The caller a key stands for. ``locations`` None means every location."""

    name: str
    scopes: frozenset[Scope]
    locations: frozenset[str] | None = None

    def holds(self, scope: Scope) -> bool:
        return Scope.ADMIN in self.scopes or scope in self.scopes


class KeysFileError(Exception):
    """The keys file cannot be used; the message is one line, fit for a start-up error."""


# --- the keys file --------------------------------------------------------------------------------
class _KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100)
    secret: str | None = Field(default=None, min_length=1)
    secret_sha256: str | None = None
    scopes: list[Scope] = Field(min_length=1)
    locations: list[Annotated[str, Field(pattern=LOCATION_PATTERN.pattern)]] | None = Field(
        default=None, min_length=1
    )

    @model_validator(mode="after")
    def _one_secret(self) -> _KeyEntry:
        if (self.secret is None) == (self.secret_sha256 is None):
            raise ValueError("give exactly one of secret and secret_sha256")
        if self.secret_sha256 is not None and not _HEX_DIGEST.match(self.secret_sha256):
            raise ValueError("secret_sha256 must be 64 hexadecimal digits")
        if self.secret is not None and not self.secret.isascii():
            raise ValueError("secret must be ASCII (it travels in an HTTP header)")
        return self

    def digest(self) -> bytes:
        if self.secret_sha256 is not None:
            return bytes.fromhex(self.secret_sha256)
        assert self.secret is not None
        return _sha256(self.secret)


class _KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[_KeyEntry] = Field(default_factory=list)


def _sha256(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def _describe_errors(error: ValidationError) -> str:
    # Location and message only: pydantic's input could be a secret.
    parts = []
    for item in error.errors():
        where = ".".join(
            f"[{part}]" if isinstance(part, int) else str(part) for part in item["loc"]
        ).replace(".[", "[")
        parts.append(f"{where or 'file'}: {item['msg']}")
    return "; ".join(parts)


def _read_keys_file(path: Path) -> list[_KeyEntry]:
    try:
        with path.open("rb") as file:
            raw = tomllib.load(file)
    except FileNotFoundError:
        raise KeysFileError(f"API keys file {path} does not exist") from None
    except OSError as error:
        raise KeysFileError(f"API keys file {path} cannot be read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise KeysFileError(f"API keys file {path} is not valid TOML: {error}") from None
    try:
        entries = _KeysFile.model_validate(raw).keys
    except ValidationError as error:
        raise KeysFileError(f"API keys file {path}: {_describe_errors(error)}") from None
    names = [entry.name for entry in entries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise KeysFileError(f"API keys file {path}: duplicate key names: {', '.join(duplicates)}")
    return entries


# --- the key ring ---------------------------------------------------------------------------------
class KeyRing:
    """The known keys, as SHA-256 digests with the principal each stands for."""

    def __init__(self, keys: Iterable[tuple[bytes, Principal]] = ()) -> None:
        self._keys = list(keys)
        digests = [digest for digest, _ in self._keys]
        if len(set(digests)) != len(digests):
            raise KeysFileError("two API keys share the same secret")

    @classmethod
    def load(cls, *, admin_key: str | None, keys_file: Path | None) -> KeyRing:
        keys: list[tuple[bytes, Principal]] = []
        if admin_key:
            keys.append((_sha256(admin_key), Principal("admin", frozenset({Scope.ADMIN}))))
            if len(admin_key) < RECOMMENDED_KEY_LENGTH:
                log.warning(
                    "STOCKLEDGER_ADMIN_KEY is shorter than %d characters", RECOMMENDED_KEY_LENGTH
                )
        if keys_file is not None:
            for entry in _read_keys_file(keys_file):
                if entry.secret is not None and len(entry.secret) < RECOMMENDED_KEY_LENGTH:
                    log.warning(
                        "API key %r is shorter than %d characters",
                        entry.name,
                        RECOMMENDED_KEY_LENGTH,
                    )
                principal = Principal(
                    name=entry.name,
                    scopes=frozenset(entry.scopes),
                    locations=frozenset(entry.locations) if entry.locations else None,
                )
                keys.append((entry.digest(), principal))
        if not keys:
            log.warning("no API keys are configured: every /v1 request will be refused")
        return cls(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def identify(self, presented: str) -> Principal | None:
        digest = _sha256(presented)
        found: Principal | None = None
        for known, principal in self._keys:
            # Every digest is compared, whatever matched before: no early exit.
            if hmac.compare_digest(digest, known) and found is None:
                found = principal
        return found


# --- dependencies ---------------------------------------------------------------------------------
class ApiKey(SecurityBase):
    """The dependency that identifies the caller by ``Authorization: Bearer <key>`` (401 when
    it cannot) and, given a scope, lets through only keys holding it (403 otherwise).

    A security scheme itself, rather than a function depending on ``HTTPBearer``: the OpenAPI
    document shows the same bearer scheme, and FastAPI resolves one dependency per request
    instead of three, which on a cheap read was a visible share of its time.
    """

    def __init__(self, scope: Scope | None = None) -> None:
        self.model = HTTPBearerModel(description="An API key: `Authorization: Bearer <key>`.")
        self.scheme_name = "HTTPBearer"
        self.scope = scope

    async def __call__(self, request: Request) -> Principal:
        scheme, key = get_authorization_scheme_param(request.headers.get("Authorization"))
        if not key or scheme.lower() != "bearer":
            raise Unauthorized("an API key is required: Authorization: Bearer <key>")
        keyring: KeyRing = request.app.state.keyring
        principal = keyring.identify(key)
        if principal is None:
            raise Unauthorized("the API key is not valid")
        if self.scope is not None and not principal.holds(self.scope):
            raise Forbidden(f"the API key {principal.name!r} lacks the {self.scope.value} scope")
        return principal


#: Any valid key, whatever its scopes.
authenticate = ApiKey()


def require(scope: Scope) -> ApiKey:
    """A dependency that lets through only keys holding ``scope`` (or ``admin``)."""
    return ApiKey(scope)


read_access = require(Scope.READ)
ReadAccess = Annotated[Principal, Depends(read_access)]
StockWriteAccess = Annotated[Principal, Depends(require(Scope.STOCK_WRITE))]
orders_write_access = require(Scope.ORDERS_WRITE)
OrdersWriteAccess = Annotated[Principal, Depends(orders_write_access)]
PosWriteAccess = Annotated[Principal, Depends(require(Scope.POS_WRITE))]
AdminAccess = Annotated[Principal, Depends(require(Scope.ADMIN))]


# --- location limits ------------------------------------------------------------------------------
def authorize_locations(principal: Principal, locations: Iterable[str | None]) -> None:
    """Refuses (403) a write by a location-limited key unless it touches only its locations.

    ``None`` stands for "a location the ledger will choose" (an order line without one): a
    limited key cannot know where that lands, so it is refused too, as is touching nothing
    identifiable at all.
    """
    if principal.locations is None:
        return
    touched = list(locations)
    if not touched or None in touched:
        raise Forbidden(
            f"the API key {principal.name!r} is limited to certain locations: "
            "every location this write touches must be named"
        )
    outside = sorted({code for code in touched if code and code not in principal.locations})
    if outside:
        raise Forbidden(
            f"the API key {principal.name!r} may not write at {', '.join(outside)}",
            locations=outside,
        )


def order_locations(order: Order) -> set[str]:
    """Every location an order has named, held stock at, or shipped from."""
    touched: set[str] = {str(line["location"]) for line in order.lines if line.get("location")}
    for by_location in (*order.held.values(), *order.shipped.values()):
        touched.update(by_location)
    return touched
