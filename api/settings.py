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

    def ledger_overrides(self) -> dict[str, str]:
        return {"STOCKLEDGER_RESERVATION_TTL": self.reservation_ttl}
