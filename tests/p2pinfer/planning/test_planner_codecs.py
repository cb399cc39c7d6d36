"""Codecs in the planner: a smaller codec on a slow link, raw on a fast one, the JPEG input as a
first-class placement of block 0, and the DP still exact (brute force over segments x codecs)."""

from __future__ import annotations

import itertools
import math

import pytest

from p2pinfer.planning.planner import (
    CandidateUnit,
    CodecOption,
    Network,
    PlanningProblem,
    Segment,
    evaluate,
    plan,
    predict_latency,
)
from p2pinfer.protocol.link_estimate import LinkEstimate
from p2pinfer.types import NodeId, UnitName

DEVICE, EDGE = NodeId("device"), NodeId("edge")
CPU = UnitName("cpu")
BYTES = [1_600_000, 800_000, 400_000, 200_000]


def options(nbytes: int, *, penalty_ms: float = 0.5) -> list[CodecOption]:
    return [CodecOption("float32", nbytes), CodecOption("float16", nbytes // 2, 0.5, 0.5),
            CodecOption("uint8", nbytes // 4, 0.3, 0.3, penalty_ms)]


def problem(bandwidth_mbps: float, *, jpeg: bool = False, penalty_ms: float = 0.5) -> PlanningProblem:
    codecs = {block: options(BYTES[block - 1], penalty_ms=penalty_ms) for block in range(1, 4)}
    codecs[0] = options(602_112, penalty_ms=penalty_ms)
    if jpeg:
        codecs[0] = [*codecs[0], CodecOption("image/jpeg", 20_000, 0.0, 4.0)]
    return PlanningProblem(
        entry_node=DEVICE, input_bytes=602_112, output_bytes=BYTES, result_bytes=16,
        units=[CandidateUnit(DEVICE, CPU, {0: 20.0, 1: 30.0, 2: 30.0, 3: 60.0}),
               CandidateUnit(EDGE, CPU, {0: 2.0, 1: 3.0, 2: 3.0, 3: 6.0})],
        network=Network(links={(DEVICE, EDGE): LinkEstimate(bandwidth_mbps, 10.0)}), codecs=codecs)


def test_slow_link_gets_a_smaller_codec_fast_link_raw() -> None:
    slow = plan(problem(20.0))
    assert [segment.node_id for segment in slow.segments][-1] == EDGE
    assert slow.segments[-1].codec == "uint8"
    fast = plan(problem(50_000.0))
    assert fast.segments[-1].node_id == EDGE and fast.segments[-1].codec == "float32"


def test_a_heavy_accuracy_penalty_keeps_the_boundary_exact() -> None:
    chosen = plan(problem(20.0, penalty_ms=1000.0))
    assert "uint8" not in chosen.codecs
    assert chosen.penalty_ms == 0.0


def test_jpeg_offload_is_a_first_class_placement_of_block_0() -> None:
    chosen = plan(problem(2.0, jpeg=True))
    assert chosen.segments == (Segment(EDGE, CPU, 0, 3, "image/jpeg"),)
    assert chosen.transfer_ms == pytest.approx(4.0 + 20_000 * 8 / 2e6 * 1e3 + 5.0 + 16 * 8 / 2e6 * 1e3 + 5.0)


@pytest.mark.parametrize("bandwidth", [0.5, 2.0, 10.0, 40.0, 100.0, 1000.0])
@pytest.mark.parametrize("jpeg", [False, True])
def test_plan_is_the_brute_force_optimum_over_codecs(bandwidth: float, jpeg: bool) -> None:
    p = problem(bandwidth, jpeg=jpeg)
    best = math.inf
    for node_choice in itertools.product((DEVICE, EDGE), repeat=4):
        segments: list[Segment] = []
        for block, node in enumerate(node_choice):
            if segments and segments[-1].node_id == node:
                segments[-1] = Segment(node, CPU, segments[-1].first_block, block, segments[-1].codec)
            else:
                segments.append(Segment(node, CPU, block, block))
        hops = [index for index, segment in enumerate(segments) if index > 0 or segment.node_id != DEVICE]
        for names in itertools.product(*[[o.name for o in p.codec_options(segments[i].first_block)] for i in hops]):
            labelled = list(segments)
            for index, name in zip(hops, names, strict=True):
                s = labelled[index]
                labelled[index] = Segment(s.node_id, s.unit, s.first_block, s.last_block, name)
            best = min(best, evaluate(p, labelled).objective_ms)
    chosen = plan(p)
    assert chosen.objective_ms == pytest.approx(best)
    assert predict_latency(p) == pytest.approx(best)


def test_codec_pricing_offers_only_measured_codecs_within_the_accuracy_bound() -> None:
    from p2pinfer.planning.placement import CodecPricing
    from zoo.manifest import CodecAccuracy, read_manifest

    variant = read_manifest().variant("digits-cnn-w1")
    import msgspec
    variant = msgspec.structs.replace(variant, codec_accuracy=[
        CodecAccuracy(boundary=1, codec="uint8", accuracy_change=-0.005, images=100),
        CodecAccuracy(boundary=1, codec="uint8-channel", accuracy_change=-0.05, images=100)])
    pricing = CodecPricing(ms_per_accuracy=CodecPricing.ms_per_accuracy_of(1.0, 0.5, 100.0),
                           image=("image/jpeg", 900, 2.0))
    names = {option.name: option for option in pricing.options(variant, 1)}
    assert set(names) == {"float32", "uint8"}  # float16 unmeasured, uint8-channel over the 1-point bound
    assert names["uint8"].nbytes == variant.boundary_bytes(1) // 4
    assert names["uint8"].penalty_ms == pytest.approx(0.005 * 200.0)
    assert "image/jpeg" in {option.name for option in pricing.options(variant, 0)}
