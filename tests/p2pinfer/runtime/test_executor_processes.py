"""Overload on a real node process: a burst far past what a slow node can serve before the
deadline is answered at once with 429 + Retry-After for the jobs the queue would make late,
while a job that can still reach an exit in time is degraded rather than refused.

The deadline is set from the node's own measured service time ``t`` (the emulated device pads
each block to its calibrated time on this host, so ``t`` differs between hosts): with one
worker, no batching and a deadline of 4.6 t, four jobs finish, the fifth starts at about 4 t
and can reach an early exit but not its last block (degraded), and the rest are refused. A
fixed deadline put no job in that window on a host slightly faster than the one it was tuned
on.
"""

from __future__ import annotations

import asyncio
import time

from p2pinfer import AsyncClient
from p2pinfer.errors import Overloaded, P2PError
from tests.p2pinfer.pinned_load import RESNET, SLOW, resnet_image

LEVELS = (2, 6, 24)  # concurrent requests per burst: within, at and far past what fits
SERVICES_PER_DEADLINE = 4.6  # not a whole number: the fifth job fits part-way


async def burst(url: str, count: int, offset: int, deadline_ms: float) -> list[tuple[str, float, float | None]]:
    """``count`` simultaneous requests; (outcome, client seconds, Retry-After) each."""
    async with AsyncClient(url) as client:
        async def one(index: int) -> tuple[str, float, float | None]:
            started = time.monotonic()
            try:
                result = await client.infer(resnet_image(offset + index), deadline_ms=deadline_ms,
                                            family="digits-resnet", user=f"burst-{index % 4}")
            except Overloaded as error:
                return "rejected", time.monotonic() - started, error.retry_after_s
            except P2PError as error:
                return type(error).__name__, time.monotonic() - started, None
            outcome = "degraded" if result.degraded or result.exit < 3 else "full"
            return outcome, time.monotonic() - started, None

        return await asyncio.gather(*(one(index) for index in range(count)))


async def service_ms(url: str) -> float:
    """The node's time for one lone request, as it reports it (median of three)."""
    async with AsyncClient(url) as client:
        measured = []
        for index in range(3):
            result = await client.infer(resnet_image(index), deadline_ms=10_000, family="digits-resnet")
            measured.append(sum(timing.compute_ms for timing in result.timings))
        return sorted(measured)[1]


def test_overload_degrades_what_can_still_exit_and_answers_429_quickly(node_factory):
    node = node_factory("--node-id", "solo", "--secret", "overload", "--variants", RESNET,
                        "--device-profile", SLOW, "--policy", "fixed", "--arm", f"{RESNET}@3",
                        "--queue-capacity", "64", "--max-batch", "1")
    deadline_ms = SERVICES_PER_DEADLINE * asyncio.run(service_ms(node.url))
    counts: dict[int, dict[str, int]] = {}
    rejections: list[tuple[float, float | None]] = []
    for level in LEVELS:
        outcomes = asyncio.run(burst(node.url, level, offset=level * 10, deadline_ms=deadline_ms))
        counts[level] = {}
        for outcome, seconds, retry_after in outcomes:
            counts[level][outcome] = counts[level].get(outcome, 0) + 1
            if outcome == "rejected":
                rejections.append((seconds, retry_after))
    assert counts[2] == {"full": 2}, counts
    # past what fits: a job whose full run would be late was kept and answered at an earlier
    # exit (not refused), and the rest were refused
    assert any(counts[level].get("degraded", 0) for level in LEVELS[1:]), counts
    assert counts[24].get("rejected", 0) >= 16, counts
    # refused at once: far below the deadline, and told when to come back
    times = sorted(seconds for seconds, _ in rejections)
    assert times[len(times) // 2] < deadline_ms / 1000 / 3, f"429s should be quick: {times}"
    assert all(retry_after is not None and retry_after > 0 for _, retry_after in rejections)
