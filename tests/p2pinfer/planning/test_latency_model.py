"""Online latency models: compute EWMAs from hops, link RTT and bandwidth from transfers."""

from __future__ import annotations

import random

import pytest

from p2pinfer.emulation.link import EmulatedLink
from p2pinfer.emulation.trace import parse_trace
from p2pinfer.planning.latency_model import ComputeLatencyModel, Ewma, LinkLatencyModel
from p2pinfer.protocol.link_estimate import LinkEstimate
from p2pinfer.types import NodeId, UnitName

A, B = NodeId("a"), NodeId("b")
CPU = UnitName("cpu")


def feed(model: LinkLatencyModel, forward: EmulatedLink, backward: EmulatedLink, samples: int,
         start_s: float = 0.0, seed: int = 1) -> float:
    """Round trips as the transport measures them: a message out, a 200-byte reply back."""
    rng = random.Random(seed)
    now = start_s
    for _ in range(samples):
        nbytes = rng.choice([rng.randint(100, 4096), rng.randint(64 * 1024, 2 * 1024 * 1024)])
        seconds = forward.delay_s(nbytes, now) + backward.delay_s(200, now)
        model.observe_transfer(A, B, nbytes, seconds)
        now += seconds + rng.uniform(0.0, 0.5)
    return now


@pytest.mark.parametrize(("mbps", "rtt_ms", "jitter_ms"),
                         [(10.0, 20.0, 3.0), (1.0, 60.0, 10.0), (100.0, 2.0, 0.5), (0.3, 150.0, 20.0)])
def test_link_estimate_converges_to_the_emulated_link(mbps: float, rtt_ms: float, jitter_ms: float) -> None:
    forward = EmulatedLink(bandwidth_mbps=mbps, rtt_ms=rtt_ms, jitter_ms=jitter_ms, seed=3)
    backward = EmulatedLink(bandwidth_mbps=mbps, rtt_ms=rtt_ms, jitter_ms=jitter_ms, seed=4)
    model = LinkLatencyModel(default=LinkEstimate(bandwidth_mbps=100.0, rtt_ms=1.0))
    feed(model, forward, backward, samples=200)
    estimate = model.estimate(A, B)
    assert estimate.bandwidth_mbps == pytest.approx(mbps, rel=0.2)
    assert estimate.rtt_ms == pytest.approx(rtt_ms, rel=0.2)


def test_link_estimate_follows_a_bandwidth_drop() -> None:
    model = LinkLatencyModel()
    fast = EmulatedLink(bandwidth_mbps=20.0, rtt_ms=10.0, seed=1)
    now = feed(model, fast, EmulatedLink(bandwidth_mbps=20.0, rtt_ms=10.0, seed=2), samples=100)
    assert model.estimate(A, B).bandwidth_mbps == pytest.approx(20.0, rel=0.2)
    slow = EmulatedLink(bandwidth_mbps=4.0, rtt_ms=10.0, seed=1)
    feed(model, slow, EmulatedLink(bandwidth_mbps=4.0, rtt_ms=10.0, seed=2), samples=100, start_s=now)
    assert model.estimate(A, B).bandwidth_mbps == pytest.approx(4.0, rel=0.2)


def test_link_estimate_tracks_a_replayed_trace_mean() -> None:
    # A two-level trace: 2 Mbit/s for 5 s, then 8 Mbit/s for 5 s (period 10 s, mean 5).
    trace = parse_trace("0 2\n5 8\n", source="two-level")
    forward = EmulatedLink(trace=trace, rtt_ms=20.0, seed=5)
    model = LinkLatencyModel()
    feed(model, forward, EmulatedLink(bandwidth_mbps=8.0, rtt_ms=20.0, seed=6), samples=300)
    assert 2.0 * 0.8 <= model.estimate(A, B).bandwidth_mbps <= 8.0 * 1.2


