"""Where an ``http`` connection may connect to: the address policy (SPEC §9, docs/security.md).

Scripts are untrusted, so is every server they talk to. Without this policy a script could
reach the host's own services — ``keepflow serve`` on ``127.0.0.1`` (read every workflow's
status, trigger a paused workflow), a database, the cloud metadata service at
``169.254.169.254`` — simply by naming them in a URL or by redirecting a read there.

The rule, per connection:

* Its ``base_url`` origin and its ``proxy`` are configured by a person: always reachable.
* With an ``allow`` list, the connection may reach **only** those exact origins (scheme, host,
  port) and its ``base_url`` origin, whatever their addresses.
* Without one, it may reach any **public** address, and nothing else: no loopback,
  unspecified, link-local (the metadata service), private, CGNAT, multicast, broadcast,
  reserved or documentation address, no IPv6 form that embeds one, no address of this
  machine, no local name (``localhost``, ``*.internal``, ``metadata.google.internal``, …).

This module holds the pure decisions (host parsing, address classes, the policy object);
:mod:`keepflow.connectors.http_transport` applies them to the socket actually connected.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``(host, port) -> addresses``: the one DNS lookup of a connection (tests may pass their own).
Resolver = Callable[[str, int], list[str]]

DOCS: Final = "docs/security.md#network-egress"
DEFAULT_PORTS: Final = {"http": 80, "https": 443}

# Address classes, as named in messages and in the ``refused`` detail of the error.
LOOPBACK = "loopback"
UNSPECIFIED = "unspecified"
LINK_LOCAL = "link-local"
PRIVATE = "private"
SHARED = "shared"  # 100.64.0.0/10, carrier-grade NAT
MULTICAST = "multicast"
BROADCAST = "broadcast"
RESERVED = "reserved"
DOCUMENTATION = "documentation"
THIS_HOST = "this-host"
LOCAL_NAME = "local-name"
METADATA = "metadata"
INVALID = "invalid-host"
NOT_ALLOWED = "not-allowed"
UNRESOLVED = "unresolved"

_WHAT: Final = {
    LOOPBACK: "a loopback address (this machine)",
    UNSPECIFIED: "the unspecified address (this machine)",
    LINK_LOCAL: "a link-local address (where the cloud metadata service lives)",
    PRIVATE: "a private-network address",
    SHARED: "a shared (carrier-grade NAT) address",
    MULTICAST: "a multicast address",
    BROADCAST: "the broadcast address",
    RESERVED: "a reserved, non-public address",
    DOCUMENTATION: "a documentation-only address",
    THIS_HOST: "an address of this machine",
    LOCAL_NAME: "a local host name",
    METADATA: "a cloud metadata service name",
    INVALID: "not a valid public host name",
}


def _nets(*pairs: tuple[str, str]) -> tuple[tuple[ipaddress.IPv4Network |
                                                   ipaddress.IPv6Network, str], ...]:
    return tuple((ipaddress.ip_network(net), cls) for net, cls in pairs)


# IANA special-purpose registries (RFC 6890 and successors). Order matters: first match wins.
_V4_BLOCKS: Final = _nets(
    ("0.0.0.0/8", UNSPECIFIED), ("10.0.0.0/8", PRIVATE), ("100.64.0.0/10", SHARED),
    ("127.0.0.0/8", LOOPBACK), ("169.254.0.0/16", LINK_LOCAL), ("172.16.0.0/12", PRIVATE),
    ("192.0.0.0/24", RESERVED), ("192.0.2.0/24", DOCUMENTATION), ("192.88.99.0/24", RESERVED),
    ("192.168.0.0/16", PRIVATE), ("198.18.0.0/15", RESERVED),
    ("198.51.100.0/24", DOCUMENTATION), ("203.0.113.0/24", DOCUMENTATION),
    ("224.0.0.0/4", MULTICAST), ("255.255.255.255/32", BROADCAST), ("240.0.0.0/4", RESERVED),
)
_V6_BLOCKS: Final = _nets(
    ("::/128", UNSPECIFIED), ("::1/128", LOOPBACK), ("64:ff9b:1::/48", PRIVATE),
    ("100::/64", RESERVED), ("2001::/23", RESERVED), ("2001:db8::/32", DOCUMENTATION),
    ("3fff::/20", DOCUMENTATION), ("fc00::/7", PRIVATE), ("fe80::/10", LINK_LOCAL),
    ("fec0::/10", PRIVATE), ("ff00::/8", MULTICAST),
)
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPATIBLE: Final = ipaddress.ip_network("::/96")
_GLOBAL_UNICAST: Final = ipaddress.ip_network("2000::/3")

#: Names that always mean "this machine" or "the cloud's metadata service".
_LOCAL_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost",
                                 "ip6-loopback", "localdomain"})
_LOCAL_SUFFIXES: Final = (".localhost", ".local", ".localdomain", ".internal", ".home.arpa",
                          ".lan", ".intranet", ".corp")
_METADATA_NAMES: Final = frozenset({"metadata", "metadata.google.internal", "metadata.goog",
                                    "instance-data", "instance-data.ec2.internal"})
_LABEL: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")
_NUMERIC_LABEL: Final = re.compile(r"(?:0[xX][0-9a-fA-F]*|[0-9]+)\Z")


class EgressRefused(Exception):
    """A destination the connection may not reach. Raised before any byte is sent.

    Internal to the http connector: it crosses httpcore's connection pool unchanged and
    becomes a :class:`~keepflow.errors.PermissionDenied` in :mod:`keepflow.connectors.http`.
    """

    def __init__(self, origin: str, refused: str, detail: str) -> None:
        super().__init__(f"{origin}: {detail}")
        self.origin = origin
        self.refused = refused
        self.detail = detail


@dataclass(frozen=True, order=True)
class Origin:
    """``scheme://host:port`` with the port made explicit."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: httpx.URL) -> Origin:
        port = url.port or DEFAULT_PORTS.get(url.scheme, 0)
        return cls(url.scheme, url.raw_host.decode("ascii", "replace"), port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = DEFAULT_PORTS.get(self.scheme)
        return f"{self.scheme}://{host}" + ("" if self.port == default else f":{self.port}")


def parse_origin(raw: str) -> Origin:
    """An ``allow`` entry: exactly ``scheme://host[:port]``. Raises ``ValueError`` (why)."""
    try:
        url = httpx.URL(raw)
        url.host  # noqa: B018 - decodes an IDNA name: "xn--localhost" raises here
    except (httpx.InvalidURL, UnicodeError, ValueError):
        raise ValueError("is not a valid URL") from None
    if url.scheme not in DEFAULT_PORTS or not url.raw_host:
        raise ValueError("must start with http:// or https:// and name a host")
    if url.userinfo or url.query or url.fragment or url.path not in ("", "/") or "*" in raw:
        raise ValueError("must be an origin only: scheme, host and optional port — no path, "
                         "query, credentials or wildcards")
    origin = Origin.of(url)
    host = origin.host
    if classify_host(host)[0] == INVALID:
        raise ValueError("does not name a valid host")
    if ":" not in host and _NUMERIC_LABEL.match(host.rsplit(".", 1)[-1]):
        ip = parse_ipv4(host)
        if ip is None or str(ip) != host:
            raise ValueError("writes an IPv4 address in an unusual form; use dotted decimal "
                             "such as 127.0.0.1")
    return origin


def parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """``host`` read the way ``inet_aton`` (and browsers) read it, or ``None`` if not numeric.

    ``2130706433``, ``0x7f.1``, ``0177.0.0.1`` and ``127.1`` all mean 127.0.0.1 to the C
    library that resolves names, so the policy must read them the same way.
    """
    host = host[:-1] if host.endswith(".") else host
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers = []
    for part in parts:
        if not _NUMERIC_LABEL.match(part):
            return None
        if part[:2] in ("0x", "0X"):
            numbers.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            if any(d in "89" for d in part):
                return None
            numbers.append(int(part, 8))
        else:
            numbers.append(int(part))
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for i, n in enumerate(head):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def classify_address(ip: IPAddress) -> str | None:
    """The class of a non-public address, or ``None`` when ``ip`` is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return classify_address(embedded)
        if ip in _V4_COMPATIBLE:  # deprecated ::a.b.c.d, and :: / ::1 themselves
            for net, cls in _V6_BLOCKS[:2]:
                if ip in net:
                    return cls
            return classify_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)) or RESERVED
        blocks = _V6_BLOCKS
    else:
        blocks = _V4_BLOCKS
    for net, cls in blocks:
        if ip in net:
            return cls
    if isinstance(ip, ipaddress.IPv6Address) and ip not in _GLOBAL_UNICAST:
        return RESERVED
    return None if ip.is_global else RESERVED  # whatever else Python's tables know


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, NAT64 or 6to4 address (they reach it)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def classify_host(host: str) -> tuple[str | None, IPAddress | None]:
    """(refused class or ``None``, the literal address if ``host`` is one) — no DNS lookup.

    ``host`` is a URL's host as httpx gives it (lower-case, IDNA-encoded, no brackets).
    """
    name = host.rstrip(".") if host.endswith(".") and not host.endswith("..") else host
    if not name:
        return INVALID, None
    if ":" in name:
        try:
            ip: IPAddress = ipaddress.IPv6Address(name)
        except ValueError:
            return INVALID, None
        return classify_address(ip), ip
    if _NUMERIC_LABEL.match(name.rsplit(".", 1)[-1]):
        v4 = parse_ipv4(name)
        if v4 is None:  # "1.2.3.4.5", "0999": numeric, yet no address: never a real name
            return INVALID, None
        return classify_address(v4), v4
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        return INVALID, None  # percent-encoded, empty labels, odd characters
    if name in _METADATA_NAMES:
        return METADATA, None
    if name in _LOCAL_NAMES or name.endswith(_LOCAL_SUFFIXES) or len(labels) == 1:
        return LOCAL_NAME, None
    return None, None


def is_own_address(ip: IPAddress) -> bool:
    """Whether ``ip`` belongs to an interface of this machine (its public IP included).

    Binding a socket to an address succeeds only for local addresses: a portable way to ask,
    and nothing is sent. A host serving keepflow on ``0.0.0.0`` is reachable on its public
    address too; this keeps scripts off it.
    """
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        probe = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        return False
    with contextlib.closing(probe):
        try:
            probe.bind((str(ip), 0))
        except OSError:
            return False
    return True


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, in the order the system gives (one lookup)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for _family, _type, _proto, _canon, sockaddr in infos:
        seen[str(sockaddr[0])] = None
    return list(seen)


class EgressPolicy:
    """The destinations of one connection (see the module docstring).

    ``explicit``: origins a person configured (``base_url``, ``allow``); ``restricted``: an
    ``allow`` list exists, so *only* explicit origins are reachable; ``proxy``: the address
    of a configured proxy, which is what the transport then connects to.
    """

    def __init__(self, *, explicit: Iterable[Origin] = (), restricted: bool = False,
                 proxy: Origin | None = None, resolver: Resolver = system_resolver) -> None:
        self.explicit = frozenset(explicit)
        self.restricted = restricted
        self.proxy = proxy
        self.resolve = resolver
        self._explicit_sockets = {(o.host, o.port) for o in self.explicit}
        if proxy is not None:
            self._explicit_sockets.add((proxy.host, proxy.port))

    def check_url(self, url: httpx.URL) -> None:
        """Refuse ``url`` before a request for it is sent (every request, every redirect hop).

        Without a proxy, a name passes here and its addresses are vetted where the socket is
        opened (:meth:`vet`). With a proxy, the proxy opens that socket, so the name is
        resolved and vetted here (the proxy may still resolve it differently: see
        docs/security.md#network-egress).
        """
        origin = Origin.of(url)
        if origin in self.explicit:
            return
        if self.restricted:
            raise EgressRefused(str(origin), NOT_ALLOWED,
                                "it is not in the connection's allow list")
        refused, _ip = classify_host(origin.host)
        if refused is not None:
            raise EgressRefused(str(origin), refused, f"{origin.host} is {_WHAT[refused]}")
        if self.proxy is not None:
            self._vetted_addresses(str(origin), origin.host, origin.port, via_proxy=True)

    def vet(self, host: str, port: int) -> list[str] | None:
        """The addresses to connect to for ``host:port``, all public; ``None`` means the
        destination was configured explicitly (connect to it as usual)."""
        if (host, port) in self._explicit_sockets:
            return None
        if self.restricted:  # check_url refused it already; never connect anyway
            raise EgressRefused(f"{host}:{port}", NOT_ALLOWED,
                                "it is not in the connection's allow list")
        return self._vetted_addresses(f"{host}:{port}", host, port, via_proxy=False)

    def _vetted_addresses(self, where: str, host: str, port: int, *,
                          via_proxy: bool) -> list[str]:
        refused, ip = classify_host(host)
        if refused is not None:
            raise EgressRefused(where, refused, f"{host} is {_WHAT[refused]}")
        if ip is not None:
            addresses = [str(ip)]
        else:
            try:
                addresses = self.resolve(host, port)
            except OSError as exc:
                if via_proxy:  # fail closed: we cannot tell where the proxy would go
                    raise EgressRefused(where, UNRESOLVED,
                                        f"{host} does not resolve here ({exc}), so it cannot "
                                        "be checked before it is handed to the proxy") from None
                raise
            if not addresses:
                raise OSError(f"{host} has no addresses")
        for address in addresses:
            try:
                resolved = ipaddress.ip_address(address.split("%", 1)[0])
            except ValueError:
                raise EgressRefused(where, INVALID, f"{host} resolved to an unreadable "
                                    "address") from None
            cls = classify_address(resolved)
            if cls is None and is_own_address(resolved):
                cls = THIS_HOST
            if cls is not None:
                shown = host if ip is not None else f"{host} resolves to {resolved}, which"
                raise EgressRefused(where, cls, f"{shown} is {_WHAT[cls]}")
        return addresses

    def advice(self, connection: str, refused: EgressRefused) -> str:
        """What a person can do about ``refused`` (the second half of the error message)."""
        if refused.refused == INVALID:
            return (f"write the URL's host as a plain DNS name or IP address (see {DOCS})")
        scope = ("only the origins in its allow list" if self.restricted
                 else "only public addresses")
        return (f"connection '{connection}' may reach {scope}. If this destination is meant "
                f"to be reachable, add allow = [\"{refused.origin}\"] to "
                f"[connections.{connection}] in connections.toml (see {DOCS})")
