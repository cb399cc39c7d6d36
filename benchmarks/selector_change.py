"""Recovery from abrupt change: synthetic bandit environments with known change points.

Part of ``benchmarks.selector_regret`` (which runs it and writes its results under
``"change_environments"``); runnable alone for quick tuning::

    python -m benchmarks.selector_change [--seeds 3] [--policies NAME ...]

Every environment has 30 arms, the selector's 16-dim context (bias + 15 features in [0, 1]) and
3 arm features per arm in [0, 1] (relative cost, exit depth, accuracy prior). The expected reward
is ``[1, f_a] M x + d_a . x``: a part explained by the arm's features (``M`` shared by all arms,
what the runtime's features are for) plus an arm's own deviation ``d_a``; observed rewards add
Gaussian noise (sd 0.1, about what QoE rewards show). Change at round ``CHANGE_ROUND``:

``swap``            the best arm's reward function is swapped with the 3rd best's (hidden).
``starvation``      a poor, rarely played arm (rank >= 15) becomes best by 0.1 because its cost
                    fell (a peer got faster), and the runtime reports the lower cost in its
                    features.
``starvation-hidden`` the same change, but the features are not updated (nothing tells). Not a
                    target: meeting it means re-trying each of the 15+ poor arms about once
                    per 120 rounds forever (RESULTS.md says why); it shows what features buy.
``drift``           over 600 rounds the best arm loses 0.25 and the 4th best gains 0.1 (hidden);
                    the change point is where the best arm first changes.
``context-shift``   only the context distribution moves (every feature's mean); rewards as they
                    were: any alarm is a false alarm.

A pick is *optimal* when its expected reward is within ``OPTIMAL_TOLERANCE`` of the round's best.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from selector import Arm, Policy, make_policy, takes_seed

ARM_COUNT = 30
DIMENSION = 16
FEATURES = 3
NOISE = 0.1
CHANGE_ROUND = 1500
AFTER_CHANGE = 1000
DRIFT_ROUNDS = 600
OPTIMAL_TOLERANCE = 0.01
BEST_MARGIN = 0.06  # the best arm's lead over the next, on average over contexts
EARLY_WINDOW = 300  # [change, change + 300): the target window
LATE_WINDOW = (300, 1000)
BEFORE_WINDOW = 500
TARGET_EARLY_SHARE = 0.8
KINDS = ("swap", "starvation", "starvation-hidden", "drift", "context-shift")

# label -> (make_policy name, options, gets arm features)
CHANGE_POLICIES: dict[str, tuple[str, dict[str, float], bool]] = {
    "linucb": ("linucb", {}, False),
    "discounted-linucb": ("discounted-linucb", {}, False),
    "discounted-thompson": ("discounted-thompson", {}, False),
    "adaptive-linucb": ("adaptive-linucb", {}, True),
    "adaptive-linucb (no arm features)": ("adaptive-linucb", {"arm_feature_dimension": 0}, False),
}


@dataclass
class ChangeEnvironment:
    kind: str
    arms: list[Arm]
    contexts: np.ndarray  # (rounds, d)
    coefficients: np.ndarray  # (rounds_segments...) per round index via segment: (2, arms, d) before/after
    features: np.ndarray  # (2, arms, FEATURES): what the runtime reports before/after the change
    feature_change_round: int | None
    expected: np.ndarray  # (rounds, arms)
    change_round: int
    noise: np.ndarray = field(repr=False)

    @property
    def rounds(self) -> int:
        return len(self.contexts)


def context_sampler(generator: np.random.Generator, means: np.ndarray, rounds: int) -> np.ndarray:
    raw = means + 0.15 * generator.standard_normal((rounds, DIMENSION - 1))
    return np.column_stack([np.ones(rounds), np.clip(raw, 0.0, 1.0)])


def build_change_environment(kind: str, seed: int) -> ChangeEnvironment:
    generator = np.random.default_rng([seed, KINDS.index(kind)])
    rounds = CHANGE_ROUND + AFTER_CHANGE
    arms = [Arm(f"variant-{i // 6}", i % 3, None if i % 2 else 1) for i in range(ARM_COUNT)]
    features = generator.random((ARM_COUNT, FEATURES))
    shared = np.zeros((FEATURES + 1, DIMENSION))
    shared[:, 0] = (0.3, -0.35, 0.05, 0.45)  # bias: cost hurts, accuracy pays
    shared[:, 1:] = 0.04 * generator.standard_normal((FEATURES + 1, DIMENSION - 1))
    own = np.zeros((ARM_COUNT, DIMENSION))
    own[:, 0] = 0.03 * generator.standard_normal(ARM_COUNT)
    own[:, 1:] = 0.01 * generator.standard_normal((ARM_COUNT, DIMENSION - 1))
    augmented = np.column_stack([np.ones(ARM_COUNT), features])
    coefficients = augmented @ shared + own  # (arms, d)

    means_before = generator.uniform(0.3, 0.7, DIMENSION - 1)
    means_after = np.clip(means_before + generator.choice([-0.25, 0.25], DIMENSION - 1), 0.05, 0.95) \
        if kind == "context-shift" else means_before
    contexts = np.vstack([context_sampler(generator, means_before, CHANGE_ROUND),
                          context_sampler(generator, means_after, AFTER_CHANGE)])
    mean_context = contexts[:CHANGE_ROUND].mean(axis=0)
    order = np.argsort(-(coefficients @ mean_context))  # arms by mean reward, best first
    leads = (coefficients[order[0]] - coefficients[order[1]]) @ mean_context
    coefficients[order[0], 0] += max(0.0, BEST_MARGIN - leads)  # a clear best arm (an arm's own strength)
    leads = (coefficients[order[2]] - coefficients[order[3]]) @ mean_context
    coefficients[order[:3], 0] += max(0.0, BEST_MARGIN - leads)  # ... and a clear best after a swap
    after = coefficients.copy()
    features_after = features.copy()
    feature_change: int | None = None
    ramp = np.zeros(rounds)
    if kind == "swap":
        after[[order[0], order[2]]] = coefficients[[order[2], order[0]]]
    elif kind in ("starvation", "starvation-hidden"):
        poor = order[15:]
        target = int(poor[np.argmax(features[poor, 0])])  # the costliest poor arm: most room to get cheaper
        gain = float((coefficients[order[0]] - coefficients[target]) @ mean_context) + 0.1
        cost_slope = float(shared[1] @ mean_context)  # reward per unit of cost (negative)
        new_cost = features[target, 0] + gain / cost_slope
        features_after[target, 0] = new_cost
        after[target] = coefficients[target] + (new_cost - features[target, 0]) * shared[1]
        if new_cost < 0.0:  # the cost cannot fall below 0: the rest of the gain is the arm's own
            features_after[target, 0] = 0.0
            after[target, 0] += gain - float((after[target] - coefficients[target]) @ mean_context)
        if kind == "starvation":
            feature_change = CHANGE_ROUND
    elif kind == "drift":
        ramp[CHANGE_ROUND:] = np.minimum(np.arange(AFTER_CHANGE) / DRIFT_ROUNDS, 1.0)
        after[order[0], 0] -= 0.25
        after[order[3], 0] += 0.1
    if kind == "drift":
        per_round = coefficients[None] + ramp[:, None, None] * (after - coefficients)[None]
        expected = np.einsum("tad,td->ta", per_round, contexts)
    else:
        expected = np.vstack([contexts[:CHANGE_ROUND] @ coefficients.T, contexts[CHANGE_ROUND:] @ after.T])
    change_round = CHANGE_ROUND
    if kind == "drift":  # the first round from which the best arm is no longer the old best
        best_before = int(np.bincount(expected[:CHANGE_ROUND].argmax(axis=1)).argmax())
        moved = np.flatnonzero(expected[CHANGE_ROUND:].argmax(axis=1) != best_before)
        change_round = CHANGE_ROUND + int(moved[0]) if moved.size else CHANGE_ROUND
    return ChangeEnvironment(kind, arms, contexts, np.stack([coefficients, after]),
                             np.stack([features, features_after]), feature_change, expected, change_round,
                             NOISE * generator.standard_normal((rounds, ARM_COUNT)))


def give_features(policy: Policy, arms: Sequence[Arm], features: np.ndarray) -> None:
    """What the runtime does: ``set_arm_features({arm: vector})`` on policies that take them."""
    setter: Callable[[dict[Arm, np.ndarray]], None] | None = getattr(policy, "set_arm_features", None)
    if setter is not None and getattr(policy, "arm_feature_dimension", 0) > 0:
        setter({arm: features[index] for index, arm in enumerate(arms)})


def run_change(label: str, environment: ChangeEnvironment, seed: int) -> dict[str, float | int | None]:
    name, options, with_features = CHANGE_POLICIES[label]
    policy = make_policy(name, DIMENSION, **options, **({"seed": seed} if takes_seed(name) else {}))
    arms = environment.arms
    if with_features:
        give_features(policy, arms, environment.features[0])
    index_of = {arm: i for i, arm in enumerate(arms)}
    chosen = np.empty(environment.rounds, dtype=np.int64)
    alarms_before = 0
    for t in range(environment.rounds):
        if with_features and t == environment.feature_change_round:
            give_features(policy, arms, environment.features[1])
        if t == CHANGE_ROUND:
            alarms_before = int(getattr(policy, "alarms", 0))
        context = environment.contexts[t]
        a = index_of[policy.select(context, arms)]
        policy.update(context, arms[a], float(environment.expected[t, a] + environment.noise[t, a]))
        chosen[t] = a
    alarms_total = getattr(policy, "alarms", None)
    obtained = environment.expected[np.arange(environment.rounds), chosen]
    best = environment.expected.max(axis=1)
    optimal = obtained >= best - OPTIMAL_TOLERANCE
    change = environment.change_round
    false_alarms: int | None = None
    if alarms_total is not None:
        false_alarms = int(alarms_total) if environment.kind == "context-shift" else alarms_before
    return {
        "optimal_before": float(optimal[CHANGE_ROUND - BEFORE_WINDOW:CHANGE_ROUND].mean()),
        "optimal_first_300": float(optimal[change:change + EARLY_WINDOW].mean()),
        "optimal_300_1000": float(optimal[change + LATE_WINDOW[0]:change + LATE_WINDOW[1]].mean()),
        "cumulative_regret": float((best - obtained).sum()),
        "false_alarms": false_alarms,
        "alarms": None if alarms_total is None else int(alarms_total),
    }


def median_and_spread(values: Sequence[float | int | None]) -> dict[str, float | None]:
    present = [float(v) for v in values if v is not None]
    if len(present) != len(values) or not present:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(present), "min": min(present), "max": max(present)}


def run_all(seeds: Sequence[int], labels: Sequence[str]) -> dict[str, dict[str, dict]]:
    """``{kind: {label: {metric: {median, min, max, per_seed}}}}``."""
    environments = {kind: [build_change_environment(kind, seed) for seed in seeds] for kind in KINDS}
    results: dict[str, dict[str, dict]] = {}
    for kind, built in environments.items():
        results[kind] = {}
        for label in labels:
            runs = [run_change(label, environment, seed) for seed, environment in zip(seeds, built, strict=True)]
            results[kind][label] = {metric: {**median_and_spread([run[metric] for run in runs]),
                                             "per_seed": [run[metric] for run in runs]} for metric in runs[0]}
        results[kind]["_change_round_offset"] = {"per_seed": [e.change_round - CHANGE_ROUND for e in built]}
    return results


def format_spread(cell: dict, percent: bool = True, digits: int = 0) -> str:
    if cell["median"] is None:
        return "-"
    scale = 100.0 if percent else 1.0
    return (f"{scale * cell['median']:.{digits}f} [{scale * cell['min']:.{digits}f}-"
            f"{scale * cell['max']:.{digits}f}]")


def print_change_table(results: dict[str, dict[str, dict]], timings: dict[str, dict[str, float]]) -> None:
    print("\nrecovery after change (median [min-max] over seeds; optimal = within "
          f"{OPTIMAL_TOLERANCE} of the round's best; target >= {TARGET_EARLY_SHARE:.0%} in the first 300 rounds)")
    header = (f"{'environment':<18}{'policy':<35}{'before%':>13}{'0-300%':>14}{'300-1000%':>14}"
              f"{'regret':>18}{'false al.':>10}{'p50us':>7}{'p99us':>7}")
    print(header)
    print("-" * len(header))
    for kind, by_label in results.items():
        for label, metrics in by_label.items():
            if label.startswith("_"):
                continue
            timing = timings.get(label, {})
            print(f"{kind:<18}{label:<35}{format_spread(metrics['optimal_before']):>13}"
                  f"{format_spread(metrics['optimal_first_300']):>14}{format_spread(metrics['optimal_300_1000']):>14}"
                  f"{format_spread(metrics['cumulative_regret'], percent=False):>18}"
                  f"{format_spread(metrics['false_alarms'], percent=False):>10}"
                  f"{timing.get('select_p50_us', float('nan')):>7.1f}{timing.get('select_p99_us', float('nan')):>7.1f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--policies", nargs="*", default=list(CHANGE_POLICIES), choices=list(CHANGE_POLICIES))
    parser.add_argument("--kinds", nargs="*", default=list(KINDS), choices=list(KINDS))
    arguments = parser.parse_args(argv)
    started = time.perf_counter()
    seeds = [arguments.seed + i for i in range(arguments.seeds)]
    results = {kind: value for kind, value in run_all(seeds, arguments.policies).items() if kind in arguments.kinds}
    print_change_table(results, {})
    print(f"{time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
