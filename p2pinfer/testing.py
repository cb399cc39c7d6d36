"""What tests and the benchmark harness share to drive real nodes: free ports, waiting on
a condition (never sleeping to synchronise), and in-process service nodes (``ServiceNode``:
a real aiohttp server with its own executor, ``StageService`` and ``PeerTransport``, links
emulated in the transport) started as a cluster on loopback (``start_cluster``).

It lives in the package (not in ``tests/`` or ``benchmarks/``) because both sides use it,
and users testing their own deployments can too. It never imports ``benchmarks``.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar, overload

import torch
from aiohttp import web

from p2pinfer.emulation.link import LinkMatrix
from p2pinfer.planning.latency_model import ComputeLatencyModel, LinkLatencyModel
from p2pinfer.planning.peer_directory import PeerView, StaticDirectory
from p2pinfer.protocol.auth import Verifier, peer_auth_middleware
from p2pinfer.protocol.link_estimate import LinkEstimate
from p2pinfer.protocol.schema import PlanSegment
from p2pinfer.runtime.executor import Executor, Job, JobResult
from p2pinfer.runtime.stage import StageHooks, StageService, StageSettings, stage_route
from p2pinfer.runtime.transport import PeerTransport
from p2pinfer.types import NodeId
from zoo.manifest import Manifest, VariantInfo, read_manifest
from zoo.model_slice import ModelSlice, load_slice
from zoo.profiling import profile_variant

T = TypeVar("T")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports that were free a moment ago on ``host`` (the kernel picks
    them; the sockets are held open together so none repeats)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            handle = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(handle)
            handle.bind((host, 0))
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (the kernel picks it)."""
    return free_ports(1, host)[0]


