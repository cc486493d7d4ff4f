"""Domain errors. Each carries a stable slug that the API turns into a problem type."""

from __future__ import annotations

from typing import Any, ClassVar


class DomainError(Exception):
    """A command was refused; nothing was recorded."""

    slug: ClassVar[str] = "invalid-state"
    status: ClassVar[int] = 409

    def __init__(self, detail: str, **context: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.context = context


class ValidationFailed(DomainError):
    """The command's input breaks a rule of the contract (a malformed key, a bad quantity)."""

    slug = "validation"
    status = 422


class InsufficientStock(DomainError):
    """A request would take more than the position can give."""

    slug = "insufficient-stock"


class NotFound(DomainError):
    """The command names something the ledger does not know."""

    slug = "not-found"
    status = 404


class InvalidTransition(DomainError):
    """The aggregate's state does not allow this command (a cancelled order cannot ship)."""

    slug = "invalid-state"


class AlreadyExists(DomainError):
    """Something with this identity was already recorded, with other contents."""

    slug = "already-exists"


class IdempotencyKeyReused(DomainError):
    """The same idempotency key came back with a different request."""

    slug = "idempotency-key-reused"


class LedgerUnavailable(Exception):
    """The ledger could not record the command (storage unreachable, retries exhausted)."""
