"""Fetching an image URL from a chat message (`atelier serve --allow-remote-images` only).

A server that fetches URLs its users name can be turned against the network it stands in
(server-side request forgery): `http://127.0.0.1:…/admin`, `http://169.254.169.254/` (cloud
metadata), a name that resolves to a private address, a public URL that redirects to one. So
`fetch_remote_image`:

- takes only `http`/`https` URLs without user info;
- resolves the host the way the OS would connect (`getaddrinfo`, so `2130706433`, `127.1` and
  `0x7f.1` are 127.0.0.1) and refuses the URL if *any* address is not globally routable: loopback,
  private, shared (CGNAT), link-local, multicast, reserved, unspecified, documentation ranges,
  IPv6 site-local and unique-local, and IPv4 addresses hidden in IPv6 (`::ffff:127.0.0.1`, 6to4
  `2002::/16`, NAT64 `64:ff9b::/96`) are judged as the IPv4 address they carry; an operator's
  `allowed_networks` (CIDRs) are let through;
- connects to the address it checked (the request goes to the IP, with the `Host` header and,
  for https, the TLS server name of the URL's host), so a second DNS answer cannot swap it;
- follows at most `max_redirects` redirects itself, checking every hop the same way;
- runs under one deadline for everything (DNS, connect, redirects, body) and stops reading at
  `max_bytes` (a larger `Content-Length` is refused before the body is read).

Every failure raises `RemoteImageError` with the same message, whatever happened: a user cannot
tell a refused address from a closed port, a 404 or a timeout, so the fetcher cannot be used to
map internal services. What happened is logged on the server (INFO).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections.abc import Iterable
from typing import Union

import httpx

from tools.errors import AtelierError

log = logging.getLogger(__name__)

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_CHUNK = 64 * 1024


class RemoteImageError(AtelierError):
    """A remote image URL that was not fetched (for any reason: the message never says which)."""

    code = "remote_image_unavailable"
    http_status = 400


def failure_message(name: str, max_bytes: int) -> str:
    """The one text every failure of a fetch shows the user."""
    return (f"{name}: the remote image could not be fetched (only public http(s) images up to "
            f"{max_bytes / 2**20:.3g} MB are fetched; or send it as a data: URL)")


class _Refused(Exception):
    """Why a fetch stopped, for the server log only."""


def parse_networks(networks: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    """CIDR strings (`"10.1.2.0/24"`, `"127.0.0.1/32"`, `"fd00::/8"`) -> networks; ValueError if malformed."""
    return tuple(n if isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network))
                 else ipaddress.ip_network(str(n).strip(), strict=False) for n in networks)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), else None."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(ip: IPAddress) -> bool:
    """True for a globally routable unicast address (what a public image host has)."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            return is_public_address(inner)
        if ip.is_site_local or ip.teredo is not None:
            return False
    return bool(ip.is_global and not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                                      or ip.is_reserved or ip.is_unspecified))


def address_allowed(ip: IPAddress, allowed: tuple[IPNetwork, ...] = ()) -> bool:
    """Public, or inside one of the operator's `allowed` networks."""
    candidates = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates.append(ip.ipv4_mapped)
    if any(c.version == net.version and c in net for c in candidates for net in allowed):
        return True
    return is_public_address(ip)


def _host(url: httpx.URL) -> str:
    """The host as sent on the wire: IDNA-encoded, IPv6 without brackets."""
    return url.raw_host.decode("ascii")


def _check_url(url: httpx.URL) -> None:
    if url.scheme not in ("http", "https"):
        raise _Refused(f"scheme {url.scheme!r}")
    if url.userinfo:
        raise _Refused("user info in the URL")
    if not url.raw_host:
        raise _Refused("no host")


async def _resolve(host: str, port: int, allowed: tuple[IPNetwork, ...]) -> IPAddress:
    """Every address `host` resolves to must be allowed; returns the one to connect to."""
    loop = asyncio.get_running_loop()
    try:  # the loop runs getaddrinfo in a worker thread
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as err:
        raise _Refused(f"cannot resolve {host!r}: {err}") from None
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])  # drop an IPv6 zone id
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise _Refused(f"{host!r} resolves to nothing")
    refused = [str(ip) for ip in addresses if not address_allowed(ip, allowed)]
    if refused:
        raise _Refused(f"{host!r} resolves to a non-public address ({', '.join(refused)})")
    return addresses[0]


