"""LinUCB with disjoint arms (Li, Chu, Langford, Schapire, WWW 2010).

Score of arm ``a`` in context ``x``: ``theta_a . x + alpha * sqrt(x^T A_a^-1 x)``, the optimistic
end of a confidence interval on the arm's reward; the arm with the highest score is chosen.
``A_a^-1`` is maintained by Sherman-Morrison rank-one updates (or exactly under discounting), so
a decision is two batched matmuls over the stacked arms and never inverts a matrix.

``alpha`` trades exploration for exploitation. Rewards from ``selector.qoe`` live on a scale of
about one with gaps of a few hundredths between good arms, and the node's contexts vary a lot from
request to request (which explores by itself), so the default (0.3) is far below the textbook
``1 + sqrt(ln(2 / delta) / 2)``: in ``benchmarks/selector_regret.py`` 0.3 had less regret than
0.5 and 1.0 on both arm tables tried. Arms never tried are tried first anyway (see
``LinearPolicy``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from selector.arm import Arm
from selector.errors import InvalidParameterError
from selector.linear_policy import LinearPolicy
from selector.policy import best_allowed

DEFAULT_ALPHA = 0.3


class LinUCBPolicy(LinearPolicy):
    """Disjoint LinUCB; ``discount < 1`` gives discounted LinUCB for non-stationary rewards."""

    name = "linucb"

    def __init__(self, dimension: int, *, alpha: float = DEFAULT_ALPHA, **options: Any) -> None:
        super().__init__(dimension, **options)
        if not float(alpha) >= 0.0:
            raise InvalidParameterError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)

    def _choose(self, context: np.ndarray, arms: Sequence[Arm], rows: list[int] | slice,
                allowed: np.ndarray | None) -> int:
        means, widths = self.models.means_and_widths(context, rows)
        return best_allowed(means + self.alpha * widths, allowed)

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "alpha": self.alpha}
