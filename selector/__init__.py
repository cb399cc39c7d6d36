"""Contextual bandits that choose (variant, exit[, split]) per request from QoE feedback.

numpy only (no torch, no p2pinfer). The node's flow, in short::

    from selector import ContextInputs, encode, make_policy, select_feasible, qoe_reward, QoEWeights

    policy = make_policy("linucb", DIMENSION)
    context = encode(ContextInputs(budget_ms=80, input_bytes=3136, best_link_bandwidth_mbps=20, ...))
    arm = select_feasible(policy, context, arms, planner.predict_latency_ms, budget_ms=80)
    ...run it...
    policy.remember(request_id, context, arm, provisional_reward=qoe_reward(weights, confidence, ...))
    ...later, POST /v1/feedback...
    policy.feedback(request_id, feedback_reward(weights, outcome, correct=True))
"""

from selector.adaptive_linucb import AdaptiveLinUCBPolicy
from selector.arm import Arm
from selector.arm_features import ArmTraits
from selector.baselines import FixedPolicy, RandomPolicy
from selector.calibration import CalibrationTable, calibrated_accuracy
from selector.context import DIMENSION, FEATURE_NAMES, ContextInputs, encode
from selector.epsilon_greedy import EpsilonGreedyPolicy
from selector.errors import (
    AccuracyFloorError,
    ContextError,
    InvalidArmError,
    InvalidParameterError,
    MaskError,
    NoArmsError,
    NoFeasibleArmError,
    PersistenceError,
    SelectorError,
    StatisticsError,
    UnknownPolicyError,
)
from selector.feasibility import (
    FeasibleSelection,
    accuracy_mask,
    check_min_accuracy,
    feasibility_mask,
    plausible_arms,
    select_feasible,
    select_feasible_with_details,
    undominated_arms,
)
from selector.linear_policy import LinearPolicy
from selector.linucb import LinUCBPolicy
from selector.mulinucb import MuLinUCBPolicy
from selector.pending import PendingDecision, PendingDecisions
from selector.persistence import load, save
from selector.policy import Policy
from selector.qoe import QoEOutcome, QoEWeights, feedback_reward, outcome_reward, qoe_reward
from selector.registry import make_policy, policy_names, takes_seed
from selector.statistics import StatisticsDelta, SufficientStatistics
from selector.thompson import ThompsonPolicy

__all__ = [
    "AccuracyFloorError", "CalibrationTable", "accuracy_mask", "calibrated_accuracy", "check_min_accuracy",
    "DIMENSION", "FEATURE_NAMES", "AdaptiveLinUCBPolicy", "Arm", "ArmTraits", "ContextError", "ContextInputs",
    "EpsilonGreedyPolicy",
    "FeasibleSelection", "FixedPolicy", "InvalidArmError", "InvalidParameterError", "LinUCBPolicy",
    "LinearPolicy", "MaskError", "MuLinUCBPolicy", "NoArmsError", "NoFeasibleArmError", "PendingDecision",
    "PendingDecisions", "PersistenceError", "Policy", "QoEOutcome", "QoEWeights", "RandomPolicy",
    "SelectorError", "StatisticsDelta", "StatisticsError", "SufficientStatistics", "ThompsonPolicy",
    "UnknownPolicyError", "encode", "feasibility_mask", "feedback_reward", "load", "make_policy",
    "outcome_reward", "policy_names", "qoe_reward", "save", "select_feasible", "select_feasible_with_details",
    "plausible_arms", "takes_seed",
    "undominated_arms",
]
