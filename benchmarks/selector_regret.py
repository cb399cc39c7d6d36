"""Regret of the selector's policies in an offline edge-inference environment.

    python -m benchmarks.selector_regret [--out DIR] [--seed N] [--rounds-scale F]

Writes ``DIR/selector_regret.json`` and ``DIR/selector_regret.png`` (default DIR:
``benchmarks/results``) and prints a table. Nothing is asserted: targets are reported as
pass/fail.

Environment (one request per round, the same sequence of requests for every policy):

* **Arms** come from ``zoo/manifest.json`` when it is readable: the family with the most
  (variant, exit) pairs, each pair run on the device alone, offloaded from the input (split 0),
  or split in the middle when the exit is deep enough. Relative compute comes from the blocks'
  FLOPs (or latency), relative activation sizes from their bytes; absolute scales are set by a
  reference scenario (the heaviest full-depth variant takes 150 ms on the device at rest, a
  Raspberry-Pi-class board; the input is a 32 KB frame; the edge peer is 8x faster). Without a
  manifest a built-in table of 3 variants x 4 exits is used, and the JSON says so.
* **Link**: real bandwidth traces (``time_s Mbit/s`` lines, any such files) replayed at
  0.5 s per request and scaled x10 (WiFi-class); the RTT grows when bandwidth drops. The node
  sees smoothed measurements, not the truth.
* **Device and peers**: load and thermal throttle evolve as bounded random processes.
* **Phases**: stationary; then an abrupt shift: the input distribution changes (say, night-time
  frames) and compressed variants lose accuracy in proportion to how much they were compressed
  (up to 40% of it for the smallest; compressed models are known to be more fragile under
  distribution shift), while the edge peer silently becomes 4x slower (not visible in gossip);
  then a drift: accuracies and the edge slowly recover while the device gets up to 2x slower
  than its load and heat say. Only the reward reveals the accuracy change; the planner's
  latency predictor learns the latency changes from measured latencies.
* **Users**: four users with different QoE weights and deadline ranges, in random order.
* **Feasibility**: every policy chooses through ``select_feasible`` with a planner-like latency
  predictor (the nominal model on the observed state, times a correction learned from measured
  latencies), as the node does.

Per policy: cumulative (pseudo-)regret against the per-round oracle (the arm with the best
expected reward given the true state), mean QoE, deadline miss rate, recovery after the shift,
log-log regret slope, and decision time per call (30 arms, 16-dim context, measured separately).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from benchmarks import selector_change
from selector import (
    DIMENSION,
    Arm,
    ContextInputs,
    Policy,
    QoEWeights,
    encode,
    make_policy,
    qoe_reward,
    select_feasible_with_details,
    takes_seed,
)
from selector.adaptive_linucb import AdaptiveLinUCBPolicy
from selector.arm_features import ArmTraits
from selector.mulinucb import MuLinUCBPolicy

REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPOSITORY / "benchmarks" / "results"
DEFAULT_MANIFEST = REPOSITORY / "zoo" / "manifest.json"
TRACE_CANDIDATES = (REPOSITORY / "benchmarks" / "traces" / "hsdpa-3g",
                    REPOSITORY.parent / "shared" / "traces" / "hsdpa-3g")

# Reference scenario (absolute scales; relative costs come from the zoo).
DEVICE_FULL_DEPTH_MS = 150.0  # a Raspberry-Pi-class device
EDGE_SPEEDUP = 8.0  # a Jetson-class peer
INPUT_BYTES = 32 * 1024  # one compressed camera frame
TRACE_SCALE = 10.0
SECONDS_PER_ROUND = 0.5
LATENCY_NOISE_SIGMA = 0.15
ACCURACY_NOISE = 0.03
DEVICE_WATTS, RADIO_WATTS, ENERGY_REFERENCE_J = 3.0, 1.5, 0.2
MARGIN = 0.9
KEY_FRAME_SHARE = 0.1

PHASES = (("stationary", 3000), ("abrupt shift", 2000), ("drift", 2000))
SHIFT_EDGE_SLOWDOWN = 4.0
SHIFT_ACCURACY_DROP = 0.4  # share of accuracy lost by the most compressed variant at the shift
DRIFT_DEVICE_SLOWDOWN = 2.0

USERS = (
    ("accuracy-first", QoEWeights(1.0, 0.2, 0.05), (150.0, 400.0)),
    ("interactive", QoEWeights(1.0, 1.0, 0.1), (60.0, 150.0)),
    ("battery-saver", QoEWeights(1.0, 0.3, 1.0), (100.0, 250.0)),
    ("real-time", QoEWeights(0.6, 1.5, 0.1), (30.0, 80.0)),
)

# label -> (make_policy name, options); every learning policy runs with its defaults
POLICIES: dict[str, tuple[str, dict[str, float]]] = {
    "linucb": ("linucb", {}),
    "thompson": ("thompson", {}),
    "mulinucb": ("mulinucb", {}),
    "epsilon-greedy": ("epsilon-greedy", {}),
    "discounted-linucb": ("discounted-linucb", {}),
    "discounted-thompson": ("discounted-thompson", {}),
    "adaptive-linucb": ("adaptive-linucb", {}),
    "linucb discount=0.999": ("linucb", {"discount": 0.999}),
    "fixed (best in hindsight)": ("fixed", {}),
    "random": ("random", {}),
}

# Targets (reported, not asserted).
STATIONARY_WINDOW = (2000, 3000)
TARGET_GAP_PERCENT = 5.0
TARGET_RECOVERY_ROUNDS = 300
TARGET_SLOPE = 0.8
TARGET_DECISION_P50_US = 100.0
NEAR_OPTIMAL_REGRET = 0.03
RECOVERY_WINDOW = 100
RECOVERED_NEAR_OPTIMAL_SHARE = 0.75
TIMING_REPEATS = 3


# ---------------------------------------------------------------------------------------------
# Model variants
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VariantProfile:
    """Relative costs of one variant: per-block compute, boundary bytes, exits."""

    name: str
    block_cost: tuple[float, ...]  # relative compute per block
    boundary_bytes: tuple[float, ...]  # boundary k = input of block k; [0] is the model input
    exits: tuple[tuple[int, float], ...]  # (block after which the exit sits, accuracy)


BUILT_IN_VARIANTS = (
    VariantProfile("built-in-w0.25", (0.25,) * 4, (1.0, 2.0, 1.0, 0.5),
                   ((0, 0.55), (1, 0.72), (2, 0.80), (3, 0.84))),
    VariantProfile("built-in-w0.5", (0.5,) * 4, (1.0, 2.0, 1.0, 0.5),
                   ((0, 0.60), (1, 0.78), (2, 0.87), (3, 0.90))),
    VariantProfile("built-in-w1.0", (1.0,) * 4, (1.0, 2.0, 1.0, 0.5),
                   ((0, 0.65), (1, 0.83), (2, 0.92), (3, 0.95))),
)


def variant_from_manifest(name: str, entry: dict) -> VariantProfile | None:
    """A profile from one manifest variant, or None if it lacks what the environment needs."""
    try:
        blocks = sorted(entry["blocks"], key=lambda block: int(block.get("index", 0)))
        costs = [float(block.get("latency_ms") or block["flops"]) for block in blocks]
        input_bytes = float(entry["input_bytes"])
        boundaries = [input_bytes] + [float(block["output_bytes"]) for block in blocks[:-1]]
        exits = [(int(exit_entry["block"]), float(exit_entry["accuracy"])) for exit_entry in entry["exits"]]
    except (KeyError, TypeError, ValueError):
        return None
    if not costs or min(costs) <= 0 or input_bytes <= 0 or len(exits) < 2:
        return None
    if any(not 0 <= block < len(costs) or not 0.0 <= accuracy <= 1.0 for block, accuracy in exits):
        return None
    return VariantProfile(name, tuple(costs), tuple(b / input_bytes for b in boundaries), tuple(sorted(exits)))


def load_variants(manifest_path: Path) -> tuple[list[VariantProfile], str]:
    """Variants of the zoo family with the most (variant, exit) pairs, or the built-in table."""
    if not manifest_path.is_file():
        return list(BUILT_IN_VARIANTS), f"built-in table: 3 variants x 4 exits ({manifest_path} absent)"
    try:
        manifest = json.loads(manifest_path.read_text())
        entries = manifest["variants"]
        items = entries.items() if isinstance(entries, dict) else ((e["name"], e) for e in entries)
        families: dict[str, list[VariantProfile]] = {}
        for name, entry in items:
            profile = variant_from_manifest(str(name), entry)
            if profile is not None:
                families.setdefault(str(entry.get("family", "default")), []).append(profile)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return list(BUILT_IN_VARIANTS), f"built-in table: 3 variants x 4 exits ({manifest_path} unreadable: {error})"
    if not families:
        return list(BUILT_IN_VARIANTS), f"built-in table: 3 variants x 4 exits (no usable variant in {manifest_path})"
    family, variants = max(families.items(), key=lambda item: (sum(len(v.exits) for v in item[1]), item[0]))
    variants = sorted(variants, key=lambda v: sum(v.block_cost))[:6]
    return variants, f"zoo manifest {manifest_path.name}: family {family!r}, variants {[v.name for v in variants]}"


@dataclass(frozen=True)
class ArmProfile:
    arm: Arm
    accuracy: float
    relative_size: float  # the variant's full-depth compute / the heaviest variant's
    device_ms: float  # device compute at rest (blocks before the split)
    edge_ms: float  # edge compute at rest (blocks from the split)
    transfer_bytes: float  # 0 when nothing is sent


def build_arms(variants: Sequence[VariantProfile]) -> list[ArmProfile]:
    """(variant, exit) x {on device, offload from the input, split in the middle}."""
    heaviest = max(sum(v.block_cost) for v in variants)
    milliseconds_per_cost = DEVICE_FULL_DEPTH_MS / heaviest
    arms: list[ArmProfile] = []
    for variant in variants:
        middle = max(1, math.ceil(len(variant.block_cost) / 2))
        for block, accuracy in variant.exits:  # arms name exits by their block, as the planner does
            costs = [c * milliseconds_per_cost for c in variant.block_cost[: block + 1]]
            size = sum(variant.block_cost) / heaviest
            arms.append(ArmProfile(Arm(variant.name, block), accuracy, size, sum(costs), 0.0, 0.0))
            splits = [0] + ([middle] if block >= middle else [])
            for split in splits:
                arms.append(ArmProfile(Arm(variant.name, block, split), accuracy, size, sum(costs[:split]),
                                       sum(costs[split:]) / EDGE_SPEEDUP,
                                       variant.boundary_bytes[split] * INPUT_BYTES))
    return arms


# ---------------------------------------------------------------------------------------------
# Link traces and the environment's state
# ---------------------------------------------------------------------------------------------
def load_traces(directory: Path | None) -> tuple[list[np.ndarray], str]:
    """Every ``time_s Mbit/s`` file of a directory (sorted), or a synthetic trace if none."""
    candidates = [directory] if directory is not None else list(TRACE_CANDIDATES)
    for candidate in candidates:
        if candidate is None or not candidate.is_dir():
            continue
        traces = []
        for path in sorted(p for p in candidate.iterdir() if p.is_file() and not p.name.startswith(".")):
            rows = []
            for line in path.read_text(errors="replace").splitlines():
                parts = line.split()
                if len(parts) >= 2 and not line.lstrip().startswith("#"):
                    try:
                        rows.append((float(parts[0]), float(parts[1])))
                    except ValueError:
                        rows = []
                        break
            if len(rows) >= 2:
                traces.append(np.array(rows))
        if traces:
            return traces, f"{len(traces)} traces from {candidate}"
    generator = np.random.default_rng(0)
    times = np.arange(0, 600, 1.0)
    synthetic = np.exp(np.cumsum(generator.normal(0, 0.1, times.size))).clip(0.05, 20) * 2.0
    return [np.column_stack([times, synthetic])], "synthetic random-walk trace (no trace directory found)"


def replay(traces: Sequence[np.ndarray], seconds: np.ndarray) -> np.ndarray:
    """Bandwidth at each time: traces concatenated, each sample held until the next, looped."""
    pieces, offset = [], 0.0
    for trace in traces:
        times = trace[:, 0] - trace[0, 0]
        pieces.append(np.column_stack([times + offset, trace[:, 1]]))
        step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
        offset += float(times[-1]) + step
    joined = np.concatenate(pieces)
    index = np.searchsorted(joined[:, 0], np.mod(seconds, offset), side="right") - 1
    return np.maximum(joined[np.clip(index, 0, len(joined) - 1), 1], 0.0)


def bounded_process(generator: np.random.Generator, rounds: int, low: float, high: float, inertia: float,
                    noise: float, segment: int) -> np.ndarray:
    """A mean-reverting random process whose target jumps every ``segment`` rounds."""
    values = np.empty(rounds)
    value = target = generator.uniform(low, high)
    for t in range(rounds):
        if t % segment == 0:
            target = generator.uniform(low, high)
        value = inertia * value + (1 - inertia) * target + noise * generator.standard_normal()
        value = min(max(value, 0.0), 1.0)
        values[t] = value
    return values


def smoothed(values: np.ndarray, weight: float) -> np.ndarray:
    """What a node measures: an exponentially weighted average of past true values (it lags)."""
    result = np.empty_like(values)
    estimate = values[0]
    for t, value in enumerate(values):
        result[t] = estimate  # measured before this request's transfer
        estimate = (1 - weight) * estimate + weight * value
    return result


@dataclass
class Environment:
    arms: list[ArmProfile]
    users: np.ndarray
    budgets: np.ndarray
    contexts: np.ndarray
    key_frames: np.ndarray
    accuracy: np.ndarray  # true accuracy, (rounds, arms)
    nominal_ms: np.ndarray  # predicted median latency from observed state, (rounds, arms)
    true_ms: np.ndarray  # true median latency
    energy_j: np.ndarray
    latency_noise: np.ndarray  # multiplicative, (rounds, arms)
    accuracy_noise: np.ndarray
    expected: np.ndarray  # expected reward, (rounds, arms)
    expected_without_shift: np.ndarray  # same rounds with the stationary hidden factors
    phase_bounds: list[tuple[str, int, int]]
    offloading: np.ndarray  # bool per arm

    @property
    def rounds(self) -> int:
        return len(self.users)


def latency_matrix(arms: Sequence[ArmProfile], device_factor: np.ndarray, edge_factor: np.ndarray,
                   bandwidth: np.ndarray, rtt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    device = np.array([a.device_ms for a in arms])
    edge = np.array([a.edge_ms for a in arms])
    sent = np.array([a.transfer_bytes for a in arms])
    offload = np.array([a.arm.split is not None for a in arms])
    transfer = sent[None, :] * 8.0 / (np.maximum(bandwidth, 0.05)[:, None] * 1e3)
    latency = (device[None, :] * device_factor[:, None] + edge[None, :] * edge_factor[:, None]
               + offload[None, :] * (transfer + rtt[:, None]))
    energy = (device[None, :] * device_factor[:, None] * DEVICE_WATTS + offload[None, :] * transfer * RADIO_WATTS) / 1e3
    return latency, energy


def expected_rewards(accuracy: np.ndarray, users: np.ndarray, budgets: np.ndarray, median_ms: np.ndarray,
                     energy_j: np.ndarray) -> np.ndarray:
    """E[qoe_reward] per (round, arm) over the latency noise (64 quantiles of the lognormal)."""
    normal = statistics.NormalDist()
    multipliers = np.exp(LATENCY_NOISE_SIGMA * np.array([normal.inv_cdf((k + 0.5) / 64) for k in range(64)]))
    shares = np.array([weights.shares() for _, weights, _ in USERS])[users]  # (rounds, 3)
    energy_term = np.minimum(energy_j / ENERGY_REFERENCE_J, 1.0)
    total = np.zeros_like(median_ms)
    for multiplier in multipliers:
        latency = median_ms * multiplier
        ratio = np.minimum(latency / budgets[:, None], 1.0)
        missed = latency > budgets[:, None]
        total += (shares[:, :1] * accuracy - shares[:, 1:2] * ratio - shares[:, 2:3] * energy_term
                  - 1.0 * missed)
    return total / len(multipliers)


def build_environment(arms: list[ArmProfile], traces: Sequence[np.ndarray], seed: int, scale: float) -> Environment:
    generator = np.random.default_rng(seed)
    lengths = [max(50, int(length * scale)) for _, length in PHASES]
    rounds = sum(lengths)
    bounds, start = [], 0
    for (name, _), length in zip(PHASES, lengths, strict=True):
        bounds.append((name, start, start + length))
        start += length
    shift_start, drift_start = bounds[1][1], bounds[2][1]

    # hidden factors (not visible in the context)
    edge_hidden = np.ones(rounds)
    device_hidden = np.ones(rounds)
    edge_hidden[shift_start:drift_start] = SHIFT_EDGE_SLOWDOWN
    progress = np.linspace(0.0, 1.0, rounds - drift_start)
    edge_hidden[drift_start:] = SHIFT_EDGE_SLOWDOWN + (1.0 - SHIFT_EDGE_SLOWDOWN) * progress
    device_hidden[drift_start:] = 1.0 + (DRIFT_DEVICE_SLOWDOWN - 1.0) * progress
    base_accuracy = np.array([a.accuracy for a in arms])
    fragility = SHIFT_ACCURACY_DROP * (1.0 - np.array([a.relative_size for a in arms]))
    accuracy_loss = np.zeros(rounds)
    accuracy_loss[shift_start:drift_start] = 1.0
    accuracy_loss[drift_start:] = 1.0 - progress
    accuracy = base_accuracy[None, :] * (1.0 - accuracy_loss[:, None] * fragility[None, :])

    # visible state
    bandwidth = replay(traces, np.arange(rounds) * SECONDS_PER_ROUND + generator.uniform(0, 60)) * TRACE_SCALE
    rtt = (3.0 + 30.0 / (1.0 + bandwidth)) * np.exp(0.2 * generator.standard_normal(rounds))
    own_load = bounded_process(generator, rounds, 0.0, 0.8, 0.9, 0.03, 300)
    own_throttle = bounded_process(generator, rounds, 0.0, 0.5, 0.98, 0.01, 600)
    peers_load = bounded_process(generator, rounds, 0.0, 0.8, 0.9, 0.03, 400)
    peers_throttle = bounded_process(generator, rounds, 0.0, 0.3, 0.98, 0.01, 800)
    pressure = np.clip(peers_load ** 2, 0.0, 1.0)
    observed_bandwidth, observed_rtt = smoothed(bandwidth, 0.3), smoothed(rtt, 0.3)

    device_state = (1.0 + 1.5 * own_load) / (1.0 - 0.5 * own_throttle)
    edge_state = (1.0 + 2.0 * peers_load) / (1.0 - 0.5 * peers_throttle)
    true_ms, energy = latency_matrix(arms, device_state * device_hidden, edge_state * edge_hidden, bandwidth, rtt)
    stationary_ms, stationary_energy = latency_matrix(arms, device_state, edge_state, bandwidth, rtt)
    nominal_ms, _ = latency_matrix(arms, device_state, edge_state, observed_bandwidth, observed_rtt)

    users = generator.integers(len(USERS), size=rounds)
    low = np.array([USERS[u][2][0] for u in users])
    high = np.array([USERS[u][2][1] for u in users])
    budgets = generator.uniform(low, high)
    contexts = np.array([
        encode(ContextInputs(
            budget_ms=budgets[t], input_bytes=INPUT_BYTES, own_load=own_load[t], own_throttle=own_throttle[t],
            best_link_bandwidth_mbps=observed_bandwidth[t], best_link_rtt_ms=observed_rtt[t],
            peers_mean_load=peers_load[t], peers_mean_throttle=peers_throttle[t], weights=USERS[users[t]][1],
            pressure_level=pressure[t]))
        for t in range(rounds)])
    latency_noise = np.exp(LATENCY_NOISE_SIGMA * generator.standard_normal(true_ms.shape))
    accuracy_noise = ACCURACY_NOISE * generator.standard_normal(true_ms.shape)
    return Environment(
        arms=arms, users=users, budgets=budgets, contexts=contexts,
        key_frames=generator.random(rounds) < KEY_FRAME_SHARE,
        accuracy=accuracy, nominal_ms=nominal_ms, true_ms=true_ms, energy_j=energy,
        latency_noise=latency_noise, accuracy_noise=accuracy_noise,
        expected=expected_rewards(accuracy, users, budgets, true_ms, energy),
        expected_without_shift=expected_rewards(np.broadcast_to(base_accuracy, accuracy.shape), users, budgets,
                                                stationary_ms, stationary_energy),
        phase_bounds=bounds, offloading=np.array([a.arm.split is not None for a in arms]))


def check_reward_formula(environment: Environment) -> None:
    """The vectorised expectation must use exactly the library's reward (checked on samples)."""
    generator = np.random.default_rng(1)
    for _ in range(50):
        t, a = int(generator.integers(environment.rounds)), int(generator.integers(len(environment.arms)))
        latency = float(environment.true_ms[t, a])
        budget = float(environment.budgets[t])
        weights = USERS[environment.users[t]][1]
        library = qoe_reward(weights, float(environment.accuracy[t, a]), latency, budget, latency <= budget,
                             float(environment.energy_j[t, a]), energy_reference=ENERGY_REFERENCE_J)
        shares = weights.shares()
        mine = (shares[0] * environment.accuracy[t, a] - shares[1] * min(latency / budget, 1.0)
                - shares[2] * min(environment.energy_j[t, a] / ENERGY_REFERENCE_J, 1.0) - (latency > budget))
        if abs(library - mine) > 1e-12:
            raise AssertionError(f"benchmark reward formula diverged from selector.qoe: {library} vs {mine}")


