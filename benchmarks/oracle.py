"""The oracle in hindsight: the best any policy could have done on the same requests.

What it is, honestly: **a bound computed from measurements, not a run.** After every policy
has run the same workload, the per-segment timings of every answered request (compute, queue
and transfer time of each ``(node, unit, variant, block range)`` hop, plus each request's
remaining overhead: parsing, answering, the trip back to the entry node) are pooled across
all runs. For each request, and for every (variant, exit, placement) that can be assembled
from component kinds that were *observed somewhere*, the oracle adds up the smallest measured
value of each component near that request's time (within ``window_s`` of it on the run's
clock, else the nearest-in-time measurement), and scores it with the request's QoE weights
and deadline. It keeps the best QoE (ties: the lower latency). Every observed outcome of the
same request is a candidate as well, so the oracle can never score below a policy.

Consequences to keep in mind when reading its line:

* it is optimistic: components are summed at their best, as if the minimum of each could
  happen together; queueing at its observed minimum means "as if the cluster were idle for
  this request" — so it bounds what is physically possible, it is not a schedule;
* it only knows placements whose hops were measured in some run (a split nobody tried is
  not invented), and accuracies of (input, variant, exit) pairs no run answered come from the
  manifest's held-out accuracy (an expectation), while answered ones use the true outcome;
* for latency, the comparable figure is each policy's **latency floor**: the same bound for
  the variant, exit and placement the policy itself chose, never above its measured
  latency. The QoE-optimal oracle may pick a slower, more accurate arm than a policy did, so
  its own latency line is not a lower bound on every policy's latency;
* a request's ``min_accuracy`` binds the oracle as it binds the nodes: no arm below that
  held-out accuracy is a candidate, observed or composed.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.load import RequestRecord
from benchmarks.report import EnergyModel, latency_summary, qoe_value

DEFAULT_WINDOW_S = 2.0
BIN_S = 0.25


class ComponentSeries:
    """Measurements of one component kind over the run's clock; answers "the smallest value
    within ``window_s`` of ``t``" in O(window / bin) with per-bin minima."""

    def __init__(self) -> None:
        self._bins: dict[int, float] = {}
        self._sorted: list[int] | None = None

    def add(self, at_s: float, value: float) -> None:
        index = math.floor(at_s / BIN_S)
        current = self._bins.get(index)
        if current is None or value < current:
            self._bins[index] = value
            self._sorted = None

    def __len__(self) -> int:
        return len(self._bins)

    def lowest_near(self, at_s: float, window_s: float) -> float | None:
        if not self._bins:
            return None
        low, high = math.floor((at_s - window_s) / BIN_S), math.floor((at_s + window_s) / BIN_S)
        values = [self._bins[index] for index in range(low, high + 1) if index in self._bins]
        if values:
            return min(values)
        if self._sorted is None:
            self._sorted = sorted(self._bins)
        center = math.floor(at_s / BIN_S)
        position = bisect.bisect_left(self._sorted, center)
        candidates = [self._sorted[index] for index in (position - 1, position) if 0 <= index < len(self._sorted)]
        nearest = min(candidates, key=lambda index: abs(index - center))
        return self._bins[nearest]


SegmentKey = tuple[str, str, str, int, int]  # node, unit, variant, first block, last block


