"""Context encoding: what the entry node knows when it chooses, as a fixed-length vector.

The policies are linear in the context, so every feature is scaled to about [0, 1] (clipped) and
quantities that span decades (budget, bandwidth, RTT, input size) are log-scaled: a 1 ms and a
2 ms budget differ as much for the choice as 100 ms and 200 ms. A few *ratio* features relate two
raw quantities the way latency does (the share of the budget that one round trip or sending the
raw input would use); a linear model cannot form such ratios itself, and they say directly
whether offloading can fit.

=====  =======================  ==============================================================
index  name                     encoding
=====  =======================  ==============================================================
0      bias                     1 (lets each arm learn a context-free baseline reward)
1      budget_log               log10(budget_ms) / 4: 1 ms -> 0, 10 s -> 1
2      budget_tightness         10 ms / budget_ms: 1 for 10 ms or less, 0.01 for 1 s
3      own_load                 utilisation of this device, 0..1
4      own_throttle             share of compute speed lost to thermal throttling, 0..1
5      bandwidth_log            (log10(Mbit/s) + 1) / 5: 0.1 Mbit/s -> 0, 10 Gbit/s -> 1
6      input_transfer_share     time to send the raw input on the best link / budget
7      rtt_log                  (log10(rtt_ms) + 1) / 4: 0.1 ms -> 0, 1 s -> 1
8      rtt_share                rtt_ms / budget_ms
9      peers_mean_load          mean utilisation of alive peers, 0..1
10     peers_mean_throttle      mean throttle of alive peers, 0..1
11     input_bytes_log          (log10(bytes) - 2) / 6: 100 B -> 0, 100 MB -> 1
12     accuracy_share           the user's QoE weights as shares summing to 1
13     latency_share
14     energy_share
15     pressure_level           the coordinator's cluster pressure, 0 (calm) .. 1 (overloaded)
=====  =======================  ==============================================================

Every feature is clipped to [0, 1]. With no usable link give bandwidth 0 and an infinite RTT
(the defaults): offloading features then read "impossible" (transfer share 1, RTT features 1).
A budget already spent (<= 0) reads as the tightest possible budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from selector.errors import ContextError
from selector.qoe import QoEWeights

FEATURE_NAMES: tuple[str, ...] = (
    "bias", "budget_log", "budget_tightness", "own_load", "own_throttle", "bandwidth_log",
    "input_transfer_share", "rtt_log", "rtt_share", "peers_mean_load", "peers_mean_throttle",
    "input_bytes_log", "accuracy_share", "latency_share", "energy_share", "pressure_level",
)
DIMENSION = len(FEATURE_NAMES)

TIGHT_BUDGET_MS = 10.0  # budgets at or below this read as fully tight
_SMALLEST_MS = 1e-3


@dataclass(frozen=True)
class ContextInputs:
    """The raw inputs of one decision, in the units the node measures them in."""

    budget_ms: float
    input_bytes: float
    own_load: float = 0.0
    own_throttle: float = 0.0
    best_link_bandwidth_mbps: float = 0.0
    best_link_rtt_ms: float = math.inf
    peers_mean_load: float = 0.0
    peers_mean_throttle: float = 0.0
    weights: QoEWeights = field(default_factory=QoEWeights)
    pressure_level: float = 0.0


def _clip_unit(value: float) -> float:
    return 0.0 if value < 0.0 else 1.0 if value > 1.0 else value


def _number(inputs: ContextInputs, name: str, allow_infinite: bool = False) -> float:
    value = float(getattr(inputs, name))
    if math.isnan(value) or (math.isinf(value) and not allow_infinite):
        raise ContextError(f"{name} must be a finite number, got {value!r}")
    if value < 0.0 and name != "budget_ms":
        raise ContextError(f"{name} must be >= 0, got {value!r}")
    return value


def encode(inputs: ContextInputs) -> np.ndarray:
    """The context vector of ``inputs``: ``DIMENSION`` float64 features in [0, 1] (see the table)."""
    budget = max(_number(inputs, "budget_ms"), _SMALLEST_MS)
    bandwidth = _number(inputs, "best_link_bandwidth_mbps", allow_infinite=True)
    rtt = _number(inputs, "best_link_rtt_ms", allow_infinite=True)
    input_bytes = _number(inputs, "input_bytes")
    transfer_ms = math.inf if bandwidth <= 0.0 else input_bytes * 8.0 / (bandwidth * 1e6) * 1e3
    accuracy_share, latency_share, energy_share = inputs.weights.shares()
    features = (
        1.0,
        _clip_unit(math.log10(budget) / 4.0),
        _clip_unit(TIGHT_BUDGET_MS / budget),
        _clip_unit(_number(inputs, "own_load")),
        _clip_unit(_number(inputs, "own_throttle")),
        _clip_unit((math.log10(max(bandwidth, 1e-6)) + 1.0) / 5.0) if math.isfinite(bandwidth) else 1.0,
        _clip_unit(transfer_ms / budget) if math.isfinite(transfer_ms) else 1.0,
        _clip_unit((math.log10(max(rtt, 1e-6)) + 1.0) / 4.0) if math.isfinite(rtt) else 1.0,
        _clip_unit(rtt / budget) if math.isfinite(rtt) else 1.0,
        _clip_unit(_number(inputs, "peers_mean_load")),
        _clip_unit(_number(inputs, "peers_mean_throttle")),
        _clip_unit((math.log10(max(input_bytes, 1.0)) - 2.0) / 6.0),
        accuracy_share,
        latency_share,
        energy_share,
        _clip_unit(_number(inputs, "pressure_level")),
    )
    return np.array(features, dtype=np.float64)