# ---------------------------------------------------------------------------------------------
# Running policies
# ---------------------------------------------------------------------------------------------
def make_benchmark_policy(label: str, environment: Environment, seed: int) -> Policy:
    name, options = POLICIES[label]
    if name == "fixed":  # the single arm with the best mean expected reward over the stationary phase
        stationary_end = environment.phase_bounds[0][2]
        best = int(np.argmax(environment.expected[:stationary_end].mean(axis=0)))
        return make_policy("fixed", DIMENSION, arm=environment.arms[best].arm)
    policy = make_policy(name, DIMENSION, **options, **({"seed": seed} if takes_seed(name) else {}))
    if isinstance(policy, AdaptiveLinUCBPolicy):  # what the runtime passes: cost, exit depth, accuracy prior
        policy.set_arm_features(arm_traits(environment.arms))
    return policy


def _predicted_ms(predicted: np.ndarray, index_of: Mapping[Arm, int], arm: Arm) -> float:
    return predicted[index_of[arm]]


def arm_traits(profiles: Sequence[ArmProfile]) -> dict[Arm | str, np.ndarray]:  # set_arm_features' keys
    """Standard arm features from what the runtime knows before playing: nominal compute at rest,
    the exit's depth, the manifest accuracy."""
    cost = np.array([p.device_ms + p.edge_ms for p in profiles])
    deepest = max(p.arm.exit for p in profiles) or 1
    return {p.arm: ArmTraits(c / cost.max(), p.arm.exit / deepest, p.accuracy).vector()
            for p, c in zip(profiles, cost, strict=True)}


