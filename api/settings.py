"""Typed settings, read from ``STOCKLEDGER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from domain.committer import LINGER_SECONDS
from domain.errors import ValidationFailed
from domain.service import Ledger, parse_duration


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STOCKLEDGER_", extra="ignore")

    database_url: str | None = None
    nats_url: str | None = None
    data_dir: Path = Path(".stockledger")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    admin_key: str | None = None
    api_keys_file: Path | None = None
    shopify_webhook_secret: str | None = None
    reservation_ttl: str = "30m"
    # The writer's tuning (domain/committer.py): read by the ledger from the environment too,
    # checked here so that a bad value stops start-up with one line.
    snapshot_interval: int = Field(default=Ledger.DEFAULT_SNAPSHOT_INTERVAL, ge=0)
    aggregate_cache_size: int = Field(default=Ledger.DEFAULT_CACHE_SIZE, ge=1)
    batch_linger_seconds: float = Field(default=LINGER_SECONDS, ge=0, le=1)
    # Where an API process records its writes: a writer process of its own (adapters/
    # writer_process.py), so that answering requests and recording writes use both cores; or,
    # when false, a writer thread beside the event loop.
    writer_process: bool = True
    # The API's own knobs (the SPEC fixes the body limit at 1 MiB; tests and proxies may vary it).
    max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    read_pool_size: int = Field(default=10, ge=1, le=200)
    # FastAPI's own OpenTelemetry spans, metrics and logs. Off unless asked for: it asks the
    # OpenTelemetry providers whether they are configured on every request (about 5 µs each).
    opentelemetry: bool = False

    @field_validator("reservation_ttl")
    @classmethod
    def _a_duration(cls, value: str) -> str:
        try:
            parse_duration(value)
        except ValidationFailed as error:
            raise ValueError(str(error)) from None
        return value

    def ledger_overrides(self) -> dict[str, str]:
        return {
            Ledger.RESERVATION_TTL: self.reservation_ttl,
            Ledger.SNAPSHOT_INTERVAL: str(self.snapshot_interval),
            Ledger.CACHE_SIZE: str(self.aggregate_cache_size),
            Ledger.BATCH_LINGER: repr(self.batch_linger_seconds),
        }


class SettingsError(Exception):
    """A setting that cannot be used, in one line naming its variable."""


def load_settings() -> Settings:
    """The settings from the environment; ``SettingsError`` names the first bad one."""
    try:
        return Settings()
    except ValidationError as error:
        first = error.errors()[0]
        name = "STOCKLEDGER_" + str(first["loc"][0]).upper()
        raise SettingsError(f"{name}: {first['msg']}") from None
