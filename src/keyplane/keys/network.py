"""Client addresses and IP allowlists (BRIEF C2).

The client address is the socket's peer, or — only when that peer is a trusted proxy — taken from
``X-Forwarded-For`` walked right to left, skipping trusted proxies: the first untrusted hop is the
client. (The leftmost entry is whatever the client chose to send, so it is never trusted.)
IPv4-mapped IPv6 addresses (``::ffff:1.2.3.4``) count as their IPv4 address.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


MAX_ALLOWLIST = 1000  # networks in one allowlist


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """Parses CIDRs (a bare address is a /32 or /128); raises ValueError naming a bad one. An
    IPv4-mapped IPv6 range (``::ffff:10.0.0.0/104``) is its IPv4 range, as addresses are."""
    out = []
    for text in cidrs:
        try:
            net = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise ValueError(f"'{text}' is not an IP address or CIDR range.") from None
        mapped = net.network_address.ipv4_mapped if net.version == 6 else None
        if mapped is not None and net.prefixlen >= 96:
            net = ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}")
        out.append(net)
    return tuple(out)


def allowlist(cidrs: Sequence[str] | None) -> tuple[str, ...] | None:
    """An IP allowlist as stored: None (any address), or its networks, normalized and each once.
    Raises ValueError for a malformed entry, too many, or an empty list (which would read as
    "any address" to some and "none" to others: null says the first, deleting the key the
    second)."""
    if cidrs is None:
        return None
    if not cidrs:
        raise ValueError(
            "An IP allowlist needs at least one address or range; send null to allow any address."
        )
    if len(cidrs) > MAX_ALLOWLIST:
        raise ValueError(f"An IP allowlist holds at most {MAX_ALLOWLIST:,} addresses or ranges.")
    return tuple(dict.fromkeys(str(n) for n in parse_networks(cidrs)))


@functools.lru_cache(maxsize=4096)
def cached_networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    """``parse_networks`` for stored (already validated) lists: parsed once, not per request."""
    return parse_networks(cidrs)


@functools.lru_cache(maxsize=4096)  # a gateway sees the same few addresses over and over
def parse_address(text: str | None) -> Address | None:
    """An address as a socket or a proxy's X-Forwarded-For gives it: ``1.2.3.4``, ``::1``,
    ``[::1]``, and with a port as some proxies add one (``1.2.3.4:5555``, ``[::1]:5555``)."""
    if not text:
        return None
    text = text.strip()
    if (text.startswith("[") and "]:" in text) or text.count(":") == 1:
        text, _, port = text.rpartition(":")
        if not port.isascii() or not port.isdigit() or len(port) > 5:
            return None
    try:
        addr = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def allowed(addr: Address | None, networks: Sequence[Network] | None) -> bool:
    """An empty or absent list allows everyone; otherwise the address must be in one network."""
    if not networks:
        return True
    return addr is not None and any(addr in net for net in networks if addr.version == net.version)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]
) -> Address | None:
    """The client's address, trusting X-Forwarded-For only from (and through) trusted proxies."""
    addr = parse_address(peer)
    if forwarded_for is None or not allowed_nonempty(addr, trusted):
        return addr
    for hop in reversed([h for h in forwarded_for.split(",") if h.strip()]):
        hop_addr = parse_address(hop)
        if hop_addr is None:
            return None  # a malformed hop: the client is unknown (fails any allowlist)
        addr = hop_addr
        if not allowed_nonempty(addr, trusted):
            return addr
    return addr


def forwarded_for(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Every ``X-Forwarded-For`` header of a request (ASGI headers), joined in order as one list:
    reading only the first would trust a client's own header when a proxy adds its hop as a
    header of its own."""
    values = [value for name, value in headers if name == b"x-forwarded-for"]
    return b",".join(values).decode("latin-1") if values else None


def allowed_nonempty(addr: Address | None, networks: Sequence[Network]) -> bool:
    return bool(networks) and allowed(addr, networks)