def run_policy(policy: Policy, environment: Environment) -> dict[str, np.ndarray]:
    """One pass over the environment's requests, choosing through the feasibility mask as the node does."""
    arms = [profile.arm for profile in environment.arms]
    index_of = {arm: i for i, arm in enumerate(arms)}
    correction = {False: 1.0, True: 1.0}  # the planner's learned ratio measured / nominal, per kind of arm
    rounds = environment.rounds
    chosen = np.empty(rounds, dtype=np.int64)
    rewards = np.empty(rounds)
    missed = np.empty(rounds, dtype=bool)
    degraded = np.zeros(rounds, dtype=bool)
    select_options: dict[str, Any] = {}
    for t in range(rounds):
        context = environment.contexts[t]
        budget = float(environment.budgets[t])
        nominal = environment.nominal_ms[t]
        predicted = nominal * np.where(environment.offloading, correction[True], correction[False])
        if isinstance(policy, MuLinUCBPolicy):
            select_options = {"key_frame": bool(environment.key_frames[t])}
        predict = functools.partial(_predicted_ms, predicted, index_of)
        selection = select_feasible_with_details(policy, context, arms, predict, budget, MARGIN, **select_options)
        a = index_of[selection.arm]
        latency = float(environment.true_ms[t, a] * environment.latency_noise[t, a])
        met = latency <= budget
        observed_accuracy = min(max(float(environment.accuracy[t, a] + environment.accuracy_noise[t, a]), 0.0), 1.0)
        reward = qoe_reward(USERS[environment.users[t]][1], observed_accuracy, latency, budget, met,
                            float(environment.energy_j[t, a]), energy_reference=ENERGY_REFERENCE_J)
        policy.update(context, selection.arm, reward)
        kind = bool(environment.offloading[a])
        correction[kind] = 0.9 * correction[kind] + 0.1 * latency / float(nominal[a])
        chosen[t], rewards[t], missed[t], degraded[t] = a, reward, not met, selection.degraded
    return {"chosen": chosen, "rewards": rewards, "missed": missed, "degraded": degraded}


