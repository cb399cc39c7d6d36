"""Opt-in real kernel links: Linux network namespaces joined by a bridge, shaped with ``tc``.

The default emulation (``p2pinfer.link``) stretches time in the transport. This module gives
the other kind: nodes in namespaces of their own, each with a veth pair to a bridge, and the
kernel's ``tbf`` (token bucket) or ``htb`` (hierarchical token bucket) qdisc shaping each
namespace's egress. TCP then meets a real bottleneck (queueing, congestion control, slow
start), which the time-stretching emulation does not reproduce. ``netem`` is not used: it is
missing from some kernels, while ``tbf`` and ``htb`` are nearly always there.

It needs Linux, root and iproute2 (``ip``, ``tc``); ``unavailable_reason`` says why it cannot
run so callers (tests, benchmarks) can skip instead of failing. Addresses come from a private
range (default ``10.213.0.0/24``) and exist only inside the namespaces created here; nothing
is added to the host's own namespace but the bridge and the host ends of the veth pairs, all
without addresses. ``NamespaceNetwork`` is a context manager and removes everything it
created on exit, also when creation failed halfway.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from p2pinfer.errors import NetnsUnavailable


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used on this machine, or None when they might (creating one
    is the only real test: containers often forbid it even to root)."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "network namespaces and tc need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    return None


@dataclass(frozen=True)
class Shaping:
    """A rate limit on a namespace's egress.

    ``tbf``: one token bucket (rate, burst, and a queue bounded as ``latency_ms`` of backlog).
    ``htb``: a single class with rate = ceil, the form to extend to per-peer classes.
    ``burst_bytes`` defaults to what the rate sends in 10 ms, at least 16 KiB (a burst smaller
    than rate / HZ cannot reach the rate).
    """

    rate_mbit: float
    qdisc: Literal["tbf", "htb"] = "tbf"
    burst_bytes: int | None = None
    latency_ms: float = 50.0

    def __post_init__(self) -> None:
        if not self.rate_mbit > 0:
            raise ValueError(f"rate_mbit must be > 0, got {self.rate_mbit}")
        if self.qdisc not in ("tbf", "htb"):
            raise ValueError(f"qdisc must be 'tbf' or 'htb', got {self.qdisc!r}")

    @property
    def burst(self) -> int:
        if self.burst_bytes is not None:
            return self.burst_bytes
        return max(16 * 1024, int(self.rate_mbit * 1e6 / 8 * 0.010))

    def commands(self, device: str) -> list[list[str]]:
        """The ``tc`` commands that apply this shaping to ``device`` (run inside its namespace)."""
        rate = f"{self.rate_mbit:g}mbit"
        if self.qdisc == "tbf":
            return [["tc", "qdisc", "replace", "dev", device, "root", "tbf", "rate", rate, "burst", str(self.burst),
                     "latency", f"{self.latency_ms:g}ms"]]
        return [["tc", "qdisc", "replace", "dev", device, "root", "handle", "1:", "htb", "default", "10"],
                ["tc", "class", "replace", "dev", device, "parent", "1:", "classid", "1:10", "htb", "rate", rate,
                 "ceil", rate, "burst", str(self.burst)]]


@dataclass(frozen=True)
class Namespace:
    """One created namespace: its name, interface, and address on the bridge's subnet."""

    name: str
    interface: str
    host_interface: str
    address: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        completed = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise NetnsUnavailable(f"`{' '.join(argv)}` could not run: {error}") from None
    if check and completed.returncode != 0:
        raise NetnsUnavailable(f"`{' '.join(argv)}` failed ({completed.returncode}): "
                               f"{(completed.stderr or completed.stdout).strip()}")
    return completed


