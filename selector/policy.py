"""The policy interface every selector implements, and the machinery all policies share.

The entry node talks to any policy through five calls:

``select(context, arms, mask=None) -> Arm``
    pick one of ``arms`` for a request in ``context`` (a vector from ``selector.context``),
    never one whose ``mask`` entry is False (``selector.feasibility`` builds the mask).
``update(context, arm, reward)``
    learn from a reward that is known now.
``remember(request_id, context, arm, provisional_reward=None)`` / ``feedback(request_id, reward)``
    delayed rewards: the decision is kept (bounded, see ``selector.pending``) until its reward
    arrives; with a provisional reward the policy learns at once and a later feedback *replaces*
    that reward rather than counting the request twice.
``export_delta()`` / ``merge(delta)``
    share learning between nodes through additive sufficient statistics
    (``selector.statistics``).

Policies learn about arms lazily: an arm seen for the first time (a peer joined with a new
variant) starts from the prior, with no registration step. A policy is not thread-safe; the
node calls it from its event loop.
"""

from __future__ import annotations

import math
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from selector.arm import Arm
from selector.errors import (
    ContextError,
    InvalidParameterError,
    MaskError,
    NoArmsError,
    NoFeasibleArmError,
    PersistenceError,
    StatisticsError,
)
from selector.pending import DEFAULT_MAX_PENDING, DEFAULT_PENDING_TTL_S, PendingDecision, PendingDecisions
from selector.qoe import QoEOutcome
from selector.statistics import StatisticsDelta, SufficientStatistics

__all__ = ["MAX_MERGED_ORIGINS", "Arm", "Policy", "best_allowed", "check_reward", "generator_state", "random_allowed",
           "restore_generator"]

MAX_MERGED_ORIGINS = 1024  # origins whose last merged sequence is remembered (oldest forgotten first)


