"""One node process: wiring only. ``start`` builds the node's services (``NodeServices``)
and serves their routes; the routes, the controller, membership and collaborative
execution live in their own modules.

Lifecycle: ``start`` binds the socket first (so every service knows the node's address
before the app runs), loads the hosted model slices in a thread (not on the loop), wires
the services, and registers each teardown on an ``AsyncExitStack`` as it goes, so a start
that fails half-way closes what it had opened. ``stop`` refuses new work with 503, waits
for in-flight requests (drain), then unwinds the stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
import math
import os
import re
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
from aiohttp import web

from p2pinfer.emulation.device_profile import DeviceProfile, get_profile
from p2pinfer.emulation.link import LinkMatrix
from p2pinfer.emulation.thermal import ThermalModel
from p2pinfer.errors import BadRequest, UnknownProfile
from p2pinfer.membership import (
    GossipAgent,
    GossipSettings,
    HttpTransport,
    MdnsDiscovery,
    gossip_routes,
    initial_contacts,
)
from p2pinfer.planning.latency_model import ComputeLatencyModel, LinkLatencyModel
from p2pinfer.planning.selection import ArmSelection
from p2pinfer.planning.spreading import Outstanding
from p2pinfer.protocol.auth import Verifier, peer_auth_middleware
from p2pinfer.protocol.request_limits import ID_CHARACTERS, ID_PUNCTUATION, check_id
from p2pinfer.runtime.cluster_view import NodeDirectory
from p2pinfer.runtime.controller import Controller
from p2pinfer.runtime.device_state import DeviceState, admit
from p2pinfer.runtime.executor import Executor
from p2pinfer.runtime.http_server import NodeRunner
from p2pinfer.runtime.learning_exchange import StatisticsSharing, per_origin_merger
from p2pinfer.runtime.link_prober import run_link_prober
from p2pinfer.runtime.metrics import NodeMetrics
from p2pinfer.runtime.model_host import ModelHost
from p2pinfer.runtime.open_inference_routes import open_inference_routes
from p2pinfer.runtime.request_gate import RequestGate
from p2pinfer.runtime.routes import error_middleware, node_routes, unparsable_request_answer
from p2pinfer.runtime.services import NodeServices
from p2pinfer.runtime.stage import StageHooks, StageService, stage_route
from p2pinfer.runtime.telemetry import run_telemetry
from p2pinfer.runtime.thinning import Thinning
from p2pinfer.runtime.transport import PeerTransport
from p2pinfer.runtime.warmup import CodecCosts, UnitWarmup, measure_codec_costs, representative_boundary, warm_unit
from p2pinfer.types import NodeId
from selector import Arm
from zoo.backend import (
    CPU_BACKENDS,
    Backend,
    available_backends,
    onnxruntime_unavailable_reason,
    require_available,
)
from zoo.compute_unit import discover_units
from zoo.errors import BackendUnavailableError
from zoo.manifest import DEFAULT_ZOO_DIR

log = logging.getLogger("p2pinfer.node")


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
    inline_max_ms: float = 2.0  # an idle unit runs a job predicted under this on the event loop
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
    cpu_backend: str = "auto"  # what runs CPU units' blocks: auto | cpu-eager | onnxruntime (zoo.backend)

    def __post_init__(self) -> None:
        """Refuse (``BadRequest``) what would only fail later: a drain deadline that is NaN,
        infinite or negative (``stop`` failed on it at SIGTERM, without draining), and a node id
        the routes would refuse in a plan (outside ``check_id``'s charset and length)."""
        if not (math.isfinite(self.drain_timeout_s) and self.drain_timeout_s >= 0):
            raise BadRequest(f"--drain-timeout must be a finite number of seconds >= 0, got {self.drain_timeout_s}")
        check_id(self.node_id, "--node-id")


PEER_PATHS = frozenset({"/v1/gossip", "/v1/stage", "/v1/emulation"})
HANDLER_GRACE_S = 0.3
"""After the drain deadline, how long aiohttp waits for handlers still running (a stalled
upload) before cancelling them: ``stop`` returns within drain timeout + about 1 s."""
LEAVE_TIMEOUT_S = 0.5
"""The goodbye to the cluster after draining (peers find out anyway, through SWIM)."""
JOIN_TIMEOUT_S = 3.0
"""How long a starting node with seeds waits for its first gossip round (an unreachable
seed costs one probe timeout) before it announces readiness anyway."""


def unit_names(spec: str) -> list[str]:
    """``cpu,cpu:1,cuda:0`` or ``auto`` (every unit this machine has: zoo.compute_unit)."""
    if spec.strip() == "auto":
        return [unit.name for unit in discover_units()]
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names or len(set(names)) != len(names):
        raise BadRequest(f"--units {spec!r}: give distinct unit names, e.g. cpu,cpu:1,cuda:0")
    for name in names:
        kind = name.split(":")[0]
        if kind not in ("cpu", "cuda"):
            raise BadRequest(f"unknown compute unit {name!r}: use cpu, cpu:N or cuda:N")
    return names


CPU_BACKEND_VARIABLE = "P2PINFER_CPU_BACKEND"


def cpu_backend(name: str, threads: int) -> Backend:
    """The backend of the node's CPU units: ``onnxruntime`` (each block exported to ONNX at
    load and run with the GIL released: a busy event loop does not stretch it), ``cpu-eager``
    (PyTorch), or ``auto``: ``$P2PINFER_CPU_BACKEND`` when set (a device's own choice for every
    node started there), else ONNX Runtime where it is installed, else eager. Asked for by name
    and missing, it is refused at start with the reason."""
    if name == "auto":
        name = os.environ.get(CPU_BACKEND_VARIABLE) or "auto"
    if name not in ("auto", *CPU_BACKENDS):
        raise BadRequest(f"--cpu-backend (or ${CPU_BACKEND_VARIABLE}) {name!r}: use auto or one of "
                         f"{', '.join(CPU_BACKENDS)}")
    if name == "auto":
        name = "onnxruntime" if onnxruntime_unavailable_reason() is None else "cpu-eager"
    backend = Backend.cpu() if name == "cpu-eager" else Backend.onnxruntime(intra_op_threads=threads)
    try:
        require_available(backend)
    except BackendUnavailableError as error:
        raise BadRequest(str(error)) from None
    return backend


def _secret(config: NodeConfig) -> bytes:
    """The cluster secret. Without one a node still runs alone, with a random secret no
    peer can know — a cluster needs the same ``--secret`` (or $P2PINFER_SECRET) on every node."""
    text = config.secret or os.environ.get("P2PINFER_SECRET")
    if text:
        return text.encode()
    if config.seeds or config.peers_file or config.mdns:
        raise BadRequest("joining a cluster needs the cluster secret: pass --secret or set P2PINFER_SECRET")
    return os.urandom(32)


def parse_arm(text: str) -> Arm:
    try:
        return Arm.from_key(text)
    except Exception as error:  # noqa: BLE001 - any parse failure is the user's input
        raise BadRequest(f"arm {text!r} must look like VARIANT@EXIT ({error})") from None


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.node_id = config.node_id or default_node_id()
        self.port = config.port
        self.services: NodeServices | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def url(self) -> str:
        host = self.config.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def _names(self) -> set[str]:
        """What peers may sign a message to this node for (``recipient_names``)."""
        return recipient_names(self.node_id, self.config.host, self.port)

    async def start(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            await self._start(stack)
            self._stack = stack.pop_all()

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        config = self.config
        torch.set_num_threads(config.threads)
        secret = _secret(config)
        profile = get_profile(config.device_profile)
        units = unit_names(config.units)
        listening = stack.enter_context(_bound_socket(config.host, config.port))
        self.port = listening.getsockname()[1]
        started_at = time.monotonic()
        metrics = NodeMetrics()
        gate = RequestGate(metrics, config.max_body_bytes, config.max_deadline_ms)

        unit_hosts: dict[str, ModelHost] = {}
        cpu_host: ModelHost | None = None  # CPU units share one copy of the slices
        for unit in units:  # an accelerator holds its own copy
            if unit.startswith("cpu"):
                if cpu_host is None:
                    cpu_host = await asyncio.to_thread(ModelHost, config.zoo_dir, config.variants, "cpu",
                                                       config.threads, 10, profile.slowdown("cpu"),
                                                       cpu_backend(config.cpu_backend, config.threads))
                unit_hosts[unit] = cpu_host
            else:
                unit_hosts[unit] = await asyncio.to_thread(ModelHost, config.zoo_dir, config.variants, unit,
                                                           config.threads, 10, profile.slowdown(unit))
        device = DeviceState(self.node_id, self.url, profile,
                             ThermalModel.for_profile(profile, use_sensor=config.use_thermal_sensor),
                             unit_hosts, gate, config.queue_capacity)
        for unit, host in unit_hosts.items():
            executor = Executor(
                host.models, functools.partial(device.predict_seconds, unit=unit),
                tail_predictor=functools.partial(device.predict_seconds, unit=unit, tail=True),
                block_predictor=functools.partial(device.predict_block_seconds, unit=unit),
                capacity=config.queue_capacity, workers=config.workers, max_batch=config.max_batch,
                batch_window_s=config.batch_window_ms / 1000,
                on_run=functools.partial(self._on_run, metrics, device, unit, Thinning()),
                slowdown=functools.partial(device.pad_factor, unit), name=unit, threads=config.threads,
                calibrated_s=_calibrated_s(host), inline_max_s=config.inline_max_ms / 1000,
                on_batch=metrics.batch_size.observe)
            device.executors[unit] = executor
            stack.push_async_callback(asyncio.to_thread, executor.close)
        # no request pays a cold start, and the profile everyone plans with is the warm unit's
        warmups: list[UnitWarmup] = []
        measured: set[int] = set()
        for unit, executor in device.executors.items():
            host_of_unit = unit_hosts[unit]
            warmups.append(await warm_unit(unit, executor, host_of_unit, config.max_batch,
                                           measure=id(host_of_unit) not in measured))
            measured.add(id(host_of_unit))
        for unit, executor in device.executors.items():  # pad to the warm profile the planner now predicts with
            executor.calibrated_s = _calibrated_s(unit_hosts[unit])
        codec_costs = await asyncio.to_thread(_codec_costs, profile, unit_hosts.values())
        backends = tuple(await asyncio.to_thread(available_backends))

        link_model = LinkLatencyModel(bandwidth_min_bytes=8 * 1024)
        # peers' blocks, learnt from hops (own blocks: the executor's model)
        compute_model = ComputeLatencyModel(own_node=NodeId(self.node_id))
        gossip_transport = HttpTransport(self.node_id, secret)
        stack.push_async_callback(gossip_transport.close)
        agent = GossipAgent(
            self.node_id, f"{config.host}:{self.port}", gossip_transport,
            seeds=initial_contacts(config.seeds, config.peers_file),
            settings=GossipSettings(interval_s=config.gossip_interval_s), stats_merger=per_origin_merger,
            eligible_coordinator=config.eligible_coordinator)
        agent.update_self(variants=device.gossiped_profiles(), compute_units=list(device.executors),
                          load=device.load(), thermal=device.thermal_record())
        outstanding = Outstanding()  # this entry's requests in flight at each peer (spreading)
        directory = NodeDirectory(self.node_id, device.self_view, link_model, agent, outstanding=outstanding)
        peer_transport = PeerTransport(self.node_id, secret, _link_matrix(config), link_model)
        stack.push_async_callback(peer_transport.close)
        hooks = StageHooks(on_stage=lambda outcome: metrics.stages.labels(outcome=outcome).inc(),
                           on_replan=lambda *_: metrics.replans.inc(),
                           load_word=lambda: (device.jobs_now(), agent.view.own.incarnation, agent.view.own.heartbeat),
                           on_peer_load=directory.heard_load)
        host = device.host
        stage = StageService(self.node_id, {unit: e.submit for unit, e in device.executors.items()}, host.hosts,
                             peer_transport, directory, host.manifest, compute_model, link_model, hooks=hooks)
        fixed = parse_arm(config.fixed_arm) if config.fixed_arm else None
        selection = ArmSelection(self.node_id, host.manifest, directory, config.policy, compute_model,
                                 fixed_arm=fixed, seed=config.policy_seed, codecs=codec_costs.pricing())
        sharing = StatisticsSharing(self.node_id, selection.policy) if selection.policy else None
        if sharing is not None:
            agent.on_merged_stats(lambda version, merged: sharing.absorb(merged))
        controller = Controller(self.node_id, host, device.executors, metrics, selection, stage=stage,
                                state=lambda: device.node_state(agent, link_model), on_usage=device.count_usage,
                                admission=lambda user, request_id, state: admit(agent, user, request_id),
                                outstanding=outstanding)
        peer_refusals: Counter[str] = Counter()
        peer_verifier = Verifier(secret, recipients=self._names())
        services = NodeServices(
            node_id=self.node_id, url=self.url, policy=config.policy, started_at=started_at, metrics=metrics,
            gate=gate, device=device, host=host, link_model=link_model, compute_model=compute_model, agent=agent,
            directory=directory, stage=stage, selection=selection, sharing=sharing, controller=controller,
            peer_refusals=peer_refusals, warmups=tuple(warmups), backends=backends, peer_verifier=peer_verifier,
            codec_costs=codec_costs)

        def on_peer_rejected(reason: object) -> None:
            label = str(getattr(reason, "value", reason))
            metrics.peer_rejections.labels(reason=label).inc()
            peer_refusals[label] += 1
            if peer_refusals[label] in (1, 10, 100) or peer_refusals[label] % 1000 == 0:
                log.warning("refused %d peer message(s): %s%s", peer_refusals[label], label,
                            " (does the sender have the same --secret?)" if label == "bad_signature" else "")

        app = web.Application(client_max_size=config.max_body_bytes + 1024, middlewares=[
            error_middleware(metrics, config.max_body_bytes),
            peer_auth_middleware(peer_verifier, protected_paths=PEER_PATHS,
                                 on_reject=on_peer_rejected)])
        app.add_routes([*node_routes(services), *open_inference_routes(services),
                        *stage_route(stage, reply_secret=secret),
                        *gossip_routes(agent, secret, on_reject=on_peer_rejected)])
        runner = NodeRunner(app, refuse=functools.partial(unparsable_request_answer, gate), access_log=None,
                            handle_signals=False, shutdown_timeout=HANDLER_GRACE_S)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.SockSite(runner, listening).start()

        await agent.start()
        stack.push_async_callback(_leave_cluster, agent)
        if config.seeds or config.peers_file:
            # one round with the seeds before announcing readiness: a node whose id a live
            # member holds at another address fails its start here (NodeIdTaken)
            await agent.joined(JOIN_TIMEOUT_S)
        if config.mdns:
            mdns = MdnsDiscovery(self.node_id, config.host, self.port, lambda peer, address: agent.introduce(address))
            await mdns.start()
            stack.push_async_callback(mdns.stop)
        telemetry = asyncio.create_task(run_telemetry(device, agent, link_model, sharing), name="telemetry")
        stack.callback(telemetry.cancel)
        prober = asyncio.create_task(run_link_prober(directory, peer_transport, link_model), name="link-prober")
        stack.callback(prober.cancel)
        self.services = services

    async def stop(self) -> None:
        """Drain: refuse new work (503), let in-flight requests finish, leave the cluster, close."""
        if self.services is not None:
            await self.services.gate.drain(self.config.drain_timeout_s)
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    @staticmethod
    def _on_run(metrics: NodeMetrics, device: DeviceState, unit: str, thinning: Thinning, variant: str, first: int,
                padded_s: list[float], batch_size: int) -> None:
        """After each run (in the executor's thread, or inline): block metrics for every block
        it ran, and the estimates at the device's full speed (one call per run, not per block;
        at most one run per range and batch size every ``OBSERVATION_PERIOD_S``: ``Thinning``)."""
        histograms = metrics.block_compute_children(variant)
        for block, seconds in enumerate(padded_s, start=first):
            histograms[block].observe(seconds)
        if thinning.due((variant, first, len(padded_s), batch_size), time.monotonic()):
            device.observe_run(unit, variant, first, padded_s, batch_size)


def default_node_id() -> str:
    """``hostname-xxxxxx``, with any character an id may not hold (``check_id``: a hostname's
    non-ASCII letters) made ``-`` and at most 100 of them, so a plan naming this node is never
    refused."""
    hostname = re.sub(f"[^{ID_CHARACTERS}]", "-", socket.gethostname())[:100].lstrip(f"{ID_PUNCTUATION}-")
    return f"{hostname or 'node'}-{uuid.uuid4().hex[:6]}"


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _interface_addresses(families: tuple[int, ...]) -> set[str]:
    """The addresses of this machine's network interfaces (no DNS: read from the kernel)."""
    return {entry.address.split("%")[0] for entries in psutil.net_if_addrs().values() for entry in entries
            if entry.family in families}


def recipient_names(node_id: str, host: str, port: int) -> set[str]:
    """Every name a peer may sign a message to this node for: its node id, and ``name:port``
    for each name its listening socket is reachable by: the ``--host`` as given; for a
    loopback host also ``localhost``, ``127.0.0.1`` and ``::1``; for a wildcard host those,
    the machine's hostname and its interface addresses. A seed may be given as any of them
    (``--seed localhost:P`` for a node on 127.0.0.1), and only the first contact is signed for
    an address: gossip to a known member is signed for its node id (``HttpTransport``), which
    no other node accepts."""
    hosts = {host}
    if _is_loopback(host) or host in WILDCARD_HOSTS:
        hosts.update(LOOPBACK_HOSTS)
    if host in WILDCARD_HOSTS:
        hosts.add(socket.gethostname())
        families = (socket.AF_INET,) if host == "0.0.0.0" else (socket.AF_INET, socket.AF_INET6)
        hosts.update(_interface_addresses(families))
    names = {node_id}
    for name in hosts:
        names.add(f"{name}:{port}")
        if ":" in name:  # an IPv6 address, as an address names it
            names.add(f"[{name}]:{port}")
    return names


@contextlib.contextmanager
def _bound_socket(host: str, port: int) -> Iterator[socket.socket]:
    """The node's listening socket, bound before anything else so its port is known."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            raise BadRequest(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
        sock.listen(1024)
        sock.setblocking(False)
        yield sock
    finally:
        sock.close()


def _codec_costs(profile: DeviceProfile, hosts: Iterable[ModelHost]) -> CodecCosts:
    """This node's boundary-codec costs for its planner: timed on a boundary of the variants it
    hosts, times the emulated CPU's slowdown (the codecs run on the CPU); the constant
    defaults, scaled the same, if the timing fails (a node starts anyway)."""
    try:
        slowdown = profile.slowdown("cpu")
    except UnknownProfile:
        slowdown = 1.0
    variants = [model.variant for host in hosts for model in host.models.values()]
    try:
        return measure_codec_costs(representative_boundary(variants), slowdown)
    except Exception as error:  # noqa: BLE001 - a planner with default prices beats a node that will not start
        log.warning("could not time the boundary codecs (%s); pricing them with the defaults", error)
        return CodecCosts.defaults(slowdown)


def _calibrated_s(host: ModelHost) -> dict[tuple[str, int], float]:
    """Each block's time on this host (s): an emulated device pads a lone job to factor x this."""
    return {(name, block): ms / 1000 for name, blocks in host.host_block_ms.items() for block, ms in enumerate(blocks)}


async def _leave_cluster(agent: GossipAgent) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(agent.stop(leave=True), timeout=LEAVE_TIMEOUT_S)


def _link_matrix(config: NodeConfig) -> LinkMatrix | None:
    """The emulated outgoing links of ``--links FILE``, or None (real links only)."""
    if not config.links_file:
        return None
    document = json.loads(Path(config.links_file).read_text())
    roots = [*config.trace_roots, str(Path(__file__).resolve().parents[2] / "benchmarks" / "traces")]
    return LinkMatrix.from_dict(document.get("links", {}), default=document.get("default"),
                                trace_roots=roots, seed=int(document.get("seed", 0)))


def default_zoo_dir() -> Path:
    return DEFAULT_ZOO_DIR
