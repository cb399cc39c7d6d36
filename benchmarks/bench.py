"""``p2pinfer bench SCENARIO``: run one scenario's workload against each policy, then report.

For each policy a fresh cluster is started from the scenario (``--policy NAME``), warmed up,
driven with the *same* precomputed arrivals while the scenario's timed events are applied
and the nodes are sampled, and stopped. Then every request is scored, the oracle in
hindsight is computed from all runs' measurements, and ``report.json``, ``requests.jsonl``,
``nodes.jsonl``, the PNG plots and ``summary.md`` are written to the run directory.

The harness follows the node as it is: it reads ``p2pinfer node --help`` once and passes
only flags the node accepts (a skipped flag is a warning in the report), and a policy the
node refuses — at start, or by answering with another policy's name — is reported as
unavailable instead of failing the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from benchmarks.load import HeldOut, LoadGenerator, RequestRecord, Schedule, build_schedule, held_out_inputs
from benchmarks.report import (
    DEFINITIONS,
    SCHEMA_VERSION,
    EnergyModel,
    NodeSample,
    check_invariants,
    issue_targets,
    now_text,
    qoe_function_name,
    score,
    summarise_policy,
    summary_markdown,
    summary_table,
    unavailable_entry,
    write_json,
    write_requests,
    write_samples,
)
from benchmarks.scenario import (
    TRACE_ROOTS,
    Event,
    HarnessError,
    NodeSpec,
    Scenario,
    ScenarioError,
    load_scenario,
    trace_files,
    with_duration,
    with_nodes,
    with_traces,
)

CONTRACT_POLICIES = ("fixed", "random", "local-only", "full-offload", "neurosurgeon", "edgent", "linucb", "thompson",
                     "mulinucb", "epsilon-greedy")
"""Every policy name of the node contract; the default ``--policies``."""
EMULATION_ROUTE = "/v1/emulation"
HARNESS_SENDER = "bench-harness"
WARM_UP_REQUESTS = 2
SAMPLE_INTERVAL_S = 0.5
NODE_START_TIMEOUT_S = 120.0
MEMBERSHIP_TIMEOUT_S = 30.0


class BenchError(HarnessError):
    """The benchmark could not run (not a policy's fault: that is reported, not raised)."""


# ---- what the node accepts ---------------------------------------------------------------------


@dataclass(frozen=True)
class NodeCapabilities:
    """Flags ``p2pinfer node`` accepts (read from its ``--help``) and its policy choices, if listed."""

    flags: frozenset[str]
    policy_choices: frozenset[str] | None = None

    def accepts(self, flag: str) -> bool:
        return flag in self.flags


def parse_node_help(text: str) -> NodeCapabilities:
    flags = frozenset(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))
    choices = None
    match = re.search(r"--policy\s+\{([^}]*)\}", text)
    if match:
        choices = frozenset(item.strip() for item in match.group(1).split(",") if item.strip())
    return NodeCapabilities(flags, choices)


