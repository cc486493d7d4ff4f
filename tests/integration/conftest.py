"""Integration fixtures: a migrated PostgreSQL database per test, and a Ledger on it.

Builds on the session fixtures of ``tests/conftest.py`` (``fresh_database_url``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from adapters.migrations import migrate
from adapters.postgres import ledger_env
from domain.service import Ledger


@pytest.fixture
def ledger_url(fresh_database_url: Callable[[], str]) -> str:
    """A fresh database with the ledger's schema, for this test alone."""
    url = fresh_database_url()
    migrate(url)
    return url


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    """The application service on ``ledger_url`` (its writer thread is stopped after)."""
    service = Ledger(env=ledger_env(ledger_url))
    try:
        yield service
    finally:
        service.close()
