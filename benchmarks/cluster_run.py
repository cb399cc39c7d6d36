"""A scenario's cluster for one policy's run: the nodes as real ``p2pinfer node`` processes on
loopback (each one's ``NodeConfig`` turned into its command line, its emulated links written
to a ``--links`` file), and the scenario's timed events (kill, restart, heat) applied to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.scenario import TRACE_ROOTS, Event, HarnessError, NodeSpec, Scenario
from p2pinfer.errors import NodeStartError
from p2pinfer.runtime.node import NodeConfig
from p2pinfer.testing import free_ports

EMULATION_ROUTE = "/v1/emulation"
HARNESS_SENDER = "bench-harness"
NODE_START_TIMEOUT_S = 120.0


class BenchError(HarnessError):
    """The benchmark could not run (not a policy's fault: that is reported, not raised)."""


# ---- a node's command line ---------------------------------------------------------------------

NODE_FLAGS = {
    "node_id": "--node-id", "variants": "--variants", "device_profile": "--device-profile", "threads": "--threads",
    "workers": "--workers", "policy": "--policy", "secret": "--secret", "queue_capacity": "--queue-capacity",
    "max_batch": "--max-batch", "links_file": "--links", "seeds": "--seed", "port": "--port",
    "cpu_backend": "--cpu-backend", "zoo_dir": "--zoo",
}
"""The ``NodeConfig`` fields the harness sets, and the ``p2pinfer node`` flag of each."""


def node_flags(config: NodeConfig) -> list[str]:
    """The ``p2pinfer node`` arguments that give ``config``: a flag for each field of
    ``NODE_FLAGS`` not at its default (a list field: the flag once per item). A config that
    changes any other field is refused: the harness would silently drop it."""
    default = NodeConfig()
    changed = {item.name for item in dataclasses.fields(NodeConfig)
               if getattr(config, item.name) != getattr(default, item.name)}
    if changed - NODE_FLAGS.keys():
        raise BenchError(f"the harness passes no flag for NodeConfig fields {sorted(changed - NODE_FLAGS.keys())}")
    arguments: list[str] = []
    for name, flag in NODE_FLAGS.items():
        if name not in changed:
            continue
        value = getattr(config, name)
        for item in value if isinstance(value, list) else [value]:
            arguments += [flag, str(item)]
    return arguments


# ---- links for the nodes -------------------------------------------------------------------------


def directed_links(scenario: Scenario) -> dict[tuple[str, str], dict[str, Any]]:
    """Every direction the scenario's link keys name, by the rules of ``LinkMatrix.from_dict``:
    ``a->b`` one direction (and its reverse if no key names the reverse), ``a<->b`` both."""
    claimed: dict[tuple[str, str], dict[str, Any]] = {}
    mirrors: dict[tuple[str, str], dict[str, Any]] = {}
    for key, table in scenario.links.items():
        both = "<->" in key
        source, destination = (part.strip() for part in key.split("<->" if both else "->"))
        claimed[(source, destination)] = dict(table)
        if both:
            claimed[(destination, source)] = dict(table)
        else:
            mirrors[(destination, source)] = dict(table)
    for pair, table in mirrors.items():
        claimed.setdefault(pair, table)
    return claimed


def _absolute_trace(table: Mapping[str, Any], scenario: Scenario) -> dict[str, Any]:
    table = dict(table)
    if "trace" in table:
        from p2pinfer.emulation.trace import resolve_trace

        roots = [*TRACE_ROOTS, Path(scenario.source).parent] if scenario.source else list(TRACE_ROOTS)
        table["trace"] = str(resolve_trace(table["trace"], roots).resolve())
    return table


def links_document(scenario: Scenario, node: str) -> dict[str, Any]:
    """The ``--links FILE`` JSON of one node: its outgoing links, trace paths made absolute.

    ``{"node": "a", "seed": 7, "links": {"a->b": {bandwidth_mbps, rtt_ms, ...}}, "default": {...} | null}``
    — what ``LinkMatrix.from_dict(doc["links"], default=doc["default"], seed=doc["seed"])`` takes.
    """
    links = {f"{source}->{destination}": _absolute_trace(table, scenario)
             for (source, destination), table in sorted(directed_links(scenario).items()) if source == node}
    default = _absolute_trace(scenario.link_default, scenario) if scenario.link_default else None
    return {"node": node, "seed": scenario.seed, "links": links, "default": default}


# ---- one cluster ------------------------------------------------------------------------------------


@dataclass
class AppliedEvent:
    at_s: float
    kind: str
    node: str | None
    args: dict[str, Any]
    status: str = "pending"  # applied | unsupported | failed | skipped
    detail: str = ""
    applied_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"at_s": self.at_s, "kind": self.kind, "node": self.node, "args": self.args, "status": self.status,
                "detail": self.detail, "applied_s": self.applied_s}


