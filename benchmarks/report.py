"""The benchmark report: per-request JSONL, ``report.json``, a markdown summary, and the
invariants a report must satisfy before anyone believes its numbers.

Definitions (also written into ``report.json`` under ``definitions``):

* **requests**: requests the load generator sent (or, past its in-flight bound, refused to
  send: ``harness_overloaded``); every one has exactly one record and one outcome.
* **ok / errors**: answered with a result / with an explicit error, by error code. Errors
  include the node's (``overloaded``, ``deadline_exceeded``, ``peer_unavailable`` ...) and the
  client's own (``timeout``, ``connection_failed``). **lost** counts the latter: requests no node
  answered at all.
* **latency**: the entry node's measure (``InferResult.latency_ms``, arrival of the request to
  its answer), over answered requests; the client's own round trip is reported beside it.
  Percentiles interpolate linearly between order statistics (numpy's default).
* **deadline miss rate**: share of requests *not* answered within their deadline; an error
  counts as a miss (a user who got a 429 did not get an answer in time).
* **accuracy**: share of answered requests whose label equals the held-out true label.
* **QoE**: ``selector.qoe.qoe_reward`` when importable (else ``local_qoe_reward``, the same
  formula) with the user's weights, accuracy 1/0 from the true label, the node's latency,
  and an energy proxy = FLOPs of the blocks and exit head that ran / FLOPs of the family's
  largest full model (in [0, 1]). An error scores as a wrong answer that used the whole
  deadline and missed it: the worst on-time-independent outcome, so errors are never free.
* **goodput**: answered-on-time requests per second of the run's arrival window.
* **Jain's fairness**: ``(sum x)^2 / (n sum x^2)`` over users of ``x`` = the user's share of
  requests answered on time. A share, not raw goodput, so that a user who asks ten times as
  often is not counted as treated unfairly for receiving ten times as many answers; QoE is not
  used because it can be negative, where Jain's index is undefined. 1 means every user was
  served equally well; 1/n means one user got everything.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from benchmarks.load import RequestRecord
from benchmarks.policies import STATIC_BASELINES, is_adaptive
from benchmarks.scenario import HarnessError

SCHEMA_VERSION = 1
LOST_OUTCOMES = frozenset({"timeout", "connection_failed", "harness_error"})
MISS_PENALTY = 1.0

DEFINITIONS = {
    "latency_ms": "entry node's latency of answered requests; percentiles by linear interpolation",
    "client_latency_ms": "round trip measured by the load generator, answered requests",
    "deadline_miss_rate": "1 - (answered within deadline) / requests; errors count as misses",
    "mean_accuracy": "answered requests whose label equals the held-out true label",
    "mean_qoe": "mean per-request QoE over all requests (errors score as a wrong, late answer)",
    "goodput_rps": "requests answered within their deadline per second of the arrival window",
    "jain_fairness": "Jain's index over users of their share of requests answered on time",
    "lost": "requests that no node answered (client timeout, no node reachable)",
    "latency_floor_ms": "per answered request, the oracle's lower bound for the same variant, exit and "
                        "placement from measured component times (never above the measured latency)",
    "oracle": "per request, the (variant, exit, placement) with the best QoE at its lower-bound latency "
              "composed from component times measured in any policy's run (see benchmarks/oracle.py)",
}


class ReportError(HarnessError):
    """A report could not be written or read back."""


class NodeSample(msgspec.Struct, kw_only=True):
    """One node as sampled during a run (a line of ``nodes.jsonl``); None where the node does
    not expose the field. ``utilisation`` is the node's own figure when it reports one, else the
    busy share of the sampling interval from ``/metrics`` (per-block compute seconds)."""

    policy: str
    node: str
    t_s: float
    alive: bool
    queue_depth: float | None = None
    in_flight: float | None = None
    utilisation: float | None = None
    utilisation_source: str = ""
    temperature_c: float | None = None
    throttle: float | None = None


# ---- statistics -------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100), linear interpolation between closest ranks; None if empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    ordered = sorted(float(value) for value in values)
    if not ordered:
        return None
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    fraction = position - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


def sample_percentile(values: Sequence[float], q: float) -> float:
    """``percentile`` of a sample that is never empty where it is used (one benchmark's
    measurements): an empty one raises ``ValueError``."""
    value = percentile(values, q)
    if value is None:
        raise ValueError("percentile of an empty sample")
    return value


def jain_index(values: Sequence[float]) -> float | None:
    """Jain's fairness index of non-negative allocations; None if empty, 1.0 if all are zero
    (nobody got anything: equally so)."""
    numbers = [float(value) for value in values]
    if not numbers:
        return None
    if any(value < 0 or not math.isfinite(value) for value in numbers):
        raise ValueError("Jain's index needs finite, non-negative values")
    squares = sum(value * value for value in numbers)
    if squares == 0:
        return 1.0
    return sum(numbers) ** 2 / (len(numbers) * squares)


def latency_summary(values: Sequence[float]) -> dict[str, float | None]:
    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {"p50": rounded(percentile(values, 50)), "p95": rounded(percentile(values, 95)),
            "p99": rounded(percentile(values, 99)),
            "mean": rounded(sum(values) / len(values)) if values else None,
            "max": rounded(max(values)) if values else None}


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 6) if values else None


# ---- QoE ------------------------------------------------------------------------------------------------


def local_qoe_reward(weights: Mapping[str, float], accuracy: float, latency_ms: float, deadline_ms: float,
                     deadline_met: bool, energy: float = 0.0) -> float:
    """The QoE formula of ``selector/qoe.py``, for when that module is not importable:
    weights normalised to shares ``(a, l, e)``;
    ``a * accuracy - l * clip(latency / deadline) - e * clip(energy) - 1 * [missed]``."""
    total = weights.get("accuracy", 1.0) + weights.get("latency", 0.5) + weights.get("energy", 0.1)
    a, l, e = (weights.get(name, default) / total for name, default in
               (("accuracy", 1.0), ("latency", 0.5), ("energy", 0.1)))
    reward = a * min(max(accuracy, 0.0), 1.0) - l * min(max(latency_ms / deadline_ms, 0.0), 1.0) \
        - e * min(max(energy, 0.0), 1.0)
    return reward - (0.0 if deadline_met else MISS_PENALTY)


def qoe_function_name() -> str:
    try:
        import selector.qoe  # noqa: F401
    except ImportError:
        return "benchmarks.report.local_qoe_reward"
    return "selector.qoe.qoe_reward"


def qoe_value(weights: Mapping[str, float], accuracy: float, latency_ms: float, deadline_ms: float,
              deadline_met: bool, energy: float = 0.0) -> float:
    """One request's QoE with the selector's function (preferred) or the local copy."""
    try:
        from selector.qoe import QoEWeights, qoe_reward
    except ImportError:
        return local_qoe_reward(weights, accuracy, latency_ms, deadline_ms, deadline_met, energy)
    return qoe_reward(QoEWeights(**{key: float(value) for key, value in weights.items()}), accuracy,
                      max(latency_ms, 0.0), deadline_ms, deadline_met, energy)


def error_qoe(weights: Mapping[str, float], deadline_ms: float) -> float:
    """An error scores as a wrong answer that used the whole deadline and missed it."""
    return qoe_value(weights, 0.0, deadline_ms, deadline_ms, False, 0.0)


@dataclass(frozen=True)
class EnergyModel:
    """Energy proxy per (variant, exit): FLOPs run / the family's largest full-model FLOPs."""

    flops: Mapping[tuple[str, int], int]
    reference: Mapping[str, int]  # family -> FLOPs of its heaviest variant's final exit
    families: Mapping[str, str]  # variant -> family

    @classmethod
    def from_manifest(cls, manifest: Any | None = None) -> EnergyModel:
        if manifest is None:
            from zoo.manifest import read_manifest

            manifest = read_manifest()
        flops: dict[tuple[str, int], int] = {}
        reference: dict[str, int] = defaultdict(int)
        families: dict[str, str] = {}
        for name, info in manifest.variants.items():
            families[name] = info.family
            for exit_info in info.exits:
                total = sum(block.flops for block in info.blocks[:exit_info.block + 1]) + exit_info.flops
                flops[(name, exit_info.block)] = total
                reference[info.family] = max(reference[info.family], total)
        return cls(flops, dict(reference), families)

    def energy(self, variant: str, exit_block: int | None) -> float:
        if exit_block is None or (variant, exit_block) not in self.flops:
            return 0.0
        reference = self.reference.get(self.families.get(variant, ""), 0)
        return self.flops[(variant, exit_block)] / reference if reference else 0.0


