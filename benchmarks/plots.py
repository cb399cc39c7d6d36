"""PNG plots of a benchmark run (matplotlib's Agg backend: no display needed).

One figure per question a reader asks: how fast (latency CDF per policy, with the oracle's
line), when did it go wrong (deadline-miss rate over time with the scenario's events marked),
what did the policies choose (arms over time), and what did the nodes go through (utilisation
and temperature over time, as sampled from the nodes; a panel says so when a node does not
expose a field rather than drawing a flat zero).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.load import RequestRecord  # noqa: E402
from benchmarks.oracle import OracleResult, record_time  # noqa: E402
from benchmarks.report import NodeSample  # noqa: E402
from benchmarks.scenario import Event  # noqa: E402

MAX_PANELS = 12
DPI = 110


def _by_policy(records: Sequence[RequestRecord]) -> dict[str, list[RequestRecord]]:
    grouped: dict[str, list[RequestRecord]] = defaultdict(list)
    for record in records:
        grouped[record.policy].append(record)
    return dict(grouped)


def _save(figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path.name


def _legend(axes, **options) -> None:
    """A legend only where something is labelled (an empty one warns and says nothing)."""
    if axes.get_legend_handles_labels()[0]:
        axes.legend(**options)


def _mark_events(axes, events: Sequence[Event]) -> None:
    for event in events:
        axes.axvline(event.at_s, color="grey", linestyle="--", linewidth=0.8)
        axes.text(event.at_s, 0.98, " " + event.describe(), rotation=90, va="top", ha="left", fontsize=7,
                  color="dimgrey", transform=axes.get_xaxis_transform())


def latency_cdf(path: Path, records: Sequence[RequestRecord], oracle: OracleResult | None) -> str:
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for policy, policy_records in sorted(_by_policy(records).items()):
        values = sorted(record.latency_ms for record in policy_records if record.ok and record.latency_ms is not None)
        if values:
            axes.step(values, [(index + 1) / len(values) for index in range(len(values))], where="post",
                      label=f"{policy} (n={len(values)})")
    if oracle is not None and oracle.choices:
        values = sorted(choice.latency_ms for choice in oracle.choices.values())
        axes.step(values, [(index + 1) / len(values) for index in range(len(values))], where="post", color="black",
                  linestyle=":", label="oracle (hindsight bound)")
    axes.set_xlabel("latency (ms, entry node)")
    axes.set_ylabel("share of answered requests")
    axes.set_ylim(0, 1.02)
    if any(record.ok for record in records):
        axes.set_xscale("log")
    axes.grid(True, alpha=0.3)
    _legend(axes, fontsize=8, loc="lower right")
    axes.set_title("Latency CDF per policy")
    return _save(figure, path)


def miss_rate_over_time(path: Path, records: Sequence[RequestRecord], events: Sequence[Event],
                        duration_s: float) -> str:
    bin_s = max(duration_s / 40.0, 0.5)
    bins = max(math.ceil(duration_s / bin_s), 1)
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for policy, policy_records in sorted(_by_policy(records).items()):
        sent = [0] * bins
        missed = [0] * bins
        for record in policy_records:
            index = min(max(int(record_time(record) / bin_s), 0), bins - 1)
            sent[index] += 1
            missed[index] += 0 if (record.ok and record.deadline_met) else 1
        xs = [(index + 0.5) * bin_s for index in range(bins) if sent[index]]
        ys = [missed[index] / sent[index] for index in range(bins) if sent[index]]
        axes.plot(xs, ys, marker=".", label=policy)
    _mark_events(axes, events)
    axes.set_xlim(0, duration_s)
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel("time since load start (s)")
    axes.set_ylabel(f"deadline-miss rate (errors count), {bin_s:.1f} s bins")
    axes.grid(True, alpha=0.3)
    _legend(axes, fontsize=8, loc="upper left")
    axes.set_title("Deadline misses over time")
    return _save(figure, path)


def arms_over_time(path: Path, records: Sequence[RequestRecord], events: Sequence[Event], duration_s: float) -> str:
    grouped = sorted(_by_policy(records).items())[:MAX_PANELS]
    arms = sorted({record.arm for record in records if record.ok and record.arm})
    labels = [*arms, "error"]
    position = {label: index for index, label in enumerate(labels)}
    figure, axes_list = plt.subplots(max(len(grouped), 1), 1, figsize=(8, 1.2 + 1.6 * max(len(grouped), 1)),
                                     sharex=True, squeeze=False)
    for (policy, policy_records), (axes,) in zip(grouped, axes_list, strict=False):
        for kind, color, chosen in (("on time", "tab:green", lambda r: r.ok and r.deadline_met),
                                    ("late", "tab:orange", lambda r: r.ok and not r.deadline_met),
                                    ("error", "tab:red", lambda r: not r.ok)):
            subset = [record for record in policy_records if chosen(record)]
            if subset:
                axes.scatter([record_time(record) for record in subset],
                             [position[record.arm if record.ok and record.arm else "error"] for record in subset],
                             s=6, color=color, label=kind, alpha=0.7)
        _mark_events(axes, events)
        axes.set_yticks(range(len(labels)))
        axes.set_yticklabels(labels, fontsize=7)
        axes.set_ylim(-0.5, len(labels) - 0.5)
        axes.set_title(policy, fontsize=9, loc="left")
        _legend(axes, fontsize=7, loc="upper right", markerscale=2)
    axes_list[-1][0].set_xlim(0, duration_s)
    axes_list[-1][0].set_xlabel("time since load start (s)")
    figure.suptitle("Arms chosen over time")
    return _save(figure, path)


def nodes_over_time(path: Path, samples: Mapping[str, Sequence[NodeSample]], events: Sequence[Event],
                    duration_s: float) -> str:
    policies = sorted(samples)[:MAX_PANELS] or ["(no samples)"]
    figure, axes_grid = plt.subplots(len(policies), 2, figsize=(10, 1.4 + 2.2 * len(policies)), squeeze=False,
                                     sharex=True)
    for policy, (utilisation_axes, temperature_axes) in zip(policies, axes_grid, strict=True):
        by_node: dict[str, list[NodeSample]] = defaultdict(list)
        for sample in samples.get(policy, ()):
            by_node[sample.node].append(sample)
        any_utilisation = any_temperature = False
        for node, node_samples in sorted(by_node.items()):
            points = [(sample.t_s, sample.utilisation) for sample in node_samples if sample.utilisation is not None]
            if points:
                any_utilisation = True
                utilisation_axes.plot(*zip(*points, strict=True), label=node)
            points = [(sample.t_s, sample.temperature_c) for sample in node_samples
                      if sample.temperature_c is not None]
            if points:
                any_temperature = True
                temperature_axes.plot(*zip(*points, strict=True), label=node)
            dead = [sample.t_s for sample in node_samples if not sample.alive]
            if dead:
                utilisation_axes.scatter(dead, [0.0] * len(dead), marker="x", color="red", s=12)
        for axes, present, what in ((utilisation_axes, any_utilisation, "utilisation"),
                                    (temperature_axes, any_temperature, "temperature")):
            if not present:
                axes.text(0.5, 0.5, f"nodes expose no {what}", ha="center", va="center", transform=axes.transAxes,
                          color="grey")
            else:
                _legend(axes, fontsize=7, loc="upper left")
            _mark_events(axes, events)
            axes.grid(True, alpha=0.3)
        utilisation_axes.set_ylabel("utilisation")
        utilisation_axes.set_title(f"{policy}: utilisation (x: node down)", fontsize=9, loc="left")
        temperature_axes.set_ylabel("°C")
        temperature_axes.set_title(f"{policy}: temperature", fontsize=9, loc="left")
    for axes in axes_grid[-1]:
        axes.set_xlim(0, duration_s)
        axes.set_xlabel("time since load start (s)")
    return _save(figure, path)


def write_plots(out_dir: Path, records: Sequence[RequestRecord], oracle: OracleResult | None,
                events: Sequence[Event], samples: Mapping[str, Sequence[NodeSample]], duration_s: float) -> list[str]:
    """Every plot of a run into ``out_dir``; returns the file names."""
    return [
        latency_cdf(out_dir / "latency_cdf.png", records, oracle),
        miss_rate_over_time(out_dir / "deadline_miss_over_time.png", records, events, duration_s),
        arms_over_time(out_dir / "arms_over_time.png", records, events, duration_s),
        nodes_over_time(out_dir / "nodes_over_time.png", samples, events, duration_s),
    ]
