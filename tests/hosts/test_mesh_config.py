"""The WireGuard configuration `vlab vpn sync` writes: a value that could add a line (a
newline, any whitespace or control character) is refused, not written."""

from __future__ import annotations

import pytest

from vlab_backend.hosts.mesh import Peer, generate_keypair, render_config, valid_endpoint

PRIVATE, _PUBLIC = generate_keypair()


def peer(**changes: str) -> Peer:
    fields = {"name": "beta", "public_key": generate_keypair()[1],
              "endpoint": "beta.lab:51820", "mesh_address": "10.77.0.2"} | changes
    return Peer(**fields)


def test_a_clean_configuration() -> None:
    text = render_config(PRIVATE, "10.77.0.1", [peer(), peer(name="gamma", endpoint="")])
    assert "Endpoint = beta.lab:51820" in text and text.count("[Interface]") == 1
    assert "PostUp" not in text


@pytest.mark.parametrize("changes", [
    {"endpoint": "beta.lab:51820\n[Interface]\nPostUp = touch /tmp/pwned"},
    {"endpoint": "beta.lab:51820\rPostUp = x"}, {"endpoint": "beta.lab 51820"},
    {"name": "beta\n[Interface]\nPostUp = x"}, {"name": "beta\x00"},
    {"public_key": "abc=\nPostUp = x"}, {"mesh_address": "10.77.0.2\nPostUp = x"},
    {"endpoint": "beta.lab:51820\u2028PostUp = x"}, {"endpoint": "beta.lab:51820\x1b"},
])
def test_values_that_could_add_lines_are_refused(changes: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="whitespace or a control character"):
        render_config(PRIVATE, "10.77.0.1", [peer(), peer(name="gamma", **changes)
                                             if "name" not in changes else peer(**changes)])


@pytest.mark.parametrize(("private_key", "address"), [
    (PRIVATE + "\nPostUp = x", "10.77.0.1"), (PRIVATE, "10.77.0.1\nPostUp = x"),
])
def test_this_hosts_own_values_are_checked_too(private_key: str, address: str) -> None:
    with pytest.raises(ValueError):
        render_config(private_key, address, [peer()], quick=False)


@pytest.mark.parametrize(("endpoint", "valid"), [
    ("beta.lab:51820", True), ("192.168.1.10:1", True), ("[2001:db8::1]:65535", True),
    ("beta:51820", True), ("", False), ("beta.lab", False), ("beta.lab:0", False),
    ("[2001:db8::1]", False), ("2001:db8::1:51820", False), ("beta.lab:51820\n", False),
    ("bad_name.lab:51820", False), ("1.2.3:51820", False), ("x" * 300 + ":1", False),
])
def test_valid_endpoint(endpoint: str, valid: bool) -> None:
    assert valid_endpoint(endpoint) is valid
