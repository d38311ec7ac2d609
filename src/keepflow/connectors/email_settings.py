"""Settings of the ``email`` connector (SPEC §9; docs/connectors.md#email): checked when
``connections.toml`` is loaded, each refusal naming its key and never a secret's value."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from keepflow.connectors.email_imap import Endpoint
from keepflow.connectors.email_message import (
    HEADER_FORBIDDEN,
    AddressError,
    Mailbox,
    parse_mailbox,
)
from keepflow.connectors.secret import Secret
from keepflow.connectors.setting_checks import reject_unknown
from keepflow.errors import ConfigError

DOC: Final = "docs/connectors.md#email"
SETTINGS: Final = frozenset({
    "smtp_host", "smtp_port", "smtp_security", "imap_host", "imap_port", "imap_security",
    "username", "password", "from", "sent_folder", "allow_domains", "bcc_self",
    "max_message_bytes", "max_recipients"})
SECURITY: Final = ("starttls", "ssl", "none")
_PORTS: Final = {"smtp": {"starttls": 587, "ssl": 465, "none": 25},
                 "imap": {"starttls": 143, "ssl": 993, "none": 143}}

#: ``max_message_bytes``: what ``read`` fetches of a message and the largest ``send``.
DEFAULT_MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
MIN_MAX_MESSAGE_BYTES: Final = 64 * 1024
MAX_MAX_MESSAGE_BYTES: Final = 25 * 1024 * 1024
DEFAULT_MAX_RECIPIENTS: Final = 50
MAX_MAX_RECIPIENTS: Final = 100
#: Characters of a folder name.
FOLDER_CHARS: Final = 255
_DOMAIN: Final = re.compile(r"(\*\.)?[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
                            r"(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+\Z")


@dataclass(frozen=True)
class Settings:
    """A connection's checked settings (:func:`parse_settings`)."""

    smtp: Endpoint
    imap: Endpoint
    username: str
    password: Secret
    sender: Mailbox
    sent_folder: str
    allow_domains: tuple[str, ...] | None
    bcc_self: bool
    max_message_bytes: int
    max_recipients: int


def parse_settings(settings: Mapping[str, Any]) -> Settings:
    """The checked settings; ConfigError naming the key (never a secret's value)."""
    reject_unknown("email", settings, SETTINGS)
    smtp = _endpoint(settings, "smtp")
    imap = _endpoint(settings, "imap")
    username = settings.get("username")
    if not isinstance(username, str) or not username or len(username) > 320 or \
            HEADER_FORBIDDEN.search(username):
        raise ConfigError("is required: the login name of the mailbox (no control "
                          "characters)", key="username")
    password = settings.get("password")
    if not isinstance(password, Secret):
        raise ConfigError("is required, and never written in connections.toml: store it with "
                          "`keepflow connection add … --secret password` (password_secret) or "
                          f"name an environment variable with password_env ({DOC})",
                          key="password", secret_setting=True)
    if not password.reveal() or HEADER_FORBIDDEN.search(password.reveal()):
        raise ConfigError("must be a non-empty password without control characters",
                          key="password", secret_setting=True)
    try:
        sender = parse_mailbox(settings.get("from"))
    except AddressError as exc:
        raise ConfigError(f"is required: the sender address (\"Name <you@example.com>\" or "
                          f"\"you@example.com\"); {exc}", key="from") from None
    sent = settings.get("sent_folder", "Sent")
    if not isinstance(sent, str) or not sent.strip() or len(sent) > FOLDER_CHARS or \
            HEADER_FORBIDDEN.search(sent):
        raise ConfigError("must name the folder sent messages are kept in (default \"Sent\")",
                          key="sent_folder")
    allow = settings.get("allow_domains")
    domains: tuple[str, ...] | None = None
    if allow is not None:
        if not isinstance(allow, list) or not all(isinstance(d, str) for d in allow):
            raise ConfigError("must be a list of recipient domains, e.g. [\"example.com\", "
                              "\"*.example.org\"]", key="allow_domains")
        domains = tuple(d.strip().lower() for d in allow)
        bad = next((d for d in domains if not _DOMAIN.match(d)), None)
        if bad is not None:
            raise ConfigError(f"{bad[:80]!r} is not a domain (a subdomain wildcard is "
                              "written \"*.example.org\")", key="allow_domains")
    bcc_self = settings.get("bcc_self", False)
    if not isinstance(bcc_self, bool):
        raise ConfigError("must be true or false", key="bcc_self")
    numbers = {}
    for key, default, low, high in (
            ("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES, MIN_MAX_MESSAGE_BYTES,
             MAX_MAX_MESSAGE_BYTES),
            ("max_recipients", DEFAULT_MAX_RECIPIENTS, 1, MAX_MAX_RECIPIENTS)):
        value = settings.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"must be a whole number from {low} to {high}", key=key)
        numbers[key] = value
    return Settings(smtp, imap, username, password, sender, sent, domains, bcc_self,
                     numbers["max_message_bytes"], numbers["max_recipients"])


def _endpoint(settings: Mapping[str, Any], proto: str) -> Endpoint:
    host = settings.get(f"{proto}_host")
    if not isinstance(host, str) or not re.fullmatch(r"[A-Za-z0-9.:\[\]-]{1,253}", host):
        raise ConfigError(f"is required: the {proto.upper()} server's host name or address",
                          key=f"{proto}_host")
    host = host.strip("[]")
    security = settings.get(f"{proto}_security", "starttls")
    if security not in SECURITY:
        raise ConfigError(f"must be one of {list(SECURITY)}", key=f"{proto}_security")
    if security == "none" and not _loopback(host):
        raise ConfigError(f"\"none\" sends the password in clear, so it is only allowed for a "
                          f"server on this machine (localhost, 127.0.0.1, ::1); use "
                          f"\"starttls\" or \"ssl\" for {host}", key=f"{proto}_security")
    port = settings.get(f"{proto}_port", _PORTS[proto][security])
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError("must be a port number from 1 to 65535", key=f"{proto}_port")
    return Endpoint(host, port, security)


def _loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def domain_allowed(domain: str, allowed: tuple[str, ...]) -> bool:
    """Whether ``domain`` is one of ``allowed``: equal to an entry, or below a ``*.`` one."""
    for entry in allowed:
        if entry.startswith("*."):
            if domain.endswith(entry[1:]):
                return True
        elif domain == entry:
            return True
    return False