def test_unmeasured_links_use_the_default_and_bad_samples_are_ignored() -> None:
    default = LinkEstimate(bandwidth_mbps=50.0, rtt_ms=3.0)
    model = LinkLatencyModel(default=default)
    assert model.estimate(A, B) == default
    model.observe_transfer(A, B, 1_000_000, float("nan"))
    model.observe_transfer(A, B, 1_000_000, -1.0)
    assert model.estimate(A, B) == default
    model.observe_rtt(A, B, 0.010)
    assert model.estimate(A, B) == LinkEstimate(bandwidth_mbps=50.0, rtt_ms=10.0)
    assert set(model.estimates()) == {(A, B)}


def test_one_stalled_transfer_does_not_wipe_out_the_estimate() -> None:
    model = LinkLatencyModel()
    link = EmulatedLink(bandwidth_mbps=10.0, rtt_ms=10.0, seed=1)
    feed(model, link, EmulatedLink(bandwidth_mbps=10.0, rtt_ms=10.0, seed=2), samples=100)
    model.observe_transfer(A, B, 1_000_000, 500.0)  # a 500 s stall
    assert model.estimate(A, B).bandwidth_mbps > 10.0 * 0.5


def test_compute_model_starts_from_the_profile_and_learns_hops() -> None:
    model = ComputeLatencyModel(alpha=0.2)
    model.seed(A, CPU, "resnet-w50", {0: 10.0, 1: 30.0})
    assert model.block_ms(A, CPU, "resnet-w50") == {0: 10.0, 1: 30.0}
    for _ in range(30):
        model.observe(A, CPU, "resnet-w50", 0, 20.0)
    assert model.predict(A, CPU, "resnet-w50", 0) == pytest.approx(20.0, rel=0.01)
    # A segment's time is shared in proportion to the current estimates.
    model.seed(B, CPU, "resnet-w50", {0: 10.0, 1: 30.0})
    for _ in range(30):
        model.observe_segment(B, CPU, "resnet-w50", 0, 1, 80.0)
    assert model.predict(B, CPU, "resnet-w50", 0) == pytest.approx(20.0, rel=0.05)
    assert model.predict(B, CPU, "resnet-w50", 1) == pytest.approx(60.0, rel=0.05)
    # Seeding again keeps what was learnt.
    model.seed(A, CPU, "resnet-w50", {0: 10.0})
    assert model.predict(A, CPU, "resnet-w50", 0) == pytest.approx(20.0, rel=0.01)
    assert model.predict(A, CPU, "other", 0) is None


def test_the_tail_is_the_p90_of_noisy_samples_and_the_mean_of_steady_ones() -> None:
    """The mask prices blocks at their tail: for normal noise the tail lands near the samples'
    own p90 (nine in ten below it), for a steady block it is the mean."""
    rng = random.Random(3)
    noisy, samples = Ewma(alpha=0.05), [rng.gauss(20.0, 4.0) for _ in range(4000)]
    for sample in samples:
        noisy.update(sample)
    tail = noisy.tail()
    assert noisy.value is not None and tail is not None
    below = sum(sample <= tail for sample in samples[-2000:]) / 2000
    assert 0.85 <= below <= 0.95
    assert tail == pytest.approx(20.0 + 1.28 * 4.0, rel=0.06)
    steady = Ewma()
    for _ in range(50):
        steady.update(12.0)
    assert steady.tail() == pytest.approx(12.0)
    assert Ewma().tail() is None
    model = ComputeLatencyModel()
    for sample in samples[:200]:
        model.observe(A, CPU, "v", 0, sample)
    predicted, predicted_tail = model.predict(A, CPU, "v", 0), model.predict_tail(A, CPU, "v", 0)
    assert predicted is not None and predicted_tail is not None and predicted_tail > predicted + 3.0


