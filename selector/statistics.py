"""Mergeable sufficient statistics: how what one node learns reaches the others.

A linear policy's knowledge about an arm is a ridge regression, and a ridge regression is fully
described by two sums over the observations ``(x, r)`` of that arm:

* ``gram   = sum x x^T`` (the design matrix ``A`` *without* the prior ``lambda * I``), and
* ``moment = sum r x``   (the vector ``b``),

plus a ``count`` for bookkeeping. Sums are additive, so node-local *deltas* (what was learned
since the last export) can be added into any other node's policy in any order, and merging two
nodes' deltas into a fresh policy gives exactly the policy trained on the union of their data.
The prior is kept out of the sums on purpose: it must be added once per policy, not once per
merged delta.

A :class:`StatisticsDelta` carries the exporting policy's ``origin`` and a ``sequence`` number,
so a receiver can ignore its own deltas echoed back by the coordinator and deltas that gossip
delivered twice (see ``Policy.merge``). It encodes to an ``.npz`` byte string (no pickle) for
the wire.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from selector.errors import StatisticsError

_DELTA_ARRAYS = ("origin", "sequence", "dimension", "arm_keys", "gram", "moment", "count")


@dataclass(frozen=True)
class SufficientStatistics:
    """Data-only ridge statistics of one arm: ``gram = sum x x^T``, ``moment = sum r x``, ``count``."""

    gram: np.ndarray
    moment: np.ndarray
    count: int

    def __post_init__(self) -> None:
        gram = np.asarray(self.gram, dtype=np.float64)
        moment = np.asarray(self.moment, dtype=np.float64)
        if moment.ndim != 1 or gram.shape != (moment.shape[0], moment.shape[0]):
            raise StatisticsError(
                f"gram must be (d, d) and moment (d,), got {gram.shape} and {moment.shape}")
        if not (np.isfinite(gram).all() and np.isfinite(moment).all()):
            raise StatisticsError("statistics contain NaN or infinite values")
        if int(self.count) < 0:
            raise StatisticsError(f"count must be >= 0, got {self.count}")
        object.__setattr__(self, "gram", gram)
        object.__setattr__(self, "moment", moment)
        object.__setattr__(self, "count", int(self.count))

    @property
    def dimension(self) -> int:
        return int(self.moment.shape[0])

    @classmethod
    def zeros(cls, dimension: int) -> SufficientStatistics:
        return cls(np.zeros((dimension, dimension)), np.zeros(dimension), 0)

    def __add__(self, other: SufficientStatistics) -> SufficientStatistics:
        if not isinstance(other, SufficientStatistics):
            return NotImplemented
        if other.dimension != self.dimension:
            raise StatisticsError(f"cannot add statistics of dimension {other.dimension} to {self.dimension}")
        return SufficientStatistics(self.gram + other.gram, self.moment + other.moment, self.count + other.count)


@dataclass(frozen=True)
class StatisticsDelta:
    """What one policy learned since its previous export, per arm key."""

    origin: str
    sequence: int
    dimension: int
    arms: Mapping[str, SufficientStatistics] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if int(self.dimension) <= 0:
            raise StatisticsError(f"dimension must be > 0, got {self.dimension}")
        for key, statistics in self.arms.items():
            if statistics.dimension != self.dimension:
                raise StatisticsError(
                    f"arm {key!r} has dimension {statistics.dimension}, the delta says {self.dimension}")
        object.__setattr__(self, "arms", dict(self.arms))

    @property
    def is_empty(self) -> bool:
        return not self.arms

    @property
    def count(self) -> int:
        """Observations carried by this delta, over all arms."""
        return sum(statistics.count for statistics in self.arms.values())

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays (strings as numpy unicode, numbers as float64/int64): no pickle needed."""
        keys = list(self.arms)
        dimension = int(self.dimension)
        return {
            "origin": np.array(self.origin),
            "sequence": np.array(self.sequence, dtype=np.int64),
            "dimension": np.array(dimension, dtype=np.int64),
            "arm_keys": np.array(keys, dtype=np.str_).reshape(len(keys)),
            "gram": np.array([self.arms[k].gram for k in keys], dtype=np.float64).reshape(
                len(keys), dimension, dimension),
            "moment": np.array([self.arms[k].moment for k in keys], dtype=np.float64).reshape(
                len(keys), dimension),
            "count": np.array([self.arms[k].count for k in keys], dtype=np.int64).reshape(len(keys)),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> StatisticsDelta:
        missing = [name for name in _DELTA_ARRAYS if name not in arrays]
        if missing:
            raise StatisticsError(f"statistics delta lacks arrays {missing}")
        try:
            keys = [str(key) for key in np.asarray(arrays["arm_keys"]).reshape(-1)]
            gram = np.asarray(arrays["gram"], dtype=np.float64)
            moment = np.asarray(arrays["moment"], dtype=np.float64)
            count = np.asarray(arrays["count"], dtype=np.int64).reshape(-1)
            dimension = int(np.asarray(arrays["dimension"]))
            if gram.shape != (len(keys), dimension, dimension) or moment.shape != (len(keys), dimension) \
                    or count.shape != (len(keys),):
                raise StatisticsError(
                    f"inconsistent delta shapes: {len(keys)} keys, gram {gram.shape}, moment {moment.shape}, "
                    f"count {count.shape}, dimension {dimension}")
            return cls(
                origin=str(np.asarray(arrays["origin"])),
                sequence=int(np.asarray(arrays["sequence"])),
                dimension=dimension,
                arms={key: SufficientStatistics(gram[i], moment[i], int(count[i])) for i, key in enumerate(keys)},
            )
        except (TypeError, ValueError) as error:
            raise StatisticsError(f"malformed statistics delta: {error}") from error

    def to_bytes(self) -> bytes:
        """An uncompressed ``.npz`` payload, readable with ``allow_pickle=False``."""
        buffer = io.BytesIO()
        arrays: dict[str, Any] = dict(self.to_arrays())  # Any: numpy's stub types **kwargs as allow_pickle
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes) -> StatisticsDelta:
        try:
            with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise StatisticsError(f"statistics payload is not a readable npz archive: {error}") from error
        return cls.from_arrays(arrays)