def probe_node() -> NodeCapabilities:
    try:
        completed = subprocess.run([sys.executable, "-m", "p2pinfer", "node", "--help"], capture_output=True,
                                   text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BenchError(f"cannot run `p2pinfer node --help`: {error}") from None
    if completed.returncode != 0:
        raise BenchError(f"`p2pinfer node --help` failed: {completed.stderr.strip()[-500:]}")
    return parse_node_help(completed.stdout)


def canonical_policy(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def same_policy(answered: str, requested: str) -> bool:
    """Whether the policy a node names in its answers is the one asked for (a node may add
    detail after the name, e.g. ``linucb+mask`` or ``linucb(alpha=1)``)."""
    answered, requested = canonical_policy(answered), canonical_policy(requested)
    return answered == requested or (answered.startswith(requested)
                                     and not answered[len(requested)].isalnum())


def probe_policy(policy: str, spec: NodeSpec, family: str, sample: Any, capabilities: NodeCapabilities) -> str | None:
    """Start one node with ``--policy NAME``, ask it once, stop it: why the node does not run
    that policy, or None when it does (or when the probe failed for another reason, which the
    cluster run will then report). Much cheaper than a whole cluster for a missing policy."""
    from p2pinfer.cli.cluster import start_node
    from p2pinfer.client import Client
    from p2pinfer.errors import NodeStartError, P2PError

    arguments = ["--policy", policy, "--variants", spec.variants]
    if capabilities.accepts("--node-id"):
        arguments += ["--node-id", f"probe-{spec.name}"]
    try:
        node = start_node(arguments, timeout_s=NODE_START_TIMEOUT_S)
    except NodeStartError as error:
        status, reason = _start_failure_reason(error, policy)
        return reason if status == "unavailable" else None  # not the policy's fault: the run will say
    try:
        with Client(node.url, timeout_s=30.0) as client:
            answered = client.infer(sample, deadline_ms=10_000, user="probe", family=family).policy
    except P2PError:
        return None  # the cluster run will find out again and report it
    finally:
        node.kill()
    if answered and not same_policy(answered, policy):
        return f"the node accepted --policy {policy} but answered with policy {answered!r}"
    return None


def probe_policies(policies: Sequence[str], scenario: Scenario, inputs: Mapping[str, HeldOut],
                   capabilities: NodeCapabilities, parallel: int = 3) -> dict[str, str]:
    """Which policies the node does not run, and why (policies not listed are available).

    Trusts the node's listed ``--policy`` choices when it lists them; otherwise probes the
    policies a few at a time on single nodes."""
    if capabilities.policy_choices is not None:
        return {policy: f"not among the node's --policy choices ({', '.join(sorted(capabilities.policy_choices))})"
                for policy in policies if policy not in capabilities.policy_choices}
    if not capabilities.accepts("--policy"):
        return {policy: "the node has no --policy flag" for policy in policies if policy != "fixed"}
    family = scenario.users[0].family
    spec = next((node for node in scenario.nodes if family in node.variants or node.variants == "all"),
                scenario.nodes[0])
    sample = inputs[family].sample(0)
    with ThreadPoolExecutor(max_workers=max(min(parallel, len(policies)), 1)) as pool:
        reasons = dict(zip(policies, pool.map(lambda name: probe_policy(name, spec, family, sample, capabilities),
                                              policies), strict=True))
    return {policy: reason for policy, reason in reasons.items() if reason is not None}


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

    def __init__(self, scenario: Scenario, policy: str, capabilities: NodeCapabilities, work_dir: Path,
                 secret: str, warnings: list[str]) -> None:
        self.scenario = scenario
        self.policy = policy
        self.capabilities = capabilities
        self.work_dir = work_dir
        self.secret = secret
        self.warnings = warnings
        self.nodes: dict[str, Any] = {}  # name -> NodeProcess
        self.arguments: dict[str, list[str]] = {}

    def _flag(self, arguments: list[str], flag: str, value: str | None) -> None:
        if value is None:
            return
        if self.capabilities.accepts(flag):
            arguments += [flag, value]
            return
        warning = f"node has no {flag} flag: not passed"
        if warning not in self.warnings:
            self.warnings.append(warning)

    def node_arguments(self, spec: NodeSpec, seed_address: str | None) -> list[str]:
        arguments: list[str] = []
        self._flag(arguments, "--node-id", spec.name)
        self._flag(arguments, "--variants", spec.variants)
        self._flag(arguments, "--device-profile", spec.device_profile)
        self._flag(arguments, "--threads", str(spec.threads))
        self._flag(arguments, "--policy", self.policy)
        self._flag(arguments, "--secret", self.secret)
        for flag, value in (("--queue-capacity", spec.queue_capacity), ("--max-batch", spec.max_batch),
                            ("--workers", spec.workers)):
            self._flag(arguments, flag, None if value is None else str(value))
        document = links_document(self.scenario, spec.name)
        if document["links"] or document["default"]:
            path = self.work_dir / f"links-{spec.name}.json"
            path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
            self._flag(arguments, "--links", str(path))
        if seed_address is not None:
            self._flag(arguments, "--seed", seed_address)
        return arguments

    def start(self) -> None:
        """Every node at once on ports chosen here, the first one as everyone's seed (seeds are
        retried while a node is alone); if that fails (a port taken meanwhile), the first node
        alone and then the others, on ports of their own choosing."""
        if self.capabilities.accepts("--port") and len(self.scenario.nodes) > 1:
            try:
                self._start_together()
                return
            except Exception as error:
                self._kill_all()
                if not _port_taken(error):
                    raise
                self.warnings.append("a chosen port was taken before its node bound it: nodes started one by one")
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
            self.arguments[spec.name] = [*self.node_arguments(spec, seed if index else None), "--port",
                                         str(ports[index])]
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
                                        time.time()))
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