def test_a_routes_overhead_is_its_mean_residual_after_ten_answers_and_never_negative() -> None:
    model = ComputeLatencyModel()
    late, early = NodeId("late"), NodeId("early")
    for index in range(9):
        model.observe_route(late, 6.0 + (1.0 if index % 2 else -1.0))
        model.observe_route(early, -4.0)
    assert 0.0 < model.route_overhead_ms(late) < 4.0  # nine answers: shrunk toward 0
    model.observe_route(late, 6.0)
    model.observe_route(early, -4.0)
    assert model.route_overhead_ms(late) == pytest.approx(6.0, abs=0.2)
    assert model.route_overhead_ms(early) == 0.0  # a route that comes early is not made faster
    assert model.route_overhead_ms("unknown") == 0.0  # no answer, no entry overhead measured
    assert model.route_summary()["late"]["samples"] == 10 and model.route_summary()["early"]["mean"] < 0


def test_a_route_with_few_answers_starts_from_the_entry_overhead_of_its_kind() -> None:
    """A rarely used peer is priced with the overhead every hop pays at the entry (measured on
    every answer beyond its parts), not with other routes' residuals: the edge's compute tails
    already covered its overhead (residual 0), and the Jetson, priced from it, came 6-10 ms
    late. A route's own bias takes over as its answers come."""
    own, edge, jetson = NodeId("own"), NodeId("edge"), NodeId("jetson")
    model = ComputeLatencyModel(own_node=own)
    assert model.route_overhead_ms(jetson) == 0.0  # nothing measured yet
    model.observe_entry_overhead(own, 3.0)
    assert model.route_overhead_ms(jetson) == pytest.approx(3.0)  # a hop costs at least a local plan's overhead
    for _ in range(10):
        model.observe_entry_overhead(edge, 7.0)
        model.observe_route(edge, -7.0)  # the edge's parts were priced 7 ms high: its overhead is in them
    assert model.route_overhead_ms(edge) == pytest.approx(0.0)
    assert model.route_overhead_ms(jetson) == pytest.approx(7.0, abs=0.5)  # a peer: the hops' entry overhead
    assert model.route_overhead_ms(own) == pytest.approx(3.0)  # the own route keeps its own kind's
    model.observe_route(jetson, 10.0)
    assert 7.5 < model.route_overhead_ms(jetson) < 17.0  # one answer of its own: its bias, shrunk
    for _ in range(9):
        model.observe_route(jetson, 10.0)
    assert model.route_overhead_ms(jetson) == pytest.approx(17.0, abs=0.5)  # ten answers: in full
    assert set(model.entry_overhead_summary()) == {"local", "peers"}


def test_ewma_forgets_a_wrong_seed_quickly() -> None:
    average = Ewma(alpha=0.1)
    average.seed(100.0)
    for _ in range(5):
        average.update(10.0)
    # With a plain alpha of 0.1 five samples would leave ~63; bias correction gets close to 10.
    assert average.value is not None and average.value < 30.0


def transfer_s(nbytes: int, mbps: float, rtt_ms: float) -> float:
    return rtt_ms / 1000.0 + nbytes * 8.0 / (mbps * 1e6)


def learnt(mbps: float, rtt_ms: float = 5.0, samples: int = 30) -> LinkLatencyModel:
    model = LinkLatencyModel()
    for _ in range(samples):
        model.observe_rtt(A, B, rtt_ms / 1000.0)
        model.observe_transfer(A, B, 256 * 1024, transfer_s(256 * 1024, mbps, rtt_ms))
    return model


def test_a_step_drop_is_believed_after_two_transfers_a_step_up_only_slowly() -> None:
    model = learnt(100.0)
    assert model.estimate(A, B).bandwidth_mbps == pytest.approx(100.0, rel=0.05)
    model.observe_transfer(A, B, 256 * 1024, transfer_s(256 * 1024, 0.5, 5.0))
    first = model.estimate(A, B).bandwidth_mbps
    assert 0.5 < first < 100.0 * 0.6  # bad news moves it a lot at once, but one sample is not the truth yet
    model.observe_transfer(A, B, 256 * 1024, transfer_s(256 * 1024, 0.5, 5.0))
    assert model.estimate(A, B).bandwidth_mbps == pytest.approx(0.5, rel=0.1)  # confirmed: believed outright
    model.observe_transfer(A, B, 256 * 1024, transfer_s(256 * 1024, 100.0, 5.0))
    assert model.estimate(A, B).bandwidth_mbps < 0.5 * 10 * 1.01  # good news: clipped, slow


