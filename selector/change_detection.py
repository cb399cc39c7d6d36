"""Two-sided CUSUM tests on standardised reward residuals, one per arm (stacked arrays).

Why CUSUM on residuals: a linear policy's residual ``r - theta_a . x`` has mean zero while the
arm's reward function is unchanged, *whatever the contexts are*; so a test on residuals fires on
a change of the reward function (the case forgetting-by-discount handles slowly) and not on a
change of the context distribution (which needs no reset). Residuals are standardised by the
predictive standard deviation ``noise * sqrt(1 + width^2)``, so a context far from the arm's data
(large width) needs a larger residual to count.

Page's CUSUM with reference ``k`` (half the smallest shift worth detecting, in standard
deviations) and threshold ``h``: ``g+ = max(0, g+ + z - k)``, ``g- = max(0, g- - z - k)``,
alarm when either exceeds ``h``. With ``k = 0.5`` and ``h = 10`` the mean run length between
false alarms on Gaussian residuals is above 10^4 observations per arm, and a shift of ``D`` noise
standard deviations is flagged after about ``(h + 1.2) / (D - k)`` observations of that arm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from selector.errors import InvalidParameterError

DEFAULT_REFERENCE = 0.5
DEFAULT_THRESHOLD = 10.0
DEFAULT_WARMUP = 20


@dataclass(frozen=True)
class CusumSettings:
    """``reference`` k and ``threshold`` h in noise standard deviations; ``warmup``: observations of
    an arm (since its last reset) before it is tested (an arm's first estimates are biased by the
    ridge prior, which would look like a change)."""

    reference: float = DEFAULT_REFERENCE
    threshold: float = DEFAULT_THRESHOLD
    warmup: int = DEFAULT_WARMUP

    def __post_init__(self) -> None:
        if not (math.isfinite(self.reference) and self.reference >= 0.0):
            raise InvalidParameterError(f"CUSUM reference must be finite and >= 0, got {self.reference}")
        if not (math.isfinite(self.threshold) and self.threshold > 0.0):
            raise InvalidParameterError(f"CUSUM threshold must be finite and > 0, got {self.threshold}")
        if int(self.warmup) < 0:
            raise InvalidParameterError(f"CUSUM warmup must be >= 0, got {self.warmup}")


def cusum_step(upper: float, lower: float, standardised: float, reference: float) -> tuple[float, float]:
    """One step of the two one-sided statistics."""
    return max(0.0, upper + standardised - reference), max(0.0, lower - standardised - reference)
