"""How a node finds its first peers: seeds, a static peers file, and opt-in mDNS.

Gossip needs only one live contact to learn the whole cluster, so discovery just produces
addresses for ``GossipAgent.add_seed`` (permanent, retried while the node is alone) and
``GossipAgent.introduce`` (contacted once).

* Seeds: ``--seed HOST:PORT``, repeatable.
* Peers file: one ``host:port`` per line; ``#`` starts a comment; blank lines are ignored.
* mDNS (python-zeroconf, opt-in): each node registers ``<node id>._p2pinfer._tcp.local.``
  with its port and a ``node_id`` property, browses the same type and reports every other
  node it resolves. Tests bind it to ``["127.0.0.1"]`` so nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from p2pinfer.errors import PeerAddressError
from p2pinfer.membership.messages import Address
from p2pinfer.types import NodeId

if TYPE_CHECKING:  # zeroconf is imported when mDNS starts (opt-in), not with this module
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

logger = logging.getLogger(__name__)

SERVICE_TYPE = "_p2pinfer._tcp.local."
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


def parse_address(text: str) -> Address:
    """Validate ``host:port`` (``[v6]:port`` for IPv6) and return it normalised."""
    text = text.strip()
    host, separator, port_text = text.rpartition(":")
    if not separator or not host or not port_text.isdigit():
        raise PeerAddressError(f"{text!r} is not HOST:PORT")
    port = int(port_text)
    if not 0 < port < 65536:
        raise PeerAddressError(f"port {port} in {text!r} is outside 1-65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError as error:
            raise PeerAddressError(f"{host!r} in {text!r} is not an IPv6 address") from error
    elif not _HOSTNAME.match(host):
        raise PeerAddressError(f"{host!r} in {text!r} is not a host name or IPv4 address")
    return Address(f"{host}:{port}")


def parse_peers_file(text: str, source: str = "peers file") -> list[Address]:
    """Addresses in a peers file's text, in order, without duplicates."""
    addresses: list[Address] = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            address = parse_address(entry)
        except PeerAddressError as error:
            raise PeerAddressError(f"{source} line {number}: {error.message}") from error
        if address not in addresses:
            addresses.append(address)
    return addresses


def load_peers_file(path: str | Path) -> list[Address]:
    path = Path(path)
    return parse_peers_file(path.read_text(encoding="utf-8"), source=str(path))


def initial_contacts(seeds: Iterable[str] = (), peers_file: str | Path | None = None) -> list[Address]:
    """Seeds then peers-file entries, validated and deduplicated."""
    contacts: list[Address] = []
    for address in [parse_address(seed) for seed in seeds] + (load_peers_file(peers_file) if peers_file else []):
        if address not in contacts:
            contacts.append(address)
    return contacts


def _instance_label(node_id: str) -> str:
    """A DNS-safe instance label for a node id (mDNS labels are at most 63 bytes)."""
    label = re.sub(r"[^A-Za-z0-9-]", "-", node_id)[:63].strip("-")
    return label or "node"


PeerFound = Callable[[NodeId, Address], object]


class MdnsDiscovery:
    """Advertise this node on mDNS and report the others (``on_peer(node_id, address)``)."""

    def __init__(self, node_id: str, host: str, port: int, on_peer: PeerFound, *,
                 interfaces: list[str] | None = None, resolve_timeout_ms: int = 3000) -> None:
        self.node_id = NodeId(node_id)
        self.host = host
        self.port = port
        self._on_peer = on_peer
        self._interfaces = interfaces
        self._resolve_timeout_ms = resolve_timeout_ms
        self._zeroconf: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.found: dict[NodeId, Address] = {}

    async def start(self) -> None:
        """Register and browse; raises ``OSError`` if multicast sockets cannot be opened."""
        from zeroconf import InterfaceChoice, IPVersion
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

        interfaces = self._interfaces if self._interfaces is not None else InterfaceChoice.All
        self._zeroconf = zc = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
        label = _instance_label(self.node_id)
        self._info = info = AsyncServiceInfo(
            SERVICE_TYPE, f"{label}.{SERVICE_TYPE}", port=self.port,
            addresses=[socket.inet_aton(socket.gethostbyname(self.host))],
            properties={"node_id": self.node_id, "protocol": "1"}, server=f"{label}.p2pinfer.local.")
        await zc.async_register_service(info, allow_name_change=True)
        self._browser = AsyncServiceBrowser(zc.zeroconf, SERVICE_TYPE, handlers=[self._on_service])

    def _on_service(self, zeroconf: object, service_type: str, name: str, state_change: object) -> None:
        from zeroconf import ServiceStateChange

        if state_change not in (ServiceStateChange.Added, ServiceStateChange.Updated):
            return
        task = asyncio.get_running_loop().create_task(self._resolve(service_type, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, service_type: str, name: str) -> None:
        from zeroconf.asyncio import AsyncServiceInfo

        if self._zeroconf is None:
            return
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zeroconf.zeroconf, self._resolve_timeout_ms):
            return
        node_id = (info.properties or {}).get(b"node_id")
        addresses = info.parsed_addresses()
        if not node_id or not addresses or not info.port:
            return
        peer = NodeId(node_id.decode(errors="replace"))
        if peer == self.node_id:
            return
        address = Address(f"{addresses[0]}:{info.port}")
        if self.found.get(peer) != address:
            self.found[peer] = address
            self._on_peer(peer, address)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await self._browser.async_cancel()
        if self._zeroconf is not None:
            with contextlib.suppress(Exception):
                if self._info is not None:
                    await self._zeroconf.async_unregister_service(self._info)
            await self._zeroconf.async_close()
        self._zeroconf = self._browser = self._info = None
