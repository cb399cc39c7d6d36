"""Bandwidth traces: parsing and replay.

A trace file holds one sample a line, ``time_seconds<whitespace>throughput_Mbit_per_s``, with
strictly rising times (``benchmarks/traces/README.md``). Blank lines and ``#`` comments are
ignored, so that users can annotate their own traces; every other malformed line is an error
that names the file and the line, because a silently skipped sample would change the
emulated link without anyone noticing.

Replay holds each sample's bandwidth until the next sample's time. The last sample holds for
the mean sampling interval, which gives the trace a period; replay loops over that period
(or, with ``loop=False``, holds the last sample for ever). Transfers are integrated over the
trace rather than priced at the bandwidth of their first instant: a 2 MB activation sent at
the edge of an outage should see the outage, and a zero-bandwidth sample must not produce an
infinite delay when the link recovers a second later.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from p2pinfer.errors import TraceFormatError, TraceNotFound

BITS_PER_MEGABIT = 1_000_000.0


@dataclass(frozen=True)
class BandwidthTrace:
    """A replayable bandwidth trace: times relative to its first sample, Mbit/s per sample."""

    source: str
    times_s: tuple[float, ...]
    mbps: tuple[float, ...]
    period_s: float = field(init=False)
    _capacity_bits_per_period: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.times_s or len(self.times_s) != len(self.mbps):
            raise TraceFormatError("a trace needs at least one sample, as many times as rates",
                                   source=self.source)
        if self.times_s[0] != 0.0:
            raise TraceFormatError("times must start at 0 (use parse_trace to rebase)", source=self.source)
        if len(self.times_s) == 1:
            period = 1.0
        else:
            mean_interval = self.times_s[-1] / (len(self.times_s) - 1)
            period = self.times_s[-1] + mean_interval
        object.__setattr__(self, "period_s", period)
        capacity = sum(rate * (end - start) for rate, start, end in self._segments()) * BITS_PER_MEGABIT
        object.__setattr__(self, "_capacity_bits_per_period", capacity)

    def _segments(self) -> Iterable[tuple[float, float, float]]:
        """(Mbit/s, start, end) of every sample within one period."""
        ends = (*self.times_s[1:], self.period_s)
        return zip(self.mbps, self.times_s, ends, strict=True)

    def _position(self, t_s: float, loop: bool) -> float:
        return t_s % self.period_s if loop else max(t_s, 0.0)

    def _index_at(self, position_s: float) -> int:
        return max(bisect.bisect_right(self.times_s, position_s) - 1, 0)

    @property
    def mean_mbps(self) -> float:
        """Time-weighted mean bandwidth over one period."""
        return self._capacity_bits_per_period / BITS_PER_MEGABIT / self.period_s

    def bandwidth_at(self, t_s: float, *, scale: float = 1.0, loop: bool = True) -> float:
        """Bandwidth in Mbit/s at ``t_s`` seconds after the start of replay."""
        return self.mbps[self._index_at(self._position(t_s, loop))] * scale

    def transfer_seconds(self, nbytes: int, start_s: float, *, scale: float = 1.0, loop: bool = True) -> float:
        """Seconds to push ``nbytes`` through the link starting at ``start_s`` (serialization only).

        Integrates the piecewise-constant bandwidth, so outages and recoveries during a long
        transfer are accounted for. ``math.inf`` when the bits never get through (a trace
        that ends in an outage and does not loop).
        """
        if nbytes <= 0:
            return 0.0
        if scale <= 0:
            return math.inf
        remaining = nbytes * 8.0 / (BITS_PER_MEGABIT * scale)  # in Mbit at the scaled rate
        position = self._position(start_s, loop)
        index = self._index_at(position)
        elapsed = 0.0
        count = len(self.times_s)
        # Walk to the end of the current period.
        while index < count:
            rate = self.mbps[index]
            end = self.times_s[index + 1] if index + 1 < count else self.period_s
            if not loop and index == count - 1:
                end = math.inf
            if rate > 0:
                if rate * (end - position) >= remaining:
                    return elapsed + remaining / rate
                remaining -= rate * (end - position)
            elapsed += end - position
            position = end
            index += 1
        if not loop:
            return math.inf
        # Skip whole periods, leaving a positive remainder to walk through once more.
        per_period = self._capacity_bits_per_period / BITS_PER_MEGABIT
        whole = max(math.ceil(remaining / per_period) - 1, 0)
        elapsed += whole * self.period_s
        remaining -= whole * per_period
        for rate, start, end in self._segments():
            if rate > 0:
                if rate * (end - start) >= remaining:
                    return elapsed + remaining / rate
                remaining -= rate * (end - start)
            elapsed += end - start
        return elapsed  # only reached through rounding: the remainder fit in the period


def parse_trace(text: str, source: str = "<trace>") -> BandwidthTrace:
    """Parse the text of a trace file; ``source`` names it in errors."""
    times: list[float] = []
    rates: list[float] = []
    for number, raw in enumerate(text.lstrip("\ufeff").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            raise TraceFormatError(f"expected 'time_seconds throughput_Mbit_per_s', got {raw.strip()!r}",
                                   source=source, line=number)
        try:
            time_s, rate = float(fields[0]), float(fields[1])
        except ValueError:
            raise TraceFormatError(f"not a number in {raw.strip()!r}", source=source, line=number) from None
        if not (math.isfinite(time_s) and math.isfinite(rate)):
            raise TraceFormatError(f"non-finite value in {raw.strip()!r}", source=source, line=number)
        if rate < 0:
            raise TraceFormatError(f"negative throughput {rate}", source=source, line=number)
        if times and time_s <= times[-1]:
            raise TraceFormatError(f"time {time_s} does not rise after {times[-1]}", source=source, line=number)
        times.append(time_s)
        rates.append(rate)
    if not times:
        raise TraceFormatError("no samples", source=source)
    if not any(rate > 0 for rate in rates):
        raise TraceFormatError("every sample is 0 Mbit/s: nothing would ever get through", source=source)
    first = times[0]
    return BandwidthTrace(source=source, times_s=tuple(t - first for t in times), mbps=tuple(rates))


def load_trace(path: str | Path) -> BandwidthTrace:
    """Read and parse a trace file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TraceNotFound(f"no trace file {path}") from None
    except UnicodeDecodeError as error:
        raise TraceFormatError(f"not UTF-8 text ({error.reason})", source=str(path)) from None
    return parse_trace(text, source=str(path))


def resolve_trace(name: str | Path, search_roots: Sequence[str | Path] = ()) -> Path:
    """Find a trace named by a scenario: an existing path as given, else under each root in turn."""
    candidate = Path(name)
    if candidate.is_file():
        return candidate
    if not candidate.is_absolute():
        for root in search_roots:
            found = Path(root) / candidate
            if found.is_file():
                return found
    searched = ", ".join(str(root) for root in search_roots) or "the working directory"
    raise TraceNotFound(f"no trace {str(name)!r} (searched {searched})")
