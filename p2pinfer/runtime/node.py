"""One node process: an aiohttp server in front of the executor, the controller and (in
their own modules) membership and collaborative execution.

Lifecycle follows aiohttp's ``AppRunner``/``TCPSite``: ``start`` loads the hosted model
slices (in a thread, not on the loop), binds, and is ready; ``stop`` refuses new work with
503, waits for in-flight requests to finish (drain), then closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
import torch
from aiohttp import web

from p2pinfer.errors import (
    BadDeadline,
    BadRequest,
    Draining,
    P2PError,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from p2pinfer.membership import gossip_routes
from p2pinfer.protocol import error_body
from p2pinfer.protocol.auth import Verifier, peer_auth_middleware
from p2pinfer.protocol.schema import FeedbackRequest, InferRequest
from p2pinfer.runtime.cluster_view import UNIT_FACTOR_PREFIX
from p2pinfer.runtime.controller import Controller
from p2pinfer.runtime.executor import Executor
from p2pinfer.runtime.metrics import NodeMetrics
from p2pinfer.runtime.model_host import ModelHost
from p2pinfer.runtime.open_inference_routes import add_open_inference_routes
from p2pinfer.runtime.stage import stage_route

JSON = "application/json"


@dataclass
class NodeConfig:
    host: str = "127.0.0.1"
    port: int = 0
    node_id: str | None = None
    zoo_dir: str | None = None
    variants: str = "all"
    device_profile: str = "native"
    threads: int = 1
    workers: int = 1
    secret: str | None = None
    queue_capacity: int = 64
    max_body_bytes: int = 8 << 20
    max_deadline_ms: float = 600_000.0
    batch_window_ms: float = 2.0
    max_batch: int = 8
    policy: str = "linucb"
    fixed_arm: str | None = None  # "variant@exit"
    drain_timeout_s: float = 30.0
    seeds: list[str] = field(default_factory=list)
    peers_file: str | None = None
    mdns: bool = False
    links_file: str | None = None  # emulated outgoing links (JSON: {"a->b": {...}, "default": {...}})
    trace_roots: list[str] = field(default_factory=list)
    gossip_interval_s: float = 0.5
    eligible_coordinator: bool = True
    use_thermal_sensor: bool | None = None
    policy_seed: int | None = None
    units: str = "cpu"  # compute units, comma separated: cpu, cpu:1, cuda:0 ... ("auto": discover)


EXTREME_PRESSURE = 0.95
PEER_PATHS = frozenset({"/v1/gossip", "/v1/stage", "/v1/emulation"})


def unit_names(spec: str) -> list[str]:
    """``cpu,cpu:1,cuda:0`` or ``auto`` (every unit this machine has: zoo.compute_unit)."""
    if spec.strip() == "auto":
        from zoo.compute_unit import discover_units

        return [unit.name for unit in discover_units()]
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names or len(set(names)) != len(names):
        raise BadRequest(f"--units {spec!r}: give distinct unit names, e.g. cpu,cpu:1,cuda:0")
    for name in names:
        kind = name.split(":")[0]
        if kind not in ("cpu", "cuda"):
            raise BadRequest(f"unknown compute unit {name!r}: use cpu, cpu:N or cuda:N")
    return names


class EmulationCommand(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    temperature_c: float | None = None
    hold: bool = False
    release: bool = False


def _secret(config: NodeConfig) -> bytes:
    """The cluster secret. Without one a node still runs alone, with a random secret no
    peer can know — a cluster needs the same ``--secret`` (or $P2PINFER_SECRET) on every node."""
    text = config.secret or os.environ.get("P2PINFER_SECRET")
    if text:
        return text.encode()
    if config.seeds or config.peers_file or config.mdns:
        raise BadRequest("joining a cluster needs the cluster secret: pass --secret or set P2PINFER_SECRET")
    return os.urandom(32)


def parse_arm(text: str):
    from selector import Arm

    try:
        return Arm.from_key(text)
    except Exception as error:  # noqa: BLE001 - any parse failure is the user's input
        raise BadRequest(f"arm {text!r} must look like VARIANT@EXIT ({error})") from None


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.node_id = config.node_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        self.metrics = NodeMetrics()
        self.draining = False
        self.in_flight = 0
        self.started_at = time.monotonic()
        self.host: ModelHost | None = None
        self.executor: Executor | None = None
        self.controller: Controller | None = None
        self.runner: web.AppRunner | None = None
        self.port = config.port
        self._idle = asyncio.Event()
        self._idle.set()
        self._background: list[asyncio.Task] = []
        self.executors: dict[str, Executor] = {}
        self.unit_hosts: dict[str, ModelHost] = {}
        self._peer_handlers: dict[str, object] = {}
        self.agent = None
        self.mdns = None
        self.peer_transport = None
        self.sharing = None
        self.user_usage: dict[str, float] = {}
        self.utilisation = 0.0
        self._thermal_slowdown = 1.0

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    # ---- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        from p2pinfer.emulation.device_profile import get_profile
        from p2pinfer.emulation.thermal import ThermalModel

        torch.set_num_threads(self.config.threads)
        config = self.config
        self.secret = _secret(config)
        self.profile = get_profile(config.device_profile)
        self.thermal = ThermalModel.for_profile(self.profile, use_sensor=config.use_thermal_sensor)
        self._refresh_thermal()
        self.host = await asyncio.to_thread(ModelHost, config.zoo_dir, config.variants, "cpu", config.threads,
                                            10, self.profile.slowdown("cpu"))
        self.unit_hosts = {}
        self.executors = {}
        for unit in unit_names(config.units):
            host = self.host
            if not unit.startswith("cpu"):  # an accelerator holds its own copy of the slices
                host = await asyncio.to_thread(ModelHost, config.zoo_dir, config.variants, unit, config.threads,
                                               10, self.profile.slowdown(unit))
            self.unit_hosts[unit] = host
            self.executors[unit] = Executor(
                host.models, lambda v, f, l, n, unit=unit: self.predict_seconds(v, f, l, n, unit),
                capacity=config.queue_capacity, workers=config.workers, max_batch=config.max_batch,
                batch_window_s=config.batch_window_ms / 1000,
                on_block=lambda *timing, unit=unit: self._on_block(unit, *timing),
                slowdown=lambda unit=unit: self.pad_factor(unit), name=unit, threads=config.threads)
        self.executor = next(iter(self.executors.values()))
        app = web.Application(client_max_size=config.max_body_bytes + 1024, middlewares=[
            self._errors, peer_auth_middleware(Verifier(self.secret), protected_paths=PEER_PATHS,
                                               on_reject=self._on_peer_rejected)])
        self.add_routes(app)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, config.host, config.port)
        await site.start()
        sockets = site._server.sockets if site._server is not None else []  # noqa: SLF001
        if sockets:
            self.port = sockets[0].getsockname()[1]
        await self._start_cluster(app)
        self._background.append(asyncio.create_task(self._telemetry_loop(), name="telemetry"))

    async def _start_cluster(self, app: web.Application) -> None:
        """Membership, split execution and arm selection: everything that needs the bound port."""
        from p2pinfer.membership import GossipAgent, GossipSettings, HttpTransport, initial_contacts
        from p2pinfer.planning.latency_model import ComputeLatencyModel, LinkLatencyModel
        from p2pinfer.planning.selection import ArmSelection
        from p2pinfer.runtime.cluster_view import NodeDirectory
        from p2pinfer.runtime.learning_exchange import StatisticsSharing, per_origin_merger
        from p2pinfer.runtime.stage import StageHooks, StageService
        from p2pinfer.runtime.transport import PeerTransport

        config = self.config
        assert self.host is not None and self.executor is not None
        self.link_model = LinkLatencyModel(bandwidth_min_bytes=8 * 1024)
        self.compute_model = ComputeLatencyModel()
        for unit, host in self.unit_hosts.items():
            for name, blocks in host.block_ms.items():
                self.compute_model.seed(self.node_id, unit, name, dict(enumerate(blocks)))
        self.gossip_transport = HttpTransport(self.node_id, self.secret)
        self.agent = GossipAgent(
            self.node_id, f"{config.host}:{self.port}", self.gossip_transport,
            seeds=initial_contacts(config.seeds, config.peers_file),
            settings=GossipSettings(interval_s=config.gossip_interval_s), stats_merger=per_origin_merger,
            eligible_coordinator=config.eligible_coordinator)
        self.agent.update_self(variants=self._gossiped_profiles(), compute_units=list(self.executors),
                               load=self._load(), thermal=self._thermal_record())
        self.directory = NodeDirectory(self.node_id, self.self_view, self.link_model, self.agent)
        self.peer_transport = PeerTransport(self.node_id, self.secret, self._link_matrix(), self.link_model)
        hooks = StageHooks(on_stage=lambda outcome: self.metrics.stages.labels(outcome=outcome).inc(),
                           on_replan=lambda *_: self.metrics.replans.inc())
        self.stage = StageService(self.node_id, {unit: e.submit for unit, e in self.executors.items()}, self.host.hosts,
                                  self.peer_transport, self.directory, self.host.manifest, self.compute_model,
                                  self.link_model, hooks=hooks)
        for route in [*stage_route(self.stage, reply_secret=self.secret),
                      *gossip_routes(self.agent, self.secret, on_reject=self._on_peer_rejected)]:
            self._peer_handlers[route.path] = route.handler
        fixed = parse_arm(config.fixed_arm) if config.fixed_arm else None
        self.selection = ArmSelection(self.node_id, self.host.manifest, self.directory, config.policy,
                                      self.compute_model, fixed_arm=fixed, seed=config.policy_seed)
        self.sharing = StatisticsSharing(self.node_id, self.selection.policy) if self.selection.policy else None
        if self.sharing is not None:
            self.agent.on_merged_stats(lambda version, merged: self.sharing.absorb(merged))
        self.controller = Controller(self.node_id, self.host, self.executors, self.metrics, self.selection,
                                     stage=self.stage, state=self.node_state, on_usage=self._on_usage,
                                     admission=self.admit, compute_model=self.compute_model)
        await self.agent.start()
        if config.mdns:
            from p2pinfer.membership import MdnsDiscovery

            self.mdns = MdnsDiscovery(self.node_id, config.host, self.port,
                                      lambda peer, address: self.agent.introduce(address))
            await self.mdns.start()

    async def stop(self) -> None:
        """Drain: refuse new work (503), let in-flight requests finish, leave the cluster, close."""
        self.draining = True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=self.config.drain_timeout_s)
        for task in self._background:
            task.cancel()
        if self.mdns is not None:
            await self.mdns.stop()
        if self.agent is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.agent.stop(leave=True), timeout=5)
            await self.gossip_transport.close()
        if self.peer_transport is not None:
            await self.peer_transport.close()
        if self.runner is not None:
            await self.runner.cleanup()
        for executor in self.executors.values():
            await asyncio.to_thread(executor.close)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/infer", self.handle_infer)
        app.router.add_post("/v1/feedback", self.handle_feedback)
        app.router.add_get("/v1/health", self.handle_health)
        app.router.add_get("/v1/peers", self.handle_peers)
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_post("/v1/emulation", self.handle_emulation)
        # the router freezes when the server starts, but these services need the bound port:
        # the routes exist from the start and reach their handlers once the cluster is up
        for path in ("/v1/stage", "/v1/gossip"):
            app.router.add_post(path, self.handle_peer_message)
        add_open_inference_routes(app, self)

    # ---- plumbing ----------------------------------------------------------------------
    def _on_block(self, unit: str, variant: str, block: int, real_s: float, padded_s: float,
                  batch_size: int) -> None:
        """Runs in the executor thread: block metrics, and estimates at the device's full speed."""
        self.metrics.block_compute.labels(variant=variant, block=str(block)).observe(padded_s)
        self.unit_hosts[unit].observe(variant, block, real_s * self.profile.slowdown(unit), batch_size)

    def thermal_slowdown(self) -> float:
        """The emulated heat's slowdown, refreshed by the telemetry loop: the executor asks
        before and after every block, and reading the thermal state costs ~20 µs."""
        return self._thermal_slowdown

    def _refresh_thermal(self) -> None:
        reading = self.thermal.reading()
        self._thermal_slowdown = 1.0 / max(reading.throttle_factor, 0.05) if reading.emulated else 1.0

    def pad_factor(self, unit: str = "cpu") -> float:
        """How much slower than this host the emulated device runs right now (profile x heat)."""
        return self.profile.slowdown(unit) * self.thermal_slowdown()

    def predict_seconds(self, variant: str, first: int, last: int, batch_size: int = 1, unit: str = "cpu") -> float:
        host = self.unit_hosts.get(unit, self.host)
        assert host is not None
        return host.predict_seconds(variant, first, last, batch_size) * self.thermal_slowdown()

    # ---- cluster state -----------------------------------------------------------------------
    def _gossiped_profiles(self) -> dict[str, list[float]]:
        from p2pinfer.runtime.cluster_view import hosted_profile

        assert self.host is not None
        profiles = {name: hosted_profile(self.host.block_ms[name], hosted.first_block, hosted.last_block)
                    for name, hosted in self.host.ranges.items()}
        profiles.update({f"{UNIT_FACTOR_PREFIX}{unit}": [factor] for unit, factor in self.unit_factors().items()})
        return profiles

    def unit_factors(self) -> dict[str, float]:
        """Each compute unit's speed relative to the node's profile (gossiped with the profiles)."""
        assert self.host is not None
        base = self.host.mean_job_ms() or 1.0
        return {unit: round(host.mean_job_ms() / base, 4) for unit, host in self.unit_hosts.items()
                if host is not self.host}

    def _load(self):
        from p2pinfer.membership import Load

        assert self.executor is not None
        return Load(queue_depth=len(self.executor.queue), in_flight=self.in_flight,
                    utilisation=round(self.utilisation, 3), queue_capacity=self.config.queue_capacity)

    def _thermal_record(self):
        from p2pinfer.membership import Thermal

        reading = self.thermal.reading()
        return Thermal(temperature_c=None if reading.temperature_c is None else round(reading.temperature_c, 2),
                       throttle=round(reading.speed_lost, 3))

    def self_view(self):
        from p2pinfer.planning.peer_directory import PeerView

        assert self.host is not None and self.executor is not None
        waiting = sum(len(e.queue) + e.in_flight for e in self.executors.values()) / len(self.executors)
        return PeerView(node_id=self.node_id, url=self.url, alive=not self.draining,
                        hosted={name: (r.first_block, r.last_block) for name, r in self.host.ranges.items()},
                        block_ms={name: list(blocks) for name, blocks in self.host.block_ms.items()},
                        units=tuple(self.executors), queue_ms=waiting * self.host.mean_job_ms(),
                        slowdown=self.thermal_slowdown(), unit_factors=self.unit_factors())

    def node_state(self):
        from p2pinfer.planning.selection import NodeState

        assert self.agent is not None
        peers = [m for m in self.agent.live_members() if m.node_id != self.node_id]
        own_links = [self.link_model.estimate(self.node_id, m.node_id) for m in peers]
        guidance = self.agent.guidance()
        fill = len(self.executor.queue) / max(self.config.queue_capacity, 1) if self.executor else 0.0
        return NodeState(
            own_load=min(1.0, max(fill, self.utilisation)), own_throttle=self.thermal.reading().speed_lost,
            peers_mean_load=sum(m.load.utilisation for m in peers) / len(peers) if peers else 0.0,
            peers_mean_throttle=sum(m.thermal.throttle for m in peers) / len(peers) if peers else 0.0,
            best_link_bandwidth_mbps=max((link.bandwidth_mbps for link in own_links), default=0.0),
            best_link_rtt_ms=min((link.rtt_ms for link in own_links), default=math.inf),
            pressure_level=guidance.pressure_level if guidance is not None else 0.0)

    def admit(self, user: str, request_id: str, state) -> bool:
        """The coordinator's guidance, applied at the entry: a user over its max-min fair share
        is served normally for ``admit_fraction`` of its requests and with the cheapest arm
        for the rest; under extreme cluster pressure everyone gets the cheapest arm."""
        guidance = self.agent.guidance() if self.agent is not None else None
        if guidance is None:
            return True
        if guidance.pressure_level >= EXTREME_PRESSURE:
            return False
        fraction = guidance.admit_fraction.get(user, 1.0)
        if fraction >= 1.0:
            return True
        # a stable pseudo-random draw per request id: the same request is always treated alike
        draw = int(hashlib.sha256(request_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        return draw < fraction

    def busy_seconds(self) -> float:
        """Compute time of the busiest unit (heat and load follow the hardest-working unit)."""
        return max(executor.busy_seconds for executor in self.executors.values())

    def _on_usage(self, user: str) -> None:
        """Count an answered request of ``user``: the coordinator's fair shares are in requests/s."""
        self.user_usage[user] = self.user_usage.get(user, 0.0) + 1.0

    def _on_peer_rejected(self, reason) -> None:
        self.metrics.peer_rejections.labels(reason=str(getattr(reason, "value", reason))).inc()

    def _link_matrix(self):
        if not self.config.links_file:
            return None
        import json

        from p2pinfer.emulation.link import LinkMatrix

        document = json.loads(Path(self.config.links_file).read_text())
        roots = [*self.config.trace_roots, str(Path(__file__).resolve().parent.parent / "benchmarks" / "traces")]
        return LinkMatrix.from_dict(document.get("links", {}), default=document.get("default"),
                                    trace_roots=roots, seed=int(document.get("seed", 0)))

    async def _telemetry_loop(self, period_s: float = 0.25) -> None:
        """Heat from utilisation, own record into gossip, link estimates and bandit statistics."""
        assert self.executor is not None and self.agent is not None
        last_busy, last_time, last_stats = self.busy_seconds(), time.monotonic(), 0.0
        user_counts: dict[str, float] = {}
        while True:
            await asyncio.sleep(period_s)
            now = time.monotonic()
            busy = self.busy_seconds()
            self.utilisation = min(1.0, max(0.0, (busy - last_busy) / max(now - last_time, 1e-6)))
            last_busy, last_time = busy, now
            self.thermal.update(self.utilisation)
            self._refresh_thermal()
            self.agent.update_self(load=self._load(), thermal=self._thermal_record())
            if now - last_stats >= 2.0:
                for (source, destination), estimate in self.link_model.estimates().items():
                    if source == self.node_id:
                        self.agent.record_link(destination, estimate.rtt_ms, estimate.bandwidth_mbps)
                elapsed = now - last_stats if last_stats else 2.0
                demand = {user: (count - user_counts.get(user, 0.0)) / elapsed
                          for user, count in self.user_usage.items()}
                user_counts = dict(self.user_usage)
                self.agent.publish_stats(self.sharing.publishable() if self.sharing else {}, user_demand=demand)
                last_stats = now

    def _enter(self) -> None:
        if self.draining:
            raise Draining("node is draining: retry on another node", retry_after_s=1.0)
        self.in_flight += 1
        self._idle.clear()
        self.metrics.in_flight.set(self.in_flight)

    def _leave(self) -> None:
        self.in_flight -= 1
        self.metrics.in_flight.set(self.in_flight)
        if self.in_flight == 0:
            self._idle.set()

    @web.middleware
    async def _errors(self, request: web.Request, handler):
        try:
            return await handler(request)
        except P2PError as error:
            return self.error_response(error)
        except web.HTTPRequestEntityTooLarge:
            return self.error_response(PayloadTooLarge(
                f"body larger than the node's limit of {self.config.max_body_bytes} bytes"))

    def error_response(self, error: P2PError) -> web.Response:
        if 400 <= error.status < 500 and error.status not in (401, 429):
            self.metrics.rejected_inputs.labels(reason=error.code).inc()
        return error_body.error_response(error)

    async def read_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.config.max_body_bytes:
            raise PayloadTooLarge(f"body of {request.content_length} bytes is over the node's limit of "
                                  f"{self.config.max_body_bytes} bytes")
        return await request.read()

    def check_deadline(self, deadline_ms: float) -> None:
        if not math.isfinite(deadline_ms) or deadline_ms <= 0:
            raise BadDeadline(f"deadline_ms must be a positive finite number of milliseconds, got {deadline_ms}")
        if deadline_ms > self.config.max_deadline_ms:
            raise BadDeadline(f"deadline_ms {deadline_ms} is over the node's maximum of "
                              f"{self.config.max_deadline_ms} ms")

    async def decode_infer(self, request: web.Request) -> tuple[InferRequest, np.ndarray]:
        from p2pinfer.protocol import wire

        body = await self.read_body(request)
        content_type = request.content_type
        if content_type == wire.CONTENT_TYPE:
            header, tensors = wire.decode_frame(body, wire.InferFrameHeader)
            infer_request = header.to_request()
            if "input" not in tensors:
                raise BadRequest("binary frame has no tensor named 'input'")
            array = tensors["input"]
        elif content_type == JSON:
            try:
                infer_request = msgspec.json.decode(body, type=InferRequest)
            except msgspec.ValidationError as error:
                raise BadRequest(f"invalid request: {error}") from None
            except msgspec.DecodeError as error:
                raise BadRequest(f"body is not valid JSON: {error}") from None
            if infer_request.data is None:
                raise BadRequest("JSON request has no 'data' (the input tensor as nested lists)")
            array = wire.json_tensor(infer_request.data, "float32")
        else:
            raise UnsupportedMediaType(f"content type {content_type!r} is not supported; send {JSON} or "
                                       f"{wire.CONTENT_TYPE}")
        if infer_request.version != wire.WIRE_VERSION:
            from p2pinfer.errors import UnsupportedVersion

            raise UnsupportedVersion(f"request version {infer_request.version}, node speaks {wire.WIRE_VERSION}")
        self.check_deadline(infer_request.deadline_ms)
        assert self.host is not None
        variant = self.host.require_family(infer_request.family)
        array = wire.validate_input(array, tuple(variant.input_shape), ("float32", "float16", "float64"),
                                    model=infer_request.family)
        return infer_request, array.astype(np.float32, copy=False)

    # ---- handlers ----------------------------------------------------------------------
    async def handle_infer(self, request: web.Request) -> web.Response:
        received_at = time.monotonic()
        self._enter()
        try:
            infer_request, array = await self.decode_infer(request)
            if len(array) != 1:
                raise BadRequest(f"/v1/infer takes one sample per request, got a batch of {len(array)}")
            assert self.controller is not None
            tensor = torch.from_numpy(np.array(array, dtype=np.float32, copy=True))
            try:
                result = await self.controller.infer(infer_request, tensor, received_at)
            except P2PError as error:
                self.metrics.requests.labels(outcome=error.code).inc()
                if error.code == "deadline_exceeded":
                    self.metrics.deadline_misses.inc()
                raise
            self.metrics.requests.labels(outcome="ok").inc()
            self.metrics.latency.observe(result.latency_ms / 1000)
            if not result.deadline_met:
                self.metrics.deadline_misses.inc()
            return web.Response(body=msgspec.json.encode(result), content_type=JSON)
        finally:
            self._leave()

    async def handle_feedback(self, request: web.Request) -> web.Response:
        if request.content_type != JSON:
            raise UnsupportedMediaType(f"feedback must be {JSON}, got {request.content_type!r}")
        body = await self.read_body(request)
        try:
            feedback = msgspec.json.decode(body, type=FeedbackRequest)
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            raise BadRequest(f"invalid feedback: {error}") from None
        assert self.controller is not None
        result = self.controller.feedback(feedback)
        return web.Response(body=msgspec.json.encode(result), content_type=JSON)

    def health(self) -> dict:
        assert self.executor is not None and self.host is not None
        return {"status": "draining" if self.draining else "ok", "node_id": self.node_id, "url": self.url,
                "queue_depth": len(self.executor.queue), "in_flight": self.in_flight,
                "variants": sorted(self.host.ranges), "families": self.host.families(),
                "uptime_s": round(time.monotonic() - self.started_at, 3), "pid": os.getpid(),
                "coordinator": self.agent.coordinator() if self.agent else None,
                "policy": self.controller.policy_summary() if self.controller else None,
                "merged_observations": self.sharing.absorbed_observations if self.sharing else 0}

    async def handle_health(self, request: web.Request) -> web.Response:
        return web.json_response(self.health(), status=503 if self.draining else 200)

    async def handle_peers(self, request: web.Request) -> web.Response:
        from p2pinfer.membership.messages import member_as_json

        assert self.agent is not None
        guidance = self.agent.guidance()
        peers = []
        for member in self.agent.members():
            record = member_as_json(member)
            record["status"] = member.status.name.lower()
            record["url"] = f"http://{member.address}"
            peers.append(record)
        return web.json_response({
            "self": self.node_id, "coordinator": self.agent.coordinator(), "peers": peers,
            "guidance": None if guidance is None else msgspec.to_builtins(guidance),
            "policy": self.config.policy,
            "merged_observations": self.sharing.absorbed_observations if self.sharing else 0})

    async def handle_peer_message(self, request: web.Request) -> web.StreamResponse:
        handler = self._peer_handlers.get(request.path)
        if handler is None:
            raise Draining("node is starting: peer services are not up yet", retry_after_s=1.0)
        return await handler(request)

    async def handle_emulation(self, request: web.Request) -> web.Response:
        """Signed like a peer message (the cluster secret): drive the emulated device, e.g.
        ``{"temperature_c": 85, "hold": true}`` to heat it, ``{"release": true}`` to let go."""
        body = await self.read_body(request)
        try:
            command = msgspec.json.decode(body, type=EmulationCommand)
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            raise BadRequest(f"invalid emulation command: {error}") from None
        if command.release:
            self.thermal.release()
        if command.temperature_c is not None:
            self.thermal.inject(command.temperature_c, hold=command.hold)
        self._refresh_thermal()
        reading = self.thermal.reading()
        return web.json_response({"temperature_c": reading.temperature_c, "throttle_factor": reading.throttle_factor,
                                  "source": reading.source})

    async def handle_metrics(self, request: web.Request) -> web.Response:
        if self.executor is not None:
            self.metrics.queue_depth.set(len(self.executor.queue))
        if self.agent is not None:
            for kind, count in self.agent.counters.items():
                self.metrics.gossip_events.labels(kind=kind).set(count)
            statuses: dict[str, int] = {}
            for member in self.agent.members():
                statuses[member.status.name.lower()] = statuses.get(member.status.name.lower(), 0) + 1
            for status in ("alive", "suspect", "dead", "left"):
                self.metrics.members.labels(status=status).set(statuses.get(status, 0))
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")


def default_zoo_dir() -> Path:
    from zoo.manifest import DEFAULT_ZOO_DIR

    return DEFAULT_ZOO_DIR