class ScenarioCluster:
    """The scenario's nodes as real processes on loopback, for one policy's run."""

    def __init__(self, scenario: Scenario, policy: str, work_dir: Path, secret: str, warnings: list[str]) -> None:
        self.scenario = scenario
        self.policy = policy
        self.work_dir = work_dir
        self.secret = secret
        self.warnings = warnings
        self.nodes: dict[str, Any] = {}  # name -> NodeProcess
        self.arguments: dict[str, list[str]] = {}

    def node_config(self, spec: NodeSpec, seed_address: str | None, port: int = 0) -> NodeConfig:
        """What the node of ``spec`` runs with in this cluster (its links written to a file)."""
        default = NodeConfig()
        links_file = None
        document = links_document(self.scenario, spec.name)
        if document["links"] or document["default"]:
            path = self.work_dir / f"links-{spec.name}.json"
            path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
            links_file = str(path)
        return NodeConfig(
            node_id=spec.name, variants=spec.variants, device_profile=spec.device_profile, threads=spec.threads,
            policy=self.policy, secret=self.secret, port=port, links_file=links_file,
            seeds=[] if seed_address is None else [seed_address],
            queue_capacity=default.queue_capacity if spec.queue_capacity is None else spec.queue_capacity,
            max_batch=default.max_batch if spec.max_batch is None else spec.max_batch,
            workers=default.workers if spec.workers is None else spec.workers, cpu_backend=spec.cpu_backend,
            zoo_dir=None if self.scenario.zoo_dir is None else str(self.scenario.zoo_dir))

    def node_arguments(self, spec: NodeSpec, seed_address: str | None, port: int = 0) -> list[str]:
        return node_flags(self.node_config(spec, seed_address, port))

    def start(self) -> None:
        """Every node at once on ports chosen here, the first one as everyone's seed (seeds are
        retried while a node is alone); if a node does not start so (e.g. its port was taken
        before it bound it), the first node alone and then the others, on ports of their own
        choosing — a failure then is the run's."""
        if len(self.scenario.nodes) > 1:
            try:
                self._start_together()
                return
            except NodeStartError:
                self._kill_all()
                self.warnings.append("a node did not start with the others (a chosen port may have been taken "
                                     "before it bound it): nodes started one by one")
        self._start_after_first()

    def _kill_all(self) -> None:
        for node in self.nodes.values():
            node.kill()
        self.nodes.clear()
        self.arguments.clear()

    def _start_together(self) -> None:
        from p2pinfer.cli.cluster import start_node

        ports = free_ports(len(self.scenario.nodes))
        seed = f"127.0.0.1:{ports[0]}"
        for index, spec in enumerate(self.scenario.nodes):
            self.arguments[spec.name] = self.node_arguments(spec, seed if index else None, ports[index])
        self._start_in_parallel(list(self.scenario.nodes), start_node)

    def _start_in_parallel(self, specs: list[NodeSpec], start_node: Callable[..., Any]) -> None:
        with ThreadPoolExecutor(max_workers=max(len(specs), 1)) as pool:
            futures = {spec.name: pool.submit(start_node, self.arguments[spec.name], NODE_START_TIMEOUT_S)
                       for spec in specs}
            errors = []
            for name, future in futures.items():
                try:
                    self.nodes[name] = future.result()
                except Exception as error:  # noqa: BLE001 - collected, then raised once all are done
                    errors.append(error)
            if errors:
                raise errors[0]

    def _start_after_first(self) -> None:
        from p2pinfer.cli.cluster import start_node

        specs = list(self.scenario.nodes)
        first = specs[0]
        self.arguments[first.name] = self.node_arguments(first, None)
        self.nodes[first.name] = start_node(self.arguments[first.name], timeout_s=NODE_START_TIMEOUT_S)
        seed = self.nodes[first.name].address
        rest = specs[1:]
        for spec in rest:
            self.arguments[spec.name] = self.node_arguments(spec, seed)
        self._start_in_parallel(rest, start_node)

    @property
    def urls(self) -> dict[str, str]:
        return {name: node.url for name, node in self.nodes.items()}

    def kill(self, name: str) -> None:
        self.nodes[name].kill()

    def restart(self, name: str) -> None:
        """Start a killed node again: same arguments, same node id, same port (users' failover
        lists keep working)."""
        from p2pinfer.cli.cluster import start_node

        old = self.nodes[name]
        if old.alive():
            raise BenchError(f"node {name} is still running: restart follows a kill")
        arguments = list(self.arguments[name])
        if "--port" not in arguments:
            arguments += ["--port", str(old.port)]
        self.nodes[name] = start_node(arguments, timeout_s=NODE_START_TIMEOUT_S)

    async def heat(self, session: aiohttp.ClientSession, name: str, temperature_c: float) -> tuple[str, str]:
        body = json.dumps({"temperature_c": temperature_c}).encode()
        headers = {"Content-Type": "application/json"}
        try:
            from p2pinfer.protocol.auth import sign_request

            headers.update(sign_request(self.secret.encode(), HARNESS_SENDER, "POST", EMULATION_ROUTE, body,
                                        time.time(), to=name))
        except ImportError:
            pass
        url = self.nodes[name].url + EMULATION_ROUTE
        async with session.post(url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=5)) as response:
            text = (await response.text())[:200]
            if response.status in (404, 405):
                return "unsupported", f"{EMULATION_ROUTE} answered {response.status}"
            if response.status >= 300:
                return "failed", f"HTTP {response.status}: {text}"
            return "applied", text

    def stop(self) -> None:
        nodes = [node for node in self.nodes.values() if node.alive()]
        for node in nodes:
            with contextlib.suppress(ProcessLookupError):
                node.process.send_signal(15)
        for node in nodes:
            node.terminate(timeout_s=15)
        for name, node in self.nodes.items():  # what the nodes logged: an internal error names its log here
            if node.output:
                (self.work_dir / f"{self.policy}-{name}.log").write_text("".join(node.output), encoding="utf-8")