class Policy(ABC):
    """A contextual bandit over :class:`Arm` objects; see the module docstring for the contract."""

    name: ClassVar[str] = ""

    def __init__(self, dimension: int, *, origin: str | None = None, max_pending: int = DEFAULT_MAX_PENDING,
                 pending_ttl_s: float = DEFAULT_PENDING_TTL_S, clock: Callable[[], float] | None = None) -> None:
        if isinstance(dimension, bool) or int(dimension) <= 0:
            raise InvalidParameterError(f"dimension must be a positive integer, got {dimension!r}")
        self.dimension = int(dimension)
        # ``origin`` names this policy's stream of deltas; it must differ between any two policies
        # that ever exchange statistics (a random id unless the caller gives one, saved with the state).
        self.origin = uuid.uuid4().hex if origin is None else str(origin)
        self.sequence = 0  # deltas exported so far
        self.merged_sequences: dict[str, int] = {}
        self.selections = 0
        self.clock = time.monotonic if clock is None else clock  # injectable so tests never sleep
        self.pending = PendingDecisions(max_pending, pending_ttl_s, self.clock)

    # -- deciding and learning -------------------------------------------------------------------
    @abstractmethod
    def select(self, context: np.ndarray, arms: Sequence[Arm], mask: np.ndarray | None = None) -> Arm:
        """Choose one of ``arms`` for ``context``; arms whose ``mask`` entry is False are never chosen."""

    @abstractmethod
    def update(self, context: np.ndarray, arm: Arm, reward: float) -> None:
        """Learn that ``arm`` earned ``reward`` in ``context``."""

    def _correct(self, context: np.ndarray, arm: Arm, reward_change: float, observations_ago: int,
                 arm_observations_ago: int) -> None:
        """Change the reward of an observation learned ``observations_ago`` observations ago (and
        ``arm_observations_ago`` observations of the same arm ago). Policies that learn nothing
        ignore it."""
        return None

    @property
    def observations(self) -> int:
        """Observations learned through ``update`` (and first feedbacks) so far."""
        return 0

    def arm_observations(self, arm: Arm) -> int:
        """Observations of ``arm`` learned through ``update`` so far (merged data excluded)."""
        return 0

    def remember(self, request_id: str, context: np.ndarray, arm: Arm, *, provisional_reward: float | None = None,
                 outcome: QoEOutcome | None = None) -> None:
        """Keep a decision until ``feedback(request_id, reward)`` brings its reward.

        With ``provisional_reward`` the policy learns it now and a later feedback replaces it (the
        node's usual flow: QoE from the exit confidence when the answer leaves, corrected by a
        label later). ``outcome`` is stored for the caller (see :meth:`pending_decision`). The
        store is bounded (``max_pending`` entries, ``pending_ttl_s`` seconds); feedback for a
        decision that was dropped is refused by :meth:`feedback`.
        """
        if not isinstance(request_id, str) or not request_id:
            raise InvalidParameterError(f"request_id must be a non-empty string, got {request_id!r}")
        vector = self._check_context(context).copy()
        if provisional_reward is not None:
            self.update(vector, arm, provisional_reward)
        self.pending.put(request_id, PendingDecision(
            context=vector, arm=arm, created_s=self.clock(), observation_step=self.observations,
            arm_observation_step=self.arm_observations(arm),
            provisional_reward=None if provisional_reward is None else float(provisional_reward),
            outcome=outcome))

    def feedback(self, request_id: str, reward: float) -> bool:
        """Apply the reward of a remembered decision; False if the id is unknown, expired or done."""
        reward = check_reward(reward)
        decision = self.pending.take(request_id) if isinstance(request_id, str) else None
        if decision is None:
            return False
        if decision.provisional_reward is None:
            self.update(decision.context, decision.arm, reward)
        else:
            self._correct(decision.context, decision.arm, reward - decision.provisional_reward,
                          self.observations - decision.observation_step,
                          self.arm_observations(decision.arm) - decision.arm_observation_step)
        return True

    def pending_decision(self, request_id: str) -> PendingDecision | None:
        """The remembered decision (context, arm, provisional reward, outcome) or None."""
        return self.pending.get(request_id)

    # -- sharing ---------------------------------------------------------------------------------
    def export_delta(self) -> StatisticsDelta:
        """What this policy learned from its own observations since the previous export.

        Merged statistics from other nodes are not re-exported, so deltas never loop."""
        self.sequence += 1
        return StatisticsDelta(self.origin, self.sequence, self.dimension, self._take_delta())

    def merge(self, delta: StatisticsDelta) -> bool:
        """Add another policy's delta; False (and no change) for our own or an already merged one.

        Deltas of one origin must be merged in sequence order: one whose sequence is not above the
        last merged from that origin is taken for a duplicate (gossip may deliver twice).
        """
        if delta.dimension != self.dimension:
            raise StatisticsError(f"cannot merge a delta of dimension {delta.dimension} "
                                  f"into a policy of dimension {self.dimension}")
        if delta.origin == self.origin or delta.sequence <= self.merged_sequences.get(delta.origin, 0):
            return False
        self._merge_statistics(dict(delta.arms))
        self.merged_sequences.pop(delta.origin, None)
        self.merged_sequences[delta.origin] = int(delta.sequence)
        while len(self.merged_sequences) > MAX_MERGED_ORIGINS:
            del self.merged_sequences[next(iter(self.merged_sequences))]
        return True

    def _take_delta(self) -> dict[str, SufficientStatistics]:
        return {}

    def _merge_statistics(self, arms: dict[str, SufficientStatistics]) -> None:
        """Policies that learn nothing ignore merged statistics."""
        return None

    def statistics(self, arm: Arm) -> SufficientStatistics:
        """Everything learned about ``arm`` (zeros for a policy that does not learn or an unseen arm)."""
        return SufficientStatistics.zeros(self.dimension)

    # -- persistence (used by selector.persistence) ------------------------------------------------
    def parameters(self) -> dict[str, Any]:
        """JSON-able constructor arguments that rebuild an equivalent fresh policy."""
        return {"dimension": self.dimension, "origin": self.origin, "max_pending": self.pending.max_size,
                "pending_ttl_s": self.pending.ttl_s}

    def state_values(self) -> dict[str, Any]:
        """JSON-able learned scalars (counters, random generator state)."""
        return {"sequence": self.sequence, "merged_sequences": dict(self.merged_sequences),
                "selections": self.selections}

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Learned arrays."""
        return {}

    def restore(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Load what :meth:`state_values` and :meth:`state_arrays` produced into a fresh policy."""
        try:
            self.sequence = int(values["sequence"])
            self.merged_sequences = {str(k): int(v) for k, v in values["merged_sequences"].items()}
            self.selections = int(values["selections"])
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise PersistenceError(f"saved policy state is incomplete: {error!r}") from error

    # -- validation shared by all policies -------------------------------------------------------
    def _check_context(self, context: np.ndarray) -> np.ndarray:
        vector = np.asarray(context, dtype=np.float64)
        if vector.shape != (self.dimension,):
            raise ContextError(f"context must have shape ({self.dimension},), got {vector.shape}")
        if not np.isfinite(vector).all():
            raise ContextError("context contains NaN or infinite values")
        return vector

    @staticmethod
    def _check_arms_and_mask(arms: Sequence[Arm], mask: np.ndarray | None) -> np.ndarray | None:
        """The boolean mask as an array (None when every arm is allowed)."""
        if len(arms) == 0:
            raise NoArmsError("select() needs at least one arm")
        if mask is None:
            return None
        allowed = np.asarray(mask)
        if allowed.dtype != np.bool_:
            raise MaskError(f"mask must be a boolean array, got dtype {allowed.dtype}")
        if allowed.shape != (len(arms),):
            raise MaskError(f"mask has shape {allowed.shape} for {len(arms)} arms")
        if not allowed.any():
            raise NoFeasibleArmError(f"all {len(arms)} arms are masked; use select_feasible() to degrade")
        return allowed


def best_allowed(scores: np.ndarray, allowed: np.ndarray | None) -> int:
    """Index of the highest score among allowed arms (the first one on ties)."""
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    return int(np.argmax(scores))


def random_allowed(generator: np.random.Generator, count: int, allowed: np.ndarray | None) -> int:
    """A uniformly random allowed index."""
    if allowed is None:
        return int(generator.integers(count))
    candidates = np.flatnonzero(allowed)
    return int(candidates[generator.integers(len(candidates))])


def check_reward(reward: float) -> float:
    """The reward as a float; a NaN or infinite reward would poison the statistics for good."""
    value = float(reward)
    if not math.isfinite(value):
        raise InvalidParameterError(f"reward must be finite, got {reward!r}")
    return value


def generator_state(generator: np.random.Generator) -> dict[str, Any]:
    """The generator's exact state, JSON-able (integers of any size survive JSON)."""
    return dict(generator.bit_generator.state)


def restore_generator(generator: np.random.Generator, state: object) -> None:
    if not isinstance(state, dict):
        raise PersistenceError(f"saved random generator state is missing or invalid: {state!r}")
    try:
        generator.bit_generator.state = state
    except (TypeError, ValueError, KeyError) as error:
        raise PersistenceError(f"saved random generator state is invalid: {error}") from error
