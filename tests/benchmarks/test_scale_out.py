"""The scale-out/ramp figures: goodput counts on-time answers only, rejections are misses,
degraded answers are reported apart, Jain's index is over users' on-time shares."""

from __future__ import annotations

import pytest

from benchmarks.load import RequestRecord
from benchmarks.scale_out import choose_capacity, figures, with_rate
from benchmarks.scenario import load_scenario


def record(user: str, outcome: str = "ok", met: bool = True, degraded: bool = False) -> RequestRecord:
    return RequestRecord(key=f"{user}#1", policy="fixed", user=user, group="g", family="digits-resnet", sequence=1,
                         scheduled_s=0.0, sent_s=0.0, done_s=0.1, outcome=outcome, latency_ms=100.0,
                         client_latency_ms=100.0, deadline_ms=600.0, deadline_met=met and outcome == "ok",
                         image_index=0, true_label=1, label=1, correct=True, degraded=degraded,
                         plan=[["n1", "cpu", 0, 3]], entry_node="n1")


def test_figures_count_rejections_as_misses_and_degraded_apart():
    records = [record("a"), record("a", degraded=True), record("b", outcome="overloaded"), record("b", met=False)]
    result = figures(records, duration_s=2.0)
    assert result["goodput_per_s"] == 1.0 and result["miss_rate"] == 0.5
    assert result["rejected_share"] == 0.25 and result["degraded_share"] == 0.25
    assert result["jain"] == pytest.approx(0.5)  # a got all, b nothing
    assert result["compute_nodes"] == ["n1"]


def test_scenarios_load_and_rates_scale():
    scale = load_scenario("scale-out")
    assert len(scale.nodes) == 8 and all(node.device_profile == "bench-slow" for node in scale.nodes)
    ramp = with_rate(load_scenario("ramp"), 20.0, 5.0, 1)
    assert sum(group.rate_per_s * group.count for group in ramp.users) == pytest.approx(20.0)


def test_the_ramp_trusts_its_probe_unless_the_host_starved_it():
    assert choose_capacity(3.2, 3.6) == (3.2, "measured")
    assert choose_capacity(0.5, 3.6) == (3.6, "predicted")  # a starved probe: the profiles' prediction
    assert choose_capacity(0.0, None) == (0.1, "measured")
