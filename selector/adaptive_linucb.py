"""Adaptive LinUCB: change detection with resets, plus a model shared across arms by arm features.

Registered as ``adaptive-linucb``. Why: discounting alone (``discounted-linucb``) forgets at one
fixed pace, too slowly after an abrupt change and needlessly in calm periods, and never revisits
an arm it stopped playing, so an arm that *became* best stays starved. This policy

* keeps a ridge model **shared by all arms**, ``s_a(x) = beta . kron([1, f_a], x) = (B^T f_a) . x``
  over the arm's features ``f_a`` (``selector.shared_ridge``), and per arm a ridge regression of
  the raw reward whose prior mean is the shared prediction: ``theta_a = A_a^-1 (b_a + lambda
  B^T f_a)`` (``lambda`` = ``regularization``, 4 pseudo-observations by default). The score is
  ``theta_a . x + alpha * sqrt(x^T A_a^-1 x)``: with little data an arm is its shared prediction,
  with much data its own estimate. (The shared model's own width is left out: small once any arm
  has data, it would cost an (arms, d k) x (d k, d k) product per decision.) An
  arm never played is therefore predicted from what arms with similar features earned: it is
  chosen once its predicted value is best, and skipped while it is predicted poor;
* runs a two-sided CUSUM test (``selector.change_detection``) on each arm's standardised
  residuals ``r - theta_a . x``. A change of the *context distribution* leaves residuals centred
  and triggers nothing. On an alarm:

  - the alarmed arm's **level is re-learned, its context slopes kept**: its observations since
    Page's change-point estimate (the last time the alarmed CUSUM side was 0; at most
    ``recent_window`` kept in a ring buffer) stay as they are; the older ones are moved by the
    level shift those recent observations show and keep only ``alarm_level_keep`` of their weight
    along the mean context (what they say about the level), all of what they say about how the
    context moves the reward. Why not a reset (the earlier behaviour): a reset arm fell back to
    the shared prediction, which its own old data dominate, and to widths so large that it was
    re-tried for tens of rounds; its new level is already in the observations that raised the
    alarm. A false alarm costs little: the level is re-learned from the next observations;
  - the ``contender_count`` arms with the best estimates in the alarm's context (the previous
    runners-up) forget their level the same way (``contender_level_keep``), so they are re-tried
    at once and a runner-up that became best (a swap) is found in a few plays. Arms far behind
    keep their confidence: forgetting every arm (``alarm_forgetting`` < 1, off by default)
    re-explored all 30 arms after each alarm, which cost more than it found in
    ``benchmarks/selector_change.py``;
  - with ``alarm_forgetting`` < 1, every other statistic (other arms', the shared model's) is
    also multiplied by it, at most once per ``forget_cooldown`` observations.

  Only an arm's own observations are re-levelled (merged ones are kept as they are: the sums
  of their contexts and rewards are not shared).

Runtime API (the arm features)::

    policy = make_policy("adaptive-linucb", DIMENSION)          # arm_feature_dimension=3
    policy.set_arm_features({arm: ArmTraits(cost, depth, accuracy).vector() for arm in arms})
    arm = select_feasible(policy, context, arms, ...)             # as with every policy

``set_arm_features`` takes ``{Arm or arm key: vector of arm_feature_dimension floats}`` and may
be called again whenever features change; an arm without features uses only the shared
context-only part (``f_a`` = 0) and, as in every linear policy, is tried once first.

Sharing (``export_delta`` / ``merge``): per-arm statistics are those of the raw reward, as in
every linear policy, so deltas go both ways between any linear policies. A merged arm's data is
added to its own statistics and folded into the shared model exactly (``kron(f f^T, G)``,
``kron(f, m)``) with the arm's current features: set the features before merging. Persistence
saves everything (both models, detectors, noise estimate).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from selector.arm import Arm
from selector.change_detection import (
    DEFAULT_REFERENCE,
    DEFAULT_THRESHOLD,
    DEFAULT_WARMUP,
    CusumSettings,
    cusum_step,
)
from selector.errors import InvalidParameterError, PersistenceError
from selector.linear_policy import LinearPolicy
from selector.policy import best_allowed, check_reward
from selector.ridge import InverseRidgeModels
from selector.shared_ridge import SharedRidge
from selector.statistics import SufficientStatistics

DEFAULT_ALPHA = 0.3  # 0.2 with regularization 8 recovered faster after a swap but locked onto a wrong arm in one seed
DEFAULT_ARM_FEATURE_DIMENSION = 3
DEFAULT_RESIDUAL_REGULARIZATION = 4.0  # pseudo-observations of the shared prior per arm
DEFAULT_SHARED_REGULARIZATION = 1.0
DEFAULT_ALARM_FORGETTING = 1.0  # 0.05 (forget every arm on an alarm) recovered slower: see the module docstring
DEFAULT_CONTENDER_COUNT = 5
DEFAULT_CONTENDER_LEVEL_KEEP = 0.05
DEFAULT_ALARM_LEVEL_KEEP = 0.05
DEFAULT_FORGET_COOLDOWN = 100
DEFAULT_INITIAL_NOISE = 0.1
DEFAULT_NOISE_FLOOR = 0.01
DEFAULT_RECENT_WINDOW = 64  # own observations kept per arm to re-learn its level from after an alarm
NOISE_RATE = 0.01  # EWMA weight of one squared standardised residual in the noise estimate
NOISE_CLIP = 16.0  # one residual counts at most this many times the current variance (outliers)


class AdaptiveRidgeModels(InverseRidgeModels):
    """Per-arm ridge statistics (Sherman-Morrison, as plain LinUCB: the cheapest decision) plus,
    per arm row, its features and its CUSUM state."""

    kind = "adaptive"
    arm_features: np.ndarray
    has_features: np.ndarray
    cusum_upper: np.ndarray
    cusum_lower: np.ndarray
    since_reset: np.ndarray
    alarms: np.ndarray
    upper_run: np.ndarray
    lower_run: np.ndarray
    recent_contexts: np.ndarray
    recent_rewards: np.ndarray
    recent_count: np.ndarray
    context_sum: np.ndarray
    reward_sum: np.ndarray
    weight: np.ndarray

    def __init__(self, dimension: int, regularization: float, refresh_interval: int, feature_dimension: int,
                 recent_window: int = DEFAULT_RECENT_WINDOW) -> None:
        self.feature_dimension = feature_dimension
        self.recent_window = recent_window
        super().__init__(dimension, regularization, refresh_interval)

    def _layout(self) -> dict[str, tuple[tuple[int, ...], type]]:
        layout = super()._layout()
        layout.update({
            "arm_features": ((self.feature_dimension + 1,), np.float64),  # [1, f_a]
            "has_features": ((), np.bool_),
            "cusum_upper": ((), np.float64),
            "cusum_lower": ((), np.float64),
            "since_reset": ((), np.int64),  # own observations since the arm's last reset
            "alarms": ((), np.int64),
            "upper_run": ((), np.int64),  # observations since cusum_upper was last 0 (Page's change point)
            "lower_run": ((), np.int64),
            "recent_contexts": ((self.recent_window, self.dimension), np.float64),  # ring buffer
            "recent_rewards": ((self.recent_window,), np.float64),
            "recent_count": ((), np.int64),  # observations pushed into the ring buffer so far
            "context_sum": ((self.dimension,), np.float64),  # sum of the arm's own contexts (same weights as gram)
            "reward_sum": ((), np.float64),  # ... of its own rewards
            "weight": ((), np.float64),  # ... and its own observations' total weight
        })
        return layout

    def _initial_row(self, name: str) -> np.ndarray | float:
        if name == "arm_features":
            row = np.zeros(self.feature_dimension + 1)
            row[0] = 1.0
            return row
        return super()._initial_row(name)

    def reset_row(self, row: int) -> None:
        """Forget the arm's data (its features stay: it is predicted by the shared model again)."""
        for name in ("gram", "moment", "coefficients", "cusum_upper", "cusum_lower", "since_reset",
                     "updates_since_refresh", "upper_run", "lower_run", "context_sum", "reward_sum", "weight"):
            self._arrays[name][row] = 0
        for name in ("inverse", "factor", "factor_fresh"):
            self._arrays[name][row] = self._initial_row(name)

    def remember(self, row: int, context: np.ndarray, reward: float) -> None:
        """Keep the observation in the arm's ring buffer of recent observations."""
        slot = int(self.recent_count[row]) % self.recent_window
        self.recent_contexts[row, slot] = context
        self.recent_rewards[row, slot] = reward
        self.recent_count[row] += 1
        self.context_sum[row] += context
        self.reward_sum[row] += reward
        self.weight[row] += 1.0

    def rebase_row(self, row: int, kept: int, shift: float, level_keep: float) -> int:
        """After a change of the arm's reward level by ``shift``: its observations before the change
        point (all but the last ``kept``) have their rewards moved by ``shift`` (``moment += shift *
        sum of their contexts``) and keep only ``level_keep`` of what they say about the level
        (:meth:`forget_level`), so what they taught about the context's effect stays while the
        level is learned again from the last ``kept``, which stay as observed. Returns how many
        were kept (at most the ring buffer's length)."""
        kept = min(kept, int(self.recent_count[row]), self.recent_window)
        slots = (int(self.recent_count[row]) - 1 - np.arange(kept)) % self.recent_window
        contexts = self.recent_contexts[row, slots]
        rewards = self.recent_rewards[row, slots]
        recent_gram, recent_moment = contexts.T @ contexts, contexts.T @ rewards
        recent_sum, recent_reward_sum = contexts.sum(axis=0), float(rewards.sum())
        older_weight = float(self.weight[row]) - kept
        self.gram[row] -= recent_gram
        self.context_sum[row] -= recent_sum
        self.moment[row] += shift * self.context_sum[row] - recent_moment
        self.reward_sum[row] += shift * older_weight - recent_reward_sum
        self.weight[row] = older_weight
        self._forget_level_of(row, level_keep)
        self.gram[row] += recent_gram
        self.moment[row] += recent_moment
        self.context_sum[row] += recent_sum
        self.reward_sum[row] += recent_reward_sum
        self.weight[row] += kept
        self._refresh(row)
        for name in ("cusum_upper", "cusum_lower", "upper_run", "lower_run"):
            self._arrays[name][row] = 0
        return kept

    def forget_level(self, rows: np.ndarray, factor: float) -> None:
        """Keep ``factor`` of what the arms' own observations say about their reward *level*
        (the mean context's direction) and all they say about how context moves it."""
        for row in rows:
            self._forget_level_of(int(row), factor)
            self._refresh(int(row))

    def _forget_level_of(self, row: int, factor: float) -> None:
        weight = float(self.weight[row])
        if weight <= 0.0:
            return
        mean_context = self.context_sum[row] / weight
        mean_reward = float(self.reward_sum[row]) / weight
        drop = (1.0 - factor) * weight
        self.gram[row] -= drop * np.outer(mean_context, mean_context)
        self.moment[row] -= drop * mean_reward * mean_context
        self.context_sum[row] -= drop * mean_context
        self.reward_sum[row] -= drop * mean_reward
        self.weight[row] -= drop

    def forget(self, factor: float | np.ndarray) -> None:
        """Multiply each arm's past statistics by ``factor`` (one for all, or one per row);
        inverses recomputed exactly (rare)."""
        size = self.size
        if size == 0:
            return
        factors = np.broadcast_to(np.asarray(factor, dtype=np.float64), (size,))
        self.gram[:size] *= factors[:, None, None]
        self.moment[:size] *= factors[:, None]
        self.context_sum[:size] *= factors[:, None]
        self.reward_sum[:size] *= factors
        self.weight[:size] *= factors
        inverse = np.linalg.inv(self._prior + self.gram[:size])
        self.inverse[:size] = 0.5 * (inverse + np.swapaxes(inverse, 1, 2))
        self.coefficients[:size] = np.einsum("aij,aj->ai", self.inverse[:size], self.moment[:size])
        self.factor_fresh[:size] = False
        self.updates_since_refresh[:size] = 0