def recovery_rounds(regret: np.ndarray, shift_start: int, shift_end: int) -> int | None:
    """Rounds after the shift until the policy is back on near-best arms.

    A round is near-optimal when its regret is at most NEAR_OPTIMAL_REGRET (the per-round best
    arm, or one within that much of it: with four users and changing links there is no single
    best arm). Recovered: at least RECOVERED_NEAR_OPTIMAL_SHARE of the rounds of a window of
    RECOVERY_WINDOW rounds starting there are near-optimal. None if not within the shift phase."""
    near = regret <= NEAR_OPTIMAL_REGRET
    for offset in range(0, shift_end - shift_start - RECOVERY_WINDOW + 1, 10):
        if near[shift_start + offset: shift_start + offset + RECOVERY_WINDOW].mean() >= RECOVERED_NEAR_OPTIMAL_SHARE:
            return offset
    return None


def regret_slope(cumulative: np.ndarray, start: int, end: int) -> float | None:
    """Slope of log(cumulative regret) against log(round) over [start, end)."""
    rounds = np.arange(start, end)
    values = cumulative[start:end]
    keep = values > 0
    if keep.sum() < 10:
        return None
    return float(np.polyfit(np.log(rounds[keep] + 1), np.log(values[keep]), 1)[0])


def summarise(run: dict[str, np.ndarray], environment: Environment) -> dict:
    """Metrics of one run in one environment (private arrays start with an underscore)."""
    expected = environment.expected
    best = expected.max(axis=1)
    obtained = expected[np.arange(environment.rounds), run["chosen"]]
    regret = best - obtained
    cumulative = np.cumsum(regret)
    phases = {}
    for phase, start, end in environment.phase_bounds:
        phases[phase] = {
            "mean_qoe": float(run["rewards"][start:end].mean()),
            "mean_expected_reward": float(obtained[start:end].mean()),
            "oracle_mean_expected_reward": float(best[start:end].mean()),
            "deadline_miss_rate": float(run["missed"][start:end].mean()),
            "regret": float(regret[start:end].sum()),
            "near_optimal_rate": float((regret[start:end] <= NEAR_OPTIMAL_REGRET).mean()),
        }
    stationary_end = environment.phase_bounds[0][2]
    window_end = min(STATIONARY_WINDOW[1], stationary_end)
    window_start = min(STATIONARY_WINDOW[0], window_end - 50)
    oracle_window = float(best[window_start:window_end].mean())
    gap = 100.0 * (oracle_window - float(obtained[window_start:window_end].mean())) / abs(oracle_window)
    _, shift_start, shift_end = environment.phase_bounds[1]
    before = float(regret[max(0, shift_start - 500):shift_start].mean())
    after = float(regret[shift_start:shift_start + TARGET_RECOVERY_ROUNDS].mean())
    return {
        "cumulative_regret": float(cumulative[-1]),
        "mean_qoe": float(run["rewards"].mean()),
        "mean_expected_reward": float(obtained.mean()),
        "deadline_miss_rate": float(run["missed"].mean()),
        "degraded_rate": float(run["degraded"].mean()),
        "stationary_gap_percent": gap,
        "recovery_rounds_after_shift": recovery_rounds(regret, shift_start, shift_end),
        "regret_per_round_before_shift": before,
        "regret_per_round_first_300_after_shift": after,
        "regret_log_log_slope": regret_slope(cumulative, 100, stationary_end),
        "phases": phases,
        "_cumulative": cumulative,
        "_regret": regret,
    }


