"""All host configuration in one place: environment variables and ``$KEEPFLOW_HOME``.

``KEEPFLOW_HOME`` (default ``./.keepflow``) holds the embedded SQLite store, the connections
file and the policy file. ``KEEPFLOW_DATABASE_URL`` switches the store to any SQLAlchemy URL,
e.g. ``postgresql+psycopg://user@/keepflow?host=/run/postgresql`` (SPEC §13).

Only ``keepflow init`` creates a home. Every other command asks :meth:`Settings.existing_home`
first, so a mistyped or missing ``KEEPFLOW_HOME`` is refused with the way out ("run
``keepflow init``") instead of silently starting an empty store that answers "no workflows".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from keepflow.errors import ConfigError

HOME_DOC = "docs/cli.md#the-home-directory"


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

    @field_validator("home", mode="before")
    @classmethod
    def _home_not_blank(cls, value: Any) -> Any:
        # Path("") is the current directory: an empty KEEPFLOW_HOME would silently make the
        # working directory the home and scatter the store into it.
        if isinstance(value, str) and not value.strip():
            raise ValueError("KEEPFLOW_HOME is set but empty")
        return value

    @classmethod
    def load(cls) -> Settings:
        """The settings of this process's environment; a bad value is a :class:`ConfigError`
        naming the variable and what to do."""
        try:
            return cls()
        except ValidationError as exc:
            raise ConfigError(_explain(exc)) from None

    @property
    def store_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.store_file.resolve()}"

    @property
    def store_file(self) -> Path:
        """The embedded SQLite store (used when ``KEEPFLOW_DATABASE_URL`` is not set)."""
        return self.home / "keepflow.db"

    @property
    def connections_file(self) -> Path:
        return self.home / "connections.toml"

    @property
    def policy_file(self) -> Path:
        return self.home / "policy.toml"

    @property
    def access_token_file(self) -> Path:
        """The access token ``keepflow serve`` made on its first start (mode 0600)."""
        return self.home / "api-token"

    def access_token(self) -> str | None:
        """``KEEPFLOW_API_TOKEN`` if set, else the token in :attr:`access_token_file`."""
        if self.api_token:
            return self.api_token
        try:
            return self.access_token_file.read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def make_access_token(self) -> str | None:
        """Create :attr:`access_token_file` with a new random token, readable by this user
        only; None if it exists already (then it is kept as it is)."""
        import os
        import secrets

        token = "kfa_" + secrets.token_urlsafe(32)
        try:
            fd = os.open(self.access_token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot write the access token to {self.access_token_file}: "
                              f"{exc.strerror}") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token + "\n")
        return token

    def existing_home(self) -> Path:
        """The home every command but ``init`` works in; refused unless ``init`` made it.

        A home is a directory holding the embedded store (or, with ``KEEPFLOW_DATABASE_URL``,
        any directory: the store lives in the database and the home only holds files)."""
        home = self.home
        where = f"KEEPFLOW_HOME {home}" if home != Path(".keepflow") else f"{home.resolve()}"
        if home.exists() and not home.is_dir():
            raise ConfigError(f"{where} is a file, not a directory: point KEEPFLOW_HOME at a "
                              f"keepflow home directory (see {HOME_DOC})")
        if not home.is_dir():
            raise ConfigError(f"no keepflow home at {where}: run `keepflow init` to create "
                              f"one, or set KEEPFLOW_HOME to an existing home (see {HOME_DOC})")
        if not self.database_url and not self.store_file.is_file():
            raise ConfigError(f"{where} has no keepflow store (keepflow.db): run `keepflow "
                              f"init` there first, or set KEEPFLOW_HOME to an existing home "
                              f"(see {HOME_DOC})")
        return home


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "setting"
        message = str(err["msg"]).removeprefix("Value error, ")
        variable = f"KEEPFLOW_{field.upper()}"
        if variable in message:
            parts.append(message)
        else:
            parts.append(f"{variable}: {message}")
    return "; ".join(parts) + f" — unset it or fix its value (see {HOME_DOC})"
