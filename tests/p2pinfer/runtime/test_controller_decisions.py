"""The controller's pure decisions, without a node."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from p2pinfer.planning.selection import Decision
from p2pinfer.protocol.schema import InferRequest, PlanSegment
from p2pinfer.runtime.controller import (
    SHEDDABLE_WAIT_SHARE,
    SMALL_ANSWER_CLASSES,
    first_try_wait_share,
    latency_route_key,
    request_digest,
    softmax_answer,
)


def segment(node: str, first: int, last: int) -> PlanSegment:
    return PlanSegment(node=node, unit="cpu", first_block=first, last_block=last)


def test_only_a_plan_on_this_node_waits_half_its_slack_on_its_first_try() -> None:
    """Half a slack leaves time to shed to a cheaper arm when the refusal is free (this node's
    unit refuses at once); a plan through a peer has paid the hop by the time it is refused."""
    assert first_try_wait_share(True, [segment("jetson", 0, 3)], "jetson") == SHEDDABLE_WAIT_SHARE < 1.0
    assert first_try_wait_share(True, [segment("jetson", 0, 1), segment("jetson", 2, 3)], "jetson") < 1.0
    assert first_try_wait_share(True, [segment("edge", 0, 3)], "jetson") == 1.0
    assert first_try_wait_share(True, [segment("jetson", 0, 1), segment("edge", 2, 3)], "jetson") == 1.0
    assert first_try_wait_share(False, [segment("jetson", 0, 3)], "jetson") == 1.0  # nothing to shed to


def test_answers_are_thinned_per_arm_and_whole_route() -> None:
    """Plans sharing their first node but not the rest are different routes to the residuals."""
    from selector import Arm

    def key(arm: Arm, *segments: PlanSegment) -> tuple[str, ...]:
        return latency_route_key(Decision(arm, list(segments), 5.0, None, forced=False))

    arm = Arm("digits-cnn-w1", 3)
    local = key(arm, segment("jetson", 0, 3))
    to_edge = key(arm, segment("jetson", 0, 1), segment("edge", 2, 3))
    to_pi = key(arm, segment("jetson", 0, 1), segment("pi", 2, 3))
    assert len({local, to_edge, to_pi, key(Arm("digits-cnn-w1", 1), segment("jetson", 0, 1))}) == 4
    assert to_edge == key(arm, segment("jetson", 0, 0), segment("edge", 1, 3))  # the same nodes: one route


@pytest.mark.parametrize("classes", [4, 10, SMALL_ANSWER_CLASSES + 1, 1000])
def test_an_answer_is_the_softmax_of_its_logits_on_either_path(classes):
    """Small answers take a Python-float softmax, big ones numpy's: both give torch's softmax
    to 6 decimals, the first of tied labels, and None for a NaN or Inf logit."""
    generator = torch.Generator().manual_seed(classes)
    logits = torch.randn(1, classes, generator=generator) * 8
    logits[0, 1] = logits[0, 2] = logits.max() + 1.0  # a tie for the top label
    answer = softmax_answer(logits)
    assert answer is not None
    assert softmax_answer(logits[0].tolist()) == answer  # a local run's row of floats: the same answer
    label, confidence, probabilities = answer
    expected = torch.softmax(logits.double(), -1)[0]
    assert label == 1 and confidence == pytest.approx(float(expected[1]), abs=1e-12)
    assert len(probabilities) == classes and all(round(value, 6) == value for value in probabilities)
    assert probabilities == pytest.approx(expected.tolist(), abs=6e-7)
    for bad in (float("nan"), float("inf"), float("-inf")):
        broken = logits.clone()
        broken[0, classes // 2] = bad
        assert softmax_answer(broken) is None
    assert softmax_answer(torch.full((1, classes), 3.0e38)) is not None  # huge but finite: a sum in float64


def test_a_request_digest_binds_the_input_bytes_whatever_their_layout() -> None:
    """A strided view hashes as its contiguous copy; another input, user or deadline differs."""
    request = InferRequest(deadline_ms=100.0, family="digits-cnn", user="ann", request_id="r1")
    grid = np.arange(128, dtype=np.float32).reshape(1, 1, 8, 16)
    strided = grid[:, :, :, ::2]
    assert not strided.flags.c_contiguous
    assert request_digest(request, strided) == request_digest(request, np.ascontiguousarray(strided))
    other = np.ascontiguousarray(strided).copy()
    other[0, 0, 0, 0] += 1.0
    assert request_digest(request, other) != request_digest(request, strided)
    later = InferRequest(deadline_ms=200.0, family="digits-cnn", user="ann", request_id="r1")
    assert request_digest(later, strided) != request_digest(request, strided)


def test_probabilities_are_rounded_as_round_to_6_decimals_would() -> None:
    """The answer's rounding (integer millionths) gives exactly ``round(p, 6)`` for every class."""
    generator = random.Random(17)
    for _ in range(2000):
        values = [generator.uniform(-12.0, 12.0) for _ in range(10)]
        answer = softmax_answer(values)
        assert answer is not None
        top = max(values)
        exponentials = [math.exp(value - top) for value in values]
        scale = 1.0 / sum(exponentials)
        assert answer[2] == [round(value * scale, 6) for value in exponentials]