def aggregate(runs: list[dict]) -> dict:
    """Mean over seeds of every number (recovery: the worst seed, None if any never recovered)."""
    def mean(values: list) -> float | None:
        present = [v for v in values if v is not None]
        return float(np.mean(present)) if len(present) == len(values) else None

    result: dict = {}
    for key, value in runs[0].items():
        if key.startswith("_"):
            continue
        if key == "phases":
            result[key] = {phase: {metric: mean([run[key][phase][metric] for run in runs]) for metric in metrics}
                           for phase, metrics in value.items()}
        elif key == "recovery_rounds_after_shift":
            values = [run[key] for run in runs]
            result[key] = None if any(v is None for v in values) else max(values)
        else:
            result[key] = mean([run[key] for run in runs])
    result["per_seed"] = {key: [run[key] for run in runs] for key in
                          ("cumulative_regret", "mean_qoe", "deadline_miss_rate", "stationary_gap_percent",
                           "recovery_rounds_after_shift", "regret_log_log_slope")}
    result["_cumulative"] = np.mean([run["_cumulative"] for run in runs], axis=0)
    result["_regret"] = np.mean([run["_regret"] for run in runs], axis=0)
    return result


# ---------------------------------------------------------------------------------------------
# Decision time
# ---------------------------------------------------------------------------------------------
def decision_times(label: str, seed: int, calls: int) -> dict[str, float]:
    """select() and update() time per call: 30 arms, 16-dim context, trained, 90%-feasible masks."""
    name, options = POLICIES[label]
    return decision_times_for(name, options, seed, calls)


