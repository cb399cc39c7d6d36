"""Feasibility: never choose an arm that cannot meet the budget, and never refuse to answer.

The planner can predict an arm's end-to-end latency (compute on the chosen nodes, transfers,
queueing). Arms predicted to need more than ``margin * budget_ms`` are masked before the policy
chooses, which is the main lever against deadline misses: a bandit only learns that an arm
misses *after* missing with it, and conditions change faster than it can learn. The margin
leaves room for the predictor's error (default: use at most 90% of the budget).

If every arm is masked, :func:`select_feasible` degrades to the arm with the lowest predicted
latency: a late cheap answer (flagged ``degraded``) beats no answer.

A request may also set ``min_accuracy``: arms whose (held-out) accuracy is below it are masked
too, and that mask is never relaxed. If no arm reaches it, :class:`AccuracyFloorError` is raised
(the node answers it as a typed error); if some do but none is predicted in time, the fastest of
*those* is taken, flagged ``degraded`` — the deadline is best effort, the accuracy floor is not.

:func:`undominated_arms` drops arms that another arm beats on every count the QoE reward weighs
(at least as accurate, at most as slow, at most as costly, better on one): whatever a user's
weights, such an arm's expected reward is never higher, so a bandit that tries it spends real
requests to learn what the node's own predictions already say.
:func:`plausible_arms` then keeps the arms whose predicted reward (the node's own prediction for
the request at hand) is within a margin of the best: the bandit learns what the prediction cannot
know among arms still in contention.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from selector.arm import Arm
from selector.errors import AccuracyFloorError, InvalidParameterError, NoArmsError
from selector.policy import Policy

DEFAULT_MARGIN = 0.9

LatencyPredictor = Callable[[Arm], float]
AccuracyOf = Callable[[Arm], float]


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


def accuracy_mask(arms: Sequence[Arm], accuracy_of: AccuracyOf | None, min_accuracy: float | None) -> np.ndarray:
    """Boolean mask, True where the arm's accuracy is at least ``min_accuracy`` (all True when
    there is no floor). ``min_accuracy`` must be finite and in [0, 1]; an unknown (NaN)
    accuracy never qualifies under a floor."""
    if min_accuracy is None:
        return np.ones(len(arms), dtype=bool)
    floor = check_min_accuracy(min_accuracy)
    if accuracy_of is None:
        raise InvalidParameterError("a min_accuracy needs accuracy_of to know each arm's accuracy")
    accuracies = np.array([float(accuracy_of(arm)) for arm in arms])
    mask: np.ndarray = np.nan_to_num(accuracies, nan=-1.0) >= floor
    return mask


def check_min_accuracy(min_accuracy: float) -> float:
    """``min_accuracy`` as a float, or :class:`InvalidParameterError` unless finite and in [0, 1]."""
    floor = float(min_accuracy)
    if not (math.isfinite(floor) and 0.0 <= floor <= 1.0):
        raise InvalidParameterError(f"min_accuracy must be a finite number in [0, 1], got {min_accuracy!r}")
    return floor


def _mask(latencies: np.ndarray, budget_ms: float, margin: float) -> np.ndarray:
    if not float(margin) > 0.0:
        raise InvalidParameterError(f"margin must be > 0, got {margin}")
    budget = float(budget_ms)
    if math.isnan(budget):
        raise InvalidParameterError("budget_ms is NaN")
    return latencies <= float(margin) * budget


def plausible_arms(arms: Sequence[Arm], predicted_reward: Callable[[Arm], float], margin: float) -> list[Arm]:
    """The arms whose model-predicted reward is within ``margin`` of the best prediction, in their
    order; every arm when no prediction is finite (``-inf`` marks an arm the model rules out).

    Why: a node predicts each arm's reward before choosing (the planner's latency, the arm's
    held-out accuracy, the user's QoE weights); what it cannot predict (calibration, a model
    that is wrong today) is for the bandit to learn, among arms the prediction leaves in
    contention. Exploring an arm predicted far worse teaches what the prediction already says:
    in ``bandwidth-trace`` that exploration cost more QoE than it ever recovered.
    """
    if not margin >= 0.0:
        raise InvalidParameterError(f"margin must be >= 0, got {margin}")
    scores = [float(predicted_reward(arm)) for arm in arms]
    finite = [score for score in scores if math.isfinite(score)]
    if not finite:
        return list(arms)
    best = max(finite)
    return [arm for arm, score in zip(arms, scores, strict=True) if math.isfinite(score) and score >= best - margin]


def undominated_arms(arms: Sequence[Arm], predict_latency_ms: LatencyPredictor, accuracy_of: AccuracyOf,
                     cost_of: Callable[[Arm], float]) -> list[Arm]:
    """The arms no other arm dominates, in their order: ``b`` dominates ``a`` when it is at least
    as accurate (``accuracy_of``), predicted at most as slow and at most as costly (``cost_of``,
    e.g. FLOPs: the reward's energy term), and strictly better on one of the three.

    Safe before :func:`select_feasible_with_details`: a dominated arm's dominator passes every
    mask the dominated arm passes (deadline, accuracy floor) and is no slower, so neither the
    feasible set's best nor the degraded fallback is lost. Arms equal on all three stay.
    """
    points = [(float(accuracy_of(arm)), float(predict_latency_ms(arm)), float(cost_of(arm))) for arm in arms]
    kept: list[Arm] = []
    for index, (accuracy, latency, cost) in enumerate(points):
        dominated = any(other_accuracy >= accuracy and other_latency <= latency and other_cost <= cost
                        and (other_accuracy > accuracy or other_latency < latency or other_cost < cost)
                        for other, (other_accuracy, other_latency, other_cost) in enumerate(points)
                        if other != index)
        if not dominated:
            kept.append(arms[index])
    return kept


def select_feasible_with_details(policy: Policy, context: np.ndarray, arms: Sequence[Arm],
                                 predict_latency_ms: LatencyPredictor, budget_ms: float,
                                 margin: float = DEFAULT_MARGIN, *, accuracy_of: AccuracyOf | None = None,
                                 min_accuracy: float | None = None, **select_options: Any) -> FeasibleSelection:
    """Mask infeasible arms, let ``policy`` choose among the rest, or degrade to the fastest arm.

    ``min_accuracy`` (with ``accuracy_of``, each arm's accuracy) masks less accurate arms for
    good: :class:`AccuracyFloorError` when none reaches it, the fastest accurate-enough arm
    (degraded) when none of those fits the budget. ``select_options`` go to ``policy.select``
    (e.g. ``key_frame=True`` for muLinUCB)."""
    if len(arms) == 0:
        raise NoArmsError("select_feasible() needs at least one arm")
    accurate = accuracy_mask(arms, accuracy_of, min_accuracy)
    if not accurate.any():
        assert accuracy_of is not None  # accuracy_mask refuses a floor without it
        best = max((float(accuracy_of(arm)) for arm in arms), default=math.nan)
        raise AccuracyFloorError(f"no arm reaches min_accuracy {min_accuracy}; the most accurate offers {best:.4f}",
                                 best=best)
    latencies = predicted_latencies(arms, predict_latency_ms)
    allowed = _mask(latencies, budget_ms, margin) & accurate
    feasible_count = int(allowed.sum())
    if feasible_count == 0:
        fastest = int(np.argmin(np.where(accurate, latencies, math.inf)))
        if not accurate[fastest]:  # every accurate arm is predicted at infinity: take the first of them
            fastest = int(np.argmax(accurate))
        return FeasibleSelection(arms[fastest], True, float(latencies[fastest]), 0)
    arm = policy.select(context, arms, allowed, **select_options)
    return FeasibleSelection(arm, False, float(latencies[arms.index(arm)]), feasible_count)


def select_feasible(policy: Policy, context: np.ndarray, arms: Sequence[Arm], predict_latency_ms: LatencyPredictor,
                    budget_ms: float, margin: float = DEFAULT_MARGIN, *, accuracy_of: AccuracyOf | None = None,
                    min_accuracy: float | None = None, **select_options: Any) -> Arm:
    """The arm of :func:`select_feasible_with_details`."""
    return select_feasible_with_details(policy, context, arms, predict_latency_ms, budget_ms, margin,
                                        accuracy_of=accuracy_of, min_accuracy=min_accuracy, **select_options).arm