# ---- timed events -----------------------------------------------------------------------------------


async def apply_events(cluster: ScenarioCluster, events: Sequence[Event], started: float,
                       session: aiohttp.ClientSession) -> list[AppliedEvent]:
    """Apply each event at its time on the run's clock; every event ends with a status."""
    applied = [AppliedEvent(event.at_s, event.kind, event.node, dict(event.args)) for event in events]
    for event, record in zip(events, applied, strict=True):
        delay = started + event.at_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        record.applied_s = round(time.monotonic() - started, 3)
        try:
            # the scenario parser refuses kill, restart and heat events without a node
            node = event.node
            if event.kind == "kill":
                assert node is not None
                await asyncio.to_thread(cluster.kill, node)
                record.status, record.detail = "applied", "SIGKILL"
            elif event.kind == "restart":
                assert node is not None
                await asyncio.to_thread(cluster.restart, node)
                record.status = "applied"
                record.detail = f"back at {cluster.nodes[node].url} after " \
                                f"{time.monotonic() - started - record.applied_s:.2f} s"
            elif event.kind == "heat":
                assert node is not None
                record.status, record.detail = await cluster.heat(session, node,
                                                                  float(event.args.get("temperature_c", 85.0)))
            elif event.kind == "users":
                record.status, record.detail = "applied", "in the precomputed arrival schedule"
        except Exception as error:  # noqa: BLE001 - an event that fails is reported, the run goes on
            record.status, record.detail = "failed", f"{type(error).__name__}: {error}"[:300]
    return applied