def decision_times_for(name: str, options: dict[str, float], seed: int, calls: int) -> dict[str, float]:
    generator = np.random.default_rng(seed)
    arms = [Arm(f"variant-{i // 10}", i % 10, None if i % 3 else 1) for i in range(30)]
    if name == "fixed":
        policy = make_policy("fixed", 16, arm=arms[3])
    else:
        policy = make_policy(name, 16, **options, **({"seed": seed} if takes_seed(name) else {}))
    if isinstance(policy, AdaptiveLinUCBPolicy) and policy.arm_feature_dimension == 3:
        policy.set_arm_features({arm: generator.random(3) for arm in arms})
    contexts = generator.random((2000 + calls, 16))
    for t in range(2000):
        policy.update(contexts[t], arms[t % 30], float(generator.normal()))
    masks = generator.random((calls, 30)) < 0.9
    masks[:, 0] = True
    clock = time.perf_counter_ns
    repeats = []
    for _ in range(TIMING_REPEATS):  # the machine is shared: the median repeat resists another job's burst
        select_ns, update_ns = np.empty(calls), np.empty(calls)
        for t in range(calls):
            context = contexts[2000 + t]
            started = clock()
            arm = policy.select(context, arms, masks[t])
            select_ns[t] = clock() - started
            started = clock()
            policy.update(context, arm, 0.5)
            update_ns[t] = clock() - started
        repeats.append((np.percentile(select_ns, 50), np.percentile(select_ns, 99), np.percentile(update_ns, 50)))
    select_p50, select_p99, update_p50 = np.median(np.array(repeats), axis=0) / 1e3
    return {"select_p50_us": float(select_p50), "select_p99_us": float(select_p99), "update_p50_us": float(update_p50)}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def verdict(value: float | None, target: float) -> str:
    return "pass" if value is not None and value <= target else "fail"