def _pinned_request(client: httpx.AsyncClient, url: httpx.URL, ip: IPAddress) -> httpx.Request:
    """A GET to `ip` that says `url`'s host in the Host header and, for https, in TLS (SNI and the
    certificate check)."""
    host = _host(url)
    host_header = f"[{host}]" if ":" in host else host
    if url.port is not None:
        host_header += f":{url.port}"
    target = url.copy_with(host=str(ip))
    extensions = {"sni_hostname": host} if url.scheme == "https" else {}
    return client.build_request("GET", target, headers={"Host": host_header, "Accept": "image/*",
                                                        "Accept-Encoding": "identity"},
                                extensions=extensions)


async def _fetch(url: httpx.URL, *, max_bytes: int, max_redirects: int, allowed: tuple[IPNetwork, ...],
                 client: httpx.AsyncClient) -> bytes:
    for _hop in range(max_redirects + 1):
        _check_url(url)
        port = url.port or (443 if url.scheme == "https" else 80)
        ip = await _resolve(_host(url), port, allowed)
        response = await client.send(_pinned_request(client, url, ip), stream=True)
        try:
            if response.status_code in REDIRECT_STATUSES:
                location = response.headers.get("location")
                if not location:
                    raise _Refused(f"HTTP {response.status_code} without a Location")
                url = url.join(location)  # relative to the URL as named, not to the pinned IP
                continue
            if response.status_code != 200:
                raise _Refused(f"HTTP {response.status_code}")
            declared = response.headers.get("content-length")
            if declared is not None and (not declared.strip().isdigit() or int(declared) > max_bytes):
                raise _Refused(f"Content-Length {declared} over {max_bytes}")
            data = bytearray()
            async for chunk in response.aiter_bytes(_CHUNK):  # decoded: the cap is on what is kept
                data += chunk
                if len(data) > max_bytes:
                    raise _Refused(f"body over {max_bytes} bytes")
            return bytes(data)
        finally:
            await response.aclose()
    raise _Refused(f"more than {max_redirects} redirects")


async def fetch_remote_image(url: str, *, max_bytes: int, deadline_s: float, max_redirects: int = 3,
                             allowed_networks: Iterable[str | IPNetwork] = (), name: str = "image") -> bytes:
    """The bytes at `url`, fetched only from public addresses (or `allowed_networks`), within
    `deadline_s` seconds in all and `max_bytes`; else `RemoteImageError` (one text for every cause).

    `name` starts the message ("image 2: ..."). Raises ValueError for a malformed `allowed_networks`
    entry (a configuration error, not the user's)."""
    allowed = parse_networks(allowed_networks)
    # the log gets no user info, query or fragment (they may carry credentials or tokens)
    where = re.sub(r"//[^/?#]*@", "//", re.split(r"[?#]", str(url), maxsplit=1)[0])[:200]
    try:
        async with asyncio.timeout(deadline_s):
            parsed = httpx.URL(url)
            # no proxies from the environment (the address check is of the host we connect to),
            # no automatic redirects (every hop is checked), the deadline above bounds everything
            # and no kept-alive connections (a redirect to another host on the same IP gets its own TLS)
            async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=deadline_s,
                                         limits=httpx.Limits(max_keepalive_connections=0)) as client:
                return await _fetch(parsed, max_bytes=max_bytes, max_redirects=max_redirects, allowed=allowed,
                                    client=client)
    except _Refused as why:
        log.info("remote image %s not fetched: %s", where, why)
    except TimeoutError:
        log.info("remote image %s not fetched: over the %.3g s deadline", where, deadline_s)
    except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError, UnicodeError) as err:
        log.info("remote image %s not fetched: %s: %s", where, type(err).__name__, err)
    raise RemoteImageError(failure_message(name, max_bytes))