def _port_taken(error: BaseException) -> bool:
    text = str(error).lower()
    return "address already in use" in text or "errno 98" in text or "address in use" in text


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1 (held open together so none repeats)."""
    import socket

    sockets = []
    try:
        for _ in range(count):
            handle = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            handle.bind(("127.0.0.1", 0))
            sockets.append(handle)
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


# ---- during a run: events and node samples ----------------------------------------------------------------


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
            if event.kind == "kill":
                await asyncio.to_thread(cluster.kill, event.node)
                record.status, record.detail = "applied", "SIGKILL"
            elif event.kind == "restart":
                await asyncio.to_thread(cluster.restart, event.node)
                record.status = "applied"
                record.detail = f"back at {cluster.nodes[event.node].url} after " \
                                f"{time.monotonic() - started - record.applied_s:.2f} s"
            elif event.kind == "heat":
                record.status, record.detail = await cluster.heat(session, event.node,
                                                                  float(event.args.get("temperature_c", 85.0)))
            elif event.kind == "users":
                record.status, record.detail = "applied", "in the precomputed arrival schedule"
        except Exception as error:  # noqa: BLE001 - an event that fails is reported, the run goes on
            record.status, record.detail = "failed", f"{type(error).__name__}: {error}"[:300]
    return applied


_METRIC_LINE = re.compile(r"^p2pinfer_block_compute_seconds_sum(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", re.MULTILINE)


def _busy_seconds(metrics_text: str) -> float | None:
    """Seconds the node spent computing blocks so far (0 before its first block: a labelled
    histogram has no line until then); None when there is no metrics text at all."""
    if not metrics_text:
        return None
    return sum(float(value) for value in _METRIC_LINE.findall(metrics_text))


def _own_record(view: Any, node_id: str) -> dict[str, Any]:
    if not isinstance(view, dict):
        return {}
    for record in view.get("peers", []) or []:
        if isinstance(record, dict) and record.get("node_id") == view.get("self", node_id):
            return record
    return {}


def _number(record: Mapping[str, Any], *paths: tuple[str, ...]) -> float | None:
    for path in paths:
        value: Any = record
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


class NodeSampler:
    """Samples every node's ``/v1/peers`` (its own record) and ``/metrics`` periodically."""

    def __init__(self, cluster: ScenarioCluster, policy: str, started: float, interval_s: float) -> None:
        self.cluster = cluster
        self.policy = policy
        self.started = started
        self.interval_s = interval_s
        self.samples: list[NodeSample] = []
        self._busy: dict[str, tuple[float, float]] = {}

    async def _sample(self, session: aiohttp.ClientSession, name: str) -> NodeSample:
        node = self.cluster.nodes[name]
        t_s = round(time.monotonic() - self.started, 3)
        sample = NodeSample(policy=self.policy, node=name, t_s=t_s, alive=node.alive())
        if not sample.alive:
            self._busy.pop(name, None)
            return sample
        timeout = aiohttp.ClientTimeout(total=1.0)
        try:
            async with session.get(node.url + "/v1/peers", timeout=timeout) as response:
                view = await response.json() if response.status == 200 else {}
            async with session.get(node.url + "/metrics", timeout=timeout) as response:
                metrics_text = await response.text() if response.status == 200 else ""
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            sample.alive = node.alive()
            return sample
        record = _own_record(view, name)
        sample.queue_depth = _number(record, ("load", "queue_depth"), ("queue_depth",))
        sample.in_flight = _number(record, ("load", "in_flight"), ("in_flight",))
        sample.temperature_c = _number(record, ("thermal", "temperature_c"), ("temperature_c",))
        sample.throttle = _number(record, ("thermal", "throttle"), ("thermal", "throttle_factor"), ("throttle",))
        utilisation = _number(record, ("load", "utilisation"), ("utilisation",))
        if utilisation is not None:
            sample.utilisation, sample.utilisation_source = utilisation, "node"
        busy = _busy_seconds(metrics_text)
        now = time.monotonic()
        if busy is not None:
            previous = self._busy.get(name)
            self._busy[name] = (now, busy)
            if utilisation is None and previous is not None and now > previous[0]:
                sample.utilisation = round(min(max((busy - previous[1]) / (now - previous[0]), 0.0), 1.0), 4)
                sample.utilisation_source = "metrics"
        return sample

    async def run(self, stop: asyncio.Event, max_duration_s: float) -> None:
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for _ in range(int(max_duration_s / self.interval_s) + 2):
                names = list(self.cluster.nodes)
                self.samples += await asyncio.gather(*(self._sample(session, name) for name in names))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
                if stop.is_set():
                    return