def plot(path: Path, summaries: dict[str, dict], environment: Environment, oracle_mean: float, seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(13, 9))
    names = list(summaries)
    colours = {name: plt.cm.tab10(i % 10) for i, name in enumerate(names)}
    for name in names:
        axes[0, 0].plot(summaries[name]["_cumulative"], label=name, color=colours[name])
        rolling = np.convolve(summaries[name]["_regret"], np.ones(100) / 100, mode="valid")
        axes[0, 1].plot(np.arange(len(rolling)) + 100, np.maximum(rolling, 1e-4), color=colours[name], linewidth=1)
    for axis in axes[0]:
        for _, start, _ in environment.phase_bounds[1:]:
            axis.axvline(start, color="grey", linestyle="--", linewidth=0.8)
        axis.set_xlabel("round (one request)")
    axes[0, 0].set_ylabel(f"cumulative regret vs per-round oracle (mean of {seeds} seeds)")
    axes[0, 0].set_title("Cumulative regret (dashed: abrupt shift, start of drift)")
    axes[0, 0].legend(fontsize=8)
    axes[0, 1].set_ylabel("regret per round (rolling mean of 100)")
    axes[0, 1].set_title("Regret per round: learning, shift, drift")
    axes[0, 1].set_yscale("log")

    positions = np.arange(len(names))
    axes[1, 0].bar(positions - 0.2, [summaries[n]["mean_qoe"] for n in names], 0.4, label="mean QoE")
    axes[1, 0].bar(positions + 0.2, [summaries[n]["deadline_miss_rate"] for n in names], 0.4,
                   label="deadline miss rate")
    axes[1, 0].axhline(oracle_mean, color="black", linestyle=":", label="oracle mean expected QoE")
    axes[1, 0].set_xticks(positions, names, rotation=30, ha="right", fontsize=8)
    axes[1, 0].legend(fontsize=8)
    axes[1, 0].set_title("QoE and deadline misses (all phases)")

    axes[1, 1].bar(positions - 0.2, [summaries[n]["decision_time"]["select_p50_us"] for n in names], 0.4,
                   label="select p50")
    axes[1, 1].bar(positions + 0.2, [summaries[n]["decision_time"]["select_p99_us"] for n in names], 0.4,
                   label="select p99")
    axes[1, 1].axhline(TARGET_DECISION_P50_US, color="red", linestyle="--", label="p50 target")
    axes[1, 1].set_xticks(positions, names, rotation=30, ha="right", fontsize=8)
    axes[1, 1].set_ylabel("microseconds per call (30 arms, 16-dim, masked)")
    axes[1, 1].legend(fontsize=8)
    axes[1, 1].set_title("Decision time")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the JSON and PNG")
    parser.add_argument("--seed", type=int, default=2024, help="first seed (environment and policies)")
    parser.add_argument("--seeds", type=int, default=3, help="environments to average over")
    parser.add_argument("--rounds-scale", type=float, default=1.0,
                        help="multiply every phase's length (e.g. 0.05 for a smoke run)")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--traces", type=Path, default=None, help="directory of time_s Mbit/s trace files")
    parser.add_argument("--timing-calls", type=int, default=3000)
    parser.add_argument("--policies", nargs="*", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument("--change-policies", nargs="*", default=list(selector_change.CHANGE_POLICIES),
                        choices=list(selector_change.CHANGE_POLICIES),
                        help="policies for the change environments (none: skip them)")
    arguments = parser.parse_args(argv)

    started = time.perf_counter()
    process = psutil.Process()
    cpu_before = process.cpu_times()
    psutil.cpu_percent(interval=None)  # starts the host-wide measurement
    variants, zoo_source = load_variants(arguments.manifest)
    arms = build_arms(variants)
    traces, trace_source = load_traces(arguments.traces)
    seeds = [arguments.seed + index for index in range(max(1, arguments.seeds))]
    environments = [build_environment(arms, traces, seed, arguments.rounds_scale) for seed in seeds]
    for environment in environments:
        check_reward_formula(environment)

    summaries = {}
    for label in arguments.policies:
        runs = [summarise(run_policy(make_benchmark_policy(label, environment, seed), environment), environment)
                for seed, environment in zip(seeds, environments, strict=True)]
        summaries[label] = aggregate(runs)
        summaries[label]["decision_time"] = decision_times(label, arguments.seed, arguments.timing_calls)

    environment = environments[0]
    _, shift_start, shift_end = environment.phase_bounds[1]
    changed = float(np.mean([
        (e.expected_without_shift.argmax(axis=1) != e.expected.argmax(axis=1))[shift_start:shift_end].mean()
        for e in environments]))
    oracle_mean = float(np.mean([e.expected.max(axis=1).mean() for e in environments]))
    report: dict[str, Any] = {
        "benchmark": "selector_regret",
        "machine": {"python": platform.python_version(), "numpy": np.__version__, "processor": platform.machine()},
        "seconds": None,
        "seeds": seeds,
        "environment": {
            "zoo_source": zoo_source,
            "trace_source": trace_source,
            "trace_scale": TRACE_SCALE,
            "seconds_per_round": SECONDS_PER_ROUND,
            "arms": [profile.arm.key for profile in arms],
            "arm_count": len(arms),
            "context_dimension": DIMENSION,
            "phases": [{"name": n, "start": s, "end": e} for n, s, e in environment.phase_bounds],
            "shift": f"compressed variants lose up to {SHIFT_ACCURACY_DROP:.0%} of their accuracy (in proportion "
                     f"to their compression) and the edge peer becomes {SHIFT_EDGE_SLOWDOWN}x slower; drift: both "
                     f"recover linearly while the device gets up to {DRIFT_DEVICE_SLOWDOWN}x slower (all hidden "
                     "from the context)",
            "oracle_best_arm_changed_by_shift": changed,
            "users": [{"name": n, "weights": [w.accuracy, w.latency, w.energy], "budget_ms": list(b)}
                      for n, w, b in USERS],
            "reference_scenario": {"device_full_depth_ms": DEVICE_FULL_DEPTH_MS, "edge_speedup": EDGE_SPEEDUP,
                                   "input_bytes": INPUT_BYTES, "latency_noise_sigma": LATENCY_NOISE_SIGMA,
                                   "feasibility_margin": MARGIN, "key_frame_share": KEY_FRAME_SHARE},
            "oracle_mean_expected_reward": oracle_mean,
        },
        "definitions": {
            "regret": "per round: best expected reward (true state) minus the chosen arm's expected reward",
            "stationary_gap_percent": f"100 x (oracle - policy) / |oracle|, mean expected reward over rounds "
                                      f"{list(STATIONARY_WINDOW)} (after 2000 stationary rounds)",
            "recovery_rounds_after_shift": f"rounds after the shift until, over the next {RECOVERY_WINDOW} "
                                           f"rounds, at least {RECOVERED_NEAR_OPTIMAL_SHARE:.0%} of the choices "
                                           f"have regret <= {NEAR_OPTIMAL_REGRET} (near-best arm); the worst seed; "
                                           "null: some seed never recovered within the shift phase",
            "regret_log_log_slope": "slope of log cumulative regret vs log round over the stationary phase "
                                    "(from round 100)",
            "decision_time": f"policy.select with a mask, 30 arms, 16-dim context, after 2000 updates, each call "
                             f"followed by an update; percentiles over the calls of a repeat, median of "
                             f"{TIMING_REPEATS} repeats",
            "aggregation": "numbers are means over the seeds; per_seed lists each seed's value",
        },
        "targets": {"stationary_gap_percent": TARGET_GAP_PERCENT, "recovery_rounds": TARGET_RECOVERY_ROUNDS,
                    "regret_log_log_slope": TARGET_SLOPE, "decision_p50_us": TARGET_DECISION_P50_US},
        "policies": {},
        "curves": {"every": 25},
    }
    for label, summary in summaries.items():
        name, options = POLICIES[label]
        report["curves"][label] = [round(float(v), 4) for v in summary["_cumulative"][::25]]
        public = {"name": name, "options": options, **{k: v for k, v in summary.items() if not k.startswith("_")}}
        public["targets"] = {
            "stationary_within_5_percent": verdict(summary["stationary_gap_percent"], TARGET_GAP_PERCENT),
            "recovery_within_300_rounds": verdict(summary["recovery_rounds_after_shift"], TARGET_RECOVERY_ROUNDS),
            "regret_slope_below_0.8": verdict(summary["regret_log_log_slope"], TARGET_SLOPE),
            "decision_p50_within_100_us": verdict(summary["decision_time"]["select_p50_us"], TARGET_DECISION_P50_US),
        }
        report["policies"][label] = public

    change_seeds = seeds
    change_results = selector_change.run_all(change_seeds, arguments.change_policies) \
        if arguments.change_policies else {}
    change_timings = {label: decision_times_for(*selector_change.CHANGE_POLICIES[label][:2], arguments.seed,
                                                 arguments.timing_calls)
                      for label in arguments.change_policies}
    report["change_environments"] = {
        "description": (selector_change.__doc__ or "").split("\n\n", 2)[2].strip(),
        "seeds": change_seeds, "change_round": selector_change.CHANGE_ROUND,
        "rounds": selector_change.CHANGE_ROUND + selector_change.AFTER_CHANGE,
        "optimal_tolerance": selector_change.OPTIMAL_TOLERANCE,
        "target_optimal_first_300": selector_change.TARGET_EARLY_SHARE,
        "definitions": {
            "optimal_before": f"share of optimal picks in the {selector_change.BEFORE_WINDOW} rounds before the change",
            "optimal_first_300": "share of optimal picks in [change, change + 300)",
            "optimal_300_1000": "share of optimal picks in [change + 300, change + 1000)",
            "false_alarms": "CUSUM alarms before the change (context-shift: all alarms); null for policies "
                            "without a detector",
            "aggregation": "median, min and max over the seeds, and per_seed",
        },
        "results": change_results,
        "decision_time": change_timings,
    }
    cpu_after = process.cpu_times()
    report["host_cpu"] = {
        "cores": psutil.cpu_count(), "system_percent_during_run": psutil.cpu_percent(interval=None),
        "process_cpu_seconds": round(cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system, 1),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }

    arguments.out.mkdir(parents=True, exist_ok=True)
    png_path = arguments.out / "selector_regret.png"
    plot(png_path, summaries, environment, oracle_mean, len(seeds))
    report["seconds"] = round(time.perf_counter() - started, 1)
    json_path = arguments.out / "selector_regret.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    if change_results:
        selector_change.print_change_table(change_results, change_timings)
    host = report["host_cpu"]
    print(f"host CPU during the run: {host['system_percent_during_run']:.0f}% of {host['cores']} cores "
          f"(this process {host['process_cpu_seconds']} CPU s; other jobs share the machine)")
    print(f"wrote {json_path} and {png_path} in {report['seconds']} s")
    return report


def print_table(report: dict) -> None:
    environment = report["environment"]
    print(f"selector regret: {environment['arm_count']} arms, {environment['zoo_source']}; "
          f"{environment['trace_source']}; seeds {report['seeds']}")
    print(f"oracle mean expected reward {environment['oracle_mean_expected_reward']:.3f}; "
          f"the shift changes the oracle's arm for {100 * environment['oracle_best_arm_changed_by_shift']:.0f}% "
          "of requests")
    header = (f"{'policy':<26}{'regret':>8}{'QoE':>7}{'miss%':>7}{'gap%':>7}{'recov':>7}{'slope':>7}"
              f"{'p50us':>7}{'p99us':>7}  gap/recovery/slope/p50")
    print(header)
    print("-" * len(header))
    for label, summary in report["policies"].items():
        timing = summary["decision_time"]
        recovery = summary["recovery_rounds_after_shift"]
        slope = summary["regret_log_log_slope"]
        print(f"{label:<26}{summary['cumulative_regret']:>8.1f}{summary['mean_qoe']:>7.3f}"
              f"{100 * summary['deadline_miss_rate']:>7.1f}{summary['stationary_gap_percent']:>7.1f}"
              f"{'never' if recovery is None else recovery:>7}{'-' if slope is None else f'{slope:.2f}':>7}"
              f"{timing['select_p50_us']:>7.1f}{timing['select_p99_us']:>7.1f}  "
              f"{'/'.join(summary['targets'].values())}")


if __name__ == "__main__":
    main()