def score(records: Iterable[RequestRecord], energy_model: EnergyModel) -> None:
    """Fill each record's ``energy`` and ``qoe``."""
    for record in records:
        if record.ok and record.latency_ms is not None:
            record.energy = round(energy_model.energy(record.variant, record.exit), 6)
            record.qoe = round(qoe_value(record.qoe_weights, 1.0 if record.correct else 0.0, record.latency_ms,
                                         record.deadline_ms, record.deadline_met, record.energy), 6)
        else:
            record.energy = 0.0
            record.qoe = round(error_qoe(record.qoe_weights, record.deadline_ms), 6)


# ---- per policy ------------------------------------------------------------------------------------------


def _counts(records: Sequence[RequestRecord]) -> dict[str, Any]:
    ok = [record for record in records if record.ok]
    on_time = [record for record in ok if record.deadline_met]
    errors = Counter(record.outcome for record in records if not record.ok)
    return {
        "requests": len(records), "ok": len(ok), "error_count": sum(errors.values()),
        "errors": dict(sorted(errors.items())), "on_time": len(on_time),
        "lost": sum(count for code, count in errors.items() if code in LOST_OUTCOMES),
        "deadline_miss_rate": round(1 - len(on_time) / len(records), 6) if records else None,
        "mean_accuracy": _mean([1.0 if record.correct else 0.0 for record in ok]),
        "mean_qoe": _mean([record.qoe for record in records if record.qoe is not None]),
        "latency_ms": latency_summary([record.latency_ms for record in ok if record.latency_ms is not None]),
    }


