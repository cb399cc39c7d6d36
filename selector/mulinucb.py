"""muLinUCB: the bandit of ANS, "Autodidactic Neurosurgeon" (Zhang, Chen, Xu, The Web Conference 2021,
arXiv:2102.02638), adapted to this selector's arms.

ANS learns online where to partition a DNN between a mobile device and an edge server, frame by
frame, with LinUCB on features of each partition point, and adds two ideas that give muLinUCB its
name and keep it light enough to run per frame on the device:

1. **Differentiated exploration for key frames.** Frames are not equally important (in a video,
   key frames carry the new content), so each decision carries a weight: a key frame should be
   served with the best-known choice, and exploration is done on the cheap, non-key frames. Here
   ``select(..., key_frame=True)`` shrinks the exploration bonus to ``key_frame_weight * alpha``
   and never force-samples; ordinary requests use the full ``alpha``.
2. **Forced sampling.** Pure on-device processing tells nothing about the link or the edge (in
   ANS its context features are all zero), so plain LinUCB can get trapped on-device and never
   learn that offloading became good. muLinUCB forces a random partition now and then, with a
   frequency that starts high and decreases as more frames are processed. Here a non-key
   decision is forced with probability ``min(1, forced_sampling / sqrt(t))`` (``t`` = non-key
   decisions so far, so about ``2 * forced_sampling * sqrt(T)`` forced decisions in ``T``); the
   forced arm is drawn uniformly among the allowed arms that offload (``split`` is not None), or
   among all allowed arms when none does.

Differences from the paper, on purpose: arms are disjoint (variant, exit, split) triples with one
ridge regression each, not one shared parameter over hand-made partition features, because the
node's arms come from whatever variants peers host and have no common feature description; the
reward is the QoE of ``selector.qoe``, not only the end-to-end delay; and the forced-sampling
schedule above is our choice (the paper reduces the frequency over time; its exact schedule is
a tuning detail). Everything else (statistics, discounting, merging, persistence) is shared with
the other linear policies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from selector.arm import Arm
from selector.errors import InvalidParameterError
from selector.linear_policy import LinearPolicy
from selector.linucb import DEFAULT_ALPHA
from selector.policy import best_allowed, generator_state, random_allowed, restore_generator


class MuLinUCBPolicy(LinearPolicy):
    """LinUCB with key-frame-weighted exploration and decaying forced sampling of offloading arms."""

    name = "mulinucb"

    def __init__(self, dimension: int, *, alpha: float = DEFAULT_ALPHA, key_frame_weight: float = 0.1,
                 forced_sampling: float = 0.5, seed: int | None = None, **options: Any) -> None:
        super().__init__(dimension, **options)
        if not float(alpha) >= 0.0:
            raise InvalidParameterError(f"alpha must be >= 0, got {alpha}")
        if not 0.0 <= float(key_frame_weight) <= 1.0:
            raise InvalidParameterError(f"key_frame_weight must be in [0, 1], got {key_frame_weight}")
        if not float(forced_sampling) >= 0.0:
            raise InvalidParameterError(f"forced_sampling must be >= 0, got {forced_sampling}")
        self.alpha = float(alpha)
        self.key_frame_weight = float(key_frame_weight)
        self.forced_sampling = float(forced_sampling)
        self.seed = seed
        self.generator = np.random.default_rng(seed)
        self.ordinary_selections = 0  # non-key decisions: the clock of the forced-sampling schedule
        self.forced_selections = 0

    def forced_sampling_rate(self) -> float:
        """Probability that the next non-key decision is forced."""
        return min(1.0, self.forced_sampling / math.sqrt(self.ordinary_selections + 1))

    def select(self, context: np.ndarray, arms: Sequence[Arm], mask: np.ndarray | None = None, *,
               key_frame: bool = False) -> Arm:
        """As :meth:`Policy.select`; ``key_frame=True`` for a request that must not be explored on."""
        vector = self._check_context(context)
        allowed = self._check_arms_and_mask(arms, mask)
        rows = self.models.rows_for(arms)
        if key_frame:  # no forced sample, no first try of an unknown arm: serve the best known
            chosen = self._best(vector, rows, allowed, self.key_frame_weight * self.alpha)
        else:
            forced = self.generator.random() < self.forced_sampling_rate()
            self.ordinary_selections += 1
            untried = self._untried(rows, allowed)
            if untried is not None:
                chosen = untried
            elif forced:
                self.forced_selections += 1
                chosen = self._forced(arms, allowed)
            else:
                chosen = self._best(vector, rows, allowed, self.alpha)
        self.selections += 1
        return arms[chosen]

    def _best(self, context: np.ndarray, rows: list[int] | slice, allowed: np.ndarray | None, alpha: float) -> int:
        means, widths = self.models.means_and_widths(context, rows)
        return best_allowed(means + alpha * widths, allowed)

    def _forced(self, arms: Sequence[Arm], allowed: np.ndarray | None) -> int:
        offloading = np.fromiter((arm.split is not None for arm in arms), dtype=np.bool_, count=len(arms))
        candidates = offloading if allowed is None else offloading & allowed
        if not candidates.any():
            return random_allowed(self.generator, len(arms), allowed)
        return random_allowed(self.generator, len(arms), candidates)

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "alpha": self.alpha, "key_frame_weight": self.key_frame_weight,
                "forced_sampling": self.forced_sampling, "seed": self.seed}

    def state_values(self) -> dict[str, Any]:
        return {**super().state_values(), "generator": generator_state(self.generator),
                "ordinary_selections": self.ordinary_selections, "forced_selections": self.forced_selections}

    def restore(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        super().restore(values, arrays)
        restore_generator(self.generator, values.get("generator"))
        self.ordinary_selections = int(values.get("ordinary_selections", 0))
        self.forced_selections = int(values.get("forced_selections", 0))