class NamespaceNetwork:
    """``count`` namespaces on one bridge, optionally shaped; everything removed on exit.

    >>> with NamespaceNetwork(2, shaping={0: Shaping(rate_mbit=20)}) as network:  # doctest: +SKIP
    ...     server = network.popen(1, ["python", "-m", "http.server", "--bind", network[1].address])

    ``subnet`` is the first three octets of a private /24 used only inside these namespaces;
    ``tag`` (default: from the process id) keeps names unique so parallel runs do not clash.
    """

    def __init__(self, count: int, *, subnet: str = "10.213.0", tag: str | None = None,
                 shaping: Mapping[int, Shaping] | None = None) -> None:
        if not 1 <= count <= 250:
            raise ValueError(f"count must be in [1, 250], got {count}")
        parts = subnet.split(".")
        if len(parts) != 3 or not all(part.isdigit() and 0 <= int(part) <= 255 for part in parts):
            raise ValueError(f"subnet must be three octets like '10.213.0', got {subnet!r}")
        self.count = count
        self.subnet = subnet
        self.tag = tag or f"p2{os.getpid() & 0xFFFF:04x}"
        if len(self.tag) > 8 or not self.tag.isalnum():
            raise ValueError(f"tag must be at most 8 letters or digits, got {self.tag!r}")
        self.shaping = dict(shaping or {})
        self.bridge = f"{self.tag}br"
        self.namespaces: list[Namespace] = [
            Namespace(name=f"p2pinfer-{self.tag}-{index}", interface=f"{self.tag}n{index}",
                      host_interface=f"{self.tag}h{index}", address=f"{subnet}.{index + 1}")
            for index in range(count)]
        self._created_namespaces: list[str] = []
        self._created_links: list[str] = []

    def __getitem__(self, index: int) -> Namespace:
        return self.namespaces[index]

    def __enter__(self) -> NamespaceNetwork:
        reason = unavailable_reason()
        if reason is not None:
            raise NetnsUnavailable(reason)
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _create(self) -> None:
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self._created_links.append(self.bridge)
        _run(["ip", "link", "set", self.bridge, "up"])
        for namespace in self.namespaces:
            _run(["ip", "netns", "add", namespace.name])
            self._created_namespaces.append(namespace.name)
            _run(["ip", "link", "add", namespace.host_interface, "type", "veth", "peer", "name", namespace.interface])
            self._created_links.append(namespace.host_interface)
            _run(["ip", "link", "set", namespace.interface, "netns", namespace.name])
            _run(["ip", "link", "set", namespace.host_interface, "master", self.bridge])
            _run(["ip", "link", "set", namespace.host_interface, "up"])
            _run(namespace.command(["ip", "link", "set", "lo", "up"]))
            _run(namespace.command(["ip", "addr", "add", f"{namespace.address}/24", "dev", namespace.interface]))
            _run(namespace.command(["ip", "link", "set", namespace.interface, "up"]))
        for index, shaping in self.shaping.items():
            self.shape(index, shaping)

    def shape(self, index: int, shaping: Shaping) -> None:
        """Limit namespace ``index``'s egress (what it sends to the others)."""
        namespace = self.namespaces[index]
        for argv in shaping.commands(namespace.interface):
            _run(namespace.command(argv))
        self.shaping[index] = shaping

    def run(self, index: int, argv: Sequence[str], **options) -> subprocess.CompletedProcess:
        """Run ``argv`` inside namespace ``index`` and wait for it."""
        return subprocess.run(self.namespaces[index].command(argv), **options)

    def popen(self, index: int, argv: Sequence[str], **options) -> subprocess.Popen:
        """Start ``argv`` inside namespace ``index``; the caller stops it before the network closes."""
        return subprocess.Popen(self.namespaces[index].command(argv), **options)

    def reachable(self, source: int, destination: int, port: int = 47_213, timeout_s: float = 5.0) -> bool:
        """Whether a TCP connection from namespace ``source`` reaches ``destination`` (a bridge
        can be filtered by the host's firewall: better to know before starting nodes)."""
        listener = self.popen(destination, [sys.executable, "-c", _LISTEN, self.namespaces[destination].address,
                                            str(port)], stdout=subprocess.PIPE, text=True)
        try:
            assert listener.stdout is not None
            if listener.stdout.readline().strip() != "listening":
                return False
            probe = self.run(source, [sys.executable, "-c", _CONNECT, self.namespaces[destination].address,
                                      str(port), str(timeout_s)], capture_output=True, text=True,
                             timeout=timeout_s + 10)
            return probe.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False
        finally:
            listener.kill()
            listener.wait(timeout=10)

    def close(self) -> None:
        """Remove what was created (namespaces first: that also removes their veth ends)."""
        for name in reversed(self._created_namespaces):
            _run(["ip", "netns", "del", name], check=False)
        for link in reversed(self._created_links):
            if _run(["ip", "link", "show", link], check=False).returncode == 0:
                _run(["ip", "link", "del", link], check=False)
        self._created_namespaces.clear()
        self._created_links.clear()


_LISTEN = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(1)
print("listening", flush=True)
server.settimeout(30)
connection, _ = server.accept()
connection.close()
"""

_CONNECT = """
import socket, sys
socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
"""

__all__ = ["Namespace", "NamespaceNetwork", "NetnsUnavailable", "Shaping", "unavailable_reason"]