# ---- a display while it runs ------------------------------------------------------------------------------


class Display(Protocol):
    def start_policy(self, policy: str, duration_s: float) -> None: ...

    def record(self, record: RequestRecord) -> None: ...

    def tick(self, elapsed_s: float) -> None: ...

    def end_policy(self, policy: str, status: str) -> None: ...

    def __enter__(self) -> Display: ...

    def __exit__(self, *exc_info: object) -> None: ...


class QuietDisplay:
    def start_policy(self, policy: str, duration_s: float) -> None:
        pass

    def record(self, record: RequestRecord) -> None:
        pass

    def tick(self, elapsed_s: float) -> None:
        pass

    def end_policy(self, policy: str, status: str) -> None:
        pass

    def __enter__(self) -> QuietDisplay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


class ProgressDisplay:
    """A rich progress bar per policy: time through the run, requests sent, ok, errors."""

    def __init__(self, console: Any) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("[bold]{task.fields[policy]}"), BarColumn(bar_width=20),
                                 TextColumn("{task.completed:>4.0f}/{task.total:.0f} s"),
                                 TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), console=console)
        self.task: Any = None
        self.counts = {"sent": 0, "ok": 0, "errors": 0, "late": 0}

    def __enter__(self) -> ProgressDisplay:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.__exit__(*exc_info)

    def _counts_text(self) -> str:
        counts = self.counts
        return f"sent {counts['sent']} ok {counts['ok']} late {counts['late']} err {counts['errors']}"

    def start_policy(self, policy: str, duration_s: float) -> None:
        self.counts = {"sent": 0, "ok": 0, "errors": 0, "late": 0}
        self.task = self.progress.add_task("", total=duration_s, policy=policy, counts="starting the cluster")

    def record(self, record: RequestRecord) -> None:
        self.counts["sent"] += 1
        if record.ok:
            self.counts["ok"] += 1
            self.counts["late"] += 0 if record.deadline_met else 1
        else:
            self.counts["errors"] += 1

    def tick(self, elapsed_s: float) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=min(elapsed_s, self.progress.tasks[-1].total or elapsed_s),
                                 counts=self._counts_text())

    def end_policy(self, policy: str, status: str) -> None:
        if self.task is not None:
            text = self._counts_text() if status == "ran" else status
            self.progress.update(self.task, completed=self.progress.tasks[-1].total, counts=text)


# ---- one policy ------------------------------------------------------------------------------------------------