class AdaptiveLinUCBPolicy(LinearPolicy):
    """LinUCB with a shared arm-feature model and CUSUM-triggered resets; see the module docstring."""

    name = "adaptive-linucb"
    has_discounted_variant = False  # it forgets by itself; "discounted-adaptive-linucb" would mislead

    def __init__(self, dimension: int, *, alpha: float = DEFAULT_ALPHA,
                 arm_feature_dimension: int = DEFAULT_ARM_FEATURE_DIMENSION,
                 regularization: float = DEFAULT_RESIDUAL_REGULARIZATION,
                 shared_regularization: float = DEFAULT_SHARED_REGULARIZATION,
                 alarm_forgetting: float = DEFAULT_ALARM_FORGETTING, forget_cooldown: int = DEFAULT_FORGET_COOLDOWN,
                 cusum_reference: float = DEFAULT_REFERENCE, cusum_threshold: float = DEFAULT_THRESHOLD,
                 cusum_warmup: int = DEFAULT_WARMUP, initial_noise: float = DEFAULT_INITIAL_NOISE,
                 noise_floor: float = DEFAULT_NOISE_FLOOR, contender_count: int = DEFAULT_CONTENDER_COUNT,
                 contender_level_keep: float = DEFAULT_CONTENDER_LEVEL_KEEP,
                 alarm_level_keep: float = DEFAULT_ALARM_LEVEL_KEEP, recent_window: int = DEFAULT_RECENT_WINDOW,
                 arm_features: Mapping[Arm | str, Sequence[float] | np.ndarray] | None = None,
                 **options: Any) -> None:
        super().__init__(dimension, regularization=regularization, **options)
        if not float(alpha) >= 0.0:
            raise InvalidParameterError(f"alpha must be >= 0, got {alpha}")
        if isinstance(arm_feature_dimension, bool) or int(arm_feature_dimension) < 0:
            raise InvalidParameterError(f"arm_feature_dimension must be an integer >= 0, got {arm_feature_dimension}")
        if not 0.0 < float(alarm_forgetting) <= 1.0:
            raise InvalidParameterError(f"alarm_forgetting must be in (0, 1], got {alarm_forgetting}")
        if int(forget_cooldown) < 0:
            raise InvalidParameterError(f"forget_cooldown must be >= 0, got {forget_cooldown}")
        if not (float(initial_noise) > 0.0 and float(noise_floor) > 0.0):
            raise InvalidParameterError(f"initial_noise and noise_floor must be > 0, got {initial_noise}, "
                                        f"{noise_floor}")
        self.alpha = float(alpha)
        self.arm_feature_dimension = int(arm_feature_dimension)
        self.shared_regularization = float(shared_regularization)
        self.alarm_forgetting = float(alarm_forgetting)
        if isinstance(contender_count, bool) or int(contender_count) < 0:
            raise InvalidParameterError(f"contender_count must be an integer >= 0, got {contender_count}")
        for name, value in (("contender_level_keep", contender_level_keep), ("alarm_level_keep", alarm_level_keep)):
            if not 0.0 <= float(value) <= 1.0:
                raise InvalidParameterError(f"{name} must be in [0, 1], got {value}")
        if isinstance(recent_window, bool) or int(recent_window) <= 0:
            raise InvalidParameterError(f"recent_window must be an integer > 0, got {recent_window}")
        self.contender_count = int(contender_count)
        self.contender_level_keep = float(contender_level_keep)
        self.alarm_level_keep = float(alarm_level_keep)
        self.recent_window = int(recent_window)
        self.forget_cooldown = int(forget_cooldown)
        self.cusum = CusumSettings(float(cusum_reference), float(cusum_threshold), int(cusum_warmup))
        self.initial_noise = float(initial_noise)
        self.noise_floor = float(noise_floor)
        if self.discount < 1.0 or self.arm_discount < 1.0:
            raise InvalidParameterError("adaptive-linucb forgets on detected changes; it takes no discount or "
                                        "arm_discount")
        self.models: AdaptiveRidgeModels = AdaptiveRidgeModels(
            dimension, self.regularization, self.refresh_interval, self.arm_feature_dimension, self.recent_window)
        self.shared = SharedRidge((self.arm_feature_dimension + 1) * self.dimension, self.shared_regularization)
        self.noise_variance = self.initial_noise ** 2
        self.alarms = 0  # CUSUM alarms so far (arm resets)
        self.forgettings = 0  # global forgetting steps so far
        self.last_forgetting = -(10 ** 9)  # observation count at the last global forgetting
        if arm_features is not None:
            self.set_arm_features(arm_features)

    # -- arm features ----------------------------------------------------------------------------
    def set_arm_features(self, features: Mapping[Arm | str, Sequence[float] | np.ndarray]) -> None:
        """Give (or change) arms' feature vectors, ``{Arm or key: arm_feature_dimension floats}``."""
        checked: list[tuple[int, np.ndarray]] = []
        for arm, values in features.items():
            key = arm.key if isinstance(arm, Arm) else str(arm)
            vector = np.asarray(values, dtype=np.float64).reshape(-1)
            if vector.shape != (self.arm_feature_dimension,) or not np.isfinite(vector).all():
                raise InvalidParameterError(f"features of arm {key!r} must be {self.arm_feature_dimension} finite "
                                            f"numbers, got {values!r}")
            checked.append((self.models.row(key), vector))
        coefficients = self.shared.beta.reshape(-1, self.dimension)
        models = self.models
        for row, vector in checked:
            change = vector - models.arm_features[row, 1:]
            if models.has_features[row] and change.any():
                # rebase the arm's data onto its new features: what the shared model attributes to the
                # feature change moves its prediction, and its own deviation is kept
                models.moment[row] += models.gram[row] @ (change @ coefficients[1:])
                models.coefficients[row] = models.inverse[row] @ models.moment[row]
            models.arm_features[row, 1:] = vector
            models.has_features[row] = True

    def arm_features(self, arm: Arm) -> np.ndarray | None:
        """The features last given for ``arm`` (None if none were)."""
        row = self.models.index.get(arm.key)
        if row is None or not self.models.has_features[row]:
            return None
        return np.array(self.models.arm_features[row, 1:])

    def _shared_inputs(self, context: np.ndarray, rows: list[int] | slice) -> np.ndarray:
        """``kron([1, f_a], x)`` per arm row."""
        features = self.models.arm_features[rows]
        return np.asarray((features[:, :, None] * context).reshape(len(features), -1))


    # -- deciding --------------------------------------------------------------------------------
    def select(self, context: np.ndarray, arms: Sequence[Arm], mask: np.ndarray | None = None) -> Arm:
        vector = self._check_context(context)
        allowed = self._check_arms_and_mask(arms, mask)
        rows = self.models.rows_for(arms)
        unseen = (self.models.count[rows] == 0) & ~self.models.has_features[rows]  # no data, no features
        if allowed is not None:
            unseen &= allowed
        if unseen.any():
            chosen = int(np.argmax(unseen))
        else:
            chosen = self._choose(vector, arms, rows, allowed)
        self.selections += 1
        return arms[chosen]

    def _means_and_widths(self, context: np.ndarray, rows: list[int] | slice) -> tuple[np.ndarray, np.ndarray]:
        """Ridge means with the shared prediction as prior mean, ``x^T A_a^-1 (b_a + lambda B^T f_a)``,
        and LinUCB widths ``sqrt(x^T A_a^-1 x)``."""
        models = self.models
        projected = models.inverse[rows] @ context  # A_a^-1 x
        prior = models.arm_features[rows] @ self.shared.beta.reshape(-1, self.dimension)  # B^T f_a per arm
        means = (projected * (models.moment[rows] + models.regularization * prior)).sum(axis=1)
        return means, np.sqrt(np.maximum(projected @ context, 0.0))

    def _choose(self, context: np.ndarray, arms: Sequence[Arm], rows: list[int] | slice,
                allowed: np.ndarray | None) -> int:
        means, widths = self._means_and_widths(context, rows)
        return best_allowed(means + self.alpha * widths, allowed)

    def estimates(self, context: np.ndarray, arms: Sequence[Arm]) -> np.ndarray:
        vector = self._check_context(context)
        return self._means_and_widths(vector, self.models.rows_for(arms))[0]

    # -- learning --------------------------------------------------------------------------------
    def update(self, context: np.ndarray, arm: Arm, reward: float) -> None:
        vector = self._check_context(context)
        value = check_reward(reward)
        models = self.models
        row = models.row(arm.key)
        z = self._shared_inputs(vector, [row])
        if models.since_reset[row] >= self.cusum.warmup:
            mean, width = (float(v[0]) for v in self._means_and_widths(vector, [row]))
            spread = 1.0 + width * width
            residual = value - mean
            standardised = residual / math.sqrt(self.noise_variance * spread)
            upper, lower = cusum_step(float(models.cusum_upper[row]), float(models.cusum_lower[row]), standardised,
                                      self.cusum.reference)
            models.cusum_upper[row], models.cusum_lower[row] = upper, lower
            models.upper_run[row] = models.upper_run[row] + 1 if upper > 0.0 else 0
            models.lower_run[row] = models.lower_run[row] + 1 if lower > 0.0 else 0
            squared = min(residual * residual / spread, NOISE_CLIP * self.noise_variance)
            self.noise_variance = max((1.0 - NOISE_RATE) * self.noise_variance + NOISE_RATE * squared,
                                      self.noise_floor ** 2)
            if max(upper, lower) > self.cusum.threshold:
                self._on_alarm(row, vector, int(models.upper_run[row] if upper > lower else models.lower_run[row]))
        self.shared.update(z[0], value)
        models.update(row, vector, value)
        models.since_reset[row] += 1
        models.remember(row, vector, value)

    def _on_alarm(self, row: int, context: np.ndarray, run: int) -> None:
        """A change on arm ``row`` (``run``: its observations since the estimated change point):
        re-learn its level and its contenders' levels; see the module docstring."""
        self.alarms += 1
        models = self.models
        models.alarms[row] += 1
        if self.contender_count > 0:
            means = self._means_and_widths(context, slice(0, models.size))[0]
            means[row] = -np.inf
            contenders = np.argsort(-means)[:min(self.contender_count, models.size - 1)]
            models.forget_level(contenders, self.contender_level_keep)
        if self.alarm_forgetting < 1.0 and self.observations - self.last_forgetting >= self.forget_cooldown:
            factors = np.full(models.size, self.alarm_forgetting)
            factors[row] = 1.0
            models.forget(factors)
            self.shared.forget(self.alarm_forgetting)
            self.forgettings += 1
            self.last_forgetting = self.observations
        kept = min(run, int(models.recent_count[row]), models.recent_window)
        if kept == 0:
            models.reset_row(row)
            return
        slots = (int(models.recent_count[row]) - 1 - np.arange(kept)) % models.recent_window
        means = self._means_at(models.recent_contexts[row, slots], row)
        shift = float(np.mean(models.recent_rewards[row, slots] - means))
        models.rebase_row(row, kept, shift, self.alarm_level_keep)
        models.since_reset[row] = max(int(models.since_reset[row]), self.cusum.warmup)

    def _means_at(self, contexts: np.ndarray, row: int) -> np.ndarray:
        """The arm's current mean estimates at several contexts (prior included)."""
        prior = self.models.arm_features[row] @ self.shared.beta.reshape(-1, self.dimension)
        return np.asarray(contexts @ (self.models.inverse[row] @ (self.models.moment[row]
                                                                  + self.models.regularization * prior)))

    def _correct(self, context: np.ndarray, arm: Arm, reward_change: float, observations_ago: int,
                 arm_observations_ago: int) -> None:
        row = self.models.row(arm.key)  # the shared model has no per-observation aging: exact too
        super()._correct(context, arm, reward_change, observations_ago, arm_observations_ago)
        self.models.reward_sum[row] += reward_change  # (the ring buffer keeps the reward first observed)
        self.shared.correct(self._shared_inputs(context, [row])[0], reward_change)

    # -- sharing ---------------------------------------------------------------------------------
    def _merge_statistics(self, arms: dict[str, SufficientStatistics]) -> None:
        for key, statistics in arms.items():
            row = self.models.row(key)
            features = self.models.arm_features[row]
            self.shared.add(np.kron(np.outer(features, features), statistics.gram),
                            np.kron(features, statistics.moment))
            self.models.add_statistics(row, statistics)

    def theta(self, arm: Arm) -> np.ndarray:
        """The arm's coefficients: its ridge estimate shrunk toward the shared model's prediction."""
        row = self.models.row(arm.key)
        prior = self.models.arm_features[row] @ self.shared.beta.reshape(-1, self.dimension)
        return np.asarray(self.models.inverse[row] @ (self.models.moment[row] + self.regularization * prior))

    # -- persistence -----------------------------------------------------------------------------
    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "alpha": self.alpha, "arm_feature_dimension": self.arm_feature_dimension,
                "shared_regularization": self.shared_regularization, "alarm_forgetting": self.alarm_forgetting,
                "forget_cooldown": self.forget_cooldown, "cusum_reference": self.cusum.reference,
                "cusum_threshold": self.cusum.threshold, "cusum_warmup": self.cusum.warmup,
                "initial_noise": self.initial_noise, "noise_floor": self.noise_floor,
                "contender_count": self.contender_count, "contender_level_keep": self.contender_level_keep,
                "alarm_level_keep": self.alarm_level_keep, "recent_window": self.recent_window}

    def state_values(self) -> dict[str, Any]:
        return {**super().state_values(), "noise_variance": self.noise_variance, "alarms": self.alarms,
                "forgettings": self.forgettings, "last_forgetting": self.last_forgetting}

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {**super().state_arrays(), **self.shared.state("shared")}

    def restore(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        super().restore(values, arrays)
        self.shared.restore(arrays, "shared")
        try:
            self.noise_variance = float(values["noise_variance"])
            self.alarms = int(values["alarms"])
            self.forgettings = int(values["forgettings"])
            self.last_forgetting = int(values["last_forgetting"])
        except (KeyError, TypeError, ValueError) as error:
            raise PersistenceError(f"saved adaptive-linucb state is incomplete: {error!r}") from error