def summarise_policy(policy: str, records: Sequence[RequestRecord], duration_s: float) -> dict[str, Any]:
    """The ``report.json`` entry of one policy's run (records already scored)."""
    summary: dict[str, Any] = {"policy": policy, "status": "ran"}
    summary.update(_counts(records))
    ok = [record for record in records if record.ok]
    summary["client_latency_ms"] = latency_summary(
        [record.client_latency_ms for record in ok if record.client_latency_ms is not None])
    summary["goodput_rps"] = round(summary["on_time"] / duration_s, 4) if duration_s > 0 else None
    per_user: dict[str, dict[str, Any]] = {}
    by_user: dict[str, list[RequestRecord]] = defaultdict(list)
    for record in records:
        by_user[record.user].append(record)
    for user, user_records in sorted(by_user.items()):
        counts = _counts(user_records)
        per_user[user] = {"group": user_records[0].group, "requests": counts["requests"], "ok": counts["ok"],
                          "error_count": counts["error_count"], "on_time": counts["on_time"],
                          "on_time_share": round(counts["on_time"] / counts["requests"], 6),
                          "mean_qoe": counts["mean_qoe"], "mean_accuracy": counts["mean_accuracy"],
                          "p50_ms": counts["latency_ms"]["p50"]}
    summary["per_user"] = per_user
    by_group: dict[str, list[RequestRecord]] = defaultdict(list)
    for record in records:
        by_group[record.group].append(record)
    summary["per_group"] = {group: {key: value for key, value in _counts(group_records).items()}
                            for group, group_records in sorted(by_group.items())}
    fairness = jain_index([entry["on_time_share"] for entry in per_user.values()])  # None: no users
    summary["jain_fairness"] = round(fairness, 6) if fairness is not None else None
    summary["degraded"] = sum(1 for record in ok if record.degraded)
    summary["replans"] = sum(record.replans for record in ok)
    summary["arms"] = dict(Counter(record.arm for record in ok).most_common())
    summary["answered_policies"] = dict(Counter(record.answered_policy for record in ok))
    summary["entry_nodes"] = dict(Counter(record.entry_node for record in ok))
    asked = [record for record in records if record.feedback is not None]
    summary["feedback"] = {"sent": len(asked), "ok": sum(1 for record in asked if record.feedback == "ok"),
                           "failed": dict(Counter(record.feedback for record in asked if record.feedback != "ok"))}
    return summary