@dataclass
class PolicyRun:
    policy: str
    status: str  # ran | unavailable | failed
    reason: str = ""
    records: list[RequestRecord] = field(default_factory=list)
    events: list[AppliedEvent] = field(default_factory=list)
    samples: list[NodeSample] = field(default_factory=list)
    wall_s: float = 0.0
    urls: dict[str, str] = field(default_factory=dict)


async def _warm_up(cluster: ScenarioCluster, inputs: Mapping[str, HeldOut], scenario: Scenario) -> set[str]:
    """A few requests per node before the clock starts (not counted): loads the models and
    tells which policy the node really runs."""
    from p2pinfer.client import AsyncClient
    from p2pinfer.errors import P2PError

    answered: set[str] = set()
    family = scenario.users[0].family
    sample = inputs[family].sample(0)
    for name, url in cluster.urls.items():
        async with AsyncClient(url, timeout_s=30.0) as client:
            for _ in range(WARM_UP_REQUESTS):
                try:
                    result = await client.infer(sample, deadline_ms=10_000, user="warm-up", family=family)
                except P2PError as error:
                    raise BenchError(f"warm-up request to {name} failed: {error.code}: {error.message}") from None
                answered.add(result.policy)
    return answered


async def _wait_for_membership(cluster: ScenarioCluster, timeout_s: float = MEMBERSHIP_TIMEOUT_S) -> str | None:
    """Wait (bounded) until every node's ``/v1/peers`` lists every node of the cluster as alive
    with its hosted variants, so that no policy decides its first requests on a partial view
    of the cluster (a static baseline keeps the plan of its first request). None once
    converged, else what was still missing when the time ran out (the run goes on)."""
    expected = set(cluster.nodes)
    if len(expected) < 2:
        return None
    deadline = time.monotonic() + timeout_s
    missing: dict[str, set[str]] = {name: set(expected) for name in expected}
    timeout = aiohttp.ClientTimeout(total=2.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(int(timeout_s / 0.1) + 1):
            for name, url in cluster.urls.items():
                if not missing[name]:
                    continue
                try:
                    async with session.get(url + "/v1/peers") as response:
                        view = await response.json() if response.status == 200 else {}
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                    continue
                known = {record.get("node_id") for record in view.get("peers", []) or []
                         if isinstance(record, dict) and record.get("status") == "alive" and record.get("variants")}
                missing[name] = expected - known
            if not any(missing.values()) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)
    left = {name: sorted(names) for name, names in missing.items() if names}
    return None if not left else f"membership not converged after {timeout_s:g} s: {left}"


def _start_failure_reason(error: Exception, policy: str) -> tuple[str, str]:
    text = str(error)
    lowered = text.lower()
    if "policy" in lowered or "invalid choice" in lowered:
        tail = [line for line in text.splitlines() if "policy" in line.lower() or "choice" in line.lower()]
        return "unavailable", f"node refused --policy {policy}: " + (tail[-1].strip() if tail else text[-300:])
    return "failed", f"cluster did not start: {text[-500:]}"


