"""Feasibility: never choose an arm that cannot meet the budget, and never refuse to answer.

The planner can predict an arm's end-to-end latency (compute on the chosen nodes, transfers,
queueing). Arms predicted to need more than ``margin * budget_ms`` are masked before the policy
chooses, which is the main lever against deadline misses: a bandit only learns that an arm
misses *after* missing with it, and conditions change faster than it can learn. The margin
leaves room for the predictor's error (default: use at most 90% of the budget).

If every arm is masked, :func:`select_feasible` degrades to the arm with the lowest predicted
latency: a late cheap answer (flagged ``degraded``) beats no answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from selector.arm import Arm
from selector.errors import InvalidParameterError, NoArmsError
from selector.policy import Policy

DEFAULT_MARGIN = 0.9

LatencyPredictor = Callable[[Arm], float]


@dataclass(frozen=True)
class FeasibleSelection:
    """The chosen arm, with why: ``degraded`` means no arm was predicted to fit the budget."""

    arm: Arm
    degraded: bool
    predicted_latency_ms: float
    feasible_count: int


def predicted_latencies(arms: Sequence[Arm], predict_latency_ms: LatencyPredictor) -> np.ndarray:
    """The predictor applied to every arm; NaN or negative predictions count as infinite (never
    feasible). A predictor that raises is a bug in the caller and is not hidden."""
    latencies = np.empty(len(arms))
    for index, arm in enumerate(arms):
        value = float(predict_latency_ms(arm))
        latencies[index] = value if math.isfinite(value) and value >= 0.0 else math.inf
    return latencies


def feasibility_mask(arms: Sequence[Arm], predict_latency_ms: LatencyPredictor, budget_ms: float,
                     margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """Boolean mask, True where the predicted latency is at most ``margin * budget_ms``."""
    return _mask(predicted_latencies(arms, predict_latency_ms), budget_ms, margin)


def _mask(latencies: np.ndarray, budget_ms: float, margin: float) -> np.ndarray:
    if not float(margin) > 0.0:
        raise InvalidParameterError(f"margin must be > 0, got {margin}")
    budget = float(budget_ms)
    if math.isnan(budget):
        raise InvalidParameterError("budget_ms is NaN")
    return latencies <= float(margin) * budget


def select_feasible_with_details(policy: Policy, context: np.ndarray, arms: Sequence[Arm],
                                 predict_latency_ms: LatencyPredictor, budget_ms: float,
                                 margin: float = DEFAULT_MARGIN, **select_options: Any) -> FeasibleSelection:
    """Mask infeasible arms, let ``policy`` choose among the rest, or degrade to the fastest arm.

    ``select_options`` go to ``policy.select`` (e.g. ``key_frame=True`` for muLinUCB)."""
    if len(arms) == 0:
        raise NoArmsError("select_feasible() needs at least one arm")
    latencies = predicted_latencies(arms, predict_latency_ms)
    allowed = _mask(latencies, budget_ms, margin)
    feasible_count = int(allowed.sum())
    if feasible_count == 0:
        fastest = int(np.argmin(latencies))
        return FeasibleSelection(arms[fastest], True, float(latencies[fastest]), 0)
    arm = policy.select(context, arms, allowed, **select_options)
    return FeasibleSelection(arm, False, float(latencies[arms.index(arm)]), feasible_count)


def select_feasible(policy: Policy, context: np.ndarray, arms: Sequence[Arm], predict_latency_ms: LatencyPredictor,
                    budget_ms: float, margin: float = DEFAULT_MARGIN, **select_options: Any) -> Arm:
    """The arm of :func:`select_feasible_with_details`."""
    return select_feasible_with_details(policy, context, arms, predict_latency_ms, budget_ms, margin,
                                        **select_options).arm
