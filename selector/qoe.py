"""Quality of experience: the reward a policy learns from.

Each user weighs accuracy, latency and energy differently (a photo tagger wants accuracy, a
robot wants speed, a battery device wants little energy), so the reward is a per-user weighted
sum, computed by the entry node when the answer leaves and again when feedback arrives::

    shares (a, l, e) = weights / (weights.accuracy + weights.latency + weights.energy)
    reward = a * accuracy_term - l * latency_term - e * energy_term - miss_penalty * [deadline missed]

* ``accuracy_term`` in [0, 1]: the exit's confidence (max softmax) when the answer leaves, or
  1/0 when a label says the answer was right/wrong, or a user's score in [0, 1].
* ``latency_term = clip(latency_ms / deadline_ms, 0, 1)``: the share of the budget used, so an
  answer that is both fast and accurate beats one that only barely makes it.
* ``energy_term = clip(energy / energy_reference, 0, 1)``: joules, or any proxy (device FLOPs,
  busy milliseconds) with a matching reference.
* the deadline penalty (default 1) is a hard step: a late answer is worse than any on-time one.

Weights are normalised into shares so that only their ratios matter (``(2, 1, 0.2)`` is the
same user as ``(1, 0.5, 0.1)``) and the reward stays on one scale for every user: it lies in
``[-(l + e) - miss_penalty, a]``, within [-2, 1], and with the default weights in
[-1.375, 0.625]. One scale matters because a policy shares its statistics across users.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace

from selector.errors import InvalidParameterError

DEFAULT_MISS_PENALTY = 1.0
_LARGEST = sys.float_info.max
DEFAULT_ENERGY_REFERENCE = 1.0


def _finite(value: float, what: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise InvalidParameterError(f"{what} must be finite, got {value!r}")
    return number


def _clip_unit(value: float) -> float:
    return 0.0 if value < 0.0 else 1.0 if value > 1.0 else value


@dataclass(frozen=True)
class QoEWeights:
    """How much one user cares about accuracy, latency and energy (non-negative, not all zero)."""

    accuracy: float = 1.0
    latency: float = 0.5
    energy: float = 0.1

    def __post_init__(self) -> None:
        accuracy, latency, energy = self.accuracy, self.latency, self.energy
        if (type(accuracy) is float and type(latency) is float and type(energy) is float  # noqa: E721 - exact
                and 0.0 <= accuracy <= _LARGEST and 0.0 <= latency <= _LARGEST and 0.0 <= energy <= _LARGEST
                and accuracy + latency + energy > 0.0):
            return  # the usual weights, valid as given (NaN fails every comparison: it takes the checks below)
        for name in ("accuracy", "latency", "energy"):
            value = _finite(getattr(self, name), f"QoE weight {name}")
            if value < 0.0:
                raise InvalidParameterError(f"QoE weight {name} must be >= 0, got {value}")
            object.__setattr__(self, name, value)
        if self.accuracy + self.latency + self.energy <= 0.0:
            raise InvalidParameterError("at least one QoE weight must be > 0")

    def shares(self) -> tuple[float, float, float]:
        """The weights divided by their sum: (accuracy, latency, energy), summing to 1."""
        total = self.accuracy + self.latency + self.energy
        return self.accuracy / total, self.latency / total, self.energy / total

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, float] | None) -> QoEWeights:
        """Weights from request parameters such as ``{"accuracy": 1, "latency": 2}``; missing keys
        take their defaults, unknown keys are refused (a typo must not silently change the reward)."""
        if not mapping:
            return cls()
        unknown = set(mapping) - {"accuracy", "latency", "energy"}
        if unknown:
            raise InvalidParameterError(f"unknown QoE weight(s) {sorted(unknown)}; use accuracy, latency, energy")
        return cls(**{name: float(value) for name, value in mapping.items()})


@dataclass(frozen=True)
class QoEOutcome:
    """What was measured for one answered request: enough to recompute its reward later."""

    accuracy: float
    latency_ms: float
    deadline_ms: float
    deadline_met: bool
    energy: float = 0.0


def qoe_reward(weights: QoEWeights, accuracy: float, latency_ms: float, deadline_ms: float,
               deadline_met: bool, energy: float = 0.0, *, energy_reference: float = DEFAULT_ENERGY_REFERENCE,
               miss_penalty: float = DEFAULT_MISS_PENALTY) -> float:
    """The QoE reward of one answer (see the module docstring for the formula and its range)."""
    deadline = _finite(deadline_ms, "deadline_ms")
    latency = _finite(latency_ms, "latency_ms")
    reference = _finite(energy_reference, "energy_reference")
    penalty = _finite(miss_penalty, "miss_penalty")
    if deadline <= 0.0:
        raise InvalidParameterError(f"deadline_ms must be > 0, got {deadline_ms}")
    if latency < 0.0:
        raise InvalidParameterError(f"latency_ms must be >= 0, got {latency_ms}")
    if reference <= 0.0 or penalty < 0.0:
        raise InvalidParameterError("energy_reference must be > 0 and miss_penalty >= 0")
    accuracy_share, latency_share, energy_share = weights.shares()
    accuracy_term = _clip_unit(_finite(accuracy, "accuracy"))
    latency_term = _clip_unit(latency / deadline)
    energy_term = _clip_unit(_finite(energy, "energy") / reference)
    reward = accuracy_share * accuracy_term - latency_share * latency_term - energy_share * energy_term
    if not deadline_met:
        reward -= penalty
    return reward


def outcome_reward(weights: QoEWeights, outcome: QoEOutcome, *, energy_reference: float = DEFAULT_ENERGY_REFERENCE,
                   miss_penalty: float = DEFAULT_MISS_PENALTY) -> float:
    """:func:`qoe_reward` of a recorded :class:`QoEOutcome`."""
    return qoe_reward(weights, outcome.accuracy, outcome.latency_ms, outcome.deadline_ms, outcome.deadline_met,
                      outcome.energy, energy_reference=energy_reference, miss_penalty=miss_penalty)


def feedback_reward(weights: QoEWeights, outcome: QoEOutcome, *, correct: bool | None = None,
                    user_score: float | None = None, energy_reference: float = DEFAULT_ENERGY_REFERENCE,
                    miss_penalty: float = DEFAULT_MISS_PENALTY) -> float:
    """The corrected reward once feedback arrives for an answered request.

    Exactly one of ``correct`` (a label said whether the answer was right) or ``user_score``
    (the user's own rating in [0, 1]) must be given. Either replaces the accuracy term, which was
    only the model's confidence when the answer left; latency, deadline and energy were measured
    and stay. Pass the result to ``Policy.feedback``, which replaces the provisional reward.
    """
    if (correct is None) == (user_score is None):
        raise InvalidParameterError("give exactly one of correct= or user_score=")
    if correct is not None:
        accuracy = 1.0 if correct else 0.0
    else:
        assert user_score is not None  # exactly one of the two was given
        accuracy = _finite(user_score, "user_score")
        if not 0.0 <= accuracy <= 1.0:
            raise InvalidParameterError(f"user_score must be in [0, 1], got {user_score}")
    return outcome_reward(weights, replace(outcome, accuracy=accuracy), energy_reference=energy_reference,
                          miss_penalty=miss_penalty)
