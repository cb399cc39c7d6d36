"""Discovery: seed and peers-file parsing, and mDNS on loopback (skipped where multicast
cannot work)."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
import uuid

import pytest

from p2pinfer.membership.discovery import (
    MdnsDiscovery,
    PeerAddressError,
    initial_contacts,
    load_peers_file,
    parse_address,
    parse_peers_file,
)
from p2pinfer.testing import async_wait_until, free_port


def test_peers_file_comments_blank_lines_and_duplicates():
    text = """
    # the lab's boards
    10.0.0.5:7070
    jetson-1.local:7070   # the fast one

    [::1]:7071
    10.0.0.5:7070
    """
    assert parse_peers_file(text) == ["10.0.0.5:7070", "jetson-1.local:7070", "[::1]:7071"]


@pytest.mark.parametrize("line", ["10.0.0.5", "10.0.0.5:", ":7070", "host:0", "host:70000", "bad host:1",
                                  "[zz]:1", "host:port"])
def test_bad_entries_name_the_line(line):
    with pytest.raises(PeerAddressError) as caught:
        parse_peers_file(f"# ok\n127.0.0.1:1\n{line}\n")
    assert "line 3" in str(caught.value) and caught.value.status == 400


def test_seeds_then_file_deduplicated(tmp_path):
    peers = tmp_path / "peers.txt"
    peers.write_text("127.0.0.1:7001\n127.0.0.1:7002 # second\n")
    assert load_peers_file(peers) == ["127.0.0.1:7001", "127.0.0.1:7002"]
    assert initial_contacts([" 127.0.0.1:7002", "127.0.0.1:7003"], peers) == \
        ["127.0.0.1:7002", "127.0.0.1:7003", "127.0.0.1:7001"]
    assert parse_address("localhost:80") == "localhost:80"


def multicast_on_loopback() -> str | None:
    """None if a multicast datagram sent through 127.0.0.1 comes back, else why not."""
    group, port = "224.0.0.251", free_port()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP) as receiver, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP) as sender:
            receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            receiver.bind(("", port))
            receiver.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                                struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("127.0.0.1")))
            receiver.settimeout(1.0)
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            sender.sendto(b"p2pinfer", (group, port))
            receiver.recv(64)
    except OSError as error:
        return f"multicast on 127.0.0.1 unavailable in this sandbox: {error}"
    return None


async def test_mdns_nodes_find_each_other_on_loopback():
    reason = multicast_on_loopback()
    if reason:
        pytest.skip(reason)
    suffix = uuid.uuid4().hex[:8]  # other test runs on this machine may browse the same service type
    first, second = f"node-a-{suffix}", f"node-b-{suffix}"
    found: dict[str, dict[str, str]] = {first: {}, second: {}}
    ports = {first: free_port(), second: free_port()}
    nodes = [MdnsDiscovery(name, "127.0.0.1", ports[name],
                           lambda peer, address, name=name: found[name].__setitem__(peer, address),
                           interfaces=["127.0.0.1"]) for name in (first, second)]
    started = time.monotonic()
    try:
        for node in nodes:
            try:
                await node.start()
            except OSError as error:
                pytest.skip(f"zeroconf cannot open its sockets here: {error}")

        async def both_found() -> bool:
            return second in found[first] and first in found[second]

        await async_wait_until(both_found, timeout_s=15.0, message="mDNS discovery on 127.0.0.1")
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))
    assert found[first][second] == f"127.0.0.1:{ports[second]}"
    assert found[second][first] == f"127.0.0.1:{ports[first]}"
    assert time.monotonic() - started < 15.0
