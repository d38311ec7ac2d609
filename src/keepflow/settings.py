"""All host configuration in one place: environment variables and ``$KEEPFLOW_HOME``.

``KEEPFLOW_HOME`` (default ``./.keepflow``) holds the embedded SQLite store, the connections
file and the policy file. ``KEEPFLOW_DATABASE_URL`` switches the store to any SQLAlchemy URL,
e.g. ``postgresql+psycopg://user@/keepflow?host=/run/postgresql`` (SPEC §13).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEEPFLOW_", extra="ignore")

    home: Path = Field(default=Path(".keepflow"), description="Directory of the embedded store")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the store; default: SQLite under home"
    )
    sandbox_workers: int = Field(default=2, ge=1, le=64, description="JS worker processes")
    run_concurrency: int = Field(default=8, ge=1, le=256,
                                 description="runs of different workflows in parallel (serve)")
    api_token: str | None = Field(default=None, description="required for non-loopback binds")

    @property
    def store_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'keepflow.db').resolve()}"

    @property
    def connections_file(self) -> Path:
        return self.home / "connections.toml"

    @property
    def policy_file(self) -> Path:
        return self.home / "policy.toml"