def unavailable_entry(policy: str, reason: str) -> dict[str, Any]:
    return {"policy": policy, "status": "unavailable", "reason": reason}


# ---- invariants ------------------------------------------------------------------------------------------------


def check_invariants(report: Mapping[str, Any], records: Sequence[RequestRecord],
                     scheduled: int | None = None, oracle_floor: Mapping[tuple[str, str], float] | None = None,
                     oracle_qoe: Mapping[str, float] | None = None) -> list[str]:
    """What must hold in any report; returns the violations (empty when all hold).

    ``scheduled``: open-loop arrivals per policy (each must have exactly one record unless the
    scenario also has closed-loop users, which add theirs). ``oracle_floor``: (policy, key) ->
    the oracle's lower-bound latency for that answered request; ``oracle_qoe``: key -> the
    oracle's QoE.
    """
    violations: list[str] = []
    by_policy: dict[str, list[RequestRecord]] = defaultdict(list)
    for record in records:
        by_policy[record.policy].append(record)
    for policy, summary in report.get("policies", {}).items():
        if summary.get("status") != "ran":
            continue
        policy_records = by_policy.get(policy, [])
        if summary["ok"] + summary["error_count"] != summary["requests"]:
            violations.append(f"{policy}: ok {summary['ok']} + errors {summary['error_count']} != "
                              f"requests {summary['requests']}")
        if sum(summary["errors"].values()) != summary["error_count"]:
            violations.append(f"{policy}: errors by code do not add up to the error count")
        if len(policy_records) != summary["requests"]:
            violations.append(f"{policy}: {len(policy_records)} records but {summary['requests']} requests")
        keys = [record.key for record in policy_records]
        if len(set(keys)) != len(keys):
            violations.append(f"{policy}: a request has more than one record")
        if any(not record.outcome for record in policy_records):
            violations.append(f"{policy}: a request has no outcome")
        for field_name in ("requests", "ok", "error_count", "on_time"):
            per_user = sum(entry.get(field_name, 0) for entry in summary["per_user"].values())
            if per_user != summary[field_name]:
                violations.append(f"{policy}: per-user {field_name} add up to {per_user}, not {summary[field_name]}")
            per_group = sum(entry.get(field_name, 0) for entry in summary["per_group"].values())
            if per_group != summary[field_name]:
                violations.append(f"{policy}: per-group {field_name} add up to {per_group}, not "
                                  f"{summary[field_name]}")
        if scheduled is not None:
            open_loop = sum(1 for record in policy_records if record.scheduled_s is not None)
            if open_loop != scheduled:
                violations.append(f"{policy}: {open_loop} open-loop records for {scheduled} scheduled arrivals")
        if oracle_floor is not None:
            for record in policy_records:
                floor = oracle_floor.get((policy, record.key))
                if record.ok and floor is not None and record.latency_ms is not None \
                        and floor > record.latency_ms + 1e-6:
                    violations.append(f"{policy}: oracle floor {floor:.3f} ms above the measured "
                                      f"{record.latency_ms:.3f} ms for {record.key}")
                    break
            floor_summary = summary.get("latency_floor_ms") or {}
            for quantile in ("p50", "p95", "p99"):
                measured, floor_value = summary["latency_ms"].get(quantile), floor_summary.get(quantile)
                if measured is not None and floor_value is not None and floor_value > measured + 1e-3:
                    violations.append(f"{policy}: oracle latency floor {quantile} {floor_value} above {measured}")
        if oracle_qoe is not None:
            for record in policy_records:
                best = oracle_qoe.get(record.key)
                if best is not None and record.qoe is not None and best < record.qoe - 1e-6:
                    violations.append(f"{policy}: oracle QoE {best:.4f} below the policy's {record.qoe:.4f} "
                                      f"for {record.key}")
                    break
    return violations


