"""Which stream hosts the ingestor may open (StartSource with a stream URL), so that it cannot be
made a request proxy into the cluster or to the cloud metadata service.

A stream URL's host is resolved and every address it resolves to must be allowed: inside an
allowed network (``10.0.0.0/8``, ``192.0.2.7``) or reached through an allowed host name
(``camera.local``, ``*.cams.example``), and never inside a denied network (link-local and the
metadata addresses by default), whatever the allow-list says. The URL FFmpeg opens names the
checked address instead of the host name (for rtsp and http: DNS cannot answer differently the
second time); TLS schemes keep the name, which the certificate and SNI need (see docs/security.md).
An empty allow-list allows no stream at all.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit, urlunsplit

from ingestor.errors import BadRequest, SourceUnreachable, StreamHostNotAllowed
from kit.redact import redact_url

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

STREAM_SCHEMES = frozenset({"rtsp", "rtsps", "http", "https"})
_DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
# Pinned to the checked address; TLS schemes keep the host name (certificates, SNI).
_PINNED_SCHEMES = frozenset({"rtsp", "http"})
# Link-local (where cloud metadata services live), the metadata addresses, "this network".
DEFAULT_DENIED = (
    "169.254.0.0/16",
    "fe80::/10",
    "169.254.169.254/32",
    "fd00:ec2::254/128",
    "100.100.100.200/32",
    "0.0.0.0/8",
    "::/128",
)
_HOST_NAME = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?)*$")


def network(entry: str) -> IPNetwork | None:
    """``entry`` as a network (an address is a /32 or /128), None when it is no address."""
    try:
        return ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        return None


def check_entries(entries: Sequence[str], what: str, names: bool) -> list[str]:
    """For settings: each entry an address, a CIDR network or (``names``) a host name or ``*.domain``."""
    for entry in entries:
        if network(entry) is None and not (names and _HOST_NAME.match(entry.lower())):
            kinds = "an IP address, a CIDR network, a host name or *.domain" if names else "an IP address or network"
            raise ValueError(f"{what} entry {entry!r} is not {kinds}")
    return list(entries)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (blocking)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class Target:
    url: str  # what FFmpeg opens: the checked address in place of the host name where possible
    shown: str  # the URL as logged, stored and returned: its password redacted
    addresses: tuple[str, ...]


class StreamPolicy:
    def __init__(
        self, allowed: Sequence[str], denied: Sequence[str] = DEFAULT_DENIED, resolver: Resolver = system_resolver
    ) -> None:
        self._networks = [n for n in map(network, allowed) if n is not None]
        self._names = [e.lower() for e in allowed if network(e) is None]
        self._denied = [n for n in map(network, denied) if n is not None]
        self._resolver = resolver

    def _name_allowed(self, host: str) -> bool:
        return any(host == n or (n.startswith("*.") and host.endswith(n[1:])) for n in self._names)

    def _refusal(self, address: IPAddress, by_name: bool) -> str | None:
        if any(address.version == n.version and address in n for n in self._denied):
            return "is in a denied network (link-local or a metadata address: --stream-denied-networks)"
        if by_name or any(address.version == n.version and address in n for n in self._networks):
            return None
        return "is not in --stream-allowed-hosts"

    def check(self, url: str) -> Target:
        """The URL to open for ``url``; raises BadRequest, SourceUnreachable or StreamHostNotAllowed.
        Blocking (DNS): run it in a thread."""
        shown = redact_url(url)
        try:
            parts = urlsplit(url)
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower(), 0)
        except ValueError as exc:
            raise BadRequest(f"stream uri {shown!r} is not a URL: {exc}", field="spec.uri") from None
        scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
        if scheme not in STREAM_SCHEMES or not host:
            raise BadRequest(
                f"stream uri {shown!r} must start with one of {', '.join(sorted(STREAM_SCHEMES))}:// and name a host",
                field="spec.uri",
            )
        if not self._networks and not self._names:
            raise StreamHostNotAllowed(
                f"stream {shown} refused: this ingestor allows no stream hosts (set --stream-allowed-hosts)",
                field="spec.uri",
            )
        literal = network(host)
        try:
            addresses = [host] if literal is not None else self._resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise SourceUnreachable(f"cannot resolve the host of stream {shown}: {exc}") from None
        if not addresses:
            raise SourceUnreachable(f"the host of stream {shown} resolves to no address")
        by_name = literal is None and self._name_allowed(host)
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
            refusal = self._refusal(address, by_name)
            if refusal is not None:
                raise StreamHostNotAllowed(
                    f"stream {shown} refused: {host} address {address} {refusal}", field="spec.uri"
                )
        return Target(_pinned(url, parts, scheme, addresses[0]), shown, tuple(addresses))


def _pinned(url: str, parts: SplitResult, scheme: str, address: str) -> str:
    """``url`` with the host replaced by the checked ``address`` (userinfo and port kept)."""
    if scheme not in _PINNED_SCHEMES or network(parts.hostname or "") is not None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    host = f"[{address}]" if ":" in address else address
    port = hostport.rsplit(":", 1)[1] if hostport.rfind(":") > hostport.rfind("]") else ""
    pinned = (f"{userinfo}@" if userinfo else "") + host + (f":{port}" if port else "")
    return urlunsplit(parts._replace(netloc=pinned))