async def run_policy(scenario: Scenario, schedule: Schedule, inputs: Mapping[str, HeldOut], policy: str,
                     capabilities: NodeCapabilities, work_dir: Path, secret: str, warnings: list[str],
                     display: Display, sample_interval_s: float = SAMPLE_INTERVAL_S,
                     accept_substitute: bool = False) -> PolicyRun:
    """One policy on a fresh cluster: start, warm up, run the schedule with events and
    sampling, stop. Never raises for a policy's own failure: that is the run's status.

    A node that accepts ``--policy NAME`` but answers with another policy's name makes the
    policy unavailable, unless ``accept_substitute`` (the demo): then the run goes on under
    the name the node answers with, and a warning says so."""
    wall_started = time.monotonic()
    if capabilities.policy_choices is not None and policy not in capabilities.policy_choices:
        return PolicyRun(policy, "unavailable", f"not among the node's --policy choices "
                                                f"({', '.join(sorted(capabilities.policy_choices))})")
    if not capabilities.accepts("--policy") and policy != "fixed":
        return PolicyRun(policy, "unavailable", "the node has no --policy flag")
    from p2pinfer.errors import NodeStartError

    cluster = ScenarioCluster(scenario, policy, capabilities, work_dir, secret, warnings)
    run = PolicyRun(policy, "ran")
    try:
        try:
            await asyncio.to_thread(cluster.start)
        except NodeStartError as error:
            run.status, run.reason = _start_failure_reason(error, policy)
            return run
        run.urls = cluster.urls
        not_converged = await _wait_for_membership(cluster)
        if not_converged is not None:
            warnings.append(f"{policy}: {not_converged}")
        try:
            answered = await _warm_up(cluster, inputs, scenario)
        except BenchError as error:
            run.status, run.reason = "failed", str(error)
            return run
        mismatched = {name for name in answered if name and not same_policy(name, policy)}
        if mismatched:
            substitute = sorted(mismatched)[0]
            reason = f"the node accepted --policy {policy} but answered with policy {substitute!r}"
            if not accept_substitute:
                run.status, run.reason = "unavailable", reason
                return run
            warnings.append(reason + f": ran as {substitute!r}")
            run.policy = substitute
        generator = LoadGenerator(schedule, cluster.urls, run.policy, inputs, on_record=display.record)
        started = time.monotonic() + 0.05
        sampler = NodeSampler(cluster, run.policy, started, sample_interval_s)
        stop = asyncio.Event()
        async with aiohttp.ClientSession() as session:
            events_task = asyncio.create_task(apply_events(cluster, scenario.events, started, session))
            sampler_task = asyncio.create_task(sampler.run(stop, scenario.duration_s + 600))

            async def ticker() -> None:
                for _ in range(int((scenario.duration_s + 600) / 0.2)):
                    display.tick(time.monotonic() - started)
                    await asyncio.sleep(0.2)

            ticker_task = asyncio.create_task(ticker())
            try:
                result = await generator.run(started)
                run.events = await asyncio.wait_for(events_task, timeout=NODE_START_TIMEOUT_S + 30)
            finally:
                stop.set()
                ticker_task.cancel()
                for task in (events_task, sampler_task, ticker_task):
                    if not task.done() and task is not sampler_task:
                        task.cancel()
                with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                    await asyncio.wait_for(sampler_task, timeout=5)
        display.tick(scenario.duration_s)
        run.records = result.records
        run.samples = sampler.samples
        return run
    finally:
        await asyncio.to_thread(cluster.stop)
        run.wall_s = round(time.monotonic() - wall_started, 3)


# ---- the whole benchmark -------------------------------------------------------------------------------------------


@dataclass
class BenchmarkOutcome:
    report: dict[str, Any]
    out_dir: Path
    plots: list[str]
    records: list[RequestRecord]

    @property
    def ok(self) -> bool:
        return bool(self.report.get("invariants", {}).get("ok"))


def default_out_dir(scenario: Scenario) -> Path:
    return Path("runs") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"