def test_a_single_bad_sample_between_good_ones_is_not_a_drop() -> None:
    model = learnt(50.0)
    model.observe_transfer(A, B, 256 * 1024, transfer_s(256 * 1024, 1.0, 5.0))
    model.observe_transfer(A, B, 256 * 1024, transfer_s(256 * 1024, 50.0, 5.0))
    model.observe_transfer(A, B, 256 * 1024, transfer_s(256 * 1024, 1.0, 5.0))
    assert model.estimate(A, B).bandwidth_mbps > 50.0 / 10  # never two far-worse samples in a row


def test_a_time_out_only_ever_lowers_the_estimate_and_links_know_their_age() -> None:
    now = [100.0]
    model = LinkLatencyModel(clock=lambda: now[0])
    assert model.age_s(A, B) == float("inf")
    model.observe_transfer(A, B, 1_000_000, transfer_s(1_000_000, 20.0, 5.0))
    now[0] += 3.0
    assert model.age_s(A, B) == pytest.approx(3.0)
    before = model.estimate(A, B).bandwidth_mbps
    model.observe_timeout(A, B, 1_000_000, 0.01)  # 10 ms for 1 MB: says nothing (faster than the estimate)
    assert model.estimate(A, B).bandwidth_mbps == before
    model.observe_timeout(A, B, 1_000_000, 4.0)  # no reply within 4 s: at most ~2 Mbit/s
    assert model.estimate(A, B).bandwidth_mbps < before * 0.6
    assert model.age_s(A, B) == pytest.approx(0.0)


def test_a_link_is_measured_once_a_large_transfer_crossed_it_even_too_fast_to_tell() -> None:
    """The prober measures a new peer's link once, and the bench harness waits for it: a link
    whose 32 KB probe crossed too fast to tell its bandwidth (a LAN) is measured too — its
    estimate stays the default — rather than unmeasured forever."""
    model = LinkLatencyModel()
    a, b = NodeId("a"), NodeId("b")
    assert not model.bandwidth_measured(a, b)
    model.observe_transfer(a, b, 200, 0.002)  # a small round trip: the RTT only
    assert not model.bandwidth_measured(a, b)
    model.observe_transfer(a, b, 32 * 1024, 0.0021)  # 32 KB within 0.1 ms of the RTT: too fast to tell
    assert model.bandwidth_measured(a, b)
    assert model.estimate(a, b).bandwidth_mbps == model.default.bandwidth_mbps


def test_a_round_trip_faster_than_the_rtt_estimate_lowers_it_whatever_its_size() -> None:
    """Two empty probes answered while the peer was busy starting said 36 ms; every later message
    on the link was a 16 KB input (too large for an RTT sample, too small for a bandwidth one)
    answered in 3 ms. The estimate used to stay at 36 ms for good, and the planner routed
    around the link; a round trip bounds the RTT from above, so it now comes down."""
    model = LinkLatencyModel()
    for _ in range(2):
        model.observe_rtt(A, B, 0.036)
    assert model.estimate(A, B).rtt_ms == pytest.approx(36.0)
    model.observe_transfer(A, B, 16 * 1024, 0.050)  # slower than the estimate: says nothing about the RTT
    assert model.estimate(A, B).rtt_ms == pytest.approx(36.0)
    for _ in range(15):
        model.observe_transfer(A, B, 16 * 1024, 0.003)
    assert model.estimate(A, B).rtt_ms < 6.0
    assert model.estimate(A, B).bandwidth_mbps == model.default.bandwidth_mbps  # not a bandwidth sample
