"""Node samples during a run: every node's own record of ``/v1/peers`` (load, heat) and its
``/metrics`` (compute time, for utilisation when the node does not report it), periodically."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from benchmarks.cluster_run import ScenarioCluster
from benchmarks.report import NodeSample

SAMPLE_INTERVAL_S = 0.5


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