def wait_until(condition: Callable[[], T], timeout_s: float = 20.0, interval_s: float = 0.02,
               message: str = "condition") -> T:
    """Poll ``condition`` until it returns a truthy value; raise ``AssertionError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")
        time.sleep(interval_s)


@overload
async def async_wait_until(condition: Callable[[], Awaitable[T]], timeout_s: float = ..., interval_s: float = ...,
                           message: str = ...) -> T: ...


@overload
async def async_wait_until(condition: Callable[[], T], timeout_s: float = ..., interval_s: float = ...,
                           message: str = ...) -> T: ...


async def async_wait_until(condition: Callable[[], Any], timeout_s: float = 20.0,
                           interval_s: float = 0.02, message: str = "condition") -> Any:
    """``wait_until`` inside an event loop, without blocking it: ``condition`` is a coroutine
    function (a condition that must ask a server) or a plain one (state this loop changes)."""
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = condition()
        value = await outcome if inspect.isawaitable(outcome) else outcome
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")
        await asyncio.sleep(interval_s)


# ---- in-process service nodes --------------------------------------------------------------


LOOPBACK_LINK = LinkEstimate(bandwidth_mbps=10_000.0, rtt_ms=0.1)
"""What a directory assumes for a pair it knows nothing about: loopback."""

_PROFILES: dict[tuple[str, str], list[float]] = {}


def host_profile(variant: VariantInfo, zoo_dir: Path | str | None = None) -> list[float]:
    """Per-block milliseconds of ``variant`` on this host, measured once per process (not read
    from the disk cache: a profile cached in another hour, maybe on another machine, said 20.6 ms
    where this host took 12.9, and the planner of every in-process node priced its own blocks 1.6x
    too slow: 1.37x the best plan in the split benchmark), heads folded into their blocks as
    ``ModelHost`` does; ``zoo_dir``: the zoo holding its weights (default zoo)."""
    key = (variant.name, variant.sha256)
    if key not in _PROFILES:
        profile = profile_variant(variant, zoo_dir=zoo_dir, use_cache=False)
        block_ms = list(profile.block_ms)
        for exit_block, head_ms in profile.exit_ms.items():
            block_ms[int(exit_block)] += head_ms
        _PROFILES[key] = block_ms
    return list(_PROFILES[key])


def peer_view(spec: ServiceNodeSpec, url: str, manifest: Manifest) -> PeerView:
    """A node as gossip would describe it: its profile at device speed, its heat as slowdown
    (every emulated device runs on this host, so its profile is the host's times its slowdown)."""
    return PeerView(node_id=NodeId(spec.node_id), url=url, hosted=dict(spec.hosted),
                    block_ms={name: [ms * spec.device_slowdown
                                     for ms in host_profile(manifest.variant(name), spec.zoo_dir)]
                              for name in spec.hosted},
                    slowdown=spec.heat)


@dataclass
class ServiceNodeSpec:
    """One emulated device: which blocks it hosts, how much slower than the host it computes
    (``device_slowdown``: part of its profile) and its heat (``heat``: a runtime slowdown that
    gossip reports, e.g. 5 for a node throttled to a fifth of its speed). ``zoo_dir``: the zoo
    its variants' weights come from (None: the default zoo; ``PRETRAINED_ZOO_DIR`` for the real
    family)."""

    node_id: str
    hosted: Mapping[str, tuple[int, int]]
    device_slowdown: float = 1.0
    heat: float = 1.0
    zoo_dir: Path | str | None = None


class ServiceNode:
    """One node in this process: aiohttp server, executor, stage service, transport, directory.

    ``jobs`` records every job submitted to the executor (request id, first, last block), so
    tests can count what ran; ``block_ms`` collects measured block times (padding included).
    """

    def __init__(self, spec: ServiceNodeSpec, manifest: Manifest, *, secret: bytes | None = None,
                 link_matrix: LinkMatrix | None = None, link_model: LinkLatencyModel | None = None,
                 link_estimates: Mapping[tuple[NodeId, NodeId], LinkEstimate] | None = None,
                 default_link: LinkEstimate | None = LOOPBACK_LINK, settings: StageSettings | None = None,
                 hooks: StageHooks | None = None, max_batch: int = 1, queue_capacity: int = 64,
                 verify_in_route: bool = False) -> None:
        self.spec = spec
        self.node_id = NodeId(spec.node_id)
        self.manifest = manifest
        self.secret = secret
        self.verify_in_route = verify_in_route
        self.profiles = {name: host_profile(manifest.variant(name), spec.zoo_dir) for name in spec.hosted}
        self.models: dict[str, ModelSlice] = {
            name: load_slice(manifest.variant(name), first, last, zoo_dir=spec.zoo_dir)
            for name, (first, last) in spec.hosted.items()}
        self.jobs: list[tuple[str, int, int]] = []
        self.block_ms: dict[tuple[str, int], list[float]] = defaultdict(list)
        self.executor = Executor(self.models, self._predict_seconds, capacity=queue_capacity, workers=1,
                                 max_batch=max_batch, slowdown=self.slowdown, on_block=self._on_block,
                                 name="cpu")
        if link_model is None:  # inputs of 16 KiB must teach bandwidth too (the guard against noise stays)
            link_model = LinkLatencyModel(bandwidth_min_bytes=8 * 1024)
        self.transport = PeerTransport(self.node_id, secret, link_matrix, link_model)
        self.compute_model = ComputeLatencyModel(own_node=NodeId(self.node_id))
        self.url = ""
        self.directory = StaticDirectory(self.node_id, [self.view()], link_estimates, default_link=default_link,
                                         link_model=self.transport.link_model)
        self.service = StageService(self.node_id, self.submit, self.hosts, self.transport, self.directory, manifest,
                                    self.compute_model, settings=settings, hooks=hooks)
        self.runner: web.AppRunner | None = None
        self.site: web.TCPSite | None = None
        self.port = 0

    # ---- what the node hosts and how fast ----------------------------------------------
    def slowdown(self) -> float:
        return self.spec.device_slowdown * self.spec.heat

    def _predict_seconds(self, variant: str, first: int, last: int, batch_size: int = 1) -> float:
        return sum(self.profiles[variant][first:last + 1]) * self.slowdown() / 1000

    def _on_block(self, variant: str, block: int, *measured: float) -> None:
        """The executor's block timer: ``(..., padded seconds, batch size)`` at the end, the
        padded time being what the emulated device took."""
        seconds, batch_size = measured[-2], measured[-1]
        self.block_ms[(variant, block)].append(seconds * 1000 / batch_size)

    def hosts(self, variant: str, first: int, last: int) -> bool:
        hosted = self.spec.hosted.get(variant)
        return hosted is not None and hosted[0] <= first <= last <= hosted[1]

    def submit(self, job: Job) -> asyncio.Future[JobResult]:
        self.jobs.append((job.request_id, job.first_block, job.last_block))
        return self.executor.submit(job)

    def view(self) -> PeerView:
        """This node as gossip would describe it: device-speed profile, heat as slowdown."""
        return peer_view(self.spec, self.url, self.manifest)

    # ---- lifecycle ----------------------------------------------------------------------
    def warm_up(self) -> None:
        """Run every hosted slice once: a first forward pays one-off costs (allocator, kernel
        selection) that must not count as the device's speed."""
        with torch.inference_mode():
            for name, model in self.models.items():
                variant = self.manifest.variant(name)
                first = model.first_block
                shape = variant.input_shape if first == 0 else variant.blocks[first - 1].output_shape
                hidden = model.run(model.prepare(torch.zeros([1, *shape])))
                for block in model.heads:
                    if block == model.last_block:
                        model.exit_logits(block, hidden)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        await asyncio.to_thread(self.warm_up)
        middlewares = []
        verifier = Verifier(self.secret, recipients={self.service.node_id}) if self.secret else None
        if verifier is not None and not self.verify_in_route:
            middlewares.append(peer_auth_middleware(verifier))
        app = web.Application(client_max_size=64 << 20, middlewares=middlewares)
        app.add_routes(stage_route(self.service, verifier if self.verify_in_route else None,
                                   reply_secret=self.secret))
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        self.site = web.TCPSite(self.runner, host, port)
        await self.site.start()
        self.port = self.runner.addresses[0][1]  # the first bound socket's (host, port, ...)
        self.url = f"http://{host}:{self.port}"
        self.directory.update(self.view())

    async def crash(self) -> None:
        """Vanish as a crashed device would: stop listening and cut every open connection."""
        if self.site is not None:
            await self.site.stop()
        if self.runner is not None and self.runner.server is not None:
            for connection in list(self.runner.server.connections):
                connection.force_close()

    async def stop(self) -> None:
        await self.transport.close()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        await asyncio.to_thread(self.executor.close)


@dataclass
class ServiceCluster:
    nodes: dict[str, ServiceNode]
    external: list[PeerView] = field(default_factory=list)

    def __getitem__(self, node_id: str) -> ServiceNode:
        return self.nodes[node_id]

    def views(self) -> list[PeerView]:
        return [node.view() for node in self.nodes.values()] + list(self.external)

    def publish(self) -> None:
        """Give every node every node's current view (what gossip converges to)."""
        views = self.views()
        for node in self.nodes.values():
            for view in views:
                node.directory.update(view)

    async def close(self) -> None:
        for node in self.nodes.values():
            await node.stop()


async def start_cluster(specs: Sequence[ServiceNodeSpec], *, manifest: Manifest | None = None,
                        link_matrix: LinkMatrix | None = None,
                        link_estimates: Mapping[tuple[NodeId, NodeId], LinkEstimate] | None = None,
                        secret: bytes | None = None, settings: StageSettings | None = None,
                        hooks: Mapping[str, StageHooks] | None = None, external: Sequence[PeerView] = (),
                        link_models: Mapping[str, LinkLatencyModel] | None = None,
                        max_batch: int = 1, zoo_dir: Path | str | None = None) -> ServiceCluster:
    """Start one ``ServiceNode`` per spec on free loopback ports; every directory knows all.

    ``zoo_dir``: the zoo of specs that name none, and of the manifest when none is given."""
    manifest = manifest or read_manifest(zoo_dir)
    nodes: dict[str, ServiceNode] = {}
    try:
        for spec in specs:
            if spec.zoo_dir is None and zoo_dir is not None:
                spec = replace(spec, zoo_dir=zoo_dir)
            node = ServiceNode(spec, manifest, secret=secret, link_matrix=link_matrix, link_estimates=link_estimates,
                               link_model=(link_models or {}).get(spec.node_id), settings=settings,
                               hooks=(hooks or {}).get(spec.node_id), max_batch=max_batch)
            nodes[spec.node_id] = node
            await node.start()
    except BaseException:
        for node in nodes.values():
            await node.stop()
        raise
    cluster = ServiceCluster(nodes, list(external))
    cluster.publish()
    return cluster


def segments_of(*parts: tuple[str, int, int]) -> list[PlanSegment]:
    """``segments_of(("a", 0, 1), ("b", 2, 3))``: a plan in wire form, on unit ``cpu``."""
    return [PlanSegment(node=node, unit="cpu", first_block=first, last_block=last) for node, first, last in parts]
