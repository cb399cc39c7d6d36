"""One policy's run: a fresh cluster started, warmed up, driven with the scenario's
precomputed arrivals while its events are applied and its nodes sampled, then stopped.

A policy's own failure is the run's status (``failed``, or ``unavailable`` when the node
answers with another policy's name), never an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from benchmarks.cluster_run import NODE_START_TIMEOUT_S, AppliedEvent, BenchError, ScenarioCluster, apply_events
from benchmarks.load import HeldOut, LoadGenerator, RequestRecord, Schedule
from benchmarks.policies import same_policy
from benchmarks.progress import Display
from benchmarks.report import NodeSample
from benchmarks.sampling import SAMPLE_INTERVAL_S, NodeSampler
from benchmarks.scenario import Scenario
from p2pinfer.errors import NodeStartError

WARM_UP_REQUESTS = 2
MEMBERSHIP_TIMEOUT_S = 30.0


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
    held_out = inputs[family]
    for name, url in cluster.urls.items():
        async with AsyncClient(url, timeout_s=30.0) as client:
            for _ in range(WARM_UP_REQUESTS):
                try:
                    result = await held_out.send(client, 0, deadline_ms=10_000, user="warm-up", family=family)
                except P2PError as error:
                    raise BenchError(f"warm-up request to {name} failed: {error.code}: {error.message}") from None
                answered.add(result.policy)
    return answered


async def _wait_for_membership(cluster: ScenarioCluster, timeout_s: float = MEMBERSHIP_TIMEOUT_S) -> str | None:
    """Wait (bounded) until every node's ``/v1/peers`` lists every node of the cluster as alive
    with its hosted variants and its link to it measured (``links``: bandwidth known; a node
    probes a new peer's link on sight, ``runtime.link_prober``), so that no policy decides its
    first requests on a partial view of the cluster (a static baseline keeps the plan of its
    first request) or on the default link. None once converged, else what was still missing
    when the time ran out (the run goes on)."""
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
                links = view.get("links")
                if isinstance(links, dict):  # a node that reports its links: each measured too
                    known = {node for node in known
                             if node == name or (links.get(node) or {}).get("bandwidth_measured") is True}
                missing[name] = expected - known
            if not any(missing.values()) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)
    left = {name: sorted(names) for name, names in missing.items() if names}
    return None if not left else f"membership not converged after {timeout_s:g} s: {left}"


async def run_policy(scenario: Scenario, schedule: Schedule, inputs: Mapping[str, HeldOut], policy: str,
                     work_dir: Path, secret: str, warnings: list[str],
                     display: Display, sample_interval_s: float = SAMPLE_INTERVAL_S,
                     accept_substitute: bool = False) -> PolicyRun:
    """One policy on a fresh cluster: start, warm up, run the schedule with events and
    sampling, stop. Never raises for a policy's own failure: that is the run's status.

    A node that accepts ``--policy NAME`` but answers with another policy's name makes the
    policy unavailable, unless ``accept_substitute`` (the demo): then the run goes on under
    the name the node answers with, and a warning says so."""
    wall_started = time.monotonic()
    cluster = ScenarioCluster(scenario, policy, work_dir, secret, warnings)
    run = PolicyRun(policy, "ran")
    try:
        try:
            await asyncio.to_thread(cluster.start)
        except NodeStartError as error:
            run.status, run.reason = "failed", f"cluster did not start: {str(error)[-500:]}"
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
