"""Typed settings, read from ``STOCKLEDGER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    # The API's own knobs (the SPEC fixes the body limit at 1 MiB; tests and proxies may vary it).
    max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    read_pool_size: int = Field(default=10, ge=1, le=200)
    # FastAPI's own OpenTelemetry spans, metrics and logs. Off unless asked for: it asks the
    # OpenTelemetry providers whether they are configured on every request (about 5 µs each).
    opentelemetry: bool = False

    def ledger_overrides(self) -> dict[str, str]:
        return {"STOCKLEDGER_RESERVATION_TTL": self.reservation_ttl}
