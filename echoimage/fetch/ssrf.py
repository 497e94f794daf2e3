"""Server-side request forgery guard for the fetches a server makes for its users (URL
queries, pages and images added over the HTTP API).

A URL query makes the server fetch a URL of the user's choosing, so every URL of the redirect
chain is vetted before it is requested (`UrlPolicy.check`, the Fetcher's ``check_url`` hook):
only http(s), and the host must resolve to public addresses only. If ANY address of the host
is loopback, private, link-local, multicast, reserved, unspecified, shared (CGNAT) or a cloud
metadata endpoint, the URL is refused, unless the allow-list permits it. IPv4 addresses
embedded in IPv6 (IPv4-mapped, 6to4, NAT64) are judged as the IPv4 address.

The same policy also runs inside the HTTP client's DNS resolver (`GuardedResolver`), so the
address actually connected to is the vetted one even if the name is re-resolved in between
(DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Self

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from echoimage.fetch.client import AddressRefused, FetchConfig, Fetcher, scheme_refusal

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: instance metadata services: AWS/GCP/Azure/OpenStack, AWS IPv6, AWS ECS, Alibaba Cloud
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a) for a in (
        "169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200",
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, 6to4 or NAT64 IPv6 address."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_problem(ip: IPAddress) -> str | None:
    """Why a server-side fetch must not connect to ip, or None for a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            problem = address_problem(inner)
            return f"{problem} (embedded in {ip})" if problem else None
    if ip in METADATA_ADDRESSES:
        return "cloud metadata address"
    if ip.is_unspecified:
        return "unspecified address"
    if ip.is_loopback:
        return "loopback address"
    if ip.is_link_local:
        return "link-local address"
    if ip.is_multicast:
        return "multicast address"
    if ip.is_private:
        return "private address"
    if ip.is_reserved:
        return "reserved address"
    if not ip.is_global:
        return "non-public address"
    return None


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None


@dataclass(frozen=True)
class AllowList:
    """Hosts (optionally with a port) and networks a URL query may reach although private."""

    hosts: frozenset[tuple[str, int | None]] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Self:
        """Entries: ``host``, ``host:port``, ``[v6]:port``, an IP address or a CIDR network."""
        hosts: set[tuple[str, int | None]] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            host, port = entry, None
            if entry.startswith("["):
                end = entry.find("]")
                if end < 0:
                    raise ValueError(f"bad allow-list entry {raw!r}")
                host, rest = entry[1:end], entry[end + 1:]
                if rest:
                    if not rest.startswith(":") or not rest[1:].isdigit():
                        raise ValueError(f"bad allow-list entry {raw!r}")
                    port = int(rest[1:])
            elif entry.count(":") == 1:
                host, _, p = entry.partition(":")
                if not p.isdigit():
                    raise ValueError(f"bad allow-list entry {raw!r}")
                port = int(p)
            if not host or any(c.isspace() or c in "/?#@" for c in host):
                raise ValueError(f"bad allow-list entry {raw!r}")
            hosts.add((host.rstrip("."), port))
        return cls(frozenset(hosts), tuple(networks))

    def permits_host(self, host: str, port: int | None) -> bool:
        """True when the URL's host (and port) is allow-listed by name."""
        h = host.lower().rstrip(".").strip("[]")
        return (h, None) in self.hosts or (port is not None and (h, port) in self.hosts)

    def permits_address(self, ip: IPAddress) -> bool:
        """True when ip lies in an allow-listed network."""
        return any(ip.version == net.version and ip in net for net in self.networks)


class UrlPolicy:
    """Vets URLs and resolved addresses for server-side fetches. hint: said after a
    refused address (how the operator allows it, where that is theirs to say)."""

    def __init__(self, allow: AllowList | None = None, hint: str = "") -> None:
        self.allow = allow or AllowList()
        self.hint = hint

    def refusal(self, host: str, port: int | None, addresses: Iterable[IPAddress]) -> str | None:
        """Why host:port must not be fetched given its addresses, or None."""
        if self.allow.permits_host(host, port):
            return None
        addresses = list(addresses)
        if not addresses:
            return f"{host} has no address"
        for ip in addresses:
            problem = address_problem(ip)
            if problem is not None and not self.allow.permits_address(ip):
                hint = f" ({self.hint})" if self.hint else ""
                if str(ip) == host.strip("[]"):
                    return f"{ip} is a {problem}{hint}"
                return f"{host} resolves to {ip}, a {problem}{hint}"
        return None

    async def check(self, url: str) -> str | None:
        """The Fetcher's ``check_url`` hook: a refusal reason, or None when url may be fetched.

        Called for the first URL and for every redirect target.
        """
        try:
            parsed = URL(url)
        except (TypeError, ValueError):
            return "malformed URL"
        scheme = (parsed.scheme or "").lower()
        if scheme not in _DEFAULT_PORTS:
            return scheme_refusal(url, scheme)
        host = parsed.raw_host or ""
        if not host:
            return "URL has no host"
        if parsed.user or parsed.password:
            return "URLs with credentials are not fetched"
        port = parsed.port or _DEFAULT_PORTS[scheme]
        if self.allow.permits_host(host, port):
            return None
        literal = _parse_ip(host.strip("[]"))
        if literal is not None:
            return self.refusal(host, port, [literal])
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            return f"cannot resolve {host}: {exc}"
        addresses = [ip for info in infos if (ip := _parse_ip(str(info[4][0]))) is not None]
        return self.refusal(host, port, addresses)


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that refuses names resolving to addresses the policy forbids."""

    def __init__(self, policy: UrlPolicy) -> None:
        self.policy = policy
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        """Resolve host, then refuse the lot if any address is forbidden."""
        results = await self._inner.resolve(host, port, family)
        addresses = [ip for r in results if (ip := _parse_ip(r["host"])) is not None]
        refusal = self.policy.refusal(host, port or None, addresses)
        if refusal is not None:
            raise AddressRefused(f"refused: {refusal}")
        return results

    async def close(self) -> None:
        """Close the wrapped resolver."""
        await self._inner.close()


class GuardedFetcher(Fetcher):
    """A Fetcher whose connections go through `GuardedResolver` and whose URLs are vetted.

    Fetcher builds its own connector, so this subclass re-creates the session with the
    guarded resolver; everything else (redirect handling, caps, sniffing) is Fetcher's.
    """

    def __init__(self, config: FetchConfig, policy: UrlPolicy) -> None:
        super().__init__(config, check_url=policy.check)
        self.policy = policy

    async def __aenter__(self) -> Self:
        cfg = self.config
        connector = aiohttp.TCPConnector(limit=cfg.concurrency, limit_per_host=cfg.per_host,
                                         resolver=GuardedResolver(self.policy))
        timeout = aiohttp.ClientTimeout(total=cfg.total_timeout, sock_connect=cfg.connect_timeout,
                                        sock_read=cfg.read_timeout)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers={"User-Agent": cfg.user_agent},
            auto_decompress=True, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
        )
        return self
