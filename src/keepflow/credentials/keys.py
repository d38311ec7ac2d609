"""The home's key that seals connection secrets: ``KEEPFLOW_SECRET_KEY``, else the file
``$KEEPFLOW_HOME/secret.key`` (made on first need, readable by this user only).

Whoever can read the key and the store can read every secret: the key file is refused when
its mode lets another user read it, and ``KEEPFLOW_SECRET_KEY`` lets the key live apart from
the store (a secrets manager, a separate volume)."""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from keepflow.errors import ConfigError

ENV = "KEEPFLOW_SECRET_KEY"
FILE = "secret.key"
DOC = "docs/security.md#secrets"


def key_file(home: Path) -> Path:
    return home / FILE


def _checked(text: str, where: str) -> bytes:
    raw = text.strip().encode("ascii", "replace")
    try:
        ok = len(base64.urlsafe_b64decode(raw)) == 32
    except (binascii.Error, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{where} is not a keepflow secret key (32 bytes, URL-safe base64, "
                          f"as `keepflow init` writes it); see {DOC}")
    return raw


def load_key(home: Path, *, create: bool, environ: dict[str, str] | None = None) -> bytes | None:
    """The key; None when there is none yet and ``create`` is false (nothing was sealed)."""
    env = os.environ if environ is None else environ
    if env.get(ENV):
        return _checked(env[ENV], ENV)
    path = key_file(home)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return _create(path) if create else None
    except OSError as exc:
        raise ConfigError(f"cannot read the secret key {path}: {exc.strerror}; see {DOC}"
                          ) from None
    with os.fdopen(fd, "r", encoding="ascii", errors="replace") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"the secret key {path} is not a regular file; see {DOC}")
        if st.st_mode & 0o077:
            raise ConfigError(f"the secret key {path} can be read by other users (mode "
                              f"{stat.S_IMODE(st.st_mode):o}); run `chmod 600 {path}`; see {DOC}")
        return _checked(f.read(), str(path))


def _create(path: Path) -> bytes:
    key = base64.urlsafe_b64encode(os.urandom(32))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:  # made meanwhile by another process: use that one
        return load_key(path.parent, create=False) or key
    except OSError as exc:
        raise ConfigError(f"cannot write the secret key {path}: {exc.strerror}; see {DOC}"
                          ) from None
    with os.fdopen(fd, "wb") as f:
        f.write(key + b"\n")
        f.flush()
        os.fsync(f.fileno())
    return key