@dataclass
class Components:
    """Every measured component kind, pooled over all runs."""

    compute: dict[SegmentKey, ComponentSeries] = field(default_factory=lambda: defaultdict(ComponentSeries))
    queue: dict[tuple[str, str], ComponentSeries] = field(default_factory=lambda: defaultdict(ComponentSeries))
    transfer: dict[tuple[str, str, str, int], ComponentSeries] = field(
        default_factory=lambda: defaultdict(ComponentSeries))
    overhead: dict[tuple[str, str], ComponentSeries] = field(default_factory=lambda: defaultdict(ComponentSeries))
    segments_by_variant: dict[str, set[SegmentKey]] = field(default_factory=lambda: defaultdict(set))
    window_s: float = DEFAULT_WINDOW_S

    @classmethod
    def from_records(cls, records: Iterable[RequestRecord], window_s: float = DEFAULT_WINDOW_S) -> Components:
        components = cls(window_s=window_s)
        for record in records:
            if record.ok and record.timings and record.latency_ms is not None:
                components.add(record)
        return components

    def add(self, record: RequestRecord) -> None:
        at_s = record_time(record)
        previous = record.entry_node
        spent = 0.0
        for timing in record.timings:
            key: SegmentKey = (timing["node"], timing["unit"], record.variant, int(timing["first_block"]),
                               int(timing["last_block"]))
            self.compute[key].add(at_s, float(timing["compute_ms"]))
            self.queue[(timing["node"], timing["unit"])].add(at_s, float(timing.get("queue_ms", 0.0)))
            self.transfer[(previous, timing["node"], record.variant, key[3])].add(
                at_s, float(timing.get("transfer_ms", 0.0)))
            self.segments_by_variant[record.variant].add(key)
            spent += float(timing["compute_ms"]) + float(timing.get("queue_ms", 0.0)) + \
                float(timing.get("transfer_ms", 0.0))
            previous = timing["node"]
        assert record.latency_ms is not None
        self.overhead[(record.entry_node, previous)].add(at_s, max(record.latency_ms - spent, 0.0))

    def _lowest(self, series: ComponentSeries | None, at_s: float) -> float | None:
        return None if series is None else series.lowest_near(at_s, self.window_s)

    def overhead_ms(self, entry: str, last_node: str, at_s: float) -> float | None:
        value = self._lowest(self.overhead.get((entry, last_node)), at_s)
        if value is not None:
            return value
        # Never seen a plan from this entry end on that node: the least overhead seen anywhere.
        lowest = [self._lowest(series, at_s) for series in self.overhead.values()]
        values = [value for value in lowest if value is not None]
        return min(values) if values else None

    def transfer_ms(self, source: str, destination: str, variant: str, boundary: int, at_s: float) -> float | None:
        value = self._lowest(self.transfer.get((source, destination, variant, boundary)), at_s)
        if value is None and source == destination:
            return 0.0
        return value

    def segment_ms(self, key: SegmentKey, source: str, at_s: float) -> float | None:
        """Transfer into, queueing at and compute of one segment, at their best; None if never seen."""
        compute = self._lowest(self.compute.get(key), at_s)
        transfer = self.transfer_ms(source, key[0], key[2], key[3], at_s)
        if compute is None or transfer is None:
            return None
        queue = self._lowest(self.queue.get((key[0], key[1])), at_s) or 0.0
        return compute + queue + transfer

    def plan_ms(self, entry: str, variant: str, segments: Sequence[SegmentKey], at_s: float) -> float | None:
        """Lower bound of one given placement (None if one of its parts was never measured)."""
        total = 0.0
        previous = entry
        for key in segments:
            cost = self.segment_ms(key, previous, at_s)
            if cost is None:
                return None
            total += cost
            previous = key[0]
        overhead = self.overhead_ms(entry, previous, at_s)
        return None if overhead is None else total + overhead

    def best_plans(self, entry: str, variant: str, at_s: float) -> dict[int, tuple[float, list[SegmentKey]]]:
        """For every block ``b`` that a chain of measured segments can end on: the lowest
        latency (including overhead back to ``entry``) and its placement. A shortest path over
        (boundary, node) states, in block order."""
        by_first: dict[int, list[SegmentKey]] = defaultdict(list)
        for key in self.segments_by_variant.get(variant, ()):
            by_first[key[3]].append(key)
        if not by_first:
            return {}
        states: dict[tuple[int, str], tuple[float, list[SegmentKey]]] = {(0, entry): (0.0, [])}
        results: dict[int, tuple[float, list[SegmentKey]]] = {}
        for boundary in range(0, max(key[4] for keys in by_first.values() for key in keys) + 1):
            for (state_boundary, node), (cost, path) in list(states.items()):
                if state_boundary != boundary:
                    continue
                for key in by_first.get(boundary, ()):
                    step = self.segment_ms(key, node, at_s)
                    if step is None:
                        continue
                    target = (key[4] + 1, key[0])
                    candidate = (cost + step, [*path, key])
                    if target not in states or candidate[0] < states[target][0]:
                        states[target] = candidate
        for (boundary, node), (cost, path) in states.items():
            if not path:
                continue
            overhead = self.overhead_ms(entry, node, at_s)
            if overhead is None:
                continue
            last_block = boundary - 1
            total = cost + overhead
            if last_block not in results or total < results[last_block][0]:
                results[last_block] = (total, path)
        return results


def record_time(record: RequestRecord) -> float:
    """When a request happened on the run's clock: its scheduled time (same in every run) if
    open loop, else when it was sent."""
    return record.scheduled_s if record.scheduled_s is not None else record.sent_s


@dataclass(frozen=True)
class OracleChoice:
    key: str
    variant: str
    exit: int
    plan: list[list]
    latency_ms: float
    accuracy: float
    deadline_met: bool
    qoe: float
    source: str  # "composed" | "observed"


@dataclass
class OracleResult:
    choices: dict[str, OracleChoice]
    floors: dict[tuple[str, str], float]  # (policy, key) -> latency floor of the policy's own choice
    no_estimate: int
    summary: dict[str, Any]

    @property
    def qoe_by_key(self) -> dict[str, float]:
        return {key: choice.qoe for key, choice in self.choices.items()}


def _exit_accuracy(manifest: Any) -> dict[tuple[str, int], float]:
    return {(name, exit_info.block): exit_info.accuracy for name, info in manifest.variants.items()
            for exit_info in info.exits}


