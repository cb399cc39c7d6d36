"""Sharing what each node's bandit learns, through the coordinator, off the data path.

Each node publishes its *own* cumulative sufficient statistics per arm (what it learned
from its own requests, never what it adopted). The coordinator keeps them per origin
(``per_origin_merger``) rather than summing them, so each node can add exactly what every
other node learned since the last exchange: the difference between an origin's cumulative
statistics now and what this node already applied from it. Applied that way, a node's
policy holds its own data plus everyone else's once — the same statistics one policy would
have after training on the union of the data (linear bandits' statistics add up).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from p2pinfer.types import NodeId
from selector import Policy, StatisticsDelta, SufficientStatistics

SEPARATOR = "|"


def encode_statistics(statistics: SufficientStatistics) -> bytes:
    """``[count, moment..., gram...]`` as float64: additive element by element."""
    return np.concatenate([[float(statistics.count)], statistics.moment.ravel(),
                           statistics.gram.ravel()]).astype(np.float64).tobytes()


def decode_statistics(blob: bytes, dimension: int) -> SufficientStatistics | None:
    values = np.frombuffer(blob, dtype=np.float64)
    if values.size != 1 + dimension + dimension * dimension:
        return None  # another dimension (a node of another version): ignored, never guessed
    return SufficientStatistics(gram=values[1 + dimension:].reshape(dimension, dimension).copy(),
                                moment=values[1:1 + dimension].copy(), count=int(round(values[0])))


def per_origin_merger(reports: Mapping[NodeId, Mapping[str, bytes]]) -> dict[str, bytes]:
    """The coordinator's merge: every node's own statistics, keyed ``node|arm``."""
    return {f"{node}{SEPARATOR}{arm}": bytes(blob) for node, stats in reports.items() for arm, blob in stats.items()}


class StatisticsSharing:
    def __init__(self, node_id: str, policy: Policy) -> None:
        self.node_id = node_id
        self.policy = policy
        self.dimension = policy.dimension
        self.own: dict[str, SufficientStatistics] = {}
        self.applied: dict[str, dict[str, SufficientStatistics]] = {}
        self.sequences: dict[str, int] = {}
        self.absorbed_observations = 0

    def publishable(self) -> dict[str, bytes]:
        """Fold what the policy learned since the last call into the own totals; encode them."""
        delta = self.policy.export_delta()
        for arm, statistics in delta.arms.items():
            self.own[arm] = self.own[arm] + statistics if arm in self.own else statistics
        return {arm: encode_statistics(statistics) for arm, statistics in self.own.items()}

    def absorb(self, merged: Mapping[str, bytes]) -> int:
        """Apply what other nodes learned since we last looked; returns observations added."""
        by_origin: dict[str, dict[str, SufficientStatistics]] = {}
        for key, blob in merged.items():
            origin, _, arm = key.partition(SEPARATOR)
            if origin == self.node_id or not arm:
                continue
            statistics = decode_statistics(blob, self.dimension)
            if statistics is not None:
                by_origin.setdefault(origin, {})[arm] = statistics
        added = 0
        for origin, arms in by_origin.items():
            previous = self.applied.setdefault(origin, {})
            differences: dict[str, SufficientStatistics] = {}
            for arm, total in arms.items():
                before = previous.get(arm)
                if before is not None and total.count < before.count:
                    previous[arm] = total  # the origin restarted: its history is already in our policy
                    continue
                if before is None:
                    differences[arm] = total
                elif total.count > before.count:
                    differences[arm] = SufficientStatistics(gram=total.gram - before.gram,
                                                            moment=total.moment - before.moment,
                                                            count=total.count - before.count)
            if not differences:
                continue
            sequence = self.sequences.get(origin, 0) + 1
            if self.policy.merge(StatisticsDelta(origin=origin, sequence=sequence, dimension=self.dimension,
                                                 arms=differences)):
                self.sequences[origin] = sequence
                previous.update({arm: arms[arm] for arm in differences})
                added += sum(statistics.count for statistics in differences.values())
        self.absorbed_observations += added
        return added
