"""Client addresses and allowlists (keys/network.py) and permissions (keys/permissions.py)."""

from __future__ import annotations

import pytest

from keyplane.keys import network, permissions
from keyplane.keys.permissions import Access, Group

PROXIES = network.parse_networks(["10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize(
    ("peer", "xff", "client"),
    [
        ("203.0.113.9", None, "203.0.113.9"),
        ("203.0.113.9", "1.2.3.4", "203.0.113.9"),  # an untrusted peer's XFF is ignored
        ("10.0.0.5", "1.2.3.4", "1.2.3.4"),
        (
            "10.0.0.5",
            "6.6.6.6, 1.2.3.4",
            "1.2.3.4",
        ),  # the client's own claim (leftmost) is not trusted
        ("10.0.0.5", "6.6.6.6, 1.2.3.4, 10.0.0.7", "1.2.3.4"),  # multi-hop through trusted proxies
        ("10.0.0.5", "10.0.0.9, 10.0.0.7", "10.0.0.9"),
        ("10.0.0.5", "1.2.3.4, garbage", None),  # a malformed hop: the client is unknown
        ("::ffff:10.0.0.5", "2001:db8::1", "2001:db8::1"),  # IPv4-mapped peer is the IPv4 proxy
        ("fd00::1", "[2001:db8::2]", "2001:db8::2"),
        ("::ffff:1.2.3.4", None, "1.2.3.4"),
    ],
)
def test_client_address(peer: str, xff: str | None, client: str | None) -> None:
    addr = network.client_address(peer, xff, PROXIES)
    assert (None if addr is None else str(addr)) == client


def test_allowlists() -> None:
    nets = network.parse_networks(["192.168.0.0/16", "2001:db8::/32", "8.8.8.8"])
    assert network.allowed(network.parse_address("192.168.4.4"), nets)
    assert network.allowed(network.parse_address("::ffff:192.168.4.4"), nets)
    assert network.allowed(network.parse_address("2001:db8::7"), nets)
    assert network.allowed(network.parse_address("8.8.8.8"), nets)
    assert not network.allowed(network.parse_address("8.8.4.4"), nets)
    assert not network.allowed(None, nets)  # unknown client, a list is set: refused
    assert network.allowed(None, ())  # no list: anyone
    with pytest.raises(ValueError, match="not an IP"):
        network.parse_networks(["10.0.0.0/33"])


def test_permissions() -> None:
    assert permissions.missing(None, Group.CHAT, Access.WRITE) is None
    assert permissions.missing([permissions.ALL_READ], Group.MODELS, Access.READ) is None
    assert permissions.missing([permissions.ALL_READ], Group.CHAT, Access.WRITE) == "chat.write"
    scopes = permissions.scopes_for(
        {Group.EMBEDDINGS: Access.WRITE, Group.MODELS: Access.READ, Group.CHAT: Access.NONE}
    )
    assert scopes == ("embeddings.write", "models.read")
    assert permissions.missing(scopes, Group.EMBEDDINGS, Access.READ) is None  # write includes read
    assert permissions.missing(scopes, Group.CHAT, Access.WRITE) == "chat.write"
    assert permissions.describe(scopes) == "Restricted" and permissions.describe(()) == "All"
    with pytest.raises(ValueError, match=r"Unknown scope 'chat\.admin'\. Known scopes: ") as e:
        permissions.validate(["chat.admin"])
    assert "chat.write" in str(e.value) and "models.read" in str(e.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("203.0.113.9:5555", "203.0.113.9"), ("[2001:db8::1]:443", "2001:db8::1"),
     ("[2001:db8::1]", "2001:db8::1"), ("2001:db8::1", "2001:db8::1"), (" 10.0.0.1 ", "10.0.0.1"),
     ("10.0.0.1:x", None), ("[::1]:", None), ("1.2.3.4:5:6", None)],
)  # fmt: skip
def test_an_address_may_come_with_the_port_a_proxy_added(text: str, expected: str | None) -> None:
    addr = network.parse_address(text)
    assert (None if addr is None else str(addr)) == expected