# ---- files ----------------------------------------------------------------------------------------------------


_record_encoder = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(RequestRecord)


def write_jsonl(path: Path, items: Iterable[RequestRecord | NodeSample]) -> int:
    """One JSON object per line (``requests.jsonl``, ``nodes.jsonl``); returns how many."""
    count = 0
    with path.open("wb") as handle:
        for item in items:
            handle.write(_record_encoder.encode(item))
            handle.write(b"\n")
            count += 1
    return count


def read_requests(path: Path) -> list[RequestRecord]:
    records = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(_record_decoder.decode(line))
            except msgspec.DecodeError as error:
                raise ReportError(f"{path}:{number}: not a request record: {error}") from None
    return records


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")


def _cell(value: Any, digits: int = 1, percent: bool = False) -> str:
    if value is None:
        return "–"
    if percent:
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def summary_table(report: Mapping[str, Any]) -> str:
    """The markdown table of ``summary.md`` (also printed at the end of a run)."""
    lines = ["| policy | requests | ok | errors | p50 ms | p95 ms | p99 ms | miss rate | accuracy | mean QoE "
             "| goodput/s | Jain |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows = list(report.get("policies", {}).values())
    for summary in rows:
        if summary.get("status") != "ran":
            continue
        latency = summary["latency_ms"]
        lines.append("| " + " | ".join([
            summary["policy"], str(summary["requests"]), str(summary["ok"]), str(summary["error_count"]),
            _cell(latency["p50"]), _cell(latency["p95"]), _cell(latency["p99"]),
            _cell(summary["deadline_miss_rate"], percent=True), _cell(summary["mean_accuracy"], percent=True),
            _cell(summary["mean_qoe"], 3), _cell(summary["goodput_rps"], 2), _cell(summary["jain_fairness"], 3),
        ]) + " |")
    oracle = report.get("oracle")
    if oracle and oracle.get("requests"):
        latency = oracle["latency_ms"]
        lines.append("| " + " | ".join([
            "*oracle (hindsight bound)*", str(oracle["requests"]), "–", "–",
            _cell(latency["p50"]), _cell(latency["p95"]), _cell(latency["p99"]),
            _cell(oracle["deadline_miss_rate"], percent=True), _cell(oracle["mean_accuracy"], percent=True),
            _cell(oracle["mean_qoe"], 3), _cell(oracle["goodput_rps"], 2), "–",
        ]) + " |")
    return "\n".join(lines)


TARGET_QOE_GAIN = 0.10  # best adaptive >= best static + 10 % (of |static|)
TARGET_MISS_RATE = 0.02
TARGET_ORACLE_GAP = 0.10  # best adaptive within 10 % (of |oracle|) of the oracle's QoE


def issue_targets(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """The figures the project set itself, checked on this run: the best adaptive policy's mean
    QoE against the best static baseline's (+10 %) and the oracle's (within 10 %), and its
    deadline miss rate (<= 2 %). Margins are relative to the absolute value, since mean QoE
    may be negative. None when the run has no adaptive or no static policy."""
    ran = {name: entry for name, entry in (report.get("policies") or {}).items()
           if entry.get("status") == "ran" and entry.get("mean_qoe") is not None}
    adaptive = {name: entry for name, entry in ran.items() if is_adaptive(name)}
    static = {name: entry for name, entry in ran.items() if name in STATIC_BASELINES}
    if not adaptive or not static:
        return None
    best_adaptive = max(adaptive, key=lambda name: adaptive[name]["mean_qoe"])
    best_static = max(static, key=lambda name: static[name]["mean_qoe"])
    qoe, static_qoe = adaptive[best_adaptive]["mean_qoe"], static[best_static]["mean_qoe"]
    oracle_qoe = (report.get("oracle") or {}).get("mean_qoe")
    miss = adaptive[best_adaptive]["deadline_miss_rate"]
    targets: dict[str, Any] = {
        "best_adaptive": best_adaptive, "best_adaptive_qoe": qoe,
        "best_static": best_static, "best_static_qoe": static_qoe,
        "qoe_gain_over_static": round(qoe - static_qoe, 6),
        "beats_static_by_10pct": qoe >= static_qoe + TARGET_QOE_GAIN * abs(static_qoe),
        "best_adaptive_miss_rate": miss,
        "miss_rate_at_most_2pct": miss is not None and miss <= TARGET_MISS_RATE,
        "lowest_adaptive_miss_rate": min((entry["deadline_miss_rate"], name) for name, entry in adaptive.items()),
        "oracle_qoe": oracle_qoe,
    }
    if oracle_qoe is not None:
        targets["share_of_oracle_gap_closed"] = (
            round((qoe - static_qoe) / (oracle_qoe - static_qoe), 4) if oracle_qoe != static_qoe else None)
        targets["within_10pct_of_oracle"] = qoe >= oracle_qoe - TARGET_ORACLE_GAP * abs(oracle_qoe)
    return targets


def targets_markdown(targets: Mapping[str, Any] | None) -> list[str]:
    if not targets:
        return []

    def verdict(flag: Any) -> str:
        return "pass" if flag else "FAIL"

    lines = ["Targets (best adaptive policy vs the static baselines and the oracle; one run, noisy):", "",
             f"- best adaptive `{targets['best_adaptive']}` mean QoE {targets['best_adaptive_qoe']:.3f} vs best static "
             f"`{targets['best_static']}` {targets['best_static_qoe']:.3f} (+10 %): "
             f"{verdict(targets['beats_static_by_10pct'])}",
             f"- its deadline miss rate {targets['best_adaptive_miss_rate']:.1%} (<= 2 %): "
             f"{verdict(targets['miss_rate_at_most_2pct'])}"]
    if targets.get("oracle_qoe") is not None:
        lines.append(f"- oracle QoE {targets['oracle_qoe']:.3f} (within 10 %): "
                     f"{verdict(targets.get('within_10pct_of_oracle'))}; share of the static-to-oracle gap closed: "
                     f"{_cell(targets.get('share_of_oracle_gap_closed'), 2)}")
    return lines + [""]


def summary_markdown(report: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    scenario = report.get("scenario", {})
    parts = [f"# {scenario.get('name', 'benchmark')} — {report.get('created', '')}", ""]
    if scenario.get("description"):
        parts += [scenario["description"], ""]
    parts += [f"Duration {scenario.get('duration_s')} s, seed {report.get('seed')}, "
              f"{len(scenario.get('nodes', []))} nodes, QoE by `{report.get('qoe_function')}`.", "",
              summary_table(report), ""]
    parts += targets_markdown(report.get("targets"))
    unavailable = report.get("unavailable") or {}
    if unavailable:
        parts += ["Unavailable policies:", ""]
        parts += [f"- `{name}`: {reason}" for name, reason in unavailable.items()]
        parts.append("")
    floors = [(name, summary.get("latency_floor_ms") or {}) for name, summary in report.get("policies", {}).items()
              if summary.get("status") == "ran"]
    if any(floor for _, floor in floors):
        parts += ["Latency floor of each policy's own choices (same variant, exit and placement at the best "
                  "measured component times): " + ", ".join(
                      f"{name} p50 {_cell(floor.get('p50'))} ms" for name, floor in floors if floor), ""]
    events = report.get("events") or {}
    if any(events.values()):
        parts += ["Events:", ""]
        for policy, applied in events.items():
            text = "; ".join(f"{event['at_s']:g}s {event['kind']} {event.get('node') or ''} → {event['status']}"
                             for event in applied)
            parts.append(f"- {policy}: {text}")
        parts.append("")
    warnings = report.get("warnings") or []
    if warnings:
        parts += ["Warnings:", ""] + [f"- {warning}" for warning in warnings] + [""]
    invariants = report.get("invariants", {})
    if invariants:
        parts.append("Invariants: " + ("all hold." if invariants.get("ok") else
                                       "VIOLATED: " + "; ".join(invariants.get("violations", []))))
        parts.append("")
    if plots:
        parts += ["Plots: " + ", ".join(f"[{name}]({name})" for name in plots), ""]
    parts += ["Definitions: see `definitions` in report.json.", ""]
    return "\n".join(parts)


def now_text() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")
