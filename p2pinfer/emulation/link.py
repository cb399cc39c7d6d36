"""Emulated network links between nodes on one machine.

The transport sends every peer message over real loopback, measures how long that took, and
then waits out the rest of the time the emulated link would have needed (``pad_to``): the
bytes really move, only the clock is stretched. A link has a bandwidth (constant, or a
replayed trace), an RTT, jitter and a loss probability, and owns a seeded random generator
so that a scenario replays the same jitter and losses every run.

One-way latency is ``rtt/2`` plus a jitter sample drawn uniformly from
``[-jitter, +jitter]`` (netem's default shape), clamped at zero; serialization is the time
the bandwidth needs for the bytes (integrated over a trace, see ``p2pinfer.trace``).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from p2pinfer.emulation.trace import BITS_PER_MEGABIT, BandwidthTrace, load_trace, resolve_trace
from p2pinfer.errors import LinkConfigError
from p2pinfer.types import NodeId


@dataclass
class EmulatedLink:
    """One direction of an emulated link.

    ``bandwidth_mbps=None`` and no trace means unlimited bandwidth (no serialization delay).
    With a trace, ``bandwidth_mbps`` is ignored and the trace (times ``trace_scale``) is
    replayed from ``trace_offset_s``; ``now_s`` arguments are seconds since the replay began
    (``epoch_s`` on the monotonic clock, used when ``now_s`` is left out).
    """

    bandwidth_mbps: float | None = None
    rtt_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    trace: BandwidthTrace | None = None
    trace_scale: float = 1.0
    trace_offset_s: float = 0.0
    trace_loop: bool = True
    seed: int = 0
    epoch_s: float = field(default_factory=time.monotonic)
    rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.bandwidth_mbps is not None and not self.bandwidth_mbps > 0:
            raise LinkConfigError(f"bandwidth_mbps must be > 0, got {self.bandwidth_mbps}")
        if not (self.rtt_ms >= 0 and self.jitter_ms >= 0):
            raise LinkConfigError(f"rtt_ms and jitter_ms must be >= 0, got {self.rtt_ms}, {self.jitter_ms}")
        if not 0 <= self.loss <= 1:
            raise LinkConfigError(f"loss is a probability in [0, 1], got {self.loss}")
        if not self.trace_scale > 0:
            raise LinkConfigError(f"trace_scale must be > 0, got {self.trace_scale}")
        self.rng = random.Random(self.seed)

    def now_s(self) -> float:
        """Seconds since this link's replay began, on the monotonic clock."""
        return time.monotonic() - self.epoch_s

    def bandwidth_at(self, now_s: float) -> float:
        """Bandwidth in Mbit/s at ``now_s`` (``math.inf`` when unlimited)."""
        if self.trace is not None:
            return self.trace.bandwidth_at(now_s + self.trace_offset_s, scale=self.trace_scale,
                                           loop=self.trace_loop)
        return math.inf if self.bandwidth_mbps is None else self.bandwidth_mbps

    def serialization_s(self, nbytes: int, now_s: float) -> float:
        """Seconds the bandwidth needs for ``nbytes`` starting at ``now_s``."""
        if self.trace is not None:
            return self.trace.transfer_seconds(nbytes, now_s + self.trace_offset_s, scale=self.trace_scale,
                                               loop=self.trace_loop)
        if self.bandwidth_mbps is None or nbytes <= 0:
            return 0.0
        return nbytes * 8.0 / (self.bandwidth_mbps * BITS_PER_MEGABIT)

    def one_way_latency_s(self) -> float:
        """``rtt/2`` plus one jitter sample (uniform in ``[-jitter, +jitter]``), never negative."""
        jitter = self.rng.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms > 0 else 0.0
        return max(self.rtt_ms / 2.0 + jitter, 0.0) / 1000.0

    def delay_s(self, nbytes: int, now_s: float | None = None) -> float:
        """Emulated one-way delivery time of a message of ``nbytes`` sent at ``now_s``."""
        if now_s is None:
            now_s = self.now_s()
        return self.one_way_latency_s() + self.serialization_s(nbytes, now_s)

    def drops(self) -> bool:
        """Whether this message is lost (the transport then behaves as if it timed out)."""
        return self.loss > 0 and self.rng.random() < self.loss


def unlimited_link() -> EmulatedLink:
    """A link that adds nothing: the loopback as it is."""
    return EmulatedLink()


def pad_to(link: EmulatedLink, nbytes: int, elapsed_s: float, now_s: float | None = None) -> float:
    """Seconds still to wait after a real transfer that took ``elapsed_s``, to match the link.

    ``now_s`` is when the transfer started (seconds since the link's epoch); it defaults to
    now minus ``elapsed_s``.
    """
    if now_s is None:
        now_s = link.now_s() - elapsed_s
    return max(link.delay_s(nbytes, now_s) - elapsed_s, 0.0)