async def run_benchmark_async(scenario: Scenario, policies: Sequence[str], out_dir: Path, *,
                              display: Display | None = None, capabilities: NodeCapabilities | None = None,
                              sample_interval_s: float = SAMPLE_INTERVAL_S,
                              on_policy_done: Callable[[PolicyRun], None] | None = None,
                              accept_substitute: bool = False) -> BenchmarkOutcome:
    from benchmarks.oracle import compute_oracle, floor_summary
    from benchmarks.plots import write_plots
    from zoo.manifest import read_manifest

    if not policies:
        raise BenchError("no policy to run")
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = out_dir / "nodes"
    work_dir.mkdir(exist_ok=True)
    display = display or QuietDisplay()
    capabilities = capabilities or await asyncio.to_thread(probe_node)
    inputs = await asyncio.to_thread(held_out_inputs, [group.family for group in scenario.users])
    image_count = min(len(held_out.labels) for held_out in inputs.values())
    schedule = build_schedule(scenario, image_count)
    secret = secrets.token_hex(16)
    warnings: list[str] = []
    runs: list[PolicyRun] = []
    created = now_text()
    missing = {} if accept_substitute or len(policies) == 1 else await asyncio.to_thread(
        probe_policies, policies, scenario, inputs, capabilities)
    with display:
        for policy in policies:
            if policy in missing:
                runs.append(PolicyRun(policy, "unavailable", missing[policy]))
                continue
            display.start_policy(policy, scenario.duration_s)
            run = await run_policy(scenario, schedule, inputs, policy, capabilities, work_dir, secret, warnings,
                                   display, sample_interval_s, accept_substitute)
            display.end_policy(policy, run.status if run.status == "ran" else f"{run.status}: {run.reason[:60]}")
            runs.append(run)
            if on_policy_done is not None:
                on_policy_done(run)

    manifest = read_manifest()
    energy_model = EnergyModel.from_manifest(manifest)
    records = [record for run in runs for record in run.records]
    score(records, energy_model)
    oracle = compute_oracle(records, scenario.duration_s, manifest=manifest, energy_model=energy_model)
    policies_section: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    for run in runs:
        if run.status == "ran":
            summary = summarise_policy(run.policy, run.records, scenario.duration_s)
            summary["latency_floor_ms"] = floor_summary(oracle, run.policy)
            summary["wall_s"] = run.wall_s
            policies_section[run.policy] = summary
        else:
            unavailable[run.policy] = run.reason
            policies_section[run.policy] = {**unavailable_entry(run.policy, run.reason), "status": run.status,
                                            "wall_s": run.wall_s}
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created": created,
        "scenario": scenario.as_dict(),
        "seed": scenario.seed,
        "duration_s": scenario.duration_s,
        "policies_requested": list(policies),
        "policies": policies_section,
        "unavailable": unavailable,
        "oracle": oracle.summary,
        "events": {run.policy: [event.as_dict() for event in run.events] for run in runs if run.status == "ran"},
        "arrivals": {"open_loop_scheduled": len(schedule.arrivals), "users": len(schedule.users),
                     "closed_loop_users": len(schedule.closed_loop_users)},
        "warnings": warnings,
        "node_flags": {"accepted": sorted(capabilities.flags),
                       "policy_choices": sorted(capabilities.policy_choices) if capabilities.policy_choices else None},
        "qoe_function": qoe_function_name(),
        "definitions": DEFINITIONS,
    }
    report["targets"] = issue_targets(report)
    violations = check_invariants(report, records, scheduled=len(schedule.arrivals), oracle_floor=oracle.floors,
                                  oracle_qoe=oracle.qoe_by_key)
    report["invariants"] = {"ok": not violations, "violations": violations}
    write_requests(out_dir / "requests.jsonl", records)
    write_samples(out_dir / "nodes.jsonl", [sample for run in runs for sample in run.samples])
    plots = await asyncio.to_thread(write_plots, out_dir, records, oracle, scenario.events,
                                    {run.policy: run.samples for run in runs if run.status == "ran"},
                                    scenario.duration_s)
    report["files"] = {"requests": "requests.jsonl", "nodes": "nodes.jsonl", "summary": "summary.md", "plots": plots}
    write_json(out_dir / "report.json", report)
    (out_dir / "summary.md").write_text(summary_markdown(report, plots), encoding="utf-8")
    return BenchmarkOutcome(report, out_dir, plots, records)


def run_benchmark(scenario: Scenario, policies: Sequence[str], out_dir: Path, **options: Any) -> BenchmarkOutcome:
    return asyncio.run(run_benchmark_async(scenario, policies, out_dir, **options))


# ---- command line --------------------------------------------------------------------------------------------------