def compute_oracle(records: Sequence[RequestRecord], duration_s: float, *, manifest: Any | None = None,
                   energy_model: EnergyModel | None = None, window_s: float = DEFAULT_WINDOW_S) -> OracleResult:
    """The oracle over every request key seen in any run (see the module docstring)."""
    if manifest is None:
        from zoo.manifest import read_manifest

        manifest = read_manifest()
    energy_model = energy_model or EnergyModel.from_manifest(manifest)
    accuracy_of = _exit_accuracy(manifest)
    exits_of = {name: [exit_info.block for exit_info in info.exits] for name, info in manifest.variants.items()}
    components = Components.from_records(records, window_s)
    by_key: dict[str, list[RequestRecord]] = defaultdict(list)
    for record in records:
        by_key[record.key].append(record)

    floors: dict[tuple[str, str], float] = {}
    for record in records:
        if not (record.ok and record.latency_ms is not None):
            continue
        if not record.timings:
            floors[(record.policy, record.key)] = round(record.latency_ms, 3)
            continue
        segments = [(timing["node"], timing["unit"], record.variant, int(timing["first_block"]),
                     int(timing["last_block"])) for timing in record.timings]
        composed = components.plan_ms(record.entry_node, record.variant, segments, record_time(record))
        floor = record.latency_ms if composed is None else min(composed, record.latency_ms)
        floors[(record.policy, record.key)] = math.floor(floor * 1000) / 1000  # rounding must not raise it

    choices: dict[str, OracleChoice] = {}
    no_estimate = 0
    for key, key_records in by_key.items():
        first = key_records[0]
        at_s = min(record_time(record) for record in key_records)
        weights, deadline = first.qoe_weights, first.deadline_ms
        observed_correct = {(record.variant, record.exit): bool(record.correct)
                            for record in key_records if record.ok}
        best: OracleChoice | None = None

        def consider(candidate: OracleChoice) -> None:
            nonlocal best
            if best is None or (candidate.qoe, -candidate.latency_ms) > (best.qoe, -best.latency_ms):
                best = candidate

        floor = first.min_accuracy or 0.0  # the user's hard floor: arms below it are no answer

        def accurate_enough(variant: str, exit_block: int, floor: float = floor) -> bool:
            return accuracy_of.get((variant, exit_block), 0.0) >= floor

        for record in key_records:
            if (record.ok and record.latency_ms is not None and record.qoe is not None
                    and accurate_enough(record.variant, int(record.exit or 0))):
                consider(OracleChoice(key, record.variant, int(record.exit or 0), record.plan, record.latency_ms,
                                      1.0 if record.correct else 0.0, record.deadline_met, record.qoe, "observed"))
        entries = {record.entry_node for record in key_records if record.entry_node} | {first.assigned_entry}
        variants = [name for name, info in manifest.variants.items() if info.family == first.family]
        for entry in sorted(entries):
            for variant in variants:
                for last_block, (latency, path) in components.best_plans(entry, variant, at_s).items():
                    if last_block not in exits_of.get(variant, ()) or not accurate_enough(variant, last_block):
                        continue
                    accuracy = (1.0 if observed_correct[(variant, last_block)] else 0.0) \
                        if (variant, last_block) in observed_correct else accuracy_of[(variant, last_block)]
                    met = latency <= deadline
                    qoe = qoe_value(weights, accuracy, latency, deadline, met,
                                    energy_model.energy(variant, last_block))
                    consider(OracleChoice(key, variant, last_block, [list(segment[:2]) + list(segment[3:])
                                                                     for segment in path],
                                          round(latency, 3), accuracy, met, round(qoe, 6), "composed"))
        if best is None:
            no_estimate += 1
            continue
        choices[key] = best

    keys = len(by_key)
    chosen = list(choices.values())
    on_time = sum(1 for choice in chosen if choice.deadline_met)
    from benchmarks.report import error_qoe

    qoe_total = sum(choice.qoe for choice in chosen) + sum(
        error_qoe(by_key[key][0].qoe_weights, by_key[key][0].deadline_ms) for key in by_key if key not in choices)
    summary = {
        "requests": keys,
        "estimated": len(chosen),
        "no_estimate": no_estimate,
        "latency_ms": latency_summary([choice.latency_ms for choice in chosen]),
        "deadline_miss_rate": round(1 - on_time / keys, 6) if keys else None,
        "mean_accuracy": round(sum(choice.accuracy for choice in chosen) / len(chosen), 6) if chosen else None,
        "mean_qoe": round(qoe_total / keys, 6) if keys else None,
        "goodput_rps": round(on_time / duration_s, 4) if duration_s > 0 else None,
        "arms": dict(Counter(f"{choice.variant}@{choice.exit}" for choice in chosen).most_common()),
        "sources": dict(Counter(choice.source for choice in chosen)),
        "window_s": window_s,
        "method": "lower bound from measured component times (see benchmarks/oracle.py); not a run",
    }
    return OracleResult(choices, floors, no_estimate, summary)


def floor_summary(oracle: OracleResult, policy: str) -> dict[str, float | None]:
    return latency_summary([floor for (name, _), floor in oracle.floors.items() if name == policy])


def floors_by_policy(oracle: OracleResult) -> Mapping[str, dict[str, float | None]]:
    policies = sorted({policy for policy, _ in oracle.floors})
    return {policy: floor_summary(oracle, policy) for policy in policies}