async def apply(link: EmulatedLink, nbytes: int, *, elapsed_s: float = 0.0, now_s: float | None = None,
                sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> float:
    """Wait as long as the link still needs for ``nbytes`` (after ``elapsed_s`` really spent).

    Returns the seconds waited. ``sleep`` is injectable so that tests need not wait.
    """
    remaining = pad_to(link, nbytes, elapsed_s, now_s)
    if remaining > 0:
        await sleep(remaining)
    return remaining


_LINK_KEYS = frozenset({"bandwidth_mbps", "rtt_ms", "jitter_ms", "loss", "trace", "trace_scale",
                        "trace_offset_s", "trace_loop", "seed"})


def link_from_dict(table: Mapping[str, Any], *, trace_roots: Sequence[str | Path] = (), seed: int = 0,
                   name: str = "link", epoch_s: float | None = None) -> EmulatedLink:
    """Build a link from a scenario table (``bandwidth_mbps``, ``rtt_ms``, ``trace`` ...).

    ``trace`` is a path, tried as given and then under each of ``trace_roots``.
    """
    unknown = set(table) - _LINK_KEYS
    if unknown:
        raise LinkConfigError(f"{name}: unknown keys {sorted(unknown)}; known: {sorted(_LINK_KEYS)}")
    arguments = dict(table)
    trace_name = arguments.pop("trace", None)
    if trace_name is not None:
        arguments["trace"] = load_trace(resolve_trace(trace_name, trace_roots))
    arguments.setdefault("seed", seed)
    if epoch_s is not None:
        arguments["epoch_s"] = epoch_s
    try:
        return EmulatedLink(**arguments)
    except LinkConfigError as error:
        raise LinkConfigError(f"{name}: {error.message}") from None
    except TypeError as error:
        raise LinkConfigError(f"{name}: {error}") from None


def _derived_seed(seed: int, key: str) -> int:
    """A per-link seed that is stable across processes (``hash`` of a str is not)."""
    return (seed * 1_000_003 + zlib.crc32(key.encode())) & 0xFFFF_FFFF


@dataclass
class LinkMatrix:
    """The emulated link for every ordered pair of nodes, with a default for unnamed pairs.

    Lookup order for ``(src, dst)``: the pair itself, then the reverse pair (links are
    symmetric unless both directions are given), then a copy of ``default`` made for that
    pair on first use (its own random generator, so jitter and loss are independent per
    pair). A node talking to itself goes through no link.
    """

    links: dict[tuple[NodeId, NodeId], EmulatedLink] = field(default_factory=dict)
    default: EmulatedLink = field(default_factory=unlimited_link)
    seed: int = 0
    _defaults: dict[tuple[NodeId, NodeId], EmulatedLink] = field(default_factory=dict, init=False, repr=False)

    def link(self, src: NodeId | str, dst: NodeId | str) -> EmulatedLink:
        if src == dst:
            return unlimited_link()
        pair = (NodeId(src), NodeId(dst))
        found = self.links.get(pair)
        if found is None:
            found = self.links.get((pair[1], pair[0]))
        if found is None:
            found = self._defaults.get(pair)
            if found is None:
                found = replace(self.default, seed=_derived_seed(self.seed, f"default:{src}->{dst}"))
                self._defaults[pair] = found
        return found

    @classmethod
    def from_dict(cls, links: Mapping[str, Mapping[str, Any]], *, default: Mapping[str, Any] | None = None,
                  trace_roots: Sequence[str | Path] = (), seed: int = 0,
                  epoch_s: float | None = None) -> LinkMatrix:
        """Load a scenario's ``[links."a->b"]`` tables.

        ``"a->b"`` sets one direction, ``"a<->b"`` both. A direction that no key names gets
        the parameters of its reverse, in a link object of its own (its own random
        generator). A direction named by two keys is an error.
        """
        claimed: dict[tuple[NodeId, NodeId], tuple[str, Mapping[str, Any]]] = {}
        mirrors: dict[tuple[NodeId, NodeId], tuple[str, Mapping[str, Any]]] = {}
        for key, table in links.items():
            if not isinstance(table, Mapping):
                raise LinkConfigError(f"links.{key!r}: expected a table, got {type(table).__name__}")
            both = "<->" in key
            parts = key.split("<->") if both else key.split("->")
            if len(parts) != 2 or not all(part.strip() for part in parts):
                raise LinkConfigError(f"links.{key!r}: expected 'src->dst' or 'a<->b'")
            src, dst = NodeId(parts[0].strip()), NodeId(parts[1].strip())
            if src == dst:
                raise LinkConfigError(f"links.{key!r}: a node needs no link to itself")
            for pair in ((src, dst), (dst, src)) if both else ((src, dst),):
                if pair in claimed:
                    raise LinkConfigError(f"links.{key!r}: direction {pair[0]}->{pair[1]} is already "
                                          f"set by links.{claimed[pair][0]!r}")
                claimed[pair] = (key, table)
            if not both:
                mirrors[(dst, src)] = (key, table)
        for pair, source in mirrors.items():
            claimed.setdefault(pair, source)
        built = {
            pair: link_from_dict(table, trace_roots=trace_roots, name=f"links.{key!r}",
                                 seed=_derived_seed(seed, f"{pair[0]}->{pair[1]}"), epoch_s=epoch_s)
            for pair, (key, table) in claimed.items()
        }
        default_link = (unlimited_link() if default is None else
                        link_from_dict(default, trace_roots=trace_roots, name="default", seed=seed,
                                       epoch_s=epoch_s))
        if epoch_s is not None:
            default_link.epoch_s = epoch_s
        return cls(links=built, default=default_link, seed=seed)