def build_parser(prog: str = "p2pinfer bench") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Run a scenario's workload against each policy on a fresh local cluster and "
                               "write report.json, requests.jsonl, PNG plots and summary.md.")
    parser.add_argument("scenario", help="scenario name (benchmarks/scenarios/NAME.toml) or path to a TOML file")
    parser.add_argument("--policies", default=",".join(CONTRACT_POLICIES),
                        help="comma-separated policies (default: every policy of the node contract; those the node "
                             "does not have are reported as unavailable)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of load (default: the scenario's); event times scale with it")
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<scenario>-<timestamp>)")
    parser.add_argument("--trace", default=None,
                        help="bandwidth trace FILE or DIR (`time_s mbit_per_s` lines) for every link of the scenario")
    parser.add_argument("--trace-scale", type=float, default=None, help="multiply every trace's Mbit/s by this")
    parser.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    parser.add_argument("--nodes", default=None,
                        help="run on a subset of the scenario's nodes, comma separated (links, entries and events of "
                             "the others are dropped)")
    parser.add_argument("--sample-interval", type=float, default=SAMPLE_INTERVAL_S,
                        help="seconds between node samples (utilisation, temperature)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and CI)")
    return parser


def prepare_scenario(arguments: argparse.Namespace) -> Scenario:
    from dataclasses import replace

    scenario = load_scenario(arguments.scenario)
    if arguments.nodes:
        scenario = with_nodes(scenario, [name.strip() for name in arguments.nodes.split(",") if name.strip()])
    if arguments.duration is not None:
        scenario = with_duration(scenario, arguments.duration)
    if arguments.trace is not None:
        trace_files(arguments.trace)  # fails early, naming the path
    scenario = with_traces(scenario, arguments.trace, arguments.trace_scale)
    if arguments.seed is not None:
        if arguments.seed < 0:
            raise ScenarioError("seed", f"must be >= 0, got {arguments.seed}")
        scenario = replace(scenario, seed=arguments.seed)
    return scenario


def parse_policies(text: str) -> list[str]:
    policies = []
    for item in text.split(","):
        name = canonical_policy(item)
        if name and name not in policies:
            policies.append(name)
    if not policies:
        raise ScenarioError("policies", "give at least one policy name")
    return policies


def main(argv: Sequence[str] | None = None) -> int:
    """``p2pinfer bench``; returns 0 when the run finished and its invariants hold, 1 when an
    invariant is violated or no policy could run, 2 on a usage or scenario error."""
    from rich.console import Console

    arguments = build_parser().parse_args(argv)
    console = Console(stderr=True)
    try:
        scenario = prepare_scenario(arguments)
        policies = parse_policies(arguments.policies)
    except HarnessError as error:
        console.print(f"[red]error:[/red] {error}")
        return 2
    except Exception as error:  # trace and link errors of p2pinfer carry their own message
        from p2pinfer.errors import P2PError

        if isinstance(error, P2PError):
            console.print(f"[red]error:[/red] {error.message}")
            return 2
        raise
    out_dir = arguments.out or default_out_dir(scenario)
    display: Display = QuietDisplay() if arguments.no_progress else ProgressDisplay(console)
    console.print(f"[bold]{scenario.name}[/bold]: {len(scenario.nodes)} nodes, {scenario.duration_s:g} s, "
                  f"policies {', '.join(policies)} → {out_dir}")
    try:
        outcome = run_benchmark(scenario, policies, out_dir, display=display,
                                sample_interval_s=arguments.sample_interval)
    except HarnessError as error:
        console.print(f"[red]error:[/red] {error}")
        return 2
    if not any(entry.get("status") == "ran" for entry in outcome.report["policies"].values()):
        for name, entry in outcome.report["policies"].items():
            console.print(f"[red]{name}: {entry['status']}[/red]: {entry.get('reason', '')[-800:]}")
        console.print(f"[red]no policy ran[/red] · report: {outcome.out_dir / 'report.json'}")
        return 1
    print(summary_table(outcome.report))
    for name, reason in outcome.report["unavailable"].items():
        print(f"unavailable: {name}: {reason}")
    print(f"report: {outcome.out_dir / 'report.json'} · plots: {', '.join(outcome.plots)}")
    if not outcome.ok:
        console.print("[red]invariants violated:[/red] " + "; ".join(outcome.report["invariants"]["violations"]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
